"""Least squares, the `fit` entry point and G_bar."""

import warnings

import numpy as np
import pytest

import moe_sim as ms
from moe_sim.fit import LeastSquares, closest_measure, fit
from moe_sim.fit.gbar import DegenerateGBarWarning
from moe_sim.fit.init import initial_measures
from moe_sim.fit.lse import RSSObjective, null_free_box
from moe_sim.model import Features, forward


def lse_fit(spec, X, y, k, starts, **options):
    """Least squares from the given starts (no further draws)."""
    return LeastSquares(**options).fit_starts(spec, X, y, k, starts)

# A well-conditioned sigmoid tanh-expert truth (regime 2, k* = 2) on X in [-3, 3]: its asymptotic standard
# errors at n = 1e5, sigma = 0.1 sum to about 0.2 (the conftest truth on [-1, 1] has standard errors of
# order 1 at that n: its f is almost matched by very different parameters).
TANH = ms.MoESpec(gate="sigmoid", expert="tanh")
G_TANH = ms.MixingMeasure(bias=[1.0, -0.5], gate=[[-1.2], [-1.5]], expert=[[1.0, -1.3], [-1.7, -0.4]])
BOX = (-3.0, 3.0)


def asymptotic_sd(spec, G, X, sigma):
    """Per-parameter asymptotic sd of least squares, sigma sqrt(diag((J^T J)^-1)), to_vector layout."""
    g = ms.regression_gradient(spec, G, X)
    n = X.shape[0]
    J = np.hstack([g["bias"].T, g["gate"].transpose(2, 0, 1).reshape(n, -1),
                   g["expert"].transpose(2, 0, 1).reshape(n, -1)])
    return sigma * np.sqrt(np.diag(np.linalg.inv(J.T @ J)))


def test_gradient_matches_finite_differences():
    X, y = ms.sample(TANH, G_TANH, 300, rng=0, noise_sd=0.1, bounds=BOX)
    obj = RSSObjective(TANH, X, y, 2)
    theta = G_TANH.to_vector() + 0.1
    _, grad = obj(theta)
    eps = 1e-6
    fd = [(obj(theta + eps * e)[0] - obj(theta - eps * e)[0]) / (2 * eps) for e in np.eye(theta.size)]
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-9)


def test_recovers_exactly_specified_sigmoid_tanh_model():
    n, sigma = 5000, 0.01
    X, y = ms.sample(TANH, G_TANH, n, rng=1, noise_sd=sigma, bounds=BOX)
    result = fit(TANH, X, y, 2, rng=1, G_true=G_TANH)
    assert result.converged and not result.worse_than_truth
    loss = ms.voronoi_loss(TANH, result.measure, G_TANH)
    # D3 sums absolute errors: a few asymptotic sds of every parameter.
    assert loss < 4 * asymptotic_sd(TANH, G_TANH, X, sigma).sum()


@pytest.mark.slow  # n = 1e5, the full truth-free search
def test_default_starts_without_the_truth_reach_it_at_large_n():
    """`fit` as a user without the truth calls it (the default truth-free starts), judged afterwards."""
    n, sigma = 100_000, 0.01
    X, y = ms.sample(TANH, G_TANH, n, rng=2, noise_sd=sigma, bounds=BOX)
    result = fit(TANH, X, y, 2, rng=2)
    kinds = {s.init for s in result.starts}
    assert {"kmeans", "random", "split"} <= kinds and "near_truth" not in kinds
    truth_rss = np.sum((y - ms.regression_function(TANH, G_TANH, X)) ** 2)
    assert result.objective <= truth_rss * (1 + 1e-9)
    assert ms.voronoi_loss(TANH, result.measure, G_TANH) < 0.05


# six seeds of the full over-specified search each: tanh and relu take 0.5 to 1 min (make test-all)
@pytest.mark.parametrize("expert,k", [pytest.param("tanh", 3, marks=pytest.mark.slow),
                                      pytest.param("relu", 3, marks=pytest.mark.slow), ("linear", 2)])
