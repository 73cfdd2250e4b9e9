"""Stage compare: every calibration method of `compare.methods` at every [weight bits, activation bits] width
of `compare.widths`, on the float model, through the same integer-only forward as the headline metrics, and
the quantization-aware fine-tune at each width (row `qat`); plus, per method and activation width, every
activation's threshold, clipped fraction and SQNR."""

import pandas as pd
import torch

from quantlab import paths
from quantlab.calibration import calibrate, diagnose
from quantlab.config import CompareParams, QuantParams, load_params
from quantlab.errors import run_main
from quantlab.evaluation import Split, accuracy, predict
from quantlab.integer import IntegerNet
from quantlab.io import load_json, load_npz, load_state, save_csv, save_json
from quantlab.profiling import TensorProfile, load_profiles
from quantlab.quant import activation_signs, activation_widths, quantize_weights, split_weights


def integer_accuracy(q_weights: dict, scales: dict, activations: dict, test: Split) -> float:
    return accuracy(predict(IntegerNet.build(q_weights, scales, activations), test), test.y)


def compare(state: dict, profiles: dict[str, TensorProfile], test: Split, quant: QuantParams,
            settings: CompareParams) -> tuple[dict, pd.DataFrame]:
    """Test accuracy {width: {method: %, ..., "qat": %}} and the per-activation diagnostics of every method."""
    signs = activation_signs(quant.unsigned_activations)
    widths = {bits: activation_widths(bits, quant.logit_bits) for _, bits in settings.widths}
    calibrations = {(method, bits): calibrate(profiles, method, widths[bits], signs, quant.percentile)
                    for method in settings.methods for bits in widths}
    results = {}
    for weight_bits, activation_bits in settings.widths:
        width = paths.width_name(weight_bits, activation_bits)
        q_weights, scales = split_weights(quantize_weights(state, weight_bits, quant.per_channel))
        results[width] = {method: integer_accuracy(q_weights, scales, calibrations[method, activation_bits], test)
                          for method in settings.methods}
        qat = paths.qat("float", width)
        q_weights, scales = split_weights(quantize_weights(load_state(qat.with_suffix(".npz")), weight_bits,
                                                           quant.per_channel))
        results[width]["qat"] = integer_accuracy(q_weights, scales, load_json(qat.with_suffix(".json")), test)
    rows = [{"method": method, "activation_bits": bits, "tensor": name,
             **diagnose(profiles[name], calibration["thresholds"][name], widths[bits][name], signs[name])}
            for (method, bits), calibration in calibrations.items() for name in profiles]
    return results, pd.DataFrame(rows)


def main() -> None:
    params = load_params()
    dataset = load_npz(paths.DATASET, ["test_x", "test_y"])
    test = Split.of(dataset["test_x"], dataset["test_y"], torch.device("cpu"))
    results, layers = compare(load_state(paths.model("float")), load_profiles(paths.profile("float"), "activations"),
                              test, params.quant, params.compare)
    save_json(paths.CALIBRATION, results)
    for method in [*params.compare.methods, "qat"]:
        save_csv(paths.PLOTS / "calibration" / f"{method}.csv",
                 pd.DataFrame({"width": list(results), "accuracy": [row[method] for row in results.values()]}))
    save_csv(paths.CALIBRATION_LAYERS, layers)
    for width, row in results.items():
        print(width, ", ".join(f"{method} {value:.2f}" for method, value in row.items()))


if __name__ == "__main__":
    run_main(main)
