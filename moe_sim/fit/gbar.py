"""G_bar, the target of sigmoid regime 2: the k-atom measure whose f_G is closest to f_G* in L2(mu).

Computed by least squares (`trf_fit`: Gauss-Newton, relative tolerances) on a large noise-free design,
inside a compact parameter space that excludes null atoms (THEORY.md s1): every weight sigmoid(c) >=
weight_min, every expert's size (`ExpertFamily.floor_index`: the outer scale eta_2 of a scaled expert, and its
largest inner weight where act(0) = 0; the largest slope of an affine one; the largest coefficient otherwise)
>= expert_min in absolute value, every parameter in [-param_max, param_max]. The expert-size bound is not a
box, so each start keeps the signs of those coordinates and bounds them away from zero (`lse.null_free_box`,
the same space `LeastSquares(expert_min=...)` fits in). G_bar is the best fit among k-atom measures of that
space, so none of its atoms is null; it often lies on the boundary and depends on it: the result lists every
parameter on an active bound and every atom whose contribution is still negligible (`issues`), and warns.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.special import logit

from ..measure import MixingMeasure, MoESpec
from ..model import Features, forward
from ..sample import draw_design
from .init import initial_measures
from .lse import null_free_box, trf_fit
from .result import FitResult


class DegenerateGBarWarning(UserWarning):
    """G_bar has an atom on the boundary of the parameter space or an atom that contributes nothing."""


@dataclass(frozen=True)
class ClosestMeasure:
    """G_bar with its excess L2(mu) risk mean((f_Gbar - f_G*)^2) on the design and its degeneracy report."""

    measure: MixingMeasure
    excess_risk: float
    issues: tuple[str, ...]
    fit: FitResult

    @property
    def degenerate(self) -> bool:
        """Whether any degeneracy issue was found."""
        return bool(self.issues)


def _freeze(G: MixingMeasure) -> tuple:
    return tuple(G.bias.tolist()), tuple(map(tuple, G.gate.tolist())), tuple(map(tuple, G.expert.tolist()))


def _start_bounds(spec, G0, weight_min, expert_min, param_max):
    """The space without null atoms around start G0: weights >= weight_min, |size| >= expert_min with G0's signs."""
    size = G0.k * (1 + spec.q + spec.p)
    low, high = np.full(size, -param_max), np.full(size, param_max)
    low[:G0.k] = max(logit(weight_min), -param_max)
    return null_free_box(spec, G0, (low, high), expert_min)


def _issues(spec, G, lim, X, f_true, weight_min, expert_min, null_tol) -> list[str]:
    """Parameters of G on an active bound of `lim`, and atoms whose contribution g_i h_i vanishes."""
    theta = G.to_vector()
    k, q = G.k, spec.q
    issues = []
    for idx in np.flatnonzero(np.isclose(theta, lim[0], rtol=1e-6, atol=1e-9)
                              | np.isclose(theta, lim[1], rtol=1e-6, atol=1e-9)):
        if idx < k:
            issues.append(f"atom {idx}: weight {spec.weights(theta[idx:idx + 1])[0]:.4g} at weight_min={weight_min}")
        elif idx < k * (1 + q):
            issues.append(f"atom {(idx - k) // q}: a gate parameter at the box edge {theta[idx]:.4g}")
        else:
            atom = (idx - k * (1 + q)) // spec.p
            if np.isclose(abs(theta[idx]), expert_min):
                issues.append(f"atom {atom}: expert size {abs(theta[idx]):.4g} at expert_min={expert_min}")
            else:
                issues.append(f"atom {atom}: an expert parameter at the box edge {theta[idx]:.4g}")
    fw = forward(spec, G, Features.of(spec, X))
    contribution = np.abs(fw.g * fw.h).max(axis=1)
    scale = max(float(np.std(f_true)), 1e-12)
    for i in np.flatnonzero(contribution < null_tol * scale):
        issues.append(f"atom {i}: null atom (max |g_i h_i| = {contribution[i]:.3g} on the design)")
    return issues


@lru_cache(maxsize=64)
def _closest(spec, frozen, k, design, n, box, rng, weight_min, expert_min, param_max, n_starts, null_tol):
    G_true = MixingMeasure(*(np.array(b) for b in frozen))
    X = draw_design(design, n, spec.d, rng, tuple(np.array(b) for b in box))
    y = forward(spec, G_true, Features.of(spec, X)).f
    starts = initial_measures(spec, X, y, k, ("near_truth", "kmeans", "random"), n_starts, rng, G_true)
    best, records = None, []
    for start in starts:
        lim = _start_bounds(spec, start[1], weight_min, expert_min, param_max)
        res = trf_fit(spec, X, y, k, [start], bounds=lim)
        records += res.starts
        if res.measure is not None and (best is None or res.objective < best[0].objective):
            best = (res, lim)
    best, lim = best
    best.starts = records
    issues = _issues(spec, best.measure, lim, X, y, weight_min, expert_min, null_tol)
    return ClosestMeasure(best.measure, best.objective / n, tuple(issues), best)


def closest_measure(
    spec: MoESpec,
    G_true: MixingMeasure,
    k: int,
    design: str = "uniform",
    n: int = 20000,
    bounds=(-1.0, 1.0),
    rng: int = 0,
    weight_min: float = 0.05,
    expert_min: float = 0.1,
    param_max: float = 20.0,
    n_starts: int = 3,
    null_tol: float = 1e-3,
) -> ClosestMeasure:
    """G_bar for a sigmoid-gated regression MoE (cached per spec, truth, k and options).

    design, n, bounds, rng: the noise-free design (rng an int seed, part of the cache key). weight_min,
    expert_min, param_max: the compact parameter space (module docstring). n_starts starts per strategy
    (near_truth, kmeans, random). null_tol: an atom whose |g_i h_i| stays below null_tol * sd(f_G*) on the
    design is reported as null. Warns DegenerateGBarWarning when an atom is on the boundary or null.
    """
    if spec.gate_family.regime(G_true) is None or spec.likelihood != "regression":
        raise ValueError(
            f"closest_measure needs a sigmoid-gated regression MoE, got gate={spec.gate_name!r}, "
            f"likelihood={spec.likelihood!r}"
        )
    spec.check_measure(G_true, "G_true")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not isinstance(rng, (int, np.integer)):
        raise ValueError(f"rng must be an int seed (G_bar is cached per seed), got {type(rng).__name__}")
    if not 0 < weight_min < 1:
        raise ValueError(f"weight_min must be in (0, 1), got {weight_min!r}")
    if not 0 <= expert_min < param_max:
        raise ValueError(f"need 0 <= expert_min < param_max, got expert_min={expert_min!r}, param_max={param_max!r}")
    box = tuple(tuple(np.atleast_1d(np.asarray(b, dtype=float)).tolist()) for b in bounds)
    result = _closest(
        spec, _freeze(G_true), int(k), design, int(n), box, int(rng),
        float(weight_min), float(expert_min), float(param_max), int(n_starts), float(null_tol),
    )
    if result.degenerate:
        warnings.warn("degenerate G_bar: " + "; ".join(result.issues), DegenerateGBarWarning, stacklevel=2)
    return result