def test_objective_no_worse_than_truth_over_seeds(expert, k):
    spec = ms.MoESpec(gate="softmax", expert=expert)
    G = ms.MixingMeasure(bias=[0.0, 0.0], gate=[[3.0], [0.0]], expert=[[0.5, 2.0], [-0.5, -1.0]])
    for seed in range(6):
        X, y = ms.sample(spec, G, 400, rng=seed, noise_sd=0.2)
        result = fit(spec, X, y, k, rng=seed, G_true=G)
        assert result.truth_objective == pytest.approx(np.sum((y - ms.regression_function(spec, G, X)) ** 2))
        assert not result.worse_than_truth, (seed, result.objective, result.truth_objective)


def test_result_diagnostics_and_reproducibility():
    X, y = ms.sample(TANH, G_TANH, 500, rng=3, noise_sd=0.1, bounds=BOX)
    a = fit(TANH, X, y, 2, n_starts=2, rng=3)
    b = fit(TANH, X, y, 2, n_starts=2, rng=3)
    np.testing.assert_array_equal(a.measure.to_vector(), b.measure.to_vector())
    # the first round: the plan's truth-free kinds, n_starts each (merges start from the second round)
    assert [s.init for s in a.starts[:6]] == ["kmeans", "kmeans", "random", "random", "split", "split"]
    assert a.objective == min(s.objective for s in a.starts)
    assert a.method == "lse" and a.runtime_s > 0 and a.n_iter > 0
    assert a.truth_objective is None and a.worse_than_truth is None
    # the search report counts what the starts say
    fitted = [s for s in a.starts if s.measure is not None]
    assert a.search.n_starts == len(fitted)
    units = np.array([s.objective - a.objective for s in fitted]) / (a.objective / len(y))
    assert a.search.n_hits == np.sum(units <= a.search.hit_tol) >= 1
    assert a.certified == (a.converged and a.search.n_hits >= 3)


def test_a_p_miss_target_keeps_the_search_going():
    """Over-specified (k = 3 on two atoms) at n = 500: one hit stops the search after its first round, with 19
    distinct optima among 22 local fits; asking also for p_miss <= 0.02 runs every round it may, finds an
    optimum at least as low, and says that it did not meet its rule."""
    X, y = ms.sample(TANH, G_TANH, 500, rng=6, noise_sd=0.1, bounds=BOX)
    loose = fit(TANH, X, y, 3, rng=6, bounds=10.0, search={"hits": 1, "max_rounds": 4})
    tight = fit(TANH, X, y, 3, rng=6, bounds=10.0, search={"hits": 1, "max_rounds": 4, "max_p_miss": 0.02})
    assert loose.search.met and loose.search.rounds == 1 and loose.search.p_miss > 0.02
    assert tight.search.rounds == 4 and not tight.search.met and tight.search.p_miss > 0.02
    assert tight.objective <= loose.objective


def test_screening_polishes_only_the_best_starts():
    X, y = ms.sample(TANH, G_TANH, 3000, rng=4, noise_sd=0.1, bounds=BOX)
    result = fit(TANH, X, y, 2, n_starts=3, rng=4, screen=1000, keep=2, search={"hits": 1, "max_rounds": 1})
    screened = [s for s in result.starts if s.reason.startswith("screened out")]
    assert len(screened) == len(result.starts) - 2  # keep = 2 distinct, of which the hits = 1 best
    assert all(s.objective >= result.objective for s in result.starts)


def test_bounds_keep_parameters_in_the_box():
    X, y = ms.sample(TANH, G_TANH, 500, rng=5, noise_sd=0.1, bounds=BOX)
    result = fit(TANH, X, y, 2, rng=5, bounds=1.0)
    assert np.all(np.abs(result.measure.to_vector()) <= 1.0)
    result = fit(TANH, X, y, 2, rng=5, bounds={"gate": (-0.5, 0.5)})
    assert np.all(np.abs(result.measure.gate) <= 0.5)
    with pytest.raises(ValueError, match="bounds has unknown blocks"):
        fit(TANH, X, y, 2, rng=5, bounds={"weight": (0, 1)})
    with pytest.raises(ValueError, match="low <= high"):
        fit(TANH, X, y, 2, rng=5, bounds={"gate": (1, -1)})


