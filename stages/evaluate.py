"""Stage evaluate: every quantized variant's predictions on the validation and test images
(evaluation/quantized.npz); its test accuracy, with the float models' from evaluate_float, in
metrics/accuracy.json; the integer engine's agreement with the float-rescale forward, the distance between
its two roundings, and ONNX Runtime's agreement with the engine in ONNX Runtime's rounding on the exported
ONNX model (metrics/engine.json); per-class accuracy and confusion matrix of the fully quantized network
(DVC plots)."""

import onnxruntime
import torch

from quantlab import paths
from quantlab.evaluation import evaluation_images, outputs, save_class_plots, save_predictions
from quantlab.inference import export_format, onnx_graph
from quantlab.inference.engine import FixedPointEngine
from quantlab.inference.fixed_point import GEMMLOWP, ONNXRUNTIME, REQUANTIZATIONS
from quantlab.io import load_json, save_json
from quantlab.stage import load_params, run_main
from quantlab.statistics import accuracy
from quantlab.variants import ENGINE_REFERENCE, QUANTIZED, VARIANTS


def agreement(engine: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor) -> dict:
    """How closely the engine's integer logits follow the float-rescale forward's (both in output LSBs)."""
    difference = (engine.to(torch.int64) - reference.to(torch.int64)).abs()
    return {"accuracy": accuracy(engine.argmax(1), labels),
            "identical_predictions": round((engine.argmax(1) == reference.argmax(1)).double().mean().item(), 6),
            "identical_logits": round((difference == 0).double().mean().item(), 6),
            "max_logit_diff_lsb": int(difference.max().item())}


def deployment(test, engine: torch.Tensor) -> dict:
    """The float model's export in both roundings of the engine (`engine`: its logits in the export's own), and
    in ONNX Runtime: how far the roundings are apart, and how closely ONNX Runtime follows the engine in its
    rounding."""
    directory = paths.export("float")
    manifest, arrays = export_format.read(directory)
    engines = {mode: engine if mode == manifest["rounding"] else outputs(FixedPointEngine(manifest, arrays, mode), test)
               for mode in REQUANTIZATIONS}
    session = onnx_graph.session(onnx_graph.load(directory, manifest))
    onnx_logits = torch.from_numpy(onnx_graph.run(session, manifest, test.x.numpy()))
    return {"rounding": manifest["rounding"],
            "rounding_modes": {**agreement(engines[ONNXRUNTIME], engines[GEMMLOWP], test.y),
                               "accuracy": {mode: accuracy(engines[mode].argmax(1), test.y) for mode in engines}},
            "onnxruntime": {"version": onnxruntime.__version__, **agreement(onnx_logits, engines[ONNXRUNTIME], test.y)}}


def main() -> None:
    params = load_params()
    images, classes = evaluation_images(params.data.validation, params.seed)
    test, logits, predictions = images["test"], {}, {}
    for variant in QUANTIZED:
        forward, name = variant.build(), variant.name
        logits[name] = outputs(forward, test)  # the engine's agreement compares logits
        predictions[name] = {part: outputs(forward, split).argmax(1) if part != "test" else logits[name].argmax(1)
                             for part, split in images.items()}
    engine = {"machine_independent": params.compute.machine_independent, "reference": ENGINE_REFERENCE,
              **agreement(logits["integer_engine"], logits[ENGINE_REFERENCE], test.y),
              **deployment(test, logits["integer_engine"])}  # before any output: a refused ONNX file writes none
    save_predictions(paths.predictions("quantized"), predictions)
    measured = {**load_json(paths.FLOAT_ACCURACY),
                **{variant: accuracy(p["test"], test.y) for variant, p in predictions.items()}}
    accuracies = {variant.name: measured[variant.name] for variant in VARIANTS}
    save_json(paths.ACCURACY, accuracies)
    save_json(paths.ENGINE, engine)
    save_class_plots("quant", predictions["quant_weights_activations"]["test"], test.y, classes)
    print("test accuracy (%):", ", ".join(f"{variant} {value:.2f}" for variant, value in accuracies.items()))


if __name__ == "__main__":
    run_main(main)
