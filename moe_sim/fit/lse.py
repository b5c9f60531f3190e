"""Least squares for the regression MoE: L-BFGS-B on the analytic gradient, certified by a scale-free test.

The optimiser minimises F = RSS / (2 n var(y)). A fit is converged when the projected gradient of log F is
small: ||P grad F||_inf / F <= tol (P zeroes the components that push against an active bound). That
statistic is the gradient of the per-sample objective relative to its value, so it means the same at every
n and every noise level; a relative decrease of F, scipy's own test, does not (its threshold measured in
sigma^2 grows like n, THEORY.md s7). L-BFGS-B runs on F / F_ref with F_ref the value a previous run ended
at, so its projected-gradient test (pgtol) is this statistic, and is restarted until the test holds, the
line search reaches machine precision, or the iteration cap (`max_iter` over all restarts) runs out.

Noise-free designs (`closest_measure`, `profile`) use `trf_fit`, scipy's trust-region reflective
Gauss-Newton on the full Jacobian: the objective tends to zero there and only a relative tolerance resolves it.

Box bounds stop runaway fits (saturated tanh experts, cancelling linear experts, over-specified softmax fits
that run off towards tiny experts with large inner weights: benchmarks/softmax_box.py) and give the compact
parameter space the theory's least-squares estimator is defined on: `bounds` is None (unconstrained), a
number B (every parameter in [-B, B]), a dict {block: (low, high)} over the blocks "bias", "gate", "expert"
(missing blocks unconstrained), or a pair (lower, upper) of arrays in `MixingMeasure.to_vector` layout (what
`closest_measure` uses). Starts are clipped into the box. `expert_min` adds the expert-size half of a
parameter space without null atoms (THEORY.md s1; the weight half is a lower bound on the bias): per start, a
sign-split box (`null_free_box`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares, minimize

from ..backend import single_threaded_blas
from ..measure import MixingMeasure, MoESpec
from ..model import (
    Features, Scratch, check_inputs, forward, forward_stacked, pullback, regression_gradient, regression_vjp,
)
from .result import FitResult, StartResult

_BLOCKS = ("bias", "gate", "expert")


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
        self.sigma2_floor = sigma2_floor(y)

    def measure(self, theta: np.ndarray) -> MixingMeasure:
        return MixingMeasure.from_vector(theta, self.k, self.spec.q, self.spec.p)

    def rss(self, G: MixingMeasure) -> float:
        """Residual sum of squares of G on the sample (inf or NaN, without a warning, where it overflows)."""
        W = self.parts[0][0].stack(G)
        with np.errstate(all="ignore"):
            return float(sum(np.sum((y - forward_stacked(self.spec, W, part).f) ** 2) for part, y in self.parts))

    def residuals_and_jacobian(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """f_theta(x_t) - y_t (n,) and its Jacobian (n, P) in to_vector layout, for the Gauss-Newton polish."""
        W = np.zeros(self.stacked_shape)
        W.ravel()[self.index] = theta
        residuals, jacobians = [], []
        for part, y in self.parts:
            fw = forward_stacked(self.spec, W, part)
            D = pullback(self.spec, fw, 1.0)
            full = (D[:, None, :] * part.basis[None, :, :]).reshape(-1, part.n)
            residuals.append(fw.f - y)
            jacobians.append(full[self.index].T)
        return np.concatenate(residuals), np.vstack(jacobians)

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
    check_bounds(bounds)
    if bounds is None:
        return None
    size = {"bias": k, "gate": k * spec.q, "expert": k * spec.p}
    total = sum(size.values())
    if isinstance(bounds, dict):
        pairs = [np.broadcast_to(np.asarray(bounds.get(b, (-np.inf, np.inf)), float), (2,)) for b in _BLOCKS]
        low = np.concatenate([np.full(size[b], lo) for b, (lo, _) in zip(_BLOCKS, pairs)])
        high = np.concatenate([np.full(size[b], hi) for b, (_, hi) in zip(_BLOCKS, pairs)])
    elif np.isscalar(bounds):
        low, high = np.full(total, -float(bounds)), np.full(total, float(bounds))
    else:
        low, high = (np.broadcast_to(np.asarray(b, dtype=float), (total,)).copy() for b in bounds)
    if np.any(np.isnan(low)) or np.any(np.isnan(high)) or np.any(low > high):
        raise ValueError(f"bounds must satisfy low <= high everywhere, got {bounds!r}")
    return low, high


def null_free_box(spec: MoESpec, G: MixingMeasure, lim, expert_min: float) -> tuple[np.ndarray, np.ndarray]:
    """The box `lim` (None: unbounded) with each atom's expert size kept at least expert_min in magnitude.

    The coordinates are `ExpertFamily.floor_index` of G's atoms (the size, and a scaled expert's largest inner
    weight where its activation vanishes at 0); each keeps the sign G gives it (+ for 0) and is bounded to
    [expert_min, upper] or [lower, -expert_min], so sign diversity comes from the starts. A coordinate whose sign
    leaves no room in `lim` takes the other; a ValueError names expert_min where neither fits."""
    size = G.k * (1 + spec.q + spec.p)
    low, high = (np.full(size, -np.inf), np.full(size, np.inf)) if lim is None else (lim[0].copy(), lim[1].copy())
    floor = spec.expert_family.floor_index(G.expert)
    atoms, cols = np.repeat(np.arange(G.k), floor.shape[1]), floor.ravel()
    flat = G.k * (1 + spec.q) + atoms * spec.p + cols
    check_expert_room(expert_min, low[flat], high[flat])
    fits_positive, fits_negative = high[flat] >= expert_min, low[flat] <= -expert_min
    positive = np.where(G.expert[atoms, cols] >= 0, fits_positive, ~fits_negative)
    low[flat] = np.where(positive, np.maximum(low[flat], expert_min), low[flat])
    high[flat] = np.where(positive, high[flat], np.minimum(high[flat], -expert_min))
    return low, high


def check_expert_room(expert_min: float, low, high) -> None:
    """A ValueError naming expert_min where an interval [low, high] of an expert's size coordinate holds no value
    of magnitude >= expert_min."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    cramped = (high < expert_min) & (low > -expert_min)
    if np.any(cramped):
        raise ValueError(f"expert_min = {expert_min!r} is not allowed with expert bounds [{np.min(low[cramped])}, "
                         f"{np.max(high[cramped])}]: no expert size in them reaches it")


