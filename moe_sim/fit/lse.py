"""Least squares for the regression MoE: multi-start L-BFGS-B on the analytic gradient.

The optimiser minimises F = RSS / (2 n var(y)), so F is O(1) whatever n and the scale of y, and the stopping
rule can be n-aware: a local optimum differs from the global one by about sigma^2 / n per sample, so the
relative-decrease tolerance is ftol = ftol_n / n (ftol_n = 1e-6 by default, floored at 1e-15) and the
projected-gradient tolerance is tiny (gtol = 1e-10). scipy's defaults (ftol 2.2e-9, 15000 iterations) stop
after 15 to 25 iterations, often above the truth's objective (THEORY.md s6).

Multi-start with screening: near-truth starts alone miss the global fit, and one truth-free start finds it
only in a fraction of samples (about 1 in 5 for a sigmoid tanh model with k = k*), so `fit` runs many starts.
With n > `screen` each start is first fitted on a random subsample (by default max(2000, n / 10) points:
on 2000 points alone, over-specified fits drift to other configurations and 3 of 20 fits at n = 1e5 ended
worse than the truth) and only the `keep` (KEEP = 4) best distinct optima are polished on the full sample,
which keeps many starts affordable at n = 1e5.
benchmarks/README.md records how often the result is no worse than the truth.

Noise-free designs (`closest_measure`, `profile`) need the opposite: the objective tends to zero and only a
relative tolerance resolves it, so they use `trf_fit`, scipy's trust-region reflective Gauss-Newton on the
full Jacobian (fine at their moderate n).

Box bounds stop runaway fits (saturated tanh experts, cancelling linear experts): `bounds` is None
(unconstrained: the estimator the theory studies), a number B (every parameter in [-B, B]), a dict
{block: (low, high)} over the blocks "bias", "gate", "expert" (missing blocks unconstrained), or a pair
(lower, upper) of arrays in `MixingMeasure.to_vector` layout (what `closest_measure` uses). Starts are
clipped into the box.
"""

from __future__ import annotations

import functools
import time

import numpy as np
from scipy.optimize import least_squares, minimize
from threadpoolctl import ThreadpoolController

from ..measure import MixingMeasure, MoESpec
from ..model import Features, Scratch, check_inputs, forward, forward_stacked, regression_gradient, regression_vjp
from .result import FitResult, StartResult

_BLOCKS = ("bias", "gate", "expert")
KEEP = 4  # starts polished on the full sample after screening (module docstring)


@functools.cache
def _controller() -> ThreadpoolController:
    return ThreadpoolController()


def single_threaded_blas():
    """BLAS limited to one thread: scipy's L-BFGS-B calls it on tiny vectors (benchmarks/README.md). The
    controller is built once per process: scanning the loaded libraries costs about 2 ms per fit
    (benchmarks/bench_eval.py)."""
    return _controller().limit(limits=1, user_api="blas")


