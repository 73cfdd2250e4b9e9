"""Calibration methods: how the clipping threshold T of each activation is chosen; the scale follows, S = T / qmax.

Post-training methods read only a tensor's persisted profile (`TensorProfile`: exact range, moments and the
fixed-edge histogram of |x|, `bins` bins of width w = max|x| / bins), so switching `calib` never reruns the
network. `ema` reads the thresholds that quantization-aware training learned, and belongs to the weights of
that fine-tune. Adding a method is one subclass of `Calibrator` decorated with `@register`, which files it
under its class name in lower case; every method is vectorized over its candidate thresholds.

Exact zeros take no part in choosing T: a symmetric quantizer (zero point 0) represents them exactly at any
threshold, and the post-ReLU outputs are 50-80 % zeros, a spike that would otherwise decide every statistic
(it halves the 3-sigma range and dominates KL's divergence). Tensors without zeros are unaffected.
"""

import enum

import numpy as np

from quantlab.errors import UserError
from quantlab.profiling import TensorProfile
from quantlab.quantize.symmetric import int_range, squared_errors

METHODS: dict[str, type["Calibrator"]] = {}
class Weights(enum.StrEnum):
    """The float weights a method's thresholds belong to, by the name files and metrics give them; "qat" also
    names the fine-tunes' row of the comparison."""

    TRAINED = "trained"
    FINE_TUNED = "qat"


TRAINED, FINE_TUNED = Weights.TRAINED, Weights.FINE_TUNED
BASELINE = "minmax"  # the lab's method: the comparison measures every other method against it


def register(cls: type["Calibrator"]) -> type["Calibrator"]:
    cls.name = cls.__name__.lower()
    METHODS[cls.name] = cls
    return cls


class Calibrator:
    """Base class: `thresholds(profiles, widths, signs)` gives every activation's T >= 0 (values beyond +-T are
    clipped), by default each from its profile by `threshold(profile, bits, signed)`."""

    name = ""
    weights = TRAINED
    summary = ""  # what T is, in a few words, for the report

    def __init__(self, percentile: float = 99.99, learned: dict[str, float] | None = None):
        self.percentile = percentile  # of calib=percentile
        self.learned = learned  # the thresholds a fine-tune learned, for calib=ema

    def thresholds(self, profiles: dict[str, TensorProfile], widths: dict[str, int],
                   signs: dict[str, bool]) -> dict[str, float]:
        return {name: float(self.threshold(p, widths[name], signs[name])) for name, p in profiles.items()}

    def threshold(self, profile: TensorProfile, bits: int, signed: bool = True) -> float:
        raise NotImplementedError


@register
class MinMax(Calibrator):
    """The actual range: T = max(|min x|, |max x|). Nothing is clipped; one outlier stretches the scale."""

    summary = "the actual range"
    batch_summary = "the batch's largest magnitude"

    def threshold(self, profile, bits, signed=True):
        return profile.absmax

    @staticmethod
    def batch_threshold(x, bits, signed, sample):
        """max|x| of a torch batch, for the ranges of quantization-aware training."""
        return x.detach().abs().max().double()


@register
class Sigma3(Calibrator):
    """The 3-sigma range of the non-zero values: T = max(|mu - 3 sigma|, |mu + 3 sigma|). Clips the tails of
    a peaked tensor, but exceeds the actual range (and wastes levels) on a flat one such as the input."""

    summary = "the 3-sigma range"

    def threshold(self, profile, bits, signed=True):
        low, high = profile.nonzero_sigma3
        return max(abs(low), abs(high))


@register
class Percentile(Calibrator):
    """T = the p-th percentile of the non-zero |x| (param `quant.percentile`), interpolated linearly inside
    the histogram bin where the cumulative count reaches p % of those values."""

    @property
    def summary(self) -> str:
        return f"the {self.percentile:g}th percentile of the magnitudes"

    def threshold(self, profile, bits, signed=True):
        counts = profile.nonzero_abs_counts.astype(np.float64)
        if not counts.any():
            return 0.0
        cumulative = np.cumsum(counts)
        target = cumulative[-1] * self.percentile / 100.0
        k = int(np.searchsorted(cumulative, target))  # first bin whose cumulative count reaches the target
        before = cumulative[k - 1] if k else 0.0
        fraction = (target - before) / counts[k] if counts[k] else 1.0
        return (k + fraction) * profile.absmax / profile.bins