def check_bounds(bounds) -> None:
    """Validate the form of a `bounds` argument before any data is seen (`box` checks its sizes)."""
    if bounds is None:
        return
    if isinstance(bounds, dict):
        unknown = set(bounds) - set(_BLOCKS)
        if unknown:
            raise ValueError(f"bounds has unknown blocks {sorted(unknown)}; allowed: {', '.join(_BLOCKS)}")
        for block, pair in bounds.items():
            try:
                low, high = (float(v) for v in np.broadcast_to(np.asarray(pair, dtype=float), (2,)))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"bounds[{block!r}] = {pair!r} is not allowed: expected (low, high) numbers") from exc
            if np.isnan(low) or np.isnan(high) or low > high:
                raise ValueError(f"bounds[{block!r}] = {pair!r} is not allowed: expected low <= high")
    elif isinstance(bounds, bool) or not (np.isscalar(bounds) or isinstance(bounds, (tuple, list))):
        raise ValueError(f"bounds = {bounds!r} is not allowed: expected None, a positive number, a table of "
                         f"blocks ({', '.join(_BLOCKS)}) or a (lower, upper) pair of arrays")
    elif np.isscalar(bounds) and not (isinstance(bounds, (int, float)) and bounds > 0):
        raise ValueError(f"bounds = {bounds!r} is not allowed: a number must be positive")


def projected_gradient(theta: np.ndarray, grad: np.ndarray, lim) -> np.ndarray:
    """The gradient with the components that push against an active bound set to zero."""
    if lim is None:
        return grad
    blocked = ((theta <= lim[0]) & (grad > 0)) | ((theta >= lim[1]) & (grad < 0))
    return np.where(blocked, 0.0, grad)


