"""Optional torch backend: one batched computation fits every (replicate, start) pair of a cell at once.

Importing this module imports torch; nothing else in moe_sim does, so the NumPy path works without it.

Every (replicate, start) pair is one element of a flat batch of size B; parameters are (B, k, ...) tensors
and the hot arrays (B, k, chunk) slices of the sample, atoms-major as in `moe_sim.model`. The features are
`moe_sim.model.Features.of`, computed with NumPy per replicate and moved to the device once; each pass over
the data gathers the rows of the still-active elements, so a finished element costs nothing.

- method "lse" (regression MoE): batched Levenberg-Marquardt (Gauss-Newton normal equations, (B, P, P)
  systems solved with `torch.linalg.cholesky_ex`, Marquardt's scaling by diag(J^T J), Nielsen's damping
  update) on the residual sum of squares. Replicates are independent, so each element has
  its own damping, acceptance test and convergence test (MINPACK's: predicted and actual relative decrease
  both below `tol`, or a scaled step below xtol). Like scipy's L-BFGS-B test in `lse_fit`, this is a
  relative-decrease test: a start crawling under heavy damping can pass it short of a minimum (rare, and
  mostly at degenerate fits with dead atoms); an undamped Gauss-Newton decrement guard was tried and
  dropped, because over-specified cells make J^T J nearly singular and it then never passes. The softmax
  translation is removed by holding the last atom's (bias, gate) at its start value, which leaves the set
  of regression functions unchanged. `bounds` (as in `lse_fit`) projects every trial point onto the box;
  `screen` and `keep` screen many starts on subsamples first, as `lse_fit` does.
- method "em" (softmax Gaussian MoE, experts linear in their parameters): the algorithm of
  `moe_sim.fit.em.em_fit`, step for step (ridge WLS experts towards the current expert, variances floored,
  one Newton step on the gate with halving on the expected complete log-likelihood, last atom pinned at zero),
  batched: the E-step pass also accumulates the M-step's sufficient statistics, and each halving trial is
  one pass of log-partition sums.

A failed element (non-finite objective, singular M-step, iteration cap) ends with converged=False and a
reason; it never raises for the batch.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..measure import MixingMeasure, MoESpec
from ..model import Features, check_inputs
from .lse import KEEP, box, distinct_best, screen_size
from .result import FitResult, StartResult

METHODS = ("lse", "em")
DTYPES = {"float64": torch.float64, "float32": torch.float32}
# lse: relative RSS decrease per step, ftol_n / n as lse_fit (a local optimum differs from another by about
# sigma^2 per sample, so relative precision 1/n is the scale that matters), floored per dtype; em: relative
# log-likelihood change, as em_fit.
LSE_FTOL_N = 1e-6
_LSE_TOL_FLOOR = {"float64": 1e-15, "float32": 1e-6}
EM_TOL = 1e-6
DEFAULT_MAX_ITER = {"lse": 500, "em": 2000}
_XTOL = {"float64": 1e-10, "float32": 1e-5}
# Elements of one (B, width, chunk) working array: cache-sized on a CPU; on a GPU, large enough that a pass
# is a few kernel launches (2^25 doubles = 256 MiB).
_CHUNK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 25}
_EM_RIDGE = 1e-9  # as moe_sim.fit.em
_MAX_HALVINGS = 40
_LOG_2PI = math.log(2.0 * math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

Tensor = torch.Tensor


# Each expert activation with its derivative, the derivative given (u, act(u)) so that tanh and sigmoid reuse
# the forward pass's values.
def _relu_grad(u: Tensor, h: Tensor) -> Tensor:
    return (u > 0).to(u.dtype)


def _gelu(u: Tensor) -> Tensor:
    return u * torch.special.ndtr(u)


def _gelu_grad(u: Tensor, h: Tensor) -> Tensor:
    return torch.special.ndtr(u) + u * _INV_SQRT_2PI * torch.exp(-0.5 * u * u)


def _sigmoid_grad(u: Tensor, h: Tensor) -> Tensor:
    return h * (1.0 - h)


def _tanh_grad(u: Tensor, h: Tensor) -> Tensor:
    return 1.0 - h * h


def _identity(u: Tensor) -> Tensor:
    return u


def _ones(u: Tensor, h: Tensor) -> Tensor:
    return torch.ones_like(u)


_IDENTITY = (_identity, _ones)
ACTIVATIONS = {
    "linear": _IDENTITY,
    "polynomial": _IDENTITY,
    "constant": _IDENTITY,
    "relu": (torch.relu, _relu_grad),
    "gelu": (_gelu, _gelu_grad),
    "sigmoid": (torch.sigmoid, _sigmoid_grad),
    "tanh": (torch.tanh, _tanh_grad),
}


def activation(spec: MoESpec):
    """The torch (activation, derivative(u, h)) of spec's expert family, checked against the NumPy family.

    Looked up by family name, then compared on a grid with the family's own NumPy functions, so a family
    registered under a built-in name with another activation is refused rather than silently mis-fitted.
    """
    family = spec.expert_family
    if family.name not in ACTIVATIONS:
        raise ValueError(
            f"expert={family.name!r} has no torch activation; the torch backend supports "
            f"{', '.join(map(repr, ACTIVATIONS))}"
        )
    act, dact = ACTIVATIONS[family.name]
    grid = np.concatenate([np.linspace(-6.0, 6.0, 49), [-0.1, 0.1]])
    u = torch.from_numpy(grid)
    values = family.activation(grid)
    pairs = (("activation", act(u), values), ("derivative", dact(u, act(u)), family.derivative(grid, values)))
    for name, mine, theirs in pairs:
        if not np.allclose(mine.numpy(), theirs, rtol=1e-12, atol=1e-12):
            raise ValueError(f"expert={family.name!r}: its {name} differs from the torch backend's built-in one")
    return act, dact


class _Batch:
    """The R samples on the device, (R, q, n), (R, p, n), (R, n), read in column chunks for a set of elements."""

    def __init__(self, spec: MoESpec, Xs, ys, device, dtype):
        feats = [Features.of(spec, X) for X in Xs]
        def put(a):
            return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)

        self.phi = put(np.stack([f.phi for f in feats]))
        self.psi = put(np.stack([f.psi for f in feats]))
        self.y = put(np.stack(ys))
        self.n = self.y.shape[1]
        self.budget = _CHUNK_ELEMENTS.get(self.y.device.type, _CHUNK_ELEMENTS["cpu"])
        # Per-replicate ridge of em_fit's expert step: 1e-9 * sum(psi^2) / p.
        self.psi_norm = (self.psi * self.psi).sum(dim=(1, 2))

    def chunks(self, rep: Tensor, width: int):
        """(phi, psi, y) column blocks for the replicates `rep` (one per element), sized for `width` rows."""
        size = max(256, min(self.n, self.budget // max(1, len(rep) * width)))
        for a in range(0, self.n, size):
            s = slice(a, min(a + size, self.n))
            yield self.phi[rep, :, s], self.psi[rep, :, s], self.y[rep, s]


def _forward(spec: MoESpec, act, bias: Tensor, gate: Tensor, expert: Tensor, phi: Tensor, psi: Tensor):
    """Batched `moe_sim.model.forward`: z, g, u, h (B, k, c) and f (B, c)."""
    z = torch.baddbmm(bias[:, :, None], gate, phi)
    g = torch.softmax(z, dim=1) if spec.gate_name == "softmax" else torch.sigmoid(z)
    u = torch.bmm(expert, psi)
    h = act(u)
    return z, g, u, h, (g * h).sum(dim=1)


def _jacobian(spec: MoESpec, dact, g, u, h, f, phi, psi, nb: int) -> Tensor:
    """Per-sample df/dtheta (B, F, c) over the free parameters, in `MixingMeasure.to_vector` order: the bias
    and gate of the first nb atoms (k - 1 for softmax: the last is held), then every atom's expert."""
    dfdz = g[:, :nb] * (h[:, :nb] - f[:, None]) if spec.gate_name == "softmax" else g * (1.0 - g) * h
    dfdu = g * dact(u, h)
    B, k, c = g.shape
    q, p = phi.shape[1], psi.shape[1]
    J = g.new_empty(B, nb * (1 + q) + k * p, c)
    J[:, :nb] = dfdz
    torch.mul(dfdz[:, :, None, :], phi[:, None], out=J[:, nb : nb * (1 + q)].view(B, nb, q, c))
    torch.mul(dfdu[:, :, None, :], psi[:, None], out=J[:, nb * (1 + q) :].view(B, k, p, c))
    return J


