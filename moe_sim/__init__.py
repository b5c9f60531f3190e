"""moe-sim: a simulator for the convergence rates of softmax- and sigmoid-gated mixtures of experts."""

from .conditioning import asymptotic_sd
from .families import EXPERTS, ExpertFamily, register_expert
from .fit import INITS, closest_measure, fit, profile
from .measure import MixingMeasure, MoESpec
from .model import log_density, log_density_gradient, regression_function, regression_gradient
from .sample import draw_design, sample
from .theory import predicted_rates
from .voronoi import loss_kind, parameter_errors, sigmoid_regime, voronoi_cells, voronoi_loss

__version__ = "0.1.0"

__all__ = [
    "EXPERTS",
    "ExpertFamily",
    "INITS",
    "MixingMeasure",
    "MoESpec",
    "asymptotic_sd",
    "closest_measure",
    "draw_design",
    "fit",
    "log_density",
    "log_density_gradient",
    "loss_kind",
    "parameter_errors",
    "predicted_rates",
    "profile",
    "register_expert",
    "regression_function",
    "regression_gradient",
    "sample",
    "sigmoid_regime",
    "voronoi_cells",
    "voronoi_loss",
]
