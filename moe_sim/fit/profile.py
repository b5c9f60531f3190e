"""Profile pre-flight (THEORY.md s6): is an over-specified cell's predicted rate visible at this sigma and n?

For a true atom j and k = k* + 1 fitted atoms, two fitted atoms are held 2 delta apart around a free midpoint
m in the (gate score, expert) parameters, theta_{1,2} = m +- delta u / ||u|| with a free direction u and one
shared free bias (so the pair splits its weight evenly and cannot escape through a null atom); every other
atom is free. On a large noise-free design the least-squares loss L(delta) = min mean((f_G - f_G*)^2) (the
excess L2 risk) is read against delta: L ~ C delta^order. A least-squares fit at noise sigma and sample size n
can only resolve splits with C delta^order >~ sigma^2 / n, so the cell's split scales as
delta(n) ~ (sigma^2 / (C n))^(1/order); the predicted rate is visible when delta(n) is small (below
`visible_delta`) within the n range, and everything is pre-asymptotic when delta(n) stays O(1). A loss flat at
zero (ReLU and linear experts: the scale trade of THEORY.md s1) means the cell is not identified.

Scaled experts eta_2 act(eta_1 . x) are linear in eta_2, so a pair with one gate and one eta_1 whose scales
split as eta_2 +- delta fits exactly: their cell is flat along eta_2, only the cell's weight-averaged scale is
identified. split_scale=False holds the pair at one eta_2, to read the order of the other split directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from ..measure import MixingMeasure, MoESpec
from ..model import regression_function
from ..sample import draw_design
from .lse import jacobian

DEFAULT_DELTAS = tuple(np.logspace(-2.0, -1.0, 5))


@dataclass
class Profile:
    """summary: one row per profiled cell (order, constant, identified, status, delta at the ends of the n
    range, visible, n_visible: the n from which delta(n) < visible_delta); curves: the loss per delta."""

    summary: pd.DataFrame
    curves: pd.DataFrame


class _PairModel:
    """Maps free parameters phi to the k-atom theta (to_vector layout) with the pair of cell j held apart."""

    def __init__(self, spec: MoESpec, G_true: MixingMeasure, j: int, mask: np.ndarray):
        self.spec, self.kt, self.j = spec, G_true.k, j
        self.k, self.r = G_true.k + 1, spec.q + spec.p
        self.others = [i for i in range(G_true.k) if i != j]
        self.mask = mask  # 1 where the split direction may move, 0 where the pair stays together

    def split(self, phi):
        """(bias of the k* - 1 other atoms, their (beta, eta) rows, pair bias, midpoint, direction)."""
        o = len(self.others)
        bias, rows = phi[:o], phi[o : o + o * self.r].reshape(o, self.r)
        rest = phi[o + o * self.r :]
        return bias, rows, rest[0], rest[1 : 1 + self.r], rest[1 + self.r :]

    def start(self, G_true: MixingMeasure, u: np.ndarray) -> np.ndarray:
        rows = np.hstack([G_true.gate, G_true.expert])
        w = self.spec.weights(G_true.bias[self.j]) / 2
        pair_bias = self.spec.gate_family.bias_of(w)
        return np.concatenate([G_true.bias[self.others], rows[self.others].ravel(), [pair_bias], rows[self.j], u])

    def theta(self, phi, delta) -> tuple[np.ndarray, np.ndarray]:
        """theta and d theta / d phi."""
        bias, rows, cp, m, u = self.split(phi)
        u = u * self.mask
        norm = np.linalg.norm(u)
        uh = u / norm
        all_bias = np.concatenate([bias, [cp, cp]])
        all_rows = np.vstack([rows, m + delta * uh, m - delta * uh])
        q, k, r, o = self.spec.q, self.k, self.r, len(self.others)
        theta = np.concatenate([all_bias, all_rows[:, :q].ravel(), all_rows[:, q:].ravel()])
        # Position of (atom i, coordinate c of its (beta, eta) row) in theta.
        pos = np.array([[k + i * q + c if c < q else k + k * q + i * self.spec.p + (c - q) for c in range(r)]
                        for i in range(k)])
        D = np.zeros((theta.size, phi.size))
        D[np.arange(o), np.arange(o)] = 1.0
        for i in range(o):
            D[pos[i], o + i * r + np.arange(r)] = 1.0
        col = o + o * r
        D[[o, o + 1], col] = 1.0
        dm = col + 1 + np.arange(r)
        du = col + 1 + r + np.arange(r)
        proj = delta * (np.eye(r) - np.outer(uh, uh)) / norm * self.mask
        for i, sign in ((o, 1.0), (o + 1, -1.0)):
            D[pos[i], dm] = 1.0
            D[np.ix_(pos[i], du)] = sign * proj
        return theta, D


def _loss_curve(spec, G_true, j, X, y, deltas, rng, mask) -> list[float]:
    """L(delta) for ascending deltas, each fitted from fresh directions and from the previous delta's fit."""
    model = _PairModel(spec, G_true, j, mask)
    k, q, p = model.k, spec.q, spec.p
    measure = lambda theta: MixingMeasure.from_vector(theta, k, q, p)  # noqa: E731

    def resid(phi, delta):
        return regression_function(spec, measure(model.theta(phi, delta)[0]), X) - y

    def jac(phi, delta):
        theta, D = model.theta(phi, delta)
        return jacobian(spec, measure(theta), X) @ D

    r = spec.q + spec.p
    rows = np.concatenate([G_true.gate[j], G_true.expert[j]])
    directions = [np.eye(r)[c] for c in range(r) if mask[c]] + [rng.normal(size=r) * mask]
    if np.linalg.norm(rows[spec.q :] * mask[spec.q :]) > 0:
        directions.append(np.concatenate([np.zeros(spec.q), rows[spec.q :]]) * mask)  # the expert's scale
    losses, previous = [], None
    for delta in sorted(deltas, reverse=True):
        starts = [model.start(G_true, u) for u in directions] + ([previous] if previous is not None else [])
        best = None
        for phi0 in starts:
            sol = least_squares(resid, phi0, jac=jac, args=(delta,), method="trf", ftol=1e-15, xtol=1e-15,
                                gtol=1e-15, max_nfev=500)
            if best is None or sol.cost < best.cost:
                best = sol
        previous = best.x
        losses.append(2.0 * best.cost / len(y))
    return losses[::-1]


