"""Calibration methods on hand-made distributions, and KL against an independent loop implementation."""

import numpy as np
import pytest
import torch

from quantlab.errors import UserError
from quantlab.profiling import profile_tensor
from quantlab.quantize.calibration import (
    BATCH_STATISTICS,
    EMA,
    KL,
    METHODS,
    MSE,
    POST_TRAINING,
    MinMax,
    calibrator,
    kl_divergences,
    merge_and_expand,
)
from quantlab.quantize.symmetric import activation_signs, activation_widths, quantize, scale_for


def test_seed_worked_example_merges_and_expands():
    p = np.array([1, 0, 2, 3, 5, 3, 1, 7], dtype=float)
    assert merge_and_expand(p, p, 2).tolist() == [2, 0, 2, 2, 4, 4, 4, 4]


def reference_kl_threshold_index(h: np.ndarray, levels: int, first: int) -> tuple[int, np.ndarray]:
    """The TensorRT algorithm written directly, one candidate at a time, without merge_and_expand."""
    divergences = []
    for i in range(first, len(h) + 1):
        p = h[:i].astype(float).copy()
        p[i - 1] += h[i:].sum()
        sliced = h[:i].astype(float)
        per = i // levels
        q = np.zeros(i)
        for j in range(levels):
            start = j * per
            stop = i if j == levels - 1 else start + per
            total = sliced[start:stop].sum()
            nonzero = np.count_nonzero(p[start:stop])
            for k in range(start, stop):
                if p[k] != 0:
                    q[k] = total / nonzero
        if q.sum() == 0 or np.any((p > 0) & (q == 0)):
            divergences.append(np.inf)
            continue
        mask = p > 0
        p, q = p / p.sum(), q / q.sum()
        divergences.append(float(np.sum(p[mask] * np.log(p[mask] / q[mask]))))
    divergences = np.array(divergences)
    return first + int(np.argmin(divergences)), divergences


HISTOGRAMS = {
    "gaussian": lambda rng: np.abs(rng.normal(0, 1, 200_000)),
    "laplace with outliers": lambda rng: np.concatenate([np.abs(rng.laplace(0, 1, 100_000)), [40.0, 55.0]]),
    "post-relu with zero spike": lambda rng: np.maximum(rng.normal(0.3, 1, 100_000), 0),
    "sparse": lambda rng: rng.choice([0.5, 1.0, 7.0], size=5000, p=[0.6, 0.3, 0.1]) + rng.normal(0, 0.01, 5000),
}


@pytest.mark.parametrize("name", HISTOGRAMS)
@pytest.mark.parametrize("levels", [128, 8])
def test_vectorized_kl_matches_independent_loop(name, levels):
    rng = np.random.default_rng(0)
    values = HISTOGRAMS[name](rng)
    bins = 512  # smaller than 2048 to keep the reference loop quick; the algorithm is the same
    h, _ = np.histogram(values, bins=bins, range=(0, values.max()))
    index, expected = reference_kl_threshold_index(h, levels, levels)
    got = kl_divergences(h.astype(float), levels, levels)
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(np.isfinite(got), finite)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-9, atol=1e-12)
    assert levels + int(np.argmin(got)) == index


@pytest.mark.parametrize("bits, signed", [(8, True), (8, False), (4, True)])
def test_kl_threshold_matches_reference_without_zeros_from_bin_128(bits, signed):
    values = np.maximum(np.random.default_rng(5).laplace(0.2, 1, 20_000), 0)  # ~55 % exact zeros
    profile = profile_of(values, bins=1024)
    h = profile.abs_counts.copy()
    h[0] -= np.count_nonzero(values == 0)
    levels = 2 ** (bits - 1) if signed else 2 ** bits
    index, _ = reference_kl_threshold_index(h, levels, max(128, levels))
    assert KL().threshold(profile, bits, signed) == index * profile.absmax / profile.bins


def profile_of(values, bins=2048):
    return profile_tensor(torch.as_tensor(values, dtype=torch.float64), bins)


def thresholds(values, bits=8, signed=True, bins=2048):
    profile = profile_of(values, bins)
    return {name: calibrator(name).threshold(profile, bits, signed) for name in POST_TRAINING}


def test_uniform_tensor():
    values = np.random.default_rng(1).uniform(-1, 1, 200_000)
    t = thresholds(values)
    assert t["minmax"] == pytest.approx(1.0, abs=1e-4)
    assert t["sigma3"] == pytest.approx(3 / np.sqrt(3), rel=0.01)  # beyond the range: wasted levels
    assert t["percentile"] == pytest.approx(0.9999, abs=1e-3)
    assert t["kl"] > 0.9 and t["mse"] > 0.95  # nothing to gain by clipping a flat distribution


