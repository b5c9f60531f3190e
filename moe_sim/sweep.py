"""The sweep engine: tasks over (series, n, chunk of replicates), seeded by their address, run with joblib or
Dask, evaluated into tidy rows and streamed to Parquet shards.

Replicate r at the n-th sample size of a series with data index d draws its data from
SeedSequence(entropy, spawn_key=(d, n_index, r, 0)), its fit from (d, n_index, r, 1, series index) and its
evaluation design from (d, n_index, r, 2). Only seeds cross process boundaries, so the rows do not depend
on the worker count, the backend or the order tasks run in; series that share a data index (same truth and
data model) are fitted on the very same samples.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import warnings
from concurrent.futures import as_completed as futures_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from . import store
from .config import Experiment, Series
from .measure import MixingMeasure
from .model import regression_function
from .sample import draw_design, sample
from .voronoi import parameter_errors, voronoi_loss

COLUMNS = {
    "experiment": "string", "series_index": "int64", "series": "string", "label": "string", "k": "int64",
    "n_index": "int64", "n": "int64", "replicate": "int64", "quantity": "string", "true_atom": "int64",
    "cell_size": "int64", "pattern": "string", "value": "float64", "status": "string", "reason": "string",
    "objective": "float64", "truth_objective": "float64", "n_iter": "int64", "runtime_s": "float64",
    "converged": "bool", "certified": "bool", "grad_norm": "float64", "search_starts": "int64",
    "search_hits": "int64", "search_optima": "int64", "search_gap": "float64", "search_p_miss": "float64",
}
FIT_ERRORS = (ArithmeticError, np.linalg.LinAlgError, RuntimeError)
BACKENDS = ("loky", "dask")


@dataclass(frozen=True)
class Task:
    """Replicates [start, stop) of one series at one sample size."""

    series_index: int
    n_index: int
    start: int
    stop: int

    @property
    def id(self) -> str:
        return f"s{self.series_index:03d}-n{self.n_index:03d}-r{self.start:05d}"


def make_tasks(exp: Experiment) -> list[Task]:
    """All tasks of an experiment, largest n first (the longest tasks start early)."""
    return [
        Task(s, i, start, min(start + exp.chunk, exp.replicates))
        for i in reversed(range(len(exp.n_grid)))
        for s in range(len(exp.series))
        for start in range(0, exp.replicates, exp.chunk)
    ]


def replicate_seeds(entropy: int, series: Series, series_index: int, n_index: int, replicate: int):
    """(data, fit, evaluation) seed sequences of one replicate."""
    key = (series.data_index, n_index, replicate)
    return (
        np.random.SeedSequence(entropy, spawn_key=(*key, 0)),
        np.random.SeedSequence(entropy, spawn_key=(*key, 1, series_index)),
        np.random.SeedSequence(entropy, spawn_key=(*key, 2)),
    )


def needs_reference(series: Series) -> bool:
    """Whether losses are taken against G_bar: an over-specified sigmoid fit of a regime-2 truth whose target is
    'auto' (target 'truth' measures it against G*, to compare it with a softmax fit of the same samples)."""
    return (series.target == "auto" and series.spec.gate_family.regime(series.truth) == 2
            and series.k > series.truth.k)


def reference_measure(exp: Experiment, series: Series, closest=None) -> tuple[MixingMeasure, str]:
    """The measure losses are taken against, and a note: G*, or G_bar when `needs_reference` (computed by
    `closest_measure` on the experiment's design and bounds, options from the config's [reference] table, its
    expert_min by default the series estimator's, so that G_bar lies in the space the fits search; the note
    lists G_bar's degeneracy issues, if any)."""
    if not needs_reference(series):
        return series.truth, ""
    if closest is None:
        from .fit import closest_measure as closest
    space = {"expert_min": series.options["expert_min"]} if series.options.get("expert_min") else {}
    options = {"design": exp.design, "bounds": exp.bounds, **space, **exp.reference}
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore")  # degeneracy is recorded in the rows instead
        result = closest(series.spec, series.truth, series.k, **options)
    note = "G_bar degenerate: " + "; ".join(result.issues) if result.degenerate else ""
    return result.measure, note


def _evaluate(exp: Experiment, series: Series, ref: MixingMeasure, result, n: int, eval_rng) -> list[dict]:
    """Quantity rows of one finished fit: loss, per-atom parameter errors (cell maximum and weighted mean),
    the worst atom's error per block (its cell size is that atom's), regression-function L2 error on a fresh
    design, and the objective's gap to the truth's per sample (positive: the fit is worse than the truth)."""
    spec, G = series.spec, result.measure
    rows = [{"quantity": "loss", "value": voronoi_loss(spec, G, ref, kind=series.loss)}]
    errors = parameter_errors(spec, G, ref, kind=series.loss)
    for rec in errors.itertuples(index=False):
        for stat in ("max", "mean"):
            rows.append({"quantity": f"param:{rec.block}:{stat}", "value": getattr(rec, f"{stat}_error"),
                         "true_atom": rec.true_atom, "cell_size": rec.n_fitted, "pattern": rec.pattern})
    for block, sub in errors.groupby("block", sort=False):
        worst = sub.loc[sub.max_error.idxmax()] if sub.max_error.notna().any() else sub.iloc[0]
        rows.append({"quantity": f"param:{block}:worst", "value": worst.max_error, "cell_size": worst.n_fitted,
                     "pattern": worst.pattern})
    X_eval = draw_design(exp.design, exp.eval_n, spec.d, eval_rng, exp.bounds)
    gap = regression_function(spec, G, X_eval) - regression_function(spec, series.truth, X_eval)
    rows.append({"quantity": "regression_l2", "value": float(np.sqrt(np.mean(gap**2)))})
    if result.truth_objective is not None:
        sign = 1.0 if series.method == "lse" else -1.0
        rows.append({"quantity": "objective_gap", "value": sign * (result.objective - result.truth_objective) / n})
    return rows


def _fit_one(fit_fn, series: Series, X, y, fit_seed):
    """(result, reason, seconds) of one replicate's `ms.fit`; a numerical failure is a reason, not a crash."""
    if fit_fn is None:
        from .fit import fit as fit_fn
    tic = time.perf_counter()
    try:
        result = fit_fn(series.spec, X, y, series.k, method=series.method, init=series.init,
                        n_starts=series.n_starts, rng=fit_seed, G_true=series.truth, **series.options)
        return result, result.reason, time.perf_counter() - tic
    except FIT_ERRORS as exc:
        return None, f"{type(exc).__name__}: {exc}", time.perf_counter() - tic


def _search_columns(result) -> dict:
    """The certificate of a fit and how sure its global search is (`moe_sim.fit.SearchReport`)."""
    search = None if result is None else result.search
    counts = {"search_starts": "n_starts", "search_hits": "n_hits", "search_optima": "n_optima"}
    return {
        "converged": result is not None and result.converged,
        "certified": result is not None and result.certified,
        "grad_norm": np.nan if result is None else result.grad_norm,
        **{column: -1 if search is None else getattr(search, name) for column, name in counts.items()},
        "search_gap": np.nan if search is None else search.gap,
        "search_p_miss": np.nan if search is None else search.p_miss,
    }


def run_task(exp: Experiment, task: Task, entropy: int, fit_fn=None, reference=None) -> pd.DataFrame:
    """Sample, fit and evaluate the replicates of one task; a failed fit becomes rows with status 'failed'.

    reference: the series' (measure, note) from `reference_measure`, computed once per series by `run_sweep`
    (G_bar takes up to a minute and a half); computed here when not given."""
    series = exp.series[task.series_index]
    n = exp.n_grid[task.n_index]
    out = []
    ref, ref_note = reference_measure(exp, series) if reference is None else reference
    with threadpool_limits(limits=1):
        reps = range(task.start, task.stop)
        seeds = [replicate_seeds(entropy, series, task.series_index, task.n_index, rep) for rep in reps]
        data = [sample(series.spec, series.truth, n, rng=data_seed, noise_sd=exp.noise_sd, design=exp.design,
                       bounds=exp.bounds) for data_seed, _, _ in seeds]
        fit_seeds = [fit_seed for _, fit_seed, _ in seeds]
        fits = [_fit_one(fit_fn, series, X, y, fit_seed) for (X, y), fit_seed in zip(data, fit_seeds)]
        for rep, (_, _, eval_seed), (result, reason, runtime) in zip(reps, seeds, fits):
            if result is None or result.measure is None:
                status = "failed"
                rows = [{"quantity": q, "value": np.nan} for q in ("loss", "regression_l2", "objective_gap")]
            else:
                status = "ok" if result.converged else "not_converged"
                rows = _evaluate(exp, series, ref, result, n, eval_seed)
            common = {
                "experiment": exp.name, "series_index": task.series_index, "series": series.name,
                "label": series.label, "k": series.k, "n_index": task.n_index, "n": n, "replicate": rep,
                "status": status, "reason": "; ".join(filter(None, [reason, ref_note])),
                "objective": np.nan if result is None else result.objective,
                "truth_objective": np.nan if result is None or result.truth_objective is None
                else result.truth_objective,
                "n_iter": -1 if result is None else result.n_iter, "runtime_s": runtime,
                **_search_columns(result),
            }
            out.extend({"true_atom": -1, "cell_size": -1, "pattern": "", **common, **row} for row in rows)
    return pd.DataFrame(out, columns=list(COLUMNS)).astype(COLUMNS)


def _check_out(exp: Experiment, out: Path) -> tuple[int, bool]:
    """(seed entropy, whether the manifest must be written) of a run into `out`, checked against what is there.

    A resumed sweep keeps its first entropy. A readable shard of another config, entropy or task is refused;
    unreadable (truncated) shards are deleted once the folder is accepted, to be recomputed. A manifest
    without shards may be replaced (a config fixed after a failed start). A lost manifest is rebuilt from the
    shards' provenance, so a seedless config keeps the entropy its shards were drawn with."""
    fingerprint = exp.fingerprint()
    readable, damaged = store.scan_shards(out)
    manifest = store.read_manifest(out) if (out / store.MANIFEST).exists() else None
    resumed = manifest is not None and bool(readable)
    if resumed and manifest["fingerprint"] != fingerprint:
        raise ValueError(
            f"out={str(out)!r} holds results of a different config (fingerprint {manifest['fingerprint']}, "
            f"this config {fingerprint}); choose another output directory"
        )
    found = {prov.get("entropy") for prov in readable.values()}
    if resumed:
        entropy = int(manifest["entropy"])
    elif len(found) == 1 and isinstance(next(iter(found)), int):
        entropy = found.pop()
    else:
        entropy = exp.seed if exp.seed is not None else int(np.random.SeedSequence().entropy)
    for path, prov in readable.items():
        error = store.provenance_error(path, prov, fingerprint, entropy)
        if error:
            raise ValueError(f"{error}; choose another output directory or delete that shard")
    if readable and manifest is None:
        _say(f"{exp.name}: {store.MANIFEST} is missing in {str(out)!r}; rebuilding it from the provenance of "
             f"{len(readable)} shards")
    for path in damaged:
        _say(f"{exp.name}: shard {str(path)!r} is truncated or damaged; recomputing its task")
        path.unlink()
    return entropy, not resumed


def _say(message: str) -> None:
    """A status line on stderr that does not break a progress bar (shown with or without the bar)."""
    tqdm.write(message, file=sys.stderr)


class UnboundedSigmoidWarning(UserWarning):
    """A sigmoid series fitted without a parameter box, or over-specified without a floor on the expert's size:
    its fits can run off or end with null atoms."""


def _unbounded_blocks(series: Series) -> list[str]:
    """The parameter blocks of a sigmoid series' least-squares fit left unbounded ([] when all are bounded).

    Without a box a sigmoid atom of weight -> 0 is a null atom with arbitrary parameters and experts can
    saturate and run off (errors of 1e4 in the issue-12 trial), so every block needs finite bounds, the
    bias a finite lower one (a weight floor)."""
    if series.spec.gate_family.regime(series.truth) is None or series.method != "lse":
        return []
    bounds = series.options.get("bounds")
    if bounds is None:
        return ["bias", "gate", "expert"]
    if not isinstance(bounds, dict):
        return []  # a number or (low, high) arrays bound every parameter; LeastSquares checks their values
    ends = {"bias": 0, "gate": slice(None), "expert": slice(None)}  # the bias needs a lower bound only
    return [block for block, which in ends.items()
            if not np.all(np.isfinite(np.asarray(bounds.get(block, (-np.inf, np.inf)), float)[which]))]


def _misses_null_free_space(series: Series) -> bool:
    """Whether an over-specified sigmoid least-squares series (either regime) lacks `LeastSquares.expert_min`: a
    spare atom can then become null (expert ~ 0), and the regime-2 target G_bar is not attained (THEORY.md s1)."""
    return (series.spec.gate_family.regime(series.truth) is not None and series.method == "lse"
            and series.k > series.truth.k and not series.options.get("expert_min"))


def _warn_unbounded_sigmoid(exp: Experiment) -> None:
    """Warn, per series, about sigmoid fits that can run off or end with null atoms."""
    for series in exp.series:
        blocks = _unbounded_blocks(series)
        if blocks:
            warnings.warn(f"series {series.name}: a sigmoid gate fitted without finite bounds on {blocks}; its fits "
                          f"can run off or end with null atoms (arbitrary parameters), which makes per-atom errors "
                          f"meaningless. Set estimator.options.bounds, e.g. {{ bias = [-2.944, 20], gate = [-20, 20], "
                          f"expert = [-20, 20] }} (weights >= 0.05)", UnboundedSigmoidWarning, stacklevel=3)
        if _misses_null_free_space(series):
            warnings.warn(f"series {series.name}: an over-specified sigmoid fit without a parameter space free of "
                          f"null atoms; a spare atom can end with expert ~ 0, which makes its errors meaningless and "
                          f"leaves G_bar (regime 2) unattained. Set estimator.options.expert_min (e.g. 0.1, a floor "
                          f"on the expert's size) and a bias lower bound", UnboundedSigmoidWarning, stacklevel=3)


def _watch_parent(parent_pid: int) -> None:
    """Worker initializer: exit within half a second of the parent's death (SIGKILL gives it no chance to stop
    us, and loky workers would otherwise wait on their pipes for good)."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="moe-sim-parent-watch", daemon=True).start()


@contextmanager
def _pool(backend: str, n_jobs: int, scheduler):
    """A function mapping jobs [(key, fn, args)] to a stream of (key, fn(*args)) in completion order.

    loky: a private pool of n_jobs processes (inline when n_jobs = 1) that is killed on any exit, and whose
    workers exit by themselves when this process dies. dask: `scheduler` or a LocalCluster of n_jobs
    workers (Dask workers exit with their parent process)."""
    if backend == "dask":
        from distributed import Client, LocalCluster, as_completed

        cluster = None
        if scheduler is None:
            cluster = LocalCluster(n_workers=n_jobs, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster if cluster is not None else scheduler)

        def run(jobs):
            futures = {client.submit(fn, *args, pure=False): key for key, fn, args in jobs}
            for future in as_completed(futures):
                yield futures[future], future.result()
        try:
            yield run
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
        return
    if n_jobs == 1:
        yield lambda jobs: ((key, fn(*args)) for key, fn, args in jobs)
        return
    from joblib.externals.loky import ProcessPoolExecutor

    executor = ProcessPoolExecutor(max_workers=n_jobs, initializer=_watch_parent, initargs=(os.getpid(),))

    def run(jobs):
        futures = {executor.submit(fn, *args): key for key, fn, args in jobs}
        for future in futures_completed(futures):
            yield futures[future], future.result()
    try:
        yield run
    except BaseException:
        executor.shutdown(wait=True, kill_workers=True)
        raise
    executor.shutdown(wait=True)


@contextmanager
def _terminate_as_exit():
    """SIGTERM raises SystemExit in the main thread, so the pool's cleanup runs and no worker is orphaned."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _bar(total: int, desc: str, unit: str, progress: bool):
    """A tqdm bar shown at once and redrawn every second (elapsed time, ETA) even while no job finishes."""
    with tqdm(total=total, desc=desc, unit=unit, disable=not progress or not total, dynamic_ncols=True) as bar:
        stop = threading.Event()

        def tick():
            while not stop.wait(1.0):
                bar.refresh()
        ticker = threading.Thread(target=tick, daemon=True)
        if not bar.disable:
            ticker.start()
        try:
            yield bar
        finally:
            stop.set()
            if ticker.is_alive():
                ticker.join()


def run_sweep(exp: Experiment, out, n_jobs: int = 1, backend: str = "loky", scheduler=None, fit_fn=None,
              closest_fn=None, tasks=None, progress: bool = True) -> Path:
    """Run (or resume) an experiment into the results directory `out`; return its path.

    backend "loky" runs tasks on n_jobs local processes (in this process when n_jobs = 1); "dask" submits them
    to `scheduler` (an address or a Client-compatible object) or, without one, to a LocalCluster of n_jobs
    single-threaded workers. Finished shards are skipped; `tasks` restricts the run to a subset (by default all).
    `fit_fn` and `closest_fn` replace `moe_sim.fit.fit` / `closest_measure` (test doubles).

    An attention experiment (`moe_sim.attention_experiment`) runs its own task function through the same
    pool, store, lock and resume.

    Order: argument checks and warnings, the folder's lock (a second run into `out` fails here), the check of
    what `out` holds, the reference measures G_bar (once per series, in this process: the workers get it with
    their tasks), then the manifest and the fits. SIGTERM stops the workers and exits with status 143.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; choose one of {', '.join(BACKENDS)}")
    if scheduler is not None and backend != "dask":
        backend = "dask"
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise ValueError(f"n_jobs must be a positive integer, got {n_jobs!r}")
    moe = isinstance(exp, Experiment)  # else an AttentionExperiment: its own task function, no G_bar
    if moe:
        _warn_unbounded_sigmoid(exp)
    out = Path(out)
    with store.run_lock(out, f"{exp.name} ({' '.join(sys.argv)})"), _terminate_as_exit():
        entropy, new_manifest = _check_out(exp, out)
        done = store.finished_tasks(out)
        todo = [t for t in (make_tasks(exp) if tasks is None else tasks) if t.id not in done]
        wanted = sorted({t.series_index for t in todo if moe and needs_reference(exp.series[t.series_index])})
        references = {}
        if wanted:
            _say(f"{exp.name}: computing the reference measure G_bar (closest_measure) of "
                 f"{', '.join(exp.series[i].name for i in wanted)}, once per series in this process, before the fits")
        with _bar(len(wanted), f"{exp.name} G_bar", "series", progress) as bar:
            for i in wanted:
                references[i] = reference_measure(exp, exp.series[i], closest_fn)
                bar.update()
        with _pool(backend, n_jobs, scheduler) as run:
            if new_manifest:
                store.write_manifest(out, exp.raw, exp.fingerprint(), entropy,
                                     {"experiment": exp.name, "quick": exp.quick,
                                      "series": [s.name for s in exp.series], "n_grid": list(exp.n_grid),
                                      "replicates": exp.replicates})
            jobs = [(t, run_task, (exp, t, entropy, fit_fn, references.get(t.series_index))) if moe
                    else (t, exp.run_task, (t, entropy)) for t in todo]
            with _bar(sum(t.stop - t.start for t in todo), exp.name, "fit", progress) as bar:
                for task, rows in run(jobs):
                    store.write_shard(out, task.id, rows, exp.fingerprint(), entropy)
                    bar.update(task.stop - task.start)
    return out
