"""Least squares by Levenberg-Marquardt, batched over (replicate, start), written once for every array backend.

The work that grows with n, the residual sum of squares and the triangular factor R of [J, r] of each problem
(J the Jacobian of f in the parameters, r the residuals), runs on the backend (`moe_sim.backend`: NumPy, torch
on the CPU, torch on a GPU) in chunks of samples, for every problem of the batch at once. The Levenberg-Marquardt
logic, a few (P, P) systems per problem, runs in NumPy on the host, identical for every backend: the backend says
where the arrays live, not which algorithm runs, so the same starts reach the same optimum on every backend (to
rounding; tested to 1e-9 relative).

Each problem is certified like `moe_sim.fit.lse`'s fits, by the scale-free tests: the projected gradient of
F = RSS / (2 n var y) relative to F (||P grad F||_inf / F <= tol), or else the Gauss-Newton decrement over the
free parameters (what `lse.gauss_newton_decrement` computes from J, here from R), below `lse.DECREMENT_TOL`
sigma^2. Bounds are a box per problem: steps are projected into it, and parameters held at a bound by the
gradient are left out of the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import Backend, get_backend, single_threaded_blas
from ..measure import MixingMeasure, MoESpec
from ..model import Features, sample_slices
from .lse import DECREMENT_TOL, LocalFit, box, null_free_box, sigma2_floor
from .result import StartResult

_LAMBDA0, _LAMBDA_MAX = 1e-3, 1e16  # Levenberg damping: start, and where a problem counts as stalled


def check_spec(spec: MoESpec) -> None:
    """A ValueError unless the gate and the expert family have array-backend forms (`Gate.values`,
    `ExpertFamily.activation_nx`)."""
    if not spec.gate_family.batched:
        raise ValueError(f"solver = 'lm' does not support gate {spec.gate_family.name!r} (NumPy only); use "
                         f"solver = 'lbfgsb', or a softmax or sigmoid gate")
    if spec.expert_family.activation_nx is None:
        raise ValueError(f"solver = 'lm' needs ExpertFamily.activation_nx, which expert {spec.expert_family.name!r} "
                         f"lacks; give the family one, or use solver = 'lbfgsb'")


@dataclass
class Batch:
    """R data sets of the same size on a backend, and P = k (1 + q + p) parameters per problem."""

    nx: Backend
    spec: MoESpec
    k: int
    phi: object  # gate features (R, q, n), divided by the temperature
    psi: object  # expert features (R, r, n)
    y: object  # responses (R, n)
    y_host: np.ndarray

    @classmethod
    def of(cls, nx: Backend, spec: MoESpec, Xs, ys, k: int) -> "Batch":
        feats = [Features.of(spec, X) for X in Xs]
        phi, psi, y = np.stack([f.phi for f in feats]), np.stack([f.psi for f in feats]), np.stack(ys)
        return cls(nx, spec, k, nx.asarray(phi), nx.asarray(psi), nx.asarray(y), y)

    @property
    def n(self) -> int:
        return self.y_host.shape[1]

    def _chunks(self, batch: int, P: int):
        return sample_slices(self.n, self.nx.samples_per_chunk(batch * P))

    def _forward(self, theta, phi, psi):
        """Gates g, activations a and their slopes, expert values h (batch, k, c), f (batch, c), outer scales."""
        nx, spec, k = self.nx, self.spec, self.k
        b, q, p = theta.shape[0], spec.q, spec.p
        bias, beta = theta[:, :k], theta[:, k : k + k * q].reshape(b, k, q)
        eta = theta[:, k + k * q :].reshape(b, k, p)
        z = bias[:, :, None] + nx.matmul(beta, phi)
        scale = eta[:, :, :1] if spec.expert_family.scaled else None
        a, slope = spec.expert_family.activation_nx(nx, nx.matmul(eta if scale is None else eta[:, :, 1:], psi))
        h = a if scale is None else scale * a
        g = spec.gate_family.values(nx, z)
        return g, a, slope, h, nx.sum(g * h, axis=1), scale

    def rss(self, theta: np.ndarray, rep: np.ndarray) -> np.ndarray:
        """The residual sum of squares of each problem (theta (b, P) on data sets rep (b,))."""
        nx = self.nx
        t = nx.asarray(theta)
        total = 0.0
        for s in self._chunks(len(rep), 1):
            f = self._forward(t, nx.take(self.phi[:, :, s], rep), nx.take(self.psi[:, :, s], rep))[4]
            r = f - nx.take(self.y[:, s], rep)
            total = total + nx.sum(r * r, axis=1)
        return nx.to_numpy(total)

    def triangular_factor(self, theta: np.ndarray, rep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(RSS (b,), R (b, P + 1, P + 1)) of each problem: R is the triangular factor of [J, r] (J = d f / d theta
        in to_vector layout, r = f - y), built chunk by chunk (R of [R_previous; next chunk]), so that it holds
        J's small singular values to working precision, where J^T J would square them away."""
        nx, spec, k = self.nx, self.spec, self.k
        t = nx.asarray(theta)
        b = len(rep)
        rss, R = 0.0, None
        for s in self._chunks(b, theta.shape[1] + 1):
            phi, psi = nx.take(self.phi[:, :, s], rep), nx.take(self.psi[:, :, s], rep)
            g, a, slope, h, f, scale = self._forward(t, phi, psi)
            dz = spec.gate_family.logit_derivative(nx, g, h, f)
            du = g * slope if scale is None else g * slope * scale
            c = f.shape[1]
            gate = (dz[:, :, None, :] * phi[:, None, :, :]).reshape(b, k * spec.q, c)
            expert = du[:, :, None, :] * psi[:, None, :, :]
            if scale is not None:
                expert = nx.concat([(g * a)[:, :, None, :], expert], axis=2)
            r = f - nx.take(self.y[:, s], rep)
            block = nx.swap_last(nx.concat([dz, gate, expert.reshape(b, k * spec.p, c), r[:, None, :]], axis=1))
            R = nx.qr_r(block if R is None else nx.concat([R, block], axis=1))
            rss = rss + nx.sum(r * r, axis=1)
        return nx.to_numpy(rss), nx.to_numpy(R)


