"""Stage compare: every calibration method of `compare.methods` at every [weight bits, activation bits] width
of `compare.widths`, on the float model, through the same quantization and float-rescale forward as the
headline metrics, and the quantization-aware fine-tune at each width with its learned ranges (row `qat`):
their test accuracy, and every cell's predictions on the validation and test images; plus, per method and
activation width, every activation's threshold, clipped fraction and SQNR."""

import pandas as pd

from quantlab import paths
from quantlab.architecture import load_state
from quantlab.config import CompareParams, QuantParams
from quantlab.evaluation import Split, evaluation_images, predict, save_predictions
from quantlab.inference.float_rescale import FloatRescaleNet
from quantlab.io import load_json, save_csv, save_json
from quantlab.profiling import TensorProfile, load_profiles
from quantlab.quantize.calibration import EMA, FINE_TUNED, TRAINED, calibrator, diagnose
from quantlab.quantize.network import Provenance, activations_of, quantize_network
from quantlab.quantize.symmetric import Setting, activation_signs, activation_widths, weight_widths
from quantlab.stage import load_params, run_main
from quantlab.statistics import accuracy


def compare(state: dict, profiles: dict[str, TensorProfile], fine_tunes: dict[str, tuple[dict, dict]],
            images: dict[str, Split], quant: QuantParams, settings: CompareParams) -> tuple[dict, pd.DataFrame, dict]:
    """Test accuracy {width: {method: %, ..., "qat": %}}, the per-activation diagnostics of every method, and
    every cell's predictions on every set of `images` ({"W8A8": {"minmax": {"test": classes, ...}, ...}, ...}).
    `fine_tunes`: per width name, the fine-tuned state and the thresholds it learned."""
    signs = activation_signs(quant.unsigned_activations)
    widths = {bits: activation_widths(bits, quant.logit_bits) for _, bits in settings.widths}
    thresholds = {(method, bits): calibrator(method, quant.percentile).thresholds(profiles, widths[bits], signs)
                  for method in settings.methods for bits in widths}

    predictions = {}

    def tested(width: str, method: str, state: dict, thresholds: dict, weight_bits: int, activation_bits: int,
               provenance: Provenance) -> float:
        forward = FloatRescaleNet(quantize_network(state, activations_of(thresholds, widths[activation_bits], signs),
                                                   weight_widths(weight_bits), quant.per_channel, provenance))
        cell = predictions.setdefault(width, {})[method] = {name: predict(forward, split)
                                                            for name, split in images.items()}
        return accuracy(cell["test"], images["test"].y)

    results = {}
    for weight_bits, activation_bits in settings.widths:
        width = Setting(weight_bits, activation_bits).name
        results[width] = {method: tested(width, method, state, thresholds[method, activation_bits], weight_bits,
                                         activation_bits,
                                         Provenance("float", method, TRAINED, paths.model("float").as_posix()))
                          for method in settings.methods}
        fine_tuned, learned = fine_tunes[width]
        method = EMA(learned=learned)
        results[width][FINE_TUNED] = tested(width, FINE_TUNED, fine_tuned,
                                            method.thresholds(profiles, widths[activation_bits], signs), weight_bits,
                                            activation_bits, Provenance("float", method.name, FINE_TUNED,
                                                                        paths.qat("float", width).as_posix()))
    rows = [{"method": method, "activation_bits": bits, "tensor": name,
             **diagnose(profiles[name], values[name], widths[bits][name], signs[name])}
            for (method, bits), values in thresholds.items() for name in profiles]
    return results, pd.DataFrame(rows), predictions


def main() -> None:
    params = load_params()
    fine_tunes = {width: (load_state(paths.qat("float", width).with_suffix(".npz"), "float"),
                          load_json(paths.qat("float", width).with_suffix(".json"))["thresholds"])
                  for width in (Setting(*pair).name for pair in params.compare.widths)}
    images, _ = evaluation_images(params.data.validation, params.seed)
    results, layers, predictions = compare(load_state(paths.model("float"), "float"),
                                           load_profiles(paths.profile("float"), "activations"), fine_tunes, images,
                                           params.quant, params.compare)
    save_predictions(paths.predictions("calibration"), predictions)
    save_json(paths.CALIBRATION, results)
    for method in [*params.compare.methods, FINE_TUNED]:
        save_csv(paths.PLOTS / "calibration" / f"{method}.csv",
                 pd.DataFrame({"width": list(results), "accuracy": [row[method] for row in results.values()]}))
    save_csv(paths.CALIBRATION_LAYERS, layers)
    for width, row in results.items():
        print(width, ", ".join(f"{method} {value:.2f}" for method, value in row.items()))


if __name__ == "__main__":
    run_main(main)
