"""Stage quantize_activations@<model>: the input scale and every layer's output scale, S = T / 127, with the
clipping threshold T chosen from the profiled histograms by the calibration method named by `calib`."""

import sys

from quantlab import paths
from quantlab.calibration import calibrator
from quantlab.config import load_params
from quantlab.errors import run_main
from quantlab.io import save_json
from quantlab.model import model_name_argument
from quantlab.profiling import TensorProfile, load_profiles
from quantlab.quant import scale_for

BITS = 8


def activation_scales(profiles: dict[str, TensorProfile], method: str, bits: int = BITS) -> dict:
    """Threshold and scale of every activation under calibration `method`."""
    calib = calibrator(method)
    thresholds = {name: float(calib.threshold(profile, bits)) for name, profile in profiles.items()}
    return {"calib": method, "bits": bits, "thresholds": thresholds,
            "scales": {name: float(scale_for(t, bits)) for name, t in thresholds.items()}}


def main() -> None:
    model_name = model_name_argument(sys.argv, "quantize_activations")
    params = load_params()
    profiles = load_profiles(paths.profile(model_name), "activations")
    save_json(paths.quant_activations(model_name), activation_scales(profiles, params.calib))


if __name__ == "__main__":
    run_main(main)
