"""The torch backend against the NumPy model and estimators, on identical samples and starts."""

import subprocess
import sys

import numpy as np
import pytest
from scipy.optimize import minimize

import moe_sim as ms
from moe_sim.model import Features, forward, regression_vjp

from .conftest import random_measure

torch = pytest.importorskip("torch")
tb = pytest.importorskip("moe_sim.fit.torch_backend")


def _cell(spec, G, n, R, seed=0, **kw):
    """R replicates drawn from their own seeds, as a sweep does."""
    data = [ms.sample(spec, G, n, rng=np.random.SeedSequence(seed, spawn_key=(r,)), **kw) for r in range(R)]
    return [X for X, _ in data], [y for _, y in data]


def _near(G, rng, scale, n_starts):
    """Perturbed copies of G (variances kept)."""
    rng = np.random.default_rng(rng)
    return [
        ms.MixingMeasure(
            G.bias + scale * rng.normal(size=G.k),
            G.gate + scale * rng.normal(size=G.gate.shape),
            G.expert + scale * rng.normal(size=G.expert.shape),
            G.var,
        )
        for _ in range(n_starts)
    ]


def _assert_local_minimum(spec, X, y, G, rss):
    """The tight reference started at G cannot lower the RSS by more than 1e-6 relative: G is a local minimum
    to the reference's precision."""
    np.testing.assert_allclose(rss, _rss(spec, G, X, y), rtol=1e-10)
    _, polished = _scipy_lse(spec, X, y, G)
    assert polished >= rss * (1 - 1e-6)


def _rss(spec, G, X, y):
    return float(np.sum((y - ms.regression_function(spec, G, X)) ** 2))


def _scipy_lse(spec, X, y, G0):
    """A careful NumPy reference: L-BFGS-B on the RSS with tight tolerances, gradient from regression_vjp.

    Returns the fitted measure and its RSS."""
    k, q, p = G0.k, spec.q, spec.p
    feats = Features.of(spec, X)

    def fun(theta):
        G = ms.MixingMeasure.from_vector(theta, k, q, p)
        fw = forward(spec, G, feats)
        r = y - fw.f
        return r @ r, feats.unstack(regression_vjp(spec, feats, fw, -2.0 * r))

    res = minimize(fun, G0.to_vector()[: k * (1 + q + p)], jac=True, method="L-BFGS-B",
                   options={"ftol": 1e-15, "gtol": 1e-11, "maxiter": 20000, "maxfun": 40000, "maxcor": 30})
    return ms.MixingMeasure.from_vector(res.x, k, q, p), res.fun


MIRROR_CASES = [
    ("softmax", "linear", expert, 1)
    for expert in ("linear", "polynomial", "relu", "gelu", "sigmoid", "tanh", "constant")
] + [
    ("sigmoid", "linear", "tanh", 1),
    ("sigmoid", "quadratic", "gelu", 2),
    ("softmax", "partial_quadratic", "linear", 2),
    ("sigmoid", "partial_quadratic", "relu", 2),
]


@pytest.mark.parametrize("gate,score,expert,d", MIRROR_CASES)
def test_forward_and_jacobian_mirror_the_numpy_model(gate, score, expert, d):
    spec = ms.MoESpec(gate=gate, score=score, expert=expert, d=d, temperature=1.5)
    rng = np.random.default_rng(3)
    Gs = [random_measure(spec, 3, rng) for _ in range(2)]
    X = rng.uniform(-1, 1, size=(300, d))
    v = rng.normal(size=300)
    feats = Features.of(spec, X)
    act, dact = tb.activation(spec)

    def t(arrays):
        return torch.as_tensor(np.stack(arrays))

    phi, psi = t([feats.phi] * 2), t([feats.psi] * 2)
    _, g, u, h, f = tb._forward(spec, act, t([G.bias for G in Gs]), t([G.gate for G in Gs]),
                                t([G.expert for G in Gs]), phi, psi)
    J = tb._jacobian(spec, dact, g, u, h, f, phi, psi, 3)
    for b, G in enumerate(Gs):
        fw = forward(spec, G, feats)
        np.testing.assert_allclose(f[b].numpy(), fw.f, rtol=1e-12, atol=1e-12)
        expected = feats.unstack(regression_vjp(spec, feats, fw, v))
        np.testing.assert_allclose(J[b].numpy() @ v, expected, rtol=1e-10, atol=1e-10)


