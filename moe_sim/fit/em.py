"""EM for the softmax-gated Gaussian mixture of experts (paper a), experts linear in their parameters.

One iteration is an E-step (responsibilities in log space) and a generalised M-step:

- experts: weighted least squares per atom over `Features.psi`, batched over atoms, with a ridge that pulls
  towards the current expert (so an atom with no responsibility stays where it is instead of crashing);
  variances are the weighted mean squared residuals, floored at `var_floor`;
- gate: one Newton (IRLS) step on the softmax log-likelihood with the responsibilities as soft labels, the
  last atom pinned at zero (the softmax translation), halved until the expected complete log-likelihood
  does not decrease.

Each block's part of the expected complete log-likelihood never decreases, so the log-likelihood never does
(up to rounding).

Stopping does not scale with n: a start is converged when the gradient of the per-sample log-likelihood
l / n, in the coordinates (free gates, experts, log variances; the last atom's gate pinned, a variance at
its floor only free to grow), has sup-norm at most `tol`. The gradient is free in EM: by Fisher's identity
it is read off the E-step's statistics. EM crawls along the flat directions of an over-specified cell, so
once an iteration gains less than `_HANDOVER` nats per sample the start is polished by L-BFGS-B on the
full log-likelihood until the gradient test holds (THEORY.md s7: a relative stopping rule left large-n fits
where their start put them). Every per-sample product the M-step needs is a linear statistic of the responsibilities:
it is read off one (k x n) @ (n x r) product against data-only rows computed once per data set
(`_Design`), so an iteration costs the E-step, that product and one gate evaluation per Newton trial.

That n-sized work, the E-step and the gate sums, is written once against an array backend (`moe_sim.backend`:
NumPy, torch on the CPU or a GPU), where the design lives; it returns its small (k x r) statistics to the host.
The M-step, the score and the polish run in NumPy on those statistics, identical for every backend, so the same
start reaches the same optimum on each (to rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.optimize import minimize

from ..backend import Backend, NumpyBackend, get_backend, single_threaded_blas
from ..measure import MixingMeasure, MoESpec
from ..model import Features, gaussian_log_joint, sample_slices
from .result import StartResult

Array = np.ndarray
_RIDGE = 1e-9  # relative ridge on the (p x p) expert and the gate Newton systems
_MAX_HALVINGS = 40


@dataclass(frozen=True)
class _Chunk:
    """A contiguous block of samples on the backend: gate features phi (q, c), expert features psi (p, c),
    responses y (c,) and the data-only rows and gate pairs (see `_Design`)."""

    phi: object
    psi: object
    y: object
    rows: object
    gate_pairs: object


@dataclass(frozen=True)
class _Design:
    """Data-only rows whose responsibility- or gate-weighted sums are the M-step's statistics, in chunks on the
    backend nx.

    rows (r, n): [1; phi (q rows); psi_a psi_b for a <= b; psi y (p rows); y^2]; the first m = q + 1 rows are
    the gate's design x = [1; phi]. gate_pairs holds x_a x_b (a <= b), for the gate's Newton matrix. The
    samples are split into chunks of at most `chunk` samples; by default as many as make the rows hold
    `nx.block_elements` elements (on a CPU, one chunk up to n = 5e5 for d = 1; at n = 1e5, k = 2 and 3, an EM
    iteration took 5 and 13% less time than with the former chunks of 32768 samples, measured once).
    """

    nx: Backend
    chunks: list[_Chunk]
    q: int
    p: int
    n: int
    expert_ridge: float

    @classmethod
    def of(cls, spec: MoESpec, X: Array, y: Array, nx: Backend | None = None, chunk: int | None = None) -> "_Design":
        nx = NumpyBackend() if nx is None else nx
        feats = Features.of(spec, X)
        q, p = feats.phi.shape[0], feats.psi.shape[0]
        x = np.vstack([np.ones(feats.n), feats.phi])
        ia, ib = _triu(p)
        ga, gb = _triu(q + 1)
        psi = feats.psi
        rows = np.vstack([x, psi[ia] * psi[ib], psi * y, y * y])
        pairs = x[ga] * x[gb]
        size = chunk or nx.samples_per_chunk(rows.shape[0])
        chunks = [_Chunk(*(nx.asarray(np.ascontiguousarray(a[..., s])) for a in (feats.phi, psi, y, rows, pairs)))
                  for s in sample_slices(feats.n, size)]
        ridge = _RIDGE * float(np.einsum("pn,pn->", psi, psi)) / p
        return cls(nx, chunks, q, p, feats.n, ridge)

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


def _e_step(G: MixingMeasure, design: _Design) -> tuple[float, Array]:
    """Log-likelihood and the responsibility-weighted sums of the design rows, T (k, r), computed on the design's
    backend: log g_i + log N(y; psi . expert_i, var_i) per sample, normalised over the atoms."""
    nx = design.nx
    bias, gate, expert = nx.asarray(G.bias[:, None]), nx.asarray(G.gate), nx.asarray(G.expert)
    var = nx.asarray(G.var[:, None])
    ll, T = 0.0, 0.0
    for c in design.chunks:
        log_joint = gaussian_log_joint(nx, nx.matmul(gate, c.phi) + bias, nx.matmul(expert, c.psi), c.y, var)
        resp, log_dens = nx.softmax_logsumexp(log_joint, 0)
        ll = ll + nx.sum(log_dens, axis=None)
        T = T + nx.matmul(resp, nx.swap_last(c.rows))
    return float(nx.to_numpy(ll)), nx.to_numpy(T)


@dataclass
class _Gate:
    """Gate parameters theta = [bias, gate] (k, m) with sum_t logsumexp_i z_it and gate-weighted sums of the
    x_a x_b pairs: single (k, pairs) = sum_t g_i x_a x_b, cross (K (K + 1) / 2, pairs) = sum_t g_i g_j x_a x_b
    for i <= j < K = k - 1 (the free atoms). With newton=False (the gradient alone, as the polish needs),
    single holds only the first m pairs, x itself, and cross is None."""

    theta: Array
    lse_sum: float
    single: Array
    cross: Array | None

    @classmethod
    def at(cls, theta: Array, design: _Design, newton: bool = True) -> "_Gate":
        """The sums at theta, computed on the design's backend."""
        nx = design.nx
        ia, ib = _triu(theta.shape[0] - 1)
        bias, gate = nx.asarray(theta[:, :1]), nx.asarray(theta[:, 1:])
        lse_sum, single, cross = 0.0, 0.0, 0.0
        for c in design.chunks:
            g, lse = nx.softmax_logsumexp(nx.matmul(gate, c.phi) + bias, 0)
            lse_sum = lse_sum + nx.sum(lse, axis=None)
            if newton:
                single = single + nx.matmul(g, nx.swap_last(c.gate_pairs))
                cross = cross + nx.matmul(nx.take(g, ia) * nx.take(g, ib), nx.swap_last(c.gate_pairs))
            else:
                single = single + nx.matmul(g, nx.swap_last(c.rows[: design.m]))
        return cls(theta, float(nx.to_numpy(lse_sum)), nx.to_numpy(single), nx.to_numpy(cross) if newton else None)


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


