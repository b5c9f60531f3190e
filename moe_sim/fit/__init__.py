"""Estimators: least squares (regression MoE) and EM (Gaussian MoE) behind one entry point, `fit`."""

from __future__ import annotations

import time

import numpy as np

from ..measure import MixingMeasure, MoESpec
from ..model import check_inputs, log_density
from .gbar import ClosestMeasure, closest_measure
from .init import DEFAULT_PLAN, INITS, TRUTH_FREE, initial_measures
from .lse import lse_fit
from .profile import Profile, profile
from .result import FitResult, StartResult

METHODS = ("lse", "em")
BACKENDS = ("numpy", "torch")

__all__ = [
    "DEFAULT_PLAN", "INITS", "METHODS", "TRUTH_FREE", "ClosestMeasure", "FitResult", "Profile", "StartResult",
    "closest_measure", "fit", "fit_starts", "initial_measures", "profile",
]


def fit_starts(spec: MoESpec, X, y, k: int, method: str, init, n_starts: int | None, rng: np.random.Generator,
               G_true: MixingMeasure | None = None, init_options: dict | None = None) -> list:
    """The (name, measure) starts `fit` uses: shared with the sweep's batched torch path, so both start alike."""
    unknown = set(init_options or {}) - {"scale", "power"}
    if unknown:
        raise ValueError(f"init_options has unknown keys {sorted(unknown)}; allowed: 'scale', 'power'")
    return initial_measures(spec, X, y, k, init, n_starts, rng, G_true, method=method, **(init_options or {}))


def fit(
    spec: MoESpec,
    X,
    y,
    k: int,
    method: str = "lse",
    init="default",
    n_starts: int | None = None,
    rng=None,
    G_true: MixingMeasure | None = None,
    backend: str = "numpy",
    init_options: dict | None = None,
    **options,
) -> FitResult:
    """Fit a k-atom mixing measure to (X, y), best of several starts.

    method: "lse" (least squares, regression MoE) or "em" (maximum likelihood, Gaussian MoE).
    init: "default" (`DEFAULT_PLAN`: least squares 8 kmeans and 8 random starts, plus 8 near_truth when G_true
    is given; EM one of each), a strategy name of `INITS`, a list of them, or a dict {name: count}; n_starts,
    when given, is the count for every strategy (default 8 for lse, 1 for em).
    init_options: keyword arguments of the strategies (near_truth: scale, power).
    G_true: the truth, used by near_truth and to store the truth's objective on the same sample
    (FitResult.truth_objective, worse_than_truth).
    backend: "numpy" (scipy L-BFGS-B / NumPy EM) or "torch" (`torch_backend.fit_batch` on a batch of one:
    Levenberg-Marquardt for lse; install the torch extra).
    options: passed to the estimator (lse: bounds, ftol_n, gtol, max_iter, maxcor, screen, keep; em: tol,
    max_iter, var_floor; torch: device, dtype, and the lse/em options but gtol and maxcor).
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not allowed; choose one of {', '.join(map(repr, METHODS))}")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; choose one of {', '.join(map(repr, BACKENDS))}")
    X, y = check_inputs(spec, X, y)
    if G_true is not None:
        spec.check_measure(G_true, "G_true")
    rng = np.random.default_rng(rng)
    starts = fit_starts(spec, X, y, k, method, init, n_starts, rng, G_true, init_options)
    if backend == "torch":
        from .torch_backend import fit_batch

        result = fit_batch(spec, [X], [y], k, [starts], method=method, truth=G_true, rngs=[rng], **options)[0]
    elif method == "lse":
        result = lse_fit(spec, X, y, k, starts, G_true=G_true, rng=rng, **options)
    else:
        from .em import em_fit

        result = em_fit(spec, X, y, k, starts, rng=rng, **options)
    if method == "em" and G_true is not None and result.truth_objective is None:
        result.compare_with_truth(np.sum(log_density(spec, G_true, X, y)))
    result.runtime_s = time.perf_counter() - t0
    return result
