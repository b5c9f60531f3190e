"""EM for the softmax Gaussian MoE: monotone, recovers paper a's truth, agrees with direct maximisation."""

import numpy as np
import pytest
from scipy.optimize import minimize

import moe_sim as ms
from moe_sim.fit import EM
from moe_sim.fit.em import _Design, _run
from tests.conftest import random_measure


def em_fit(spec, X, y, k, starts, trace=False, **options):
    """EM from the given starts (no further draws); with trace=True, res.trace lists each start's EM trace."""
    res = EM(**options).fit_starts(spec, X, y, k, starts, trace=trace)
    if trace:
        res.trace = [s.trace for s in res.starts]
    return res


def _data(spec, G, n, seed):
    """Paper a's design: X = linspace(0, 1, n)."""
    return ms.sample(spec, G, n, rng=seed, design="equispaced", bounds=(0.0, 1.0))


def _perturbed(G, rng, gate_sd, expert_sd, k=None):
    """G's atoms (cycled up to k) with Gaussian noise on gates and experts, variances scaled by 1.5."""
    rng = np.random.default_rng(rng)
    idx = np.arange(k or G.k) % G.k
    G = G.subset(idx)
    return ms.MixingMeasure(
        G.bias + gate_sd * rng.standard_normal(G.k),
        G.gate + gate_sd * rng.standard_normal(G.gate.shape),
        G.expert + expert_sd * rng.standard_normal(G.expert.shape),
        1.5 * G.var,
    )


def _assert_monotone(trace):
    steps = np.diff(trace)
    np.testing.assert_array_less(-1e-10 * np.abs(trace[:-1]), steps)


@pytest.mark.parametrize("k, seed", [(2, 0), (3, 1), (4, 2)])
def test_log_likelihood_never_decreases(paper_a, k, seed):
    spec, G = paper_a
    X, y = _data(spec, G, 2000, seed)
    starts = [("far", _perturbed(G, seed, 3.0, 3.0, k)), ("near", _perturbed(G, seed + 10, 0.1, 0.1, k))]
    res = em_fit(spec, X, y, k, starts, tol=1e-10, max_iter=300, polish=False, trace=True)
    assert len(res.trace) == 2 and len(res.starts) == 2
    for trace, start in zip(res.trace, res.starts):
        assert len(trace) == start.n_iter + 1
        assert trace[-1] - trace[0] > 0  # the test can fail: EM moved
        _assert_monotone(trace)
        assert start.objective == trace[-1]
    assert res.objective == max(s.objective for s in res.starts)
    np.testing.assert_allclose(res.objective, ms.log_density(spec, res.measure, X, y).sum(), rtol=1e-12)
    np.testing.assert_allclose(res.measure.bias[-1], 0.0)
    np.testing.assert_allclose(res.measure.gate[-1], 0.0)


@pytest.mark.parametrize("score", ["linear", "quadratic", "partial_quadratic"])
def test_monotone_in_two_dimensions(score):
    """d = 2, k = 3: several gate and expert parameters per atom; the truth is a random measure."""
    spec = ms.MoESpec(gate="softmax", score=score, expert="linear", d=2, likelihood="gaussian")
    G = random_measure(spec, 3, 16)
    X, y = ms.sample(spec, G, 3000, rng=17)
    res = em_fit(spec, X, y, 3, [("random", random_measure(spec, 3, 18))], tol=1e-9, max_iter=300, polish=False,
                 trace=True)
    assert res.trace[0][-1] - res.trace[0][0] > 0
    _assert_monotone(res.trace[0])
    np.testing.assert_allclose(res.objective, ms.log_density(spec, res.measure, X, y).sum(), rtol=1e-12)


def test_recovers_paper_a_truth(paper_a):
    spec, G = paper_a
    n = 100_000
    X, y = _data(spec, G, n, 3)
    res = em_fit(spec, X, y, 2, [("near_truth", _perturbed(G, 4, 0.5, 0.5))])
    assert res.converged and res.reason == "" and res.method == "em"
    assert 0 < res.n_iter < 2000
    assert ms.voronoi_loss(spec, res.measure, G) < 0.05
    # the MLE beats the truth on its own sample; the chunked log-likelihood is the model's
    assert res.objective >= ms.log_density(spec, G, X, y).sum()
    np.testing.assert_allclose(res.objective, ms.log_density(spec, res.measure, X, y).sum(), rtol=1e-12)


