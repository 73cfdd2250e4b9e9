"""Test-set evaluation shared by training, the evaluate and compare stages: predictions and accuracy."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from quantlab import paths
from quantlab.data import normalize, split
from quantlab.io import load_npz, save_csv, save_npz_tree
from quantlab.statistics import accuracy


@dataclass(frozen=True)
class Split:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64, kept on the device that computes."""

    x: torch.Tensor
    y: torch.Tensor

    @classmethod
    def of(cls, images, labels, device: torch.device) -> "Split":
        return cls(torch.as_tensor(images).to(device), torch.as_tensor(labels).to(device, torch.int64))

    def __len__(self) -> int:
        return len(self.y)


def outputs(forward: Callable[[torch.Tensor], torch.Tensor], split: Split, batch_size: int = 250) -> torch.Tensor:
    """The outputs (logits) of `forward` for every image, computed `batch_size` images at a time (their
    intermediates then stay small); on the uint8 pixels where the forward `reads_pixels`, else on normalized
    inputs in channels-last layout (several times faster for the 3-channel conv1 on CPUs)."""
    pixels = getattr(forward, "reads_pixels", False)
    batches = (split.x[i:i + batch_size] for i in range(0, len(split), batch_size))
    with torch.no_grad():
        return torch.cat([forward(x if pixels else normalize(x).contiguous(memory_format=torch.channels_last))
                          for x in batches])


def predict(forward: Callable[[torch.Tensor], torch.Tensor], split: Split) -> torch.Tensor:
    """Predicted class of every image (see `outputs`)."""
    return outputs(forward, split).argmax(1)


def evaluation_images(validation: int, seed: int) -> tuple[dict[str, Split], np.ndarray]:
    """The images every variant is evaluated on, on the CPU: "validation", the training images held out for
    every choice (none if `validation` is 0), and "test", only ever reported; and the class names."""
    dataset = load_npz(paths.DATASET)
    _, held_out = split(dataset["train_y"], validation, seed)
    cpu = torch.device("cpu")
    images = {"validation": Split.of(dataset["train_x"][held_out], dataset["train_y"][held_out], cpu)} \
        if validation else {}
    return {**images, "test": Split.of(dataset["test_x"], dataset["test_y"], cpu)}, dataset["classes"]


def save_predictions(path: Path, predictions: dict) -> None:
    """Predicted classes of every image, so that any statistic can be computed again without running a network:
    the variants' {variant: {images: classes}} or a comparison's {group: {cell: {images: classes}}}, as uint8
    arrays "<variant>/<images>" or "<group>/<cell>/<images>" of an .npz (`io.load_npz_tree` reads them)."""
    def as_uint8(node):
        return {key: as_uint8(child) for key, child in node.items()} if isinstance(node, dict) else \
            node.numpy().astype(np.uint8)

    save_npz_tree(path, as_uint8(predictions))


def save_class_plots(name: str, predictions: torch.Tensor, labels: torch.Tensor, classes) -> None:
    """plots/per_class/<name>.csv (accuracy of every class) and plots/confusion/<name>.csv (one row per image)."""
    per_class = [accuracy(predictions[labels == c], labels[labels == c]) for c in range(len(classes))]
    save_csv(paths.PLOTS / "per_class" / f"{name}.csv", pd.DataFrame({"class": classes, "accuracy": per_class}))
    save_csv(paths.PLOTS / "confusion" / f"{name}.csv",
             pd.DataFrame({"actual": classes[labels.numpy()], "predicted": classes[predictions.numpy()]}))
