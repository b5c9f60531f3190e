"""The predicted-rates table of THEORY.md section 3, as data.

Each rule gives, for a model family (gate, estimator, score class, expert class, sigmoid regime) and a cell
type (exactly or over-specified), the exponent a of the rate n^-a of each parameter block, or a named
non-polynomial behaviour ("slow", "not identified", "1/log^lambda(n)"), or "measured" where the theory
makes no prediction. Every rule carries its source tag: S stated in a paper, V read in a later paper of the
group that restates it, R reconstructed (a hypothesis the simulator tests), measured (by the prototype, or
no prediction at all).

Expert classes (`expert_class`): the theory's rates for FFN experts are about eta_2 act(eta_1^T x) (the scaled
families, "strong"); act(a^T x + b) with an inner bias is outside that class under a sloped gate (THEORY.md
s1), so its over-specified cells get "measured", not a rate. ReLU is "homogeneous" (ReLU(a x + b)) or
"homogeneous_scaled" (eta_2 ReLU(eta_1 x), whose expert is not identified even in an exact cell).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pandas as pd

from .families import ExpertFamily
from . import checks
from .measure import MixingMeasure, MoESpec
from .voronoi import cell_exponent


@dataclass(frozen=True)
class Rule:
    gate: str  # "softmax" | "sigmoid" | "any"
    estimator: str  # "mle" (Gaussian MoE, EM) | "lse"
    score: str  # "linear" | "quadratic" | "partial_quadratic" | "quadratic*" (either quadratic) | "any"
    experts: str  # an `expert_class`: strong | inner_bias | homogeneous | homogeneous_scaled | weak | none
    regime: int | None  # sigmoid regime (1, 2); None: any (softmax has no regimes)
    cell: str  # "exact" | "over"
    rates: dict  # block -> Fraction exponent a (rate n^-a) or a named behaviour
    tag: str
    source: str


HALF = Fraction(1, 2)
QUARTER = Fraction(1, 4)
_EXACT = {"weight": HALF, "gate": HALF, "expert": HALF}
_SLOW = {"weight": HALF, "gate": "slow", "expert": "slow"}
_OVER_STRONG = {"weight": HALF, "gate": QUARTER, "expert": QUARTER}
_MEASURED = {"weight": "measured", "gate": "measured", "expert": "measured"}
_SIBLING = "2025 sibling paper (THEORY.md s1)"
_CARRIED = "2025 sibling paper's MLE rate carried over to least squares"
_INNER_BIAS = "THEORY.md s1, s3: act(a^T x + b) is outside the strongly identifiable class"
_SCALE_TRADE = "THEORY.md s1: eta_2 ReLU(eta_1 x) trades scale between eta_2 and eta_1"
TARGETS = ("auto", "truth")
NO_CONVERGENCE = "no convergence to G* (G_hat -> G_bar)"
NOT_UNIQUE = "G_bar not unique (experts closed under sums)"

RULES: tuple[Rule, ...] = (
    # Paper a: softmax Gaussian MoE, MLE; over-specified exponents depend on r = r(m), filled in below.
    Rule("softmax", "mle", "linear", "weak", None, "exact", {**_EXACT, "var": HALF}, "S", "paper a"),
    Rule("softmax", "mle", "linear", "weak", None, "over", {"weight": HALF, "gate": "1/(2r)",
         "expert_intercept": "1/(2r)", "expert_slope": "1/r", "var": "1/r"}, "S", "paper a"),
    # Softmax Gaussian MoE, MLE, strongly identifiable experts eta_2 act(eta_1^T x).
    Rule("softmax", "mle", "linear", "strong", None, "exact", {**_EXACT, "var": HALF}, "V", _SIBLING),
    Rule("softmax", "mle", "linear", "strong", None, "over", {**_OVER_STRONG, "var": QUARTER}, "V", _SIBLING),
    # Least squares, linear score.
    Rule("softmax", "lse", "linear", "strong", None, "exact", _EXACT, "R", _CARRIED),
    Rule("softmax", "lse", "linear", "strong", None, "over", _OVER_STRONG, "R", _CARRIED),
    Rule("any", "lse", "any", "homogeneous_scaled", None, "exact",
         {"weight": HALF, "gate": HALF, "expert": "not identified"}, "R", _SCALE_TRADE),
    Rule("any", "lse", "any", "homogeneous_scaled", None, "over",
         {"weight": HALF, "gate": "not identified", "expert": "not identified"}, "R", _SCALE_TRADE),
    Rule("any", "lse", "any", "homogeneous", 1, "exact", _EXACT, "measured", "prototype (THEORY.md s6)"),
    Rule("any", "lse", "any", "homogeneous", 1, "over",
         {"weight": HALF, "gate": "not identified", "expert": "not identified"},
         "measured", "prototype (THEORY.md s6)"),
    Rule("softmax", "lse", "linear", "weak", None, "exact", _EXACT, "S", "paper b"),
    Rule("softmax", "lse", "linear", "weak", None, "over", _SLOW, "S", "paper b; prototype"),
    Rule("sigmoid", "lse", "linear", "strong", 1, "exact", _EXACT, "V", f"{_SIBLING}; R for paper c"),
    Rule("sigmoid", "lse", "linear", "strong", 1, "over", _OVER_STRONG, "V", f"{_SIBLING}; R for paper c"),
    Rule("sigmoid", "lse", "linear", "weak", 1, "exact", _EXACT, "R", "paper c"),
    Rule("sigmoid", "lse", "linear", "weak", 1, "over", _SLOW, "R", "paper c"),
    Rule("sigmoid", "lse", "any", "strong", 2, "exact", _EXACT, "R", "paper c; Yan et al. 2025 (towards G_bar)"),
    Rule("sigmoid", "lse", "any", "homogeneous", 2, "exact", _EXACT, "R", "paper c; Yan et al. 2025 (towards G_bar)"),
    Rule("sigmoid", "lse", "any", "weak", 2, "exact", _EXACT, "R", "paper c; Yan et al. 2025 (towards G_bar)"),
    Rule("sigmoid", "lse", "any", "inner_bias", 2, "exact", _EXACT, "R",
         "paper c; Yan et al. 2025 (towards G_bar)"),
    # act(a^T x + b): exact atoms measured at n^-1/2 (THEORY.md s6), over-specified cells not covered.
    Rule("any", "lse", "any", "inner_bias", None, "exact", _EXACT, "measured", _INNER_BIAS),
    Rule("any", "lse", "any", "inner_bias", None, "over", _MEASURED, "measured", _INNER_BIAS),
    # Quadratic scores (attention rows). THEORY.md states 1/log^lambda(n) for the fully quadratic score only;
    # a partially quadratic score is a linear score over the monomial features x_u x_v, so it gets the
    # linear score's rates (reconstructed; the profile pre-flight finds its split quartic, experiments/README).
    Rule("softmax", "lse", "partial_quadratic", "strong", None, "exact", _EXACT, "R",
         "linear score over monomial features"),
    Rule("softmax", "lse", "partial_quadratic", "strong", None, "over",
         {"weight": HALF, "gate": QUARTER, "expert": QUARTER}, "R", "linear score over monomial features"),
    Rule("softmax", "lse", "partial_quadratic", "weak", None, "exact", _EXACT, "R",
         "linear score over monomial features"),
    Rule("softmax", "lse", "partial_quadratic", "weak", None, "over", _SLOW, "R",
         "linear score over monomial features"),
    Rule("softmax", "lse", "quadratic", "weak", None, "exact", _EXACT, "R", "Yan et al. 2025"),
    Rule("softmax", "lse", "quadratic", "weak", None, "over",
         {"weight": HALF, "gate": "1/log^lambda(n)", "expert": "1/log^lambda(n)"}, "R", "Yan et al. 2025"),
    Rule("softmax", "lse", "quadratic", "strong", None, "exact", _EXACT, "R", "Yan et al. 2025"),
    Rule("softmax", "lse", "quadratic", "strong", None, "over",
         {"weight": HALF, "gate": "1/log^lambda(n)", "expert": "1/log^lambda(n)"}, "R", "Yan et al. 2025"),
    Rule("sigmoid", "lse", "quadratic*", "strong", 1, "exact", _EXACT, "R", "Yan et al. 2025"),
    Rule("sigmoid", "lse", "quadratic*", "strong", 1, "over",
         {"weight": HALF, "gate": QUARTER, "expert": QUARTER}, "R", "Yan et al. 2025"),
    Rule("sigmoid", "lse", "quadratic*", "weak", 1, "exact", _EXACT, "R", "Yan et al. 2025"),
    Rule("sigmoid", "lse", "quadratic*", "weak", 1, "over", _SLOW, "R", "Yan et al. 2025"),
    # Input-independent experts.
    Rule("any", "lse", "any", "none", None, "exact", {"weight": "slow", "gate": "slow", "expert": "slow"},
         "R", "THEORY.md s3"),
    Rule("any", "lse", "any", "none", None, "over", {"weight": "slow", "gate": "slow", "expert": "slow"},
         "R", "THEORY.md s3"),
)


def expert_class(family: ExpertFamily) -> str:
    """The expert class the rules are keyed by: `ExpertFamily.identifiable`, except that strong and homogeneous
    families without an outer scale (act(a^T x + b), ReLU(a x + b)) and with one (eta_2 act(eta_1^T x)) part:
    "strong" is kept for the scaled families, the theory's class; an unscaled "strong" family is "inner_bias";
    a scaled "homogeneous" one (eta_2 ReLU(eta_1 x)) is "homogeneous_scaled"."""
    if family.identifiable == "strong":
        return "strong" if family.scaled else "inner_bias"
    if family.identifiable == "homogeneous" and family.scaled:
        return "homogeneous_scaled"
    return family.identifiable


def _matches(rule: Rule, gate: str, estimator: str, score: str, experts: str, regime: int | None) -> bool:
    return (
        rule.gate in ("any", gate)
        and rule.estimator == estimator
        and (rule.score in ("any", score) or (rule.score == "quadratic*" and score != "linear"))
        and rule.experts == experts
        and (rule.regime is None or regime is None or rule.regime == regime)
    )


def _exponent(value, r: float) -> tuple[float, str]:
    """(exponent, label) for a table value; exponent NaN for non-polynomial behaviour."""
    if isinstance(value, Fraction):
        return float(value), f"n^-{value}"
    if value == "1/(2r)":
        return 1.0 / (2 * r), f"n^-1/{2 * r:g}"
    if value == "1/r":
        return 1.0 / r, f"n^-1/{r:g}"
    return np.nan, value


def predicted_rates(spec: MoESpec, G_true: MixingMeasure, k: int, r=None, target: str = "auto") -> pd.DataFrame:
    """The predictions for fitting k atoms to data from G_true in this family, one row per cell type and block.

    Columns: cell ("exact" | "over"), cell_size, block, exponent (a in n^-a; NaN where no polynomial rate
    is predicted), rate (its label; "measured" where the theory predicts nothing), reference ("G*" or "G_bar"), tag,
    source. Over-specified rows are given
    for every cell size from 2 to k - k* + 1. The regression function's sqrt(log n / n) [S] is always the
    first row. target "truth" asks for the errors against G* even where the fit converges to G_bar (an
    over-specified sigmoid fit of a regime-2 truth): there the theory predicts no convergence (NO_CONVERGENCE).
    Against G_bar, experts closed under sums at a shared gate (scaled FFN, linear, polynomial) get NOT_UNIQUE.
    """
    if target not in TARGETS:
        raise ValueError(f"target={target!r} is not allowed; choose one of {', '.join(map(repr, TARGETS))}")
    if isinstance(r, dict):
        bad = [m for m in r if isinstance(m, bool) or not isinstance(m, int) or m < 2]
        if bad:
            raise ValueError(f"r={r!r} maps cell sizes m to r(m): keys must be integers >= 2, got {bad}")
        for m, r_m in r.items():
            checks.number(f"r[{m}]", r_m, low=0.0, strict=True)
    elif r is not None:
        checks.number("r", r, low=0.0, strict=True)
    spec.check_measure(G_true, "G_true")
    if not isinstance(k, (int, np.integer)) or k < G_true.k:
        raise ValueError(f"k must be an integer >= the number of true atoms ({G_true.k}), got {k!r}")
    estimator = "mle" if spec.likelihood == "gaussian" else "lse"
    regime = spec.gate_family.regime(G_true)
    reference = "G_bar" if regime == 2 else "G*"
    rows = [{"cell": "all", "cell_size": np.nan, "block": "regression_function", "exponent": 0.5,
             "rate": "sqrt(log n / n)", "reference": "G*", "tag": "S", "source": "all papers"}]
    if target == "truth" and regime == 2 and k > G_true.k:
        for m in range(1, k - G_true.k + 2):
            rows += [{"cell": "exact" if m == 1 else "over", "cell_size": m, "block": block, "exponent": np.nan,
                      "rate": NO_CONVERGENCE, "reference": "G*", "tag": "V", "source": _SIBLING}
                     for block in ("weight", "gate", "expert")]
        return pd.DataFrame(rows)
    family = spec.expert_family
    if regime == 2 and k > G_true.k and (family.scaled or family.linear_in_params):
        # Two atoms with one gate whose expert parameters add up to a true atom's reproduce it exactly, so the
        # over-specified sigmoid model is not misspecified and its best fit is a continuum (measured:
        # tests/test_lse.py, G_bar reproduces f_G*): no rate towards one G_bar is defined.
        rows += [{"cell": "exact", "cell_size": 1, "block": block, "exponent": np.nan, "rate": NOT_UNIQUE,
                  "reference": "G_bar", "tag": "measured", "source": "README, comparison (a)"}
                 for block in ("weight", "gate", "expert")]
        return pd.DataFrame(rows)
    sizes = [1] if (k == G_true.k or regime == 2) else [1, *range(2, k - G_true.k + 2)]
    for m in sizes:
        cell = "exact" if m == 1 else "over"
        found = [rl for rl in RULES if rl.cell == cell and _matches(
            rl, spec.gate_name, estimator, spec.score, expert_class(spec.expert_family), regime)]
        if not found:
            rows.append({"cell": cell, "cell_size": m, "block": "any", "exponent": np.nan,
                         "rate": "no prediction", "reference": reference, "tag": "", "source": ""})
            continue
        rule = found[0]
        needs_r = any(v in ("1/(2r)", "1/r") for v in rule.rates.values())
        r_m = cell_exponent(m, r) if needs_r else np.nan
        for block, value in rule.rates.items():
            exponent, label = _exponent(value, r_m)
            rows.append({"cell": cell, "cell_size": m, "block": block, "exponent": exponent, "rate": label,
                         "reference": reference, "tag": rule.tag, "source": rule.source})
    return pd.DataFrame(rows)