def _split(spec: MoESpec, k: int, theta: Tensor):
    """(B, P) vectors -> bias (B, k), gate (B, k, q), expert (B, k, p)."""
    q, p = spec.q, spec.p
    B = theta.shape[0]
    return theta[:, :k], theta[:, k : k * (1 + q)].reshape(B, k, q), theta[:, k * (1 + q) :].reshape(B, k, p)


def _lse_pass(spec, act, dact, batch: _Batch, k: int, theta: Tensor, rep: Tensor):
    """RSS (B,), J^T J (B, F, F) and J^T r (B, F) over the free parameters, J = df/dtheta."""
    bias, gate, expert = _split(spec, k, theta)
    nb = k - 1 if spec.gate_name == "softmax" else k
    B, F = theta.shape[0], nb * (1 + spec.q) + k * spec.p
    rss = theta.new_zeros(B)
    JtJ = theta.new_zeros(B, F, F)
    Jtr = theta.new_zeros(B, F)
    for phi, psi, y in batch.chunks(rep, theta.shape[1] + 2 * k):
        _, g, u, h, f = _forward(spec, act, bias, gate, expert, phi, psi)
        r = y - f
        rss += (r * r).sum(dim=1)
        J = _jacobian(spec, dact, g, u, h, f, phi, psi, nb)
        JtJ += torch.bmm(J, J.mT)
        Jtr += torch.bmm(J, r[:, :, None])[:, :, 0]
    return rss, JtJ, Jtr


