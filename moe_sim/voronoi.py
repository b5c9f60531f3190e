"""Voronoi cells, the losses D1 / D1_sigmoid / D2 / D2,r / D3 of THEORY.md section 2, and per-parameter errors.

Softmax gates are compared up to the translation (c, beta) -> (c + t0, beta + t), and a loss is its infimum
over a bounded set of translations: t0 keeps the fitted total weight within a factor WEIGHT_FACTOR = 10 of the
truth's, t is free. The bound is what keeps the infimum meaningful: t0 -> -inf sends every fitted weight to 0
and the loss to sum_j w(c*_j) for any fit at all (THEORY.md s2). The weight-sum terms alone are at least
0.9 sum_j w(c*_j) at the lower end of the band and 9 sum_j w(c*_j) at the upper one, so a loss below that is
attained strictly inside and the band binds only for fits that bad. In t no bound is needed: with every
weight bounded below, the loss grows without bound with |t|.

The minimisation: cells do not depend on t0, and in s = exp(t0) the loss sum_j |s S_j - w(c*_j)| + s P(t)
(S_j the cell's weight at t0 = 0, P the weighted parameter terms) is convex and piecewise linear, so for each
t the best t0 is exact: a breakpoint w(c*_j) / S_j or an end of the band. Over t: Nelder-Mead from the best
seeds, the translations that put one fitted atom's gate on one true atom's, or a cell's weighted-mean gate on
its true atom's (a finite set like this, taken alone, overstated D1 / D2 by up to 3.6 times, THEORY.md s7).
Seeds and search move with G, so the loss is invariant to translating G (to rounding).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment, minimize
from scipy.special import logsumexp

from .gates import GATES
from .measure import MixingMeasure, MoESpec

LOSS_KINDS = ("auto", "D1", "D1_sigmoid", "D2", "D2r", "D3")
DEFAULT_R = {2: 4, 3: 6}
D2R_DEFAULT = 1.0  # D2,r's r when the caller gives none: the theory's claim is for every r >= 1
WEIGHT_FACTOR = 10.0  # softmax translations keep the fitted total weight within this factor of the truth's
_POLISHED_SEEDS = 3  # Nelder-Mead runs from this many of the best distinct seeds


def cell_exponent(m: int, r=None) -> float:
    """r(m) for an over-specified D2 cell of m atoms: 4 for m = 2, 6 for m = 3, the caller's r beyond.

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


class _Pairs:
    """Per-block distances between every fitted atom i and true atom j, with the fitted gates shifted by t:
    the pieces of the Voronoi cells and of every loss term, computed once so that a translation costs a few
    operations on (k, k*) arrays."""

    def __init__(self, spec: MoESpec, G: MixingMeasure, G_true: MixingMeasure):
        self.spec, self.G, self.G_true = spec, G, G_true
        self.gate_diff = G.gate[:, None] - G_true.gate[None]  # (k, k*, q)
        dexp = G.expert[:, None] - G_true.expert[None]
        self.expert = np.linalg.norm(dexp, axis=2)
        if G.var is not None and G_true.var is not None:
            self.var = np.abs(G.var[:, None] - G_true.var[None])
        else:
            self.var = np.zeros_like(self.expert)
        # the first expert parameter apart from the others: intercept b and slope a of affine experts, outer
        # scale eta_2 and inner weights eta_1 of scaled ones
        if spec.expert_family.affine or spec.expert_family.scaled:
            self.first, self.rest = np.abs(dexp[..., 0]), np.linalg.norm(dexp[..., 1:], axis=2)
        else:
            self.first = self.rest = np.full_like(self.expert, np.nan)
        self.w_true = spec.weights(G_true.bias)
        self.top = float(G.bias.max())
        self.scaled_weights = np.exp(G.bias - self.top)  # softmax weights at t0 = -top

    def gate(self, t=0.0) -> np.ndarray:
        """||beta_i + t - beta*_j||, (k, k*)."""
        d = self.gate_diff + t
        return np.sqrt(np.einsum("ijq,ijq->ij", d, d))

    def owner(self, gate: np.ndarray) -> np.ndarray:
        """The true atom whose cell holds each fitted atom (the bias is not part of the distance)."""
        return np.argmin(gate + self.expert + self.var, axis=1)

    def cells(self, owner: np.ndarray) -> list[np.ndarray]:
        return [np.flatnonzero(owner == j) for j in range(self.G_true.k)]

    def terms(self, kind: str, r, gate: np.ndarray, owner: np.ndarray) -> np.ndarray:
        """The parameter term of each fitted atom in its cell, before any weight factor (k,)."""
        at = np.arange(len(owner)), owner
        e_gate, e_expert, e_var = gate[at], self.expert[at], self.var[at]
        if kind == "D2r":
            return e_gate**r + e_expert**r + e_var**r
        size = np.bincount(owner, minlength=self.G_true.k)[owner]
        out = np.where(size == 1, e_gate + e_expert + e_var, e_gate**2 + e_expert**2 + e_var**2)
        if kind == "D2":
            for m in np.unique(size[size > 1]):
                rr, sel = cell_exponent(int(m), r), size == m
                out[sel] = (e_gate[sel] ** rr + self.first[at][sel] ** rr + self.rest[at][sel] ** (rr / 2)
                            + e_var[sel] ** (rr / 2))
        return out