def _score(T: Array, gate: _Gate, design: _Design, expert: Array, var: Array, var_floor: float) -> Array:
    """The gradient of the log-likelihood at (gate, expert, var), flat in `_Coordinates` order, from the
    E-step statistics T (Fisher's identity: the gradient of the expected complete log-likelihood)."""
    m, p = design.m, design.p
    n_pairs = p * (p + 1) // 2
    A = _symmetric(T[:, m : m + n_pairs], p)
    b = T[:, m + n_pairs : m + n_pairs + p]
    ssr = T[:, -1] - 2.0 * np.einsum("kp,kp->k", expert, b) + np.einsum("kp,kpq,kq->k", expert, A, expert)
    d_gate = T[:, :m] - gate.single[:, :m]
    d_expert = (b - np.einsum("kpq,kq->kp", A, expert)) / var[:, None]
    d_log_var = 0.5 * (ssr / var - T[:, 0])
    at_floor = var <= var_floor * (1 + 1e-9)  # a variance at its floor is only free to grow
    d_log_var = np.where(at_floor & (d_log_var < 0), 0.0, d_log_var)
    return np.concatenate([d_gate[:-1].ravel(), d_expert.ravel(), d_log_var])


@dataclass(frozen=True)
class _Coordinates:
    """The polish's parameter vector: free gate rows (k - 1, m), experts (k, p), log variances (k)."""

    k: int
    m: int
    p: int

    def pack(self, gate_theta: Array, expert: Array, var: Array) -> Array:
        return np.concatenate([gate_theta[:-1].ravel(), expert.ravel(), np.log(var)])

    def unpack(self, x: Array) -> tuple[Array, Array, Array]:
        k, m, p = self.k, self.m, self.p
        free, expert, log_var = np.split(x, np.cumsum([(k - 1) * m, k * p]))
        gate_theta = np.vstack([free.reshape(k - 1, m), np.zeros((1, m))])
        return gate_theta, expert.reshape(k, p), np.exp(log_var)