def test_iteration_cap_returns_unconverged_fit():
    X, y = ms.sample(TANH, G_TANH, 500, rng=6, noise_sd=0.1, bounds=BOX)
    result = fit(TANH, X, y, 2, rng=6, max_iter=2)
    assert not result.converged
    assert "iteration cap" in result.reason
    assert all(not s.converged for s in result.starts)


def test_non_finite_fit_returns_unconverged_result():
    spec = ms.MoESpec(gate="softmax", expert="polynomial", degree=8)
    X = np.array([-10.0, 10.0, 1.0, 2.0])
    y = np.array([0.0, 1.0, 0.0, 1.0])
    start = ms.MixingMeasure(bias=[0.0, 0.0], gate=[[1.0], [-1.0]], expert=np.full((2, 9), 1e300))
    result = lse_fit(spec, X, y, 2, [("manual", start)])
    assert not result.converged
    assert result.measure is None and np.isnan(result.objective)
    assert "non-finite" in result.reason and "non-finite" in result.starts[0].reason


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"k": 0}, "k = 0 is not allowed"),
        ({"method": "newton"}, "method = 'newton' is not allowed"),
        ({"init": "spectral"}, "init='spectral' is not allowed.*'kmeans'"),
        ({"backend": "jax"}, r"LeastSquares.backend = 'jax' is not allowed; choose one of 'numpy', 'torch', 'cuda'"),
        ({"solver": "bfgs"}, r"LeastSquares.solver = 'bfgs' is not allowed; choose one of 'lbfgsb', 'lm'"),
        ({"init_options": {"sd": 1}}, "init_options has unknown keys"),
        ({"n_starts": 0}, "n_starts must be a positive integer"),
        ({"init": "near_truth"}, "needs the true measure"),
        ({"screen": 0}, "screen must be 'auto', None or a positive integer"),
        ({"keep": 0}, r"LeastSquares.keep = 0 is not allowed"),
        ({"tol": 0.0}, r"LeastSquares.tol = 0.0 is not allowed"),
        ({"max_iter": 0}, r"LeastSquares.max_iter = 0 is not allowed"),
        ({"search": {"hit": 3}}, r"search option\(s\) \['hit'\] not allowed"),
        ({"search": {"hits": 0}}, r"Search.hits = 0 is not allowed"),
        ({"search": {"max_p_miss": 0.0}}, r"Search.max_p_miss = 0.0 is not allowed: expected a number in \(0, 1\]"),
        ({"k": 13}, r"n = 50 samples is not allowed for k = 13: a fit needs more samples than its 52 parameters"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    X, y = ms.sample(TANH, G_TANH, 50, rng=0)
    args = {"k": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        fit(TANH, X, y, **args)


def test_bad_data_raise():
    X, y = ms.sample(TANH, G_TANH, 50, rng=0)
    with pytest.raises(ValueError, match="y must have shape"):
        fit(TANH, X, y[:-1], 2)
    with pytest.raises(ValueError, match="X contains NaN"):
        fit(TANH, np.where(np.arange(50)[:, None] == 3, np.nan, X), y, 2)
    with pytest.raises(ValueError, match="y contains NaN"):
        fit(TANH, X, np.where(np.arange(50) == 3, np.nan, y), 2)
    with pytest.raises(ValueError, match="least squares needs likelihood='regression'"):
        gauss = ms.MoESpec(likelihood="gaussian")
        G = ms.MixingMeasure([0.0], [[0.0]], [[0.0, 1.0]], [1.0])
        lse_fit(gauss, X, y, 1, [("s", G)])
    with pytest.raises(ValueError, match="has 1 atoms, but k=2"):
        lse_fit(TANH, X, y, 2, [("s", G_TANH.subset([0]))])


def test_em_method_builds_gaussian_starts(paper_a):
    spec, G = paper_a
    X, y = ms.sample(spec, G, 2000, rng=7, design="equispaced", bounds=(0.0, 1.0))
    result = fit(spec, X, y, 2, method="em", rng=7, G_true=G)
    assert result.method == "em" and result.measure.var is not None
    assert result.truth_objective == pytest.approx(np.sum(ms.log_density(spec, G, X, y)))
    assert not result.worse_than_truth


def test_closest_measure_is_the_truth_when_k_equals_k_star():
    gbar = closest_measure(TANH, G_TANH, 2, n=2000, bounds=BOX, n_starts=1, rng=0)
    assert not gbar.degenerate and gbar.excess_risk < 1e-12
    assert ms.voronoi_loss(TANH, gbar.measure, G_TANH, kind="D3") < 1e-4
    assert closest_measure(TANH, G_TANH, 2, n=2000, bounds=BOX, n_starts=1, rng=0) is gbar  # cached


def test_closest_measure_flags_an_atom_on_the_boundary():
    G = ms.MixingMeasure(bias=[0.5, -0.5], gate=[[3.0], [-2.0]], expert=[[0.5, 3.0], [-0.5, -2.0]])
    with pytest.warns(DegenerateGBarWarning, match="atom \\d: (weight|expert size) .* at (weight_min|expert_min)="):
        gbar = closest_measure(TANH, G, 3, n=2000, n_starts=1, rng=0)
    assert gbar.degenerate and gbar.measure.k == 3
    assert gbar.excess_risk < 1e-3 * np.var(ms.regression_function(TANH, G, np.linspace(-1, 1, 100)))


def test_closest_measure_bad_arguments():
    with pytest.raises(ValueError, match="sigmoid-gated regression"):
        closest_measure(ms.MoESpec(gate="softmax", expert="tanh"), G_TANH, 2)
    with pytest.raises(ValueError, match="rng must be an int seed"):
        closest_measure(TANH, G_TANH, 2, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="weight_min"):
        closest_measure(TANH, G_TANH, 2, weight_min=0.0)


# Parameter spaces without null atoms (THEORY.md s1): weights >= 0.05 (the bias floor), sizes >= expert_min
SCALED = ms.MoESpec(gate="sigmoid", expert="scaled_tanh")
WEIGHT_FLOOR = {"bias": [-2.944, 20.0], "gate": [-20.0, 20.0], "expert": [-20.0, 20.0]}
# the former sigmoid_vs_softmax.toml's regime-2 truth (k* = 2)
G_R2 = ms.MixingMeasure(bias=[0.0, 0.0], gate=[[3.0], [-3.0]], expert=[[1.0, 4.0], [-1.0, -3.0]])


@pytest.mark.parametrize("bad", [-0.1, np.inf, "0.1", True])
def test_expert_min_is_checked_when_the_estimator_is_built(bad):
    with pytest.raises(ValueError, match=f"LeastSquares.expert_min = {bad!r} is not allowed"):
        LeastSquares(expert_min=bad)


def test_expert_min_needs_room_in_the_expert_bounds():
    with pytest.raises(ValueError, match="expert_min = 1.0 is not allowed with expert bounds \\[-0.5, 0.5\\]"):
        LeastSquares(expert_min=1.0, bounds={"expert": (-0.5, 0.5)})
    LeastSquares(expert_min=1.0, bounds={"expert": (0.0, 5.0)})  # positive sizes only: allowed


def test_the_size_coordinate_is_the_scale_of_a_scaled_expert_and_the_largest_slope_of_an_affine_one():
    assert SCALED.expert_family.size_index(np.array([[0.2, 5.0], [-3.0, 1.0]])).tolist() == [0, 0]
    affine = ms.MoESpec(expert="tanh", d=2).expert_family
    assert affine.size_index(np.array([[9.0, 0.5, -2.0], [0.1, 3.0, 1.0]])).tolist() == [2, 1]  # never b


def test_the_floor_holds_the_inner_weight_of_a_scaled_expert_whose_activation_vanishes_at_zero():
    expert = np.array([[0.2, -5.0, 1.0], [-3.0, 0.5, 2.0]])  # [eta_2, eta_1 (d = 2)] per atom
    for name in ("scaled_gelu", "scaled_tanh", "scaled_relu"):
        assert ms.MoESpec(expert=name, d=2).expert_family.floor_index(expert).tolist() == [[0, 1], [0, 2]], name
    # eta_2 sigmoid(0 . x) = eta_2 / 2 is a constant expert, not a null one: only the scale is held
    assert ms.MoESpec(expert="scaled_sigmoid", d=2).expert_family.floor_index(expert).tolist() == [[0], [0]]


def test_null_free_box_bounds_each_scale_and_inner_weight_away_from_zero_with_the_start_sign():
    G = ms.MixingMeasure(bias=[0.0, 0.0], gate=[[1.0], [1.0]], expert=[[0.01, 5.0], [-0.02, -0.001]])
    low, high = null_free_box(SCALED, G, None, 0.1)
    scales, inner = [4, 6], [5, 7]  # to_vector layout: 2 biases, 2 gates, then [eta_2, eta_1] per atom
    np.testing.assert_array_equal(low[scales], [0.1, -np.inf])
    np.testing.assert_array_equal(high[scales], [np.inf, -0.1])
    np.testing.assert_array_equal(low[inner], [0.1, -np.inf])
    np.testing.assert_array_equal(high[inner], [np.inf, -0.1])
    positive_only = (np.full(8, -np.inf), np.full(8, np.inf))
    positive_only[0][scales] = 0.0
    low, _ = null_free_box(SCALED, G, positive_only, 0.1)
    np.testing.assert_array_equal(low[scales], [0.1, 0.1])  # a sign with no room in the box takes the other


def test_fits_with_expert_min_keep_every_scale_and_certify_fits_on_the_bound():
    G = ms.MixingMeasure(bias=[0.5, -0.5], gate=[[2.0], [-2.0]], expert=[[1.0, 2.0], [-0.3, -3.0]])
    X, y = ms.sample(SCALED, G, 500, rng=1, noise_sd=0.1)
    searched = fit(SCALED, X, y, 2, init={"kmeans": 2, "random": 2, "split": 2}, rng=0, bounds=WEIGHT_FLOOR,
                   expert_min=0.5)
    assert searched.certified
    ends = [start.measure for start in searched.starts if start.measure is not None]
    assert len(ends) == len(searched.starts) and all(np.all(np.abs(end.expert[:, 0]) >= 0.5) for end in ends)
    # the unconstrained fit from the truth ends at scales 0.94 and -4.6: a floor of 1.5 holds both on the bound,
    # and the projected gradient still certifies the fit there
    held = LeastSquares(bounds=WEIGHT_FLOOR, expert_min=1.5).fit_starts(SCALED, X, y, 2, [("truth", G)])
    np.testing.assert_allclose(np.abs(held.measure.expert[:, 0]), 1.5)
    assert held.converged and held.stop == "gradient"


def test_a_regime_2_fit_that_ends_with_a_null_atom_has_none_with_expert_min():
    """tanh(a x + b) experts, sigmoid regime 2, k = 3 > k* = 2, from G* plus a null atom (expert 1e-3). With
    |a| >= expert_min an expert reaches at least tanh(expert_min max|x|) in magnitude on the design (at x = +-max|x|,
    a x + b = b +- |a| max|x|): that is the line between null and not."""
    spec = ms.MoESpec(gate="sigmoid", expert="tanh")
    X, y = ms.sample(spec, G_R2, 1000, rng=0, noise_sd=0.001)
    start = ms.MixingMeasure(bias=[0.0, 0.0, 0.0], gate=[[3.0], [-3.0], [1.0]],
                             expert=[[1.0, 4.0], [-1.0, -3.0], [1e-3, 1e-3]])
    floor = np.tanh(0.1 * np.max(np.abs(X)))

    def smallest_expert(expert_min):
        estimator = LeastSquares(bounds=WEIGHT_FLOOR, expert_min=expert_min)
        G = estimator.fit_starts(spec, X, y, 3, [("null", start)]).measure
        return np.min(np.max(np.abs(forward(spec, G, Features.of(spec, X)).h), axis=1))

    assert smallest_expert(0.0) < floor / 5, "the unconstrained fit keeps the null atom"
    assert smallest_expert(0.1) >= floor * (1 - 1e-9)


def test_g_bar_of_scaled_gelu_experts_has_no_atom_null_through_its_inner_weight():
    """Comparison (a)'s GELU truth (sigmoid regime 2, k* = 2, k = 3). With only |eta_2| >= expert_min, this
    G_bar was G* plus the atom eta_2 = 0.1, eta_1 = 0 (max |g h| = 8e-15 on the design): GELU(0) = 0 makes it
    null whatever eta_2 is. The floor on the inner weight excludes it."""
    spec = ms.MoESpec(gate="sigmoid", expert="scaled_gelu")
    truth = ms.MixingMeasure(bias=[0.5, -0.5], gate=[[3.0], [-2.0]], expert=[[2.0, 3.0], [-1.0, 2.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateGBarWarning)  # an atom on the boundary is allowed, not a null one
        gbar = closest_measure(spec, truth, 3, n=1000, n_starts=1, rng=1, weight_min=0.05, expert_min=0.1)
    assert not [issue for issue in gbar.issues if "null" in issue]
    assert np.all(np.abs(gbar.measure.expert) >= 0.1 * (1 - 1e-9))


def test_g_bar_in_a_space_without_null_atoms_has_more_than_k_star_non_null_atoms():
    """Issue 11's done-when: sigmoid regime 2 (k* = 2, k = 3), scaled tanh experts, whose size is the scale eta_2.
    An atom counts as non-null when its mean |g_i h_i| on the design exceeds 1% of sd(f_G*)."""
    gbar = closest_measure(SCALED, G_R2, 3, n=2000, n_starts=1, rng=0, weight_min=0.05, expert_min=0.1)
    G = gbar.measure
    assert G.k == 3 and np.all(SCALED.weights(G.bias) >= 0.05 * (1 - 1e-9))
    assert np.all(np.abs(G.expert[:, 0]) >= 0.1 * (1 - 1e-9))
    X = np.linspace(-1, 1, 2001)[:, None]
    fw = forward(SCALED, G, Features.of(SCALED, X))
    contribution = np.mean(np.abs(fw.g * fw.h), axis=1)
    assert np.sum(contribution > 0.01 * np.std(ms.regression_function(SCALED, G_R2, X))) > G_R2.k
    # experts linear in eta_2 are not misspecified: this G_bar reproduces f_G* (excess risk 0 up to the solver)
    assert gbar.excess_risk < 1e-10 * np.var(ms.regression_function(SCALED, G_R2, X))


def test_initial_measures_shared_with_fit():
    X, y = ms.sample(TANH, G_TANH, 200, rng=8)
    starts = initial_measures(TANH, X, y, 2, "random", 2, rng=8)
    result = lse_fit(TANH, X, y, 2, starts)
    assert len(result.starts) == 2


@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
@pytest.mark.parametrize("score", ["linear", "quadratic", "partial_quadratic"])
@pytest.mark.parametrize("expert", sorted(ms.EXPERTS))
def test_every_family_of_the_zoo_fits(gate, score, expert):
    d = 1 if expert == "polynomial" else 2
    spec = ms.MoESpec(gate=gate, score=score, expert=expert, d=d)
    rng = np.random.default_rng(9)
    G = ms.MixingMeasure(bias=rng.normal(size=2), gate=rng.normal(size=(2, spec.q)),
                         expert=rng.normal(size=(2, spec.p)))
    X, y = ms.sample(spec, G, 300, rng=9, noise_sd=0.1)
    result = fit(spec, X, y, 2, n_starts=1, rng=9, G_true=G)
    assert result.measure.k == 2 and np.isfinite(result.objective)
    assert result.objective <= min(s.objective for s in result.starts) + 1e-12
    assert not result.worse_than_truth


def test_low_noise_fit_reaches_the_truths_objective():
    """At sigma = 2e-4 the scaled objective is ~1e-7: the run must continue past scipy's absolute test."""
    spec = ms.MoESpec(gate="softmax", expert="sigmoid")
    G = ms.MixingMeasure(bias=[-2.0, 0.0], gate=[[4.0], [0.0]], expert=[[-6.0, 12.0], [4.0, -10.0]])
    X, y = ms.sample(spec, G, 5000, rng=3, noise_sd=2e-4, bounds=(0.0, 1.0))
    result = fit(spec, X, y, 3, rng=3, G_true=G)
    assert result.converged and not result.worse_than_truth


def test_paper_b_truth_has_a_distant_three_atom_representation():
    """Finding of the softmax_lse_experts sweep: with a linear-score softmax gate in d = 1 the gates are
    sigmoids, like the experts, so an over-specified fit can swap their roles. From the swapped measure the
    sweep's fits reached, a noise-free refit matches f* to RSS / n < 1e-10 while every parameter stays far
    from the truth."""
    spec = ms.MoESpec(gate="softmax", expert="sigmoid")
    G = ms.MixingMeasure(bias=[-2.0, 0.0], gate=[[4.0], [0.0]], expert=[[-6.0, 12.0], [4.0, -10.0]])
    swapped = ms.MixingMeasure(bias=[-5.93, 0.02, 3.92], gate=[[11.0], [-0.34], [-10.7]],
                               expert=[[-2.0, 4.0], [-2.0, 2.0], [2.0, -4.0]])
    X = ms.draw_design("uniform", 20000, 1, rng=1, bounds=(0.0, 1.0))
    y = ms.regression_function(spec, G, X)
    result = lse_fit(spec, X, y, 3, [("swapped", swapped)], screen=None)
    assert result.objective / len(y) < 1e-10
    assert ms.voronoi_loss(spec, result.measure, G, kind="D1") > 1.0


def test_an_estimator_object_or_options_not_both():
    X, y = ms.sample(TANH, G_TANH, 50, rng=0)
    with pytest.raises(ValueError, match="give either estimator="):
        fit(TANH, X, y, 2, estimator=LeastSquares(), tol=1e-3)
    with pytest.raises(ValueError, match="give either estimator="):
        fit(TANH, X, y, 2, method="em", estimator=LeastSquares())


def test_the_same_fit_repeated_in_one_process_is_bit_identical():
    """A rerun must reproduce every row: the over-specified softmax fit on which MINPACK's Levenberg-Marquardt
    polish diverged from one call to the next (`benchmarks/determinism.py`) gives the same bits each time."""
    spec = ms.MoESpec(gate="softmax", score="partial_quadratic", expert="tanh")
    G = ms.MixingMeasure(bias=[0.0, 0.0], gate=[[4.0], [0.0]], expert=[[0.5, 2.0], [-0.5, -1.5]])
    X, y = ms.sample(spec, G, 300, rng=0, noise_sd=0.001, bounds=(-1.5, 1.5))
    fits = [fit(spec, X, y, 3, rng=1, G_true=G, n_starts=2) for _ in range(3)]
    first = fits[0]
    for again in fits[1:]:
        assert again.objective == first.objective
        assert np.array_equal(again.measure.to_vector(), first.measure.to_vector())
        assert [(s.objective, s.n_iter) for s in again.starts] == [(s.objective, s.n_iter) for s in first.starts]