def _free(theta, grad, low, high) -> np.ndarray:
    """Parameters not held at a bound by the gradient (the projected gradient's support)."""
    return ~(((theta <= low) & (grad > 0)) | ((theta >= high) & (grad < 0)))


def _decrement(R, free, sigma2, n: int) -> np.ndarray:
    """The RSS a Gauss-Newton step over the free parameters would gain, in units of sigma2 (b,): the squared norm
    of r's projection on the free columns of J, from the factor R of [J, r]. J's singular values (those of R's
    columns) below eps max(n, P) of the largest are dropped, as `lse.gauss_newton_decrement`'s lstsq drops them."""
    P = R.shape[2] - 1
    U, S, _ = np.linalg.svd(R[:, :P, :P] * free[:, None, :])
    keep = S > S[:, :1] * (np.finfo(float).eps * max(n, P))
    proj = np.einsum("bpq,bp->bq", U, R[:, :P, P])
    return np.sum(np.where(keep, proj**2, 0.0), axis=1) / sigma2


def _step(JJ, grad, free, lam) -> np.ndarray:
    """The damped Gauss-Newton step -(J^T J + lam max(diag J^T J) I)^-1 g over the free parameters. Levenberg's
    uniform damping: with Marquardt's diag(J^T J) scaling, fits crawled along the flat valleys of over-specified
    cells until the iteration cap (sigmoid tanh, k = 3), where this damping certifies them."""
    P = JJ.shape[1]
    damping = lam * np.max(np.diagonal(JJ, axis1=1, axis2=2), axis=1) + 1e-300
    A = JJ + damping[:, None, None] * np.eye(P)
    mask = free[:, :, None] & free[:, None, :]
    A = np.where(mask, A, np.eye(P))
    return -np.linalg.solve(A, np.where(free, grad, 0.0)[:, :, None])[:, :, 0]


def _gradient_and_gram(R) -> tuple[np.ndarray, np.ndarray]:
    """J^T r (b, P) and J^T J (b, P, P) from the factor R of [J, r]."""
    P = R.shape[2] - 1
    top = R[:, :P, :P]
    return np.einsum("bip,bi->bp", top, R[:, :P, P]), np.einsum("bip,biq->bpq", top, top)


