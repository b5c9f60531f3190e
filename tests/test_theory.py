"""The predicted-rates table."""

import numpy as np
import pytest

import moe_sim as ms
from moe_sim.theory import NO_CONVERGENCE, NOT_UNIQUE, RULES


def _rate(table, cell, block, size=None):
    rows = table[(table.cell == cell) & (table.block == block)]
    if size is not None:
        rows = rows[rows.cell_size == size]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_paper_a_over_specified_rates(paper_a):
    spec, G = paper_a
    table = ms.predicted_rates(spec, G, 4)
    assert _rate(table, "all", "regression_function").exponent == 0.5
    assert _rate(table, "exact", "var", 1).exponent == 0.5
    # r(2) = 4: beta and b at n^-1/8, a and nu at n^-1/4; r(3) = 6: n^-1/12 and n^-1/6
    for size, r in ((2, 4), (3, 6)):
        np.testing.assert_allclose(_rate(table, "over", "gate", size).exponent, 1 / (2 * r))
        np.testing.assert_allclose(_rate(table, "over", "expert_intercept", size).exponent, 1 / (2 * r))
        np.testing.assert_allclose(_rate(table, "over", "expert_slope", size).exponent, 1 / r)
        np.testing.assert_allclose(_rate(table, "over", "var", size).exponent, 1 / r)
        assert _rate(table, "over", "weight", size).exponent == 0.5
    assert set(table.tag) == {"S"}


def test_exact_fit_has_no_over_specified_rows(paper_a):
    spec, G = paper_a
    assert set(ms.predicted_rates(spec, G, 2).cell) == {"all", "exact"}


def test_softmax_ffn_relu_and_linear(sigmoid_tanh):
    _, G = sigmoid_tanh
    scaled = ms.predicted_rates(ms.MoESpec(gate="softmax", expert="scaled_tanh"), G, 3)
    assert _rate(scaled, "over", "expert", 2).exponent == 0.25 and _rate(scaled, "over", "expert", 2).tag == "R"
    assert _rate(scaled, "exact", "expert", 1).exponent == 0.5
    # act(a x + b), with an inner bias: the theory does not cover its over-specified cells
    tanh = ms.predicted_rates(ms.MoESpec(gate="softmax", expert="tanh"), G, 3)
    for block in ("weight", "gate", "expert"):
        row = _rate(tanh, "over", block, 2)
        assert row.rate == "measured" and np.isnan(row.exponent) and row.tag == "measured"
    assert _rate(tanh, "exact", "expert", 1).exponent == 0.5
    relu = ms.predicted_rates(ms.MoESpec(gate="softmax", expert="relu"), G, 3)
    assert _rate(relu, "over", "expert", 2).rate == "not identified"
    assert np.isnan(_rate(relu, "over", "expert", 2).exponent)
    linear = ms.predicted_rates(ms.MoESpec(gate="softmax", expert="linear"), G, 3)
    assert _rate(linear, "over", "gate", 2).rate == "slow"


def test_scaled_relu_expert_is_not_identified_even_exactly(sigmoid_tanh):
    """eta_2 ReLU(eta_1 x) = (eta_2 / s) ReLU(s eta_1 x): the expert trades scale in every cell."""
    _, G = sigmoid_tanh
    table = ms.predicted_rates(ms.MoESpec(gate="softmax", expert="scaled_relu"), G, 3)
    assert _rate(table, "exact", "expert", 1).rate == "not identified"
    assert _rate(table, "exact", "gate", 1).exponent == 0.5
    assert _rate(table, "over", "gate", 2).rate == "not identified"


def test_gaussian_moe_with_scaled_experts_is_read_from_the_sibling_paper():
    spec = ms.MoESpec(gate="softmax", expert="scaled_gelu", likelihood="gaussian")
    G = ms.MixingMeasure([0.0, 0.0], [[1.0], [0.0]], [[1.0, 2.0], [-1.0, 1.0]], var=[0.1, 0.2])
    table = ms.predicted_rates(spec, G, 3)
    for block in ("gate", "expert", "var"):
        assert _rate(table, "over", block, 2).exponent == 0.25 and _rate(table, "over", block, 2).tag == "V"
    assert _rate(table, "exact", "var", 1).exponent == 0.5


