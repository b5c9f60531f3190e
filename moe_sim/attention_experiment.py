"""Attention experiments (issue 13): configs with kind = "attention", run by the MoE sweep engine.

An `AttentionExperiment` has the attributes `moe_sim.sweep.run_sweep`, `moe_sim.rates` and `moe_sim.plots` read
from an `Experiment` (series, n grid, replicates, chunk, seed, fingerprint, analysis settings), and its own task
function (`AttentionExperiment.run_task`), so attention rows are stored, resumed, locked, rated and plotted by the
same code as the MoE fits. Two modes:

- fit: each series draws a teacher (`draw_params`, its own seed and scale) and fits a student by least squares
  (`fit_replicate`) at every n; rows are the function error on fresh sequences (quantity `regression_l2`, the
  row's regression function) and per teacher head the score-matrix and value errors (`param:W:max`, the
  cell's worst head, `param:W:mean`, weighted by ||v||, and `param:v:sum`, the error of the cell's summed v).
- doubling: no fit; the grid is the sequence length N (the rows' `n` column holds N). Per replicate a random
  (initialisation) head and the series' teacher are read on fresh sequences and on the same sequences
  concatenated with themselves, the gate built for each length: mean row sums of the gates before and after,
  the mean and largest ratio of the two, and the relative RMS change of the row output.

Keys (top level; `[[series]]` tables override teacher and student, `[quick]` any top-level key):
mode, N, d, row, design, noise_sd, n, replicates, chunk, seed, eval_n (fresh test sequences), n_starts,
search {hits, max_rounds, hit_tol}, max_iter, teacher {gate, top_k, width, heads, rank, d, scale, seed},
student {gate, top_k, width, heads, rank, d} (a student without a gate takes the teacher's gate, top_k and
width); doubling mode: lengths (the N grid), sequences, init_scale, and series without a student.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import checks
from .attention import (ATTENTION_GATES, DESIGNS, AttentionParams, AttentionSpec, attention_gate, double_sequences,
                        draw_params, draw_sequences, fit_replicate, row_gates, row_output)
from .config import (SweepConfig, _check_keys, _fail, _merge, _n_grid, _pos_int, effective_config, parse_analysis,
                     shared_settings)
from .fit.estimators import Search
from .sweep import COLUMNS, FIT_ERRORS, Task, replicate_seeds

MODES = ("fit", "doubling")
TOP_KEYS = ("kind", "name", "description", "paper", "mode", "N", "d", "row", "design", "noise_sd", "n", "lengths",
            "sequences", "init_scale", "replicates", "chunk", "seed", "eval_n", "n_starts", "search", "max_iter",
            "teacher", "student", "series", "analysis", "quick", "allow_large_n")
GATE_KEYS = ("gate", "top_k", "width", "heads", "rank", "d")
TEACHER_KEYS = GATE_KEYS + ("scale", "seed")
FIT_QUANTITIES = ("regression_l2", "objective_gap", "param:W:max", "param:W:mean", "param:v:sum")
HEAD_QUANTITIES = {"param:W:max": "W_error", "param:W:mean": "W_error_weighted", "param:v:sum": "v_error"}
DOUBLING_STATS = ("row_sum", "row_sum_doubled", "sum_ratio", "sum_ratio_max", "output_change")
DOUBLING_QUANTITIES = tuple(f"{stat}:{source}" for source in ("init", "teacher") for stat in DOUBLING_STATS)
MAX_PANELS = 4
EXACT_NOTE = "THEORY.md s3: quadratic score, linear value map, exact atoms [R]"


@dataclass(frozen=True)
class AttentionSeries:
    """One teacher and student pair: validated gate tables (`GATE_KEYS`; the teacher's with scale and seed),
    the row read and the data index (series with the same teacher share their samples)."""

    label: str
    teacher: dict
    student: dict | None
    row: int
    data_index: int

    @property
    def k(self) -> int:
        """The student's heads (the teacher's in doubling mode): the sweep's `k` column."""
        return (self.student or self.teacher)["heads"]

    @property
    def name(self) -> str:
        return f"{self.label}/H={self.k}"

    def specs(self, N: int) -> tuple[AttentionSpec, AttentionSpec | None]:
        """The teacher's and the student's `AttentionSpec` over N tokens (student None in doubling mode)."""
        return _spec(self.teacher, N, self.row), None if self.student is None else _spec(self.student, N, self.row)

    def teacher_params(self, N: int) -> AttentionParams:
        """The teacher's heads, drawn from its seed and scale (they do not depend on N)."""
        return draw_params(self.specs(N)[0], self.teacher["seed"], self.teacher["scale"])

    def predicted_rates(self) -> pd.DataFrame:
        """Predictions in `moe_sim.theory.predicted_rates`' columns, for a student of the teacher's gate: the
        regression function at sqrt(log n / n) [S; R for the non-smooth top-K gate]; exactly specified heads
        n^-1/2 in W and v [R] (none for top-K); over-specified cells (student heads > teacher heads): no
        prediction. None for a student of another gate (misspecified) or in doubling mode."""
        columns = ["cell", "cell_size", "block", "exponent", "rate", "reference", "tag", "source"]
        if self.student is None:
            return pd.DataFrame(columns=columns)
        if any(self.student.get(key) != self.teacher.get(key) for key in ("gate", "top_k", "width")):
            return pd.DataFrame([("all", np.nan, "regression_function", np.nan, "no prediction", "G*", "",
                                  "the student's gate differs from the teacher's: misspecified")], columns=columns)
        smooth = self.student["gate"] != "top_k"
        rows = [("all", np.nan, "regression_function", 0.5, "sqrt(log n / n)", "G*", "S" if smooth else "R",
                 "all papers")]
        for block in ("W", "v"):
            rows.append(("exact", 1, block, 0.5, "n^-1/2", "G*", "R", EXACT_NOTE) if smooth else
                        ("exact", 1, block, np.nan, "no prediction", "G*", "", "top-K gate is not smooth"))
        for size in range(2, self.student["heads"] - self.teacher["heads"] + 2):
            rows.append(("over", size, "any", np.nan, "no prediction", "G*", "", "measured"))
        return pd.DataFrame(rows, columns=columns)