def _asymptotic_loss_quantile(spec, G, n, q, draws=2000, seed=0):
    """The q-quantile of the Voronoi loss of an efficient estimate at sample size n: parameters drawn from
    N(G, I^-1 / n), I the Fisher information of the softmax Gaussian MoE (last atom's gate pinned, the
    translation invariance), estimated from the per-sample scores on 2e5 samples."""
    X, y = _data(spec, G, 200_000, seed + 1)
    score = ms.log_density_gradient(spec, G, X, y)
    k, q_gate, p = G.k, spec.q, spec.p
    rows = np.vstack([score["bias"][:-1], score["gate"][:-1].reshape(-1, len(y)),
                      score["expert"].reshape(-1, len(y)), score["var"]])
    cov = np.linalg.inv(rows @ rows.T / len(y)) / n
    free = np.r_[np.arange(k - 1), k + np.arange((k - 1) * q_gate), k * (1 + q_gate) + np.arange(k * p + k)]
    theta = G.to_vector()
    losses = []
    for step in np.random.default_rng(seed).multivariate_normal(np.zeros(free.size), cov, size=draws):
        drawn = theta.copy()
        drawn[free] += step
        losses.append(ms.voronoi_loss(spec, ms.MixingMeasure.from_vector(drawn, k, q_gate, p, True), G))
    return float(np.quantile(losses, q))


@pytest.mark.slow  # n = 1e5, three seeds of the full search and a 2e5-sample Fisher information: ~2 min
def test_truth_free_starts_recover_paper_a_at_1e5(paper_a):
    """From k-means and random starts alone, on seeds 0, 1, 2: the maximum likelihood fit (the optimum of a
    start at the truth) and a loss inside the asymptotic 99.9% range at n = 1e5 (about 0.07; the issue's
    0.05 is exceeded by a few percent of efficient estimates: benchmarks/README.md)."""
    spec, G = paper_a
    n = 100_000
    bound = _asymptotic_loss_quantile(spec, G, n, 0.999)
    for seed in range(3):
        X, y = _data(spec, G, n, seed)
        res = ms.fit(spec, X, y, 2, method="em", init=("kmeans", "random"), rng=seed, G_true=G)
        at_truth = em_fit(spec, X, y, 2, [("truth", G)])
        assert res.converged and not res.worse_than_truth
        assert res.objective >= at_truth.objective - 1e-8 * abs(at_truth.objective)
        assert ms.voronoi_loss(spec, res.measure, G) < bound


def test_chunking_does_not_change_the_path(paper_a):
    spec, G = paper_a
    X, y = _data(spec, G, 1000, 14)
    G0 = _perturbed(G, 15, 1.0, 1.0, 3)
    whole = _run(_Design.of(spec, X, y), G0, 1e-8, 100, 1e-6, False)
    chunked = _run(_Design.of(spec, X, y, chunk=128), G0, 1e-8, 100, 1e-6, False)
    np.testing.assert_allclose(chunked.trace, whole.trace, rtol=1e-12)
    np.testing.assert_allclose(chunked.measure.to_vector(), whole.measure.to_vector(), rtol=1e-8, atol=1e-10)


def test_recovery_improves_with_n(paper_a):
    """Exactly specified: the loss shrinks roughly like n^-1/2 (median of 9 replicates at each n)."""
    spec, G = paper_a
    medians = []
    for n in (1_000, 10_000):
        losses = []
        for rep in range(9):
            X, y = _data(spec, G, n, 100 * rep + n)
            res = em_fit(spec, X, y, 2, [("near_truth", _perturbed(G, rep, 0.3, 0.3))])
            losses.append(ms.voronoi_loss(spec, res.measure, G))
        medians.append(np.median(losses))
    ratio = medians[1] / medians[0]  # n^-1/2 gives 0.32
    assert 0.1 < ratio < 0.7, medians


