"""Stage quantize_activations@<model>: the input scale and every layer's output scale, S = T / qmax, with the
clipping threshold T chosen from the stored histograms by the calibration method named by `calib`, or, with
`calib=ema`, the thresholds learned by the model's quantization-aware fine-tune."""

import sys

from quantlab import paths
from quantlab.architecture import model_name_argument
from quantlab.calibration import calibrate
from quantlab.config import EMA, load_params
from quantlab.errors import run_main
from quantlab.io import load_json, save_json
from quantlab.profiling import load_profiles
from quantlab.quant import activation_quantization, activation_signs, activation_widths


def main() -> None:
    model_name = model_name_argument(sys.argv, "quantize_activations")
    params = load_params()
    quant = params.quant
    widths = activation_widths(quant.activation_bits, quant.logit_bits)
    signs = activation_signs(quant.unsigned_activations)
    if params.calib == EMA:
        width = paths.width_name(quant.weight_bits, quant.activation_bits)
        learned = load_json(paths.qat(model_name, width).with_suffix(".json"))
        activations = activation_quantization(EMA, learned["thresholds"], widths, signs)
    else:
        activations = calibrate(load_profiles(paths.profile(model_name), "activations"), params.calib, widths, signs,
                                quant.percentile)
    save_json(paths.quant_activations(model_name), activations)


if __name__ == "__main__":
    run_main(main)
