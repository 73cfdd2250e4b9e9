"""Profiles: exact moments, fixed-edge histograms independent of batching, the folded |x| histogram."""

import numpy as np
import torch

from quantlab.profiling import histogram, profile_activations, profile_tensor


def test_moments_and_sigma3_match_numpy():
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * 2 + 0.5
    p = profile_tensor(x, bins=128)
    values = x.double().numpy()
    assert p.min == values.min() and p.max == values.max()
    np.testing.assert_allclose([p.mean, p.std], [values.mean(), values.std()], rtol=1e-12)
    np.testing.assert_allclose(p.sigma3, [values.mean() - 3 * values.std(), values.mean() + 3 * values.std()])
    assert p.counts.sum() == p.count == 10_000


def test_histogram_edges_and_zero_placement():
    counts = histogram(torch.tensor([-2.0, -0.1, 0.0, 0.0, 0.1, 1.99, 2.0]), absmax=2.0, bins=4)
    # 8 bins of width 0.5 over [-2, 2]: the maximum falls in the last bin, an exact zero right of zero
    assert counts.tolist() == [1, 0, 0, 1, 3, 0, 0, 2]


def test_abs_counts_fold_the_two_halves():
    p = profile_tensor(torch.tensor([-2.0, -0.1, 0.0, 0.0, 0.1, 1.99, 2.0]), bins=4)
    assert p.abs_counts.tolist() == [4, 0, 0, 3]


def test_all_zero_tensor():
    p = profile_tensor(torch.zeros(100), bins=128)
    assert p.absmax == 0 and p.std == 0 and p.abs_counts[0] == 100


def test_activation_profiles_do_not_depend_on_batching():
    data = torch.randn(600, 5, generator=torch.Generator().manual_seed(3))

    def runner(batch):
        def run(tap):
            for start in range(0, len(data), batch):
                tap("x", data[start:start + batch])
        return run

    one, many = (profile_activations(runner(b), ["x"], bins=256)["x"] for b in (600, 7))
    np.testing.assert_array_equal(one.counts, many.counts)
    assert (one.min, one.max) == (many.min, many.max)
    np.testing.assert_allclose(one.mean, many.mean, rtol=1e-12)
