"""The fixed-point engine: an exported integer network (`quantlab.inference.export_format`), run fast and bit-exact.

Only integer values from the pixels to the logits:
- an input lookup table of the 256 pixel values;
- the convolutions and fully connected layers as float convolutions and matrix products of the integer values,
  exact on every CPU, on any number of threads and in any summation order: float32 where every partial sum
  stays below 2^24 in magnitude (float32 holds every integer up to there), float64 otherwise
  (`quantlab.inference.float_rescale.accumulation_dtype`, from the layer's own weights). Integer kernels are
  not exact everywhere: oneDNN's int8 products (and `torch._int_mm`'s) sum pairs in int16 and saturate on CPUs
  without VNNI ("Nuances of int8 Computations", oneDNN's developer guide), and quantlab.compute caps oneDNN
  at AVX2;
- int32 biases, max pooling of the sums, and the requantization of `quantlab.inference.fixed_point`.
Its logits are the standalone runner's, bit for bit.

Every layer's worst case, sum_j |q_W[o, j]| * max|q_in| + |q_b[o]| for every output channel, must fit in int32,
or building the engine fails. Max pooling is applied to the sums, before the rescale, and the rescale is a
lookup: rescale and clamp are monotonic non-decreasing in the sum v (M0 > 0), so they commute with max, and
they are constant below and above the few hundred sums where the output steps. `requantization_table`
tabulates that stretch once per distinct multiplier with the fixed_point functions themselves; a layer then
clamps v into it and gathers. The table holds the next layer's inputs in that layer's float type. Where it
would pass TABLE_LIMIT entries (a tiny multiplier, per channel), the layer computes the rescale instead.
"""

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
from quantlab.inference.float_rescale import accumulation_dtype
from quantlab.model import max_pool

TABLE_LIMIT = 2 ** 22  # entries of a layer's requantization table
LOGITS = torch.int32


def input_dtype(spec: dict, arrays: dict[str, np.ndarray], input_range: tuple[int, int]) -> torch.dtype:
    """The float type in which a layer takes its integer inputs and sums their products exactly: float32 where
    no partial sum can reach 2^24, else float64."""
    return accumulation_dtype(torch.from_numpy(arrays[spec["weight"]]), max(map(abs, input_range)))


