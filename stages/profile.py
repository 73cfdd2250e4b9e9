"""Stage profile@<model>: ranges, moments and histograms of every layer's weights and of the activations
(network input and every layer's output) on a calibration subset of the training set."""

import sys

import torch

from quantlab import paths
from quantlab.architecture import load_state, model_name_argument
from quantlab.config import ProfileParams
from quantlab.data import calibration_images, normalize
from quantlab.model import load_model
from quantlab.profiling import profile_model, save_profiles
from quantlab.stage import load_params, run_main


def main() -> None:
    model_name = model_name_argument(sys.argv, "profile")
    params = load_params()
    p: ProfileParams = params.profile
    model = load_model(load_state(paths.model(model_name), model_name))
    with torch.no_grad():
        profiles = profile_model(model, normalize(torch.from_numpy(calibration_images(params))), p.bins)
    save_profiles(paths.profile(model_name), profiles,
                  {"calibration": {"images": p.calib_images, "selection": p.calib_selection, "bins": p.bins}})


if __name__ == "__main__":
    run_main(main)