@dataclass(frozen=True)
class AttentionExperiment(SweepConfig):
    """A parsed, validated attention experiment (after the optional --quick overrides); see the module docstring."""

    mode: str
    series: tuple[AttentionSeries, ...]
    N: int
    n_starts: int
    search: Search
    max_iter: int
    sequences: int
    init_scale: float
    ratios: tuple = ()  # no sample-complexity ratios (`moe_sim.plots.report` reads them from MoE experiments)

    @property
    def grid_name(self) -> str:
        """What the rows' `n` column holds: the sample size, or the sequence length N in doubling mode."""
        return "N (tokens)" if self.mode == "doubling" else "n"

    def run_task(self, task: Task, entropy: int, fit_fn=None, reference=None) -> pd.DataFrame:
        """The rows of one task (`moe_sim.sweep.run_task`'s signature; fit_fn and reference are not used)."""
        series, n = self.series[task.series_index], self.n_grid[task.n_index]
        one = _doubling_rows if self.mode == "doubling" else _fit_rows
        rows = []
        for rep in range(task.start, task.stop):
            data_seed = replicate_seeds(entropy, series, task.series_index, task.n_index, rep)[0]
            common = {"experiment": self.name, "series_index": task.series_index, "series": series.name,
                      "label": series.label, "k": series.k, "n_index": task.n_index, "n": n, "replicate": rep,
                      "true_atom": -1, "cell_size": -1, "pattern": ""}
            rows += [{**common, **row} for row in one(self, series, n, rep, data_seed)]
        return pd.DataFrame(rows, columns=list(COLUMNS)).astype(COLUMNS)


