"""Experiment configurations: TOML files describing a sweep (model series, truth, n grid, estimator, seeds).

A config holds top-level defaults (`model`, `truth`, `k`, `estimator`, `loss`) and an optional list of
`[[series]]` tables, each overriding any of those for one model series (e.g. a sigmoid and a softmax fit of
the same data). A series with a list `k = [2, 3]` expands into one series per k. A `[quick]` table overrides
top-level keys (tables merged key by key) for the `--quick` variant.

Series that generate data the same way (same truth, same data model) share their data: their replicates
are seeded by the same data index. `data = "label"` forces series with different representations of one
regression function (e.g. a softmax truth and its sigmoid rewriting) onto the same data; the config checks
that their regression functions agree.

A config with `kind = "attention"` describes an attention experiment instead (`moe_sim.attention_experiment`);
`parse_config` hands it over, and the sweep, store, rate table and figures run it like any other.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import checks
from .fit import closest_measure
from .fit.estimators import make_estimator
from .fit.init import start_plan
from .measure import MixingMeasure, MoESpec
from .model import regression_function
from .sample import DESIGNS, design_box
from .theory import TARGETS, predicted_rates
from .voronoi import LOSS_KINDS

LARGE_N = 10**6
TOP_KEYS = {
    "kind": "what the experiment runs: 'moe' (default) or 'attention' (moe_sim.attention_experiment)",
    "name": "experiment name (string)",
    "description": "one line saying what the experiment shows",
    "paper": "the paper it reproduces (string)",
    "model": "table: gate, score, expert, d, likelihood, degree, temperature",
    "truth": "table: bias, gate, expert, var",
    "k": "fitted number of atoms: an integer or a list of integers",
    "noise_sd": "regression noise standard deviation (number >= 0)",
    "design": f"input design: one of {', '.join(DESIGNS)}",
    "bounds": "input box [low, high] (numbers or length-d lists)",
    "n": "sample sizes: a list of integers, or a table {start, stop, num} for a geometric grid",
    "replicates": "replicates per (series, n): a positive integer",
    "chunk": "replicates per task: a positive integer",
    "estimator": "table: method, init, n_starts, options (the estimator's settings; an over-specified sigmoid "
                 "series needs bounds with a bias floor and expert_min, a space without null atoms; least squares "
                 "takes solver = 'lm' and backend = 'numpy', 'torch' or 'cuda')",
    "seed": "seed entropy: a non-negative integer",
    "loss": f"Voronoi loss kind: one of {', '.join(LOSS_KINDS)}",
    "target": "what losses are taken against: 'auto' (G_bar for sigmoid regime 2, else G*) or 'truth' (always G*)",
    "eval_n": "size of the fresh evaluation design for the regression-function error",
    "reference": "table of options passed to closest_measure (sigmoid regime 2); expert_min defaults to the "
                 "series' estimator.options.expert_min and must agree with it",
    "series": "array of tables, one per model series",
    "analysis": "table: quantities (list), stat ('median' | 'mean'), target_error, target_quantity, target_atom, "
                "margin, headline (panels), ratios (series pairs)",
    "quick": "table of top-level overrides for the --quick variant",
    "allow_large_n": f"true to allow n or eval_n above {LARGE_N:.0e} (memory and run time grow with n)",
}
MODEL_KEYS = ("gate", "score", "expert", "d", "likelihood", "degree", "temperature")
TRUTH_KEYS = ("bias", "gate", "expert", "var")
ESTIMATOR_KEYS = ("method", "init", "n_starts", "options")
SERIES_KEYS = ("label", "model", "truth", "k", "estimator", "loss", "data", "target")
ANALYSIS_KEYS = ("quantities", "target_error", "target_quantity", "target_atom", "stat", "margin")
FIGURE_KEYS = ("headline", "ratios")  # MoE experiments' [analysis] keys for the headline figure and ratios
HEADLINE_KEYS = ("quantity", "series", "atom")
MAX_HEADLINE_PANELS = 4
METHODS = ("lse", "em")
NOT_FINGERPRINTED = ("analysis", "description", "paper", "allow_large_n")
DEFAULT_QUANTITIES = ("loss", "regression_l2", "param:weight:max", "param:gate:max", "param:expert:max")
# The quantities a sweep stores: parameter blocks as `voronoi.parameter_errors` names them, per-atom maximum and
# weighted mean and the worst atom (`sweep._evaluate`).
PARAM_BLOCKS = ("weight", "gate", "expert", "expert_intercept", "expert_slope", "expert_mean", "var")
QUANTITY = re.compile(rf"(loss|regression_l2|objective_gap|param:({'|'.join(PARAM_BLOCKS)}):(max|mean|worst))")
REFERENCE_OPTIONS = {name: p.default for name, p in inspect.signature(closest_measure).parameters.items()
                     if p.default is not inspect.Parameter.empty}


def _fail(key: str, value, allowed: str) -> ValueError:
    return ValueError(f"config key {key!r} = {value!r} is not allowed: {allowed}")


def _check_keys(table: dict, allowed, where: str) -> None:
    if not isinstance(table, dict):
        raise _fail(where, table, "expected a table")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} in {where}; allowed: {', '.join(sorted(allowed))}")


def _pos_int(key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(key, value, "expected a positive integer")
    return value


def effective_config(raw: dict, quick: bool, top_keys, fixed_keys) -> tuple[dict, str]:
    """(the config with its [quick] table applied when `quick`, its name), after checking the top-level keys
    against `top_keys`, the [quick] table's against those not in `fixed_keys`, and the name."""
    _check_keys(raw, top_keys, "the top level")
    cfg = copy.deepcopy(raw)
    over = cfg.pop("quick", {})
    _check_keys(over, set(top_keys) - set(fixed_keys), "quick")
    if quick:
        cfg = _merge(cfg, over)
    name = cfg.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise _fail("name", name, "expected an identifier-like string (letters, digits, underscores)")
    return cfg, name


