"""Input designs and data generators. Every draw goes through the caller's `rng` (SPEC 7)."""

from __future__ import annotations

import numpy as np
from scipy.stats import truncnorm

from . import checks
from .measure import MixingMeasure, MoESpec
from .model import Features, forward

DESIGNS = ("uniform", "equispaced", "truncated_normal")
MAX_SAMPLE = 10**8  # 0.8 GB per input coordinate; beyond it a draw fails on allocation instead of here


def design_box(bounds, d: int) -> tuple[np.ndarray, np.ndarray]:
    low, high = (np.broadcast_to(np.asarray(b, dtype=float), (d,)) for b in bounds)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(low < high)):
        raise ValueError(f"bounds must be finite with low < high in every coordinate, got {bounds!r}")
    return low, high


def draw_design(kind: str, n: int, d: int, rng=None, bounds=(-1.0, 1.0)) -> np.ndarray:
    """n inputs in R^d, shape (n, d), on the box `bounds` = (low, high) (scalars or length-d arrays).

    uniform: i.i.d. uniform on the box; equispaced: linspace(low, high, n), d = 1 only; truncated_normal:
    i.i.d. standard normal coordinates truncated to the box.
    """
    if kind not in DESIGNS:
        raise ValueError(f"design={kind!r} is not allowed; choose one of {', '.join(map(repr, DESIGNS))}")
    checks.positive_int("n", n, MAX_SAMPLE)
    low, high = design_box(bounds, d)
    rng = checks.generator("rng", rng)
    if kind == "uniform":
        return low + (high - low) * rng.random((n, d))
    if kind == "equispaced":
        if d != 1:
            raise ValueError(f"design='equispaced' needs d=1, got d={d}")
        return np.linspace(low[0], high[0], n)[:, None]
    return truncnorm.rvs(low, high, size=(n, d), random_state=rng)


def sample(
    spec: MoESpec,
    G: MixingMeasure,
    n: int,
    rng=None,
    noise_sd: float = 0.1,
    design: str = "uniform",
    bounds=(-1.0, 1.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Draw (X, y) from the model: X from the design, then y.

    Regression MoE: y = f_G(x) + noise_sd * eps. Gaussian MoE: a latent expert drawn from the gates, then
    y ~ N(h_i(x), var_i) (noise_sd is ignored). Bit-identical for equal seeds.
    """
    spec.check_measure(G)
    if spec.likelihood == "regression":
        checks.number("noise_sd", noise_sd, low=0.0)
    rng = checks.generator("rng", rng)
    X = draw_design(design, n, spec.d, rng, bounds)
    fw = forward(spec, G, Features.of(spec, X))
    if spec.likelihood == "regression":
        return X, fw.f + noise_sd * rng.standard_normal(n)
    cdf = np.cumsum(fw.g, axis=0)
    latent = np.minimum((rng.random(n)[None, :] > cdf).sum(axis=0), G.k - 1)
    cols = np.arange(n)
    y = fw.h[latent, cols] + np.sqrt(G.var[latent]) * rng.standard_normal(n)
    return X, y

