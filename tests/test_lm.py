"""The batched Levenberg-Marquardt solver: one implementation, the same optimum on every array backend."""

import numpy as np
import pytest

import moe_sim as ms
from moe_sim.config import load_config
from moe_sim.fit import LeastSquares, lm
from moe_sim.fit.init import initial_measures
from moe_sim.fit.lse import DECREMENT_TOL, RSSObjective, _statistic, box, gauss_newton_decrement, solve

torch = pytest.importorskip("torch")

TANH = ms.MoESpec(gate="sigmoid", expert="tanh")
G_TANH = ms.MixingMeasure(bias=[1.0, -0.5], gate=[[-1.2], [-1.5]], expert=[[1.0, -1.3], [-1.7, -0.4]])
GELU = ms.MoESpec(gate="softmax", expert="scaled_gelu")
G_GELU = ms.MixingMeasure(bias=[0.0, 0.5], gate=[[1.0], [-1.5]], expert=[[1.0, 1.3], [-1.7, 2.0]])
CASES = [(TANH, G_TANH), (GELU, G_GELU)]


def _data(spec, G, n, seed=0):
    X, y = ms.sample(spec, G, n, rng=seed, noise_sd=0.1, bounds=(-3.0, 3.0))
    return X, y, initial_measures(spec, X, y, G.k, {"kmeans": 3, "random": 3}, rng=seed + 1, method="lse")