def _finite_rows(*tensors: Tensor) -> Tensor:
    """(B,) mask of the batch elements whose entries are all finite in every tensor."""
    ok = torch.ones(tensors[0].shape[0], dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        ok &= torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1)
    return ok


def _lse(spec, batch, k, theta, rep, lim, tol, xtol, max_iter):
    """Levenberg-Marquardt from every row of theta (B, P); returns theta, rss, n_iter, converged, reasons."""
    act, dact = activation(spec)
    B, P = theta.shape
    free = torch.arange(P, device=theta.device)
    if spec.gate_name == "softmax":  # the last atom's (bias, gate) is held: the softmax translation (_jacobian)
        pinned = [k - 1] + [k + (k - 1) * spec.q + j for j in range(spec.q)]
        free = free[~torch.isin(free, torch.tensor(pinned, device=theta.device))]
    lower = upper = None
    if lim is not None:
        lower, upper = (torch.as_tensor(a, dtype=theta.dtype, device=theta.device) for a in lim)
        theta = torch.minimum(torch.maximum(theta, lower), upper)
    rss, JtJ, Jtr = _lse_pass(spec, act, dact, batch, k, theta, rep)
    n_iter = torch.zeros(B, dtype=torch.long)
    converged = torch.zeros(B, dtype=torch.bool)
    reasons = [""] * B
    active = _finite_rows(rss, JtJ, Jtr).cpu()
    for b in torch.nonzero(~active).flatten().tolist():
        reasons[b] = "non-finite objective at the start (NaN or overflow)"
    lam = torch.full_like(rss, 1e-3)
    nu = torch.full_like(rss, 2.0)
    for _ in range(max_iter):
        idx = torch.nonzero(active).flatten()
        if len(idx) == 0:
            break
        di = idx.to(theta.device)
        D = torch.diagonal(JtJ[di], dim1=1, dim2=2)
        D = D.clamp_min(1e-300 + 1e-14 * D.amax(dim=1, keepdim=True))
        A = JtJ[di] + torch.diag_embed(lam[di, None] * D)
        L, info = torch.linalg.cholesky_ex(A)
        step = torch.cholesky_solve(Jtr[di, :, None], L)[:, :, 0]
        solved = (info == 0) & _finite_rows(step)
        step = torch.where(solved[:, None], step, 0.0)
        trial = theta[di].clone()
        trial[:, free] += step
        if lower is not None:
            trial = torch.minimum(torch.maximum(trial, lower), upper)
            step = trial[:, free] - theta[di][:, free]
        pred = 2.0 * (step * Jtr[di]).sum(dim=1) - torch.einsum("bi,bij,bj->b", step, JtJ[di], step)  # GN model
        rss_t, JtJ_t, Jtr_t = _lse_pass(spec, act, dact, batch, k, trial, rep[di])
        ok = solved & _finite_rows(rss_t, JtJ_t, Jtr_t)
        old = rss[di]
        actual = old - rss_t
        rho = actual / torch.where(pred > 0, pred, 1.0)
        accept = ok & (actual > 0) & (pred > 0)
        # MINPACK's tests: relative decreases (predicted and actual) below tol, or a tiny scaled step.
        scale = old.clamp_min(torch.finfo(old.dtype).tiny)
        ftol_ok = ok & (actual.abs() <= tol * scale) & (pred <= tol * scale) & (rho <= 2.0)
        dnorm = torch.sqrt(D)
        xtol_ok = accept & (
            torch.linalg.vector_norm(dnorm * step, dim=1)
            <= xtol * (torch.linalg.vector_norm(dnorm * theta[di][:, free], dim=1) + xtol)
        )
        a = di[accept]
        theta[a], rss[a], JtJ[a], Jtr[a] = trial[accept], rss_t[accept], JtJ_t[accept], Jtr_t[accept]
        shrink = torch.clamp_min(1.0 - (2.0 * rho[accept] - 1.0) ** 3, 1.0 / 3.0)
        lam[a] = torch.clamp_min(lam[a] * shrink, 1e-12)  # never quite Gauss-Newton: J^T J may be singular
        nu[a] = 2.0
        r = di[~accept]
        lam[r] = lam[r] * nu[r]
        nu[r] = nu[r] * 2.0
        n_iter[idx] += 1
        done = (ftol_ok | xtol_ok).cpu()
        stalled = (lam[di] > 1e16).cpu() & ~done
        converged[idx[done]] = True
        for b in idx[stalled].tolist():
            reasons[b] = "stalled: no step decreases the RSS even with damping 1e16"
        active[idx[done | stalled]] = False
    for b in torch.nonzero(active).flatten().tolist():
        reasons[b] = f"hit the iteration cap ({max_iter} iterations)"
    return theta, rss, n_iter, converged, reasons


