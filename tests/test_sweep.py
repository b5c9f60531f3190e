"""The sweep engine: seeding by address, bit-identical results across workers and backends, resume."""

import functools
import os
import re
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from moe_sim import store
from moe_sim.config import QUANTITY, parse_config
from moe_sim.fit.result import FitResult
from moe_sim.measure import MixingMeasure
from moe_sim.model import regression_function
from moe_sim.sweep import UnboundedSigmoidWarning, _bar, make_tasks, run_sweep

TINY = {
    "name": "tiny",
    "model": {"gate": "softmax", "expert": "tanh"},
    "truth": {"bias": [0.0, 0.0], "gate": [[2.0], [0.0]], "expert": [[0.5, 1.0], [-0.5, -1.0]]},
    "k": [2, 3],
    "n": [50, 100, 200],
    "replicates": 5,
    "chunk": 2,
    "seed": 11,
    "eval_n": 200,
    "noise_sd": 0.1,
}


# A parameter space without null atoms for sigmoid fits: every parameter in [-20, 20], expert sizes >= 0.1
NULL_FREE = {"bounds": 20.0, "expert_min": 0.1}


def fake_fit(spec, X, y, k, method, init, n_starts, rng, G_true, fail_prob=0.0, **options):
    """A test double for `moe_sim.fit.fit`: the truth (last atom repeated up to k) moved by n^-1/2 noise.

    It reads the data (objective, truth objective) and draws from `rng`, so any seeding slip shows.
    """
    rng = np.random.default_rng(rng)
    if rng.random() < fail_prob:
        raise FloatingPointError("overflow in the test double")
    index = np.r_[np.arange(G_true.k), np.full(k - G_true.k, G_true.k - 1)]
    base = G_true.subset(index)
    jitter = lambda a: a + rng.normal(scale=len(y) ** -0.5, size=a.shape)
    G = MixingMeasure(jitter(base.bias), jitter(base.gate), jitter(base.expert))
    rss = lambda M: float(np.sum((y - regression_function(spec, M, X)) ** 2))
    return FitResult(G, rss(G), 3, bool(rng.random() < 0.8), 0.0, method, truth_objective=rss(G_true))


def strip(rows):
    return rows.drop(columns="runtime_s")


@pytest.fixture
def exp():
    return parse_config(TINY)


def test_rows_are_tidy_and_complete(exp, tiny_sweep_rows):
    rows = tiny_sweep_rows
    assert len(make_tasks(exp)) == 2 * 3 * 3
    per_fit = rows.groupby(["series", "n", "replicate"]).size()
    assert len(per_fit) == 2 * 3 * 5
    assert not rows.duplicated(["series", "n", "replicate", "quantity", "true_atom"]).any()
    assert {"loss", "regression_l2", "objective_gap", "param:expert:max", "param:weight:mean"} <= set(rows.quantity)
    assert all(QUANTITY.fullmatch(q) for q in set(rows.quantity)), "the config accepts every stored quantity"
    assert set(rows.status) == {"ok", "not_converged"}
    # k = 2 and k = 3 share their data: the truth's objective is the same for both
    truth_obj = rows[rows.quantity == "loss"].pivot_table(index=["n", "replicate"], columns="k",
                                                          values="truth_objective")
    np.testing.assert_array_equal(truth_obj[2], truth_obj[3])
    # errors shrink with n like the double's n^-1/2 jitter
    med = rows[rows.quantity == "regression_l2"].groupby("n").value.median()
    assert med[50] > med[200]


def test_bit_identical_across_worker_counts(exp, tmp_path, tiny_sweep_rows):
    two = store.load_results(run_sweep(exp, tmp_path / "two", n_jobs=2, fit_fn=fake_fit, progress=False))
    pd.testing.assert_frame_equal(strip(tiny_sweep_rows), strip(two))  # the shared run is n_jobs = 1


def test_resume_after_interruption_gives_the_same_rows(exp, tmp_path, tiny_sweep_rows):
    fresh = tiny_sweep_rows
    tasks = make_tasks(exp)
    run_sweep(exp, tmp_path / "resumed", fit_fn=fake_fit, tasks=tasks[::3], progress=False)
    partial = store.load_results(tmp_path / "resumed")
    assert 0 < len(partial) < len(fresh)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "resumed" / "shards").iterdir()}
    run_sweep(exp, tmp_path / "resumed", fit_fn=fake_fit, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "resumed" / "shards").iterdir()}
    assert all(after[name] == t for name, t in before.items()), "finished shards are not rewritten"
    pd.testing.assert_frame_equal(strip(store.load_results(tmp_path / "resumed")), strip(fresh))


