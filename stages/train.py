"""Stage train@<model>: train the lab's CNN (`float`, or `bias` with a bias in fc3) from scratch."""

import sys

import pandas as pd

from quantlab import paths
from quantlab.architecture import MODELS, model_name_argument
from quantlab.config import TrainParams
from quantlab.data import without_validation
from quantlab.evaluation import Split
from quantlab.io import load_npz, save_csv, save_npz
from quantlab.model import Net, state_to_arrays
from quantlab.stage import load_params, run_main
from quantlab.training import device, fit, make_deterministic, training_subset


def train(model_name: str, dataset: dict, params: TrainParams, seed: int, on: str = "cpu") -> tuple[Net, list[dict]]:
    """A model trained deterministically for `seed` on device `on`, and its per-epoch loss and accuracies."""
    make_deterministic(seed)
    on = device(on)
    model = Net(MODELS[model_name]).to(on)
    train = training_subset(Split.of(dataset["train_x"], dataset["train_y"], on), params.fraction, seed)
    history = fit(model, train, Split.of(dataset["test_x"], dataset["test_y"], on),
                  epochs=params.epochs, batch_size=params.batch_size, lr=params.lr,
                  weight_decay=params.weight_decay, flip=params.flip, seed=seed, desc=f"train@{model_name}")
    return model.cpu(), history


def main() -> None:
    model_name = model_name_argument(sys.argv, "train")
    params = load_params()
    dataset = without_validation(load_npz(paths.DATASET), params.data.validation, params.seed)
    model, history = train(model_name, dataset, params.train, params.seed, params.compute.device)
    save_npz(paths.model(model_name), state_to_arrays(model))
    save_csv(paths.train_history(model_name), pd.DataFrame(history))


if __name__ == "__main__":
    run_main(main)