def _fit_rows(exp: AttentionExperiment, series: AttentionSeries, n: int, rep: int, data_seed) -> list[dict]:
    """One replicate of a fit: `fit_replicate` on the seed of the replicate's data (shared by series with the
    same teacher), as quantity rows; a numerical failure is a row with status 'failed' and its reason."""
    teacher_spec, student_spec = series.specs(exp.N)
    seed = int(data_seed.generate_state(1)[0])
    try:
        heads = fit_replicate(teacher_spec, series.teacher_params(exp.N), student_spec, n, rep, seed=seed,
                              noise_sd=exp.noise_sd, design=exp.design, n_starts=exp.n_starts, search=exp.search,
                              n_test=exp.eval_n, max_iter=exp.max_iter)
    except FIT_ERRORS as exc:
        return [{"quantity": q, "value": np.nan, "status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                 "objective": np.nan, "truth_objective": np.nan, "n_iter": -1, "runtime_s": np.nan,
                 "converged": False, "certified": False, "grad_norm": np.nan, "search_starts": -1,
                 "search_hits": -1, "search_optima": -1, "search_gap": np.nan, "search_p_miss": np.nan}
                for q in ("regression_l2", "objective_gap")]
    fit = heads[0]
    failed = not np.isfinite(fit["function_error"])
    common = {"status": "failed" if failed else "ok" if fit["converged"] else "not_converged",
              "reason": "" if fit["certified"] else f"not certified (stop: {fit['stop'] or 'none'})",
              "objective": fit["mse"] * n, "truth_objective": fit["truth_mse"] * n, "n_iter": fit["n_iter"],
              "runtime_s": fit["runtime_s"], "converged": fit["converged"], "certified": fit["certified"],
              "grad_norm": fit["grad_norm"], "search_starts": fit["local_fits"], "search_hits": fit["hits"],
              "search_optima": fit["optima"], "search_gap": fit["search_gap"], "search_p_miss": fit["p_miss"]}
    rows = [{**common, "quantity": "regression_l2", "value": fit["function_error"]},
            {**common, "quantity": "objective_gap", "value": fit["mse"] - fit["truth_mse"]}]
    for head in heads:
        rows += [{**common, "quantity": quantity, "value": head[column], "true_atom": head["head"],
                  "cell_size": head["cell_size"]} for quantity, column in HEAD_QUANTITIES.items()]
    return rows


def doubling_statistics(spec: AttentionSpec, doubled: AttentionSpec, params: AttentionParams, X) -> dict:
    """Row sums of the gates (summed over tokens, averaged over heads) on X and on X concatenated with itself
    (read with `doubled`, the gate built for 2N tokens): their means, the mean and largest ratio doubled /
    original, and the RMS change of the row output relative to its RMS."""
    X2 = double_sequences(X)
    sums = row_gates(spec, params, X).sum(axis=1).mean(axis=0)
    sums2 = row_gates(doubled, params, X2).sum(axis=1).mean(axis=0)
    out, out2 = row_output(spec, params, X), row_output(doubled, params, X2)
    ratio = sums2 / sums
    return {"row_sum": float(sums.mean()), "row_sum_doubled": float(sums2.mean()), "sum_ratio": float(ratio.mean()),
            "sum_ratio_max": float(ratio.max()),
            "output_change": float(np.sqrt(np.mean((out2 - out) ** 2) / np.mean(out**2)))}


def _doubling_rows(exp: AttentionExperiment, series: AttentionSeries, N: int, rep: int, data_seed) -> list[dict]:
    """One replicate of the doubling statistics at length N: a random head (scale init_scale) and the teacher."""
    rng = np.random.default_rng(data_seed)
    spec, doubled = series.specs(N)[0], series.specs(2 * N)[0]
    X = draw_sequences(spec, exp.sequences, rng, exp.design)
    sources = {"init": draw_params(spec, rng, exp.init_scale), "teacher": series.teacher_params(N)}
    common = {"status": "ok", "reason": "no fit: statistics of given parameters", "objective": np.nan,
              "truth_objective": np.nan, "n_iter": 0, "runtime_s": 0.0, "converged": True, "certified": True,
              "grad_norm": np.nan, "search_starts": 0, "search_hits": 0, "search_optima": 0,
              "search_gap": np.nan, "search_p_miss": np.nan}
    return [{**common, "quantity": f"{stat}:{source}", "value": value}
            for source, params in sources.items()
            for stat, value in doubling_statistics(spec, doubled, params, X).items()]


def _spec(table: dict, N: int, row: int) -> AttentionSpec:
    options = {key: table[key] for key in ("top_k", "width") if table.get(key) is not None}
    return AttentionSpec(N, table["d"], attention_gate(table["gate"], N, row, **options), row, table["heads"],
                         table.get("rank"))


