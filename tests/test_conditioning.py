"""Asymptotic standard errors of exact fits."""

import numpy as np
import pytest

import moe_sim as ms
from moe_sim.conditioning import asymptotic_sd

SOFTMAX = ms.MoESpec(gate="softmax", expert="tanh")
G_SOFTMAX = ms.MixingMeasure(bias=[0.0, 0.0], gate=[[2.0], [0.0]], expert=[[1.0, -1.3], [-1.7, -0.4]])
BOX = (-3.0, 3.0)


def test_sd_scales_as_sigma_over_root_n():
    small = asymptotic_sd(SOFTMAX, G_SOFTMAX, n=1000, noise_sd=0.1, bounds=BOX)
    large = asymptotic_sd(SOFTMAX, G_SOFTMAX, n=4000, noise_sd=0.2, bounds=BOX)
    np.testing.assert_allclose(large.sd, small.sd, rtol=1e-12)
    # softmax: the last atom's bias and gate are pinned, so 2 + 2 + 2 = 6 free parameters
    assert len(small) == 6 and set(small.block) == {"bias", "gate", "expert"}


def test_sd_matches_the_spread_of_least_squares_fits():
    """Over 30 replicates the empirical sd of each expert parameter is within sampling error of the prediction."""
    n, sigma, reps = 2000, 0.1, 30
    predicted = asymptotic_sd(SOFTMAX, G_SOFTMAX, n=n, noise_sd=sigma, bounds=BOX)
    experts = []
    for rep in range(reps):
        X, y = ms.sample(SOFTMAX, G_SOFTMAX, n, rng=rep, noise_sd=sigma, bounds=BOX)
        fit = ms.fit(SOFTMAX, X, y, 2, init="near_truth", n_starts=1, rng=rep, G_true=G_SOFTMAX)
        cells = ms.voronoi_cells(SOFTMAX, fit.measure, G_SOFTMAX)
        experts.append(np.concatenate([fit.measure.expert[c[0]] for c in cells]))
    empirical = np.std(experts, axis=0, ddof=1)
    expected = predicted[predicted.block == "expert"].sd.to_numpy()
    # the sample sd of 30 normals has relative sd 1/sqrt(2 * 29) = 0.13: allow four of them
    np.testing.assert_allclose(empirical, expected, rtol=4 / np.sqrt(2 * (reps - 1)))


def test_ill_conditioned_truth_is_visible():
    """The same experts with slow gates on [-1, 1]: standard errors two orders of magnitude larger."""
    spec = ms.MoESpec(gate="sigmoid", expert="tanh")
    bad = ms.MixingMeasure([0.5, -0.5], [[3.0], [-2.0]], [[0.2, 2.0], [-0.5, -1.5]])
    good = ms.MixingMeasure([1.0, -0.5], [[-1.2], [-1.5]], [[1.0, -1.3], [-1.7, -0.4]])
    bad_sd = asymptotic_sd(spec, bad, n=1000, noise_sd=0.1).sd.sum()
    good_sd = asymptotic_sd(spec, good, n=1000, noise_sd=0.1, bounds=BOX).sd.sum()
    assert bad_sd > 30 * good_sd
    with pytest.raises(ValueError, match="gate has 2 columns"):
        asymptotic_sd(spec, ms.MixingMeasure([0.0], [[1.0, 1.0]], [[0.0, 1.0]]), n=10, noise_sd=0.1)


@pytest.mark.parametrize("expert", ["scaled_tanh", "scaled_gelu", "scaled_sigmoid", "scaled_relu"])
def test_scaled_families_get_standard_errors(expert):
    """eta_2 act(eta_1 x) in d = 1: two expert parameters per atom, as for act(a x + b)."""
    spec = ms.MoESpec(gate="softmax", expert=expert)
    table = asymptotic_sd(spec, G_SOFTMAX, n=1000, noise_sd=0.1, bounds=BOX, n_design=2000)
    assert len(table) == 6 and np.all(np.isfinite(table.sd)) and np.all(table.sd > 0)
    # the same sd at 4n and 2 sigma: the sigma / sqrt(n) scaling holds for them too
    again = asymptotic_sd(spec, G_SOFTMAX, n=4000, noise_sd=0.2, bounds=BOX, n_design=2000)
    np.testing.assert_allclose(again.sd, table.sd, rtol=1e-12)