def _rss(spec, batch: _Batch, k: int, theta: Tensor, rep: Tensor) -> Tensor:
    """RSS of every row of theta (B, P) on its replicate's sample: forward passes only."""
    act, _ = activation(spec)
    bias, gate, expert = _split(spec, k, theta)
    out = theta.new_zeros(theta.shape[0])
    for phi, psi, y in batch.chunks(rep, 2 * k):
        out += ((y - _forward(spec, act, bias, gate, expert, phi, psi)[-1]) ** 2).sum(dim=1)
    return out


def _lse_tol(tol, ftol_n: float, n: int, dtype: str) -> float:
    """The caller's tol, else lse_fit's n-aware ftol_n / n, floored for the dtype."""
    return max(ftol_n / n, _LSE_TOL_FLOOR[dtype]) if tol is None else tol


def _lse_multistart(spec, batch, data, groups, owner, k, theta0, lim, tol, ftol_n, dtype, max_iter, screen, keep,
                    rngs):
    """`lse_fit`'s multi-start over the batch: optional screening on subsamples, then LM on the full samples.

    Returns theta, RSS, n_iter, converged, reasons per element, and which elements may be a replicate's best
    (not screened out).
    """
    B, n, xtol = theta0.shape[0], batch.n, _XTOL[dtype]
    prior = torch.zeros(B, dtype=torch.long)
    big = [r for r, g in enumerate(groups) if screen is not None and n > screen and len(g) > keep]
    out = np.zeros(B, dtype=bool)
    if big:
        picks = [np.random.default_rng(rngs[r]).choice(n, screen, replace=False) for r in big]
        sub = _Batch(spec, [data[r][0][i] for r, i in zip(big, picks)], [data[r][1][i] for r, i in zip(big, picks)],
                     theta0.device, theta0.dtype)
        elems = np.flatnonzero(np.isin(owner, big))
        slot = {r: j for j, r in enumerate(big)}
        sub_rep = torch.as_tensor([slot[owner[e]] for e in elems], device=theta0.device)
        te = torch.as_tensor(elems, device=theta0.device)
        theta_s, rss_s, it_s, _, _ = _lse(spec, sub, k, theta0[te], sub_rep, lim, _lse_tol(tol, ftol_n, screen, dtype),
                                          xtol, max_iter)
        theta0[te], prior[torch.as_tensor(elems)] = theta_s, it_s
        rss_s = rss_s.cpu().double().numpy()
        for r in big:
            mine = np.flatnonzero(owner[elems] == r)
            kept = set(mine[distinct_best([float(v) for v in rss_s[mine]], keep)])
            out[elems[[j for j in mine if j not in kept]]] = True
    polish = torch.as_tensor(np.flatnonzero(~out), device=theta0.device)
    rep = torch.as_tensor(owner, device=theta0.device)
    theta_p, rss_p, it_p, conv_p, why_p = _lse(spec, batch, k, theta0[polish], rep[polish], lim,
                                               _lse_tol(tol, ftol_n, n, dtype), xtol, max_iter)
    theta, rss = theta0.clone(), theta0.new_full((B,), math.nan)
    theta[polish], rss[polish] = theta_p, rss_p
    n_iter, converged = prior.clone(), torch.zeros(B, dtype=torch.bool)
    cpu_polish = polish.cpu()
    n_iter[cpu_polish] += it_p
    converged[cpu_polish] = conv_p
    reasons = [f"screened out on {screen} points"] * B
    for e, why in zip(cpu_polish.tolist(), why_p):
        reasons[e] = why
    if out.any():
        gone = torch.as_tensor(np.flatnonzero(out), device=theta0.device)
        rss[gone] = _rss(spec, batch, k, theta[gone], rep[gone])
    return theta, rss, n_iter, converged, reasons, ~out


def _pairs(x: Tensor) -> Tensor:
    """(B, m, c) -> (B, m (m + 1) / 2, c): products x_a x_b, a <= b (row-major upper triangle)."""
    ia, ib = torch.triu_indices(x.shape[1], x.shape[1], device=x.device)
    return x[:, ia] * x[:, ib]