def test_resume_refuses_a_different_config(exp, tmp_path):
    run_sweep(exp, tmp_path, fit_fn=fake_fit, tasks=make_tasks(exp)[:1], progress=False)
    with pytest.raises(ValueError, match="different config"):
        run_sweep(parse_config({**TINY, "noise_sd": 0.2}), tmp_path, fit_fn=fake_fit, progress=False)


def test_failed_fits_are_rows(tmp_path):
    exp = parse_config(TINY)
    rows = store.load_results(run_sweep(exp, tmp_path, fit_fn=functools.partial(fake_fit, fail_prob=0.5),
                                        progress=False))
    failed = rows[rows.status == "failed"]
    assert 0 < failed.groupby(["series", "n", "replicate"]).ngroups < 30
    assert failed.value.isna().all() and failed.reason.str.contains("FloatingPointError").all()


def test_argument_errors(exp, tmp_path):
    with pytest.raises(ValueError, match="backend='spark'"):
        run_sweep(exp, tmp_path, backend="spark", fit_fn=fake_fit)
    with pytest.raises(ValueError, match="n_jobs must be a positive integer, got 0"):
        run_sweep(exp, tmp_path, n_jobs=0, fit_fn=fake_fit)


@pytest.mark.distributed
def test_dask_local_cluster_matches_loky(exp, tmp_path):
    distributed = pytest.importorskip("distributed")
    small = parse_config({**TINY, "k": 3, "n": [50, 100], "replicates": 3})
    local = store.load_results(run_sweep(small, tmp_path / "loky", fit_fn=fake_fit, progress=False))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        run_sweep(small, tmp_path / "dask", scheduler=cluster.scheduler_address, fit_fn=fake_fit, progress=False)
    pd.testing.assert_frame_equal(strip(local), strip(store.load_results(tmp_path / "dask")))


def test_sigmoid_regime_2_losses_are_taken_against_g_bar(tmp_path):
    """An over-specified sigmoid fit in regime 2 is scored against closest_measure's G_bar (here a double
    returning a fixed 3-atom measure), and G_bar's degeneracy is recorded in every row's reason."""
    g_bar = MixingMeasure([0.0, 0.0, -2.0], [[3.0], [-3.0], [1.0]], [[1.0, 2.0], [-1.0, -1.0], [0.2, 0.3]])
    calls = []

    def fake_closest(spec, G_true, k, **options):
        calls.append(options)
        return SimpleNamespace(measure=g_bar, degenerate=True, issues=("atom 2: null atom",))

    def fit_g_bar(spec, X, y, k, **kwargs):
        return FitResult(g_bar, 1.0, 1, True, 0.0, "lse", truth_objective=1.0)

    exp = parse_config({**TINY, "model": {"gate": "sigmoid", "expert": "tanh"}, "k": 3, "replicates": 2,
                        "n": [50, 100], "reference": {"n": 500}, "estimator": {"options": NULL_FREE},
                        "truth": {"bias": [0.0, 0.0], "gate": [[2.0], [-1.0]], "expert": [[0.5, 1.0], [-0.5, -1.0]]}})
    rows = store.load_results(run_sweep(exp, tmp_path, fit_fn=fit_g_bar, closest_fn=fake_closest, progress=False))
    # G_bar once per series, not per task, in the space the fits search (the estimator's expert_min)
    assert calls == [{"design": "uniform", "bounds": (-1.0, 1.0), "expert_min": 0.1, "n": 500}]
    np.testing.assert_allclose(rows[rows.quantity == "loss"].value, 0.0, atol=1e-12)
    assert rows.reason.str.contains("G_bar degenerate: atom 2: null atom").all()
    # the regression-function error is still against the truth's f_G*, which G_bar does not reproduce
    assert (rows[rows.quantity == "regression_l2"].value > 0.01).all()


def test_analysis_settings_do_not_invalidate_results(exp, tmp_path):
    run_sweep(exp, tmp_path, fit_fn=fake_fit, tasks=make_tasks(exp)[:1], progress=False)
    changed = parse_config({**TINY, "description": "new words", "analysis": {"target_error": 0.1}})
    run_sweep(changed, tmp_path, fit_fn=fake_fit, tasks=make_tasks(exp)[:2], progress=False)
    assert len(store.finished_tasks(tmp_path)) == 2