class EngineLayer:
    def __init__(self, spec: dict, arrays: dict[str, np.ndarray], input_range: tuple[int, int], input_scale: float,
                 rounding: str, output_dtype: torch.dtype, input_shape: tuple[int, ...]):
        self.spec, self.rounding, self.output_dtype = spec, rounding, output_dtype
        weight = arrays[spec["weight"]]
        flat = weight.astype(np.int64).reshape(len(weight), -1)
        dtype = input_dtype(spec, arrays, input_range)
        bias = arrays[spec["bias"]].astype(np.int64) if spec["bias"] else np.zeros(len(flat), np.int64)
        self.bound = accumulator_bound(flat, input_range, bias)
        if self.bound > INT32_MAX:
            raise OverflowError(f"{spec['name']}: the int32 accumulator can overflow (worst case {self.bound} > "
                                f"{INT32_MAX}); use fewer bits or smaller ranges")
        if spec["kind"] == "conv":
            self.weight = torch.from_numpy(weight).to(dtype)
        else:  # (K, O), rows in the order of the input: (H, W, C) after a convolution's channels-last output
            columns = flat.reshape(len(flat), *input_shape).transpose(0, *range(2, len(input_shape) + 1), 1)
            self.weight = torch.from_numpy(columns.reshape(len(flat), -1).T).to(dtype).contiguous()
        self.bias = torch.from_numpy(bias)
        self.m0, self.shift = (torch.from_numpy(arrays[spec[key]].astype(np.int64)) for key in ("multiplier", "shift"))
        self.multiplier = torch.from_numpy(onnxruntime_multiplier(input_scale, spec["weight_scale"],
                                                                  spec["output_scale"]).reshape(-1))
        self.table = self.requantization_table()

    def rescale(self, v: torch.Tensor, channels=slice(None)) -> torch.Tensor:
        """The rescale and clamp of int64 sums v (..., channels) to the output's integers, encoded for the next
        layer, as the engine's rounding says."""
        if self.rounding == ONNXRUNTIME:
            q = round_scaled(v.to(torch.float32) * self.multiplier[channels], self.spec["clamp"]).long()
        else:
            q = requantize(v, self.m0[channels], self.shift[channels], self.spec["pre_shift"], self.spec["clamp"],
                           self.spec["name"], self.bound)
        return q.to(self.output_dtype)

    def requantization_table(self) -> dict[str, torch.Tensor] | None:
        """The rescale of every sum v from `first` to `last` of each channel (where it steps, with a step of
        margin each side), one row per distinct multiplier, flattened: a channel's sums without their bias are
        looked up at clamp(acc, low, high) + offset. None where it would exceed TABLE_LIMIT entries."""
        real = (self.multiplier.double() if self.rounding == ONNXRUNTIME
                else self.m0 * torch.pow(2.0, self.shift.double() - 31)).numpy()
        clamp = np.array(self.spec["clamp"])
        with np.errstate(divide="ignore"):
            ends = np.floor((clamp[0] - 1) / real) - 1, np.ceil((clamp[1] + 1) / real) + 1
        first, last = (np.clip(end, -self.bound, self.bound).astype(np.int64) for end in ends)
        _, channel_of_row, row = np.unique(real, return_index=True, return_inverse=True)
        length = int((last - first).max()) + 1
        if len(channel_of_row) * length > TABLE_LIMIT:
            return None
        sums = np.minimum(first[channel_of_row, None] + np.arange(length), last[channel_of_row, None])
        values = self.rescale(torch.from_numpy(sums.T), torch.from_numpy(channel_of_row)).T  # (rows, length)
        # by monotonicity, sums beyond a row's ends give its end values: the clamp's, unless nothing lies beyond
        reached = values[:, [0, -1]].long().numpy() == clamp
        if not (reached | (np.stack([first, last], 1) == [-self.bound, self.bound])[channel_of_row]).all():
            raise ArithmeticError(f"{self.spec['name']}: the requantization table misses a step of the rescale")
        bias = self.bias.numpy()
        lookup = {"low": first - bias, "high": last - bias, "offset": row * length - first + bias}
        if any(np.abs(array).max() > INT32_MAX for array in lookup.values()):
            return None
        return {"values": values.reshape(-1).contiguous(),
                **{key: torch.from_numpy(array).int() for key, array in lookup.items()}}

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        """Integer inputs as floats, channels last (N, H, W, C) or (N, C) -> the next layer's inputs."""
        if self.spec["kind"] == "conv":
            acc = torch.nn.functional.conv2d(q.permute(0, 3, 1, 2), self.weight)
            if self.spec["pool"]:
                acc = max_pool(acc, self.spec["pool"])
            acc = acc.permute(0, 2, 3, 1)
        else:
            acc = q.reshape(len(q), -1) @ self.weight
        acc = acc.to(torch.int32)
        if self.table is None:
            return self.rescale(acc.long() + self.bias)
        # sums below `low` (above `high`) give the table's first (last) value: the bias is in the bounds
        index = acc.clamp_(self.table["low"], self.table["high"])
        index += self.table["offset"]
        return torch.index_select(self.table["values"], 0, index.reshape(-1)).view(index.shape)


class FixedPointEngine:
    """Integer logits (int32) of uint8 images (N, 3, 32, 32), from an export's manifest and arrays, requantized
    as the export's `rounding` says or as `rounding` (quantlab.inference.fixed_point.REQUANTIZATIONS)."""

    reads_pixels = True

    def __init__(self, manifest: dict, arrays: dict[str, np.ndarray], rounding: str | None = None):
        specs = manifest["layers"]
        ranges = [tuple(manifest["input"]["range"])] + [tuple(layer["clamp"]) for layer in specs]
        scales = [manifest["input"]["scale"]] + [layer["output_scale"] for layer in specs]
        dtypes = [input_dtype(spec, arrays, ranges[i]) for i, spec in enumerate(specs)] + [LOGITS]
        shapes = [tuple(manifest["input"]["shape"])] + [pooled_shape(spec) for spec in specs]
        self.lut = torch.from_numpy(arrays[INPUT_LUT]).to(dtypes[0])
        self.layers = [EngineLayer(spec, arrays, ranges[i], scales[i], rounding or manifest["rounding"],
                                   dtypes[i + 1], shapes[i]) for i, spec in enumerate(specs)]

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        channels_last = pixels.permute(0, 2, 3, 1)  # (N, H, W, C)
        q = torch.index_select(self.lut, 0, channels_last.reshape(-1).int()).view(channels_last.shape)
        for layer in self.layers:
            q = layer(q)
        return q


def pooled_shape(spec: dict) -> tuple[int, ...]:
    """A layer's output shape after its pooling: (C, H, W) or (C,)."""
    channels, *size = spec["output_shape"]
    return (channels, *(side // spec["pool"] for side in size)) if spec["pool"] else (channels, *size)
