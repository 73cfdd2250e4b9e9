"""Standalone integer runner for an exported quantized network. Needs NumPy only; copy it anywhere.

    python runner.py EXPORT_DIR IMAGES.npy [--out LOGITS.npy [--force]]

IMAGES.npy holds uint8 images (N, 3, 32, 32); the runner prints the predicted class of each and can save
the integer logits. Every value from the pixels to the logits is an integer, computed exactly as integer
hardware computes it:

    input       q = LUT[pixel]: the 256 possible pixels, normalized and quantized once, at export
    layer       acc = sum_j q_W[o, j] * q_in[j] + q_bias[o]            int32, checked for overflow
    pooling     max pooling of the accumulators
    rescale     q_out = MultiplyByQuantizedMultiplier(acc << p, M0[o], shift[o] - p), M = M0 * 2^(shift - 31)
                or, with the export's rounding "onnxruntime", q_out = round_half_even(float32(acc) * M[o]),
                M = float32 (S_in * S_W[o]) / S_out, as ONNX Runtime computes it
    activation  clamp to the output's integer range; ReLU is a clamp at 0

The export stage writes this file into export/<model>/runner.py together with the fixed-point arithmetic
(quantlab.inference.fixed_point) and the export format (quantlab.inference.export_format) it uses.
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from quantlab.files import npy_array
from quantlab.inference.export_format import ARRAYS, INPUT_LUT, MANIFEST, read
from quantlab.inference.fixed_point import (
    FLOAT32_EXACT,
    INT32_MAX,
    INT32_MIN,
    ONNXRUNTIME,
    onnxruntime_multiplier,
    requantize,
    round_scaled,
)


def im2col(q: np.ndarray, k: int) -> np.ndarray:
    """(N, H, W, C) channels last -> (N * H' * W', k * k * C) patches of a stride-1 'valid' convolution,
    columns ordered (kh, kw, C): each window's row is k * C neighbouring values, copied as one run."""
    n, h, w, c = q.shape
    q = np.ascontiguousarray(q)
    step = q.strides
    windows = np.lib.stride_tricks.as_strided(q, (n, h - k + 1, w - k + 1, k, k * c),
                                              (step[0], step[1], step[2], step[1], step[3]))
    return windows.reshape(-1, k * k * c)


def exact_dtype(terms: int):
    """A float dtype in which sums of `terms` products of 8-bit values (each |q| <= 255 times |w| <= 128)
    are exact in any order: float32 below 2^24, where it stops representing every integer, else float64
    (exact to 2^53). NumPy has no integer BLAS; a float matrix product is exact within those bounds."""
    return np.float32 if terms * 255 * 128 < FLOAT32_EXACT else np.float64


def accumulate(layer: dict, arrays: dict[str, np.ndarray], q: np.ndarray) -> np.ndarray:
    """The exact int64 sums of one conv/fc layer plus its int32 bias, checked to fit in int32; conv inputs and
    outputs channels last (N, H, W, C)."""
    weight = arrays[layer["weight"]]
    conv, k = layer["kind"] == "conv", weight.shape[-1]
    columns = (weight.transpose(0, 2, 3, 1) if conv else weight).reshape(len(weight), -1)  # conv: (kh, kw, C)
    dtype = exact_dtype(columns.shape[1])
    rows = im2col(q.astype(dtype), k) if conv else q.reshape(len(q), -1).astype(dtype)
    acc = (rows @ columns.T.astype(dtype)).astype(np.int64)
    if conv:
        n, h, w, _ = q.shape
        acc = acc.reshape(n, h - k + 1, w - k + 1, -1)
    if layer["bias"]:
        acc = acc + arrays[layer["bias"]].astype(np.int64)
    if acc.size and (acc.min() < INT32_MIN or acc.max() > INT32_MAX):
        raise OverflowError(f"{layer['name']}: int32 accumulator overflow")
    return acc