LSE_CASES = {
    "softmax-tanh": (
        ms.MoESpec(gate="softmax", expert="tanh"),
        ms.MixingMeasure(bias=[0.3, 0.0], gate=[[2.0], [-1.0]], expert=[[0.5, 2.0], [-0.5, -1.5]]),
    ),
    "sigmoid-gelu": (
        ms.MoESpec(gate="sigmoid", expert="gelu"),
        ms.MixingMeasure(bias=[0.5, -0.5], gate=[[3.0], [-2.0]], expert=[[1.0, 2.0], [-1.0, -1.5]]),
    ),
    "softmax-linear-d2": (
        ms.MoESpec(gate="softmax", expert="linear", d=2),
        ms.MixingMeasure(bias=[0.0, 0.0], gate=[[2.0, -1.0], [0.0, 0.0]], expert=[[1.0, 2.0, 0.0], [-1.0, 0.0, 1.0]]),
    ),
}


@pytest.mark.parametrize("case", sorted(LSE_CASES))
def test_lse_reaches_the_careful_reference_objective(case):
    spec, G = LSE_CASES[case]
    n, R = 600, 2
    Xs, ys = _cell(spec, G, n, R, seed=11)
    starts = [_near(G, 100 + r, 0.05, 2) for r in range(R)]
    results = tb.fit_batch(spec, Xs, ys, 2, starts, truth=G)
    same_optimum = 0
    for r, res in enumerate(results):
        assert res.converged, res.reason
        assert [s.init for s in res.starts] == ["start0", "start1"]
        np.testing.assert_allclose(res.objective, min(s.objective for s in res.starts), rtol=0)
        np.testing.assert_allclose(res.objective, _rss(spec, res.measure, Xs[r], ys[r]), rtol=1e-10)
        np.testing.assert_allclose(res.truth_objective, _rss(spec, G, Xs[r], ys[r]), rtol=1e-10)
        assert res.worse_than_truth is False
        for s, G0 in zip(res.starts, starts[r]):
            G_torch = tb.fit_batch(spec, Xs[r : r + 1], ys[r : r + 1], 2, [[G0]])[0].measure
            _assert_local_minimum(spec, Xs[r], ys[r], G_torch, s.objective)
            G_ref, ref = _scipy_lse(spec, Xs[r], ys[r], G0)
            if abs(s.objective / ref - 1) <= 1e-6:
                same_optimum += 1
                # Same optimum: at tolerances as tight as the reference's, the losses agree to the parameters'
                # resolution (flat directions make it coarser than the RSS's).
                tight = tb.fit_batch(spec, Xs[r : r + 1], ys[r : r + 1], 2, [[G0]], tol=1e-15)[0].measure
                np.testing.assert_allclose(ms.voronoi_loss(spec, tight, G), ms.voronoi_loss(spec, G_ref, G),
                                           rtol=1e-3)
    # Local methods from one start can end in different optima; near the truth they mostly agree.
    assert same_optimum >= R


def test_lse_is_at_least_as_good_as_lse_fit():
    lse = pytest.importorskip("moe_sim.fit.lse")
    spec, G = LSE_CASES["softmax-tanh"]
    Xs, ys = _cell(spec, G, 500, 3, seed=5)
    starts = [[("a", s0), ("b", s1)] for s0, s1 in (_near(G, 7 + r, 0.1, 2) for r in range(3))]
    for res, X, y, st in zip(tb.fit_batch(spec, Xs, ys, 2, starts), Xs, ys, starts):
        ref = lse.lse_fit(spec, X, y, 2, st)
        assert [s.init for s in res.starts] == ["a", "b"]
        # Near the truth both reach the same optimum; the n-aware tolerances make both precise to ~1e-9.
        assert res.objective <= ref.objective * (1 + 1e-6)