def test_expert_classes():
    from moe_sim.theory import expert_class

    classes = {name: expert_class(family) for name, family in ms.EXPERTS.items()}
    assert classes["scaled_tanh"] == classes["scaled_gelu"] == classes["scaled_sigmoid"] == "strong"
    assert classes["tanh"] == classes["gelu"] == classes["sigmoid"] == "inner_bias"
    assert classes["relu"] == "homogeneous" and classes["scaled_relu"] == "homogeneous_scaled"
    assert classes["linear"] == "weak" and classes["constant"] == "none"


def test_sigmoid_regimes(sigmoid_tanh):
    spec, G = sigmoid_tanh
    dense = ms.predicted_rates(spec, G, 3)
    assert set(dense.cell) == {"all", "exact"} and set(dense.reference) >= {"G_bar"}
    assert _rate(dense, "exact", "expert", 1).exponent == 0.5
    sparse_truth = ms.MixingMeasure(G.bias, [[3.0], [0.0]], G.expert)
    assert _rate(ms.predicted_rates(spec, sparse_truth, 3), "over", "expert", 2).rate == "measured"
    scaled = ms.MoESpec(gate="sigmoid", expert="scaled_tanh")
    sparse = ms.predicted_rates(scaled, sparse_truth, 3)
    assert _rate(sparse, "over", "expert", 2).exponent == 0.25 and _rate(sparse, "over", "expert", 2).tag == "V"


def test_regime_2_with_experts_closed_under_sums_has_no_unique_g_bar(sigmoid_tanh):
    _, G = sigmoid_tanh
    for expert in ("scaled_tanh", "linear"):
        table = ms.predicted_rates(ms.MoESpec(gate="sigmoid", expert=expert), G, 3)
        assert set(table.rate[table.block != "regression_function"]) == {NOT_UNIQUE}
        assert table.exponent[table.block != "regression_function"].isna().all()
    inner_bias = ms.predicted_rates(ms.MoESpec(gate="sigmoid", expert="tanh"), G, 3)
    assert _rate(inner_bias, "exact", "expert", 1).exponent == 0.5, "act(a x + b) keeps regime 2 misspecified"


def test_regime_2_against_g_star_predicts_no_convergence(sigmoid_tanh):
    spec, G = sigmoid_tanh
    table = ms.predicted_rates(spec, G, 3, target="truth")
    assert set(table.reference) == {"G*"} and set(table[table.cell != "all"].cell_size) == {1, 2}
    assert _rate(table, "over", "expert", 2).rate == NO_CONVERGENCE and np.isnan(_rate(table, "exact", "gate").exponent)
    exact = ms.predicted_rates(spec, G, 2, target="truth")
    assert _rate(exact, "exact", "expert").exponent == 0.5, "with k = k* G_bar is G*: the usual rates"
    with pytest.raises(ValueError, match="target='gbar' is not allowed"):
        ms.predicted_rates(spec, G, 3, target="gbar")


def test_quadratic_softmax_is_logarithmic():
    spec = ms.MoESpec(gate="softmax", score="quadratic", expert="linear")
    G = ms.MixingMeasure([0.0, 0.0], [[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, -1.0]])
    assert _rate(ms.predicted_rates(spec, G, 3), "over", "gate", 2).rate == "1/log^lambda(n)"


def test_every_rule_is_tagged():
    assert all(rule.tag in {"S", "V", "R", "measured"} and rule.source for rule in RULES)


def test_k_below_truth_is_rejected(paper_a):
    spec, G = paper_a
    with pytest.raises(ValueError, match="k must be an integer >= the number of true atoms"):
        ms.predicted_rates(spec, G, 1)


def test_partially_quadratic_softmax_follows_the_linear_score():
    spec = ms.MoESpec(gate="softmax", score="partial_quadratic", expert="scaled_tanh")
    G = ms.MixingMeasure([0.0, 0.0], [[1.0], [0.0]], [[0.0, 1.0], [1.0, -1.0]])
    row = _rate(ms.predicted_rates(spec, G, 3), "over", "expert", 2)
    assert row.exponent == 0.25 and row.tag == "R"
    inner_bias = ms.MoESpec(gate="softmax", score="partial_quadratic", expert="tanh")
    assert _rate(ms.predicted_rates(inner_bias, G, 3), "over", "expert", 2).rate == "measured"
    sigmoid = ms.MoESpec(gate="sigmoid", score="partial_quadratic", expert="scaled_tanh")
    regime1 = ms.MixingMeasure([0.0, 0.0], [[1.0], [0.0]], [[0.0, 1.0], [1.0, -1.0]])
    assert _rate(ms.predicted_rates(sigmoid, regime1, 3), "over", "gate", 2).exponent == 0.25