def _cells(spec: MoESpec, G: MixingMeasure, G_true: MixingMeasure) -> list[np.ndarray]:
    pairs = _Pairs(spec, G, G_true)
    return pairs.cells(pairs.owner(pairs.gate()))


def _loss_fixed(spec: MoESpec, G: MixingMeasure, G_true: MixingMeasure, kind: str, r) -> float:
    """The loss of G as it stands, without a translation."""
    w, w_true = spec.weights(G.bias), spec.weights(G_true.bias)
    if kind == "D3":
        cost = np.abs(w[:, None] - w_true[None])
        cost += np.linalg.norm(G.gate[:, None] - G_true.gate[None], axis=2)
        cost += np.linalg.norm(G.expert[:, None] - G_true.expert[None], axis=2)
        if G.var is not None and G_true.var is not None:
            cost += np.abs(G.var[:, None] - G_true.var[None])
        rows, cols = linear_sum_assignment(cost)
        return float(cost[rows, cols].sum())
    pairs = _Pairs(spec, G, G_true)
    gate = pairs.gate()
    owner = pairs.owner(gate)
    terms = pairs.terms(kind, r, gate, owner)
    total = 0.0
    for j, cell in enumerate(pairs.cells(owner)):
        if kind != "D1_sigmoid":
            with np.errstate(invalid="ignore"):  # an overflowing weight times a zero error: inf, not NaN
                total += abs(w[cell].sum() - w_true[j]) + float(np.nan_to_num(w[cell] * terms[cell], nan=np.inf).sum())
        elif len(cell) == 1:  # D1_sigmoid's exact cells: |c_i - c*_j| instead of the weight sum
            total += abs(G.bias[cell[0]] - G_true.bias[j]) + float(terms[cell].sum())
        else:
            total += abs(w[cell].sum() - w_true[j]) + float(terms[cell].sum())
    return total


