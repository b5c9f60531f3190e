"""EM for the softmax-gated Gaussian mixture of experts (paper a), experts linear in their parameters.

One iteration is an E-step (`moe_sim.model.responsibilities`, in log space) and a generalised M-step:

- experts: weighted least squares per atom over `Features.psi`, batched over atoms, with a ridge that pulls
  towards the current expert (so an atom with no responsibility stays where it is instead of crashing);
  variances are the weighted mean squared residuals, floored at `var_floor`;
- gate: one Newton (IRLS) step on the softmax log-likelihood with the responsibilities as soft labels, the
  last atom pinned at zero (the softmax translation), halved until the expected complete log-likelihood
  does not decrease.

Each block's part of the expected complete log-likelihood never decreases, so the log-likelihood never does
(up to rounding). Every per-sample product the M-step needs is a linear statistic of the responsibilities:
it is read off one (k x n) @ (n x r) product against data-only rows computed once per data set
(`_Design`), so an iteration costs the E-step, that product and one gate evaluation per Newton trial.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..measure import MixingMeasure, MoESpec
from ..model import Features, check_inputs, responsibilities
from .result import FitResult, StartResult

Array = np.ndarray
_RIDGE = 1e-9  # relative ridge on the (p x p) expert and the gate Newton systems
_MAX_HALVINGS = 40
# Samples per chunk: bounds the (k x chunk) temporaries for large n. Measured at n = 1e5 (k = 2 to 4), chunks
# below 16384 samples cost more in Python overhead than they gain in cache; 32768 is as fast as no chunking.
_CHUNK = 32768


@dataclass(frozen=True)
class _Chunk:
    """A contiguous block of samples with its data-only rows (see `_Design`)."""

    feats: Features
    y: Array
    rows: Array
    gate_pairs: Array


@dataclass(frozen=True)
class _Design:
    """Data-only rows whose responsibility- or gate-weighted sums are the M-step's statistics, in chunks.

    rows (r, n): [1; phi (q rows); psi_a psi_b for a <= b; psi y (p rows); y^2]; the first m = q + 1 rows are
    the gate's design x = [1; phi]. gate_pairs holds x_a x_b (a <= b), for the gate's Newton matrix. The
    samples are split into cache-sized chunks, so the (k x chunk) temporaries of an iteration stay in cache.
    """

    chunks: list[_Chunk]
    q: int
    p: int
    expert_ridge: float

    @classmethod
    def of(cls, spec: MoESpec, X: Array, y: Array, chunk: int = _CHUNK) -> "_Design":
        feats = Features.of(spec, X)
        q, p = feats.phi.shape[0], feats.psi.shape[0]
        x = np.vstack([np.ones(feats.n), feats.phi])
        ia, ib = _triu(p)
        ga, gb = _triu(q + 1)
        psi = feats.psi
        rows = np.vstack([x, psi[ia] * psi[ib], psi * y, y * y])
        pairs = x[ga] * x[gb]
        chunks = [
            _Chunk(part, y[s], np.ascontiguousarray(rows[:, s]), np.ascontiguousarray(pairs[:, s]))
            for s, part in feats.chunks(chunk)
        ]
        ridge = _RIDGE * float(np.einsum("pn,pn->", psi, psi)) / p
        return cls(chunks, q, p, ridge)

    @property
    def m(self) -> int:
        return self.q + 1


@lru_cache(maxsize=None)
def _triu(size: int) -> tuple[Array, Array]:
    """np.triu_indices(size), cached: it is needed several times per iteration and costs more than the maths."""
    index = np.triu_indices(size)
    for arr in index:
        arr.setflags(write=False)
    return index


def _symmetric(flat: Array, size: int) -> Array:
    """(..., size (size + 1) / 2) upper-triangle entries -> (..., size, size) symmetric matrices."""
    ia, ib = _triu(size)
    out = np.empty(flat.shape[:-1] + (size, size))
    out[..., ia, ib] = flat
    out[..., ib, ia] = flat
    return out


def _e_step(spec: MoESpec, G: MixingMeasure, design: _Design) -> tuple[float, Array]:
    """Log-likelihood and the responsibility-weighted sums of the design rows, T (k, r)."""
    ll, T = 0.0, 0.0
    for c in design.chunks:
        resp, log_dens = responsibilities(spec, G, c.feats, c.y)
        ll += log_dens.sum()
        T += resp @ c.rows.T
    return float(ll), T


@dataclass
class _Gate:
    """Gate parameters theta = [bias, gate] (k, m) with sum_t logsumexp_i z_it and gate-weighted sums of the
    x_a x_b pairs: single (k, pairs) = sum_t g_i x_a x_b, cross (K (K + 1) / 2, pairs) = sum_t g_i g_j x_a x_b
    for i <= j < K = k - 1 (the free atoms)."""

    theta: Array
    lse_sum: float
    single: Array
    cross: Array

    @classmethod
    def at(cls, theta: Array, design: _Design) -> "_Gate":
        K = theta.shape[0] - 1
        ia, ib = _triu(K)
        lse_sum, single, cross = 0.0, 0.0, 0.0
        for c in design.chunks:
            z = theta[:, 1:] @ c.feats.phi
            z += theta[:, :1]
            zmax = z.max(axis=0)
            z -= zmax
            np.exp(z, out=z)
            total = z.sum(axis=0)
            z /= total
            lse_sum += zmax.sum() + np.log(total).sum()
            single += z @ c.gate_pairs.T
            cross += (z[ia] * z[ib]) @ c.gate_pairs.T
        return cls(theta, float(lse_sum), single, cross)


def _expert_step(T: Array, design: _Design, expert: Array, var: Array, var_floor: float) -> tuple[Array, Array]:
    """Weighted least squares per atom from the statistics T (k, r); ridge towards the current experts."""
    m, p = design.m, design.p
    n_pairs = p * (p + 1) // 2
    resp_sum = T[:, 0]
    A = _symmetric(T[:, m : m + n_pairs], p)
    b = T[:, m + n_pairs : m + n_pairs + p]
    yy = T[:, -1]
    lam = design.expert_ridge
    new = np.linalg.solve(A + lam * np.eye(p), (b + lam * expert)[:, :, None])[:, :, 0]
    ssr = yy - 2.0 * np.einsum("kp,kp->k", new, b) + np.einsum("kp,kpq,kq->k", new, A, new)
    tiny = 1e-12 * T[:, 0].sum()
    new_var = np.where(resp_sum > tiny, np.maximum(ssr, 0.0) / np.maximum(resp_sum, tiny), var)
    return new, np.maximum(new_var, var_floor)


def _gate_step(T: Array, design: _Design, gate: _Gate) -> _Gate:
    """One Newton step with halving on sum_t sum_i r_it log g_i(x_t); the last atom stays at zero.

    The expected complete log-likelihood's gate part is <theta, S> - sum_t logsumexp(z_t), S = resp @ x^T, so
    only the log-partition is evaluated per trial. Returns the current gate when no trial improves.
    """
    k, m = gate.theta.shape
    K = k - 1
    if K == 0:
        return gate
    S = T[:, :m]
    grad = (S[:K] - gate.single[:K, :m]).ravel()  # x_0 x_a = x_a: the first m pairs are x itself
    cross = np.zeros((K, K, gate.cross.shape[1]))
    ia, ib = _triu(K)
    cross[ia, ib] = gate.cross
    cross[ib, ia] = gate.cross
    w = -cross
    w[np.arange(K), np.arange(K)] += gate.single[:K]
    F = _symmetric(w, m).transpose(0, 2, 1, 3).reshape(K * m, K * m)
    F += (_RIDGE * np.trace(F) / (K * m) + 1e-300) * np.eye(K * m)
    delta = np.linalg.solve(F, grad)
    q_old = float(np.einsum("km,km->", gate.theta, S)) - gate.lse_sum
    if grad @ delta <= 1e-14 * max(abs(q_old), 1.0):  # Newton decrement at rounding level: at the optimum
        return gate
    delta = delta.reshape(K, m)
    step = 1.0
    for _ in range(_MAX_HALVINGS):
        trial = gate.theta.copy()
        trial[:K] += step * delta
        new = _Gate.at(trial, design)
        if float(np.einsum("km,km->", trial, S)) - new.lse_sum >= q_old:
            return new
        step *= 0.5
    return gate


@dataclass
class _Path:
    """One start's run: final measure, its log-likelihood, the per-iteration log-likelihoods."""

    measure: MixingMeasure
    loglik: float
    trace: Array
    n_iter: int
    converged: bool
    reason: str