def _gate_table(table, where: str, lengths: tuple[int, ...], d: int, row: int, teacher: bool) -> dict:
    """A validated teacher or student table for every sequence length in `lengths`, each key named on error."""
    _check_keys(table, TEACHER_KEYS if teacher else GATE_KEYS, where)
    out = {"d": d, "heads": 1, "rank": None, **table}
    gate = out.get("gate")
    if gate not in ATTENTION_GATES:
        raise _fail(f"{where}.gate", gate, f"choose one of {', '.join(map(repr, ATTENTION_GATES))}")
    for key, needed in (("top_k", "top_k"), ("width", "band")):
        if (gate == needed) != (key in out):
            raise _fail(f"{where}.{key}", out.get(key), f"set it exactly when gate = {needed!r}")
    for key in ("d", "heads"):
        _pos_int(f"{where}.{key}", out[key])
    if out["rank"] is not None and (_pos_int(f"{where}.rank", out["rank"]) > out["d"]):
        raise _fail(f"{where}.rank", out["rank"], f"expected 1 <= rank <= d = {out['d']} (or leave it out: W free)")
    shortest = min(lengths)
    if gate == "top_k" and not 1 <= _pos_int(f"{where}.top_k", out["top_k"]) <= shortest:
        raise _fail(f"{where}.top_k", out["top_k"], f"expected 1 <= top_k <= N = {shortest} (tokens per sequence)")
    if gate == "band":
        width = out["width"]
        if isinstance(width, bool) or not isinstance(width, int) or not 0 <= width < shortest:
            raise _fail(f"{where}.width", width, f"expected 0 <= width <= N - 1 = {shortest - 1} (a band wider "
                                                 f"than the sequence keeps every token)")
    if teacher:
        out.setdefault("scale", 1.0)
        out.setdefault("seed", 0)
        if not (checks.is_number(out["scale"]) and out["scale"] > 0):
            raise _fail(f"{where}.scale", out["scale"], "expected a positive number (score standard deviation)")
        if isinstance(out["seed"], bool) or not isinstance(out["seed"], int) or out["seed"] < 0:
            raise _fail(f"{where}.seed", out["seed"], "expected a non-negative integer")
    for N in lengths:
        try:
            _spec(out, N, row)
        except ValueError as exc:
            raise ValueError(f"config table {where!r} = {table!r} with N = {N}: {exc}") from None
    return out


def _table(parent: dict, key: str, where: str) -> dict:
    """parent[key], a table (empty when absent), refused by name when it is something else."""
    value = parent.get(key, {})
    if not isinstance(value, dict):
        raise _fail(where, value, "expected a table")
    return value


def _check_quantity(mode: str):
    allowed = DOUBLING_QUANTITIES if mode == "doubling" else FIT_QUANTITIES

    def check(key: str, name) -> None:
        if name not in allowed:
            raise _fail(key, name, f"a {mode} experiment stores {', '.join(allowed)}")
    return check


