"""Stage statistics: every accuracy difference the pipeline reports, with its 95 % confidence interval and the
exact McNemar p-value (quantlab.statistics), computed from the per-image predictions on the test images; every
variant's and every comparison cell's validation accuracy; and the choices the pipeline makes, the best
post-training method at each width and the best combination of post-training techniques at each setting,
on the validation images only (on the test images only when `data.validation` is 0, as the lab did); and
ONNX Runtime's quantizer (stage ort_quantize) against float and against the best of this project's methods at
8/8. Writes metrics/differences.json, and the few of its numbers that DVC compares across experiments to
metrics/headline.json."""

import numpy as np

from quantlab import paths
from quantlab.config import NEAREST, load_params
from quantlab.data import split
from quantlab.errors import run_main
from quantlab.io import load_json, load_npz, save_json
from quantlab.quantize.calibration import FINE_TUNED
from quantlab.quantize.symmetric import setting_name, width_name
from quantlab.statistics import paired

# The float model each quantized variant is measured against.
REFERENCES = {"quant_weights": "float", "quant_weights_activations": "float", "integer_engine": "float",
              "bias_quant_raw_bias": "bias_float", "bias_quant": "bias_float"}
# The variants whose difference to float heads `dvc exp show`; not integer_engine, whose predictions are
# quant_weights_activations', bit for bit (metrics/engine.json says so).
HEADLINE = ("quant_weights", "quant_weights_activations", "bias_quant_raw_bias", "bias_quant")
INTERVAL = ("delta", "ci_low", "ci_high")
BASELINE = "minmax"  # the lab's calibration, which every other method is measured against
PEER_BITS = (8, 8)  # the [weight, activation] bits at which ONNX Runtime's quantizer is compared


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return round(100.0 * float(np.mean(predictions == labels)), 2)


def best(validation_accuracy: dict[str, float]) -> str:
    """The candidate with the highest accuracy (the first listed on a tie), the quantization-aware fine-tune
    excepted (it is the reference the post-training methods are held against): every choice the pipeline
    makes. It is given the validation accuracies and nothing else."""
    return max((name for name in validation_accuracy if name != FINE_TUNED), key=validation_accuracy.get)


def differences(labels: dict[str, np.ndarray], predictions: dict[str, np.ndarray],
                techniques: dict[str, np.ndarray], peers: dict[str, np.ndarray], per_channel: bool) -> dict:
    """metrics/differences.json from the labels of the "test" (and "validation") images and the predictions
    "<variant>/<images>" of the float and quantized variants, "<width>/<method>/<images>" of the calibration
    comparison's cells (per tensor or `per_channel`), "<setting>/<combination>/<images>" of the techniques'
    (in `techniques`) and "<setting>/<calibrator>/<images>" of ONNX Runtime's quantizer (in `peers`)."""
    choose_on = "validation" if "validation" in labels else "test"

    calibration = [key for key in predictions if key.count("/") == 2]
    predictions = {**predictions, **techniques, **peers}

    def compared(a: str, b: str) -> dict:
        return paired(predictions[f"{a}/test"] == labels["test"], predictions[f"{b}/test"] == labels["test"])

    def measured(name: str, reference: str) -> dict:
        chosen = {f"{images}_accuracy": accuracy(predictions[f"{name}/{images}"], labels[images]) for images in labels}
        return {**chosen, **compared(name, reference)}

    result = {"images": {images: len(y) for images, y in labels.items()}, "choices_on": choose_on,
              "variants": {variant: {"reference": reference, **measured(variant, reference)}
                           for variant, reference in REFERENCES.items()}}

    def rows(keys, baseline: str) -> dict[str, dict]:
        """Per group ("W4A8", "W4A8-tensor"), every cell against float and, but the baseline, against the
        baseline; and the choice, made on `choose_on`'s accuracies."""
        cells = list(dict.fromkeys(key.rsplit("/", 1)[0] for key in keys))
        grouped = {}
        for group in dict.fromkeys(cell.split("/")[0] for cell in cells):
            row = {cell.split("/")[1]: measured(cell, "float") for cell in cells if cell.startswith(f"{group}/")}
            for name in row:
                if name not in (baseline, FINE_TUNED):
                    row[name][f"vs_{baseline}"] = compared(f"{group}/{name}", f"{group}/{baseline}")
            grouped[group] = {**row, "best": best({name: values[f"{choose_on}_accuracy"]
                                                   for name, values in row.items()})}
        return grouped

    result["calibration"] = rows(calibration, BASELINE)
    for width, row in result["calibration"].items():
        row[FINE_TUNED][f"vs_best_{choose_on}"] = compared(f"{width}/{FINE_TUNED}", f"{width}/{row['best']}")
    result["techniques"] = rows(techniques, NEAREST)
    result["onnxruntime"] = rows(peers, BASELINE)
    ours = result["calibration"].get(width_name(*PEER_BITS))
    setting = setting_name(*PEER_BITS, per_channel)
    if ours and setting in result["onnxruntime"]:  # ONNX Runtime's choice against this project's, both on validation
        theirs = result["onnxruntime"][setting]
        theirs["vs_project"] = {"project": ours["best"], **compared(f"{setting}/{theirs['best']}",
                                                                    f"{width_name(*PEER_BITS)}/{ours['best']}")}
    return result


def headline(result: dict, engine: dict) -> dict:
    """metrics/headline.json: what a person compares across experiments, with the keys of the files it comes
    from. Each HEADLINE variant's difference to its float model on the test images with its 95 % interval
    (`result` is metrics/differences.json), the engine's agreement with the float-rescale network and with ONNX
    Runtime (`engine` is metrics/engine.json), and the calibration method chosen at each width."""
    return {**{variant: {key: result["variants"][variant][key] for key in INTERVAL} for variant in HEADLINE},
            "identical_logits": engine["identical_logits"],
            "onnxruntime": {"identical_logits": engine["onnxruntime"]["identical_logits"]},
            "best": {width: row["best"] for width, row in result["calibration"].items()}}


def main() -> None:
    params = load_params()
    dataset = load_npz(paths.DATASET, ["train_y", "test_y"])
    _, held = split(dataset["train_y"], params.data.validation, params.seed)
    labels = {"validation": dataset["train_y"][held], "test": dataset["test_y"]} if len(held) else \
        {"test": dataset["test_y"]}
    predictions = {key: value for name in ("float", "quantized", "calibration")
                   for key, value in load_npz(paths.predictions(name)).items()}
    result = differences(labels, predictions, load_npz(paths.predictions("techniques")),
                         load_npz(paths.predictions("onnxruntime")), params.quant.per_channel)
    summary = headline(result, load_json(paths.ENGINE))  # every input read before the first output is written
    save_json(paths.DIFFERENCES, result)
    save_json(paths.HEADLINE, summary)


if __name__ == "__main__":
    run_main(main)