def _run(spec: MoESpec, design: _Design, G0: MixingMeasure, tol, max_iter, var_floor) -> _Path:
    """EM from G0 (translated so its last atom's gate is zero; variances floored)."""
    theta = np.column_stack([G0.bias, G0.gate])
    theta = theta - theta[-1]
    expert, var = G0.expert.copy(), np.maximum(G0.var, var_floor)
    gate = _Gate.at(theta, design)
    G = MixingMeasure(theta[:, 0], theta[:, 1:], expert, var)
    trace: list[float] = []
    best = None
    reason, converged = "max_iter", False
    for it in range(max_iter + 1):
        ll, T = _e_step(spec, G, design)
        if not np.isfinite(ll):
            reason = f"non-finite log-likelihood at iteration {it}"
            break
        trace.append(ll)
        best = (G, ll, it)
        if it and abs(ll - trace[-2]) <= tol * max(abs(trace[-2]), 1.0):
            reason, converged = "", True
            break
        if it == max_iter:
            break
        try:
            expert, var = _expert_step(T, design, expert, var, var_floor)
            gate = _gate_step(T, design, gate)
        except np.linalg.LinAlgError as exc:
            reason = f"singular M-step at iteration {it}: {exc}"
            break
        if not (np.all(np.isfinite(gate.theta)) and np.all(np.isfinite(expert)) and np.all(np.isfinite(var))):
            reason = f"non-finite parameters after the M-step of iteration {it}"
            break
        G = MixingMeasure(gate.theta[:, 0], gate.theta[:, 1:], expert, var)
    if best is None:
        return _Path(G, -np.inf, np.asarray(trace), 0, False, reason)
    G, ll, it = best
    return _Path(G, ll, np.asarray(trace), it, converged, reason)


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_starts(spec: MoESpec, k, starts) -> list[tuple[str, MixingMeasure]]:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    starts = list(starts)
    if not starts:
        raise ValueError("starts is empty: give at least one (name, MixingMeasure) pair")
    for i, start in enumerate(starts):
        if not (
            isinstance(start, tuple) and len(start) == 2 and isinstance(start[0], str)
            and isinstance(start[1], MixingMeasure)
        ):
            raise ValueError(f"starts[{i}] must be a (name, MixingMeasure) pair, got {start!r}")
        spec.check_measure(start[1], f"starts[{i}] measure")
        if start[1].k != k:
            raise ValueError(f"starts[{i}] ({start[0]!r}) has {start[1].k} atoms, but k={k}")
    return starts


