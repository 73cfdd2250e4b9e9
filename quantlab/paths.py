"""Where every stage reads and writes; dvc.yaml declares the same paths as deps and outs. Paths only: which
file a stage reads is decided by the stage (and recorded in what it writes), never here."""

from pathlib import Path

DATASET = Path("data/cifar10.npz")
DOWNLOADS = Path("data/raw")  # downloaded archives (git-ignored), reused when their md5 matches


def model(name: str) -> Path:
    return Path("models") / f"{name}.npz"


def train_history(name: str) -> Path:
    return Path("plots/train") / f"{name}.csv"


def profile(name: str) -> Path:
    return Path("profile") / name


def quantized(name: str) -> Path:
    """The folder of a model's quantized network (quantlab.quantize.network)."""
    return Path("quant") / name


def export(name: str) -> Path:
    return Path("export") / name


def qat(name: str, width: str) -> Path:
    """The fine-tuned state (.npz) and learned ranges (.json) of a model at a width ("W8A8"), without suffix."""
    return Path("qat") / name / width


def qat_history(name: str, width: str) -> Path:
    return Path("plots/qat") / f"{name}-{width}.csv"


def predictions(name: str) -> Path:
    """Per-image predictions (evaluation.save_predictions) of the "float" and "quantized" variants and of the
    "calibration" and "techniques" comparisons' cells."""
    return Path("evaluation") / f"{name}.npz"


ACCURACY = Path("metrics/accuracy.json")
DIFFERENCES = Path("metrics/differences.json")
HEADLINE = Path("metrics/headline.json")  # the few numbers of DIFFERENCES and ENGINE that DVC compares
FLOAT_ACCURACY = Path("evaluation/float.json")  # evaluate_float's results, merged into ACCURACY by evaluate
ENGINE = Path("metrics/engine.json")
ONNXRUNTIME = Path("metrics/onnxruntime.json")  # ONNX Runtime's quantize_static, the peer of the calibration methods
CALIBRATION = Path("metrics/calibration.json")
CALIBRATION_LAYERS = Path("compare/layers.csv")
TECHNIQUES = Path("metrics/techniques.json")
TECHNIQUES_LAYERS = Path("compare/techniques.csv")
MIXED_PRECISION = Path("metrics/mixed_precision.json")
MIXED_PRECISION_DIR = Path("compare/mixed_precision")  # its sensitivities and evaluated configurations
PLOTS = Path("plots")
REPORT = Path("reports/build")
