"""The result of a fit, shared by every estimator and backend."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..measure import MixingMeasure


@dataclass
class StartResult:
    """One start of a multi-start fit: where it came from and where it ended."""

    init: str
    objective: float
    n_iter: int
    converged: bool
    reason: str = ""


@dataclass
class FitResult:
    """A fitted k-atom measure with its diagnostics.

    objective: residual sum of squares (method "lse", lower is better) or log-likelihood (method "em",
    higher is better). converged is False with a `reason` when the fit hit its cap or produced NaN; such a
    result is returned, never raised. truth_objective is the true measure's objective on the same sample,
    when the caller gave the truth, and worse_than_truth flags a fit that did not reach it (a local optimum).
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

    def compare_with_truth(self, truth_objective: float) -> None:
        """Store the truth's objective on the same sample and flag a fit worse than it by more than 1e-9
        relative (residual sum of squares for "lse": higher is worse; log-likelihood for "em": lower is)."""
        self.truth_objective = float(truth_objective)
        margin = 1e-9 * abs(self.truth_objective)
        if self.method == "lse":
            self.worse_than_truth = bool(self.objective > self.truth_objective + margin)
        else:
            self.worse_than_truth = bool(self.objective < self.truth_objective - margin)
