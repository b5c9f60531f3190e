"""Estimators as typed settings, validated when built, sharing one global search.

`LeastSquares` (regression MoE) and `EM` (softmax Gaussian MoE) hold only their own settings and their
local solver (`moe_sim.fit.lse.local_fits`, `moe_sim.fit.em.local_fits`); the multi-start loop, the hit
count and the report of how sure the search is live once, in `Estimator.fit`:

- starts are drawn in rounds from the plan (`moe_sim.fit.init.start_plan`: k-means, random, split from the
  best fit with one atom fewer, merge moves on the best fit so far, and near-truth starts only when the
  caller gives the truth) until the best objective has been reached from `Search.hits` different starts,
  to within `Search.hit_tol` (sigma^2 units of RSS for least squares, with sigma^2 estimated by RSS / n;
  nats for EM) and, if asked, the estimate below is at most `Search.max_p_miss`, or `Search.max_rounds`
  rounds have run;
- the report (`SearchReport`) gives the number of local fits, the hits, the distinct optima, the gap to
  the second best and Boender and Rinnooy Kan's estimate of the share of starts that would land in an
  optimum not yet seen, w (w + 1) / (N (N - 1)) for w distinct optima in N local fits.

`make_estimator(method, options)` turns a config's options table into an estimator: a misspelled or
out-of-range option fails there, when the config loads, not inside the first task.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import ClassVar

import numpy as np

from ..backend import check_backend
from ..measure import MixingMeasure, MoESpec
from ..model import check_inputs, log_density
from . import em, lm, lse
from .init import FROM_FITS, check_starts, initial_measures, merge_starts, split_starts, start_plan
from .result import FitResult, SearchReport, StartResult


def screen_size(screen, n: int) -> int | None:
    """The subsample size of start screening: "auto" is max(2000, n // 10), None disables screening."""
    if not (screen is None or screen == "auto" or (isinstance(screen, (int, np.integer)) and screen > 0)):
        raise ValueError(f"screen must be 'auto', None or a positive integer, got {screen!r}")
    return max(2000, n // 10) if screen == "auto" else screen


def distinct_best(values: list[float], keep: int) -> list[int]:
    """Indices of the `keep` lowest finite values, preferring distinct optima (1e-7 relative apart)."""
    order = [i for i in np.argsort(values, kind="stable") if np.isfinite(values[i])]
    distinct = [i for j, i in enumerate(order)
                if j == 0 or values[i] - values[order[j - 1]] > 1e-7 * abs(values[order[j - 1]])]
    chosen = distinct[:keep]
    chosen += [i for i in order if i not in chosen][: keep - len(chosen)]
    return sorted(chosen)


_SCREEN_TOL = 1e-3  # the stopping tolerance of fits on the screening subsample: they only rank the starts


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_int(owner: str, name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{owner}.{name} = {value!r} is not allowed: expected an integer >= {low}")


def _check_positive(owner: str, name: str, value) -> None:
    if not (_is_real(value) and np.isfinite(value) and value > 0):
        raise ValueError(f"{owner}.{name} = {value!r} is not allowed: expected a positive finite number")


@dataclass(frozen=True)
class Search:
    """When the global search stops: `hits` local fits at the best objective (within `hit_tol`) and an
    estimated chance of a basin not yet seen (`SearchReport.p_miss`) of at most `max_p_miss` (1: no such
    test), or after `max_rounds` rounds of starts. Three hits alone can land on a large basin that is not the
    lowest (benchmarks/README.md, "Global-fit rate")."""

    hits: int = 3
    max_rounds: int = 3
    hit_tol: float = 0.01
    max_p_miss: float = 1.0

    def __post_init__(self):
        _check_int("Search", "hits", self.hits, 1)
        _check_int("Search", "max_rounds", self.max_rounds, 1)
        _check_positive("Search", "hit_tol", self.hit_tol)
        if not (_is_real(self.max_p_miss) and 0 < self.max_p_miss <= 1):
            raise ValueError(f"Search.max_p_miss = {self.max_p_miss!r} is not allowed: expected a number in (0, 1]")

    def met(self, hits: int, p_miss: float) -> bool:
        """Whether a search with these hits and this p_miss may stop."""
        return hits >= self.hits and p_miss <= self.max_p_miss


# The chain of fits with fewer atoms that split starts come from: one round, one hit, few starts of its own.
_CHAIN_SEARCH = Search(hits=1, max_rounds=1)
_CHAIN_PLAN = {"kmeans": 2, "random": 2, "split": 3}


@dataclass(frozen=True)
class Estimator:
    """The global search and start screening shared by the estimators; subclasses supply their local solver
    (`solve`) and objective.

    screen: with n above it, every start is first fitted on a random subsample of that size ("auto":
    max(2000, n // 10); None: never) at a loose tolerance, and only the `keep` best distinct optima and the
    `Search.hits` best overall are fitted on the full sample.
    """

    search: Search = field(default_factory=Search)
    screen: int | str | None = "auto"
    keep: int = 4

    method: ClassVar[str] = ""
    sense: ClassVar[float] = 1.0  # +1: the objective is minimised; -1: maximised

    def __post_init__(self):
        if not isinstance(self.search, Search):
            raise ValueError(f"{type(self).__name__}.search = {self.search!r} is not allowed: expected a Search")
        screen_size(self.screen, 1)
        _check_int(type(self).__name__, "keep", self.keep, 1)

    @property
    def keeps_expert_signs(self) -> bool:
        """Whether each local fit keeps its start's expert signs (then split starts try both signs)."""
        return False

    def check_spec(self, spec: MoESpec) -> None:
        raise NotImplementedError

    def solve(self, spec: MoESpec, X, y, k: int, starts, tol: float, **options) -> list[StartResult]:
        """A local fit from each start, to the stopping tolerance tol."""
        raise NotImplementedError

    def local_fits(self, spec: MoESpec, X, y, k: int, starts, rng, **options) -> list[StartResult]:
        """A local fit from each start, after screening (class docstring); screened-out starts are recorded
        with the full-sample objective of their subsample fit and no measure."""
        screen = screen_size(self.screen, len(y))
        if screen is None or len(y) <= screen or len(starts) <= self.keep:
            return self.solve(spec, X, y, k, starts, self.tol, **options)
        index = rng.choice(len(y), screen, replace=False)
        pre = self.solve(spec, X[index], y[index], k, starts, _SCREEN_TOL)
        values = [self.sense * r.objective if r.measure is not None else np.inf for r in pre]
        best = [i for i in np.argsort(values, kind="stable") if np.isfinite(values[i])][: self.search.hits]
        chosen = sorted(set(distinct_best(values, self.keep)) | set(best))
        polished = [(starts[i][0], pre[i].measure) for i in chosen]
        full = iter(self.solve(spec, X, y, k, polished, self.tol, **options))
        records = []
        for i, (name, _) in enumerate(starts):
            if i in chosen:
                record = next(full)
                record.n_iter += pre[i].n_iter
            else:
                value = np.nan if pre[i].measure is None else self.objective(spec, X, y, pre[i].measure)
                record = StartResult(name, value, pre[i].n_iter, False, f"screened out on {screen} points")
            records.append(record)
        return records

    def objective(self, spec: MoESpec, X, y, G: MixingMeasure) -> float:
        """The objective of G on the sample (to compare the fit with the truth)."""
        raise NotImplementedError

    def hit_unit(self, best: float, y) -> float:
        """The objective difference that counts as one unit of `Search.hit_tol`, on the sample's responses y."""
        return 1.0

    def fit(self, spec: MoESpec, X, y, k: int, init="default", n_starts: int | None = None, rng=None,
            G_true: MixingMeasure | None = None, init_options: dict | None = None) -> FitResult:
        """The best of a global search over starts drawn in rounds (module docstring)."""
        self.check_spec(spec)
        X, y = check_inputs(spec, X, y)
        if G_true is not None:
            spec.check_measure(G_true, "G_true")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k = {k!r} is not allowed: expected a positive integer")
        n_params = k * (1 + spec.q + spec.p + (spec.likelihood == "gaussian"))
        if len(y) <= n_params:
            raise ValueError(f"n = {len(y)} samples is not allowed for k = {k}: a fit needs more samples than its "
                             f"{n_params} parameters")
        unknown = set(init_options or {}) - {"scale", "power"}
        if unknown:
            raise ValueError(f"init_options has unknown keys {sorted(unknown)}; allowed: 'scale', 'power'")
        rng = np.random.default_rng(rng)
        plan = start_plan(init, n_starts, G_true, self.method)
        records: list[StartResult] = []
        fewer = report = None
        for round_ in range(self.search.max_rounds):
            if "split" in plan and k > 1 and fewer is None:
                fewer = self._chain(spec, X, y, k - 1, rng)
            starts = self._draw(spec, X, y, k, plan, rng, G_true, init_options, fewer, records, round_)
            records += self.local_fits(spec, X, y, k, starts, rng)
            report = self.search_report(records, y, round_ + 1)
            if report.met:
                break
        return self._result(spec, X, y, records, report, G_true)

    def fit_starts(self, spec: MoESpec, X, y, k: int, starts: list[tuple[str, MixingMeasure]], rng=None,
                   G_true: MixingMeasure | None = None, **local_options) -> FitResult:
        """The best local fit from the given (name, measure) starts: one round, no further draws (the report
        still counts the hits). local_options go to the local solver (EM: trace=True)."""
        self.check_spec(spec)
        X, y = check_inputs(spec, X, y)
        starts = check_starts(spec, k, starts)
        records = self.local_fits(spec, X, y, k, starts, np.random.default_rng(rng), **local_options)
        return self._result(spec, X, y, records, self.search_report(records, y, 1), G_true)

    def _chain(self, spec, X, y, k: int, rng) -> MixingMeasure | None:
        """The best k-atom fit of a one-round search whose split starts come from k - 1 atoms, recursively."""
        chain = replace(self, search=_CHAIN_SEARCH)
        result = chain.fit(spec, X, y, k, init=dict(_CHAIN_PLAN) if k > 1 else {"kmeans": 2, "random": 2}, rng=rng)
        return result.measure

    def _draw(self, spec, X, y, k, plan, rng, G_true, init_options, fewer, records, round_) -> list:
        drawn = {name: count for name, count in plan.items() if name not in FROM_FITS}
        starts = initial_measures(spec, X, y, k, drawn, rng=rng, G_true=G_true, method=self.method,
                                  **(init_options or {})) if drawn else []
        if plan.get("split") and fewer is not None:  # a Gaussian chain fit carries variances, and so its splits
            starts += [("split", G) for G in split_starts(spec, fewer, rng, plan["split"], self.keeps_expert_signs)]
        best = self.best_start(records)
        if plan.get("merge") and round_ > 0 and best is not None:
            starts += [("merge", G) for G in merge_starts(spec, best.measure, rng, plan["merge"])]
        return starts

    def best_start(self, records) -> StartResult | None:
        """The local fit with the best objective (None when none ended finite)."""
        done = [r for r in records if r.measure is not None and np.isfinite(r.objective)]
        return min(done, key=lambda r: self.sense * r.objective) if done else None

    def search_report(self, records, y, rounds: int) -> SearchReport:
        """How sure the search is after `rounds` rounds of these local fits on responses y (module docstring)."""
        done = [r for r in records if r.measure is not None and np.isfinite(r.objective)]
        if not done:
            return SearchReport(0, 0, 0, np.inf, 1.0, False, rounds, self.search.hit_tol)
        values = np.sort([self.sense * r.objective for r in done])
        values = (values - values[0]) / self.hit_unit(float(self.sense * values[0]), y)
        tol = self.search.hit_tol
        starts_of_optima = [values[0]]
        for v in values[1:]:
            if v > starts_of_optima[-1] + tol:
                starts_of_optima.append(v)
        hits = int(np.sum(values <= tol))
        N, w = len(values), len(starts_of_optima)
        p_miss = min(1.0, w * (w + 1) / (N * (N - 1))) if N > 1 else 1.0
        gap = float(starts_of_optima[1]) if w > 1 else np.inf
        return SearchReport(N, hits, w, gap, p_miss, self.search.met(hits, p_miss), rounds, tol)

    def _result(self, spec, X, y, records, report, G_true) -> FitResult:
        best = self.best_start(records)
        if best is None:
            reasons = "; ".join(sorted({r.reason for r in records if r.reason}))
            result = FitResult(None, np.nan, sum(r.n_iter for r in records), False, 0.0, self.method,
                               f"every start failed: {reasons}", records, search=report)
        else:
            result = FitResult(best.measure, best.objective, best.n_iter, best.converged, 0.0, self.method,
                               best.reason, records, grad_norm=best.grad_norm, stop=best.stop,
                               n_polish=best.n_polish, search=report)
        if G_true is not None:
            result.compare_with_truth(self.objective(spec, X, y, G_true))
        return result


def _expert_interval(bounds) -> tuple[float, float]:
    """The (low, high) that a number or a table of blocks puts on every expert parameter; (-inf, inf) for
    None or per-parameter arrays (those are checked per start, by `lse.null_free_box`)."""
    if isinstance(bounds, dict):
        low, high = np.broadcast_to(np.asarray(bounds.get("expert", (-np.inf, np.inf)), dtype=float), (2,))
        return float(low), float(high)
    if bounds is not None and np.isscalar(bounds):
        return -float(bounds), float(bounds)
    return -np.inf, np.inf


SOLVERS = ("lbfgsb", "lm")


@dataclass(frozen=True)
class LeastSquares(Estimator):
    """Least squares for the regression MoE, each local fit certified when ||P grad F||_inf / F <= tol (or the
    Gauss-Newton decrement is below 1e-3 sigma^2).

    solver: "lbfgsb" (`moe_sim.fit.lse`: scipy's L-BFGS-B, one start at a time, on NumPy's allocation-free
    kernel) or "lm" (`moe_sim.fit.lm`: Levenberg-Marquardt on every start at once, written once over the array
    `backend`: "numpy", "torch" on the CPU or "cuda"; softmax and sigmoid gates, families with
    `activation_nx`). bounds: None, a positive number, a table of blocks or a (lower, upper) pair (`lse.box`);
    max_iter: iterations per local fit; maxcor: L-BFGS-B's memory. expert_min > 0: every atom's expert size (outer
    scale eta_2 of a scaled expert, and its largest inner weight where act(0) = 0; largest slope of an affine one)
    stays at least expert_min in magnitude, with the sign of its start (`lse.null_free_box`); with a bias lower
    bound (a weight floor) this is the parameter space without null atoms that sigmoid regime 2 needs (THEORY.md
    s1), the one `closest_measure` uses for G_bar.
    """

    tol: float = 1e-7
    max_iter: int = 5000
    bounds: object = None
    maxcor: int = 20
    expert_min: float = 0.0
    solver: str = "lbfgsb"
    backend: str = "numpy"

    method: ClassVar[str] = "lse"
    sense: ClassVar[float] = 1.0

    def __post_init__(self):
        super().__post_init__()
        _check_positive("LeastSquares", "tol", self.tol)
        _check_int("LeastSquares", "max_iter", self.max_iter, 1)
        _check_int("LeastSquares", "maxcor", self.maxcor, 1)
        lse.check_bounds(self.bounds)
        if not (_is_real(self.expert_min) and np.isfinite(self.expert_min) and self.expert_min >= 0):
            raise ValueError(f"LeastSquares.expert_min = {self.expert_min!r} is not allowed: expected a finite number "
                             f">= 0 (0: no lower bound on the expert's size)")
        if self.expert_min > 0:
            lse.check_expert_room(self.expert_min, *_expert_interval(self.bounds))
        if self.solver not in SOLVERS:
            raise ValueError(f"LeastSquares.solver = {self.solver!r} is not allowed; choose one of "
                             f"{', '.join(map(repr, SOLVERS))}")
        check_backend(self.backend, "LeastSquares.backend")
        if self.backend != "numpy" and self.solver != "lm":
            raise ValueError(f"LeastSquares.backend = {self.backend!r} is not allowed with solver = {self.solver!r} "
                             f"(scipy's L-BFGS-B runs on NumPy only); set solver = 'lm', or backend = 'numpy'")

    @property
    def keeps_expert_signs(self):
        return self.expert_min > 0

    def check_spec(self, spec):
        if spec.likelihood != "regression":
            raise ValueError(f"least squares needs likelihood='regression', got {spec.likelihood!r}")
        if self.solver == "lm":
            lm.check_spec(spec)

    def solve(self, spec, X, y, k, starts, tol):
        if self.solver == "lm":
            return lm.solve(spec, X, y, k, starts, bounds=self.bounds, tol=tol, max_iter=self.max_iter,
                            expert_min=self.expert_min, backend=self.backend)
        return lse.solve(spec, X, y, k, starts, bounds=self.bounds, tol=tol, max_iter=self.max_iter,
                         maxcor=self.maxcor, expert_min=self.expert_min)

    def objective(self, spec, X, y, G):
        return lse.RSSObjective(spec, X, y, G.k).rss(G)

    def hit_unit(self, best, y):
        """sigma^2 estimated by RSS / n, at least `lse.sigma2_floor` (two exact fits are one optimum)."""
        return max(best / len(y), lse.sigma2_floor(y))


@dataclass(frozen=True)
class EM(Estimator):
    """EM for the softmax Gaussian MoE (`moe_sim.fit.em`): stops when ||grad l / n||_inf <= tol, polishing by
    L-BFGS-B once EM crawls (polish=True); max_iter caps EM and polish iterations each; var_floor bounds
    the variances below. backend: where the E-step and gate sums run ("numpy", "torch" on the CPU, or "cuda");
    the M-step and the polish run in NumPy whatever the backend."""

    tol: float = 1e-7
    max_iter: int = 2000
    polish: bool = True
    var_floor: float = 1e-6
    backend: str = "numpy"

    method: ClassVar[str] = "em"
    sense: ClassVar[float] = -1.0

    def __post_init__(self):
        super().__post_init__()
        _check_positive("EM", "tol", self.tol)
        _check_int("EM", "max_iter", self.max_iter, 1)
        _check_positive("EM", "var_floor", self.var_floor)
        if not isinstance(self.polish, bool):
            raise ValueError(f"EM.polish = {self.polish!r} is not allowed: expected true or false")
        check_backend(self.backend, "EM.backend")

    def check_spec(self, spec):
        em.check_em_spec(spec)

    def solve(self, spec, X, y, k, starts, tol, trace: bool = False):
        return em.solve(spec, X, y, k, starts, tol=tol, max_iter=self.max_iter, var_floor=self.var_floor,
                        polish=self.polish, trace=trace, backend=self.backend)

    def objective(self, spec, X, y, G):
        return float(np.sum(log_density(spec, G, X, y)))


ESTIMATORS = {"lse": LeastSquares, "em": EM}


def make_estimator(method: str, options: dict | None = None) -> Estimator:
    """The estimator of `method` ("lse" or "em") with the given options (its fields; `search` a table of
    `Search` fields), validated: an unknown option names itself, the value and the allowed ones."""
    if method not in ESTIMATORS:
        raise ValueError(f"method = {method!r} is not allowed; choose one of {', '.join(map(repr, ESTIMATORS))}")
    cls = ESTIMATORS[method]
    options = dict(options or {})
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"estimator option(s) {unknown} = {[options[u] for u in unknown]!r} not allowed for "
                         f"method {method!r}; allowed: {', '.join(allowed)}")
    search = options.get("search", {})
    if isinstance(search, dict):
        bad = sorted(set(search) - {f.name for f in fields(Search)})
        if bad:
            raise ValueError(f"search option(s) {bad} not allowed; allowed: "
                             f"{', '.join(f.name for f in fields(Search))}")
        options["search"] = Search(**search)
    elif not isinstance(search, Search):
        raise ValueError(f"estimator option 'search' = {search!r} is not allowed: expected a table of "
                         f"{', '.join(f.name for f in fields(Search))}")
    return cls(**options)
