"""How well a true measure is identified: the asymptotic standard errors of an exactly specified fit.

Under least squares with noise sd sigma, an exact fit's parameters are asymptotically normal with covariance
sigma^2 (J^T J)^-1, J the Jacobian of f_G over the sample. Two truths with the same rates can differ by
orders of magnitude in these constants: a truth whose f is nearly matched by distant parameters needs
an n far beyond any sweep before its n^-1/2 rate shows. Check a truth here before sweeping it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import checks
from .measure import MixingMeasure, MoESpec
from .model import regression_gradient
from .sample import draw_design


def asymptotic_sd(
    spec: MoESpec, G: MixingMeasure, n: int, noise_sd: float, design: str = "uniform", bounds=(-1.0, 1.0),
    n_design: int = 20000, rng=0,
) -> pd.DataFrame:
    """Per-parameter asymptotic sd of the least-squares estimate at sample size n, one row per parameter.

    The information per sample is estimated on `n_design` inputs from the design. Softmax measures are
    pinned: the last atom's bias and gate are held at their values (the translation invariance), so they get
    sd 0. Columns: atom, block, index, value, sd.
    """
    spec.check_measure(G)
    checks.positive_int("n", n)
    checks.number("noise_sd", noise_sd, low=0.0)
    checks.positive_int("n_design", n_design)
    X = draw_design(design, n_design, spec.d, rng, bounds)
    grad = regression_gradient(spec, G, X)
    columns, labels = [], []
    for block in ("bias", "gate", "expert"):
        per_atom = grad[block].reshape(G.k, -1, X.shape[0])
        for atom in range(G.k):
            if spec.gate_family.translation_invariant and block != "expert" and atom == G.k - 1:
                continue
            for index, column in enumerate(per_atom[atom]):
                columns.append(column)
                labels.append((atom, block, index, float(G.blocks()[block].reshape(G.k, -1)[atom, index])))
    J = np.stack(columns, axis=1) / np.sqrt(X.shape[0])
    sd = noise_sd / np.sqrt(n) * np.sqrt(np.diag(np.linalg.pinv(J.T @ J)))
    table = pd.DataFrame(labels, columns=["atom", "block", "index", "value"])
    table["sd"] = sd
    return table