def test_one_huge_outlier():
    values = np.concatenate([np.random.default_rng(2).normal(0, 1, 200_000), [50.0]])
    t = thresholds(values)
    assert t["minmax"] == 50.0
    assert 2.9 < t["sigma3"] < 3.1  # one value barely moves the moments
    assert 3.5 < t["percentile"] < 4.5
    # KL's first candidate is 128 bins of 50 / 2048: it clips the outlier at the Gaussian's tail
    assert 128 * 50 / 2048 <= t["kl"] < 5.0
    # MSE weighs the outlier's clipping error (50 - T)^2 against the rounding noise N (T / 127)^2 / 12 of
    # the other N values: the minimum is at T = 50 / (1 + N / (12 * 127^2)) = 24.6
    assert t["mse"] == pytest.approx(50 / (1 + 200_000 / (12 * 127**2)), abs=0.3)


def test_all_zero_tensor():
    t = thresholds(np.zeros(1000))
    assert all(value == 0 for value in t.values())
    scale = scale_for(0.0, 8)
    assert scale == 1.0 and quantize(torch.zeros(3), scale, 8).tolist() == [0, 0, 0]


def test_one_sided_post_relu_tensor():
    values = np.maximum(np.random.default_rng(3).normal(0, 1, 200_000), 0)
    profile = profile_of(values)
    assert profile.min == 0.0
    signed = {name: calibrator(name).threshold(profile, 8, True) for name in POST_TRAINING}
    unsigned = {name: calibrator(name).threshold(profile, 8, False) for name in POST_TRAINING}
    width = profile.absmax / profile.bins
    assert signed["kl"] >= 128 * width and unsigned["kl"] >= 256 * width  # the first candidate of each
    assert all(0 < value <= profile.absmax * 1.0001 for name, value in signed.items() if name != "sigma3")
    # with twice the levels, the unsigned MSE threshold may clip less
    assert unsigned["mse"] >= signed["mse"] * 0.9
    # exact zeros take no part: sigma3 and percentile describe the positive half only
    positive = values[values > 0]
    assert signed["sigma3"] == pytest.approx(positive.mean() + 3 * positive.std(), rel=1e-9)
    assert signed["percentile"] == pytest.approx(np.percentile(positive, 99.99), rel=0.01)


def test_mse_threshold_is_the_grid_minimum():
    values = np.random.default_rng(4).laplace(0, 1, 100_000)
    profile = profile_of(values, bins=256)
    found = calibrator("mse").threshold(profile, 4)
    width = profile.absmax / profile.bins
    centres = (np.arange(profile.bins) + 0.5) * width
    counts = profile.abs_counts

    def error(t):
        s = t / 7
        return float(np.sum(counts * (centres - s * np.minimum(np.round(centres / s), 7)) ** 2))

    assert error(found) <= min(error(k * width) for k in range(1, profile.bins + 1)) * 1.0001


def test_kl_picks_the_threshold_not_a_clipped_index():
    assert KL().threshold(profile_of(np.linspace(0, 1, 10_000)), 8, True) > 0.9


def test_unknown_method_lists_valid_names():
    with pytest.raises(UserError, match="set calib to one of minmax, sigma3, percentile, kl, mse"):
        calibrator("entropy")


def test_one_registry_of_methods_and_their_roles():
    assert list(METHODS) == ["minmax", "sigma3", "percentile", "kl", "mse", "ema"]
    assert POST_TRAINING == ("minmax", "sigma3", "percentile", "kl", "mse")  # the trained weights, from profiles
    assert BATCH_STATISTICS == ("minmax", "mse")  # what quantization-aware training can track
    assert METHODS["ema"].weights == "qat" and all(METHODS[name].weights == "trained" for name in POST_TRAINING)


def test_ema_thresholds_are_the_learned_ones():
    learned = {"input": 1.0, "conv1": 2.5, "conv2": 3.0, "fc1": 4.0, "fc2": 5.0, "fc3": 9.0}
    profiles = {name: profile_of(np.array([-7.0, 7.0])) for name in learned}  # not read by ema
    widths, signs = activation_widths(8), activation_signs(False)
    assert calibrator("ema", learned=learned).thresholds(profiles, widths, signs) == learned
    assert calibrator("minmax").thresholds(profiles, widths, signs) == dict.fromkeys(learned, 7.0)
    with pytest.raises(UserError, match="calib=ema needs the thresholds learned by the qat stage"):
        calibrator("ema").thresholds(profiles, widths, signs)
    assert EMA.average(2.0, 4.0, 0.75) == 2.5  # 0.75 * 2 + 0.25 * 4


def test_batch_statistics_of_quantization_aware_training():
    x = torch.linspace(-1, 1, 10_001)
    generator = torch.Generator().manual_seed(0)

    def sample(values, size):
        return values[torch.randint(len(values), (size,), generator=generator)]

    assert MinMax.batch_threshold(x, 8, True, sample).item() == 1.0
    assert 0.95 <= MSE.batch_threshold(x, 8, True, sample).item() <= 1.0  # nothing to gain by clipping uniform
    spiky = torch.cat([torch.randn(100_000, generator=generator), torch.tensor([100.0])])
    assert MSE.batch_threshold(spiky, 4, True, sample).item() < 10  # 4 bits: clip the outlier
