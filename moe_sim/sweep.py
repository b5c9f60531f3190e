"""The sweep engine: tasks over (series, n, chunk of replicates), seeded by their address, run with joblib or
Dask, evaluated into tidy rows and streamed to Parquet shards.

Replicate r at the n-th sample size of a series with data index d draws its data from
SeedSequence(entropy, spawn_key=(d, n_index, r, 0)), its fit from (d, n_index, r, 1, series index) and its
evaluation design from (d, n_index, r, 2). Only seeds cross process boundaries, so the rows do not depend
on the worker count, the backend or the order tasks run in; series that share a data index (same truth and
data model) are fitted on the very same samples.
"""

from __future__ import annotations

import time
import warnings
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


def reference_measure(exp: Experiment, series: Series, closest=None) -> tuple[MixingMeasure, str]:
    """The measure losses are taken against, and a note: G*, or G_bar for an over-specified sigmoid fit in
    regime 2 (computed by `closest_measure` on the experiment's design and bounds, options from the config's
    [reference] table; the note lists G_bar's degeneracy issues, if any)."""
    if not (series.spec.gate_family.regime(series.truth) == 2 and series.k > series.truth.k):
        return series.truth, ""
    if closest is None:
        from .fit import closest_measure as closest
    options = {"design": exp.design, "bounds": exp.bounds, **exp.reference}
    with warnings.catch_warnings():
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


def run_task(exp: Experiment, task: Task, entropy: int, fit_fn=None, closest_fn=None) -> pd.DataFrame:
    """Sample, fit and evaluate the replicates of one task; a failed fit becomes rows with status 'failed'."""
    series = exp.series[task.series_index]
    n = exp.n_grid[task.n_index]
    out = []
    with threadpool_limits(limits=1):
        ref, ref_note = reference_measure(exp, series, closest_fn)
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


def _prepare(exp: Experiment, out: Path) -> int:
    """Create or check the manifest; return the seed entropy (a resumed sweep keeps its first entropy)."""
    if (out / store.MANIFEST).exists():
        manifest = store.read_manifest(out)
        if manifest["fingerprint"] != exp.fingerprint():
            raise ValueError(
                f"out={str(out)!r} holds results of a different config (fingerprint {manifest['fingerprint']}, "
                f"this config {exp.fingerprint()}); choose another output directory"
            )
        return int(manifest["entropy"])
    entropy = exp.seed if exp.seed is not None else int(np.random.SeedSequence().entropy)
    store.write_manifest(out, exp.raw, exp.fingerprint(), entropy,
                         {"experiment": exp.name, "quick": exp.quick, "series": [s.name for s in exp.series],
                          "n_grid": list(exp.n_grid), "replicates": exp.replicates})
    return entropy


def _tagged_task(exp, task, entropy, fit_fn, closest_fn):
    return task, run_task(exp, task, entropy, fit_fn, closest_fn)


def _run_dask(exp, todo, entropy, fit_fn, closest_fn, scheduler, n_jobs):
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=n_jobs, threads_per_worker=1, processes=True, dashboard_address=None)
        scheduler = cluster
    client = Client(scheduler)
    try:
        futures = {client.submit(run_task, exp, t, entropy, fit_fn, closest_fn, pure=False): t for t in todo}
        for future in as_completed(futures):
            yield futures[future], future.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _run_loky(exp, todo, entropy, fit_fn, closest_fn, n_jobs):
    if n_jobs == 1:
        for t in todo:
            yield t, run_task(exp, t, entropy, fit_fn, closest_fn)
        return
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=n_jobs, backend="loky", return_as="generator_unordered")
    yield from parallel(delayed(_tagged_task)(exp, t, entropy, fit_fn, closest_fn) for t in todo)


def run_sweep(exp: Experiment, out, n_jobs: int = 1, backend: str = "loky", scheduler=None, fit_fn=None,
              closest_fn=None, tasks=None, progress: bool = True) -> Path:
    """Run (or resume) an experiment into the results directory `out`; return its path.

    backend "loky" runs tasks on n_jobs local processes (in this process when n_jobs = 1); "dask" submits them
    to `scheduler` (an address or a Client-compatible object) or, without one, to a LocalCluster of n_jobs
    single-threaded workers. Finished shards are skipped; `tasks` restricts the run to a subset (by default all).
    `fit_fn` and `closest_fn` replace `moe_sim.fit.fit` / `closest_measure` (test doubles).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; choose one of {', '.join(BACKENDS)}")
    if scheduler is not None and backend != "dask":
        backend = "dask"
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise ValueError(f"n_jobs must be a positive integer, got {n_jobs!r}")
    out = Path(out)
    entropy = _prepare(exp, out)
    done = store.finished_tasks(out)
    todo = [t for t in (make_tasks(exp) if tasks is None else tasks) if t.id not in done]
    if backend == "dask":
        stream = _run_dask(exp, todo, entropy, fit_fn, closest_fn, scheduler, n_jobs)
    else:
        stream = _run_loky(exp, todo, entropy, fit_fn, closest_fn, n_jobs)
    with tqdm(total=len(todo), desc=exp.name, unit="task", disable=not progress or not todo) as bar:
        for task, rows in stream:
            store.write_shard(out, task.id, rows)
            bar.update()
    return out
