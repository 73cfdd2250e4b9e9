"""Fixed-point arithmetic of integer inference (gemmlowp / TensorFlow Lite reference code; Jacob et al. 2017,
arXiv:1712.05877, section 2.2), on int64 NumPy arrays or torch tensors holding int32 values: M = M0 * 2^(shift
- 31), q_out = clamp(MultiplyByQuantizedMultiplier(acc << p, M0, shift - p), qmin, qmax). The pre-shift p uses
the int32 headroom the layer's worst case leaves (p = 0 is TFLite's arithmetic): the high multiply then keeps
p more fractional bits, so it and the final rounding shift rarely round twice.

ONNX Runtime requantizes differently, in float32 (`onnxruntime_multiplier`, `round_scaled`): the "onnxruntime"
rounding of the engine and the runner, which predicts ONNX Runtime's integers exactly.

The fixed-point engine and the standalone runner both use these functions. Standard library and NumPy only:
the export stage copies this module into the runner.
"""

import math

import numpy as np

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
# float32 represents every integer up to here and no further: integer sums in float32 are exact below it
FLOAT32_EXACT = 2 ** 24
# How accumulators become the next layer's integers: gemmlowp's M0 * 2^shift (TFLite, the default), or ONNX
# Runtime's float32 multiplier with rounding half to even (onnxruntime_multiplier, round_scaled).
GEMMLOWP, ONNXRUNTIME = REQUANTIZATIONS = ("gemmlowp", "onnxruntime")


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
    high = a * b  # then in place: a fresh buffer per operation costs more than the integer arithmetic
    high += 1 << 30
    high >>= 31
    if not (b == INT32_MIN).any():  # the usual case (M0 >= 0): no element can saturate
        return high
    saturated = (a == INT32_MIN) & (b == INT32_MIN)
    return high + saturated * (INT32_MAX - high)


def rounding_divide_by_pot(x, exponent):
    """gemmlowp's RoundingDivideByPOT of int64 arrays (NumPy or torch): x / 2^exponent rounded to nearest,
    ties away from zero; 0 <= exponent <= 31. As floor((x + 2^(e-1) - [x < 0]) / 2^e) for e > 0: half of the
    divisor added, one less for a negative x, so that its ties go down, away from zero; x itself for e = 0."""
    if (exponent < 0).any() or (exponent > 31).any():
        raise ValueError("rounding_divide_by_pot needs 0 <= exponent <= 31")
    quotient = x + ((1 << exponent) >> 1)
    quotient -= ((x < 0) & (exponent > 0)) * 1  # as integers: torch subtracts no bools
    quotient >>= exponent
    return quotient


def multiply_by_quantized_multiplier(x, m0, shift):
    """TFLite's MultiplyByQuantizedMultiplier of int64 arrays (NumPy or torch) holding int32 values:
    x * M0 * 2^(shift - 31), rounded as the reference code does (a left shift for shift > 0, which must
    not overflow int32, then the doubling high multiply, then a rounding right shift for shift < 0)."""
    left = shift * (shift > 0)
    if (left > 0).any():
        x = shift_left(x, left, "the left shift of a multiplier above 1")
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x, m0), left - shift)


def shift_left(x, bits, what: str):
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


def onnxruntime_multiplier(input_scale: float, weight_scale, output_scale: float) -> np.ndarray:
    """ONNX Runtime's multiplier of a QLinearConv / QLinearMatMul: (S_in * S_W[o]) / S_out in float32, left to
    right, from the float32 scales the ONNX model stores (`ComputeOutputScale`,
    onnxruntime/core/providers/cpu/quantization/qlinearconv.cc)."""
    return np.float32(input_scale) * np.asarray(weight_scale, np.float32) / np.float32(output_scale)


def round_scaled(scaled, clamp: tuple[int, int]):
    """The end of ONNX Runtime's requantization (`MlasRequantizeOutput`, onnxruntime/core/mlas/lib/
    quantize.cpp) on float32 values float32(acc + bias) * M (a NumPy array or torch tensor): clamp to the
    output's range, then round half to even (cvtps2dq). Integer-valued floats; the caller casts them."""
    return scaled.clip(*clamp).round()


def requantize(acc, m0, shift, pre_shift: int, clamp: tuple[int, int], name: str, bound: int | None = None):
    """The fixed-point rescale of int32 accumulators (an int64 NumPy array or torch tensor) to the output's
    scale, then the clamp (which is also the ReLU); `m0` and `shift` broadcast against `acc`. `bound`: a known
    largest |acc| (the layer's worst case), which spares measuring the accumulators for the overflow check.

    Where M <= 2^p (shift <= p), (acc << p) * M0 = acc * (M0 << p) once acc << p fits in int32: one high
    multiply by M0 << p does the pre-shift too, the same integers in fewer passes."""
    if bound is None:
        bound = int(max(-acc.min(), acc.max())) if math.prod(acc.shape) else 0
    if bound << pre_shift > INT32_MAX:
        raise OverflowError(f"int32 overflow in {name}'s pre-shift by {pre_shift}")
    if (shift > pre_shift).any():  # M > 2^p: the reference's own left shift, with its overflow check
        return multiply_by_quantized_multiplier(acc << pre_shift, m0, shift - pre_shift).clip(*clamp)
    high = saturating_rounding_doubling_high_mul(acc, m0 << pre_shift)
    return rounding_divide_by_pot(high, pre_shift - shift).clip(*clamp)
