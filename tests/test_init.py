"""Initialisation strategies."""

import numpy as np
import pytest

import moe_sim as ms
from moe_sim.fit.init import FROM_FITS, INITS, initial_measures, merge_starts, near_truth, split_starts, start_plan

SPEC = ms.MoESpec(gate="softmax", expert="tanh")
G = ms.MixingMeasure(bias=[0.0, 0.5, -0.5], gate=[[3.0], [0.0], [-2.0]],
                     expert=[[0.5, 2.0], [-0.5, -1.0], [1.0, 0.5]])


@pytest.fixture
def data():
    return ms.sample(SPEC, G, 600, rng=0, noise_sd=0.1)


@pytest.mark.parametrize("init", [name for name in INITS if name not in FROM_FITS])
def test_strategies_are_deterministic_for_a_seed(data, init):
    X, y = data
    a = initial_measures(SPEC, X, y, 4, init, 3, rng=11, G_true=G)
    b = initial_measures(SPEC, X, y, 4, init, 3, rng=11, G_true=G)
    c = initial_measures(SPEC, X, y, 4, init, 3, rng=12, G_true=G)
    assert [name for name, _ in a] == [init] * 3
    for (_, Ga), (_, Gb) in zip(a, b):
        np.testing.assert_array_equal(Ga.to_vector(), Gb.to_vector())
    assert not np.array_equal(a[0][1].to_vector(), c[0][1].to_vector())
    assert not np.array_equal(a[0][1].to_vector(), a[1][1].to_vector())  # starts differ within a call


@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
@pytest.mark.parametrize("k", [3, 4, 6])
def test_near_truth_covers_every_true_atom_and_splits_weights(data, gate, k):
    X, y = data
    spec = ms.MoESpec(gate=gate, expert="tanh")
    for seed in range(5):
        start = near_truth(spec, X, y, k, rng=seed, G_true=G, scale=0.0)
        rows = np.hstack([start.gate, start.expert])
        true_rows = np.hstack([G.gate, G.expert])
        owner = [int(np.flatnonzero((true_rows == row).all(axis=1))[0]) for row in rows]
        assert sorted(set(owner)) == [0, 1, 2]
        w = spec.weights(start.bias)
        cell_weight = np.bincount(owner, weights=w, minlength=3)
        np.testing.assert_allclose(cell_weight, spec.weights(G.bias), rtol=1e-12)


def test_near_truth_noise_scales_with_n_power(data):
    X, y = data
    n = len(y)
    draws = [near_truth(SPEC, X, y, 3, rng=s, G_true=G, scale=0.5, power=0.5).gate - G.gate for s in range(200)]
    np.testing.assert_allclose(np.std(draws), 0.5 * n**-0.5, rtol=0.15)  # 600 draws: sd known to ~3%


def test_near_truth_undercovered_with_fewer_atoms(data):
    X, y = data
    start = near_truth(SPEC, X, y, 2, rng=0, G_true=G, scale=0.0)
    assert start.k == 2 and len({tuple(r) for r in start.expert}) == 2


@pytest.mark.parametrize("init", ["kmeans", "random"])
def test_truth_free_strategies_ignore_the_truth(data, init):
    X, y = data
    with_truth = initial_measures(SPEC, X, y, 3, init, 2, rng=3, G_true=G)
    without = initial_measures(SPEC, X, y, 3, init, 2, rng=3)
    for (_, a), (_, b) in zip(with_truth, without):
        np.testing.assert_array_equal(a.to_vector(), b.to_vector())


def test_kmeans_experts_and_gates_follow_the_clusters():
    spec = ms.MoESpec(gate="softmax", expert="linear")
    truth = ms.MixingMeasure(bias=[0.0, 0.0], gate=[[200.0], [0.0]], expert=[[3.0, 1.0], [-3.0, -1.0]])
    X, y = ms.sample(spec, truth, 2000, rng=4, noise_sd=0.05)
    (_, start), = initial_measures(spec, X, y, 2, "kmeans", 1, rng=4)
    order = np.argsort(start.expert[:, 0])[::-1]  # the atom with the positive intercept first
    np.testing.assert_allclose(start.expert[order], truth.expert, atol=0.5)  # boundary points pull the lines
    assert start.gate[order[0], 0] > start.gate[order[1], 0]  # and its gate favours x > 0