def screen_size(screen, n: int) -> int | None:
    """The subsample size of start screening: "auto" is max(2000, n // 10), None disables screening."""
    if not (screen is None or screen == "auto" or (isinstance(screen, (int, np.integer)) and screen > 0)):
        raise ValueError(f"screen must be 'auto', None or a positive integer, got {screen!r}")
    return max(2000, n // 10) if screen == "auto" else screen


class RSSObjective:
    """The scaled residual sum of squares and its gradient, over features chunked once per data set.

    Each evaluation scatters theta into the stacked parameters W (2k, m) of `moe_sim.model.Features`, runs
    the chunks through `forward_stacked` and `regression_vjp` in the objective's own `Scratch` arrays, and
    gathers the gradient back: no `MixingMeasure` is built and no chunk-sized array allocated.
    """

    def __init__(self, spec: MoESpec, X: np.ndarray, y: np.ndarray, k: int):
        self.spec, self.k, self.n = spec, k, len(y)
        feats = Features.of(spec, X)
        self.parts = [(part, y[s]) for s, part in feats.chunks()]
        self.index = feats.stack_index(k)
        self.scratch = Scratch()
        self.stacked_shape = (2 * k, feats.basis.shape[0])
        self.scale = 1.0 / (self.n * max(float(np.var(y)), 1e-12))

    def measure(self, theta: np.ndarray) -> MixingMeasure:
        return MixingMeasure.from_vector(theta, self.k, self.spec.q, self.spec.p)

    def rss(self, G: MixingMeasure) -> float:
        """Residual sum of squares of G on the sample (inf or NaN, without a warning, where it overflows)."""
        W = self.parts[0][0].stack(G)
        with np.errstate(all="ignore"):
            return float(sum(np.sum((y - forward_stacked(self.spec, W, part).f) ** 2) for part, y in self.parts))

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """F(theta) = RSS / (2 n var(y)) and its gradient; (inf, 0) where the parameters are not finite."""
        if not np.isfinite(theta).all():
            return np.inf, np.zeros_like(theta)
        W, M = np.zeros(self.stacked_shape), np.zeros(self.stacked_shape)
        W.ravel()[self.index] = theta
        total = 0.0
        with np.errstate(all="ignore"):
            for part, y in self.parts:
                fw = forward_stacked(self.spec, W, part, self.scratch)
                r = np.subtract(fw.f, y, out=self.scratch("r", y.shape))
                total += r @ r
                M += regression_vjp(self.spec, part, fw, r, self.scratch)
        g = M.ravel()[self.index] * self.scale
        value = 0.5 * total * self.scale
        if not (np.isfinite(value) and np.isfinite(g).all()):
            return np.inf, np.zeros_like(theta)
        return value, g


def box(spec: MoESpec, k: int, bounds) -> tuple[np.ndarray, np.ndarray] | None:
    """The (lower, upper) arrays of a `bounds` argument, in to_vector layout; None when unconstrained."""
    if bounds is None:
        return None
    size = {"bias": k, "gate": k * spec.q, "expert": k * spec.p}
    total = sum(size.values())
    if isinstance(bounds, dict):
        unknown = set(bounds) - set(_BLOCKS)
        if unknown:
            raise ValueError(f"bounds has unknown blocks {sorted(unknown)}; allowed: {', '.join(_BLOCKS)}")
        pairs = [np.broadcast_to(np.asarray(bounds.get(b, (-np.inf, np.inf)), float), (2,)) for b in _BLOCKS]
        low = np.concatenate([np.full(size[b], lo) for b, (lo, _) in zip(_BLOCKS, pairs)])
        high = np.concatenate([np.full(size[b], hi) for b, (_, hi) in zip(_BLOCKS, pairs)])
    elif np.isscalar(bounds):
        if not bounds > 0:
            raise ValueError(f"bounds must be positive when a number, got {bounds!r}")
        low, high = np.full(total, -float(bounds)), np.full(total, float(bounds))
    else:
        low, high = (np.broadcast_to(np.asarray(b, dtype=float), (total,)).copy() for b in bounds)
    if np.any(np.isnan(low)) or np.any(np.isnan(high)) or np.any(low > high):
        raise ValueError(f"bounds must satisfy low <= high everywhere, got {bounds!r}")
    return low, high


def _reason(res) -> tuple[bool, str]:
    if not np.isfinite(res.fun):
        return False, "non-finite objective (NaN or overflow)"
    if res.status == 1:
        return False, f"hit the iteration cap ({res.nit} iterations, {res.nfev} evaluations)"
    if res.status == 0:
        return True, ""
    # status 2: the line search cannot decrease F further: converged to machine precision.
    return True, f"stopped at machine precision: {res.message}"


def distinct_best(values: list[float], keep: int) -> list[int]:
    """Indices of the `keep` lowest finite values, preferring distinct optima (1e-7 relative apart)."""
    order = [i for i in np.argsort(values, kind="stable") if np.isfinite(values[i])]
    distinct = [i for j, i in enumerate(order) if j == 0 or values[i] > values[order[j - 1]] * (1 + 1e-7)]
    chosen = distinct[:keep]
    chosen += [i for i in order if i not in chosen][: keep - len(chosen)]
    return sorted(chosen)


_RESCALE_BELOW = 0.5


def _minimise(obj: RSSObjective, theta0: np.ndarray, lim, ftol_n: float, gtol: float, max_iter: int,
              maxcor: int):
    """L-BFGS-B with the n-aware tolerance, continued on F / F_end while a run's test was absolute.

    scipy's test (f_k - f_k+1) / max(|f_k|, |f_k+1|, 1) <= ftol is absolute when f < 1, and F = RSS / (2 n
    var(y)) is about sigma^2 / (2 var(y)) < 1/2: at low noise a run on F stops long before the relative
    precision ftol, and fits stall in the flat valley of an over-specified cell. So while the objective a run
    minimised ended below 1/2 (F itself for the first run), the run continues from there on F / F_end, at
    most twice: the test becomes relative, and the restart clears L-BFGS's memory. Continuing only below
    F = 1e-2, 3 of 50 samples (k = 3, n = 1e4) ended 0.02 to 0.14 above the truth's RSS (sigma^2 n = 100);
    below 1/2, 1 (0.14: a local optimum), for 15% more iterations (benchmarks/README.md).
    """
    options = {"ftol": max(ftol_n / obj.n, 1e-15), "gtol": gtol, "maxiter": max_iter, "maxfun": 2 * max_iter,
               "maxcor": maxcor}
    box_ = None if lim is None else list(zip(*lim))
    result = minimize(obj, theta0, jac=True, method="L-BFGS-B", options=options, bounds=box_)
    nit, factor = result.nit, 1.0
    for _ in range(2):
        if not (np.isfinite(result.fun) and 0 < result.fun * factor < _RESCALE_BELOW):
            break
        factor = 1.0 / result.fun

        def scaled(theta, factor=factor):
            value, grad = obj(theta)
            return value * factor, grad * factor

        again = minimize(scaled, result.x, jac=True, method="L-BFGS-B", options=options, bounds=box_)
        nit += again.nit
        again.fun /= factor
        result = again
    result.nit = nit
    return result


def lse_fit(
    spec: MoESpec,
    X,
    y,
    k: int,
    starts: list[tuple[str, MixingMeasure]],
    G_true: MixingMeasure | None = None,
    bounds=None,
    ftol_n: float = 1e-6,
    gtol: float = 1e-10,
    max_iter: int = 5000,
    maxcor: int = 20,
    screen: int | str | None = "auto",
    keep: int = KEEP,
    rng=None,
) -> FitResult:
    """Least-squares fit from each start, keeping the lowest residual sum of squares.

    Screening: when n > screen and there are more than `keep` starts, every start is first fitted on a random
    subsample of `screen` points and only the `keep` best distinct optima are polished on the full sample (the
    others are recorded with their full-sample RSS and reason "screened out"). screen="auto" is
    max(2000, n // 10); screen=None fits every start in full.
    objective is the RSS of the best start; truth_objective the RSS of G_true on the same sample (when
    given) and worse_than_truth flags a fit whose RSS exceeds it by more than a 1e-9 relative margin (a
    local optimum). A start that hits `max_iter` or ends non-finite is kept with converged=False and a reason.
    """
    t0 = time.perf_counter()
    X, y = check_inputs(spec, X, y)
    if spec.likelihood != "regression":
        raise ValueError(f"least squares needs likelihood='regression', got {spec.likelihood!r}")
    if not starts:
        raise ValueError("starts is empty: least squares needs at least one starting measure")
    for name, G in starts:
        spec.check_measure(G, f"start {name!r}")
        if G.k != k:
            raise ValueError(f"start {name!r} has {G.k} atoms, k={k}")
    if not isinstance(keep, (int, np.integer)) or keep < 1:
        raise ValueError(f"keep must be a positive integer, got {keep!r}")
    lim = box(spec, k, bounds)
    size = k * (1 + spec.q + spec.p)
    thetas = [G.to_vector()[:size] for _, G in starts]
    if lim is not None:
        thetas = [np.clip(theta, *lim) for theta in thetas]
    names = [name for name, _ in starts]
    prior_iter = [0] * len(starts)
    obj = RSSObjective(spec, X, y, k)
    records: list[StartResult | None] = [None] * len(starts)
    with single_threaded_blas():
        polish = range(len(starts))
        screen = screen_size(screen, obj.n)
        if screen is not None and obj.n > screen and len(starts) > keep:
            idx = np.random.default_rng(rng).choice(obj.n, screen, replace=False)
            sub = RSSObjective(spec, X[idx], y[idx], k)
            pre = [_minimise(sub, theta, lim, ftol_n, gtol, max_iter, maxcor) for theta in thetas]
            polish = distinct_best([r.fun for r in pre], keep)
            for i in sorted(set(range(len(starts))) - set(polish)):
                rss = obj.rss(obj.measure(pre[i].x)) if np.all(np.isfinite(pre[i].x)) else np.nan
                records[i] = StartResult(names[i], rss, int(pre[i].nit), False, f"screened out on {screen} points")
            for i in polish:
                thetas[i], prior_iter[i] = pre[i].x, int(pre[i].nit)
        best = None
        for i in polish:
            res = _minimise(obj, thetas[i], lim, ftol_n, gtol, max_iter, maxcor)
            ok, why = _reason(res)
            rss = 2.0 * res.fun / obj.scale if np.isfinite(res.fun) else np.nan
            records[i] = StartResult(names[i], rss, prior_iter[i] + int(res.nit), ok, why)
            if np.isfinite(rss) and (best is None or rss < best[0]):
                best = (rss, res, ok, why, records[i].n_iter)
        truth = None if G_true is None else obj.rss(spec.check_measure(G_true, "G_true"))
    runtime = time.perf_counter() - t0
    if best is None:
        return FitResult(None, np.nan, sum(r.n_iter for r in records), False, runtime, "lse",
                         "every start ended with a non-finite objective", records, truth)
    rss, res, ok, why, n_iter = best
    result = FitResult(obj.measure(res.x), rss, n_iter, ok, runtime, "lse", why, records)
    if truth is not None:
        result.compare_with_truth(truth)
    return result


def jacobian(spec: MoESpec, G: MixingMeasure, X) -> np.ndarray:
    """d f_G(x_t) / d theta, shape (n, P), columns in `MixingMeasure.to_vector` layout."""
    g = regression_gradient(spec, G, X)
    n = g["bias"].shape[1]
    return np.hstack([g["bias"].T, g["gate"].transpose(2, 0, 1).reshape(n, -1),
                      g["expert"].transpose(2, 0, 1).reshape(n, -1)])


def trf_fit(
    spec: MoESpec, X, y, k: int, starts: list[tuple[str, MixingMeasure]], bounds=None, max_nfev: int = 2000,
) -> FitResult:
    """Least squares by trust-region reflective Gauss-Newton (scipy least_squares) from each start.

    For noise-free designs: tolerances are relative (1e-15), so a fit whose residuals tend to zero is resolved
    to machine precision, and bounds (as in `lse_fit`) are honoured exactly. objective is the RSS.
    """
    t0 = time.perf_counter()
    X, y = check_inputs(spec, X, y)
    lim = box(spec, k, bounds)
    measure = lambda theta: MixingMeasure.from_vector(theta, k, spec.q, spec.p)  # noqa: E731
    records, best = [], None
    with single_threaded_blas(), np.errstate(all="ignore"):
        for name, G0 in starts:
            theta0 = G0.to_vector()[: k * (1 + spec.q + spec.p)]
            if lim is not None:
                span = np.where(np.isfinite(lim[1] - lim[0]), lim[1] - lim[0], 1.0)
                theta0 = np.clip(theta0, lim[0] + 1e-9 * span, lim[1] - 1e-9 * span)
            try:
                sol = least_squares(
                    lambda th: forward(spec, measure(th), Features.of(spec, X)).f - y, theta0,
                    jac=lambda th: jacobian(spec, measure(th), X), method="trf",
                    bounds=(-np.inf, np.inf) if lim is None else lim, ftol=1e-15, xtol=1e-15, gtol=1e-15,
                    max_nfev=max_nfev,
                )
            except ValueError as exc:  # non-finite parameters or residuals
                records.append(StartResult(name, np.nan, 0, False, f"non-finite: {exc}"))
                continue
            ok = sol.status > 0
            why = "" if ok else f"hit the evaluation cap ({max_nfev})"
            records.append(StartResult(name, 2.0 * sol.cost, int(sol.nfev), ok, why))
            if best is None or sol.cost < best.cost:
                best = sol
    runtime = time.perf_counter() - t0
    if best is None:
        return FitResult(None, np.nan, 0, False, runtime, "lse", "every start ended non-finite", records)
    ok = best.status > 0
    return FitResult(measure(best.x), 2.0 * best.cost, int(best.nfev), ok, runtime, "lse",
                     "" if ok else f"hit the evaluation cap ({max_nfev})", records)
