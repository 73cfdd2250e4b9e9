"""Symmetric quantization math and the integer-only forward pass of the lab (its `NetQuantized`).

Conventions (zero point 0 everywhere, as in the lab):

    integer range   signed b bits: [-2^(b-1), 2^(b-1) - 1]      unsigned b bits: [0, 2^b - 1]
    scale           S = T / qmax, where T is the clipping threshold (max|W| for weights)
    quantize        q = clamp(round(r / S), qmin, qmax)          round: half to even, as torch.round
    layer           acc = sum_j q_W[o, j] * q_in[j]  (+ bias)    an exact integer
    rescale         q_out = clamp(round(M * acc), qmin, qmax),   M = S_in * S_W / S_out
    int32 bias      q_b = round(b / S_bias),                     S_bias = S_W * S_in

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

from quantlab.model import ACTIVATIONS, LAYERS, Layer, walk

FLOAT32_EXACT_LIMIT = 2 ** 24


def int_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """The integers a `bits`-bit value holds: 8 signed -> (-128, 127), 8 unsigned -> (0, 255)."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


def scale_for(threshold: float | np.ndarray, bits: int, signed: bool = True) -> float | np.ndarray:
    """S = T / qmax, so that T maps to the largest positive integer. A zero threshold (an all-zero tensor)
    gets scale 1: any scale represents zeros exactly, and dividing by zero would not."""
    qmax = int_range(bits, signed)[1]
    threshold = np.asarray(threshold, dtype=np.float64)
    return np.where(threshold > 0, threshold / qmax, 1.0)[()]


def quantize(x: torch.Tensor, scale, bits: int, signed: bool = True) -> torch.Tensor:
    """q = clamp(round(x / S), qmin, qmax); the result holds integers in x's floating dtype."""
    qmin, qmax = int_range(bits, signed)
    return torch.clamp(torch.round(x / torch.as_tensor(scale, dtype=x.dtype)), qmin, qmax)


def weight_scale(weight: np.ndarray, bits: int, per_channel: bool = False) -> np.ndarray:
    """max|W| / qmax over the whole tensor, or over each output channel (axis 0) when per_channel."""
    absmax = np.abs(weight.astype(np.float64)).reshape(len(weight), -1).max(axis=1)
    return scale_for(absmax if per_channel else absmax.max(), bits)


def channel_shaped(scale, ndim: int, axis: int):
    """A per-channel scale (NumPy or torch) reshaped to broadcast along `axis` of an `ndim`-dim tensor:
    axis 0 of a weight (out, in, kh, kw), axis 1 of an activation (N, C, H, W). Scalars pass unchanged."""
    return scale if scale.ndim == 0 else scale.reshape((-1,) + (1,) * (ndim - axis - 1))


