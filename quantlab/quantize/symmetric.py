"""Symmetric quantization math, on NumPy arrays and torch tensors alike (zero point 0 everywhere, as in the lab):

    integer range   signed b bits: [-2^(b-1), 2^(b-1) - 1]      unsigned b bits: [0, 2^b - 1]
    scale           S = T / qmax, where T is the clipping threshold (max|W| for weights)
    quantize        q = clamp(round(r / S), qmin, qmax)          round: half to even, as torch.round
    layer           acc = sum_j q_W[o, j] * q_in[j]  (+ bias)    an exact integer
    rescale         q_out = clamp(round(M * acc), qmin, qmax),   M = S_in * S_W / S_out
    int32 bias      q_b = round(b / S_bias),                     S_bias = S_W * S_in

Every function uses only operations that NumPy and torch define alike, so post-training quantization (NumPy,
float64) and quantization-aware training (torch, the weights' own float32) share them.
"""

import re
from dataclasses import dataclass

import numpy as np

from quantlab.architecture import ACTIVATIONS, LAYERS, input_of

BITS = range(2, 9)  # the bit widths the integer networks support: stored in int8/uint8, summed in int32


def int_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """The integers a `bits`-bit value holds: 8 signed -> (-128, 127), 8 unsigned -> (0, 255)."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


def scale_for(threshold, bits: int, signed: bool = True):
    """S = T / qmax, so that T maps to the largest positive integer. A zero threshold (an all-zero tensor)
    gets scale 1: any scale represents zeros exactly, and dividing by zero would not."""
    return threshold / int_range(bits, signed)[1] + (threshold == 0)  # + 1 exactly where T = 0, + 0 elsewhere


def quantize(x, scale, bits: int, signed: bool = True):
    """q = clamp(round(x / S), qmin, qmax) of a NumPy array or a torch tensor (both round half to even);
    the result holds integers in x's floating dtype. Rounded and clipped in place: a fresh large buffer per
    operation costs more than the arithmetic."""
    qmin, qmax = int_range(bits, signed)
    q = x / scale
    if isinstance(q, np.ndarray):
        return np.clip(np.round(q, out=q), qmin, qmax, out=q)
    return q.round_().clamp_(qmin, qmax)


def weight_scale(weight, bits: int, per_channel: bool = False):
    """S_W = max|W| / qmax over the whole tensor, or over each output channel (axis 0) when per_channel, divided
    in float64, of a NumPy array or a torch tensor (on its device). Rounded to float32 it is exactly the float32
    quotient: float64 has more than twice float32's precision, so the double rounding is exact."""
    rows = abs(weight).reshape(len(weight), -1)
    absmax = rows.max(axis=1).astype(np.float64) if isinstance(rows, np.ndarray) else rows.amax(dim=1).double()
    return scale_for(absmax if per_channel else absmax.max(), bits)


WEIGHT_SCALES = ("max", "mse")  # S_W from max|W| (the lab's), or clipped by the least squared error
CLIP_CANDIDATES = 100  # clipped weight scales: T = max|W| (1 - k / 100), k = 0 .. 99


def clipped_weight_scale(weight: np.ndarray, bits: int, per_channel: bool = False) -> np.ndarray:
    """S_W = T / qmax with T, among max|W| (1 - k / 100) for k = 0 .. 99, the one that minimizes the squared
    quantization error sum (W - S_W quantize(W, S_W))^2 of the tensor, or of each output channel when per_channel
    (the weights' MSE initialization of BRECQ's and QDrop's quantizers). At 2 bits, max|W| leaves the levels
    -2, -1, 0, 1 times max|W|, and almost every weight rounds to 0; a clipped T spends them on the bulk."""
    rows = weight.astype(np.float64).reshape(len(weight), -1)
    fractions = 1 - np.arange(CLIP_CANDIDATES) / CLIP_CANDIDATES
    best = np.array([candidates[squared_errors(row, None, candidates, bits).argmin()]
                     for row in (rows if per_channel else rows.reshape(1, -1))
                     for candidates in [np.abs(row).max() * fractions]])
    return scale_for(best if per_channel else best[0], bits)


def weight_scales(state: dict[str, np.ndarray], weight_bits: dict[str, int], per_channel: bool,
                  method: str) -> dict[str, np.ndarray]:
    """Every layer's S_W (float64) at its bits: max|W| / qmax ("max"), or clipped by the least squared error
    ("mse")."""
    return {layer.name: chosen_weight_scale(state[f"{layer.name}.weight"], weight_bits[layer.name], per_channel,
                                            method) for layer in LAYERS}


def chosen_weight_scale(weight: np.ndarray, bits: int, per_channel: bool, method: str) -> np.ndarray:
    """A weight's S_W (float64) by `method`, a name in WEIGHT_SCALES."""
    scale = weight_scale if method == WEIGHT_SCALES[0] else clipped_weight_scale
    return np.asarray(scale(weight, bits, per_channel), np.float64)


def channel_shaped(scale, ndim: int, axis: int):
    """A per-channel scale (NumPy or torch) reshaped to broadcast along `axis` of an `ndim`-dim tensor:
    axis 0 of a weight (out, in, kh, kw), axis 1 of an activation (N, C, H, W). Scalars pass unchanged."""
    return scale if scale.ndim == 0 else scale.reshape((-1,) + (1,) * (ndim - axis - 1))


