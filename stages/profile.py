"""Stage profile@<model>: ranges, moments and histograms of every layer's weights and of the activations
(network input and every layer's output) on a calibration subset of the training set."""

import sys

import numpy as np
import torch

from quantlab import paths
from quantlab.architecture import ACTIVATIONS, LAYER_NAMES, load_state, model_name_argument
from quantlab.config import ProfileParams, load_params
from quantlab.data import normalize, without_validation
from quantlab.errors import UserError, run_main
from quantlab.io import load_npz
from quantlab.model import Net, load_model
from quantlab.profiling import TensorProfile, profile_activations, profile_tensor, save_profiles

BATCH = 1000


def calibration_indices(labels: np.ndarray, size: int, selection: str, seed: int) -> np.ndarray:
    """Sorted indices of the calibration images: the first `size`, a seeded random sample, or a seeded
    random sample with the same number of images from every class (`stratified`)."""
    if size > len(labels):
        raise UserError(f"profile.calib_images is {size} but the training set has only {len(labels)} images: "
                        f"lower it")
    generator = np.random.default_rng(seed)
    if selection == "first":
        return np.arange(size)
    if selection == "random":
        return np.sort(generator.permutation(len(labels))[:size])
    classes = np.unique(labels)
    per_class = -(-size // len(classes))
    picked = np.concatenate([generator.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes])
    return np.sort(generator.permutation(picked)[:size])


def profile_model(model: Net, images: torch.Tensor, bins: int) -> dict[str, dict[str, TensorProfile]]:
    """Weight profiles of every layer, and activation profiles of `images` (uint8) run through the model."""
    weights = {name: profile_tensor(getattr(model, name).weight.detach().numpy(), bins) for name in LAYER_NAMES}

    def run(tap):
        def observe(name, x):
            tap(name, x.numpy())
            return x

        with torch.no_grad():
            for start in range(0, len(images), BATCH):
                model(normalize(images[start:start + BATCH]), observe)

    return {"weights": weights, "activations": profile_activations(run, ACTIVATIONS, bins)}


def main() -> None:
    model_name = model_name_argument(sys.argv, "profile")
    params = load_params()
    p: ProfileParams = params.profile
    dataset = without_validation(load_npz(paths.DATASET), params.data.validation, params.seed)
    model = load_model(load_state(paths.model(model_name), model_name), model_name)
    index = calibration_indices(dataset["train_y"], p.calib_images, p.calib_selection, params.seed)
    profiles = profile_model(model, torch.from_numpy(dataset["train_x"][index]), p.bins)
    save_profiles(paths.profile(model_name), profiles,
                  {"calibration": {"images": p.calib_images, "selection": p.calib_selection, "bins": p.bins}})


if __name__ == "__main__":
    run_main(main)
