"""Every accuracy difference the pipeline reports, with its 95 % interval and McNemar's p (quantlab.statistics),
from the per-image predictions on the test images (metrics/differences.json); and every choice it makes
(`best`), on the validation images only, or on the test images where `data.validation` is 0, as the lab did."""

import numpy as np

from quantlab.quantize.calibration import BASELINE, FINE_TUNED
from quantlab.quantize.symmetric import Setting
from quantlab.quantize.techniques import NEAREST, pairs
from quantlab.statistics import accuracy, paired
from quantlab.variants import FLOAT, QUANTIZED

# The variants whose difference to float heads `dvc exp show`; not integer_engine, whose predictions are
# quant_weights_activations', bit for bit (metrics/engine.json says so).
HEADLINE = ("quant_weights", "quant_weights_activations", "bias_quant_raw_bias", "bias_quant")
INTERVAL = ("delta", "ci_low", "ci_high")
PEERS_AT = Setting(8, 8)  # the width at which ONNX Runtime's quantizer is compared with this project's choice
# The quantized variants grouped by the float model they are measured against, as metrics/differences.json lists them
MEASURED = sorted(QUANTIZED, key=lambda variant: [f.name for f in FLOAT].index(variant.reference))

Classes = dict[str, np.ndarray]  # predicted classes by images: {"validation": ..., "test": ...}


def best(validation_accuracy: dict[str, float]) -> str:
    """The candidate with the highest accuracy (the first listed on a tie), the quantization-aware fine-tune
    excepted (it is the reference the post-training methods are held against): every choice the pipeline
    makes. It is given the validation accuracies and nothing else."""
    return max((name for name in validation_accuracy if name != FINE_TUNED), key=validation_accuracy.get)


def differences(labels: Classes, variants: dict[str, Classes], calibration: dict[str, dict[str, Classes]],
                techniques: dict[str, dict[str, Classes]], peers: dict[str, dict[str, Classes]],
                per_channel: bool) -> dict:
    """metrics/differences.json from the labels of the "test" (and "validation") images and the predicted classes
    of the float and quantized `variants`, of the calibration comparison's cells {width: {method: ...}} (per
    tensor or `per_channel`), of the techniques' {setting: {combination: ...}} and of ONNX Runtime's quantizer
    {setting: {calibrator: ...}} (`peers`)."""
    choose_on = "validation" if "validation" in labels else "test"

    def compared(a: Classes, b: Classes) -> dict:
        return paired(a["test"] == labels["test"], b["test"] == labels["test"])

    def measured(cell: Classes, reference: Classes) -> dict:
        chosen = {f"{images}_accuracy": accuracy(cell[images], labels[images]) for images in labels}
        return {**chosen, **compared(cell, reference)}

    result = {"images": {images: len(y) for images, y in labels.items()}, "choices_on": choose_on,
              "variants": {v.name: {"reference": v.reference, **measured(variants[v.name], variants[v.reference])}
                           for v in MEASURED}}

    def rows(groups: dict[str, dict[str, Classes]], baseline: str) -> dict[str, dict]:
        """Per group ("W4A8", "W4A8-tensor"), every cell against float and, but the baseline, against the
        baseline; and the choice, made on `choose_on`'s accuracies."""
        grouped = {}
        for group, cells in groups.items():
            row = {name: measured(cell, variants["float"]) for name, cell in cells.items()}
            for name in row:
                if name not in (baseline, FINE_TUNED):
                    row[name][f"vs_{baseline}"] = compared(cells[name], cells[baseline])
            grouped[group] = {**row, "best": best({name: values[f"{choose_on}_accuracy"]
                                                   for name, values in row.items()})}
        return grouped

    result["calibration"] = rows(calibration, BASELINE)
    for width, row in result["calibration"].items():
        row[FINE_TUNED][f"vs_best_{choose_on}"] = compared(calibration[width][FINE_TUNED],
                                                           calibration[width][row["best"]])
    result["techniques"] = rows(techniques, NEAREST)
    for setting, row in result["techniques"].items():  # block against layer, with against without dropping
        for name, other in pairs():
            if name in row and other in row:
                row[name][f"vs_{other}"] = compared(techniques[setting][name], techniques[setting][other])
    result["onnxruntime"] = rows(peers, BASELINE)
    width, setting = PEERS_AT.name, Setting(PEERS_AT.weight_bits, PEERS_AT.activation_bits, per_channel).name
    ours = result["calibration"].get(width)
    if ours and setting in result["onnxruntime"]:  # ONNX Runtime's choice against this project's, both on validation
        theirs = result["onnxruntime"][setting]
        theirs["vs_project"] = {"project": ours["best"], **compared(peers[setting][theirs["best"]],
                                                                    calibration[width][ours["best"]])}
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