def test_translation_of_start_does_not_matter(paper_a):
    spec, G = paper_a
    X, y = _data(spec, G, 1000, 5)
    G0 = _perturbed(G, 6, 0.3, 0.3)
    a = em_fit(spec, X, y, 2, [("a", G0)], tol=1e-9)
    b = em_fit(spec, X, y, 2, [("b", G0.translate(2.5, np.array([-4.0])))], tol=1e-9)
    assert a.n_iter == b.n_iter
    np.testing.assert_allclose(a.measure.to_vector(), b.measure.to_vector(), rtol=1e-7, atol=1e-7)


def test_expert_with_zero_responsibility_is_kept(paper_a):
    spec, G = paper_a
    X, y = _data(spec, G, 2000, 7)
    dead = ms.MixingMeasure(
        np.r_[G.bias, -1e3], np.r_[G.gate, [[0.0]]], np.r_[G.expert, [[1e4, 0.0]]], np.r_[G.var, 0.5]
    )
    res = em_fit(spec, X, y, 3, [("dead", dead)], max_iter=50, trace=True)
    assert np.all(np.isfinite(res.measure.to_vector()))
    np.testing.assert_allclose(res.measure.expert[2], dead.expert[2])
    np.testing.assert_allclose(res.measure.var[2], dead.var[2])
    _assert_monotone(res.trace[0])
    # the live atoms still fit the data
    assert ms.voronoi_loss(spec, res.measure.subset([0, 1]), G) < 0.5


def test_max_iter_and_non_finite_are_reported_not_raised(paper_a):
    spec, G = paper_a
    X, y = _data(spec, G, 500, 8)
    far = _perturbed(G, 9, 3.0, 3.0)
    res = em_fit(spec, X, y, 2, [("far", far)], max_iter=3, polish=False)
    assert (res.converged, res.reason, res.n_iter, res.stop) == (False, "iteration cap", 3, "max_iter")
    res = em_fit(spec, X, np.full_like(y, 1e200), 2, [("far", far)])
    assert not res.converged and "non-finite" in res.reason
    assert res.measure is None and np.isnan(res.objective)


def test_polynomial_experts_fit(paper_a):
    _, G = paper_a
    spec = ms.MoESpec(gate="softmax", expert="polynomial", degree=2, d=1, likelihood="gaussian")
    G = ms.MixingMeasure(G.bias, G.gate, np.c_[G.expert, [4.0, -6.0]], G.var)
    X, y = _data(spec, G, 20_000, 10)
    res = em_fit(spec, X, y, 2, [("near", _perturbed(G, 11, 0.3, 0.3))], trace=True)
    assert res.converged
    _assert_monotone(res.trace[0])
    np.testing.assert_allclose(res.measure.expert, G.expert, atol=0.5)
    np.testing.assert_allclose(res.measure.var, G.var, rtol=0.1)


def _bad_calls(paper_a):
    spec, G = paper_a
    X, y = _data(spec, G, 50, 0)
    ok = [("truth", G)]
    no_var = ms.MixingMeasure(G.bias, G.gate, G.expert)
    regression = ms.MoESpec(gate="softmax", expert="linear", d=1)
    tanh = ms.MoESpec(gate="softmax", expert="tanh", d=1, likelihood="gaussian")
    return {
        "likelihood": lambda: em_fit(regression, X, y, 2, ok),
        "expert": lambda: em_fit(tanh, X, y, 2, ok),
        "k": lambda: em_fit(spec, X, y, 3, ok),
        "k0": lambda: em_fit(spec, X, y, 0, ok),
        "empty starts": lambda: em_fit(spec, X, y, 2, []),
        "not a pair": lambda: em_fit(spec, X, y, 2, [G]),
        "name": lambda: em_fit(spec, X, y, 2, [(0, G)]),
        "var": lambda: em_fit(spec, X, y, 2, [("no var", no_var)]),
        "X shape": lambda: em_fit(spec, np.c_[X, X], y, 2, ok),
        "y nan": lambda: em_fit(spec, X, np.r_[y[:-1], np.nan], 2, ok),
        "tol": lambda: em_fit(spec, X, y, 2, ok, tol=-1.0),
        "tol type": lambda: em_fit(spec, X, y, 2, ok, tol="1e-6"),
        "max_iter": lambda: em_fit(spec, X, y, 2, ok, max_iter=1.5),
        "max_iter 0": lambda: em_fit(spec, X, y, 2, ok, max_iter=0),
        "polish": lambda: em_fit(spec, X, y, 2, ok, polish="yes"),
        "var_floor": lambda: em_fit(spec, X, y, 2, ok, var_floor=0.0),
    }