def test_over_specified_lse_and_batch_independence():
    """k = 3 > k* = 2; a replicate fitted alone equals the same replicate fitted inside the batch."""
    spec, G = LSE_CASES["softmax-tanh"]
    Xs, ys = _cell(spec, G, 1000, 3, seed=2)
    rng = np.random.default_rng(4)
    starts = [_near(G.subset([0, 1, 1]), rng, 0.2, 2) for _ in range(3)]
    together = tb.fit_batch(spec, Xs, ys, 3, starts)
    alone = tb.fit_batch(spec, Xs[1:2], ys[1:2], 3, starts[1:2])[0]
    np.testing.assert_allclose(alone.objective, together[1].objective, rtol=1e-12)
    np.testing.assert_allclose(alone.measure.to_vector(), together[1].measure.to_vector(), rtol=1e-9, atol=1e-9)
    for res, X, y in zip(together, Xs, ys):
        assert res.converged, res.reason
        _assert_local_minimum(spec, X, y, res.measure, res.objective)


def test_screening_as_lse_fit():
    """n > screen: every start is fitted on a subsample drawn from the replicate's rng, the keep best polished."""
    lse = pytest.importorskip("moe_sim.fit.lse")
    spec, G = LSE_CASES["softmax-tanh"]
    Xs, ys = _cell(spec, G, 1200, 2, seed=4)
    starts = [[(f"s{j}", s) for j, s in enumerate(_near(G, 30 + r, 0.3, 4))] for r in range(2)]
    options = {"screen": 400, "keep": 2}
    results = tb.fit_batch(spec, Xs, ys, 2, starts, rngs=[5, 6], **options)
    again = tb.fit_batch(spec, Xs, ys, 2, starts, rngs=[5, 6], **options)
    for res, same, X, y, st, seed in zip(results, again, Xs, ys, starts, [5, 6]):
        assert [s.objective for s in res.starts] == [s.objective for s in same.starts]
        out = [s for s in res.starts if s.reason == "screened out on 400 points"]
        assert len(out) == 2 and not any(s.converged for s in out)
        # Screened-out starts carry their full-sample RSS; the best is a polished one.
        assert res.objective <= min(s.objective for s in out)
        assert [s.init for s in res.starts] == ["s0", "s1", "s2", "s3"]
        ref = lse.lse_fit(spec, X, y, 2, st, rng=seed, **options)
        assert res.objective <= ref.objective * (1 + 1e-6)
        _assert_local_minimum(spec, X, y, res.measure, res.objective)


def test_softmax_lse_holds_the_last_atom_gate():
    spec, G = LSE_CASES["softmax-tanh"]
    Xs, ys = _cell(spec, G, 300, 1, seed=9)
    start = _near(G, 1, 0.3, 1)
    res = tb.fit_batch(spec, Xs, ys, 2, [start])[0]
    np.testing.assert_array_equal(res.measure.bias[-1], start[0].bias[-1])
    np.testing.assert_array_equal(res.measure.gate[-1], start[0].gate[-1])


def test_bounds_confine_the_fit():
    spec, G = LSE_CASES["sigmoid-gelu"]
    Xs, ys = _cell(spec, G, 300, 2, seed=3)
    starts = [_near(G, r, 0.3, 1) for r in range(2)]
    free = tb.fit_batch(spec, Xs, ys, 2, starts)
    boxed = tb.fit_batch(spec, Xs, ys, 2, starts, bounds=1.0)
    for f, b in zip(free, boxed):
        assert np.all(np.abs(b.measure.to_vector()) <= 1.0)
        assert b.objective >= f.objective * (1 - 1e-9)
        assert b.converged, b.reason


def test_a_failed_replicate_does_not_stop_the_batch():
    spec, G = LSE_CASES["softmax-linear-d2"]
    Xs, ys = _cell(spec, G, 200, 2, seed=1)
    bad = ms.MixingMeasure(G.bias, G.gate, np.full_like(G.expert, 1e308))  # expert values overflow
    starts = [[bad], _near(G, 0, 0.2, 1)]
    res = tb.fit_batch(spec, Xs, ys, 2, starts)
    assert res[0].measure is None and not res[0].converged and np.isnan(res[0].objective)
    assert "non-finite" in res[0].starts[0].reason
    assert res[1].converged and np.isfinite(res[1].objective)