@dataclass
class LocalFit:
    """Where one local search ended: parameters, scaled objective F, the gradient statistic, the test that
    certified it ("gradient", "decrement"; "" when none held) and why not."""

    theta: np.ndarray
    value: float
    statistic: float
    n_iter: int
    stop: str
    reason: str

    @property
    def converged(self) -> bool:
        return bool(self.stop)


_RESTARTS = 8  # L-BFGS-B runs per local fit (each restart clears its memory and rescales by F_ref)
DECREMENT_TOL = 1e-3  # Gauss-Newton decrement, in units of sigma^2 = RSS / n
EXACT_FIT = 1e-20  # sigma^2 below this share of mean(y^2) (residuals 1e-10 of the responses' scale) is an exact fit


def sigma2_floor(y: np.ndarray) -> float:
    """The smallest sigma^2 the certificate and the search tell apart: below it, residuals are rounding and
    stopping-rule noise of an exact fit (noise-free data), and two exact fits are one optimum."""
    return max(EXACT_FIT * float(np.mean(np.square(y))), 1e-300)


def _statistic(obj: RSSObjective, theta: np.ndarray, lim) -> tuple[float, float]:
    """(F, ||P grad F||_inf / F) at theta."""
    value, grad = obj(theta)
    return value, float(np.max(np.abs(projected_gradient(theta, grad, lim)), initial=0.0)) / max(value, 1e-300)


def gauss_newton_decrement(obj: RSSObjective, theta: np.ndarray, lim) -> float:
    """The RSS a Gauss-Newton step over the free parameters (those not held at a bound) would gain, in units of
    sigma^2 = RSS / n (at least `sigma2_floor`): the squared norm of the residuals' projection on the Jacobian's
    columns."""
    r, J = obj.residuals_and_jacobian(theta)
    if lim is not None:
        _, grad = obj(theta)
        free = projected_gradient(theta, grad, lim) == grad
        held = ((theta <= lim[0]) | (theta >= lim[1])) & ~free
        J = J[:, ~held]
    coef = np.linalg.lstsq(J, r, rcond=None)[0]
    fitted = J @ coef
    return float(fitted @ fitted) / max(float(r @ r) / len(r), obj.sigma2_floor)


def _certify(obj: RSSObjective, theta: np.ndarray, lim, tol: float, nit: int, why: str,
             value: float, statistic: float) -> LocalFit:
    """The fit at theta (F = value, gradient statistic as `_statistic` gives them), certified by the gradient
    test or else by the Gauss-Newton decrement."""
    if not np.isfinite(value):
        return LocalFit(theta, np.nan, np.nan, nit, "", "non-finite objective (NaN or overflow)")
    if statistic <= tol:
        return LocalFit(theta, value, statistic, nit, "gradient", "")
    decrement = gauss_newton_decrement(obj, theta, lim)
    if decrement <= DECREMENT_TOL:
        return LocalFit(theta, value, statistic, nit, "decrement", "")
    return LocalFit(theta, value, statistic, nit, "",
                    f"not certified after {nit} iterations ({why}): ||P grad F|| / F = {statistic:.2e} > tol = "
                    f"{tol:.0e} and Gauss-Newton decrement {decrement:.2e} sigma^2 > {DECREMENT_TOL:.0e}")