@pytest.mark.parametrize(
    "case", ["likelihood", "expert", "k", "k0", "empty starts", "not a pair", "name", "var", "X shape", "y nan", "tol",
             "tol type", "max_iter", "max_iter 0", "polish", "var_floor"]
)
def test_bad_inputs_raise(paper_a, case):
    with pytest.raises(ValueError):
        _bad_calls(paper_a)[case]()


def _direct_mle(spec, X, y, G0):
    """Maximise sum log p_G(y | x) with L-BFGS-B over (bias, gate, expert, log var), analytic gradient."""
    k, q, p = G0.k, spec.q, spec.p

    def unpack(theta):
        bias, gate, expert, log_var = np.split(theta, np.cumsum([k, k * q, k * p]))
        return ms.MixingMeasure(bias, gate.reshape(k, q), expert.reshape(k, p), np.exp(log_var))

    def neg_ll(theta):
        G = unpack(theta)
        grad = ms.log_density_gradient(spec, G, X, y)
        g = np.concatenate([grad[b].sum(axis=-1).ravel() for b in ("bias", "gate", "expert")]
                           + [grad["var"].sum(axis=-1) * G.var])
        return -ms.log_density(spec, G, X, y).sum(), -g

    theta0 = np.concatenate([G0.bias, G0.gate.ravel(), G0.expert.ravel(), np.log(G0.var)])
    out = minimize(neg_ll, theta0, jac=True, method="L-BFGS-B",
                   options={"maxiter": 20_000, "ftol": 1e-15, "gtol": 1e-9, "maxcor": 30})
    return unpack(out.x), -out.fun


def test_em_agrees_with_direct_maximisation(paper_a):
    spec, G = paper_a
    n = 3000
    X, y = _data(spec, G, n, 12)
    G0 = _perturbed(G, 13, 0.3, 0.3)
    res = em_fit(spec, X, y, 2, [("near", G0)], tol=1e-13, max_iter=5000)
    G_direct, ll_direct = _direct_mle(spec, X, y, G0)
    assert res.objective >= ll_direct - 1e-6 * abs(ll_direct)
    # statistical error of an expert's coefficients: sqrt(var / n_i) with n_i ~ n / 2 samples per expert
    se = np.sqrt(G.var / (n / 2))[:, None]
    np.testing.assert_array_less(np.abs(res.measure.expert - G_direct.expert), np.broadcast_to(0.01 * se, (2, 2)))
    assert np.all(np.abs(res.measure.expert - G.expert) < 10 * se * np.array([[1.0, 4.0]]))


def test_em_and_least_squares_agree_on_the_experts(paper_a):
    """E[y | x] of a Gaussian MoE is its regression function, so least squares (ignoring the variances) and EM
    estimate the same experts: they agree within least squares' standard errors on one sample."""
    spec, G = paper_a
    n = 20000
    X, y = ms.sample(spec, G, n, rng=21, design="equispaced", bounds=(0.0, 1.0))
    em = ms.fit(spec, X, y, 2, method="em", rng=21, G_true=G)
    regression = ms.MoESpec(gate="softmax", expert="linear")
    G_mean = ms.MixingMeasure(G.bias, G.gate, G.expert)
    lse = ms.fit(regression, X, y, 2, rng=21, G_true=G_mean)
    # least squares' asymptotic sd, with the larger expert noise sd (0.4) standing in for the mixture's
    sd = ms.asymptotic_sd(regression, G_mean, n=n, noise_sd=0.4, design="equispaced", bounds=(0.0, 1.0))
    expert_sd = sd[sd.block == "expert"].sd.to_numpy().reshape(2, 2)
    em_experts = em.measure.expert[np.argsort(em.measure.gate[:, 0])[::-1]]
    lse_experts = lse.measure.expert[np.argsort(lse.measure.gate[:, 0])[::-1]]
    np.testing.assert_array_less(np.abs(em_experts - lse_experts), 4 * expert_sd)