def rescale(layer: dict, arrays: dict[str, np.ndarray], acc: np.ndarray, rounding: str,
            input_scale: float) -> np.ndarray:
    """The layer's rescale (fixed point, or ONNX Runtime's float32) and clamp of accumulators, channels last."""
    if rounding == ONNXRUNTIME:
        multiplier = onnxruntime_multiplier(input_scale, layer["weight_scale"], layer["output_scale"])
        return round_scaled(acc.astype(np.float32) * multiplier.reshape(-1), layer["clamp"]).astype(np.int64)
    m0, shift = (arrays[layer[key]].astype(np.int64) for key in ("multiplier", "shift"))
    return requantize(acc, m0, shift, layer["pre_shift"], layer["clamp"], layer["name"])


def max_pool(q: np.ndarray, size: int) -> np.ndarray:
    """Max pooling of (N, H, W, C)."""
    n, h, w, c = q.shape
    return q.reshape(n, h // size, size, w // size, size, c).max(axis=(2, 4))


def run(manifest: dict, arrays: dict[str, np.ndarray], images: np.ndarray, batch: int = 250) -> np.ndarray:
    """Integer logits (int64 array holding int32 values) of uint8 images (N, 3, 32, 32). Pooling comes
    before the rescale: the rescale and the clamp are monotonic non-decreasing (M > 0), so they commute with
    max, and a quarter of the values are rescaled."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != tuple(manifest["input"]["shape"]):
        raise ValueError(f"images must be uint8 of shape (N, {', '.join(map(str, manifest['input']['shape']))})")
    lut = arrays[INPUT_LUT].astype(np.int64)
    outputs = []
    for start in range(0, len(images), batch):
        q = lut[images[start:start + batch].transpose(0, 2, 3, 1)]
        scale = manifest["input"]["scale"]
        for layer in manifest["layers"]:
            if layer["kind"] == "fc" and q.ndim == 4:
                q = q.transpose(0, 3, 1, 2)  # flattened in the (C, H, W) order of the float model
            acc = accumulate(layer, arrays, q)
            if layer["pool"]:
                acc = max_pool(acc, layer["pool"])
            q = rescale(layer, arrays, acc, manifest["rounding"], scale)
            scale = layer["output_scale"]
        outputs.append(q)
    return np.concatenate(outputs) if outputs else np.zeros((0, manifest["layers"][-1]["output_shape"][0]), np.int64)


IMAGES_LIMIT = 2 ** 40  # bytes of an images file: it is memory-mapped and run in batches, never read whole


def output_path(out: str, force: bool, inputs: list[Path]) -> Path:
    """Where the logits go: an .npy name (numpy.save would append .npy to any other), never one of the inputs,
    and a file that exists only with --force."""
    path = Path(out)
    if path.suffix != ".npy":
        raise ValueError(f"--out must name an .npy file, got {out}")
    if path.exists():
        if any(path.resolve() == i.resolve() for i in inputs if i.exists()):
            raise ValueError(f"--out {out} is one of the runner's inputs: write the logits elsewhere")
        if not force:
            raise ValueError(f"--out {out} exists: give another name, or --force to replace it")
    return path


def save_atomically(path: Path, array: np.ndarray) -> None:
    """The .npy written beside its destination, then renamed over it: never half a file."""
    partial = path.with_name(f".{path.name}.tmp")
    with open(partial, "wb") as file:
        np.save(file, array)
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run an exported integer network on uint8 images.")
    parser.add_argument("export", help="folder with manifest.json and its arrays")
    parser.add_argument("images", help=".npy file of uint8 images (N, 3, 32, 32)")
    parser.add_argument("--out", help="save the integer logits to this new .npy file")
    parser.add_argument("--force", action="store_true", help="with --out: replace the file if it exists")
    args = parser.parse_args(argv)
    try:
        inputs = [Path(args.images), Path(args.export) / MANIFEST, Path(args.export) / ARRAYS]
        out = output_path(args.out, args.force, inputs) if args.out else None
        manifest, arrays = read(args.export)
        logits = run(manifest, arrays, npy_array(args.images, IMAGES_LIMIT))
        if out:
            save_atomically(out, logits.astype(np.int32))
    except (OSError, EOFError, ValueError, KeyError, OverflowError) as error:  # EOFError: an empty .npy
        print(f"error: {error}", file=sys.stderr)
        return 2
    for prediction in logits.argmax(axis=1):
        print(prediction)
    return 0


if __name__ == "__main__":
    sys.exit(main())