def _best_t0(pairs: _Pairs, kind: str, r, t, band) -> tuple[float, float]:
    """(loss, t0): the softmax loss at gate translation t and its best bias translation t0 in band (module
    docstring: exact, since the loss is convex and piecewise linear in exp(t0)). Run under
    np.errstate(all="ignore")."""
    w_true, top = pairs.w_true, pairs.top
    gate = pairs.gate(t)
    owner = pairs.owner(gate)
    scaled = pairs.scaled_weights
    log_S = np.log(np.bincount(owner, weights=scaled, minlength=len(w_true))) + top  # -inf: empty cell
    P = float(scaled @ pairs.terms(kind, r, gate, owner))  # NaN: an infinite term times a zero weight
    t0 = np.clip(np.concatenate([np.log(w_true) - log_S, band]), *band)
    loss = np.abs(np.exp(t0[:, None] + log_S[None]) - w_true).sum(axis=1) + np.exp(t0 + top) * P
    loss[np.isnan(loss)] = np.inf
    best = int(np.argmin(loss))
    return float(loss[best]), float(t0[best])


def _seeds(pairs: _Pairs) -> list[np.ndarray]:
    """Gate translations t that put one fitted atom's gate on one true atom's, then, with the cells they
    define, each cell's weight-averaged gate on its true atom's."""
    G, G_true = pairs.G, pairs.G_true
    seeds = []
    for i in range(G.k):
        for j in range(G_true.k):
            t = G_true.gate[j] - G.gate[i]
            seeds.append(t)
            for jj, cell in enumerate(pairs.cells(pairs.owner(pairs.gate(t)))):
                if len(cell):
                    seeds.append(G_true.gate[jj] - pairs.spec.weight_shares(G.bias[cell]) @ G.gate[cell])
    return seeds


def _translation_infimum(spec: MoESpec, G: MixingMeasure, G_true: MixingMeasure, kind: str, r):
    """(loss, t0, t): the softmax translation infimum over the band of the module docstring."""
    pairs = _Pairs(spec, G, G_true)
    centre = float(np.log(pairs.w_true.sum()) - logsumexp(G.bias))
    band = np.array([centre - np.log(WEIGHT_FACTOR), centre + np.log(WEIGHT_FACTOR)])
    q = G.gate.shape[1]
    step = 0.05 * max(1.0, float(np.ptp(G_true.gate)))  # Nelder-Mead's first simplex, at the gates' scale
    with np.errstate(all="ignore"):
        seeds = _seeds(pairs)
        values = [_best_t0(pairs, kind, r, t, band)[0] for t in seeds]
        chosen: list[int] = []
        for i in np.argsort(values, kind="stable"):
            if len(chosen) == _POLISHED_SEEDS or not np.isfinite(values[i]):
                break
            if all(np.max(np.abs(seeds[i] - seeds[c])) > 1e-9 for c in chosen):
                chosen.append(int(i))
        best_t, best = seeds[int(np.argmin(values))], min(values)
        for i in chosen if best > 0 else ():
            # stop when the simplex is 1e-9 wide and its values agree to 1e-12 of the best seed's loss
            res = minimize(lambda t: _best_t0(pairs, kind, r, t, band)[0], seeds[i], method="Nelder-Mead",
                           options={"initial_simplex": seeds[i] + np.vstack([np.zeros(q), step * np.eye(q)]),
                                    "xatol": 1e-9, "fatol": 1e-12 * best, "maxfev": 400 * (q + 1)})
            if res.fun < best:
                best, best_t = float(res.fun), res.x
        loss, t0 = _best_t0(pairs, kind, r, best_t, band)
    return loss, t0, best_t


def _check_kind(spec: MoESpec, G: MixingMeasure, G_true: MixingMeasure, kind: str, r) -> str:
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
    if kind == "D1_sigmoid" and spec.gate_family.regime(G_true) != 1:
        raise ValueError(
            f"kind='D1_sigmoid' is D1's sigmoid regime-1 variant: it needs a gate with regimes and a regime-1 "
            f"truth; got gate={spec.gate_name!r}, regime={spec.gate_family.regime(G_true)!r}"
        )
    if kind == "D2r" and r is not None:
        real = isinstance(r, (int, float, np.integer, np.floating)) and not isinstance(r, bool)
        if not (real and np.isfinite(r) and r >= 1):
            raise ValueError(f"r={r!r} is not allowed for kind='D2r': it needs one number r >= 1")
    return kind


