"""Standalone integer runner for an exported quantized network. Needs NumPy only; copy it anywhere.

    python runner.py EXPORT_DIR IMAGES.npy [--out LOGITS.npy]

IMAGES.npy holds uint8 images (N, 3, 32, 32); the runner prints the predicted class of each and can save
the integer logits. Everything from the pixels to the logits is integer arithmetic, as on integer hardware
(Jacob et al. 2017, arXiv:1712.05877, section 2.2; the reference code of gemmlowp and TensorFlow Lite):

    input       q = LUT[pixel]: the 256 possible pixels, normalized and quantized once, at export
    layer       acc = sum_j q_W[o, j] * q_in[j] + q_bias[o]            int32, checked for overflow
    rescale     q_out = MultiplyByQuantizedMultiplier(acc << p, M0[o], shift[o] - p), M = M0 * 2^(shift - 31)
    activation  clamp to the output's integer range; ReLU is a clamp at 0; max pooling on integers

The pre-shift p uses the int32 headroom the layer's worst case leaves (p = 0 is TFLite's arithmetic): the
doubling high multiply then keeps p more fractional bits, so its rounding and the final rounding shift
rarely round twice. The product is the same M * acc, rounded closer to it.

The fixed-point helpers below are the reference definitions, vectorized over NumPy int64 arrays; the
pipeline's engine (quantlab.engine) uses these same functions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
FORMAT = "quantlab-integer-network"


# --- fixed-point arithmetic (gemmlowp / TFLite reference) ------------------------------------------------

def quantize_multiplier(multiplier: float) -> tuple[int, int]:
    """(M0, shift) with multiplier = M0 * 2^(shift - 31), M0 in [2^30, 2^31): TFLite's QuantizeMultiplier.
    frexp gives the mantissa in [0.5, 1); it is rounded (half away from zero) to 31 bits; a mantissa that
    rounds up to 1.0 becomes 0.5 with the exponent raised by one. A multiplier that would need a right
    shift beyond 31 is 0 (M0 = 0, shift = 0): every int32 times it rounds to 0 anyway."""
    if multiplier < 0:
        raise ValueError(f"multiplier {multiplier} is negative")
    if multiplier == 0:
        return 0, 0
    mantissa, shift = np.frexp(multiplier)
    m0 = int(np.floor(mantissa * 2.0 ** 31 + 0.5))  # mantissa > 0: half away from zero
    if m0 == 2 ** 31:
        m0 //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return m0, int(shift)


def saturating_rounding_doubling_high_mul(a, b):
    """gemmlowp's SaturatingRoundingDoublingHighMul of int32 values held in int64 arrays (NumPy or torch):
    the reference computes (a b + nudge) / 2^31 with C's truncating division, nudge = 2^30 if a b >= 0
    else 1 - 2^30; that equals floor((a b + 2^30) / 2^31), i.e. a b / 2^31 rounded to nearest with ties
    toward +infinity, computed here with one arithmetic shift. The one overflow, a = b = -2^31, saturates."""
    high = (a * b + (1 << 30)) >> 31
    if not (b == INT32_MIN).any():  # the usual case (M0 >= 0): no element can saturate
        return high
    saturated = (a == INT32_MIN) & (b == INT32_MIN)
    return high + saturated * (INT32_MAX - high)


def rounding_divide_by_pot(x, exponent):
    """gemmlowp's RoundingDivideByPOT of int64 arrays (NumPy or torch): x / 2^exponent rounded to nearest,
    ties away from zero; 0 <= exponent <= 31."""
    if (exponent < 0).any() or (exponent > 31).any():
        raise ValueError("rounding_divide_by_pot needs 0 <= exponent <= 31")
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def multiply_by_quantized_multiplier(x, m0, shift):
    """TFLite's MultiplyByQuantizedMultiplier of int64 arrays (NumPy or torch) holding int32 values:
    x * M0 * 2^(shift - 31), rounded as the reference code does (a left shift for shift > 0, which must
    not overflow int32, then the doubling high multiply, then a rounding right shift for shift < 0)."""
    left = shift * (shift > 0)
    if (left > 0).any():
        x = _shift_left(x, left, "the left shift of a multiplier above 1")
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x, m0), left - shift)


def _shift_left(x, bits, what: str):
    """x << bits for int32 values held in int64, failing loudly where the result leaves int32."""
    shifted = x << bits
    if math.prod(shifted.shape) and (shifted.min() < INT32_MIN or shifted.max() > INT32_MAX):
        raise OverflowError(f"int32 overflow in {what}")
    return shifted


def accumulator_bound(weight: np.ndarray, input_range: tuple[int, int], bias: np.ndarray | None = None) -> int:
    """The largest |acc| any input in `input_range` can give: max over output channels o of
    sum_j |W[o, j]| * max|q_in| + |b[o]|, for a weight (O, ...) of integers."""
    flat = np.abs(weight.astype(np.int64).reshape(len(weight), -1)).sum(axis=1)
    worst = flat * max(abs(input_range[0]), abs(input_range[1]))
    if bias is not None:
        worst = worst + np.abs(bias.astype(np.int64))
    return int(worst.max())


def headroom_shift(bound: int, shift: np.ndarray) -> int:
    """The largest left pre-shift p with bound * 2^p within int32 and every rounding shift p - shift <= 31."""
    if bound == 0:
        return 0
    return max(0, min(int(np.floor(np.log2(INT32_MAX / bound))), 31 + int(np.min(shift))))


# --- the exported network ----------------------------------------------------------------------------------

def load(directory: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The manifest and the arrays of an export, after checking the arrays' SHA-256 against the manifest."""
    directory = Path(directory)
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{directory / 'manifest.json'} is not a {FORMAT} manifest")
    payload = (directory / manifest["arrays"]).read_bytes()
    if hashlib.sha256(payload).hexdigest() != manifest["sha256"]:
        raise ValueError(f"{directory / manifest['arrays']} does not match the checksum in its manifest")
    with np.load(directory / manifest["arrays"], allow_pickle=False) as archive:
        return manifest, {name: archive[name] for name in archive.files}


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