def merge_and_expand(p: np.ndarray, reference: np.ndarray, levels: int) -> np.ndarray:
    """Q of the TensorRT algorithm for one candidate: `reference` merged into `levels` bins of
    len // levels consecutive bins (the remainder joins the last), each merged count spread evenly over
    the bins where `p` is non-zero, so empty bins stay empty.
    The seed's example: p = [1, 0, 2, 3, 5, 3, 1, 7] into 2 levels -> [6, 16] -> [2, 0, 2, 2, 4, 4, 4, 4]."""
    size = len(reference) // levels
    chunk = np.minimum(np.arange(len(reference)) // size, levels - 1)
    merged = np.bincount(chunk, weights=reference, minlength=levels)
    nonzero = np.bincount(chunk, weights=p != 0, minlength=levels)
    return np.where(p != 0, merged[chunk] / np.maximum(nonzero[chunk], 1), 0.0)


@register
class KL(Calibrator):
    """TensorRT's entropy calibration (Migacz, 2017) on the 2048-bin histogram h of |x|, bin width w.

    For every candidate i from bin 128 (or from `levels`, if larger) to `bins`: P = h[0:i] with the
    outliers sum(h[i:]) added to its last bin; Q = h[0:i] merged into `levels` bins (2^(bits-1): 128 for
    8-bit signed; 2^bits: 256 for unsigned) and expanded back (`merge_and_expand`). T = i * w for the i
    with the least KL(P || Q) = sum p log(p / q) over normalized P and Q; where q = 0 < p it is infinite.

    Exact zeros are left out of h: every symmetric quantizer represents them exactly, and ReLU outputs
    are about half zeros, a spike in bin 0 that would otherwise decide the divergence (it forces the
    candidates below 2 * levels, where no two bins are merged; NVIDIA's pytorch-quantization flattens
    the same bin for the same reason).

    Vectorized over all candidates: with p = P / N and q = Q / sum(h[0:i]) constant inside each merged
    bin j of P-mass m_j, KL = sum_k p_k log p_k - sum_j (m_j / N) log(Q_j / sum(h[0:i])), both from
    prefix sums, so the cost is O(bins * levels) instead of O(bins^2 * levels) with a Python loop.
    """

    FIRST = 128  # the first candidate, in bins
    summary = "TensorRT's entropy calibration, the least KL divergence between the histogram and its quantized copy"

    def threshold(self, profile, bits, signed=True):
        candidates, divergences = self.divergences(profile, bits, signed)
        return float(candidates[np.argmin(divergences)]) if len(candidates) else 0.0

    def divergences(self, profile: TensorProfile, bits: int, signed: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Every candidate threshold T and its KL(P || Q); none for a tensor of zeros."""
        h = profile.nonzero_abs_counts.astype(np.float64)
        levels = int_range(bits, signed)[1] + 1  # 128 quantized bins of |x| for 8-bit signed, 256 unsigned
        if h.sum() == 0:
            return np.zeros(0), np.zeros(0)
        first = max(self.FIRST, levels)
        return np.arange(first, len(h) + 1) * profile.absmax / profile.bins, kl_divergences(h, levels, first)


def kl_divergences(h: np.ndarray, levels: int, first: int) -> np.ndarray:
    """KL(P || Q) of every candidate i = first .. len(h) (see KL); inf where q = 0 < p."""
    total = h.sum()
    candidates = np.arange(first, len(h) + 1)[:, None]  # (C, 1)
    cum = np.concatenate([[0.0], np.cumsum(h)])
    cum_nonzero = np.concatenate([[0], np.cumsum(h > 0)])
    outliers = total - cum[candidates[:, 0]]  # (C,)
    last = h[candidates[:, 0] - 1] + outliers  # P's last bin

    # sum_k P_k log P_k, then p = P / N gives sum p log p = (sum P log P) / N - log N
    with np.errstate(divide="ignore", invalid="ignore"):
        h_log_h = np.where(h > 0, h * np.log(h), 0.0)
        last_log = np.where(last > 0, last * np.log(last), 0.0)
    cum_h_log_h = np.concatenate([[0.0], np.cumsum(h_log_h)])
    p_log_p = (cum_h_log_h[candidates[:, 0] - 1] + last_log) / total - np.log(total)

    size = candidates // levels  # bins per merged level, (C, 1)
    j = np.arange(levels)[None, :]  # (1, L)
    start = j * size
    stop = np.where(j == levels - 1, candidates, start + size)
    merged = cum[stop] - cum[start]  # Q's merged counts (outliers not included)
    mass = merged.copy()
    mass[:, -1] += outliers  # P's mass in each merged level
    nonzero = cum_nonzero[stop] - cum_nonzero[start]
    # P's last bin is non-zero when outliers land in an empty bin: it then gets a share of Q as well
    nonzero[:, -1] += (h[candidates[:, 0] - 1] == 0) & (outliers > 0)
    kept = cum[candidates]  # sum(h[0:i]) = sum(Q)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_q = np.log(merged / np.maximum(nonzero, 1) / kept)
        cross = np.where(mass > 0, mass / total * log_q, 0.0)
    cross = np.where((mass > 0) & (merged == 0), -np.inf, cross)
    return p_log_p - cross.sum(axis=1)


@register
class MSE(Calibrator):
    """T minimizing the mean squared quantization error E[(x - S clamp(round(x / S), qmin, qmax))^2] of the
    tensor, S = T / qmax, evaluated on the histogram of |x| with every non-zero value at its bin centre
    (exact zeros have no error at any T), over the candidates T = k * w (k = 1 .. bins): every 8th bin
    edge first, then every edge around the best of those."""

    COARSE = 8  # bins between coarse candidates
    summary = "the least squared quantization error"
    batch_summary = "the threshold with the least squared quantization error of the batch"

    def threshold(self, profile, bits, signed=True):
        counts = profile.nonzero_abs_counts.astype(np.float64)
        keep = counts > 0
        if not keep.any():
            return 0.0
        width = profile.absmax / profile.bins
        centres, counts = (np.arange(profile.bins)[keep] + 0.5) * width, counts[keep]
        coarse = np.arange(self.COARSE, profile.bins + 1, self.COARSE)
        best = coarse[np.argmin(squared_errors(centres, counts, coarse * width, bits, signed))]
        fine = np.arange(max(best - self.COARSE, 1), min(best + self.COARSE, profile.bins) + 1)
        return fine[np.argmin(squared_errors(centres, counts, fine * width, bits, signed))] * width

    BATCH_CANDIDATES = 64  # thresholds k / 64 max|x| of a training batch
    BATCH_SAMPLE = 8192  # values of the batch they are evaluated on

    @classmethod
    def batch_threshold(cls, x, bits, signed, sample):
        """For the ranges of quantization-aware training: the candidate with the least squared error of a
        torch batch, evaluated on `sample(values, BATCH_SAMPLE)`, a seeded sample of its values."""
        values = sample(x.detach().flatten(), cls.BATCH_SAMPLE).double()
        fractions = values.new_tensor(np.arange(1, cls.BATCH_CANDIDATES + 1) / cls.BATCH_CANDIDATES)
        thresholds = values.abs().max().clamp(min=1e-12) * fractions
        return thresholds[squared_errors(values, None, thresholds, bits, signed).argmin()]


@register
class EMA(Calibrator):
    """The ranges learned while fine-tuning with fake quantization (stage qat; Jacob et al. 2017, section 3):
    at every training batch a statistic t of the tensor, the batch threshold of the method `qat.ranges`
    (minmax: the paper's max|x|; mse), and T <- decay * T + (1 - decay) * t, with T = t at the first batch.
    Its state is the qat stage's record of the learned T, and its thresholds belong to the fine-tuned weights."""

    weights = FINE_TUNED
    summary = "the ranges learned by quantization-aware training"

    def thresholds(self, profiles, widths, signs):
        if self.learned is None:
            raise UserError("calib=ema needs the thresholds learned by the qat stage: run `dvc repro qat`")
        return dict(self.learned)

    @staticmethod
    def average(threshold, observed, decay: float):
        return decay * threshold + (1 - decay) * observed


def diagnose(profile: TensorProfile, threshold: float, bits: int, signed: bool = True) -> dict:
    """How a threshold treats a tensor, from its signed histogram (values at bin centres): the fraction
    of values beyond +-T (clipped) and the SQNR 10 log10(sum x^2 / sum (x - Q(x))^2) in dB."""
    counts = profile.counts.astype(np.float64)
    edges = profile.edges
    centres = (edges[:-1] + edges[1:]) / 2
    clipped = counts[np.abs(centres) > threshold].sum() / max(counts.sum(), 1)
    signal = float(np.square(centres) @ counts)
    noise = float(squared_errors(centres, counts, np.array([threshold or 1.0]), bits, signed)[0])
    return {"threshold": float(threshold), "clipped": float(clipped), "sqnr_db": sqnr_db(signal, noise)}


def sqnr_db(signal: float, noise: float) -> float | None:
    """10 log10(signal / noise) of two sums of squares: undefined (None) for an all-zero signal, and infinite
    (None too: JSON has no inf) without noise."""
    return float(10 * np.log10(signal / noise)) if noise > 0 and signal > 0 else None


def calibrator(name: str, percentile: float = 99.99, learned: dict[str, float] | None = None) -> Calibrator:
    """The registered method `name`; an unknown name is an error that lists the valid ones."""
    if name not in METHODS:
        raise UserError(f"unknown calibration method {name!r}: set calib to one of {', '.join(METHODS)}")
    return METHODS[name](percentile, learned)


# The methods that calibrate the trained weights from profiles (the comparison's rows), and those that can
# give the per-batch statistic of quantization-aware training's moving averages.
POST_TRAINING = tuple(name for name, method in METHODS.items() if method.weights == TRAINED)
BATCH_STATISTICS = tuple(name for name, method in METHODS.items() if hasattr(method, "batch_threshold"))
# `qat.ranges` may also name learned step sizes (quantlab.quantize.qat), which are no calibration method.
LEARNED_STEP = "lsq"
QAT_RANGES = (*BATCH_STATISTICS, LEARNED_STEP)