def align(spec: MoESpec, G: MixingMeasure, G_true: MixingMeasure, kind: str = "auto", r=None):
    """(translated G, loss, resolved kind): G moved by the softmax translation that minimises the loss over
    the band of the module docstring.

    For gates without the translation invariance (sigmoid) G is returned unchanged.
    """
    kind = _check_kind(spec, G, G_true, kind, r)
    if kind == "D2r" and r is None:
        r = D2R_DEFAULT
    if not spec.gate_family.translation_invariant:
        return G, _loss_fixed(spec, G, G_true, kind, r), kind
    loss, t0, t = _translation_infimum(spec, G, G_true, kind, r)
    return G.translate(t0, t), loss, kind


def voronoi_loss(spec: MoESpec, G: MixingMeasure, G_true: MixingMeasure, kind: str = "auto", r=None) -> float:
    """The Voronoi loss of G against G_true: "D1", "D1_sigmoid", "D2", "D2r", "D3" or "auto" (the theory's).

    D1_sigmoid is D1 as the sigmoid regime-1 sibling paper writes it (THEORY.md s2): the weight-sum term only
    for cells that do not hold exactly one atom (empty cells keep it: a missed atom is not free),
    |c_i - c*_j| for exact cells, and no weight factor on the parameter terms. r: for D2, r(m) of cells of
    m >= 4 atoms (a number, or a dict m -> r(m)); for D2r, the one power r >= 1 of every cell's parameter
    terms, exact cells included (D2R_DEFAULT = 1 when not given).
    """
    return align(spec, G, G_true, kind, r)[1]


def voronoi_cells(spec: MoESpec, G: MixingMeasure, G_true: MixingMeasure) -> list[np.ndarray]:
    """Indices of the fitted atoms in the cell of each true atom (softmax: after the D1 alignment)."""
    G = align(spec, G, G_true, "D1")[0]
    return _cells(spec, G, G_true)


def parameter_errors(spec: MoESpec, G: MixingMeasure, G_true: MixingMeasure, kind: str = "auto", r=None):
    """Tidy per-cell, per-block errors: the cell maximum and the weight-averaged error.

    One row per (true atom, block), blocks: weight (|sum of cell weights - true weight|), gate, expert,
    expert_intercept and expert_slope (affine experts), expert_scale and expert_inner (eta_2 and eta_1 of
    scaled experts, whose cells are flat along eta_2: `moe_sim.fit.profile`), var (Gaussian MoE), and
    expert_mean (the error of the cell's weight-averaged expert, the only identified quantity for linear
    experts under least squares).
    Softmax errors are read in the coordinates of the loss-minimising translation. `n_fitted` is the cell's
    size and `pattern` the sizes of all cells, e.g. "2-1".
    """
    G, _, kind = align(spec, G, G_true, kind, r)
    pairs = _Pairs(spec, G, G_true)
    gate = pairs.gate()
    cells = pairs.cells(pairs.owner(gate))
    pattern = "-".join(str(len(c)) for c in cells)
    w, w_true = spec.weights(G.bias), spec.weights(G_true.bias)
    rows = []
    for j, cell in enumerate(cells):
        base = {"true_atom": j, "n_fitted": len(cell), "pattern": pattern}
        weight_err = abs(w[cell].sum() - w_true[j])
        rows.append({**base, "block": "weight", "max_error": weight_err, "mean_error": weight_err})
        blocks = {"gate": gate[cell, j], "expert": pairs.expert[cell, j]}
        if spec.expert_family.affine:
            blocks.update(expert_intercept=pairs.first[cell, j], expert_slope=pairs.rest[cell, j])
        if spec.expert_family.scaled:
            blocks.update(expert_scale=pairs.first[cell, j], expert_inner=pairs.rest[cell, j])
        if G.var is not None:
            blocks["var"] = pairs.var[cell, j]
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
