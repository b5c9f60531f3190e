"""Voronoi cells, the losses D1 / D2 / D2,r / D3 of THEORY.md section 2, and per-parameter errors.

Softmax gates are compared up to the translation (c, beta) -> (c + t0, beta + t). The infimum is taken over
a finite set of translations, never an unbounded one (an unbounded t0 -> -inf sends every fitted weight to
zero and every loss to sum_j exp(c*_j)): for each fitted atom i, the translation that puts beta_i on the
reference true atom's beta (the last true atom) with c_i on its bias; then, with the reference cell that
translation defines, the total weight of that cell on the reference weight, with beta_i or with the cell's
weight-averaged beta on the reference beta. The last two align a fit whose reference cell holds several
atoms. The set moves with G, so the loss is exactly invariant to translating G.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp

from .gates import GATES
from .measure import MixingMeasure, MoESpec

LOSS_KINDS = ("auto", "D1", "D2", "D2r", "D3")
DEFAULT_R = {2: 4, 3: 6}


def cell_exponent(m: int, r=None) -> float:
    """r(m) for an over-specified cell of m atoms: 4 for m = 2, 6 for m = 3, the caller's r beyond.

    `r` may be a number (used for every m) or a mapping m -> r(m).
    """
    if isinstance(r, dict):
        if m in r:
            return float(r[m])
    elif r is not None:
        return float(r)
    if m in DEFAULT_R:
        return float(DEFAULT_R[m])
    raise ValueError(
        f"a Voronoi cell holds {m} fitted atoms; r(m) is only set for m = 2 (4) and m = 3 (6): pass r=... "
        f"(a number, or a dict such as {{{m}: 8}}) to choose r({m})"
    )


def sigmoid_regime(G_true: MixingMeasure) -> int:
    """1 when some true atom has zero score parameters (a constant gate extra atoms can split), else 2."""
    return GATES["sigmoid"].regime(G_true)


def loss_kind(spec: MoESpec, G_true: MixingMeasure, k: int) -> str:
    """The loss the theory prescribes for this family, truth and number of fitted atoms."""
    if spec.likelihood == "gaussian":
        return "D2"
    if spec.gate_family.regime(G_true) == 2:
        if k != G_true.k:
            raise ValueError(
                f"sigmoid regime 2 (every true atom has a non-zero score): the fit converges to G_bar, not to "
                f"G*; pass the {k}-atom G_bar as the reference measure (G_true has {G_true.k} atoms)"
            )
        return "D3"
    if spec.expert_family.identifiable == "weak":
        return "D2r"
    return "D1"


def _cells(spec: MoESpec, G: MixingMeasure, G_true: MixingMeasure) -> list[np.ndarray]:
    dist = np.linalg.norm(G.gate[:, None] - G_true.gate[None], axis=2)
    dist += np.linalg.norm(G.expert[:, None] - G_true.expert[None], axis=2)
    if G.var is not None and G_true.var is not None:
        dist += np.abs(G.var[:, None] - G_true.var[None])
    owner = np.argmin(dist, axis=1)
    return [np.flatnonzero(owner == j) for j in range(G_true.k)]


@dataclass
class _AtomErrors:
    """Errors of the fitted atoms `cell` against true atom j, per block."""

    gate: np.ndarray
    expert: np.ndarray
    intercept: np.ndarray
    slope: np.ndarray
    var: np.ndarray


def _atom_errors(spec: MoESpec, G: MixingMeasure, G_true: MixingMeasure, cell, j: int) -> _AtomErrors:
    dexp = G.expert[cell] - G_true.expert[j]
    var = np.abs(G.var[cell] - G_true.var[j]) if G.var is not None and G_true.var is not None else np.zeros(len(cell))
    if spec.expert_family.affine:
        intercept, slope = np.abs(dexp[:, 0]), np.linalg.norm(dexp[:, 1:], axis=1)
    else:
        intercept = slope = np.full(len(cell), np.nan)
    return _AtomErrors(
        gate=np.linalg.norm(G.gate[cell] - G_true.gate[j], axis=1),
        expert=np.linalg.norm(dexp, axis=1),
        intercept=intercept,
        slope=slope,
        var=var,
    )


def _cell_loss(spec: MoESpec, kind: str, w: np.ndarray, e: _AtomErrors, r) -> float:
    m = len(w)
    if m == 1:
        return float(w @ (e.gate + e.expert + e.var))
    if kind == "D1":
        return float(w @ (e.gate**2 + e.expert**2 + e.var**2))
    rr = cell_exponent(m, r)
    if kind == "D2":
        return float(w @ (e.gate**rr + e.intercept**rr + e.slope ** (rr / 2) + e.var ** (rr / 2)))
    return float(w @ (e.gate**rr + e.expert**rr + e.var**rr))


def _loss_fixed(spec: MoESpec, G: MixingMeasure, G_true: MixingMeasure, kind: str, r) -> float:
    w, w_true = spec.weights(G.bias), spec.weights(G_true.bias)
    if kind == "D3":
        cost = np.abs(w[:, None] - w_true[None])
        cost += np.linalg.norm(G.gate[:, None] - G_true.gate[None], axis=2)
        cost += np.linalg.norm(G.expert[:, None] - G_true.expert[None], axis=2)
        if G.var is not None and G_true.var is not None:
            cost += np.abs(G.var[:, None] - G_true.var[None])
        rows, cols = linear_sum_assignment(cost)
        return float(cost[rows, cols].sum())
    total = 0.0
    for j, cell in enumerate(_cells(spec, G, G_true)):
        total += abs(w[cell].sum() - w_true[j])
        if len(cell):
            total += _cell_loss(spec, kind, w[cell], _atom_errors(spec, G, G_true, cell, j), r)
    return total


def _candidate_translations(spec: MoESpec, G: MixingMeasure, G_true: MixingMeasure):
    for i in range(G.k):
        t = G_true.gate[-1] - G.gate[i]
        yield G_true.bias[-1] - G.bias[i], t
        ref_cell = _cells(spec, G.translate(0.0, t), G_true)[-1]
        if len(ref_cell):
            t0 = G_true.bias[-1] - logsumexp(G.bias[ref_cell])
            yield t0, t
            share = np.exp(G.bias[ref_cell] - logsumexp(G.bias[ref_cell]))
            yield t0, G_true.gate[-1] - share @ G.gate[ref_cell]


def _check_kind(spec: MoESpec, G: MixingMeasure, G_true: MixingMeasure, kind: str) -> str:
    if kind not in LOSS_KINDS:
        raise ValueError(f"kind={kind!r} is not allowed; choose one of {', '.join(map(repr, LOSS_KINDS))}")
    spec.check_measure(G, "G")
    spec.check_measure(G_true, "G_true")
    if kind == "auto":
        kind = loss_kind(spec, G_true, G.k)
    if kind == "D2" and not (spec.likelihood == "gaussian" and spec.expert_family.affine):
        raise ValueError(
            f"kind='D2' needs likelihood='gaussian' with affine experts [b, a]; got likelihood="
            f"{spec.likelihood!r}, expert={spec.expert_name!r}"
        )
    if kind == "D3" and G.k != G_true.k:
        raise ValueError(f"kind='D3' matches atoms one to one: G has {G.k} atoms, the reference {G_true.k}")
    return kind


def align(spec: MoESpec, G: MixingMeasure, G_true: MixingMeasure, kind: str = "auto", r=None):
    """(translated G, loss, resolved kind): G moved by the softmax translation that minimises the loss.

    For gates without the translation invariance (sigmoid) G is returned unchanged.
    """
    kind = _check_kind(spec, G, G_true, kind)
    if not spec.gate_family.translation_invariant:
        return G, _loss_fixed(spec, G, G_true, kind, r), kind
    best = None
    for t0, t in _candidate_translations(spec, G, G_true):
        moved = G.translate(t0, t)
        with np.errstate(invalid="ignore"):  # an overflowing weight times a zero error: no candidate
            loss = _loss_fixed(spec, moved, G_true, kind, r)
        loss = np.inf if np.isnan(loss) else loss
        if best is None or loss < best[1]:
            best = (moved, loss)
    return best[0], best[1], kind


def voronoi_loss(spec: MoESpec, G: MixingMeasure, G_true: MixingMeasure, kind: str = "auto", r=None) -> float:
    """The Voronoi loss of G against G_true: "D1", "D2", "D2r", "D3" or "auto" (the theory's choice).

    r sets r(m) for cells of m >= 4 atoms (D2, D2r): a number, or a dict m -> r(m).
    """
    return align(spec, G, G_true, kind, r)[1]


def voronoi_cells(spec: MoESpec, G: MixingMeasure, G_true: MixingMeasure) -> list[np.ndarray]:
    """Indices of the fitted atoms in the cell of each true atom (softmax: after the D1 alignment)."""
    G = align(spec, G, G_true, "D1")[0]
    return _cells(spec, G, G_true)


def parameter_errors(spec: MoESpec, G: MixingMeasure, G_true: MixingMeasure, kind: str = "auto", r=None):
    """Tidy per-cell, per-block errors: the cell maximum and the weight-averaged error.

    One row per (true atom, block), blocks: weight (|sum of cell weights - true weight|), gate, expert,
    expert_intercept and expert_slope (affine experts), var (Gaussian MoE), and expert_mean (the error of the
    cell's weight-averaged expert, the only identified quantity for linear experts under least squares).
    Softmax errors are read in the coordinates of the loss-minimising translation. `n_fitted` is the cell's
    size and `pattern` the sizes of all cells, e.g. "2-1".
    """
    G, _, kind = align(spec, G, G_true, kind, r)
    cells = _cells(spec, G, G_true)
    pattern = "-".join(str(len(c)) for c in cells)
    w, w_true = spec.weights(G.bias), spec.weights(G_true.bias)
    rows = []
    for j, cell in enumerate(cells):
        base = {"true_atom": j, "n_fitted": len(cell), "pattern": pattern}
        weight_err = abs(w[cell].sum() - w_true[j])
        rows.append({**base, "block": "weight", "max_error": weight_err, "mean_error": weight_err})
        e = _atom_errors(spec, G, G_true, cell, j)
        blocks = {"gate": e.gate, "expert": e.expert}
        if spec.expert_family.affine:
            blocks.update(expert_intercept=e.intercept, expert_slope=e.slope)
        if G.var is not None:
            blocks["var"] = e.var
        share = spec.weight_shares(G.bias[cell])
        for block, err in blocks.items():
            rows.append({
                **base, "block": block,
                "max_error": float(err.max()) if len(cell) else np.nan,
                "mean_error": float(share @ err) if len(cell) else np.nan,
            })
        mean_expert = np.linalg.norm(share @ G.expert[cell] - G_true.expert[j]) if len(cell) else np.nan
        rows.append({**base, "block": "expert_mean", "max_error": mean_expert, "mean_error": mean_expert})
    return pd.DataFrame(rows, columns=["true_atom", "n_fitted", "pattern", "block", "max_error", "mean_error"])
