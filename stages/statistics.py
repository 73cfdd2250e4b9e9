"""Stage statistics: every accuracy difference the pipeline reports, with its 95 % confidence interval and the
exact McNemar p-value (quantlab.differences), computed from the per-image predictions on the test images; every
variant's and every comparison cell's validation accuracy; and the choices the pipeline makes, the best
post-training method at each width and the best combination of post-training techniques at each setting,
on the validation images only (on the test images only when `data.validation` is 0, as the lab did); and
ONNX Runtime's quantizer (stage ort_quantize) against float and against the best of this project's methods at
8/8. Writes metrics/differences.json, and the few of its numbers that DVC compares across experiments to
metrics/headline.json."""

from quantlab import paths
from quantlab.data import split
from quantlab.differences import differences, headline
from quantlab.io import load_json, load_npz, load_npz_tree, save_json
from quantlab.stage import load_params, run_main


def main() -> None:
    params = load_params()
    dataset = load_npz(paths.DATASET, ["train_y", "test_y"])
    _, held_out = split(dataset["train_y"], params.data.validation, params.seed)
    labels = {"validation": dataset["train_y"][held_out], "test": dataset["test_y"]} if len(held_out) else \
        {"test": dataset["test_y"]}
    variants = {**load_npz_tree(paths.predictions("float")), **load_npz_tree(paths.predictions("quantized"))}
    result = differences(labels, variants, *(load_npz_tree(paths.predictions(name))
                                             for name in ("calibration", "techniques", "onnxruntime")),
                         params.quant.per_channel)
    summary = headline(result, load_json(paths.ENGINE))  # every input read before the first output is written
    save_json(paths.DIFFERENCES, result)
    save_json(paths.HEADLINE, summary)


if __name__ == "__main__":
    run_main(main)