def _state(design: _Design, gate_theta: Array, expert: Array, var: Array):
    """(log-likelihood, E-step statistics, gate sums, measure) at the given parameters."""
    G = MixingMeasure(gate_theta[:, 0], gate_theta[:, 1:], expert, var)
    ll, T = _e_step(G, design)
    return ll, T, _Gate.at(gate_theta, design, newton=False), G


def _sup(x: Array) -> float:
    return float(np.max(np.abs(x), initial=0.0))


@dataclass
class _Path:
    """One start's run: final measure, its log-likelihood, the per-iteration log-likelihoods (EM phase)."""

    measure: MixingMeasure
    loglik: float
    trace: Array
    n_iter: int
    n_polish: int
    statistic: float
    converged: bool
    stop: str
    reason: str


# Per-sample log-likelihood gain of an EM iteration below which a start is handed to the polish. Not a
# stopping rule: only the gradient test stops a start.
_HANDOVER = 1e-6


def _run(design: _Design, G0: MixingMeasure, tol, max_iter, var_floor, polish) -> _Path:
    """EM from G0 (translated so its last atom's gate is zero; variances floored), then the polish."""
    n = design.n
    theta = np.column_stack([G0.bias, G0.gate])
    theta = theta - theta[-1]
    expert, var = G0.expert.copy(), np.maximum(G0.var, var_floor)
    gate = _Gate.at(theta, design)
    G = MixingMeasure(theta[:, 0], theta[:, 1:], expert, var)
    trace: list[float] = []
    best, statistic = None, np.inf
    reason, stop = "iteration cap", "max_iter"
    for it in range(max_iter + 1):
        ll, T = _e_step(G, design)
        if not np.isfinite(ll):
            reason, stop = f"non-finite log-likelihood at iteration {it}", "failed"
            break
        trace.append(ll)
        statistic = _sup(_score(T, gate, design, expert, var, var_floor)) / n
        best = (G, ll, it, statistic, gate.theta, expert, var)
        if statistic <= tol:
            reason, stop = "", "gradient"
            break
        if it == max_iter or (polish and it and ll - trace[-2] < _HANDOVER * n):
            break
        try:
            expert, var = _expert_step(T, design, expert, var, var_floor)
            gate = _gate_step(T, design, gate)
        except np.linalg.LinAlgError as exc:
            reason, stop = f"singular M-step at iteration {it}: {exc}", "failed"
            break
        if not (np.all(np.isfinite(gate.theta)) and np.all(np.isfinite(expert)) and np.all(np.isfinite(var))):
            reason, stop = f"non-finite parameters after the M-step of iteration {it}", "failed"
            break
        G = MixingMeasure(gate.theta[:, 0], gate.theta[:, 1:], expert, var)
    if best is None:
        return _Path(G, -np.inf, np.asarray(trace), 0, 0, np.nan, False, "failed", reason)
    G, ll, it, statistic, gate_theta, expert, var = best
    if stop == "gradient" or not polish:
        return _Path(G, ll, np.asarray(trace), it, 0, statistic, stop == "gradient", stop, reason)
    return _polish(design, G, ll, gate_theta, expert, var, np.asarray(trace), it, tol, max_iter, var_floor)


def _guarded_run(design, G0, tol, max_iter, var_floor, polish) -> _Path:
    """`_run`, with a numerical failure recorded as a failed path instead of raised (a sweep never crashes; torch
    reports its failures, a GPU out of memory among them, as RuntimeError)."""
    try:
        return _run(design, G0, tol, max_iter, var_floor, polish)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError, RuntimeError) as exc:
        return _Path(G0, -np.inf, np.zeros(0), 0, 0, np.nan, False, "failed", f"{type(exc).__name__}: {exc}")


