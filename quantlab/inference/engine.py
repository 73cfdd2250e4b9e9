"""The fixed-point engine: an exported integer network (`quantlab.inference.export_format`), run fast and bit-exact.

Only integer tensors from the pixels to the logits: an input lookup table, int8 x int8 matrix products with
int32 accumulation (`torch._int_mm`, oneDNN's int8 GEMM), int32 biases, the fixed-point rescale of
`quantlab.inference.fixed_point` (M0, shift per layer or per channel), ReLU as a clamp, max pooling on
integers. Its logits are the standalone runner's, bit for bit.

The int32 accumulators cannot be checked after an int8 GEMM (it wraps), so they are checked before: for
every output channel, sum_j |q_W[o, j]| * max|q_in| + |q_b[o]| must fit in int32, or building the engine
fails, naming the layer. Max pooling is applied to the accumulators, before the rescale: the fixed-point
rescale and the clamp are monotonic non-decreasing (M0 > 0), so they commute with max (the runner pools
after, as the reference graphs do; the tests hold the two to the same logits).
"""

from __future__ import annotations

import numpy as np
import torch

from quantlab.inference.export_format import INPUT_LUT
from quantlab.inference.fixed_point import (
    INT32_MAX,
    ONNXRUNTIME,
    accumulator_bound,
    onnxruntime_multiplier,
    requantize,
    round_scaled,
)
from quantlab.model import max_pool

# Inputs with values above 127 (unsigned 8-bit) are shifted by -128 into int8 for the GEMM; the shift is
# added back exactly as 128 * sum_j q_W[o, j].
UNSIGNED_OFFSET = 128


class EngineLayer:
    def __init__(self, spec: dict, arrays: dict[str, np.ndarray], input_range: tuple[int, int], input_scale: float,
                 rounding: str):
        self.spec, self.rounding = spec, rounding
        weight = arrays[spec["weight"]].astype(np.int64)
        self.kernel = weight.shape[-1] if spec["kind"] == "conv" else 0
        flat = weight.reshape(len(weight), -1)
        self.offset = UNSIGNED_OFFSET if input_range[1] > 127 else 0
        bias = arrays[spec["bias"]].astype(np.int64) if spec["bias"] else np.zeros(len(flat), np.int64)
        # the final sums, and the GEMM's own partial sums on the offset inputs, must both fit in int32
        shifted_range = (input_range[0] - self.offset, input_range[1] - self.offset)
        worst = max(accumulator_bound(flat, input_range, bias), accumulator_bound(flat, shifted_range))
        if worst > INT32_MAX:
            raise OverflowError(f"{spec['name']}: the int32 accumulator can overflow (worst case {worst} > "
                                f"{INT32_MAX}); use fewer bits or smaller ranges")
        # (K, O) for _int_mm; a conv's columns ordered (kh, kw, C), as `windows` lays out the input, with zero
        # weights for the channels it pads to a multiple of 4
        columns = flat
        if self.kernel:
            channels_last = weight.transpose(0, 2, 3, 1)
            padding = [(0, 0)] * 3 + [(0, padded_channels(weight.shape[1]) - weight.shape[1])]
            columns = np.pad(channels_last, padding).reshape(len(weight), -1)
        self.weight_t = torch.from_numpy(columns.T.astype(np.int8)).contiguous()
        self.bias = torch.from_numpy(bias + self.offset * flat.sum(axis=1))  # int64, added to int32 sums
        self.m0, self.shift = (torch.from_numpy(arrays[spec[key]].astype(np.int64)) for key in ("multiplier", "shift"))
        self.bound = worst  # no accumulator can exceed it: requantize need not measure them
        self.multiplier = torch.from_numpy(onnxruntime_multiplier(input_scale, spec["weight_scale"],
                                                                  spec["output_scale"]).reshape(-1))

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        """int32 activations, channels last (N, H, W, C) or (N, C) -> the next activations."""
        if self.offset:
            q = q - self.offset
        q = q.to(torch.int8)
        if self.kernel:
            n, h, w, _ = q.shape
            k = self.kernel
            acc = torch._int_mm(windows(q, k), self.weight_t).reshape(n, h - k + 1, w - k + 1, -1)
            if self.spec["pool"]:  # on the int32 accumulators, channels last
                acc = max_pool(acc.permute(0, 3, 1, 2), self.spec["pool"]).permute(0, 2, 3, 1)
        else:
            acc = torch._int_mm(q, self.weight_t)
        # the bias after the pooling: a per-channel constant commutes with max, and there are fewer sums
        acc = self.bias + acc  # int64
        if self.rounding == ONNXRUNTIME:
            return round_scaled(acc.to(torch.float32) * self.multiplier, self.spec["clamp"]).int()
        return requantize(acc, self.m0, self.shift, self.spec["pre_shift"], self.spec["clamp"],
                          self.spec["name"], self.bound).int()


def padded_channels(channels: int) -> int:
    return -(-channels // 4) * 4


def windows(q: torch.Tensor, k: int) -> torch.Tensor:
    """im2col of a channels-last int8 (N, H, W, C) tensor for a k x k convolution (stride 1, no padding): one row
    per output position, columns ordered (kh, kw, C), C zero-padded to a multiple of 4. Each pixel's channels
    are then moved as int32 words, and for each kh a window's row is k * C / 4 neighbouring words: the strided
    copy (the costly part) moves a quarter as many elements (conv1's 3 channels, padded to 4: a 5x5 window is
    25 words instead of 75 bytes)."""
    n, h, w, c = q.shape
    padded = padded_channels(c)
    if padded != c:
        q = torch.nn.functional.pad(q, (0, padded - c))
    words = q.contiguous().view(torch.int32)  # (N, H, W, padded / 4)
    c = padded // 4
    view = words.as_strided((n, h - k + 1, w - k + 1, k, k * c), (h * w * c, w * c, c, w * c, 1))
    return view.reshape(-1, k * k * c).view(torch.int8)


class FixedPointEngine:
    """Integer logits (int32) of uint8 images (N, 3, 32, 32), from an export's manifest and arrays, requantized
    as the export's `rounding` says or as `rounding` (quantlab.inference.fixed_point.REQUANTIZATIONS)."""

    reads_pixels = True

    def __init__(self, manifest: dict, arrays: dict[str, np.ndarray], rounding: str | None = None):
        self.lut = torch.from_numpy(arrays[INPUT_LUT].astype(np.int32))
        ranges = [tuple(manifest["input"]["range"])] + [tuple(layer["clamp"]) for layer in manifest["layers"]]
        scales = [manifest["input"]["scale"]] + [layer["output_scale"] for layer in manifest["layers"]]
        self.layers = [EngineLayer(spec, arrays, ranges[i], scales[i], rounding or manifest["rounding"])
                       for i, spec in enumerate(manifest["layers"])]

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        q = torch.take(self.lut, pixels.permute(0, 2, 3, 1).to(torch.int64))  # channels last: (N, H, W, C)
        for layer in self.layers:
            if not layer.kernel and q.ndim == 4:
                q = q.permute(0, 3, 1, 2).reshape(len(q), -1)  # flatten in (C, H, W) order, as the model
            q = layer(q)
        return q