def test_unbounded_sigmoid_series_warn_before_the_run(tmp_path):
    raw = {**TINY, "model": {"gate": "sigmoid", "expert": "tanh"}, "k": 2,
           "truth": {"bias": [0.0, 0.0], "gate": [[0.0], [2.0]], "expert": [[0.5, 1.0], [-0.5, -1.0]]}}
    no_gate_box = {"bounds": {"bias": [-3.0, 20.0], "expert": [-20, 20]}}
    with pytest.warns(UnboundedSigmoidWarning, match="default/k=2: .* without finite bounds on \\['gate'\\]"):
        run_sweep(parse_config({**raw, "estimator": {"options": no_gate_box}}), tmp_path / "a", fit_fn=fake_fit,
                  tasks=[], progress=False)
    bounded = {"bounds": {"bias": [-2.944, 20.0], "gate": [-20, 20], "expert": [-20, 20]}}
    run_sweep(parse_config({**raw, "estimator": {"options": bounded}}), tmp_path / "b", fit_fn=fake_fit, tasks=[],
              progress=False)  # no warning: filterwarnings = error would fail the test


def test_progress_from_the_start_with_a_message_for_g_bar(tmp_path, capsys):
    g_bar = MixingMeasure([0.0, 0.0, -2.0], [[3.0], [-3.0], [1.0]], [[1.0, 2.0], [-1.0, -1.0], [0.2, 0.3]])
    exp = parse_config({**TINY, "model": {"gate": "sigmoid", "expert": "tanh"}, "k": 3, "replicates": 2,
                        "n": [50, 100], "estimator": {"options": NULL_FREE},
                        "truth": {"bias": [0.0, 0.0], "gate": [[2.0], [-1.0]], "expert": [[0.5, 1.0], [-0.5, -1.0]]}})
    closest = lambda *args, **kwargs: SimpleNamespace(measure=g_bar, degenerate=False, issues=())  # noqa: E731
    run_sweep(exp, tmp_path, fit_fn=fake_fit, closest_fn=closest, progress=True)
    err = capsys.readouterr().err
    assert "G_bar (closest_measure) of default/k=3, once per series in this process, before the fits" in err
    assert "tiny: 100%" in err and "4/4" in err, "the bar counts fits"


def test_the_bar_ticks_while_no_task_finishes(capsys):
    """A long first task (G_bar, or the largest n) still shows elapsed time every second."""
    with _bar(3, "tiny", "fit", progress=True):
        time.sleep(2.5)
    assert re.search(r"tiny:   0%\| +\| 0/3 \[00:01<", capsys.readouterr().err), "redrawn at 1 s, not only at the end"


def _g_bar_in_this_process(pids, spec, G_true, k, **options):
    """A closest_measure double that records the process it runs in."""
    pids.append(os.getpid())
    return SimpleNamespace(measure=G_true.subset([0, 1, 1]), degenerate=False, issues=())


def test_g_bar_is_computed_once_per_series_in_the_main_process(tmp_path):
    pids = []
    sigmoid = {"model": {"gate": "sigmoid", "expert": "tanh"}, "estimator": {"options": NULL_FREE},
               "truth": {"bias": [0.0, 0.0], "gate": [[2.0], [-1.0]], "expert": [[0.5, 1.0], [-0.5, -1.0]]}}
    exp = parse_config({**TINY, "k": 3, "replicates": 2, "chunk": 1, "n": [50, 100],
                        "series": [{"label": "a", **sigmoid}, {"label": "b", **sigmoid}]})
    run_sweep(exp, tmp_path, n_jobs=2, fit_fn=fake_fit, closest_fn=functools.partial(_g_bar_in_this_process, pids),
              progress=False)
    assert pids == [os.getpid(), os.getpid()], "one G_bar per series, none on the workers"


def test_over_specified_sigmoid_series_without_expert_min_warn(tmp_path):
    raw = {**TINY, "model": {"gate": "sigmoid", "expert": "tanh"}, "k": 3,
           "truth": {"bias": [0.0, 0.0], "gate": [[0.0], [2.0]], "expert": [[0.5, 1.0], [-0.5, -1.0]]}}
    with pytest.warns(UnboundedSigmoidWarning, match="default/k=3: an over-specified sigmoid fit without a parameter "
                                                     "space free of null atoms.* estimator.options.expert_min"):
        run_sweep(parse_config({**raw, "estimator": {"options": {"bounds": 20.0}}}), tmp_path / "a", fit_fn=fake_fit,
                  tasks=[], progress=False)
    run_sweep(parse_config({**raw, "estimator": {"options": NULL_FREE}}), tmp_path / "b", fit_fn=fake_fit, tasks=[],
              progress=False)  # no warning: filterwarnings = error would fail the test
    exact = parse_config({**raw, "k": 2, "estimator": {"options": {"bounds": 20.0}}})
    run_sweep(exact, tmp_path / "c", fit_fn=fake_fit, tasks=[], progress=False)  # no spare atom, no warning
