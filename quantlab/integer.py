"""The lab's integer-only forward pass (its `NetQuantized`): integer weights and activations, exact integer
sums, and the float rescale M = S_in * S_W / S_out of every layer (see `quantlab.quant`).

Exact integer sums: float32 represents every integer up to 2^24 and no further, and a convolution in
float32 is exact only while every partial sum stays below that. fc1 sums 1152 products of up to
128 * 127 = 16256, so it can reach 1.9e7 > 2^24. `accumulation_dtype` bounds each layer's largest possible
partial sum from its actual integer weights and uses float32 only where that bound is below 2^24, float64
(exact to 2^53) elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from quantlab.architecture import LAYERS, Layer, input_of
from quantlab.model import walk
from quantlab.quant import activation_range, channel_shaped, multiplier, quantize, requantize

FLOAT32_EXACT_LIMIT = 2 ** 24


def accumulation_dtype(q_weight: torch.Tensor, max_abs_input: int) -> torch.dtype:
    """float32 when no partial sum of this layer can reach 2^24, else float64 (see the module docstring)."""
    worst = q_weight.abs().flatten(1).sum(1).max().item() * max_abs_input
    return torch.float32 if worst < FLOAT32_EXACT_LIMIT else torch.float64


def integer_layer(layer: Layer, q_x: torch.Tensor, q_weight: torch.Tensor) -> torch.Tensor:
    """The exact integer accumulator sum_j q_W[o, j] * q_x[j] of a conv or fc layer."""
    op = F.conv2d if layer.kind == "conv" else F.linear
    return op(q_x.to(q_weight.dtype), q_weight)


@dataclass
class IntegerNet:
    """The lab's integer-only network: integer weights, integer activations, float rescale M per layer.

    `activations` is what the quantize_activations stage stores: {"bits", "signed", "scales", ...}.
    `bias` is fc3's bias, added to fc3's integer accumulator before the rescale:
    - `bias_mode="int32"`: `bias` holds round(b / (S_W * S_in)), the bias on the accumulator's scale;
    - `bias_mode="raw"`: `bias` holds the float bias as trained. The accumulator's unit is S_W * S_in
      (below 1e-3), so b is, in effect, multiplied by S_W * S_in: a bias of 0.5 becomes 0.5 * S_W * S_in
      in real units, i.e. it almost vanishes. This is the lab's "weights quantized but bias not" variant.

    Max pooling is applied to the accumulator, before the rescale: the rescale and ReLU are monotonic
    non-decreasing (M > 0), so they commute with max and the result is identical, at a quarter of the cost.
    """

    q_weights: dict[str, torch.Tensor]  # integer-valued, in the dtype their layer accumulates in
    weight_scales: dict[str, torch.Tensor]  # scalar, or one per output channel
    activations: dict
    bias: torch.Tensor | None = None
    bias_mode: str = "none"  # "none", "raw" or "int32"

    @classmethod
    def build(cls, q_weights: dict[str, np.ndarray], weight_scales: dict[str, np.ndarray], activations: dict,
              bias: np.ndarray | None = None, bias_mode: str = "none") -> "IntegerNet":
        net = cls({}, {name: torch.as_tensor(np.asarray(s, np.float64)) for name, s in weight_scales.items()},
                  activations, None if bias is None else torch.as_tensor(np.asarray(bias, np.float64)), bias_mode)
        for layer in LAYERS:
            q = torch.from_numpy(np.asarray(q_weights[layer.name], dtype=np.float64))
            max_abs_input = max(abs(v) for v in net.range(input_of(layer.name)))
            q = q.to(accumulation_dtype(q, max_abs_input))
            net.q_weights[layer.name] = q.contiguous(memory_format=torch.channels_last) if q.ndim == 4 else q
        return net

    def range(self, activation: str) -> tuple[int, int]:
        return activation_range(self.activations, activation)

    def multiplier(self, layer: Layer) -> torch.Tensor:
        return multiplier(self.activations, self.weight_scales[layer.name], layer.name)

    def _apply(self, layer: Layer, q_x: torch.Tensor) -> torch.Tensor:
        acc = integer_layer(layer, q_x, self.q_weights[layer.name])
        if layer.pool:
            acc = F.max_pool2d(acc, 2)
        acc = acc.to(torch.float64)  # exact, and M * acc rounded once in float64
        if layer.name == "fc3" and self.bias_mode != "none":
            acc = acc + self.bias
        qmin, qmax = self.range(layer.name)
        return requantize(acc, channel_shaped(self.multiplier(layer), acc.ndim, 1), qmin, qmax)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Integer logits (as float64 holding integers) of float inputs x in [-1, 1]."""
        activations = self.activations
        q_x = quantize(x.to(torch.float64), activations["scales"]["input"], activations["bits"]["input"],
                       activations["signed"]["input"])
        return walk(q_x.contiguous(memory_format=torch.channels_last), self._apply, pool=False)