def test_gaussian_starts_carry_variances(paper_a):
    spec, truth = paper_a
    X, y = ms.sample(spec, truth, 500, rng=5, design="equispaced", bounds=(0.0, 1.0))
    for name, start in initial_measures(spec, X, y, 3, "default", rng=5, G_true=truth, method="em"):
        assert start.var is not None and np.all(start.var > 0), name


def test_start_plan():
    assert start_plan("default", None, None) == {"kmeans": 8, "random": 8, "split": 6, "merge": 2}
    assert start_plan("default", None, G) == {"kmeans": 8, "random": 8, "split": 6, "merge": 2, "near_truth": 8}
    assert start_plan("default", 2, G) == {"kmeans": 2, "random": 2, "split": 2, "merge": 2, "near_truth": 2}
    assert start_plan("default", None, G, method="em") == {"kmeans": 2, "random": 2, "split": 4, "merge": 2,
                                                           "near_truth": 1}
    assert start_plan(["random", "near_truth"], None, G) == {"random": 8, "near_truth": 8}
    assert start_plan("kmeans", 3, None, method="em") == {"kmeans": 3}
    assert start_plan({"kmeans": 2, "random": 5}, None, None) == {"kmeans": 2, "random": 5}
    with pytest.raises(ValueError, match="init='grid' is not allowed; choose 'default', a dict of counts or any of"):
        start_plan("grid", None, None)
    with pytest.raises(ValueError, match="not allowed"):
        start_plan([], None, None)
    with pytest.raises(ValueError, match="gives the counts: leave n_starts"):
        start_plan({"random": 2}, 3, None)
    with pytest.raises(ValueError, match="every count must be a positive integer"):
        start_plan({"random": 0}, None, None)
    with pytest.raises(ValueError, match="n_starts must be a positive integer"):
        start_plan("random", 0, None)
    with pytest.raises(ValueError, match="method='mle' is not allowed"):
        start_plan("default", None, None, method="mle")


def test_dict_init_gives_counts_per_strategy(data):
    X, y = data
    starts = initial_measures(SPEC, X, y, 3, {"kmeans": 1, "random": 2}, rng=0)
    assert [name for name, _ in starts] == ["kmeans", "random", "random"]


def test_near_truth_bad_arguments(data):
    X, y = data
    with pytest.raises(ValueError, match="needs the true measure"):
        near_truth(SPEC, X, y, 3, rng=0)
    with pytest.raises(ValueError, match="scale must be a non-negative number"):
        near_truth(SPEC, X, y, 3, rng=0, G_true=G, scale=-1.0)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        initial_measures(SPEC, X, y, 0, "random")


@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
def test_split_starts_add_one_atom_and_keep_the_split_atoms_weight(gate):
    spec = ms.MoESpec(gate=gate, expert="tanh")
    fewer = G.subset([0, 2])
    starts = split_starts(spec, fewer, rng=3)
    assert len(starts) == 2 * 3  # every atom along gate, expert and weight
    assert all(s.k == 3 for s in starts)
    again = split_starts(spec, fewer, rng=3)
    for a, b in zip(starts, again):
        np.testing.assert_array_equal(a.to_vector(), b.to_vector())
    total = spec.weights(fewer.bias).sum()
    for s in starts:  # the two halves carry the split atom's weight, the other atom keeps its own
        np.testing.assert_allclose(spec.weights(s.bias).sum(), total, rtol=1e-12)
    assert len(split_starts(spec, fewer, rng=3, count=4)) == 4