def requantize(layer: dict, arrays: dict[str, np.ndarray], acc, channel_axis: int = 1):
    """Fixed-point rescale of int32 accumulators (an int64 NumPy array or torch tensor) to the output's
    scale, then the clamp (also the ReLU)."""
    shape = [1] * acc.ndim
    shape[channel_axis] = -1
    m0 = _int64(arrays[layer["multiplier"]]).reshape(shape)
    shift = _int64(arrays[layer["shift"]]).reshape(shape)
    pre = layer["pre_shift"]
    shifted = _shift_left(acc, pre, f"{layer['name']}'s pre-shift by {pre}")
    low, high = layer["clamp"]
    return multiply_by_quantized_multiplier(shifted, m0, shift - pre).clip(low, high)


def _int64(values):
    """int32 parameters as int64, for a NumPy array or a torch tensor alike."""
    return values.astype(np.int64) if isinstance(values, np.ndarray) else values.long()


def max_pool(q: np.ndarray, size: int) -> np.ndarray:
    n, c, h, w = q.shape
    return q.reshape(n, c, h // size, size, w // size, size).max(axis=(3, 5))


def run(manifest: dict, arrays: dict[str, np.ndarray], images: np.ndarray, batch: int = 250) -> np.ndarray:
    """Integer logits (int64 array holding int32 values) of uint8 images (N, 3, 32, 32)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != tuple(manifest["input"]["shape"]):
        raise ValueError(f"images must be uint8 of shape (N, {', '.join(map(str, manifest['input']['shape']))})")
    lut = arrays[manifest["input"]["lut"]].astype(np.int64)
    outputs = []
    for start in range(0, len(images), batch):
        q = lut[images[start:start + batch]]
        for layer in manifest["layers"]:
            q = requantize(layer, arrays, accumulate(layer, arrays, q))
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
        manifest, arrays = load(args.export)
        logits = run(manifest, arrays, np.load(args.images, allow_pickle=False))
    except (OSError, ValueError, KeyError, OverflowError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.out:
        np.save(args.out, logits.astype(np.int32))
    print("\n".join(str(c) for c in logits.argmax(axis=1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
