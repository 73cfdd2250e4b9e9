"""Where every stage reads and writes; dvc.yaml declares the same paths as deps and outs."""

from pathlib import Path

DATASET = Path("data/cifar10.npz")
DOWNLOADS = Path("data/raw")  # downloaded archives (git-ignored), reused when their md5 matches


def model(name: str) -> Path:
    return Path("models") / f"{name}.npz"


def train_history(name: str) -> Path:
    return Path("plots/train") / f"{name}.csv"


def profile(name: str) -> Path:
    return Path("profile") / name


def quant_weights(name: str) -> Path:
    return Path("quant") / name / "weights.npz"


def quant_activations(name: str) -> Path:
    return Path("quant") / name / "activations.json"


QUANT_BIAS = Path("quant/bias/bias.npz")
ACCURACY = Path("metrics/accuracy.json")
PLOTS = Path("plots")
CALIBRATION = Path("metrics/calibration.json")
CALIBRATION_LAYERS = Path("compare/layers.csv")
REPORT = Path("reports/build")


def export(name: str) -> Path:
    return Path("export") / name


ENGINE = Path("metrics/engine.json")