def minimise_batch(batch: Batch, theta0: np.ndarray, rep: np.ndarray, low: np.ndarray, high: np.ndarray,
                   tol: float, max_iter: int) -> list[LocalFit]:
    """Levenberg-Marquardt from each row of theta0 (b, P), on data set rep[i], in the box [low[i], high[i]],
    until certified (module docstring), stalled, or max_iter iterations; one `LocalFit` per problem, whose value
    is the RSS."""
    b = len(rep)
    floor = np.array([sigma2_floor(y) for y in batch.y_host])[rep]
    theta = np.clip(theta0, low, high)
    lam, nu = np.full(b, _LAMBDA0), np.full(b, 2.0)
    fits: list[LocalFit | None] = [None] * b
    active = np.arange(b)
    rss, R = batch.triangular_factor(theta, rep)
    for iteration in range(max_iter + 1):
        finite = np.isfinite(rss) & np.all(np.isfinite(R), axis=(1, 2))
        R = np.where(finite[:, None, None], R, 0.0)
        grad, JJ = _gradient_and_gram(R)
        free = _free(theta[active], grad, low[active], high[active])
        statistic = 2.0 * np.max(np.abs(np.where(free, grad, 0.0)), axis=1) / np.maximum(rss, 1e-300)
        decrement = _decrement(R, free, np.maximum(rss / batch.n, floor[active]), batch.n)
        stalled = lam[active] > _LAMBDA_MAX
        for j, i in enumerate(active):
            why = ("non-finite objective (NaN or overflow)" if not finite[j]
                   else "" if statistic[j] <= tol or decrement[j] <= DECREMENT_TOL
                   else f"the damping reached {_LAMBDA_MAX:.0e}" if stalled[j]
                   else "iteration cap" if iteration == max_iter else None)
            if why is None:
                continue
            stop = "" if why else ("gradient" if statistic[j] <= tol else "decrement")
            if why and finite[j]:
                why = (f"not certified after {iteration} iterations ({why}): ||P grad F|| / F = {statistic[j]:.2e} > "
                       f"tol = {tol:.0e} and Gauss-Newton decrement {decrement[j]:.2e} sigma^2 > {DECREMENT_TOL:.0e}")
            fits[i] = LocalFit(theta[i].copy(), rss[j] if finite[j] else np.nan,
                               statistic[j] if finite[j] else np.nan, iteration, stop, why)
        keep = np.array([fits[i] is None for i in active], dtype=bool)
        if not keep.any():
            break
        active, rss, R, grad, JJ, free = active[keep], rss[keep], R[keep], grad[keep], JJ[keep], free[keep]
        lam_a = lam[active]
        step = _step(JJ, grad, free, lam_a)
        trial = np.clip(theta[active] + step, low[active], high[active])
        moved = trial - theta[active]
        trial_rss = batch.rss(trial, rep[active])
        predicted = -(np.einsum("bp,bp->b", grad, moved) + 0.5 * np.einsum("bp,bpq,bq->b", moved, JJ, moved))
        gain = 0.5 * (rss - trial_rss)
        accept = np.isfinite(trial_rss) & (gain > 0)
        rho = np.where(accept, gain / np.maximum(predicted, 1e-300), 0.0)
        lam[active] = np.where(accept, lam_a * np.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3),
                               lam_a * nu[active])
        nu[active] = np.where(accept, 2.0, 2.0 * nu[active])
        theta[active] = np.where(accept[:, None], trial, theta[active])
        if accept.any():
            rss[accept], R[accept] = batch.triangular_factor(theta[active[accept]], rep[active[accept]])
    return fits


def solve_batch(spec: MoESpec, Xs, ys, k: int, starts, *, bounds=None, tol: float = 1e-7, max_iter: int = 500,
                expert_min: float = 0.0, backend: str = "numpy") -> list[list[StartResult]]:
    """Least squares for R data sets (Xs, ys of the same n) from starts[r], a list of (name, MixingMeasure) per
    data set, as one batch: a list of `StartResult`s per data set, objective the RSS (`lse.solve`'s record)."""
    check_spec(spec)
    nx = get_backend(backend)
    batch = Batch.of(nx, spec, [np.asarray(X, dtype=float) for X in Xs], [np.asarray(y, float) for y in ys], k)
    lim = box(spec, k, bounds)
    size = k * (1 + spec.q + spec.p)
    rep, thetas, lows, highs, names = [], [], [], [], []
    for r, data_starts in enumerate(starts):
        for name, G in data_starts:
            start_lim = null_free_box(spec, G, lim, expert_min) if expert_min > 0 else lim
            low, high = (np.full(size, -np.inf), np.full(size, np.inf)) if start_lim is None else start_lim
            rep.append(r), thetas.append(G.to_vector()[:size]), lows.append(low), highs.append(high), names.append(name)
    with np.errstate(all="ignore"), single_threaded_blas(), nx.single_threaded():
        fits = minimise_batch(batch, np.array(thetas), np.array(rep), np.array(lows), np.array(highs), tol, max_iter)
    records: list[list[StartResult]] = [[] for _ in starts]
    for r, name, end in zip(rep, names, fits):
        finite = np.isfinite(end.value)
        measure = MixingMeasure.from_vector(end.theta, k, spec.q, spec.p) if finite else None
        records[r].append(StartResult(name, end.value, end.n_iter, end.converged, end.reason, end.statistic,
                                      measure, end.stop))
    return records


def solve(spec: MoESpec, X, y, k: int, starts, **options) -> list[StartResult]:
    """`solve_batch` on one data set, as `lse.solve` gives it to the estimator: a failure of the batch is a
    record per start, never an exception."""
    try:
        return solve_batch(spec, [X], [y], k, [starts], **options)[0]
    except (ValueError, ArithmeticError, np.linalg.LinAlgError, RuntimeError) as exc:
        return [StartResult(name, np.nan, 0, False, f"{type(exc).__name__}: {exc}") for name, _ in starts]
