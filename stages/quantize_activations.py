"""Stage quantize_activations@<model>: the input scale and every layer's output scale, S = T / qmax, with the
clipping threshold T chosen from the stored histograms by the calibration method named by `calib`."""

import sys

from quantlab import paths
from quantlab.architecture import model_name_argument
from quantlab.calibration import calibrate
from quantlab.config import load_params
from quantlab.errors import run_main
from quantlab.io import save_json
from quantlab.profiling import load_profiles
from quantlab.quant import activation_signs


def main() -> None:
    model_name = model_name_argument(sys.argv, "quantize_activations")
    params = load_params()
    quant = params.quant
    profiles = load_profiles(paths.profile(model_name), "activations")
    save_json(paths.quant_activations(model_name),
              calibrate(profiles, params.calib, quant.activation_bits, activation_signs(quant.unsigned_activations),
                        quant.percentile))


if __name__ == "__main__":
    run_main(main)