def requantize(acc: torch.Tensor, multiplier: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """q_out = clamp(round(M * acc), qmin, qmax), in float64: acc is exact there, and M * acc is rounded
    once, correctly, before the integer rounding."""
    return torch.clamp(torch.round(acc.to(torch.float64) * multiplier), qmin, qmax)


def accumulation_dtype(q_weight: torch.Tensor, max_abs_input: int) -> torch.dtype:
    """float32 when no partial sum of this layer can reach 2^24, else float64 (see the module docstring)."""
    worst = q_weight.abs().flatten(1).sum(1).max().item() * max_abs_input
    return torch.float32 if worst < FLOAT32_EXACT_LIMIT else torch.float64


def integer_layer(layer: Layer, q_x: torch.Tensor, q_weight: torch.Tensor) -> torch.Tensor:
    """The exact integer accumulator sum_j q_W[o, j] * q_x[j] of a conv or fc layer."""
    op = F.conv2d if layer.kind == "conv" else F.linear
    return op(q_x.to(q_weight.dtype), q_weight)


def activation_signs(unsigned_activations: bool) -> dict[str, bool]:
    """Which activations are signed: all of them, or, with `unsigned_activations`, all but the post-ReLU
    layer outputs (which are never negative and then use [0, 2^b - 1])."""
    relu = {layer.name for layer in LAYERS if layer.relu}
    return {name: not (unsigned_activations and name in relu) for name in ACTIVATIONS}


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
            max_abs_input = max(abs(v) for v in net.range(net.input_of(layer)))
            q = q.to(accumulation_dtype(q, max_abs_input))
            net.q_weights[layer.name] = q.contiguous(memory_format=torch.channels_last) if q.ndim == 4 else q
        return net

    def range(self, activation: str) -> tuple[int, int]:
        return int_range(self.activations["bits"], self.activations["signed"][activation])

    @staticmethod
    def input_of(layer: Layer) -> str:
        """The activation entering `layer` (pooling does not change scales)."""
        return ACTIVATIONS[ACTIVATIONS.index(layer.name) - 1]

    def multiplier(self, layer: Layer) -> torch.Tensor:
        """M = S_in * S_W / S_out, where S_in is the scale of the activation entering the layer."""
        scales = self.activations["scales"]
        return scales[self.input_of(layer)] * self.weight_scales[layer.name] / scales[layer.name]

    def _apply(self, layer: Layer, q_x: torch.Tensor) -> torch.Tensor:
        acc = integer_layer(layer, q_x, self.q_weights[layer.name])
        if layer.pool:
            acc = F.max_pool2d(acc, 2)
        if layer.name == "fc3" and self.bias_mode != "none":
            acc = acc.to(torch.float64) + self.bias
        qmin, qmax = self.range(layer.name)
        return requantize(acc, channel_shaped(self.multiplier(layer), acc.ndim, 1), qmin, qmax)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Integer logits (as float64 holding integers) of float inputs x in [-1, 1]."""
        q_x = quantize(x.to(torch.float64), self.activations["scales"]["input"], self.activations["bits"],
                       self.activations["signed"]["input"])
        return walk(q_x.contiguous(memory_format=torch.channels_last), self._apply, pool=False)


def bias_scale(weight_scale, input_scale: float):
    """S_bias = S_W * S_in: the unit of the integer accumulator the bias is added to."""
    return np.asarray(weight_scale, np.float64) * input_scale


def quantize_bias(bias: np.ndarray, weight_scale, input_scale: float) -> np.ndarray:
    """q_b = round(b / S_bias) as int32; a value beyond int32 is an error, never a silent wrap."""
    q = np.round(bias.astype(np.float64) / bias_scale(weight_scale, input_scale))
    info = np.iinfo(np.int32)
    if np.abs(q).max(initial=0) > info.max:
        raise OverflowError(f"quantized bias {q.max()} exceeds int32: the scales S_W * S_in are too small")
    return q.astype(np.int32)


def quantize_weights(state: dict[str, np.ndarray], bits: int = 8, per_channel: bool = False) -> dict[str, np.ndarray]:
    """Every layer's weight as integers (int8 storage) and its scale: {"conv1": q, "conv1.scale": S, ...}."""
    out = {}
    for layer in LAYERS:
        weight = state[f"{layer.name}.weight"]
        scale = weight_scale(weight, bits, per_channel)
        q = quantize(torch.from_numpy(weight.astype(np.float64)), channel_shaped(scale, weight.ndim, 0), bits)
        out[layer.name] = q.numpy().astype(np.int8)
        out[f"{layer.name}.scale"] = np.asarray(scale, np.float64)
    return out


def split_weights(arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The integer weights and the scales of a `quantize_weights` result, each keyed by layer name."""
    return ({layer.name: arrays[layer.name] for layer in LAYERS},
            {layer.name: arrays[f"{layer.name}.scale"] for layer in LAYERS})


def dequantized_state(state: dict[str, np.ndarray], arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float state dict with every weight replaced by S * q: the "quantized weights" model."""
    q_weights, scales = split_weights(arrays)
    out = dict(state)
    for name, q in q_weights.items():
        out[f"{name}.weight"] = (q * channel_shaped(scales[name], q.ndim, 0)).astype(np.float32)
    return out
