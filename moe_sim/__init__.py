"""moe-sim: a simulator for the convergence rates of softmax- and sigmoid-gated mixtures of experts."""

from .attention import AttentionParams, AttentionSpec, attention_gate
from .conditioning import asymptotic_sd
from .config import load_config
from .families import EXPERTS, ExpertFamily, register_expert
from .gates import GATES, BiasedSigmoid, FixedMask, Gate, NormalisedSigmoid, TopKSoftmax, register_gate
from .fit import EM, INITS, LeastSquares, Search, closest_measure, fit, profile
from .measure import MixingMeasure, MoESpec
from .model import log_density, log_density_gradient, regression_function, regression_gradient
from .rates import rate_table, sample_complexity
from .sample import draw_design, sample
from .store import load_results
from .sweep import run_sweep
from .theory import predicted_rates
from .voronoi import loss_kind, parameter_errors, sigmoid_regime, voronoi_cells, voronoi_loss

__version__ = "0.1.0"

__all__ = [
    "AttentionParams",
    "AttentionSpec",
    "BiasedSigmoid",
    "EM",
    "EXPERTS",
    "ExpertFamily",
    "FixedMask",
    "GATES",
    "Gate",
    "INITS",
    "LeastSquares",
    "MixingMeasure",
    "MoESpec",
    "NormalisedSigmoid",
    "Search",
    "TopKSoftmax",
    "asymptotic_sd",
    "attention_gate",
    "closest_measure",
    "draw_design",
    "fit",
    "load_config",
    "load_results",
    "log_density",
    "log_density_gradient",
    "loss_kind",
    "parameter_errors",
    "predicted_rates",
    "profile",
    "rate_table",
    "register_expert",
    "register_gate",
    "regression_function",
    "regression_gradient",
    "run_sweep",
    "sample",
    "sample_complexity",
    "sigmoid_regime",
    "voronoi_cells",
    "voronoi_loss",
]