def quantize_weight(weight: np.ndarray, bits: int, per_channel: bool = False,
                    scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The integer weight (int8 storage) and its scale S_W (a scalar, or one per output channel): `scale`, or
    by default max|W| / qmax."""
    scale = weight_scale(weight, bits, per_channel) if scale is None else scale
    q = quantize(weight.astype(np.float64), channel_shaped(scale, weight.ndim, 0), bits)
    return q.astype(np.int8), scale


def squared_errors(values, counts, thresholds, bits: int, signed: bool = True):
    """Total squared quantization error sum_x counts[x] * (x - S quantize(x, S))^2 of the values x for every
    threshold T (S = T / qmax): the error that the MSE calibration and the QAT range statistic minimize.
    `counts` None counts every value once."""
    scales = (thresholds / int_range(bits, signed)[1])[:, None]
    error = quantize(values[None, :], scales, bits, signed)  # one (thresholds, values) buffer, then in place
    error *= scales
    error -= values[None, :]  # S q - x: exactly the negative of x - S q, and squared the same
    error *= error
    return error.sum(-1) if counts is None else error @ counts


def activation_signs(unsigned_activations: bool) -> dict[str, bool]:
    """Which activations are signed: all of them, or, with `unsigned_activations`, all but the post-ReLU
    layer outputs (which are never negative and then use [0, 2^b - 1])."""
    relu = {layer.name for layer in LAYERS if layer.relu}
    return {name: not (unsigned_activations and name in relu) for name in ACTIVATIONS}


def activation_widths(activation_bits: int, logit_bits: int | None = None,
                      layer_bits: dict[str, list[int]] | None = None) -> dict[str, int]:
    """The bits of every activation: `activation_bits`, except the logits (the last layer's output) at
    `logit_bits` where given, and the input of each layer that `layer_bits` ({layer: [weight bits, input
    bits] or None}) gives bits at its input bits. Few bits at the logits tie the largest ones (at 4 bits, 16
    levels), and the tie decides the prediction; 8-bit logits, as deployed int8 networks have, avoid that."""
    logits = LAYERS[-1].name
    widths = {name: logit_bits if logit_bits is not None and name == logits else activation_bits
              for name in ACTIVATIONS}
    overrides = {input_of(layer): pair[1] for layer, pair in (layer_bits or {}).items() if pair is not None}
    return widths | overrides


def weight_widths(weight_bits: int, layer_bits: dict[str, list[int]] | None = None) -> dict[str, int]:
    """The weight bits of every layer: `weight_bits`, except where `layer_bits` ({layer: [weight bits, input
    bits] or None}) gives the layer bits."""
    return {layer.name: ((layer_bits or {}).get(layer.name) or (weight_bits,))[0] for layer in LAYERS}


def bias_scale(weight_scale, input_scale: float):
    """S_bias = S_W * S_in: the unit of the integer accumulator the bias is added to."""
    return np.asarray(weight_scale, np.float64) * input_scale


def quantize_bias(bias: np.ndarray, weight_scale, input_scale: float) -> np.ndarray:
    """q_b = round(b / S_bias) as int32; a value beyond int32 is an error, never a silent wrap."""
    q = np.round(bias.astype(np.float64) / bias_scale(weight_scale, input_scale))
    if np.abs(q).max(initial=0) > np.iinfo(np.int32).max:
        raise OverflowError(f"quantized bias {q.max()} exceeds int32: the scales S_W * S_in are too small")
    return q.astype(np.int32)


@dataclass(frozen=True)
class Setting:
    """A [weight bits, activation bits] pair, and where a comparison sets it per cell, the weight granularity
    (None: the run's quant.per_channel, not part of the name). Its name keys files and metrics, its label
    tables and figures; `parse` reads a name back, the only place that does."""

    weight_bits: int
    activation_bits: int
    per_channel: bool | None = None

    @property
    def granularity(self) -> str | None:
        return None if self.per_channel is None else "channel" if self.per_channel else "tensor"

    @property
    def name(self) -> str:
        """"W8A4", or with a granularity "W4A8-tensor"."""
        width = f"W{self.weight_bits}A{self.activation_bits}"
        return width if self.per_channel is None else f"{width}-{self.granularity}"

    @property
    def width(self) -> "Setting":
        """The setting without its granularity."""
        return Setting(self.weight_bits, self.activation_bits)

    @property
    def label(self) -> str:
        """"8/4", or "4/8 per tensor"."""
        width = f"{self.weight_bits}/{self.activation_bits}"
        return width if self.per_channel is None else f"{width} per {self.granularity}"

    @classmethod
    def parse(cls, name: str) -> "Setting":
        match = re.fullmatch(r"W(\d+)A(\d+)(?:-(tensor|channel))?", name)
        if match is None:
            raise ValueError(f"{name!r} is not a setting name such as W8A4 or W4A8-tensor")
        granularity = match[3]
        return cls(int(match[1]), int(match[2]), None if granularity is None else granularity == "channel")