def profile(
    spec: MoESpec,
    G_true: MixingMeasure,
    k: int | None = None,
    cells=None,
    deltas=DEFAULT_DELTAS,
    sigma: float = 0.1,
    n_range=(1e3, 1e5),
    visible_delta: float = 0.1,
    design: str | None = None,
    n: int = 400,
    bounds=(-1.0, 1.0),
    flat_tol: float = 1e-24,
    split_scale: bool = True,
    rng=0,
) -> Profile:
    """Noise-free profile of the over-specified cells of a regression MoE (module docstring).

    k must be k* + 1 (the default); cells: the true atoms to profile (default all; sigmoid atoms with a
    non-zero score are regime 2 and reported, not profiled). A cell is "not identified" when its loss stays
    below flat_tol * var(f_G*) at every delta (exact fits reach about 1e-32; identified FFN cells stay above
    1e-18 here, since C can be tiny); otherwise order and constant come from a straight-line fit of log loss
    on log delta over the deltas above that floor. design: the noise-free design on `bounds`, by default
    "equispaced" for d = 1 and "uniform" otherwise. split_scale=False keeps the pair of a scaled family at
    one outer scale eta_2 (module docstring).
    """
    if spec.likelihood != "regression":
        raise ValueError(f"profile needs likelihood='regression', got {spec.likelihood!r}")
    spec.check_measure(G_true, "G_true")
    k = G_true.k + 1 if k is None else k
    if k != G_true.k + 1:
        raise ValueError(f"profile holds one extra atom in a cell: k must be k* + 1 = {G_true.k + 1}, got {k!r}")
    cells = range(G_true.k) if cells is None else cells
    bad = [j for j in cells if not (isinstance(j, (int, np.integer)) and 0 <= j < G_true.k)]
    if bad:
        raise ValueError(f"cells must be true-atom indices in [0, {G_true.k}), got {bad}")
    deltas = np.sort(np.asarray(deltas, dtype=float))
    if deltas.ndim != 1 or deltas.size < 2 or np.any(deltas <= 0):
        raise ValueError(f"deltas must hold at least two positive values, got {deltas!r}")
    if not (sigma > 0 and visible_delta > 0):
        raise ValueError(f"sigma and visible_delta must be positive, got {sigma!r}, {visible_delta!r}")
    if not (split_scale or spec.expert_family.scaled):
        raise ValueError(f"split_scale=False needs a scaled expert family (eta_2 act(eta_1 . x)), got "
                         f"expert={spec.expert_name!r}")
    mask = np.ones(spec.q + spec.p)
    if not split_scale:
        mask[spec.q] = 0.0  # eta_2, the first expert parameter
    rng = np.random.default_rng(rng)
    design = design or ("equispaced" if spec.d == 1 else "uniform")
    X = draw_design(design, n, spec.d, rng, bounds)
    y = regression_function(spec, G_true, X)
    floor = flat_tol * max(float(np.var(y)), 1e-300)
    rows, curves = [], []
    n_lo, n_hi = (float(v) for v in n_range)
    for j in cells:
        row = {"cell": int(j), "order": np.nan, "constant": np.nan, "identified": False, "status": "",
               "delta_at_n_min": np.nan, "delta_at_n_max": np.nan, "visible": False, "n_visible": np.nan}
        if spec.gate_family.regime(G_true) is not None and np.any(G_true.gate[j] != 0):
            # Two sigmoids of the same non-zero slope never add up to one: the fit goes to G_bar instead.
            rows.append({**row, "status": "sigmoid regime-2 atom: the target is G_bar, not profiled"})
            continue
        losses = np.array(_loss_curve(spec, G_true, int(j), X, y, deltas, rng, mask))
        curves += [{"cell": int(j), "delta": d, "loss": v} for d, v in zip(deltas, losses)]
        keep = losses > floor
        if not keep.any():
            row["status"] = "not identified (loss flat at zero)"
        elif keep.sum() < 2:
            row.update(identified=True, status="undetermined: loss above the floor at one delta only (raise deltas)")
        else:
            order, log_c = np.polyfit(np.log(deltas[keep]), np.log(losses[keep]), 1)
            C = float(np.exp(log_c))
            at = lambda m: (sigma**2 / (C * m)) ** (1.0 / order)  # noqa: E731
            visible = bool(at(n_hi) < visible_delta)
            row.update(order=float(order), constant=C, identified=True, delta_at_n_min=at(n_lo),
                       delta_at_n_max=at(n_hi), visible=visible, n_visible=sigma**2 / (C * visible_delta**order),
                       status="visible" if visible else "pre-asymptotic")
        rows.append(row)
    return Profile(pd.DataFrame(rows), pd.DataFrame(curves))
