"""Where every stage reads and writes; dvc.yaml declares the same paths as deps and outs."""

from pathlib import Path

from quantlab.config import EMA, Params

DATASET = Path("data/cifar10.npz")
DOWNLOADS = Path("data/raw")  # downloaded archives (git-ignored), reused when their md5 matches


def model(name: str) -> Path:
    return Path("models") / f"{name}.npz"


def train_history(name: str) -> Path:
    return Path("plots/train") / f"{name}.csv"


def profile(name: str) -> Path:
    return Path("profile") / name


def quant_weights(name: str, params: Params | None = None) -> Path:
    """The quantized weights of the trained model; with `params` whose calib is ema, of its QAT fine-tune."""
    return qat_weights(name) if params is not None and params.calib == EMA else Path("quant") / name / "weights.npz"


def qat_weights(name: str) -> Path:
    """The quantized weights of the model's quantization-aware fine-tune at the configured bits."""
    return Path("quant") / name / "qat_weights.npz"


def quant_activations(name: str) -> Path:
    return Path("quant") / name / "activations.json"


QUANT_BIAS = Path("quant/bias/bias.npz")
ACCURACY = Path("metrics/accuracy.json")
FLOAT_ACCURACY = Path("evaluation/float.json")  # evaluate_float's results, merged into ACCURACY by evaluate
PLOTS = Path("plots")
CALIBRATION = Path("metrics/calibration.json")
CALIBRATION_LAYERS = Path("compare/layers.csv")
REPORT = Path("reports/build")


def export(name: str) -> Path:
    return Path("export") / name


ENGINE = Path("metrics/engine.json")


def width_name(weight_bits: int, activation_bits: int) -> str:
    return f"W{weight_bits}A{activation_bits}"


def qat(name: str, width: str) -> Path:
    """The fine-tuned state (.npz) and learned ranges (.json) of a model at a width, without suffix."""
    return Path("qat") / name / width


def qat_history(name: str, width: str) -> Path:
    return Path("plots/qat") / f"{name}-{width}.csv"


def qat_state(name: str, params: Params) -> Path:
    """The quantization-aware fine-tune of a model at the configured bits."""
    return qat(name, width_name(params.quant.weight_bits, params.quant.activation_bits)).with_suffix(".npz")


def quantized_state(name: str, params: Params) -> Path:
    """The float weights behind the headline quantized network: the trained model's, or with calib=ema its
    quantization-aware fine-tune at the configured bits."""
    return qat_state(name, params) if params.calib == EMA else model(name)
