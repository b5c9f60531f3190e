"""EM's n-sized work on the array backends: one implementation, the same fits from the same starts on each."""

import numpy as np
import pytest

import moe_sim as ms
from moe_sim.config import load_config
from moe_sim.fit import EM, Search, em, make_estimator
from moe_sim.fit.init import initial_measures
from tests.test_certificate import _em_gradient
from tests.test_em import _direct_mle

SPEC = ms.MoESpec(gate="softmax", expert="linear", likelihood="gaussian")
G2 = ms.MixingMeasure(bias=[-8.0, 0.0], gate=[[25.0], [0.0]], expert=[[15.0, -20.0], [-5.0, 20.0]],
                      var=[0.09, 0.16])  # paper a's truth (THEORY.md s4)
G3 = ms.MixingMeasure(bias=[-4.0, 4.0, 0.0], gate=[[12.0], [-12.0], [0.0]],
                      expert=[[2.0, -3.0], [-2.0, 3.0], [0.0, 1.0]], var=[0.09, 0.16, 0.04])
SOLVE = {"tol": 1e-7, "max_iter": 2000, "var_floor": 1e-6, "polish": True}


def _data(G, n, k, seed=0):
    X, y = ms.sample(SPEC, G, n, rng=seed, design="equispaced", bounds=(0.0, 1.0))
    return X, y, initial_measures(SPEC, X, y, k, {"kmeans": 2, "random": 2}, rng=seed + 1, method="em")


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _assert_same_fits(on_numpy, on_other, X, y):
    """Certified on both sides from the same starts: log-likelihoods within 1e-9 relative, and end points
    within 1e-3 standard errors: sqrt(sum_t (l_a(t) - l_b(t))^2), the per-sample log-densities' difference,
    is the distance of the two parameters in the Fisher metric of the sample (a coordinate-free measure that
    also holds on flat directions)."""
    both = [(a, b) for a, b in zip(on_numpy, on_other) if a.converged and b.converged]
    assert len(both) >= 3
    for a, b in both:
        assert abs(a.objective - b.objective) <= 1e-9 * abs(a.objective)
        diff = ms.log_density(SPEC, a.measure, X, y) - ms.log_density(SPEC, b.measure, X, y)
        assert np.sqrt(diff @ diff) <= 1e-3


@pytest.mark.parametrize("n", [1_000, 10_000])
@pytest.mark.parametrize("G", [G2, G3], ids=["k2", "k3"])
def test_numpy_and_torch_give_the_same_certified_fits(G, n):
    pytest.importorskip("torch")
    X, y, starts = _data(G, n, G.k)
    on_numpy = em.solve(SPEC, X, y, G.k, starts, **SOLVE)
    on_torch = em.solve(SPEC, X, y, G.k, starts, **SOLVE, backend="torch")
    _assert_same_fits(on_numpy, on_torch, X, y)


@pytest.mark.parametrize("n", [1_000, 10_000])
@pytest.mark.parametrize("k", [2, 3])
def test_the_em_iterations_agree_to_rounding(n, k):
    """The part that runs on the backend, EM's iterations (no polish, a fixed count), gives the same
    log-likelihoods and parameters to 1e-9 relative, over-specified (k = 3 on paper a's two atoms) included;
    the polish, host NumPy on the same statistics, may end at different points of a certified region."""
    pytest.importorskip("torch")
    X, y, starts = _data(G2, n, k)
    options = {"tol": 0.0, "max_iter": 100, "var_floor": 1e-6, "polish": False, "trace": True}
    on_numpy = em.solve(SPEC, X, y, k, starts, **options)
    on_torch = em.solve(SPEC, X, y, k, starts, **options, backend="torch")
    for a, b in zip(on_numpy, on_torch):
        assert a.n_iter == b.n_iter == 100
        np.testing.assert_allclose(b.trace, a.trace, rtol=1e-9)
        np.testing.assert_allclose(b.measure.to_vector(), a.measure.to_vector(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("k", [2, 3])
def test_the_certificate_holds_on_torch_fits(monkeypatch, k):
    """As tests/test_certificate.py checks the NumPy fits: the gradient of l / n recomputed from
    `ms.log_density_gradient` is within tol at every converged start, and an independent polish gains nothing.
    The estimator's backend option reaches `em.solve` (the E-steps ran on torch)."""
    pytest.importorskip("torch")
    used = []

    def recording(name):
        used.append(name)
        return em_get_backend(name)

    em_get_backend = em.get_backend
    monkeypatch.setattr(em, "get_backend", recording)
    X, y = ms.sample(SPEC, G2, 1000, rng=1000 + k, design="equispaced", bounds=(0.0, 1.0))
    est = EM(backend="torch", search=Search(hits=1, max_rounds=1))
    res = ms.fit(SPEC, X, y, k, estimator=est, rng=k)
    assert used and set(used) == {"torch"}
    assert res.converged
    for start in (s for s in res.starts if s.converged):
        assert np.max(np.abs(_em_gradient(SPEC, start.measure, X, y))) <= est.tol * (1 + 1e-6)
    gain = _direct_mle(SPEC, X, y, res.measure)[1] - res.objective
    assert gain < 1e-3, gain


def test_a_bad_backend_fails_when_built():
    with pytest.raises(ValueError, match=r"EM.backend = 'gpu' is not allowed; choose one of 'numpy', 'torch'"):
        EM(backend="gpu")
    assert make_estimator("em", {"backend": "numpy"}).backend == "numpy"


TOML = """
name = "em_backend"
n = [200, 400]
replicates = 2
design = "equispaced"
bounds = [0.0, 1.0]
[model]
gate = "softmax"
expert = "linear"
likelihood = "gaussian"
[truth]
bias = [-8.0, 0.0]
gate = [[25.0], [0.0]]
expert = [[15.0, -20.0], [-5.0, 20.0]]
var = [0.09, 0.16]
[estimator]
method = "em"
options = {{ backend = "{backend}" }}
"""


def test_a_misspelled_backend_fails_in_load_config(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(TOML.format(backend="gpu"))
    with pytest.raises(ValueError, match=r"series\[0\].estimator.options.*EM.backend = 'gpu' is not allowed"):
        load_config(path)


def test_the_backend_option_loads_from_toml(tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "good.toml"
    path.write_text(TOML.format(backend="torch"))
    (series,) = load_config(path).series
    assert make_estimator(series.method, series.options) == EM(backend="torch")


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="no CUDA device")
def test_cuda_agrees_with_numpy():
    X, y, starts = _data(G3, 20_000, 3)
    on_numpy = em.solve(SPEC, X, y, 3, starts, **SOLVE)
    on_gpu = em.solve(SPEC, X, y, 3, starts, **SOLVE, backend="cuda")
    _assert_same_fits(on_numpy, on_gpu, X, y)
