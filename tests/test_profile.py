"""Profile pre-flight: the order and constant of an over-specified cell's loss against its split."""

import numpy as np
import pytest

import moe_sim as ms
from moe_sim.fit import profile

# Strongly non-linear tanh experts (pre-activations up to 3.5): the quartic constant is about 1e-8 to 1e-7.
G = ms.MixingMeasure(bias=[0.0, 0.0], gate=[[4.0], [0.0]], expert=[[0.5, 3.0], [-1.0, -2.0]])
DELTAS = np.logspace(-2.0, -1.0, 4)


def test_tanh_cell_is_quartic_and_pre_asymptotic_at_large_noise():
    spec = ms.MoESpec(gate="softmax", expert="tanh")
    result = profile(spec, G, n=200, deltas=DELTAS, sigma=0.2, n_range=(1e3, 1e5))
    summary = result.summary
    assert list(summary.cell) == [0, 1] and summary.identified.all()
    np.testing.assert_allclose(summary.order, 4.0, atol=0.3)
    assert np.all((summary.constant > 1e-10) & (summary.constant < 1e-5))
    # At sigma = 0.2 the split stays O(1) up to n = 1e5 (THEORY.md s6): nothing is visible yet.
    assert not summary.visible.any() and (summary.delta_at_n_max > 0.1).all()
    assert (summary.status == "pre-asymptotic").all()
    # The loss grows with the split in every cell.
    for _, curve in result.curves.groupby("cell"):
        assert np.all(np.diff(curve.loss.to_numpy()) > 0)


def test_visibility_follows_the_noise_level():
    spec = ms.MoESpec(gate="softmax", expert="tanh")
    result = profile(spec, G, cells=[1], n=200, deltas=DELTAS, sigma=1e-4, n_range=(1e3, 1e5))
    row = result.summary.iloc[0]
    assert row.visible and row.status == "visible"
    expected = (1e-8 / (row.constant * 1e5)) ** (1 / row.order)
    np.testing.assert_allclose(row.delta_at_n_max, expected, rtol=1e-12)
    np.testing.assert_allclose(row.n_visible, 1e-8 / (row.constant * 0.1**row.order), rtol=1e-12)


@pytest.mark.parametrize("expert", ["relu", "linear"])
def test_relu_and_linear_cells_are_flat(expert):
    spec = ms.MoESpec(gate="softmax", expert=expert)
    result = profile(spec, G, n=100, deltas=DELTAS[[0, -1]])
    assert not result.summary.identified.any()
    assert result.summary.status.str.startswith("not identified").all()
    assert result.curves.loss.max() < 1e-24 * np.var(ms.regression_function(spec, G, np.linspace(-1, 1, 100)))


@pytest.mark.parametrize("expert", ["scaled_tanh", "scaled_gelu", "scaled_sigmoid"])
def test_scaled_cell_is_flat_along_the_outer_scale_and_quartic_otherwise(expert):
    """eta_2 act(eta_1 x) is linear in eta_2: two atoms of one gate and one eta_1 with scales eta_2 +- delta
    and half the weight each reproduce f* exactly, so the free profile is flat (not identified). Held at one
    eta_2, the split of the gate and eta_1 is quartic, like act(a x + b)."""
    spec = ms.MoESpec(gate="softmax", expert=expert)
    split = ms.MixingMeasure(bias=[0.0, np.log(0.5), np.log(0.5)], gate=[[4.0], [0.0], [0.0]],
                             expert=[G.expert[0], G.expert[1] + [0.3, 0.0], G.expert[1] - [0.3, 0.0]])
    X = np.linspace(-1.0, 1.0, 101)
    # the same function to rounding: (g / 2) (eta_2 + 0.3) a + (g / 2) (eta_2 - 0.3) a = g eta_2 a
    np.testing.assert_allclose(ms.regression_function(spec, split, X), ms.regression_function(spec, G, X),
                               rtol=0, atol=1e-15)
    free = profile(spec, G, n=200, deltas=DELTAS)
    assert free.summary.status.str.startswith("not identified").all()
    held = profile(spec, G, n=200, deltas=DELTAS, split_scale=False)
    assert held.summary.identified.all()
    np.testing.assert_allclose(held.summary.order, 4.0, atol=0.3)


def test_sigmoid_regime_2_atoms_are_not_profiled():
    spec = ms.MoESpec(gate="sigmoid", expert="tanh")
    G1 = ms.MixingMeasure(bias=[0.0, 0.5], gate=[[4.0], [0.0]], expert=[[0.5, 3.0], [-1.0, -2.0]])
    result = profile(spec, G1, n=200, deltas=DELTAS)
    assert result.summary.status[0].startswith("sigmoid regime-2 atom")
    assert result.summary.identified[1]  # the constant-gate atom (regime 1) is profiled
    np.testing.assert_allclose(result.summary.order[1], 4.0, atol=0.3)


def test_profile_bad_arguments():
    spec = ms.MoESpec(gate="softmax", expert="tanh")
    with pytest.raises(ValueError, match="k must be k\\* \\+ 1 = 3"):
        profile(spec, G, k=4)
    with pytest.raises(ValueError, match="cells must be true-atom indices"):
        profile(spec, G, cells=[2])
    with pytest.raises(ValueError, match="deltas must hold at least two positive values"):
        profile(spec, G, deltas=[0.1])
    with pytest.raises(ValueError, match="split_scale=False needs a scaled expert family"):
        profile(spec, G, split_scale=False)
    with pytest.raises(ValueError, match="likelihood='regression'"):
        profile(ms.MoESpec(likelihood="gaussian"), ms.MixingMeasure([0.0], [[0.0]], [[0.0, 1.0]], [1.0]))