def em_fit(
    spec: MoESpec,
    X,
    y,
    k: int,
    starts,
    tol: float = 1e-6,
    max_iter: int = 2000,
    var_floor: float = 1e-6,
    rng=None,
    *,
    trace: bool = False,
) -> FitResult:
    """Maximum likelihood for the softmax Gaussian MoE by EM, best of `starts` (a list of (name, measure)).

    Stops when the relative log-likelihood change is below `tol` (relative to max(|loglik|, 1)), or after
    `max_iter` iterations (converged False, reason "max_iter"); a NaN stops a start with a reason, never an
    exception. Start variances below `var_floor` are raised to it. The returned measure has its last atom's
    (bias, gate) pinned at zero; `objective` is its total log-likelihood (higher is better), n_iter the number
    of EM iterations. EM draws nothing: `rng` is accepted for the fitters' common signature. With trace=True
    the result carries `trace`, a list (one per start) of per-iteration log-likelihood arrays (entry i is the
    log-likelihood after i iterations).
    """
    if spec.likelihood != "gaussian" or spec.gate_name != "softmax":
        raise ValueError(
            f"em_fit needs likelihood='gaussian' and gate='softmax', got likelihood={spec.likelihood!r}, "
            f"gate={spec.gate_name!r}"
        )
    if not spec.expert_family.linear_in_params:
        raise ValueError(
            f"em_fit needs experts linear in their parameters (linear, polynomial, constant), got "
            f"expert={spec.expert_name!r}"
        )
    if not (_is_real(tol) and np.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a non-negative number, got {tol!r}")
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative integer, got {max_iter!r}")
    if not (_is_real(var_floor) and np.isfinite(var_floor) and var_floor > 0):
        raise ValueError(f"var_floor must be a positive number, got {var_floor!r}")
    X, y = check_inputs(spec, X, y)
    starts = _check_starts(spec, k, starts)
    t0 = time.perf_counter()
    with np.errstate(all="ignore"):
        design = _Design.of(spec, X, y)
        paths = [_run(spec, design, G0, tol, max_iter, var_floor) for _, G0 in starts]
    best = max(range(len(paths)), key=lambda i: paths[i].loglik)
    path = paths[best]
    result = FitResult(
        measure=path.measure if np.isfinite(path.loglik) else None,
        objective=path.loglik,
        n_iter=path.n_iter,
        converged=path.converged,
        runtime_s=time.perf_counter() - t0,
        method="em",
        reason=path.reason,
        starts=[StartResult(name, p.loglik, p.n_iter, p.converged, p.reason) for (name, _), p in zip(starts, paths)],
    )
    if trace:
        result.trace = [p.trace for p in paths]
    return result