def shared_settings(cfg: dict, designs, default_design: str) -> tuple[str, float, int | None, bool]:
    """The keys every experiment kind has, validated: (design, noise_sd, seed, allow_large_n)."""
    design = cfg.get("design", default_design)
    if design not in designs:
        raise _fail("design", design, f"choose one of {', '.join(map(repr, designs))}")
    noise_sd = cfg.get("noise_sd", 0.1)
    if not (checks.is_number(noise_sd) and noise_sd >= 0):
        raise _fail("noise_sd", noise_sd, "expected a finite number >= 0")
    seed = cfg.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise _fail("seed", seed, "expected a non-negative integer (or leave it out for fresh entropy)")
    allow_large = cfg.get("allow_large_n", False)
    if not isinstance(allow_large, bool):
        raise _fail("allow_large_n", allow_large, "expected true or false")
    return design, noise_sd, seed, allow_large


def _merge(base: dict, over: dict) -> dict:
    """`base` with `over`'s keys replacing its own; nested tables merged key by key."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class Series:
    """One fitted model series: the family fitted, its truth, k, the estimator and the loss."""

    label: str
    spec: MoESpec
    truth: MixingMeasure
    k: int
    method: str
    init: str | tuple | dict
    n_starts: int | None
    options: dict
    loss: str
    data_index: int
    target: str = "auto"

    @property
    def name(self) -> str:
        """Unique id inside an experiment: label and k."""
        return f"{self.label}/k={self.k}"

    def predicted_rates(self):
        """The theory's predictions for this series (`moe_sim.theory.predicted_rates`), read by the rate table."""
        return predicted_rates(self.spec, self.truth, self.k, target=self.target)


@dataclass(frozen=True)
class SweepConfig:
    """What every kind of experiment gives the sweep, the store and the analysis: its name, n grid, replicates,
    seed and analysis settings, and the config it was parsed from (`raw`, whose fingerprint keys its rows)."""

    name: str
    description: str
    paper: str
    n_grid: tuple[int, ...]
    replicates: int
    chunk: int
    noise_sd: float
    design: str
    seed: int | None
    eval_n: int
    quantities: tuple[str, ...]
    target_error: float | None
    target_quantity: str
    target_atom: int
    stat: str
    quick: bool
    raw: dict = field(repr=False)

    def fingerprint(self) -> str:
        return config_fingerprint(self.raw)


@dataclass(frozen=True)
class Experiment(SweepConfig):
    """A parsed, validated MoE experiment config (after the optional --quick overrides)."""

    series: tuple[Series, ...]
    bounds: tuple
    reference: dict
    headline: tuple[dict, ...] = ()
    ratios: tuple[tuple[str, str], ...] = ()


