"""Stage statistics: every accuracy difference the pipeline reports, with its 95 % confidence interval and the
exact McNemar p-value (quantlab.statistics), computed from the per-image predictions on the test images; every
variant's and every comparison cell's validation accuracy; and the one choice the pipeline makes, the best
post-training method at each width, on the validation images only (on the test images only when
`data.validation` is 0, as the lab did). Writes metrics/differences.json."""

import numpy as np

from quantlab import paths
from quantlab.config import load_params
from quantlab.data import split
from quantlab.errors import run_main
from quantlab.io import load_npz, save_json
from quantlab.quantize.calibration import FINE_TUNED
from quantlab.statistics import paired

# The float model each quantized variant is measured against.
REFERENCES = {"quant_weights": "float", "quant_weights_activations": "float", "integer_engine": "float",
              "bias_quant_raw_bias": "bias_float", "bias_quant": "bias_float"}
BASELINE = "minmax"  # the lab's calibration, which every other method is measured against


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return round(100.0 * float(np.mean(predictions == labels)), 2)


def best_method(validation_accuracy: dict[str, float]) -> str:
    """The post-training method with the highest accuracy (the first listed on a tie): the pipeline's only
    choice. It is given the validation accuracies and nothing else."""
    return max((method for method in validation_accuracy if method != FINE_TUNED), key=validation_accuracy.get)


def differences(labels: dict[str, np.ndarray], predictions: dict[str, np.ndarray]) -> dict:
    """metrics/differences.json from the labels of the "test" (and "validation") images and the predictions
    "<variant>/<images>" of the float and quantized variants and "<width>/<method>/<images>" of the cells."""
    choose_on = "validation" if "validation" in labels else "test"

    def compared(a: str, b: str) -> dict:
        return paired(predictions[f"{a}/test"] == labels["test"], predictions[f"{b}/test"] == labels["test"]).record()

    def measured(name: str, reference: str) -> dict:
        chosen = {f"{images}_accuracy": accuracy(predictions[f"{name}/{images}"], labels[images]) for images in labels}
        return {**chosen, **compared(name, reference)}

    result = {"images": {images: len(y) for images, y in labels.items()}, "choices_on": choose_on,
              "variants": {variant: {"reference": reference, **measured(variant, reference)}
                           for variant, reference in REFERENCES.items()},
              "calibration": {}}
    cells = list(dict.fromkeys(key.rsplit("/", 1)[0] for key in predictions if key.count("/") == 2))
    for width in dict.fromkeys(cell.split("/")[0] for cell in cells):
        row = {cell.split("/")[1]: measured(cell, "float") for cell in cells if cell.startswith(f"{width}/")}
        for method in row:
            if method not in (BASELINE, FINE_TUNED):
                row[method][f"vs_{BASELINE}"] = compared(f"{width}/{method}", f"{width}/{BASELINE}")
        best = best_method({method: values[f"{choose_on}_accuracy"] for method, values in row.items()})
        row[FINE_TUNED][f"vs_best_{choose_on}"] = compared(f"{width}/{FINE_TUNED}", f"{width}/{best}")
        result["calibration"][width] = {**row, "best": best}
    return result


def main() -> None:
    params = load_params()
    dataset = load_npz(paths.DATASET, ["train_y", "test_y"])
    _, held = split(dataset["train_y"], params.data.validation, params.seed)
    labels = {"validation": dataset["train_y"][held], "test": dataset["test_y"]} if len(held) else \
        {"test": dataset["test_y"]}
    predictions = {key: value for name in ("float", "quantized", "calibration")
                   for key, value in load_npz(paths.predictions(name)).items()}
    save_json(paths.DIFFERENCES, differences(labels, predictions))


if __name__ == "__main__":
    run_main(main)
