"""The float-rescale simulation: the lab's integer-only forward pass (its `NetQuantized`), integer weights and
activations and exact integer sums, rescaled with the float multiplier M = S_in * S_W / S_out of every layer.

Exact integer sums: float32 represents every integer up to 2^24 and no further, and a convolution in
float32 is exact only while every partial sum stays below that. fc1 sums 1152 products of up to
128 * 127 = 16256, so it can reach 1.9e7 > 2^24. `accumulation_dtype` bounds each layer's largest possible
partial sum from its actual integer weights and uses float32 only where that bound is below 2^24, float64
(exact to 2^53) elsewhere.
"""

import numpy as np
import torch

from quantlab.architecture import LAYERS, Layer, input_of
from quantlab.inference.fixed_point import FLOAT32_EXACT
from quantlab.model import layer_output, max_pool
from quantlab.quantize.network import QuantizedNetwork
from quantlab.quantize.symmetric import channel_shaped


def accumulation_dtype(q_weight: torch.Tensor, max_abs_input: int) -> torch.dtype:
    """float32 when no partial sum of this layer can reach 2^24, else float64 (see the module docstring)."""
    worst = q_weight.abs().flatten(1).sum(1).max().item() * max_abs_input
    return torch.float32 if worst < FLOAT32_EXACT else torch.float64


def integer_layer(layer: Layer, q_x: torch.Tensor, q_weight: torch.Tensor) -> torch.Tensor:
    """The exact integer accumulator sum_j q_W[o, j] * q_x[j] of a conv or fc layer."""
    return layer_output(layer, q_x.to(q_weight.dtype), q_weight, None)


def requantize(acc: torch.Tensor, multiplier: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """q_out = clamp(round(M * acc), qmin, qmax) of a float64 accumulator, in place (it is the caller's
    scratch): acc is exact there, and M * acc is rounded once, correctly, before the integer rounding."""
    return acc.mul_(multiplier).round_().clamp_(qmin, qmax)


class FloatRescaleNet:
    """A quantized network run as the lab runs it: integer weights, integer activations, float rescale M.
    It reads uint8 pixels, as the engine does (`reads_pixels`).

    Biases are added to the layer's integer accumulator before the rescale, as `bias` says:
    - "int32": the int32 bias round(b / (S_W * S_in)), on the accumulator's scale;
    - "raw": the float bias as trained. The accumulator's unit is S_W * S_in (below 1e-3), so b is, in
      effect, multiplied by S_W * S_in: a bias of 0.5 becomes 0.5 * S_W * S_in in real units, i.e. it almost
      vanishes. This is the lab's "weights quantized but bias not" variant;
    - "none": no bias.

    Max pooling is applied to the accumulator, before the rescale: the rescale and ReLU are monotonic
    non-decreasing (M > 0), so they commute with max and the result is identical, at a quarter of the cost.
    ReLU is the clamp's lower bound: max(clamp(q, qmin, qmax), 0) = clamp(q, max(qmin, 0), qmax).
    """

    reads_pixels = True

    def __init__(self, network: QuantizedNetwork, bias: str = "int32"):
        self.activations = network.activations
        self.input_table = torch.from_numpy(network.input_table().astype(np.float32))
        self.q_weights, self.multipliers, self.biases = {}, {}, {}
        for layer in LAYERS:
            quantized = network.layers[layer.name]
            q = torch.from_numpy(quantized.weight.astype(np.float64))
            max_abs_input = max(abs(v) for v in network.activations[input_of(layer.name)].range)
            q = q.to(accumulation_dtype(q, max_abs_input))
            self.q_weights[layer.name] = q.contiguous(memory_format=torch.channels_last) if q.ndim == 4 else q
            multiplier = torch.as_tensor(network.multiplier(layer.name), dtype=torch.float64)
            self.multipliers[layer.name] = channel_shaped(multiplier, q.ndim, 1)  # the accumulator has q's ndim
            value = {"int32": quantized.q_bias, "raw": quantized.bias, "none": None}[bias]
            if value is not None:
                self.biases[layer.name] = channel_shaped(torch.as_tensor(value.astype(np.float64)), q.ndim, 1)

    def _apply(self, layer: Layer, q_x: torch.Tensor) -> torch.Tensor:
        acc = integer_layer(layer, q_x, self.q_weights[layer.name])
        if layer.pool:
            acc = max_pool(acc)
        acc = acc.to(torch.float64)  # exact, and M * acc rounded once in float64
        if layer.name in self.biases:
            acc += self.biases[layer.name]
        qmin, qmax = self.activations[layer.name].range
        return requantize(acc, self.multipliers[layer.name], max(qmin, 0) if layer.relu else qmin, qmax)

    def quantized_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """The input quantized through the table of the 256 pixel values, which holds exactly what quantizing each
        normalized pixel gives; looked up in channels-last order, the layout the convolutions run fastest in."""
        return torch.take(self.input_table, pixels.permute(0, 2, 3, 1).to(torch.int64)).permute(0, 3, 1, 2)

    def layer(self, layer: Layer, q_x: torch.Tensor) -> torch.Tensor:
        """One layer, its ReLU and pooling: the next layer's integer input (the logits after the last)."""
        return self._apply(layer, q_x.flatten(1) if layer.kind == "fc" else q_x)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """Integer logits (as float64 holding integers) of uint8 images (N, 3, 32, 32)."""
        q = self.quantized_input(pixels)
        for layer in LAYERS:
            q = self.layer(layer, q)
        return q