@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
def test_split_starts_do_not_depend_on_the_order_or_translation_of_the_atoms(gate):
    spec = ms.MoESpec(gate=gate, expert="tanh")
    shift = (0.7, np.array([-1.3])) if gate == "softmax" else (0.0, np.zeros(1))  # softmax: blind to translation
    moved = G.subset([2, 0, 1]).translate(*shift)
    starts, again = split_starts(spec, G, rng=3), split_starts(spec, moved, rng=3)
    for a, b in zip(starts, again):  # the same splits, carried by the same translation
        np.testing.assert_allclose(a.translate(*shift).to_vector(), b.to_vector(), rtol=1e-12, atol=1e-12)


def test_split_starts_with_both_signs_add_an_atom_of_the_opposite_expert_sign():
    spec = ms.MoESpec(gate="sigmoid", expert="scaled_tanh")
    fewer = ms.MixingMeasure(bias=[0.0, 1.0], gate=[[2.0], [-1.0]], expert=[[0.5, 3.0], [-1.0, 2.0]])
    plain = split_starts(spec, fewer, rng=3)
    both = split_starts(spec, fewer, rng=3, both_signs=True)
    assert len(both) == len(plain) + fewer.k  # one sign split per atom
    pairs = {tuple(s.expert[-2:].ravel()) for s in both}  # the split atom's two copies come last
    for eta_2, eta_1 in fewer.expert:  # the scale eta_2 is the size coordinate: its sign flips, eta_1 stays
        assert (eta_2, eta_1, -eta_2, eta_1) in pairs, "each atom split into both signs"
    for s in both:  # the split atom's weight is kept
        np.testing.assert_allclose(spec.weights(s.bias).sum(), spec.weights(fewer.bias).sum(), rtol=1e-12)


def test_merge_starts_keep_k_and_merge_the_closest_pair():
    spec = ms.MoESpec(gate="softmax", expert="tanh")
    close = ms.MixingMeasure(bias=[0.0, 0.1, 500.0], gate=[[3.0], [3.1], [-2.0]],
                             expert=[[0.5, 2.0], [0.6, 2.0], [1.0, 0.5]])
    starts = merge_starts(spec, close, rng=1, count=5)
    assert len(starts) == close.k - 2  # one per atom other than the merged one
    (start,) = starts
    assert start.k == 3 and np.all(np.isfinite(start.to_vector()))
    # atoms 0 and 1 became their weight-averaged atom, of their total weight; atom 2 was split in two halves
    share = spec.weight_shares(close.bias[:2])
    np.testing.assert_allclose(start.gate[0], share @ close.gate[:2])
    np.testing.assert_allclose(start.bias[0], np.logaddexp(0.0, 0.1))
    np.testing.assert_allclose(start.bias[1:], 500.0 - np.log(2.0))
    assert merge_starts(spec, close.subset([0, 1]), rng=1, count=5) == []


@pytest.mark.parametrize("expert,eta", [("scaled_tanh", [2.0, 1.5]), ("scaled_gelu", [-1.0, 3.0]),
                                        ("scaled_sigmoid", [1.5, -2.5]), ("scaled_relu", [1.5, -2.0])])
def test_scaled_expert_start_finds_sign_and_scale(expert, eta):
    """eta_2 act(eta_1 x) from noise-free values of one expert: the lengths searched are a factor 2 apart,
    so the chosen eta_1 lies within a factor 2 of the truth's, with its sign, and so does the product eta_2
    eta_1 (the slope at 0, up to the activation's own slope there). relu only identifies the sign of eta_1
    and the product (eta_2 relu(eta_1 x) = eta_2 s relu(eta_1 x / s))."""
    from moe_sim.fit.init import _expert_fit

    spec = ms.MoESpec(gate="softmax", expert=expert)
    X = np.linspace(-1.0, 1.0, 201)[:, None]
    y = ms.regression_function(spec, ms.MixingMeasure([0.0], [[0.0]], [eta]), X)
    start = _expert_fit(spec, X.T, y)
    assert start.shape == (2,)
    if expert == "scaled_relu":
        assert np.sign(start[1]) == np.sign(eta[1])
    else:
        assert 0.5 < start[1] / eta[1] < 2.0
    assert 0.5 < start[0] * start[1] / (eta[0] * eta[1]) < 2.0
