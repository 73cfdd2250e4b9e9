"""Ranges, moments and histograms of weights and activations: the data behind the report and calibration.

Every tensor gets one histogram of 2 * bins bins with fixed edges linspace(-A, A, 2 * bins + 1), where
A = max|x| is found by a pre-pass over the data. Because the edges are fixed before counting, the counts do
not depend on batch size or order, and folding the two halves gives the histogram of |x| over [0, A] with
`bins` bins that the calibration methods read (TensorRT's 2048-bin |x| histogram by default).
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantlab.architecture import ACTIVATIONS, LAYER_NAMES
from quantlab.errors import UserError
from quantlab.io import load_json, load_npz, save_json, save_npz

BATCH = 1000  # images per forward pass of profile_model


@dataclass(frozen=True)
class TensorProfile:
    """Summary of one tensor: exact range, moments and the signed histogram over [-absmax, absmax]."""

    min: float
    max: float
    mean: float
    std: float
    count: int
    zeros: int  # values exactly 0 (ReLU outputs are often half zeros); they fall in the bin right of zero
    counts: np.ndarray  # int64, 2 * bins

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max))

    @property
    def sigma3(self) -> tuple[float, float]:
        return (self.mean - 3 * self.std, self.mean + 3 * self.std)

    @property
    def nonzero_sigma3(self) -> tuple[float, float]:
        """The 3-sigma range of the values other than exact zeros, from the stored moments."""
        n = self.count - self.zeros
        if n == 0:
            return (0.0, 0.0)
        mean = self.mean * self.count / n
        variance = max((self.std ** 2 + self.mean ** 2) * self.count / n - mean ** 2, 0.0)
        return (mean - 3 * variance ** 0.5, mean + 3 * variance ** 0.5)

    @property
    def bins(self) -> int:
        return len(self.counts) // 2

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(-self.absmax, self.absmax, len(self.counts) + 1)

    @property
    def abs_counts(self) -> np.ndarray:
        """Histogram of |x| over [0, absmax], `bins` bins: the signed histogram folded at zero."""
        return self.counts[self.bins:] + self.counts[:self.bins][::-1]

    @property
    def nonzero_abs_counts(self) -> np.ndarray:
        """`abs_counts` without the exact zeros, which every symmetric quantizer represents exactly."""
        counts = self.abs_counts.copy()
        counts[0] -= self.zeros
        return counts

    def summary(self) -> dict:
        low, high = self.sigma3
        return {"min": self.min, "max": self.max, "mean": self.mean, "std": self.std,
                "sigma3_min": low, "sigma3_max": high, "count": self.count, "zeros": self.zeros}


class Accumulator:
    """Collects a profile over batches: pass 1 `observe_range`, then pass 2 `observe_counts`."""

    def __init__(self, bins: int):
        self.bins = bins
        self.min, self.max = np.inf, -np.inf
        self.sum = self.sum_squares = 0.0
        self.count = self.zeros = 0
        self.counts = np.zeros(2 * bins, np.int64)

    def observe_range(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        self.sum += float(x.sum())
        self.sum_squares += float(np.square(x).sum())
        self.count += x.size
        self.zeros += int(np.count_nonzero(x == 0))

    def observe_counts(self, x: np.ndarray) -> None:
        self.counts += histogram(x, max(abs(self.min), abs(self.max)), self.bins)

    def result(self) -> TensorProfile:
        mean = self.sum / self.count
        std = max(self.sum_squares / self.count - mean * mean, 0.0) ** 0.5
        return TensorProfile(self.min, self.max, mean, std, self.count, self.zeros, self.counts)


def histogram(x: np.ndarray, absmax: float, bins: int) -> np.ndarray:
    """Counts of x in 2 * bins equal bins over [-absmax, absmax] (the last bin includes its right edge)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if absmax == 0:
        return np.bincount(np.full(x.size, bins), minlength=2 * bins)  # all zeros: the bin right of zero
    # floor(x * bins / A) + bins puts an exact zero at index `bins` whatever A is
    index = np.clip(np.floor(x * (bins / absmax)) + bins, 0, 2 * bins - 1).astype(np.int64)
    return np.bincount(index, minlength=2 * bins)


def profile_tensor(x: np.ndarray, bins: int) -> TensorProfile:
    accumulator = Accumulator(bins)
    accumulator.observe_range(x)
    accumulator.observe_counts(x)
    return accumulator.result()


def profile_activations(run: Callable[[Callable], None], names: Iterable[str], bins: int) -> dict[str, TensorProfile]:
    """Profiles of the named activations. `run(tap)` must feed the same data through the network, with
    `tap(name, x)` called at every activation (x: an array), each time it is called (once per pass)."""
    accumulators = {name: Accumulator(bins) for name in names}
    for observe in (Accumulator.observe_range, Accumulator.observe_counts):
        run(lambda name, x, observe=observe: observe(accumulators[name], x))
        overflow = next((name for name, a in accumulators.items() if not np.isfinite([a.min, a.max]).all()), None)
        if overflow is not None:
            raise UserError(f"the activations of {overflow} are not finite: the float forward overflows (are the "
                            f"model's weights far too large?); retrain the model")
    return {name: accumulator.result() for name, accumulator in accumulators.items()}


def profile_model(model, images, bins: int) -> dict[str, dict[str, TensorProfile]]:
    """Weight profiles of every layer of `model` (a quantlab.model.Net), and activation profiles of the
    normalized `images` (a torch tensor) run through it in batches of BATCH (torch is not imported here: the
    stages that only read profiles stay free of it)."""
    weights = {name: profile_tensor(getattr(model, name).weight.detach().numpy(), bins) for name in LAYER_NAMES}

    def run(tap):
        def observe(name, x):
            tap(name, x.detach().numpy())
            return x

        for start in range(0, len(images), BATCH):
            model(images[start:start + BATCH], observe)

    return {"weights": weights, "activations": profile_activations(run, ACTIVATIONS, bins)}


def save_profiles(directory: Path, profiles: dict[str, dict[str, TensorProfile]], extra: dict) -> None:
    """stats.json (readable numbers) and histograms.npz (counts) for {"weights": ..., "activations": ...}."""
    stats = {group: {name: p.summary() for name, p in members.items()} for group, members in profiles.items()}
    save_npz(directory / "histograms.npz",
             {f"{group}/{name}": p.counts for group, members in profiles.items() for name, p in members.items()})
    save_json(directory / "stats.json", {**extra, **stats})


def load_profiles(directory: Path, group: str) -> dict[str, TensorProfile]:
    """The profiles of one group ("weights" or "activations") written by `save_profiles`."""
    stats = load_json(directory / "stats.json")[group]
    counts = load_npz(directory / "histograms.npz")
    return {name: TensorProfile(s["min"], s["max"], s["mean"], s["std"], s["count"], s["zeros"],
                                counts[f"{group}/{name}"])
            for name, s in stats.items()}