def minimise(obj: RSSObjective, theta0: np.ndarray, lim, tol: float, max_iter: int, maxcor: int) -> LocalFit:
    """L-BFGS-B on F / F_ref until ||P grad F||_inf / F <= tol (module docstring); where the line search
    reaches machine precision first, a Gauss-Newton polish; certified by `_certify`."""
    box_ = None if lim is None else list(zip(*lim))
    theta, nit, ref, value = theta0, 0, 1.0, np.inf
    for _ in range(_RESTARTS):
        def scaled(t, ref=ref):
            v, g = obj(t)
            return v / ref, g / ref

        budget = max(max_iter - nit, 1)
        options = {"ftol": 0.0, "gtol": tol * (value / ref if np.isfinite(value) else 1.0), "maxcor": maxcor,
                   "maxiter": budget, "maxfun": 2 * budget}
        res = minimize(scaled, theta, jac=True, method="L-BFGS-B", options=options, bounds=box_)
        theta, nit = res.x, nit + int(res.nit)
        value, statistic = _statistic(obj, theta, lim)
        if not np.isfinite(value) or statistic <= tol:
            return _certify(obj, theta, lim, tol, nit, "", value, statistic)
        if nit >= max_iter:
            return _certify(obj, theta, lim, tol, nit, "iteration cap", value, statistic)
        if res.status != 0 or "REDUCTION" in str(res.message):  # the line search is at machine precision
            return _gauss_newton(obj, theta, lim, tol, nit, value, statistic)
        ref = value
    return _certify(obj, theta, lim, tol, nit, f"{_RESTARTS} L-BFGS-B restarts", value, statistic)


def _gauss_newton(obj: RSSObjective, theta: np.ndarray, lim, tol: float, nit: int, value: float,
                  statistic: float) -> LocalFit:
    """The second-order polish of a fit where L-BFGS-B reached machine precision before the gradient test:
    trust-region reflective Gauss-Newton (scipy least_squares, method "trf", bounded or not) on the residuals,
    kept only where it lowers F. Not method "lm" (MINPACK) for unbounded fits: given bit-identical residuals and
    Jacobians it proposed different next points from one call to the next, so sweeps did not rerun
    bit-identically (`benchmarks/determinism.py`)."""
    bounds = (-np.inf, np.inf) if lim is None else lim
    start = theta
    if lim is not None:
        span = np.where(np.isfinite(lim[1] - lim[0]), lim[1] - lim[0], 1.0)
        start = np.clip(theta, lim[0] + 1e-12 * span, lim[1] - 1e-12 * span)
    last = {}

    def evaluate(t):  # least_squares asks for the residuals, then the Jacobian, at the same point
        if last.get("t") is None or not np.array_equal(last["t"], t):
            last.update(t=t.copy(), value=obj.residuals_and_jacobian(t))
        return last["value"]

    sol = least_squares(lambda t: evaluate(t)[0], start, jac=lambda t: evaluate(t)[1],
                        method="trf", bounds=bounds, x_scale="jac", ftol=1e-15, xtol=1e-15,
                        gtol=1e-15, max_nfev=200)
    polished = _statistic(obj, sol.x, lim)
    if polished[0] < value:
        theta, (value, statistic) = sol.x, polished
    return _certify(obj, theta, lim, tol, nit + int(sol.nfev), "after a Gauss-Newton polish", value, statistic)


def solve(spec: MoESpec, X, y, k: int, starts: list[tuple[str, MixingMeasure]], *, bounds, tol: float,
          max_iter: int, maxcor: int, expert_min: float = 0.0) -> list[StartResult]:
    """A local least-squares fit from each start, as `StartResult`s whose `measure` is the end point (None
    where non-finite) and objective the RSS. With expert_min > 0 each start is projected into its
    `null_free_box` and fitted there."""
    lim = box(spec, k, bounds)
    size = k * (1 + spec.q + spec.p)
    obj = RSSObjective(spec, X, y, k)
    records = []
    with single_threaded_blas(), np.errstate(all="ignore"):
        for name, G in starts:
            theta = G.to_vector()[:size]
            start_lim = null_free_box(spec, G, lim, expert_min) if expert_min > 0 else lim
            try:
                end = minimise(obj, theta if start_lim is None else np.clip(theta, *start_lim), start_lim, tol,
                               max_iter, maxcor)
            except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:  # a row, never a crash
                end = LocalFit(theta, np.nan, np.nan, 0, "", f"{type(exc).__name__}: {exc}")
            finite = np.isfinite(end.value)
            records.append(StartResult(
                name, 2.0 * end.value / obj.scale if finite else np.nan, end.n_iter, end.converged, end.reason,
                end.statistic, obj.measure(end.theta) if finite else None, end.stop,
            ))
    return records


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
    to machine precision, and bounds (as in `LeastSquares`) are honoured exactly. objective is the RSS.
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