@pytest.mark.parametrize("spec, G", CASES, ids=["sigmoid-tanh", "softmax-scaled-gelu"])
def test_numpy_and_torch_reach_the_same_optimum_from_the_same_starts(spec, G):
    """In the box [-20, 20] every least-squares config fits in: unbounded, one softmax start runs away along a
    near-flat ridge (a scaled GELU expert 894 * gelu(-2.8e-5 x)), where the backends' rounding moves the end
    point by 2e-6 relative at objectives equal to 1e-13; in the box every parameter agrees to 1e-11."""
    X, y, starts = _data(spec, G, 2000)
    on_numpy = lm.solve(spec, X, y, G.k, starts, bounds=20.0, tol=1e-9, max_iter=500)
    on_torch = lm.solve(spec, X, y, G.k, starts, bounds=20.0, tol=1e-9, max_iter=500, backend="torch")
    both = [(a, b) for a, b in zip(on_numpy, on_torch) if a.converged and b.converged]
    assert len(both) >= 4
    for a, b in both:
        assert abs(a.objective - b.objective) <= 1e-9 * a.objective
        np.testing.assert_allclose(a.measure.to_vector(), b.measure.to_vector(), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("n", [1000, 100_000])
def test_the_certificate_holds_at_every_converged_fit(n):
    """Recomputed independently by the L-BFGS-B path's objective: ||P grad F|| / F <= tol or the Gauss-Newton
    decrement below its tolerance, at n = 1e3 and 1e5 alike (the criterion does not scale with n)."""
    X, y, starts = _data(TANH, G_TANH, n)
    tol = 1e-7
    records = lm.solve(TANH, X, y, 2, starts[:3], tol=tol, max_iter=500)
    obj = RSSObjective(TANH, X, y, 2)
    assert sum(r.converged for r in records) >= 2
    for r in records:
        if r.converged:
            theta = r.measure.to_vector()
            value, statistic = _statistic(obj, theta, None)
            assert value == pytest.approx(r.objective * obj.scale / 2, rel=1e-12)
            assert statistic <= tol or gauss_newton_decrement(obj, theta, None) <= DECREMENT_TOL


def test_lm_and_lbfgsb_reach_the_same_optimum_from_the_same_start():
    """Two algorithms, one objective: from a start in the basin of the truth's optimum (an exactly specified,
    well-conditioned model) they end at the same optimum, to within what their certificates leave open (a
    Gauss-Newton decrement of DECREMENT_TOL sigma^2); from far starts their paths may part."""
    X, y, _ = _data(TANH, G_TANH, 5000)
    start = [("near", ms.MixingMeasure.from_vector(G_TANH.to_vector() + 0.05, 2, 1, 2))]
    (a,) = lm.solve(TANH, X, y, 2, start, tol=1e-9, max_iter=500)
    (b,) = solve(TANH, X, y, 2, start, bounds=None, tol=1e-9, max_iter=5000, maxcor=20)
    assert a.converged and b.converged
    sigma2 = min(a.objective, b.objective) / len(y)
    assert abs(a.objective - b.objective) <= DECREMENT_TOL * sigma2
    # An RSS gap of d sigma^2 at a regular optimum is a parameter gap of about sqrt(2 d) standard errors.
    sd = ms.asymptotic_sd(TANH, G_TANH, len(y), 0.1, bounds=(-3.0, 3.0))["sd"].to_numpy()
    gap = np.abs(a.measure.to_vector() - b.measure.to_vector())
    assert np.all(gap <= 3 * np.sqrt(2 * DECREMENT_TOL) * sd)


def test_a_batch_of_data_sets_gives_each_its_own_fits():
    X1, y1, s1 = _data(TANH, G_TANH, 1500, seed=0)
    X2, y2, s2 = _data(TANH, G_TANH, 1500, seed=5)
    batched = lm.solve_batch(TANH, [X1, X2], [y1, y2], 2, [s1, s2], tol=1e-8, max_iter=300)
    for X, y, starts, records in [(X1, y1, s1, batched[0]), (X2, y2, s2, batched[1])]:
        alone = lm.solve(TANH, X, y, 2, starts, tol=1e-8, max_iter=300)
        assert [r.init for r in records] == [name for name, _ in starts]
        both = [(a, b) for a, b in zip(records, alone) if a.converged and b.converged]
        assert len(both) >= 3
        for a, b in both:
            assert a.objective == pytest.approx(b.objective, rel=1e-9)


def test_bounds_and_expert_floor_hold_at_the_end():
    X, y, starts = _data(TANH, G_TANH, 1000)
    bounds = {"bias": (-3.0, 3.0), "gate": (-2.0, 2.0), "expert": (-1.5, 1.5)}
    records = lm.solve(TANH, X, y, 3, initial_measures(TANH, X, y, 3, {"random": 4}, rng=2, method="lse"),
                       bounds=bounds, expert_min=0.2, tol=1e-7, max_iter=200)
    low, high = box(TANH, 3, bounds)
    for r in records:
        theta = r.measure.to_vector()
        assert np.all(theta >= low) and np.all(theta <= high)
        assert np.all(np.max(np.abs(r.measure.expert[:, 1:]), axis=1) >= 0.2 - 1e-12)


def test_the_estimator_runs_the_lm_solver_and_certifies_its_search():
    X, y, _ = _data(TANH, G_TANH, 2000)
    result = ms.fit(TANH, X, y, 2, estimator=LeastSquares(solver="lm", backend="torch"), rng=0)
    assert result.converged and result.search.met
    reference = ms.fit(TANH, X, y, 2, rng=0)
    assert result.objective == pytest.approx(reference.objective, rel=1e-7)


@pytest.mark.parametrize("options, message", [
    ({"solver": "lmm"}, r"LeastSquares.solver = 'lmm' is not allowed; choose one of 'lbfgsb', 'lm'"),
    ({"backend": "torch"}, r"LeastSquares.backend = 'torch' is not allowed with solver = 'lbfgsb'"),
    ({"solver": "lm", "backend": "gpu"}, r"LeastSquares.backend = 'gpu' is not allowed; choose one of"),
])
def test_bad_solver_options_fail_when_built(options, message):
    with pytest.raises(ValueError, match=message):
        LeastSquares(**options)


def test_a_misspelled_solver_fails_in_load_config(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("""
name = "bad"
n = [200, 400]
replicates = 2
[[series]]
label = "tanh"
model = { gate = "sigmoid", expert = "tanh" }
truth = { bias = [1.0, -0.5], gate = [[-1.2], [-1.5]], expert = [[1.0, -1.3], [-1.7, -0.4]] }
estimator = { options = { solver = "levenberg" } }
""")
    with pytest.raises(ValueError, match=r"series\[0\].estimator.options.*solver = 'levenberg'"):
        load_config(path)


def test_a_gate_without_an_array_form_is_refused_by_lm():
    spec = ms.MoESpec(gate=ms.gates.TopKSoftmax(top_k=1), expert="tanh")
    with pytest.raises(ValueError, match="solver = 'lm' does not support gate"):
        LeastSquares(solver="lm").check_spec(spec)


def test_the_gpu_tree_factor_reaches_numpys_optimum(monkeypatch):
    """LM with the factor a GPU uses (`tree_qr_r`, here on torch's CPU with leaves of 64 rows, so that every chunk
    goes through three levels): the same certified optima as NumPy's single QR, to 1e-9 relative."""
    from moe_sim.backend import TorchBackend, tree_qr_r

    monkeypatch.setattr(TorchBackend, "qr_r", lambda self, a: tree_qr_r(self.torch, a, leaf_rows=64))
    X, y, starts = _data(TANH, G_TANH, 5000)
    on_numpy = lm.solve(TANH, X, y, 2, starts, bounds=20.0, tol=1e-9, max_iter=500)
    on_tree = lm.solve(TANH, X, y, 2, starts, bounds=20.0, tol=1e-9, max_iter=500, backend="torch")
    both = [(a, b) for a, b in zip(on_numpy, on_tree) if a.converged and b.converged]
    assert len(both) >= 4
    for a, b in both:
        assert abs(a.objective - b.objective) <= 1e-9 * a.objective


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_agrees_with_numpy():
    X, y, starts = _data(TANH, G_TANH, 20_000)
    on_numpy = lm.solve(TANH, X, y, 2, starts, tol=1e-9, max_iter=500)
    on_gpu = lm.solve(TANH, X, y, 2, starts, tol=1e-9, max_iter=500, backend="cuda")
    both = [(a, b) for a, b in zip(on_numpy, on_gpu) if a.converged and b.converged]
    assert len(both) >= 4
    for a, b in both:
        assert abs(a.objective - b.objective) <= 1e-9 * a.objective


def test_a_sweep_fits_with_lm_on_torch_in_worker_processes(tmp_path):
    """The solver and backend travel as estimator options: a config selects them, loky workers run them, and the
    rows are the same whatever the worker count."""
    from moe_sim import store
    from moe_sim.config import parse_config
    from moe_sim.sweep import run_sweep

    exp = parse_config({
        "name": "lm_torch", "model": {"gate": "softmax", "expert": "tanh"},
        "truth": {"bias": [0.0, 0.0], "gate": [[2.0], [0.0]], "expert": [[0.5, 1.0], [-0.5, -1.0]]},
        "k": 2, "n": [300, 600], "replicates": 2, "chunk": 1, "seed": 3, "eval_n": 200, "noise_sd": 0.1,
        "estimator": {"init": {"kmeans": 2, "random": 2}, "options": {"solver": "lm", "backend": "torch"}},
    })
    one = store.load_results(run_sweep(exp, tmp_path / "one", n_jobs=1, progress=False))
    two = store.load_results(run_sweep(exp, tmp_path / "two", n_jobs=2, progress=False))
    assert len(one.groupby(["n", "replicate"])) == 4
    assert set(one.status) <= {"ok", "not_converged"}
    columns = ["series", "n", "replicate", "quantity", "value"]
    np.testing.assert_allclose(one.sort_values(columns[:4])["value"].to_numpy(),
                               two.sort_values(columns[:4])["value"].to_numpy(), rtol=1e-12)