def _int_at_least(key: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(key, value, f"expected an integer >= {low}")
    return value


def parse_attention_config(raw: dict, quick: bool = False) -> AttentionExperiment:
    """Validate an attention config (module docstring) and build the `AttentionExperiment`; `quick` applies
    [quick]. Every key is checked, and every series' teacher and student built, before anything runs."""
    cfg, name = effective_config(raw, quick, TOP_KEYS, ("quick", "name", "series", "kind", "mode"))
    mode = cfg.get("mode", "fit")
    if mode not in MODES:
        raise _fail("mode", mode, f"choose one of {', '.join(map(repr, MODES))}")
    refused = ("n", "N", "noise_sd", "n_starts", "search", "max_iter", "eval_n", "student") if mode == "doubling" \
        else ("lengths", "sequences", "init_scale")
    for key in refused:
        if key in cfg or any(key in table for table in cfg.get("series", []) if isinstance(table, dict)):
            raise _fail(key, cfg.get(key, "(in a series)"), f"not a key of a {mode} experiment")
    design, noise_sd, seed, allow_large = shared_settings(cfg, DESIGNS, "gaussian")
    d = _pos_int("d", cfg.get("d", 2))
    if mode == "doubling":
        lengths = _n_grid(cfg.get("lengths"), allow_large)
        grid, N = lengths, lengths[0]
    else:
        if "n" not in cfg:
            raise _fail("n", None, "the n grid is required")
        N = _pos_int("N", cfg.get("N"))
        grid, lengths = _n_grid(cfg["n"], allow_large), (N,)
    row = cfg.get("row", 0)
    if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < min(lengths):
        raise _fail("row", row, f"expected a token index, 0 <= row <= {min(lengths) - 1}")
    init_scale = cfg.get("init_scale", 1.0)
    if not (checks.is_number(init_scale) and init_scale > 0):
        raise _fail("init_scale", init_scale, "expected a positive number (score standard deviation)")
    search_table = cfg.get("search", {})
    _check_keys(search_table, ("hits", "max_rounds", "hit_tol"), "search")
    try:
        search = Search(**search_table)
    except ValueError as exc:
        raise ValueError(f"config table 'search' = {search_table!r}: {exc}") from None
    analysis = parse_analysis(cfg.get("analysis", {}), DOUBLING_QUANTITIES[:1] if mode == "doubling"
                              else FIT_QUANTITIES[:1], _check_quantity(mode))
    if len(analysis["quantities"]) > MAX_PANELS:
        raise _fail("analysis.quantities", list(analysis["quantities"]),
                    f"at most {MAX_PANELS} (one panel each in the headline figure)")

    tables = cfg.get("series", [{}])
    if not isinstance(tables, list) or not tables:
        raise _fail("series", tables, "expected a non-empty array of tables ([[series]])")
    series, labels, data_keys = [], set(), {}
    for s_i, table in enumerate(tables):
        where = f"series[{s_i}]"
        _check_keys(table, ("label", "teacher", "student"), where)
        label = table.get("label", f"series{s_i}")
        if not isinstance(label, str) or "/" in label or label in labels:
            raise _fail(f"{where}.label", label, "expected a unique string without '/'")
        labels.add(label)
        teacher = _gate_table(_merge(_table(cfg, "teacher", "teacher"), _table(table, "teacher", f"{where}.teacher")),
                              f"{where}.teacher", lengths, d, row, teacher=True)
        student = None
        if mode == "fit":
            given = _merge(_table(cfg, "student", "student"), _table(table, "student", f"{where}.student"))
            inherited = {key: teacher[key] for key in ("gate", "top_k", "width") if key in teacher}
            student = _gate_table(given if "gate" in given else {**inherited, **given}, f"{where}.student",
                                  lengths, d, row, teacher=False)
            _check_student(student, teacher, f"{where}.student")
        key = json.dumps(teacher, sort_keys=True)
        data_keys.setdefault(key, len(data_keys))
        series.append(AttentionSeries(label, teacher, student, row, data_keys[key]))
    if mode == "fit":
        size, largest = max((s.specs(N)[1].n_params, s.name) for s in series)
        if grid[0] <= size:
            raise _fail("n", cfg["n"], f"every n must exceed the {size} parameters of series {largest} (an "
                                       f"under-determined fit interpolates its sample)")
    return AttentionExperiment(
        name=name + ("_quick" if quick else ""), description=str(cfg.get("description", "")),
        paper=str(cfg.get("paper", "")), mode=mode, series=tuple(series), n_grid=grid, N=N,
        replicates=_pos_int("replicates", cfg.get("replicates", 10)), chunk=_pos_int("chunk", cfg.get("chunk", 4)),
        noise_sd=float(noise_sd), design=design, seed=seed, eval_n=_pos_int("eval_n", cfg.get("eval_n", 2000)),
        n_starts=_pos_int("n_starts", cfg.get("n_starts", 8)), search=search,
        max_iter=_int_at_least("max_iter", cfg.get("max_iter", 5000), 1),
        sequences=_int_at_least("sequences", cfg.get("sequences", 500), 1), init_scale=float(init_scale),
        **analysis, quick=quick, raw=cfg)


def _check_student(student: dict, teacher: dict, where: str) -> None:
    """A student reads the teacher's tokens (same d) with at least the teacher's heads (exact or over-specified)."""
    if student["d"] != teacher["d"]:
        raise _fail(f"{where}.d", student["d"], f"expected the teacher's token dimension d = {teacher['d']}")
    if student["heads"] < teacher["heads"]:
        raise _fail(f"{where}.heads", student["heads"], f"expected heads >= the teacher's {teacher['heads']} "
                                                        f"(exactly or over-specified students)")
