"""Estimators: least squares (regression MoE) and EM (Gaussian MoE) behind one entry point, `fit`."""

from __future__ import annotations

import time

import numpy as np

from ..measure import MixingMeasure, MoESpec
from .estimators import EM, ESTIMATORS, Estimator, LeastSquares, Search, make_estimator
from .gbar import ClosestMeasure, closest_measure
from .init import DEFAULT_PLAN, INITS, TRUTH_FREE, initial_measures
from .profile import Profile, profile
from .result import FitResult, SearchReport, StartResult

METHODS = tuple(ESTIMATORS)

__all__ = [
    "DEFAULT_PLAN", "EM", "INITS", "METHODS", "TRUTH_FREE", "ClosestMeasure", "Estimator", "FitResult",
    "LeastSquares", "Profile", "Search", "SearchReport", "StartResult", "closest_measure", "fit",
    "initial_measures", "make_estimator", "profile",
]


def fit(
    spec: MoESpec,
    X,
    y,
    k: int,
    method: str | None = None,
    init="default",
    n_starts: int | None = None,
    rng=None,
    G_true: MixingMeasure | None = None,
    init_options: dict | None = None,
    estimator: Estimator | None = None,
    **options,
) -> FitResult:
    """Fit a k-atom mixing measure to (X, y) by a global search over starts (`moe_sim.fit.estimators`).

    method: "lse" (least squares, regression MoE; the default) or "em" (maximum likelihood, Gaussian MoE),
    or give `estimator` (a `LeastSquares` or `EM`); options are that estimator's settings (e.g. tol, bounds,
    search={"hits": 3}), validated before anything runs.
    init: "default" (`DEFAULT_PLAN[method]` per round: k-means, random, split and merge starts, plus
    near_truth when G_true is given), a strategy name of `INITS`, a list of them, or a dict {name: count};
    n_starts, when given, is the count for every strategy.
    init_options: keyword arguments of the strategies (near_truth: scale, power).
    G_true: the truth, used by near_truth and to store the truth's objective on the same sample
    (FitResult.truth_objective, worse_than_truth).
    """
    t0 = time.perf_counter()
    if estimator is None:
        estimator = make_estimator("lse" if method is None else method, options)
    elif options or method not in (None, estimator.method):
        raise ValueError(f"give either estimator={estimator!r} or method and options, not both "
                         f"(got method={method!r}, options={sorted(options)})")
    result = estimator.fit(spec, X, y, k, init, n_starts, np.random.default_rng(rng), G_true, init_options)
    result.runtime_s = time.perf_counter() - t0
    return result
