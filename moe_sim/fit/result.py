"""The result of a fit, shared by every estimator and backend."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..measure import MixingMeasure


@dataclass
class StartResult:
    """One start of a multi-start fit: where it came from and where it ended.

    grad_norm is the estimator's stopping statistic at the end (`LeastSquares` / `EM` say which), NaN for a
    start screened out on a subsample; measure is the end point (None when screened out or non-finite);
    stop names the test that ended it and n_polish counts the iterations of a polish phase (EM); trace, when
    asked for, the log-likelihood after each EM iteration.
    """

    init: str
    objective: float
    n_iter: int
    converged: bool
    reason: str = ""
    grad_norm: float = float("nan")
    measure: MixingMeasure | None = field(default=None, repr=False)
    stop: str = ""
    n_polish: int = 0
    trace: np.ndarray | None = field(default=None, repr=False)


@dataclass
class SearchReport:
    """How sure the global search is of its best optimum (`moe_sim.fit.search`).

    n_starts: local fits run on the full sample; n_hits: how many of them reached the best objective (within
    hit_tol: sigma^2 units of RSS for least squares, nats for EM); n_optima: distinct optima seen; gap: the
    distance from the best to the second-best distinct optimum in the same units (inf when only one was seen);
    p_miss: Boender-Rinnooy Kan's posterior estimate of the share of starts that would land in a basin not
    yet seen; met: the search stopped because n_hits (and p_miss, if `Search.max_p_miss` asks) reached its
    target, not because its budget ran out.
    """

    n_starts: int
    n_hits: int
    n_optima: int
    gap: float
    p_miss: float
    met: bool
    rounds: int
    hit_tol: float


@dataclass
class FitResult:
    """A fitted k-atom measure with its diagnostics.

    objective: residual sum of squares (method "lse", lower is better) or log-likelihood (method "em",
    higher is better). converged: the estimator's optimality criterion holds at the returned measure
    (`grad_norm`, the final value of its stopping statistic, at most its tolerance); otherwise `reason` says
    why (iteration cap, NaN, criterion not met). `stop` names the criterion that ended the best start;
    `n_iter` counts its iterations (`n_polish` of them in the polish phase). search: how sure the global
    search is (None for a plain list of starts). certified: converged and the search met its stopping rule.
    truth_objective is the true measure's objective on the same sample, when the caller gave the truth, and
    worse_than_truth flags a fit that did not reach it. Failures are returned, never raised.
    """

    measure: MixingMeasure | None
    objective: float
    n_iter: int
    converged: bool
    runtime_s: float
    method: str
    reason: str = ""
    starts: list[StartResult] = field(default_factory=list)
    truth_objective: float | None = None
    worse_than_truth: bool | None = None
    grad_norm: float = float("nan")
    stop: str = ""
    n_polish: int = 0
    search: SearchReport | None = None

    @property
    def certified(self) -> bool:
        """The optimality criterion holds and the global search met its stopping rule."""
        return bool(self.converged and self.search is not None and self.search.met)

    def compare_with_truth(self, truth_objective: float) -> None:
        """Store the truth's objective on the same sample and flag a fit worse than it by more than 1e-9
        relative (residual sum of squares for "lse": higher is worse; log-likelihood for "em": lower is)."""
        self.truth_objective = float(truth_objective)
        margin = 1e-9 * abs(self.truth_objective)
        if self.method == "lse":
            self.worse_than_truth = bool(self.objective > self.truth_objective + margin)
        else:
            self.worse_than_truth = bool(self.objective < self.truth_objective - margin)
