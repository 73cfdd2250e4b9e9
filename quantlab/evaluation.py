"""Test-set evaluation shared by training, the evaluate and compare stages: predictions and accuracy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from quantlab.data import normalize

CHANNELS_LAST = torch.channels_last


@dataclass(frozen=True)
class Split:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64, kept on the device that computes."""

    x: torch.Tensor
    y: torch.Tensor

    @classmethod
    def of(cls, images, labels, on: torch.device) -> "Split":
        return cls(torch.as_tensor(images).to(on), torch.as_tensor(labels).to(on, torch.int64))

    def __len__(self) -> int:
        return len(self.y)


def outputs(forward: Callable[[torch.Tensor], torch.Tensor], split: Split, batch_size: int = 1000,
            pixels: bool = False) -> torch.Tensor:
    """The outputs (logits) of `forward` for every image, computed in batches, on normalized inputs in
    channels-last layout (several times faster for the 3-channel conv1 on CPUs), or on the uint8 `pixels`."""
    def prepare(images):
        return images if pixels else normalize(images).contiguous(memory_format=CHANNELS_LAST)

    with torch.no_grad():
        return torch.cat([forward(prepare(split.x[i:i + batch_size])) for i in range(0, len(split), batch_size)])


def predict(forward: Callable[[torch.Tensor], torch.Tensor], split: Split, batch_size: int = 1000,
            pixels: bool = False) -> torch.Tensor:
    """Predicted class of every image (see `outputs`)."""
    return outputs(forward, split, batch_size, pixels).argmax(1)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent of correct predictions, rounded to two decimals as in metrics/accuracy.json."""
    return round(100.0 * (predictions == labels).sum().item() / len(labels), 2)
