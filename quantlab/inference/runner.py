"""Standalone integer runner for an exported quantized network. Needs NumPy only; copy it anywhere.

    python runner.py EXPORT_DIR IMAGES.npy [--out LOGITS.npy]

IMAGES.npy holds uint8 images (N, 3, 32, 32); the runner prints the predicted class of each and can save
the integer logits. Everything from the pixels to the logits is integer arithmetic, as on integer hardware:

    input       q = LUT[pixel]: the 256 possible pixels, normalized and quantized once, at export
    layer       acc = sum_j q_W[o, j] * q_in[j] + q_bias[o]            int32, checked for overflow
    rescale     q_out = MultiplyByQuantizedMultiplier(acc << p, M0[o], shift[o] - p), M = M0 * 2^(shift - 31)
    activation  clamp to the output's integer range; ReLU is a clamp at 0; max pooling on integers

The export stage writes this file into export/<model>/runner.py together with the fixed-point arithmetic
(quantlab.inference.fixed_point) and the export format (quantlab.inference.export_format) it uses.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from quantlab.inference.export_format import INPUT_LUT, read
from quantlab.inference.fixed_point import INT32_MAX, INT32_MIN, requantize


def im2col(q: np.ndarray, k: int) -> np.ndarray:
    """(N, C, H, W) -> (N * H' * W', C * k * k) patches of a stride-1 'valid' convolution."""
    n, c, h, w = q.shape
    windows = np.lib.stride_tricks.sliding_window_view(q, (k, k), axis=(2, 3))  # N, C, H', W', k, k
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * (h - k + 1) * (w - k + 1), c * k * k)


def accumulate(layer: dict, arrays: dict[str, np.ndarray], q: np.ndarray) -> np.ndarray:
    """The exact int64 sums of one conv/fc layer plus its int32 bias, checked to fit in int32."""
    weight = arrays[layer["weight"]].astype(np.int64)
    if layer["kind"] == "conv":
        n, _, h, w = q.shape
        k = weight.shape[-1]
        acc = im2col(q.astype(np.int64), k) @ weight.reshape(len(weight), -1).T
        acc = acc.reshape(n, h - k + 1, w - k + 1, -1).transpose(0, 3, 1, 2)
    else:
        acc = q.reshape(len(q), -1).astype(np.int64) @ weight.T
    if layer["bias"]:
        acc = acc + arrays[layer["bias"]].astype(np.int64).reshape((-1,) + (1,) * (acc.ndim - 2))
    if acc.size and (acc.min() < INT32_MIN or acc.max() > INT32_MAX):
        raise OverflowError(f"{layer['name']}: int32 accumulator overflow")
    return acc


def rescale(layer: dict, arrays: dict[str, np.ndarray], acc: np.ndarray) -> np.ndarray:
    """The layer's fixed-point rescale and clamp of (N, C, ...) accumulators."""
    shape = (-1,) + (1,) * (acc.ndim - 2)
    m0, shift = (arrays[layer[key]].astype(np.int64).reshape(shape) for key in ("multiplier", "shift"))
    return requantize(acc, m0, shift, layer["pre_shift"], layer["clamp"], layer["name"])


def max_pool(q: np.ndarray, size: int) -> np.ndarray:
    n, c, h, w = q.shape
    return q.reshape(n, c, h // size, size, w // size, size).max(axis=(3, 5))


def run(manifest: dict, arrays: dict[str, np.ndarray], images: np.ndarray, batch: int = 250) -> np.ndarray:
    """Integer logits (int64 array holding int32 values) of uint8 images (N, 3, 32, 32)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != tuple(manifest["input"]["shape"]):
        raise ValueError(f"images must be uint8 of shape (N, {', '.join(map(str, manifest['input']['shape']))})")
    lut = arrays[INPUT_LUT].astype(np.int64)
    outputs = []
    for start in range(0, len(images), batch):
        q = lut[images[start:start + batch]]
        for layer in manifest["layers"]:
            q = rescale(layer, arrays, accumulate(layer, arrays, q))
            if layer["pool"]:
                q = max_pool(q, layer["pool"])
        outputs.append(q)
    return np.concatenate(outputs) if outputs else np.zeros((0, manifest["layers"][-1]["output_shape"][0]), np.int64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run an exported integer network on uint8 images.")
    parser.add_argument("export", help="folder with manifest.json and its arrays")
    parser.add_argument("images", help=".npy file of uint8 images (N, 3, 32, 32)")
    parser.add_argument("--out", help="save the integer logits to this .npy file")
    args = parser.parse_args(argv)
    try:
        manifest, arrays = read(args.export)
        logits = run(manifest, arrays, np.load(args.images, allow_pickle=False))
        if args.out:
            np.save(args.out, logits.astype(np.int32))
    except (OSError, ValueError, KeyError, OverflowError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for prediction in logits.argmax(axis=1):
        print(prediction)
    return 0


if __name__ == "__main__":
    sys.exit(main())
