"""Regression function f_G, Gaussian MoE log-density, and their analytic parameter gradients.

Hot arrays are atoms-major (k x n): the gate logits z, gates g, expert pre-activations u and expert values h.
`Features` holds the data-only feature maps, computed once per data set, split into contiguous column
chunks of CHUNK samples: at n = 1e5 the unchunked evaluation is four times slower, its large temporaries
each paid in fresh page faults (benchmarks/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from .families import score_features, sigmoid
from .measure import MixingMeasure, MoESpec

Array = np.ndarray
CHUNK = 8192
_LOG_2PI = np.log(2.0 * np.pi)


def check_inputs(spec: MoESpec, X, y=None) -> tuple[Array, Array | None]:
    """X as a float (n, d) array (a 1-d X is read as n samples when d = 1), y as (n,)."""
    X = np.asarray(X, dtype=float)
    if X.ndim == 1 and spec.d == 1:
        X = X[:, None]
    if X.ndim != 2 or X.shape[1] != spec.d:
        raise ValueError(f"X must have shape (n, {spec.d}) for d={spec.d}, got {X.shape}")
    if X.shape[0] < 1:
        raise ValueError("X is empty: n must be at least 1")
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or inf")
    if y is None:
        return X, None
    y = np.asarray(y, dtype=float)
    if y.shape != (X.shape[0],):
        raise ValueError(f"y must have shape ({X.shape[0]},) to match X, got {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("y contains NaN or inf")
    return X, y


@dataclass(frozen=True)
class Features:
    """Gate features phi (q, n), already divided by the temperature, and expert features psi (p, n)."""

    phi: Array
    psi: Array

    @classmethod
    def of(cls, spec: MoESpec, X: Array) -> "Features":
        phi = score_features(spec.score, X) / spec.temperature
        psi = spec.expert_family.features(X, spec.degree)
        return cls(np.ascontiguousarray(phi), np.ascontiguousarray(psi))

    @property
    def n(self) -> int:
        return self.phi.shape[1]

    def chunks(self, size: int = CHUNK) -> list[tuple[slice, "Features"]]:
        """Contiguous column blocks of at most `size` samples, with the slice each covers."""
        return [
            (s, Features(np.ascontiguousarray(self.phi[:, s]), np.ascontiguousarray(self.psi[:, s])))
            for s in (slice(a, min(a + size, self.n)) for a in range(0, self.n, size))
        ]


@dataclass
class Forward:
    """Intermediate values of one evaluation, kept for the backward pass."""

    z: Array  # gate logits (k, n)
    g: Array  # gates (k, n)
    u: Array  # expert pre-activations (k, n)
    h: Array  # expert values (k, n)
    f: Array  # regression function (n,)


def _logits_and_experts(spec: MoESpec, G: MixingMeasure, feats: Features) -> tuple[Array, Array, Array]:
    """Gate logits z, expert pre-activations u and expert values h, all (k, n)."""
    z = G.gate @ feats.phi
    z += G.bias[:, None]
    u = G.expert @ feats.psi
    return z, u, spec.expert_family.activation(u)


def forward(spec: MoESpec, G: MixingMeasure, feats: Features) -> Forward:
    z, u, h = _logits_and_experts(spec, G, feats)
    if spec.gate == "softmax":
        g = np.exp(z - z.max(axis=0))
        g /= g.sum(axis=0)
    else:
        g = sigmoid(z)
    f = np.einsum("kn,kn->n", g, h)
    return Forward(z, g, u, h, f)


def _local_derivatives(spec: MoESpec, fw: Forward) -> tuple[Array, Array]:
    """df/dz and df/du, both (k, n)."""
    if spec.gate == "softmax":
        dfdz = fw.h - fw.f
    else:
        dfdz = 1.0 - fw.g
        dfdz *= fw.h
    dfdz *= fw.g
    dfdu = fw.g * spec.expert_family.derivative(fw.u, fw.h)
    return dfdz, dfdu


def regression_function(spec: MoESpec, G: MixingMeasure, X) -> Array:
    """f_G(x) = sum_i g_i(x) h(x; eta_i) at each row of X: shape (n,)."""
    X, _ = check_inputs(spec, X)
    spec.check_measure(G)
    feats = Features.of(spec, X)
    return np.concatenate([forward(spec, G, part).f for _, part in feats.chunks()])


def regression_gradient(spec: MoESpec, G: MixingMeasure, X) -> dict[str, Array]:
    """Per-sample gradient of f_G: {'bias': (k, n), 'gate': (k, q, n), 'expert': (k, p, n)}."""
    X, _ = check_inputs(spec, X)
    spec.check_measure(G)
    feats = Features.of(spec, X)
    dfdz, dfdu = _local_derivatives(spec, forward(spec, G, feats))
    return {
        "bias": dfdz,
        "gate": dfdz[:, None, :] * feats.phi[None],
        "expert": dfdu[:, None, :] * feats.psi[None],
    }


def regression_vjp(spec: MoESpec, G: MixingMeasure, feats: Features, fw: Forward, v: Array) -> dict[str, Array]:
    """sum_t v_t df(x_t)/dtheta for every parameter block: the gradient of any loss whose df is v."""
    dz, du = _local_derivatives(spec, fw)
    dz *= v
    du *= v
    return {"bias": dz.sum(axis=1), "gate": dz @ feats.phi.T, "expert": du @ feats.psi.T}


def _log_joint(G: MixingMeasure, z: Array, h: Array, y: Array) -> Array:
    """log g_i(x) + log N(y; h_i(x), nu_i) for softmax gates with logits z, shape (k, n)."""
    resid = y[None, :] - h
    log_joint = resid * resid
    log_joint /= G.var[:, None]
    log_joint += (_LOG_2PI + np.log(G.var))[:, None]
    log_joint *= -0.5
    log_joint += z
    log_joint -= _logsumexp0(z)
    return log_joint


def _logsumexp0(a: Array) -> Array:
    m = a.max(axis=0)
    return m + np.log(np.exp(a - m).sum(axis=0))


def log_density(spec: MoESpec, G: MixingMeasure, X, y) -> Array:
    """Gaussian MoE conditional log-density log p_G(y | x) at each sample: shape (n,)."""
    X, y = check_inputs(spec, X, y)
    _check_gaussian(spec, G)
    z, _, h = _logits_and_experts(spec, G, Features.of(spec, X))
    return _logsumexp0(_log_joint(G, z, h, y))


def log_density_gradient(spec: MoESpec, G: MixingMeasure, X, y) -> dict[str, Array]:
    """Per-sample gradient of log p_G(y | x): bias (k, n), gate (k, q, n), expert (k, p, n), var (k, n)."""
    X, y = check_inputs(spec, X, y)
    _check_gaussian(spec, G)
    feats = Features.of(spec, X)
    fw = forward(spec, G, feats)
    log_joint = _log_joint(G, fw.z, fw.h, y)
    resp = np.exp(log_joint - _logsumexp0(log_joint))
    dz = resp - fw.g
    resid = y[None, :] - fw.h
    var = G.var[:, None]
    du = resp * resid / var * spec.expert_family.derivative(fw.u, fw.h)
    return {
        "bias": dz,
        "gate": dz[:, None, :] * feats.phi[None],
        "expert": du[:, None, :] * feats.psi[None],
        "var": resp * (resid**2 / var - 1.0) / (2.0 * var),
    }


def responsibilities(spec: MoESpec, G: MixingMeasure, feats: Features, y: Array) -> tuple[Array, Array]:
    """Posterior expert probabilities (k, n) and the per-sample log-density (n,) in one pass (the E-step)."""
    z, _, h = _logits_and_experts(spec, G, feats)
    log_joint = _log_joint(G, z, h, y)
    log_dens = _logsumexp0(log_joint)
    log_joint -= log_dens
    return np.exp(log_joint, out=log_joint), log_dens


def _check_gaussian(spec: MoESpec, G: MixingMeasure) -> None:
    if spec.likelihood != "gaussian":
        raise ValueError(f"log_density needs likelihood='gaussian', got {spec.likelihood!r}")
    spec.check_measure(G)
