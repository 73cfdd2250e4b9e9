"""Stage figures: the report's figures that no calibration choice changes (training curves, weight
histograms, the KL divergence of every threshold of one tensor, the calibration comparison, the QAT curves,
the post-training techniques, the mixed-precision choices and sensitivities), as PDF and PNG. The activation
histograms carry the chosen calibration's thresholds and are drawn by the report stage, so
`dvc exp run -S calib=...` redraws only those."""

import pandas as pd

from quantlab import paths
from quantlab.io import load_json, require
from quantlab.profiling import load_profiles
from quantlab.quantize.calibration import calibrator
from quantlab.quantize.symmetric import Setting, activation_signs, activation_widths
from quantlab.report import figures
from quantlab.stage import load_params, run_main


def main() -> None:
    params = load_params()
    directory = paths.REPORT / "figures"
    histories = {name: pd.read_csv(require(paths.train_history(name))) for name in ("float", "bias")}
    figures.save(figures.training(histories), directory, "training")
    figures.save(figures.histograms(load_profiles(paths.profile("float"), "weights"), "weight value", log=False),
                 directory, "weights")
    activations = load_profiles(paths.profile("float"), "activations")
    tensor = figures.KL_TENSOR
    bits = activation_widths(params.quant.activation_bits, params.quant.logit_bits)[tensor]
    signed = activation_signs(params.quant.unsigned_activations)[tensor]
    figures.save(figures.kl_curve(tensor, *calibrator("kl").divergences(activations[tensor], bits, signed),
                                  activations[tensor].absmax), directory, "kl")
    float_accuracy, calibration = load_json(paths.FLOAT_ACCURACY)["float"], load_json(paths.CALIBRATION)
    figures.save(figures.calibration(calibration, float_accuracy), directory, "calibration")
    figures.save(figures.techniques(load_json(paths.TECHNIQUES), calibration, float_accuracy), directory, "techniques")
    mixed_precision = paths.MIXED_PRECISION_DIR
    figures.save(figures.mixed_precision(load_json(paths.MIXED_PRECISION),
                                         pd.read_csv(require(mixed_precision / "configurations.csv"))),
                 directory, "mixed_precision")
    figures.save(figures.sensitivity(pd.read_csv(require(mixed_precision / "sensitivity.csv"))), directory,
                 "sensitivity")
    widths = [Setting(*width) for width in params.compare.widths]
    figures.save(figures.fine_tuning({width.label: pd.read_csv(require(paths.qat_history("float", width.name)))
                                      for width in widths}), directory, "qat")


if __name__ == "__main__":
    run_main(main)