def config_fingerprint(raw: dict) -> str:
    """A hash of what the rows depend on: results of different sweeps must not mix in one directory.

    The analysis settings, description and paper are left out: changing them does not invalidate results."""
    sweep = {key: value for key, value in raw.items() if key not in NOT_FINGERPRINTED}
    return hashlib.sha256(json.dumps(sweep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _n_grid(value, allow_large: bool) -> tuple[int, ...]:
    """The sample sizes: at least two (a rate is a slope), at most LARGE_N unless allow_large_n is set."""
    if isinstance(value, list):
        if len(value) < 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 2 for v in value):
            raise _fail("n", value, "expected at least two integers >= 2 (a rate needs two sample sizes)")
        if sorted(set(value)) != value:
            raise _fail("n", value, "expected strictly increasing sample sizes")
        grid = tuple(value)
    elif isinstance(value, dict):
        _check_keys(value, ("start", "stop", "num"), "n")
        if set(value) != {"start", "stop", "num"}:
            raise _fail("n", value, "a geometric grid needs start, stop and num")
        start, stop, num = value["start"], value["stop"], _pos_int("n.num", value["num"])
        if not all(checks.is_number(v) for v in (start, stop)) or not 2 <= start < stop:
            raise _fail("n", value, "expected numbers with 2 <= start < stop")
        grid = tuple(int(v) for v in np.unique(np.round(np.geomspace(start, stop, num)).astype(int)))
        if len(grid) < 2:
            raise _fail("n", value, "expected a grid of at least two sample sizes (num >= 2)")
    else:
        raise _fail("n", value, "expected a list of integers or a table {start, stop, num}")
    _check_size("n", value, max(grid), allow_large)
    return grid


def _check_size(key: str, value, largest: int, allow_large: bool) -> None:
    if largest > LARGE_N and not allow_large:
        raise _fail(key, value, f"sample sizes above {LARGE_N:.0e} need allow_large_n = true (memory and run "
                                f"time grow with n; {largest:.3g} samples)")


def _reference(table) -> dict:
    """The [reference] table: keyword options of `closest_measure`, each of its default's kind."""
    if not isinstance(table, dict):
        raise _fail("reference", table, "expected a table of closest_measure options")
    _check_keys(table, REFERENCE_OPTIONS, "reference")
    for key, value in table.items():
        default, where = REFERENCE_OPTIONS[key], f"reference.{key}"
        if key == "design" and value not in DESIGNS:
            raise _fail(where, value, f"choose one of {', '.join(DESIGNS)}")
        if isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise _fail(where, value, "expected a non-negative integer")
        if isinstance(default, float) and not (checks.is_number(value) and value > 0):
            raise _fail(where, value, "expected a positive number")
    return dict(table)


def _check_bounds(key: str, bounds, spec: MoESpec) -> None:
    """An input box for a series: [low, high], numbers or length-d lists, low < high in every coordinate."""
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise _fail(key, bounds, "expected [low, high]")
    try:
        design_box(bounds, spec.d)
    except (TypeError, ValueError) as exc:
        raise _fail(key, bounds, f"expected finite numbers (or length-{spec.d} lists) with low < high "
                                 f"({exc})") from None


def _check_quantity(key: str, name) -> None:
    if not isinstance(name, str) or not QUANTITY.fullmatch(name):
        raise _fail(key, name, f"expected a quantity name: loss, regression_l2, objective_gap or "
                               f"param:BLOCK:STAT with BLOCK one of {', '.join(PARAM_BLOCKS)} and STAT one of "
                               f"max, mean, worst")


def _spec(table: dict, where: str) -> MoESpec:
    _check_keys(table, MODEL_KEYS, where)
    try:
        return MoESpec(**table)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config table {where!r} = {table!r}: {exc}") from exc


def _truth(table: dict, spec: MoESpec, where: str) -> MixingMeasure:
    _check_keys(table, TRUTH_KEYS, where)
    if spec.likelihood == "regression" and "var" in table:
        raise _fail(f"{where}.var", table["var"], "a regression truth has no variances (noise_sd sets the noise); "
                                                  "remove it, or set model.likelihood = 'gaussian'")
    try:
        return spec.check_measure(MixingMeasure.from_dict(table), where)
    except ValueError as exc:
        raise ValueError(f"config table {where!r} = {table!r}: {exc}") from exc


def _estimator(table: dict, where: str, spec: MoESpec) -> tuple[str, str | list, int | None, dict]:
    _check_keys(table, ESTIMATOR_KEYS, where)
    method = table.get("method", "lse")
    if method not in METHODS:
        raise _fail(f"{where}.method", method, f"choose one of {', '.join(METHODS)}")
    init = table.get("init", "default")
    if isinstance(init, dict):
        for name, count in init.items():
            _pos_int(f"{where}.init.{name}", count)
    elif not (isinstance(init, str) or (isinstance(init, list) and init and all(isinstance(i, str) for i in init))):
        raise _fail(f"{where}.init", init, "expected a strategy name, a non-empty list of them or a table of counts")
    n_starts = table.get("n_starts")
    if n_starts is not None:
        _pos_int(f"{where}.n_starts", n_starts)
        if isinstance(init, dict):
            raise _fail(f"{where}.n_starts", n_starts, "leave it unset when init is a table of counts")
    try:
        plan = start_plan(init, n_starts, None, method)
    except ValueError as exc:
        raise ValueError(f"config key {where + '.init'!r}: {exc}") from None
    options = table.get("options", {})
    _check_estimator(method, options, f"{where}.options", spec)
    if set(plan) == {"near_truth"}:
        raise _fail(f"{where}.init", init, "near-truth starts bias the rates (THEORY.md s4, s7): add truth-free "
                    "kinds (kmeans, random, split, merge) or keep 'default'")
    return method, init, n_starts, dict(options)


def _check_estimator(method: str, options, where: str, spec: MoESpec) -> None:
    """The estimator options of a series, checked before anything runs by building the estimator
    (`moe_sim.fit.make_estimator`, which names the option, its value and the allowed ones) and asking it
    whether it can fit the series' model (a solver that lacks the gate or the expert family)."""
    if not isinstance(options, dict):
        raise _fail(where, options, f"expected a table of {method} estimator options")
    try:
        estimator = make_estimator(method, options)
        if (method == "em") == (spec.likelihood == "gaussian"):  # a mismatch is reported by the caller
            estimator.check_spec(spec)
    except ValueError as exc:
        raise ValueError(f"config key {where!r}: {exc}") from None


def _data_key(spec: MoESpec, truth: MixingMeasure) -> str:
    return json.dumps([spec.gate_name, spec.score, spec.expert_name, spec.d, spec.likelihood, spec.degree,
                       spec.temperature, truth.to_dict()], sort_keys=True)


def parse_config(raw: dict, quick: bool = False) -> Experiment:
    """Validate a config dict (as read from TOML) and build the `Experiment`; `quick` applies [quick].
    A config with kind = "attention" is an `moe_sim.attention_experiment.AttentionExperiment`."""
    kind = raw.get("kind", "moe") if isinstance(raw, dict) else "moe"
    if kind == "attention":
        from .attention_experiment import parse_attention_config
        return parse_attention_config(raw, quick)
    if kind != "moe":
        raise _fail("kind", kind, "choose 'moe' (the default) or 'attention'")
    cfg, name = effective_config(raw, quick, TOP_KEYS, ("quick", "name", "series", "kind"))
    design, noise_sd, seed, allow_large = shared_settings(cfg, DESIGNS, "uniform")
    bounds = cfg.get("bounds", [-1.0, 1.0])
    loss = cfg.get("loss", "auto")
    if loss not in LOSS_KINDS:
        raise _fail("loss", loss, f"choose one of {', '.join(LOSS_KINDS)}")
    reference = _reference(cfg.get("reference", {}))
    analysis_table = cfg.get("analysis", {})
    analysis = parse_analysis(analysis_table, DEFAULT_QUANTITIES, _check_quantity, FIGURE_KEYS)

    series_tables = cfg.get("series", [{}])
    if not isinstance(series_tables, list) or not series_tables:
        raise _fail("series", series_tables, "expected a non-empty array of tables ([[series]])")
    defaults = {key: cfg[key] for key in ("model", "truth", "k", "estimator", "loss", "target") if key in cfg}
    series, data_keys, labels = [], {}, set()
    for s_i, table in enumerate(series_tables):
        where = f"series[{s_i}]"
        _check_keys(table, SERIES_KEYS, where)
        merged = _merge(defaults, {key: v for key, v in table.items() if key not in ("label", "data")})
        label = table.get("label", "default" if len(series_tables) == 1 else f"series{s_i}")
        if not isinstance(label, str) or "/" in label or label in labels:
            raise _fail(f"{where}.label", label, "expected a unique string without '/'")
        labels.add(label)
        spec = _spec(merged.get("model", {}), f"{where}.model")
        _check_bounds("bounds", bounds, spec)
        if not spec.gate_family.translation_invariant and "bounds" in reference:  # G_bar's box (sigmoid gates)
            _check_bounds("reference.bounds", reference["bounds"], spec)
        if "truth" not in merged:
            raise _fail(f"{where}.truth", None, "every series needs a truth table (bias, gate, expert[, var])")
        truth = _truth(merged["truth"], spec, f"{where}.truth")
        ks = merged.get("k", truth.k)
        ks = ks if isinstance(ks, list) else [ks]
        method, init, n_starts, options = _estimator(merged.get("estimator", {}), f"{where}.estimator", spec)
        if (method == "em") != (spec.likelihood == "gaussian"):
            raise _fail(f"{where}.estimator.method", method,
                        f"'em' goes with likelihood='gaussian' and 'lse' with 'regression' (got {spec.likelihood!r})")
        fit_floor, g_bar_floor = options.get("expert_min"), reference.get("expert_min")
        sigmoid = spec.gate_family.regime(truth) is not None
        if sigmoid and None not in (fit_floor, g_bar_floor) and fit_floor != g_bar_floor:
            raise _fail(f"{where}.estimator.options.expert_min", fit_floor,
                        f"expected reference.expert_min = {g_bar_floor!r}: G_bar and the fits share one parameter "
                        f"space")
        s_loss = merged.get("loss", "auto")
        if s_loss not in LOSS_KINDS:
            raise _fail(f"{where}.loss", s_loss, f"choose one of {', '.join(LOSS_KINDS)}")
        s_target = merged.get("target", "auto")
        if s_target not in TARGETS:
            raise _fail(f"{where}.target", s_target, f"choose one of {', '.join(TARGETS)}")
        if s_target == "truth" and s_loss == "auto" and spec.gate_family.regime(truth) == 2 and max(ks) > truth.k:
            raise _fail(f"{where}.loss", s_loss, "a regime-2 sigmoid fit measured against G* (target = 'truth') "
                                                 "needs an explicit loss kind: D1 or D2r, as its softmax twin's")
        data = table.get("data")
        key = ("label", data) if data is not None else ("model", _data_key(spec, truth))
        if key not in data_keys:
            data_keys[key] = (len(data_keys), spec, truth)
        elif data is not None:
            _check_same_function(data_keys[key][1:], (spec, truth), bounds, f"{where}.data", data)
        for k in ks:
            _pos_int(f"{where}.k", k)
            if k < truth.k:
                raise _fail(f"{where}.k", k, f"expected k >= the number of true atoms ({truth.k})")
            series.append(Series(label, spec, truth, k, method, init if isinstance(init, (str, dict)) else tuple(init),
                                 n_starts, options, s_loss, data_keys[key][0], s_target))
    names = [s.name for s in series]
    if len(set(names)) != len(names):
        raise _fail("series", names, "each (label, k) pair must be unique")
    if "n" not in cfg:
        raise _fail("n", None, "the n grid is required")
    n_grid = _n_grid(cfg["n"], allow_large)
    size, largest = max((s.k * (1 + s.spec.q + s.spec.p + (s.spec.likelihood == "gaussian")), s.name)
                        for s in series)
    if n_grid[0] <= size:
        raise _fail("n", cfg["n"], f"every n must exceed the {size} parameters of series {largest} (an "
                                   f"under-determined fit interpolates its sample)")
    headline = _headline(analysis_table.get("headline", []), labels)
    ratios = _ratios(analysis_table.get("ratios", []), [s.label for s in series], analysis["target_error"])
    eval_n = _pos_int("eval_n", cfg.get("eval_n", 2000))
    _check_size("eval_n", eval_n, eval_n, allow_large)
    return Experiment(
        name=name + ("_quick" if quick else ""),
        description=str(cfg.get("description", "")),
        paper=str(cfg.get("paper", "")),
        series=tuple(series),
        n_grid=n_grid,
        replicates=_pos_int("replicates", cfg.get("replicates", 10)),
        chunk=_pos_int("chunk", cfg.get("chunk", 4)),
        noise_sd=float(noise_sd),
        design=design,
        bounds=tuple(bounds),
        seed=seed,
        eval_n=eval_n,
        reference=reference,
        **analysis,
        quick=quick,
        headline=headline,
        ratios=ratios,
        raw=cfg,
    )


def parse_analysis(analysis, default_quantities, check_quantity, extra_keys=()) -> dict:
    """The [analysis] table as the experiment's quantities, target_error, target_quantity, target_atom and stat;
    `check_quantity(key, name)` refuses a quantity the experiment does not store; `extra_keys` are the caller's
    own keys (parsed by the caller)."""
    _check_keys(analysis, ANALYSIS_KEYS + tuple(extra_keys), "analysis")
    quantities = analysis.get("quantities", list(default_quantities))
    if not isinstance(quantities, list) or not quantities:
        raise _fail("analysis.quantities", quantities, "expected a non-empty list of quantity names")
    for quantity in quantities:
        check_quantity("analysis.quantities", quantity)
    target = analysis.get("target_error")
    if target is not None and not (checks.is_number(target) and target > 0):
        raise _fail("analysis.target_error", target, "expected a positive number")
    target_quantity = analysis.get("target_quantity", quantities[0])
    check_quantity("analysis.target_quantity", target_quantity)
    target_atom = analysis.get("target_atom", -1)
    if isinstance(target_atom, bool) or not isinstance(target_atom, int) or target_atom < -1:
        raise _fail("analysis.target_atom", target_atom, "expected a true atom index (or -1 for none)")
    stat = analysis.get("stat", "median")
    if stat not in ("median", "mean"):
        raise _fail("analysis.stat", stat, "choose 'median' or 'mean'")
    return {"quantities": tuple(quantities), "target_error": None if target is None else float(target),
            "target_quantity": target_quantity, "target_atom": target_atom, "stat": stat}


def _headline(panels, labels: set) -> tuple[dict, ...]:
    """[analysis] headline: at most MAX_HEADLINE_PANELS panels {quantity, series = [labels], atom = -1}, each
    drawing its series on the same log-log axes (`plots.plot_headline`)."""
    where = "analysis.headline"
    if not isinstance(panels, list) or len(panels) > MAX_HEADLINE_PANELS:
        raise _fail(where, panels, f"expected a list of at most {MAX_HEADLINE_PANELS} panel tables "
                                   f"{{quantity, series = [labels], atom}}")
    out = []
    for i, panel in enumerate(panels):
        at = f"{where}[{i}]"
        _check_keys(panel, HEADLINE_KEYS, at)
        _check_quantity(f"{at}.quantity", panel.get("quantity"))
        series = panel.get("series")
        if not isinstance(series, list) or not series or not all(isinstance(s, str) and s in labels for s in series):
            raise _fail(f"{at}.series", series, f"expected a non-empty list of series labels from "
                                                f"{sorted(labels)}")
        atom = panel.get("atom", -1)
        if isinstance(atom, bool) or not isinstance(atom, int) or atom < -1:
            raise _fail(f"{at}.atom", atom, "expected a true atom index (or -1 for a quantity not per atom)")
        out.append({"quantity": panel["quantity"], "series": tuple(series), "atom": atom})
    return tuple(out)


def _ratios(pairs, labels: list, target) -> tuple[tuple[str, str], ...]:
    """[analysis] ratios: pairs [numerator, denominator] of series labels, each fitted at a single k, whose
    sample complexities at target_error are compared (`rates.sample_complexity_ratio`)."""
    where = "analysis.ratios"
    if not isinstance(pairs, list):
        raise _fail(where, pairs, "expected a list of [numerator, denominator] series label pairs")
    single = sorted(label for label in set(labels) if labels.count(label) == 1)
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2 and all(p in single for p in pair) and pair[0] != pair[1]):
            raise _fail(where, pair, f"expected a pair of two different series labels, each fitted at one k, "
                                     f"from {single}")
    if pairs and target is None:
        raise _fail(where, pairs, "sample-complexity ratios need analysis.target_error")
    return tuple(tuple(pair) for pair in pairs)


def _check_same_function(first, other, bounds, key: str, label: str) -> None:
    """Series forced onto the same data must describe the same regression function."""
    (spec_a, truth_a), (spec_b, truth_b) = first, other
    if spec_a.d != spec_b.d or spec_a.likelihood != "regression" or spec_b.likelihood != "regression":
        raise _fail(key, label, "series sharing data must be regression models of the same dimension d")
    grid = np.random.default_rng(0).uniform(*(np.broadcast_to(np.asarray(b, float), spec_a.d) for b in bounds),
                                            size=(512, spec_a.d))
    fa, fb = regression_function(spec_a, truth_a, grid), regression_function(spec_b, truth_b, grid)
    if not np.allclose(fa, fb, rtol=1e-9, atol=1e-9):
        raise _fail(key, label, f"the series' truths give different regression functions "
                                f"(max gap {np.abs(fa - fb).max():.3g}); they cannot share data")


def load_config(path, quick: bool = False) -> Experiment:
    """Read and validate a TOML experiment config."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"config file {str(path)!r} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {str(path)!r} is not valid TOML: {exc}") from exc
    return parse_config(raw, quick=quick)