def test_float32_is_close_to_float64():
    spec, G = LSE_CASES["softmax-tanh"]
    Xs, ys = _cell(spec, G, 500, 2, seed=8)
    starts = [_near(G, r, 0.2, 1) for r in range(2)]
    r64 = tb.fit_batch(spec, Xs, ys, 2, starts)
    r32 = tb.fit_batch(spec, Xs, ys, 2, starts, dtype="float32")
    for a, b in zip(r64, r32):
        # float32 sums of n squared residuals carry about sqrt(n) * 6e-8 relative error.
        np.testing.assert_allclose(b.objective, a.objective, rtol=1e-4)


@pytest.mark.parametrize("k", [2, 3])
def test_em_reproduces_em_fit(paper_a, k):
    em = pytest.importorskip("moe_sim.fit.em")
    spec, G = paper_a
    Xs, ys = _cell(spec, G, 1000, 3, seed=21, design="equispaced", bounds=(0.0, 1.0))
    rng = np.random.default_rng(5)
    G_k = G if k == 2 else G.subset([0, 1, 1]).translate(0.0, np.zeros(1))
    starts = [[(f"s{j}", s) for j, s in enumerate(_near(G_k, rng, 0.05, 2))] for _ in range(3)]
    results = tb.fit_batch(spec, Xs, ys, k, starts, method="em", truth=G)
    for res, X, y, st in zip(results, Xs, ys, starts):
        ref = em.em_fit(spec, X, y, k, st)
        # The same algorithm step for step: only rounding separates the two.
        np.testing.assert_allclose(res.objective, ref.objective, rtol=1e-10)
        assert res.converged == ref.converged
        assert [s.n_iter for s in res.starts] == [s.n_iter for s in ref.starts]
        np.testing.assert_allclose(res.measure.to_vector(), ref.measure.to_vector(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(res.truth_objective, np.sum(ms.log_density(spec, G, X, y)), rtol=1e-12)
        np.testing.assert_allclose(ms.voronoi_loss(spec, res.measure, G), ms.voronoi_loss(spec, ref.measure, G),
                                   rtol=1e-6)


def test_em_matches_ms_fit_on_the_same_seeds(paper_a):
    """The sweep's batched path: starts from initial_measures with each replicate's fit seed, as ms.fit does."""
    fit_mod = pytest.importorskip("moe_sim.fit")
    spec, G = paper_a
    Xs, ys = _cell(spec, G, 800, 3, seed=13, design="equispaced", bounds=(0.0, 1.0))
    seeds = [np.random.SeedSequence(13, spawn_key=(r, 1)) for r in range(3)]
    rngs = [np.random.default_rng(seed) for seed in seeds]
    starts = [fit_mod.initial_measures(spec, X, y, 2, "default", None, rng, G, method="em")
              for X, y, rng in zip(Xs, ys, rngs)]
    results = tb.fit_batch(spec, Xs, ys, 2, starts, method="em", truth=G, rngs=rngs)
    for res, X, y, seed in zip(results, Xs, ys, seeds):
        ref = ms.fit(spec, X, y, 2, method="em", rng=seed, G_true=G)
        assert [s.init for s in res.starts] == [s.init for s in ref.starts]
        np.testing.assert_allclose(res.objective, ref.objective, rtol=1e-10)
        np.testing.assert_allclose(res.truth_objective, ref.truth_objective, rtol=1e-12)
        assert res.worse_than_truth == ref.worse_than_truth


def test_em_at_the_cap_reports_not_converged(paper_a):
    spec, G = paper_a
    Xs, ys = _cell(spec, G, 300, 1, seed=2, design="equispaced", bounds=(0.0, 1.0))
    res = tb.fit_batch(spec, Xs, ys, 3, [[G.subset([0, 1, 1])]], method="em", max_iter=2, tol=0.0)[0]
    assert not res.converged and res.reason == "max_iter" and res.n_iter == 2


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"method": "newton"}, "method='newton'"),
        ({"dtype": "float16"}, "dtype='float16'"),
        ({"tol": -1.0}, "tol must be"),
        ({"max_iter": 1.5}, "max_iter must be"),
        ({"k": 3}, "has 2 atoms, but k=3"),
        ({"method": "em"}, "likelihood='gaussian'"),
        ({"rngs": [1, 2]}, "rngs has 2 entries"),
        ({"keep": 0}, "keep must be"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    spec, G = LSE_CASES["softmax-tanh"]
    Xs, ys = _cell(spec, G, 50, 1)
    args = {"k": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        tb.fit_batch(spec, Xs, ys, starts=[[G]], **args)


def test_replicates_must_share_n():
    spec, G = LSE_CASES["softmax-tanh"]
    Xa, ya = _cell(spec, G, 50, 1)
    Xb, yb = _cell(spec, G, 60, 1)
    with pytest.raises(ValueError, match="same n"):
        tb.fit_batch(spec, Xa + Xb, ya + yb, 2, [[G], [G]])


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["lse", "em"])
def test_cuda_matches_cpu(method, paper_a):
    spec, G = paper_a if method == "em" else LSE_CASES["softmax-tanh"]
    kw = {"design": "equispaced", "bounds": (0.0, 1.0)} if method == "em" else {}
    Xs, ys = _cell(spec, G, 2000, 4, seed=6, **kw)
    starts = [_near(G, r, 0.05, 2) for r in range(4)]
    cpu = tb.fit_batch(spec, Xs, ys, 2, starts, method=method, device="cpu")
    gpu = tb.fit_batch(spec, Xs, ys, 2, starts, method=method, device="cuda")
    for a, b in zip(cpu, gpu):
        # Different kernels round differently; LM stops within about its tolerance (1e-6 / n) of the optimum.
        np.testing.assert_allclose(b.objective, a.objective, rtol=1e-7)


def test_the_numpy_path_needs_no_torch():
    """torch stays optional: with it unimportable, moe_sim imports and fits; only the backend refuses."""
    code = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ImportError('torch is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np, moe_sim as ms\n"
        "from moe_sim.fit.lse import lse_fit\n"
        "spec = ms.MoESpec(expert='tanh')\n"
        "G = ms.MixingMeasure([0.3, 0.0], [[2.0], [-1.0]], [[0.5, 2.0], [-0.5, -1.5]])\n"
        "X, y = ms.sample(spec, G, 100, rng=0)\n"
        "assert np.isfinite(lse_fit(spec, X, y, 2, [('t', G)]).objective)\n"
        "try:\n"
        "    import moe_sim.fit.torch_backend\n"
        "except ImportError:\n"
        "    print('refused')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "refused"


@pytest.mark.parametrize("method", ["lse", "em"])
def test_fit_entry_point_runs_the_torch_backend(method, paper_a):
    """ms.fit(backend="torch") reaches the NumPy backend's objective (1e-6 relative) or better."""
    if method == "lse":
        spec = ms.MoESpec(gate="softmax", expert="tanh")
        G = ms.MixingMeasure([0.0, 0.0], [[2.0], [0.0]], [[1.0, -1.3], [-1.7, -0.4]])
        X, y = ms.sample(spec, G, 3000, rng=11, noise_sd=0.1, bounds=(-3, 3))
        better = 1.0  # residual sum of squares: lower is better
    else:
        spec, G = paper_a
        X, y = ms.sample(spec, G, 3000, rng=11, design="equispaced", bounds=(0, 1))
        better = -1.0  # log-likelihood: higher is better
    numpy_fit = ms.fit(spec, X, y, 2, method=method, rng=5, G_true=G)
    torch_fit = ms.fit(spec, X, y, 2, method=method, rng=5, G_true=G, backend="torch")
    assert torch_fit.converged and torch_fit.truth_objective == pytest.approx(numpy_fit.truth_objective)
    assert better * (torch_fit.objective - numpy_fit.objective) <= 1e-6 * abs(numpy_fit.objective)
    np.testing.assert_allclose(ms.voronoi_loss(spec, torch_fit.measure, G),
                               ms.voronoi_loss(spec, numpy_fit.measure, G), rtol=1e-2)
