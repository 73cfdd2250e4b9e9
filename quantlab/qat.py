"""Quantization-aware training with learned (EMA) ranges (Jacob et al. 2017, arXiv:1712.05877, section 3).

During fine-tuning, weights and activations pass through fake quantization: the forward pass sees
S * clamp(round(x / S), qmin, qmax), the backward pass lets the gradient through unchanged inside the
representable range [qmin S, qmax S] and stops it outside (the straight-through estimator).

    weights      S_W = max|W| / qmax of the current weights (per tensor or per output channel)
    activations  T <- decay * T + (1 - decay) * t over the training batches (T = t at the first), S = T / qmax;
                 activations are fake-quantized from step `start` on (before it, only T is learned, as the
                 paper delays activation quantization). The batch statistic t is
                 - "max": max|x| of the batch, the paper's choice;
                 - "mse": the threshold with the least squared quantization error of the batch, over 64
                   candidates k/64 max|x|, on a seeded sample of 8192 of its values. At 4 bits, max-tracked
                   ranges leave most of the 16 levels to rare large values (as minmax calibration does).

The learned thresholds T are what `calib=ema` hands to the integer-only forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quantlab.architecture import ACTIVATIONS, Layer
from quantlab.model import Net, walk
from quantlab.quant import activation_signs, channel_shaped, int_range


class FakeQuantize(torch.autograd.Function):
    """S * clamp(round(x / S), qmin, qmax) forward (round half to even); gradient 1 inside
    [qmin S, qmax S] (edges included), 0 beyond."""

    @staticmethod
    def forward(ctx, x, scale, qmin, qmax):
        ctx.save_for_backward((x >= qmin * scale) & (x <= qmax * scale))
        return torch.clamp(torch.round(x / scale), qmin, qmax) * scale

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    return FakeQuantize.apply(x, scale, qmin, qmax)


def batch_max(x: torch.Tensor, qmin: int, qmax: int, generator: torch.Generator) -> torch.Tensor:
    return x.detach().abs().max().to(torch.float64)


def batch_mse(x: torch.Tensor, qmin: int, qmax: int, generator: torch.Generator, sample: int = 8192,
              candidates: int = 64) -> torch.Tensor:
    """The threshold among k/candidates max|x| with the least squared quantization error of a sample."""
    flat = x.detach().flatten()
    values = flat[torch.randint(len(flat), (sample,), generator=generator)].to(torch.float64)
    thresholds = values.abs().max().clamp(min=1e-12) * torch.arange(1, candidates + 1, dtype=torch.float64) / candidates
    scales = (thresholds / qmax)[:, None]
    errors = (values[None] - torch.clamp(torch.round(values[None] / scales), qmin, qmax) * scales).square().mean(1)
    return thresholds[errors.argmin()]


RANGES = {"max": batch_max, "mse": batch_mse}


class QATNet(nn.Module):
    """The lab's network with fake-quantized weights and activations and EMA-tracked activation ranges."""

    def __init__(self, model: Net, weight_bits: int, widths: dict[str, int], per_channel: bool,
                 unsigned_activations: bool, decay: float, start: int, ranges: str = "mse", seed: int = 0):
        """`widths`: the bits of every activation (quantlab.quant.activation_widths)."""
        super().__init__()
        self.model = model
        self.weight_bits, self.widths, self.per_channel = weight_bits, widths, per_channel
        self.signs = activation_signs(unsigned_activations)
        self.decay, self.start, self.statistic = decay, start, RANGES[ranges]
        self.generator = torch.Generator().manual_seed(seed)
        self.register_buffer("thresholds", torch.zeros(len(ACTIVATIONS), dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def weight(self, layer: Layer) -> torch.Tensor:
        weight = getattr(self.model, layer.name).weight
        absmax = weight.detach().abs().flatten(1).amax(1) if self.per_channel else weight.detach().abs().max()
        qmin, qmax = int_range(self.weight_bits)
        scale = channel_shaped(torch.clamp(absmax, min=1e-12) / qmax, weight.ndim, 0)
        return fake_quantize(weight, scale, qmin, qmax)

    def _layer(self, layer: Layer, x: torch.Tensor) -> torch.Tensor:
        module = getattr(self.model, layer.name)
        op = F.conv2d if layer.kind == "conv" else F.linear
        return op(x, self.weight(layer), module.bias)

    def _activation(self, name: str, x: torch.Tensor) -> torch.Tensor:
        index = ACTIVATIONS.index(name)
        qmin, qmax = int_range(self.widths[name], self.signs[name])
        if self.training:
            observed = self.statistic(x, qmin, qmax, self.generator)
            first = self.steps == 0
            self.thresholds[index] = torch.where(first, observed,
                                                 self.decay * self.thresholds[index] + (1 - self.decay) * observed)
        if self.training and self.steps < self.start:
            return x
        threshold = self.thresholds[index].to(x.dtype)
        return fake_quantize(x, torch.clamp(threshold, min=1e-12) / qmax, qmin, qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = walk(x, self._layer, self._activation)
        if self.training:
            self.steps += 1
        return out

    def learned_thresholds(self) -> dict[str, float]:
        return {name: float(t) for name, t in zip(ACTIVATIONS, self.thresholds.tolist(), strict=True)}
