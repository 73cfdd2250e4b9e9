"""Stage techniques: the post-training techniques (quantlab.quantize.ptq) as an axis of the comparison, on the
float model. At every width of `techniques.widths` (the logits keep 8 bits; the layers `techniques.layer_bits`
names keep their own bits) and every granularity of `techniques.per_channel`, every combination of the
registry's (quantlab.quantize.techniques) quantizes the network through the same float-rescale forward as the
headline metrics: its predictions on the validation and test images (evaluation/techniques.npz; the statistics
stage chooses among them on the validation images), its test accuracy (metrics/techniques.json) and, per layer,
the weight-range spread before and after equalization and the output's mean squared error with nearest rounding
and after the techniques (compare/techniques.csv)."""

import dataclasses
import time

import numpy as np
import pandas as pd

from quantlab import paths
from quantlab.architecture import load_state
from quantlab.config import Params
from quantlab.data import calibration_images
from quantlab.evaluation import Split, evaluation_images, predict, save_predictions
from quantlab.inference.float_rescale import FloatRescaleNet
from quantlab.io import save_csv, save_json
from quantlab.profiling import TensorProfile, load_profiles
from quantlab.quantize.calibration import TRAINED, calibrator
from quantlab.quantize.network import Provenance
from quantlab.quantize.ptq import apply_techniques, prepare
from quantlab.quantize.symmetric import Setting, activation_signs, activation_widths, weight_widths
from quantlab.quantize.techniques import PREPARE, combination_name, combinations
from quantlab.stage import load_params, run_main
from quantlab.statistics import accuracy

LOGIT_BITS = 8


def compare_techniques(state: dict[str, np.ndarray], images: np.ndarray, profiles: dict[str, TensorProfile],
                       splits: dict[str, Split], params: Params) -> tuple[dict, pd.DataFrame, dict]:
    """Test accuracy {setting: {combination: %}}, the per-layer diagnostics of every cell, and every cell's
    predictions on every set of `splits` ({"W4A8-tensor": {"adaround": {"test": classes, ...}, ...}, ...}), as
    `params.techniques` says. `images`: the calibration images (uint8), `profiles` the float model's
    activation profiles."""
    settings = params.techniques
    method = calibrator(settings.calib, params.quant.percentile)
    signs = activation_signs(settings.unsigned_activations)
    ptq = dataclasses.replace(params.ptq, iterations=settings.iterations, weight_scale=settings.weight_scale)

    def preparation(combination) -> tuple:
        return tuple(t for t in combination if t.phase == PREPARE)

    prepared = {preparing: prepare(state, images, profiles, preparing, params.profile.bins)
              for preparing in dict.fromkeys(map(preparation, combinations()))}
    results, rows, predictions = {}, [], {}
    for weight_bits, activation_bits in settings.widths:
        widths = activation_widths(activation_bits, LOGIT_BITS, settings.layer_bits)
        weight_bits_of_layers = weight_widths(weight_bits, settings.layer_bits)
        for per_channel in settings.per_channel:
            setting = Setting(weight_bits, activation_bits, per_channel).name
            results[setting], predictions[setting] = {}, {}
            for combination in combinations():
                began = time.perf_counter()
                name = combination_name(combination)
                network, diagnostics = apply_techniques(
                    prepared[preparation(combination)], method, widths, signs, weight_bits_of_layers, per_channel,
                    combination, ptq, params.seed, Provenance("float", method.name, TRAINED,
                                                              paths.model("float").as_posix(),
                                                              [t.name for t in combination]))
                forward = FloatRescaleNet(network)
                cell = predictions[setting][name] = {part: predict(forward, split) for part, split in splits.items()}
                results[setting][name] = accuracy(cell["test"], splits["test"].y)
                rows += [{"setting": setting, "techniques": name, "layer": layer, **values}
                         for layer, values in diagnostics.items()]
                seconds = time.perf_counter() - began
                print(f"{f'{setting}/{name}':<45} test {results[setting][name]:6.2f}  {seconds:5.1f} s", flush=True)
    return results, pd.DataFrame(rows), predictions


def main() -> None:
    params = load_params()
    images = calibration_images(params)
    splits, _ = evaluation_images(params.data.validation, params.seed)
    results, layers, predictions = compare_techniques(load_state(paths.model("float"), "float"), images,
                                                      load_profiles(paths.profile("float"), "activations"), splits,
                                                      params)
    save_predictions(paths.predictions("techniques"), predictions)
    save_json(paths.TECHNIQUES, results)
    save_csv(paths.TECHNIQUES_LAYERS, layers)


if __name__ == "__main__":
    run_main(main)