def _polish(design, G, ll, gate_theta, expert, var, trace, n_em, tol, max_iter, var_floor) -> _Path:
    """L-BFGS-B on -l / n from the EM end point until the gradient test holds (restarted at most 8 times)."""
    n, coords = design.n, _Coordinates(G.k, design.m, design.p)
    lower = np.concatenate([np.full(coords.k * (coords.m + coords.p) - coords.m, -np.inf),
                            np.full(coords.k, np.log(var_floor))])
    bounds = [(lo, None) for lo in lower]

    def objective(x):
        gate_theta_, expert_, var_ = coords.unpack(x)
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(var_))):
            return np.inf, np.zeros_like(x)
        ll_, T, gate_, _ = _state(design, gate_theta_, expert_, var_)
        if not np.isfinite(ll_):
            return np.inf, np.zeros_like(x)
        return -ll_ / n, -_score(T, gate_, design, expert_, var_, -np.inf) / n

    x = coords.pack(gate_theta, expert, var)
    nit, statistic, message = 0, np.inf, ""
    for _ in range(8):
        res = minimize(objective, x, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"ftol": 0.0, "gtol": tol, "maxiter": max(max_iter - nit, 1), "maxfun": 2 * max_iter,
                                "maxcor": 20})
        nit, message = nit + int(res.nit), str(res.message)
        if not np.isfinite(res.fun) or -res.fun * n < ll:
            break  # keep the better of EM's end point and the polish
        x, ll = res.x, -res.fun * n
        g_theta, expert, var = coords.unpack(x)
        state = _state(design, g_theta, expert, var)
        ll, G = state[0], state[3]
        statistic = _sup(_score(state[1], state[2], design, expert, var, var_floor)) / n
        if statistic <= tol or nit >= max_iter:
            break
    if statistic == np.inf:  # the polish never improved on EM: the statistic of EM's end point
        g_theta, expert, var = coords.unpack(x)
        state = _state(design, g_theta, expert, var)
        statistic = _sup(_score(state[1], state[2], design, expert, var, var_floor)) / n
    converged = statistic <= tol
    reason = "" if converged else (
        f"gradient test not met: ||grad l / n|| = {statistic:.2e} > tol = {tol:.0e} after {n_em} EM and {nit} "
        f"polish iterations (L-BFGS-B: {message})")
    return _Path(G, ll, trace, n_em + nit, nit, statistic, converged, "gradient" if converged else "polish", reason)


def check_em_spec(spec: MoESpec) -> None:
    """EM needs a softmax-gated Gaussian MoE with experts linear in their parameters."""
    if spec.likelihood != "gaussian" or spec.gate_name != "softmax":
        raise ValueError(
            f"EM needs likelihood='gaussian' and gate='softmax', got likelihood={spec.likelihood!r}, "
            f"gate={spec.gate_name!r}"
        )
    if not spec.expert_family.linear_in_params:
        raise ValueError(
            f"EM needs experts linear in their parameters (linear, polynomial, constant), got "
            f"expert={spec.expert_name!r}"
        )


def solve(spec: MoESpec, X, y, k: int, starts, *, tol: float, max_iter: int, var_floor: float,
          polish: bool, trace: bool = False, backend: str = "numpy") -> list[StartResult]:
    """EM (then the polish) from each start, as `StartResult`s whose objective is the log-likelihood and
    measure the end point, its last atom's (bias, gate) pinned at zero; the n-sized work runs on `backend`
    ("numpy", "torch" or "cuda"). With trace=True each record carries `trace`, the per-iteration
    log-likelihoods of its EM phase (entry i after i iterations)."""
    nx = get_backend(backend)
    with single_threaded_blas(), nx.single_threaded(), np.errstate(all="ignore"):
        design = _Design.of(spec, X, y, nx)
        paths = [_guarded_run(design, G0, tol, max_iter, var_floor, polish) for _, G0 in starts]
    records = []
    for (name, _), p in zip(starts, paths):
        records.append(StartResult(name, p.loglik, p.n_iter, p.converged, p.reason, p.statistic,
                                   p.measure if np.isfinite(p.loglik) else None, p.stop, p.n_polish,
                                   p.trace if trace else None))
    return records
