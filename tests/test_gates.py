"""Gate objects: their rules (weights and inverse, translation, regimes, likelihoods) and a new gate as one
class, checked through the model's gradients."""

from dataclasses import dataclass

import numpy as np
import pytest

import moe_sim as ms
from moe_sim.gates import BiasedSigmoid, FixedMask, Gate, NormalisedSigmoid, Sigmoid, Softmax, TopKSoftmax
from moe_sim.model import Features
from tests.conftest import random_measure


@pytest.mark.parametrize("name", ["softmax", "sigmoid"])
def test_bias_of_inverts_the_weight_map(name):
    gate = ms.GATES[name]
    bias = np.linspace(-3.0, 3.0, 7)
    np.testing.assert_allclose(gate.bias_of(gate.weight(bias)), bias, rtol=0, atol=1e-12)


def test_softmax_translation_leaves_the_regression_function_unchanged():
    spec = ms.MoESpec(gate="softmax", expert="tanh")
    assert spec.gate_family.translation_invariant
    G = ms.MixingMeasure([0.3, -1.0, 2.0], [[1.0], [-2.0], [0.5]], [[0.1, 1.0], [0.2, -1.0], [0.0, 2.0]])
    X = np.linspace(-1, 1, 11)
    np.testing.assert_allclose(ms.regression_function(spec, G.translate(1.7, np.array([-0.4])), X),
                               ms.regression_function(spec, G, X), rtol=1e-13)


def test_sigmoid_regimes_and_softmax_has_none():
    G = ms.MixingMeasure([0.0, 1.0], [[0.0], [2.0]], [[1.0, 1.0], [0.0, 1.0]])
    assert ms.GATES["sigmoid"].regime(G) == 1
    assert ms.GATES["sigmoid"].regime(G.subset([1])) == 2
    assert ms.GATES["softmax"].regime(G) is None


def test_a_gate_states_the_likelihoods_it_allows():
    with pytest.raises(ValueError, match="likelihood='gaussian' is not allowed with gate='sigmoid'"):
        ms.MoESpec(gate="sigmoid", likelihood="gaussian")
    assert ms.MoESpec(gate="softmax", likelihood="gaussian").gate_name == "softmax"


@dataclass(frozen=True)
class _TemperedSoftmax(Softmax):
    """A test gate written as one class: softmax of 2 z, so its pullback carries the factor 2."""

    name = "tempered_softmax_test"

    def weight(self, bias):
        return np.exp(2.0 * bias)

    def bias_of(self, weight):
        return 0.5 * np.log(weight)

    def gates(self, z, scratch=None):
        z *= 2.0
        return super().gates(z) if scratch is None else super().gates(z, scratch)

    def logit_pullback(self, fw, gv, out):
        super().logit_pullback(fw, gv, out)
        out *= 2.0
        return out


def test_a_new_gate_is_one_class_and_gets_the_gradients_right():
    gate = _TemperedSoftmax()
    spec = ms.MoESpec(gate=gate, expert="tanh")
    assert spec.gate_name == "tempered_softmax_test" and isinstance(spec.gate_family, Gate)
    rng = np.random.default_rng(0)
    G = ms.MixingMeasure(rng.normal(size=3), rng.normal(size=(3, 1)), rng.normal(size=(3, 2)))
    X = np.linspace(-1, 1, 9)
    # the regression function equals a softmax fit with doubled gate parameters
    doubled = ms.MixingMeasure(2 * G.bias, 2 * G.gate, G.expert)
    np.testing.assert_allclose(ms.regression_function(spec, G, X),
                               ms.regression_function(ms.MoESpec(expert="tanh"), doubled, X), rtol=1e-13)
    grad = ms.regression_gradient(spec, G, X)
    eps = 1e-6
    for i in range(3):
        up, down = G.bias.copy(), G.bias.copy()
        up[i] += eps
        down[i] -= eps
        numeric = (ms.regression_function(spec, ms.MixingMeasure(up, G.gate, G.expert), X)
                   - ms.regression_function(spec, ms.MixingMeasure(down, G.gate, G.expert), X)) / (2 * eps)
        np.testing.assert_allclose(grad["bias"][i], numeric, rtol=1e-6, atol=1e-9)


def test_register_gate_rejects_what_is_not_a_gate():
    with pytest.raises(ValueError, match="gate must be a Gate"):
        ms.register_gate("softmax")


# The gates of issue 13: top-K softmax, normalised sigmoid, sigmoid with a fixed bias, fixed masks.


