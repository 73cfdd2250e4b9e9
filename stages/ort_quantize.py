"""Stage ort_quantize: ONNX Runtime's own post-training quantizer as a peer of this project's calibration
methods. The trained float model, as ONNX (quantlab.inference.onnx_graph.float_model), is quantized by
`onnxruntime.quantization.quantize_static` at 8/8 with each of its calibrators (MinMax, Entropy, Percentile),
per tensor and per channel, on the same calibration images as the profile, with ONNX Runtime's defaults
otherwise (QDQ format, int8 weights symmetric, int8 activations with a zero point). Each quantized model runs
in ONNX Runtime on the validation and test images: predictions in evaluation/onnxruntime.npz (for the paired
intervals of stage statistics), test accuracies in metrics/onnxruntime.json.

These are the one output that the pinned arithmetic (quantlab.compute) cannot make the same on every CPU: ONNX
Runtime's MLAS chooses its kernels by the CPU at run time, with no switch to cap them; the calibrators run the
float model in them, and the int8 products saturate on CPUs without VNNI."""

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static

from quantlab import paths
from quantlab.data import calibration_images
from quantlab.evaluation import evaluation_images, save_predictions
from quantlab.inference import onnx_graph
from quantlab.io import load_npz, save_json
from quantlab.quantize.symmetric import Setting
from quantlab.stage import load_params, run_main
from quantlab.statistics import accuracy

CALIBRATORS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
BITS = (8, 8)  # weights and activations
BATCH = 500


class Batches(CalibrationDataReader):
    """The calibration images, BATCH at a time, as the float model's input."""

    def __init__(self, pixels: np.ndarray):
        self.batches = iter([{"pixels": pixels[start:start + BATCH]} for start in range(0, len(pixels), BATCH)])

    def get_next(self):
        return next(self.batches, None)


def quantize_with_onnxruntime(state: dict[str, np.ndarray], calibration: np.ndarray, images: dict,
                              folder: Path) -> dict[str, dict]:
    """Predictions {"W8A8-tensor": {"minmax": {"validation": classes, "test": classes}, ...}, ...} of every
    calibrator at every granularity; `folder` holds the ONNX files meanwhile."""
    source = folder / "float.onnx"
    onnx.save(onnx_graph.float_model(state), source)
    predictions, by_model = {}, {}
    for per_channel in (False, True):
        setting = Setting(*BITS, per_channel).name
        for name, method in CALIBRATORS.items():
            target = folder / f"{setting}-{name}.onnx"
            with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print their progress
                quantize_static(str(source), str(target), Batches(calibration), quant_format=QuantFormat.QDQ,
                                per_channel=per_channel, calibrate_method=method)
            # the same model bytes give the same predictions (Entropy, with quantize_static's bins, is MinMax)
            payload = target.read_bytes()
            if payload not in by_model:
                session = onnx_graph.session(payload)
                by_model[payload] = {split: torch.from_numpy(onnx_graph.outputs(session, split_images.x.numpy(),
                                                                                "logits").argmax(1))
                                     for split, split_images in images.items()}
            predictions.setdefault(setting, {})[name] = by_model[payload]
    return predictions


def main() -> None:
    params = load_params()
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static advises pre-processing, irrelevant here
    calibration = calibration_images(params)
    images, _ = evaluation_images(params.data.validation, params.seed)
    with tempfile.TemporaryDirectory() as folder:
        predictions = quantize_with_onnxruntime(load_npz(paths.model("float")), calibration, images, Path(folder))
    save_predictions(paths.predictions("onnxruntime"), predictions)
    save_json(paths.ONNXRUNTIME, {"version": onnxruntime.__version__,
                                  **{f"{setting}/{name}": accuracy(classes["test"], images["test"].y)
                                     for setting, row in predictions.items() for name, classes in row.items()}})


if __name__ == "__main__":
    run_main(main)
