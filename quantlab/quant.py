"""Symmetric quantization math, on NumPy arrays (and, where noted, torch tensors alike).

Conventions (zero point 0 everywhere, as in the lab):

    integer range   signed b bits: [-2^(b-1), 2^(b-1) - 1]      unsigned b bits: [0, 2^b - 1]
    scale           S = T / qmax, where T is the clipping threshold (max|W| for weights)
    quantize        q = clamp(round(r / S), qmin, qmax)          round: half to even, as torch.round
    layer           acc = sum_j q_W[o, j] * q_in[j]  (+ bias)    an exact integer
    rescale         q_out = clamp(round(M * acc), qmin, qmax),   M = S_in * S_W / S_out
    int32 bias      q_b = round(b / S_bias),                     S_bias = S_W * S_in

The integer-only forward pass that applies them is `quantlab.integer.IntegerNet`.
"""

from __future__ import annotations

import numpy as np

from quantlab.architecture import ACTIVATIONS, LAYERS, input_of

LOGITS = LAYERS[-1].name  # the last layer's output


def int_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """The integers a `bits`-bit value holds: 8 signed -> (-128, 127), 8 unsigned -> (0, 255)."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


def scale_for(threshold: float | np.ndarray, bits: int, signed: bool = True) -> float | np.ndarray:
    """S = T / qmax, so that T maps to the largest positive integer. A zero threshold (an all-zero tensor)
    gets scale 1: any scale represents zeros exactly, and dividing by zero would not."""
    qmax = int_range(bits, signed)[1]
    threshold = np.asarray(threshold, dtype=np.float64)
    return np.where(threshold > 0, threshold / qmax, 1.0)[()]


def quantize(x, scale, bits: int, signed: bool = True):
    """q = clamp(round(x / S), qmin, qmax) of a NumPy array or a torch tensor (both round half to even);
    the result holds integers in x's floating dtype."""
    qmin, qmax = int_range(bits, signed)
    return (x / scale).round().clip(qmin, qmax)


def weight_scale(weight: np.ndarray, bits: int, per_channel: bool = False) -> np.ndarray:
    """max|W| / qmax over the whole tensor, or over each output channel (axis 0) when per_channel."""
    absmax = np.abs(weight.astype(np.float64)).reshape(len(weight), -1).max(axis=1)
    return scale_for(absmax if per_channel else absmax.max(), bits)


def channel_shaped(scale, ndim: int, axis: int):
    """A per-channel scale (NumPy or torch) reshaped to broadcast along `axis` of an `ndim`-dim tensor:
    axis 0 of a weight (out, in, kh, kw), axis 1 of an activation (N, C, H, W). Scalars pass unchanged."""
    return scale if scale.ndim == 0 else scale.reshape((-1,) + (1,) * (ndim - axis - 1))


def requantize(acc, multiplier, qmin: int, qmax: int):
    """q_out = clamp(round(M * acc), qmin, qmax) of a float64 accumulator (NumPy or torch): acc is exact
    there, and M * acc is rounded once, correctly, before the integer rounding."""
    return (acc * multiplier).round().clip(qmin, qmax)


def activation_signs(unsigned_activations: bool) -> dict[str, bool]:
    """Which activations are signed: all of them, or, with `unsigned_activations`, all but the post-ReLU
    layer outputs (which are never negative and then use [0, 2^b - 1])."""
    relu = {layer.name for layer in LAYERS if layer.relu}
    return {name: not (unsigned_activations and name in relu) for name in ACTIVATIONS}


def activation_widths(activation_bits: int, logit_bits: int | None = None) -> dict[str, int]:
    """The bits of every activation: `activation_bits`, except the logits (the last layer's output) at
    `logit_bits` where given. Few bits there tie the largest logits (at 4 bits, 16 levels), and the tie
    decides the prediction; 8-bit logits, as deployed int8 networks have, avoid that."""
    return {name: logit_bits if logit_bits is not None and name == LOGITS else activation_bits
            for name in ACTIVATIONS}


def activation_quantization(method: str, thresholds: dict[str, float], bits: dict[str, int],
                            signs: dict[str, bool]) -> dict:
    """What quantize_activations stores and IntegerNet reads: every activation's bits, sign, threshold
    and scale."""
    return {"calib": method, "bits": dict(bits), "signed": dict(signs), "thresholds": dict(thresholds),
            "scales": {name: float(scale_for(t, bits[name], signs[name])) for name, t in thresholds.items()}}


def activation_range(activations: dict, name: str) -> tuple[int, int]:
    """The integer range of activation `name` under an `activation_quantization` record."""
    return int_range(activations["bits"][name], activations["signed"][name])


def multiplier(activations: dict, weight_scale, layer_name: str):
    """M = S_in * S_W / S_out of a layer: S_in the scale of the activation entering it, S_out its own."""
    scales = activations["scales"]
    return scales[input_of(layer_name)] * weight_scale / scales[layer_name]


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


def quantize_weights(state: dict[str, np.ndarray], bits: int = 8,
                     per_channel: bool = False) -> dict[str, np.ndarray]:
    """Every layer's weight as integers (int8 storage) and its scale: {"conv1": q, "conv1.scale": S, ...},
    and the bit width ("bits")."""
    out = {"bits": np.int64(bits)}
    for layer in LAYERS:
        weight = state[f"{layer.name}.weight"]
        scale = weight_scale(weight, bits, per_channel)
        q = quantize(weight.astype(np.float64), channel_shaped(scale, weight.ndim, 0), bits)
        out[layer.name] = q.astype(np.int8)
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