NEW_GATES = {
    "top2": TopKSoftmax(2),
    "top1": TopKSoftmax(1),
    "normalised_sigmoid": NormalisedSigmoid(),
    "sigmoid_log3": BiasedSigmoid.for_length(3),
    "softmax_mask02": FixedMask((0, 2)),
    "sigmoid_mask1": FixedMask((1,), Sigmoid()),
    "normalised_sigmoid_band": FixedMask.band(0, 1, 3, NormalisedSigmoid()),
    "top1_mask12": FixedMask((1, 2), TopKSoftmax(1)),
}
EPS = 1e-6


def _logits(spec, G, X):
    return G.bias[:, None] + G.gate @ Features.of(spec, X).phi


def _sorted_gap(z, rank):
    """Smallest gap, over samples, between the rank-th and (rank+1)-th largest logits."""
    ordered = -np.sort(-z, axis=0)
    return np.min(ordered[rank - 1] - ordered[rank])


@pytest.mark.parametrize("gate", list(NEW_GATES), ids=list(NEW_GATES))
@pytest.mark.parametrize("score", ["linear", "quadratic", "partial_quadratic"])
@pytest.mark.parametrize("expert", ["linear", "tanh", "relu"])
def test_new_gates_gradients_match_finite_differences(gate, score, expert):
    gate = NEW_GATES[gate]
    spec = ms.MoESpec(gate=gate, score=score, expert=expert, d=2, temperature=1.5)
    rng = np.random.default_rng(7)
    G = random_measure(spec, 3, rng)
    X = ms.draw_design("uniform", 9, 2, rng)
    phi_max = np.abs(Features.of(spec, X).phi).max()
    for top in (g for g in (gate, getattr(gate, "base", None)) if isinstance(g, TopKSoftmax)):
        # a central difference moves every logit by at most EPS (1 + max |phi|): the selection must not change
        assert _sorted_gap(_logits(spec, G, X), top.top_k) > 100 * EPS * (1 + phi_max)
    theta = G.to_vector()
    analytic = ms.regression_gradient(spec, G, X)
    analytic = np.concatenate([analytic[b].reshape(-1, X.shape[0]) for b in ("bias", "gate", "expert")])
    numeric = []
    for i in range(theta.size):
        step = np.zeros_like(theta)
        step[i] = EPS
        f = [ms.regression_function(spec, ms.MixingMeasure.from_vector(theta + s, 3, spec.q, spec.p), X)
             for s in (step, -step)]
        numeric.append((f[0] - f[1]) / (2 * EPS))
    np.testing.assert_allclose(analytic, np.stack(numeric), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("K", [1, 2, 3, 4, 5])
def test_top_k_keeps_the_k_largest_logits_and_renormalises_them(K):
    z = np.random.default_rng(K).normal(size=(5, 300))
    g = TopKSoftmax(K).gates(z.copy())
    top = np.argsort(-z, axis=0)[:K]
    inside = np.zeros_like(z, dtype=bool)
    np.put_along_axis(inside, top, True, axis=0)
    assert np.all(g[~inside] == 0.0)
    assert np.all(g[inside] > 0.0)
    np.testing.assert_allclose(g.sum(axis=0), 1.0, rtol=0, atol=1e-15)
    expected = np.where(inside, np.exp(z), 0.0)
    np.testing.assert_allclose(g, expected / expected.sum(axis=0), rtol=1e-14, atol=0)


def test_top_k_ties_go_to_the_lower_atom_index():
    z = np.array([[0.0, 1.0, 2.0], [0.0, 3.0, 2.0], [0.0, 1.0, 2.0], [-1.0, 1.0, 2.0]])
    g = TopKSoftmax(2).gates(z.copy())
    np.testing.assert_array_equal(g > 0, [[True, True, True], [True, True, True], [False, False, False],
                                          [False, False, False]])
    np.testing.assert_allclose(g[:2, 0], 0.5, rtol=0, atol=1e-15)


@pytest.mark.parametrize("K", [4, 6])
def test_top_k_with_at_least_as_many_as_the_atoms_is_softmax(K):
    z = np.random.default_rng(0).normal(size=(4, 50))
    np.testing.assert_allclose(TopKSoftmax(K).gates(z.copy()), ms.GATES["softmax"].gates(z.copy()),
                               rtol=1e-15, atol=0)


def test_a_mask_counts_the_allowed_atoms_that_exist_and_none_is_the_zero_function():
    z = np.random.default_rng(1).normal(size=(3, 20))
    np.testing.assert_array_equal(FixedMask((0, 2, 5)).gates(z.copy()), FixedMask((0, 2)).gates(z.copy()))
    spec = ms.MoESpec(gate=FixedMask((3, 4)), expert="tanh")
    G = random_measure(spec, 3, 2)
    X = np.linspace(-1, 1, 5)
    assert np.all(ms.regression_function(spec, G, X) == 0.0)
    assert all(np.all(block == 0.0) for block in ms.regression_gradient(spec, G, X).values())


@pytest.mark.parametrize("mask", [FixedMask((0, 3)), FixedMask((1, 2), Sigmoid()), FixedMask.band(1, 1, 4)],
                         ids=["softmax", "sigmoid", "band"])
def test_masked_gates_are_zero_outside_the_mask_and_the_base_gate_inside(mask):
    z = np.random.default_rng(1).normal(size=(4, 100))
    g = mask.gates(z.copy())
    allowed = list(mask.allowed)
    blocked = [i for i in range(4) if i not in allowed]
    assert np.all(g[blocked] == 0.0)
    np.testing.assert_allclose(g[allowed], mask.base.gates(z[allowed].copy()), rtol=1e-14, atol=0)


def test_band_rows_are_the_tokens_within_the_width():
    assert FixedMask.band(0, 1, 5).allowed == (0, 1)
    assert FixedMask.band(2, 1, 5).allowed == (1, 2, 3)
    assert FixedMask.band(4, 0, 5).allowed == (4,)
    assert FixedMask.band(2, 4, 5).allowed == (0, 1, 2, 3, 4)


def test_normalised_sigmoid_is_sigmoids_over_their_sum():
    z = 3.0 * np.random.default_rng(2).normal(size=(3, 100))
    s = 1.0 / (1.0 + np.exp(-z))
    g = NormalisedSigmoid().gates(z.copy())
    # moe_sim's sigmoid is accurate to rounding in absolute terms (families.sigmoid)
    np.testing.assert_allclose(g, s / s.sum(axis=0), rtol=0, atol=1e-15)
    np.testing.assert_allclose(g.sum(axis=0), 1.0, rtol=0, atol=1e-15)


def test_biased_sigmoid_adds_b_to_every_logit():
    gate = BiasedSigmoid.for_length(8)
    assert gate.b == -np.log(8)
    z = np.random.default_rng(3).normal(size=(3, 20))
    np.testing.assert_allclose(gate.gates(z.copy()), 1.0 / (1.0 + np.exp(-(z - np.log(8)))), rtol=0, atol=1e-15)
    spec = ms.MoESpec(gate=gate, expert="tanh")
    G = ms.MixingMeasure([0.3, -1.0], [[1.0], [-2.0]], [[0.1, 1.0], [0.2, -1.0]])
    shifted = ms.MixingMeasure(G.bias - np.log(8), G.gate, G.expert)
    X = np.linspace(-1, 1, 11)
    np.testing.assert_allclose(ms.regression_function(spec, G, X),
                               ms.regression_function(ms.MoESpec(gate="sigmoid", expert="tanh"), shifted, X),
                               rtol=1e-14)


@pytest.mark.parametrize("gate", list(NEW_GATES), ids=list(NEW_GATES))
def test_new_gates_bias_of_inverts_the_weight_map(gate):
    gate = NEW_GATES[gate]
    bias = np.linspace(-3.0, 3.0, 7)
    np.testing.assert_allclose(gate.bias_of(gate.weight(bias)), bias, rtol=0, atol=1e-12)


@pytest.mark.parametrize("gate,invariant", [
    (TopKSoftmax(2), True), (FixedMask((0, 2)), True), (NormalisedSigmoid(), False),
    (BiasedSigmoid(-1.0), False), (FixedMask((0, 2), Sigmoid()), False),
])
def test_translation_invariance_is_stated_where_it_holds(gate, invariant):
    spec = ms.MoESpec(gate=gate, expert="tanh")
    assert spec.gate_family.translation_invariant is invariant
    G = ms.MixingMeasure([0.3, -1.0, 2.0], [[1.0], [-2.0], [0.5]], [[0.1, 1.0], [0.2, -1.0], [0.0, 2.0]])
    X = np.linspace(-1, 1, 11)
    gap = np.max(np.abs(ms.regression_function(spec, G.translate(1.7, np.array([-0.4])), X)
                        - ms.regression_function(spec, G, X)))
    assert bool(gap < 1e-13) == invariant


@pytest.mark.parametrize("gate", list(NEW_GATES), ids=list(NEW_GATES))
def test_new_gates_refuse_the_gaussian_likelihood(gate):
    with pytest.raises(ValueError, match="likelihood='gaussian' is not allowed"):
        ms.MoESpec(gate=NEW_GATES[gate], likelihood="gaussian")


def test_normalised_sigmoid_is_registered_and_has_the_sigmoid_regimes():
    spec = ms.MoESpec(gate="normalised_sigmoid")
    assert isinstance(spec.gate_family, NormalisedSigmoid)
    G = ms.MixingMeasure([0.0, 1.0], [[0.0], [2.0]], [[1.0, 1.0], [0.0, 1.0]])
    assert spec.gate_family.regime(G) == 1 and spec.gate_family.regime(G.subset([1])) == 2
    assert TopKSoftmax(1).regime(G) is None


@pytest.mark.parametrize("make,message", [
    (lambda: TopKSoftmax(0), r"top_k must be an integer >= 1 .*got 0"),
    (lambda: TopKSoftmax(2.5), r"top_k must be an integer >= 1 .*got 2.5"),
    (lambda: FixedMask(()), r"allowed must be a non-empty set"),
    (lambda: FixedMask((0, 0)), r"allowed must be a non-empty set of distinct .*got \(0, 0\)"),
    (lambda: FixedMask((-1, 2)), r"allowed must be a non-empty set of atom indices >= 0, got -1"),
    (lambda: FixedMask((0,), "softmax"), r"base must be a Gate, got str"),
    (lambda: FixedMask.band(0, -1, 4), r"width must be an integer with 0 <= width <= 3, got -1"),
    (lambda: FixedMask.band(0, 4, 4), r"width must be an integer with 0 <= width <= 3 .*got 4"),
    (lambda: FixedMask.band(4, 1, 4), r"center must be an atom index, 0 <= center <= 3, got 4"),
    (lambda: BiasedSigmoid(float("nan")), r"b must be a finite number .*got nan"),
    (lambda: BiasedSigmoid.for_length(0), r"n_tokens must be an integer >= 1, got 0"),
])
def test_bad_gate_parameters_name_the_parameter_the_value_and_what_is_allowed(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("gate", [TopKSoftmax(2), NormalisedSigmoid(), BiasedSigmoid(-1.0), FixedMask((0, 2)),
                                  FixedMask((0, 1), Sigmoid())], ids=lambda g: g.name)
def test_new_gates_work_in_the_estimator_and_the_losses(gate):
    spec = ms.MoESpec(gate=gate, expert="tanh")
    G = ms.MixingMeasure([0.0, 0.5, -0.5], [[2.0], [-1.0], [0.5]], [[1.0, 1.0], [-1.0, 0.5], [0.5, -2.0]])
    X, y = ms.sample(spec, G, 300, 0, noise_sd=0.1)
    result = ms.fit(spec, X, y, 3, rng=1, G_true=G)
    assert not result.worse_than_truth
    # top-K least squares jumps where the K-th and next logits cross (test above): no gradient certificate
    assert result.converged or isinstance(gate, TopKSoftmax)
    assert ms.voronoi_loss(spec, G, G) == 0.0
    assert np.isfinite(ms.voronoi_loss(spec, result.measure, G))


def test_top_k_regression_function_jumps_where_the_kth_and_next_logits_cross():
    """Constant scores: atoms 1 and 2 compete for the second place; at the tie atom 1 (the lower index) wins."""
    spec = ms.MoESpec(gate=TopKSoftmax(2), expert="constant")
    experts = [[0.0], [1.0], [-1.0]]
    f = {c: ms.regression_function(spec, ms.MixingMeasure([1.0, 0.0, c], [[0.0]] * 3, experts), [0.0])[0]
         for c in (-1e-12, 0.0, 1e-12)}
    second = 1.0 / (np.e + 1.0)  # the gate of the second place, whichever atom holds it
    np.testing.assert_allclose([f[-1e-12], f[0.0], f[1e-12]], [second, second, -second], rtol=1e-9)


@pytest.mark.parametrize("gate", sorted(NEW_GATES) + ["sigmoid"])
def test_split_and_merge_biases_scale_and_add_the_weights_even_for_null_atoms(gate):
    gate = NEW_GATES.get(gate) or ms.GATES[gate]
    for c in (-50.0, -2.0, 0.5, 3.0):
        scaled = gate.scaled_bias(c, 0.3)
        assert np.isfinite(scaled)
        if gate.weight(np.array([c]))[0] > 1e-12:  # below, the weight map itself underflows
            np.testing.assert_allclose(gate.weight(np.array([scaled])), 0.3 * gate.weight(np.array([c])), rtol=1e-9)
    bias = np.array([-1.0, 0.5])
    merged = gate.merged_bias(bias)
    expected = min(gate.weight(bias).sum(), (1 - 1e-6) * gate.max_weight)
    np.testing.assert_allclose(gate.weight(np.array([merged])), expected, rtol=1e-9)
    assert gate.max_weight == (np.inf if gate.translation_invariant else 1.0)
    assert np.isfinite(gate.merged_bias(np.array([-60.0, -70.0])))