def _symmetric(flat: Tensor, size: int) -> Tensor:
    """(..., size (size + 1) / 2) upper-triangle entries -> (..., size, size)."""
    ia, ib = torch.triu_indices(size, size, device=flat.device)
    out = flat.new_zeros(flat.shape[:-1] + (size, size))
    out[..., ia, ib] = flat
    out[..., ib, ia] = flat
    return out


def _normalise(a: Tensor) -> tuple[Tensor, Tensor]:
    """softmax over atoms (dim 1) and logsumexp, from one exp pass (exp is the E-step's cost)."""
    top = a.amax(dim=1, keepdim=True)
    e = torch.exp(a - top)
    total = e.sum(dim=1, keepdim=True)
    return e / total, (top + torch.log(total))[:, 0]


def _em_estep(batch: _Batch, theta: Tensor, expert: Tensor, var: Tensor, rep: Tensor):
    """One E-step pass: log-likelihood (B,), sum_t logsumexp z_t (B,), resp @ rows (B, k, r),
    g @ x^T (B, k, m) and the gate's Newton pair sums (B, K K, m (m + 1) / 2), K = k - 1.

    rows are em._Design's: [1; phi; psi_a psi_b (a <= b); psi y; y^2]; x = [1; phi].
    """
    B, k, m = theta.shape
    K = k - 1
    p = expert.shape[2]
    n_rows = m + p * (p + 1) // 2 + p + 1
    ll, lse_sum = theta.new_zeros(B), theta.new_zeros(B)
    T = theta.new_zeros(B, k, n_rows)
    Gx = theta.new_zeros(B, k, m)
    W = theta.new_zeros(B, K * K, m * (m + 1) // 2)
    log_var = torch.log(var)[:, :, None]
    for phi, psi, y in batch.chunks(rep, 2 * k + n_rows + K * K):
        x = torch.cat([torch.ones_like(phi[:, :1]), phi], dim=1)
        z = torch.bmm(theta, x)
        g, lz = _normalise(z)
        resid = y[:, None] - torch.bmm(expert, psi)
        log_joint = (z - lz[:, None]) - 0.5 * (_LOG_2PI + log_var + resid * resid / var[:, :, None])
        resp, log_dens = _normalise(log_joint)
        ll += log_dens.sum(dim=1)
        lse_sum += lz.sum(dim=1)
        rows = torch.cat([x, _pairs(psi), psi * y[:, None], (y * y)[:, None]], dim=1)
        T += torch.bmm(resp, rows.mT)
        Gx += torch.bmm(g, x.mT)
        if K:
            w = -g[:, :K, None, :] * g[:, None, :K, :]
            torch.diagonal(w, dim1=1, dim2=2).add_(g[:, :K].mT)
            W += torch.bmm(w.reshape(B, K * K, -1), _pairs(x).mT)
    return ll, lse_sum, T, Gx, W


def _log_partition(batch: _Batch, theta: Tensor, rep: Tensor) -> Tensor:
    """sum_t logsumexp_i z_it for gate parameters theta (B, k, m) = [bias, gate]."""
    out = theta.new_zeros(theta.shape[0])
    for phi, _, _ in batch.chunks(rep, theta.shape[1]):
        x = torch.cat([torch.ones_like(phi[:, :1]), phi], dim=1)
        z = torch.bmm(theta, x)
        top = z.amax(dim=1, keepdim=True)
        out += (top[:, 0] + torch.log(torch.exp(z - top).sum(dim=1))).sum(dim=1)
    return out


def _solve_spd(A: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Batched A x = b for symmetric positive definite A (..., s, s); also a mask of solved systems."""
    L, info = torch.linalg.cholesky_ex(A)
    x = torch.cholesky_solve(b[..., None], L)[..., 0]
    ok = info == 0
    while ok.dim() > 1:
        ok = ok.all(dim=-1)
    return x, ok & _finite_rows(x)


def _em_mstep(batch, theta, expert, var, rep, T, Gx, W, lse_sum, var_floor):
    """em_fit's generalised M-step for every element: experts and variances, then the gate's Newton step
    with halving. Returns theta, expert, var and a mask of elements whose linear systems were solvable."""
    B, k, m = theta.shape
    p = expert.shape[2]
    n_pairs = p * (p + 1) // 2
    resp_sum = T[:, :, 0]
    A = _symmetric(T[:, :, m : m + n_pairs], p)
    b = T[:, :, m + n_pairs : m + n_pairs + p]
    yy = T[:, :, -1]
    lam = (_EM_RIDGE * batch.psi_norm[rep] / p)[:, None, None]
    eye_p = torch.eye(p, dtype=A.dtype, device=A.device)
    new, ok = _solve_spd(A + lam[..., None] * eye_p, b + lam * expert)
    ssr = yy - 2.0 * (new * b).sum(dim=2) + torch.einsum("bkp,bkpq,bkq->bk", new, A, new)
    tiny = 1e-12 * batch.n
    new_var = torch.where(resp_sum > tiny, ssr.clamp_min(0.0) / resp_sum.clamp_min(tiny), var)
    expert, var = new, new_var.clamp_min(var_floor)
    K = k - 1
    if K == 0:
        return theta, expert, var, ok
    S = T[:, :, :m]
    grad = (S[:, :K] - Gx[:, :K]).reshape(B, K * m)
    F = _symmetric(W, m).reshape(B, K, K, m, m).transpose(2, 3).reshape(B, K * m, K * m)
    trace = torch.diagonal(F, dim1=1, dim2=2).sum(dim=1)
    eye = torch.eye(K * m, dtype=F.dtype, device=F.device)
    delta, solved = _solve_spd(F + (_EM_RIDGE * trace / (K * m) + 1e-300)[:, None, None] * eye, grad)
    q_old = (theta * S).sum(dim=(1, 2)) - lse_sum
    # A Newton decrement at rounding level means the gate is at its optimum: no step (as em_fit).
    moving = solved & ((grad * delta).sum(dim=1) > 1e-14 * q_old.abs().clamp_min(1.0))
    delta = delta.reshape(B, K, m)
    pending = torch.nonzero(moving).flatten()
    step = 1.0
    for _ in range(_MAX_HALVINGS):
        if len(pending) == 0:
            break
        trial = theta[pending].clone()
        trial[:, :K] += step * delta[pending]
        q_new = (trial * S[pending]).sum(dim=(1, 2)) - _log_partition(batch, trial, rep[pending])
        better = q_new >= q_old[pending]
        theta[pending[better]] = trial[better]
        pending = pending[~better]
        step *= 0.5
    return theta, expert, var, ok & solved


def _em(spec, batch, k, G0s: list[MixingMeasure], rep, tol, max_iter, var_floor, device, dtype):
    """em_fit's iteration for every start at once; returns the best-iterate measures and diagnostics."""
    def put(a):
        return torch.as_tensor(np.array(a, dtype=float), dtype=dtype, device=device)

    theta = put(np.stack([np.column_stack([G.bias, G.gate]) for G in G0s]))
    theta = theta - theta[:, -1:, :]
    expert = put(np.stack([G.expert for G in G0s]))
    var = put(np.stack([G.var for G in G0s])).clamp_min(var_floor)
    B = len(G0s)
    best = [theta.clone(), expert.clone(), var.clone()]
    best_ll = torch.full((B,), -math.inf, dtype=dtype, device=device)
    prev = torch.full((B,), math.nan, dtype=dtype, device=device)
    n_iter = torch.zeros(B, dtype=torch.long)
    converged = torch.zeros(B, dtype=torch.bool)
    reasons = ["max_iter"] * B
    active = torch.ones(B, dtype=torch.bool)
    for it in range(max_iter + 1):
        idx = torch.nonzero(active).flatten()
        if len(idx) == 0:
            break
        di = idx.to(device)
        ll, lse_sum, T, Gx, W = _em_estep(batch, theta[di], expert[di], var[di], rep[di])
        finite = torch.isfinite(ll).cpu()
        for b in idx[~finite].tolist():
            reasons[b] = f"non-finite log-likelihood at iteration {it}"
        good = finite.to(device)
        g = di[good]
        best[0][g], best[1][g], best[2][g], best_ll[g] = theta[g], expert[g], var[g], ll[good]
        n_iter[idx[finite]] = it
        stop = ~finite
        if it:
            change = (ll - prev[di]).abs() <= tol * prev[di].abs().clamp_min(1.0)
            done = (change & good).cpu()
            converged[idx[done]] = True
            for b in idx[done].tolist():
                reasons[b] = ""
            stop |= done
        if it == max_iter:
            break
        prev[di] = ll
        keep = ~stop
        active[idx[stop]] = False
        if not keep.any():
            continue
        ki, kd = idx[keep], di[keep.to(device)]
        kg = keep.to(device)
        th, ex, va, ok = _em_mstep(
            batch, theta[kd].clone(), expert[kd], var[kd], rep[kd], T[kg], Gx[kg], W[kg], lse_sum[kg], var_floor
        )
        ok &= _finite_rows(th, ex, va)
        theta[kd], expert[kd], var[kd] = th, ex, va
        bad = (~ok).cpu()
        for b in ki[bad].tolist():
            reasons[b] = f"singular or non-finite M-step at iteration {it}"
        active[ki[bad]] = False
    return best, best_ll, n_iter, converged, reasons


def _check_starts(spec: MoESpec, k: int, starts, R: int) -> list[list[tuple[str, MixingMeasure]]]:
    """starts as R lists of (name, measure) pairs; a bare measure is named "start<j>"."""
    if len(starts) != R:
        raise ValueError(f"starts has {len(starts)} entries, one list per replicate needed ({R} replicates)")
    out = []
    for r, group in enumerate(starts):
        if isinstance(group, MixingMeasure) or len(group) == 0:
            raise ValueError(f"starts[{r}] must be a non-empty list of MixingMeasure or (name, measure) pairs")
        pairs = []
        for j, s in enumerate(group):
            name, G = s if isinstance(s, tuple) else (f"start{j}", s)
            if not isinstance(G, MixingMeasure):
                raise ValueError(f"starts[{r}][{j}] must be a MixingMeasure or a (name, MixingMeasure) pair")
            spec.check_measure(G, f"starts[{r}][{j}]")
            if G.k != k:
                raise ValueError(f"starts[{r}][{j}] has {G.k} atoms, but k={k}")
            pairs.append((str(name), G))
        out.append(pairs)
    return out


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1')") from exc


def fit_batch(
    spec: MoESpec,
    Xs,
    ys,
    k: int,
    starts,
    method: str = "lse",
    device=None,
    dtype: str = "float64",
    max_iter: int | None = None,
    tol: float | None = None,
    truth: MixingMeasure | None = None,
    bounds=None,
    var_floor: float = 1e-6,
    screen: int | str | None = "auto",
    keep: int = KEEP,
    rngs=None,
    ftol_n: float = LSE_FTOL_N,
    threads: int | None = 1,
) -> list[FitResult]:
    """Fit R replicates of one cell (same n) as one batched torch computation; one FitResult per replicate.

    Xs, ys: R inputs (n, d) and outputs (n,), drawn with NumPy (ms.sample(..., rng=seed)) so both backends
    see the same data. starts: R lists of starting measures (MixingMeasure or (name, measure) pairs), the
    same the NumPy path uses; each replicate keeps its best start (lowest RSS for "lse", highest
    log-likelihood for "em") and lists every start in `starts`.

    - device: None (CUDA when available, else CPU) or anything torch.device accepts; dtype: "float64" or
      "float32".
    - max_iter: per-start cap (DEFAULT_MAX_ITER). tol: for "lse" MINPACK's ftol, the relative RSS decrease
      (predicted and actual) below which a start has converged, by default ftol_n / n as in `lse_fit` (n of
      the subsample while screening); for "em" the relative log-likelihood change, EM_TOL by default as in
      `em_fit`.
    - truth: the true measure, to record truth_objective and worse_than_truth as the NumPy estimators do.
    - bounds, screen, keep (lse only): as in `lse_fit`: when n > screen ("auto": max(2000, n // 10)), a
      replicate with more than `keep` starts fits them all first on a random subsample of `screen` points
      (drawn from rngs[r], one seed or Generator per replicate, the Generator `lse_fit` would get), then
      polishes the `keep` best distinct optima on the full sample; the others are recorded as "screened
      out". var_floor (em only): as in `em_fit`.
    - threads: torch's CPU threads during the fit (restored after), 1 by default as in a sweep task
      (DESIGN.md: one level of parallelism; on a busy machine extra threads cost far more than they give);
      None leaves torch's setting.

    runtime_s is the batch's wall time divided by R.
    """
    if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _fit_batch(spec, Xs, ys, k, starts, method, device, dtype, max_iter, tol, truth, bounds, var_floor,
                          screen, keep, rngs, ftol_n)
    finally:
        torch.set_num_threads(before)


def _fit_batch(spec, Xs, ys, k, starts, method, device, dtype, max_iter, tol, truth, bounds, var_floor, screen,
               keep, rngs, ftol_n):
    """fit_batch under its thread setting."""
    t0 = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not allowed; choose one of {', '.join(map(repr, METHODS))}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not allowed; choose one of {', '.join(map(repr, DTYPES))}")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    max_iter = DEFAULT_MAX_ITER[method] if max_iter is None else max_iter
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative integer, got {max_iter!r}")
    if method == "lse" and spec.likelihood != "regression":
        raise ValueError(f"method='lse' needs likelihood='regression', got {spec.likelihood!r}")
    if method == "em":
        if spec.likelihood != "gaussian" or not spec.expert_family.linear_in_params:
            raise ValueError(
                f"method='em' needs likelihood='gaussian' and experts linear in their parameters, got "
                f"likelihood={spec.likelihood!r}, expert={spec.expert_name!r}"
            )
        if bounds is not None:
            raise ValueError(f"bounds is for method='lse' only, got bounds={bounds!r} with method='em'")
        if not (np.isfinite(var_floor) and var_floor > 0):
            raise ValueError(f"var_floor must be a positive number, got {var_floor!r}")
    Xs, ys = list(Xs), list(ys)
    if len(Xs) != len(ys) or not Xs:
        raise ValueError(f"Xs and ys must be non-empty and of equal length, got {len(Xs)} and {len(ys)}")
    data = [check_inputs(spec, X, y) for X, y in zip(Xs, ys)]
    sizes = {len(y) for _, y in data}
    if len(sizes) != 1:
        raise ValueError(f"every replicate of a batch must have the same n, got n in {sorted(sizes)}")
    R = len(data)
    screen = screen_size(screen, sizes.pop())
    if tol is not None and not (np.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a non-negative number, got {tol!r}")
    if not (np.isfinite(ftol_n) and ftol_n >= 0):
        raise ValueError(f"ftol_n must be a non-negative number, got {ftol_n!r}")
    if not isinstance(keep, (int, np.integer)) or keep < 1:
        raise ValueError(f"keep must be a positive integer, got {keep!r}")
    rngs = [None] * R if rngs is None else list(rngs)
    if len(rngs) != R:
        raise ValueError(f"rngs has {len(rngs)} entries, one per replicate needed ({R} replicates)")
    groups = _check_starts(spec, k, starts, R)
    if truth is not None:
        spec.check_measure(truth, "truth")
    device, tdtype = _device(device), DTYPES[dtype]
    batch = _Batch(spec, [X for X, _ in data], [y for _, y in data], device, tdtype)
    owner = np.concatenate([np.full(len(g), r) for r, g in enumerate(groups)])
    rep = torch.as_tensor(owner, device=device)
    flat = [G for g in groups for _, G in g]
    P = k * (1 + spec.q + spec.p)
    eligible = np.ones(len(flat), dtype=bool)
    if method == "lse":
        theta0 = torch.as_tensor(np.stack([G.to_vector()[:P] for G in flat]), dtype=tdtype, device=device)
        theta, obj, n_iter, converged, reasons, eligible = _lse_multistart(
            spec, batch, data, groups, owner, k, theta0, box(spec, k, bounds), tol, ftol_n, dtype, max_iter, screen,
            keep, rngs,
        )
        theta = theta.cpu().double().numpy()
        measures = [MixingMeasure.from_vector(t, k, spec.q, spec.p) if np.all(np.isfinite(t)) else None for t in theta]
    else:
        (th, ex, va), obj, n_iter, converged, reasons = _em(
            spec, batch, k, flat, rep, EM_TOL if tol is None else tol, max_iter, var_floor, device, tdtype
        )
        th, ex, va = (a.cpu().double().numpy() for a in (th, ex, va))
        measures = [MixingMeasure(t[:, 0], t[:, 1:], e, v) for t, e, v in zip(th, ex, va)]
    obj = obj.cpu().double().numpy()
    truth_obj = _truth_objectives(spec, batch, truth, method, R, device, tdtype) if truth is not None else None
    runtime = (time.perf_counter() - t0) / R
    results, b = [], 0
    for r, group in enumerate(groups):
        elems = range(b, b + len(group))
        b += len(group)
        records = [
            StartResult(name, float(obj[e]), int(n_iter[e]), bool(converged[e]), reasons[e])
            for (name, _), e in zip(group, elems)
        ]
        finite = [e for e in elems if eligible[e] and np.isfinite(obj[e]) and measures[e] is not None]
        if not finite:
            results.append(FitResult(None, np.nan, int(sum(s.n_iter for s in records)), False, runtime, method,
                                     "every start ended with a non-finite objective", records))
            continue
        pick = min if method == "lse" else max
        e = pick(finite, key=lambda i: obj[i])
        res = FitResult(measures[e], float(obj[e]), int(n_iter[e]), bool(converged[e]), runtime, method,
                        reasons[e], records)
        if truth_obj is not None:
            res.compare_with_truth(truth_obj[r])
        results.append(res)
    return results


def _truth_objectives(spec, batch, truth: MixingMeasure, method, R, device, dtype) -> np.ndarray:
    """The truth's RSS or log-likelihood on each replicate's sample."""
    rep = torch.arange(R, device=device)

    def put(a):
        """The truth's block repeated for the R replicates."""
        return torch.as_tensor(np.array(a, dtype=float), dtype=dtype, device=device).expand(R, *np.shape(a))

    if method == "lse":
        out = _rss(spec, batch, truth.k, put(truth.to_vector()[: truth.k * (1 + spec.q + spec.p)]), rep)
    else:
        theta = put(np.column_stack([truth.bias, truth.gate]))
        out = _em_estep(batch, theta.contiguous(), put(truth.expert).contiguous(), put(truth.var), rep)[0]
    return out.cpu().double().numpy()
