"""Regression function f_G, Gaussian MoE log-density, and their analytic parameter gradients.

Hot arrays are atoms-major (k x n): the gates g, expert pre-activations u and expert values h. `Features`
holds the data-only feature maps, computed once per data set, and their stacked basis: the distinct rows of
[1; phi; psi]. The k gate logits and k expert pre-activations are then one (2k, m) @ (m, n) product with the
stacked parameters W = `Features.stack(G)`, and a gradient is m matrix-vector products. Evaluations run over
column chunks of CHUNK samples, whose arrays stay in cache (unchunked, one evaluation at n = 1e6 is twice as
slow), and the least-squares loop runs in `Scratch` arrays, allocating nothing (benchmarks/README.md).

A scaled expert family, eta_2 act(eta_1 . psi), keeps eta_2 in its expert row's column of the ones row: the
pre-activation leaves that column out and h = eta_2 act(u), so `Features.stack`, `stack_index` and `unstack`
(and the least-squares objective built on them) serve it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backend import Backend, NumpyBackend
from .families import score_features
from .gates import sum_atoms
from .measure import MixingMeasure, MoESpec

Array = np.ndarray
CHUNK = 16384
_LOG_2PI = np.log(2.0 * np.pi)
_NUMPY = NumpyBackend()


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


def _match_rows(basis: list[Array], rows: Array, index: list[int]) -> tuple[int, ...]:
    """Extend `index` with the position in `basis` of each row, appending rows not there yet; a row is matched
    at most once per block, so a block's parameters keep distinct columns of the stacked matrix."""
    for row in rows:
        match = next((i for i, b in enumerate(basis) if i not in index and np.array_equal(b, row)), len(basis))
        if match == len(basis):
            basis.append(row)
        index.append(match)
    return tuple(index)


def sample_slices(n: int, size: int) -> list[slice]:
    """Consecutive blocks of at most `size` of n samples: how every n-sized computation is chunked."""
    return [slice(a, min(a + size, n)) for a in range(0, n, size)]


@dataclass(frozen=True)
class Features:
    """Gate features phi (q, n), already divided by the temperature, and expert features psi (p, n); their
    stacked basis (m, n), the distinct rows of [1; phi; psi]; and the basis rows of the gate ([1; phi], the
    bias first) and of the experts (psi; for a scaled family [1; psi], the ones row holding eta_2)."""

    phi: Array
    psi: Array
    basis: Array
    gate_rows: tuple[int, ...]
    expert_rows: tuple[int, ...]

    @classmethod
    def of(cls, spec: MoESpec, X: Array) -> "Features":
        phi = np.ascontiguousarray(score_features(spec.score, X) / spec.temperature)
        psi = np.ascontiguousarray(spec.expert_family.features(X, spec.degree))
        basis = [np.ones(X.shape[0])]
        gate_rows = _match_rows(basis, phi, [0])
        expert_rows = _match_rows(basis, psi, [0] if spec.expert_family.scaled else [])
        return cls(phi, psi, np.stack(basis), gate_rows, expert_rows)

    @property
    def n(self) -> int:
        return self.phi.shape[1]

    def chunks(self, size: int = CHUNK) -> list[tuple[slice, "Features"]]:
        """Column blocks of at most `size` samples (views: each row of a block is contiguous), with the slice
        each covers."""
        return [
            (s, Features(self.phi[:, s], self.psi[:, s], self.basis[:, s], self.gate_rows, self.expert_rows))
            for s in sample_slices(self.n, size)
        ]

    def stack_index(self, k: int) -> Array:
        """Flat positions in the (2k, m) stacked matrix of the entries of `MixingMeasure.to_vector` (bias,
        gate, expert): gate rows first, then expert rows."""
        m = self.basis.shape[0]
        atoms, gate, expert = np.arange(k)[:, None] * m, np.asarray(self.gate_rows), np.asarray(self.expert_rows)
        return np.concatenate([(atoms + gate[0]).ravel(), (atoms + gate[1:]).ravel(), (k * m + atoms + expert).ravel()])

    def stack(self, G: MixingMeasure) -> Array:
        """W (2k, m) with W @ basis = [gate logits; expert pre-activations]."""
        W = np.zeros(2 * G.k * self.basis.shape[0])
        index = self.stack_index(G.k)
        W[index] = G.to_vector()[: index.size]
        return W.reshape(2 * G.k, -1)

    def unstack(self, M: Array) -> Array:
        """The (bias, gate, expert) entries of a stacked (2k, m) matrix, in `MixingMeasure.to_vector` layout."""
        return M.ravel()[self.stack_index(M.shape[0] // 2)]


@dataclass
class Forward:
    """Intermediate values of one evaluation, kept for the backward pass."""

    g: Array  # gates (k, n)
    u: Array  # expert pre-activations (k, n)
    a: Array  # activations act(u) (k, n): h itself unless the family is scaled
    h: Array  # expert values (k, n)
    gh: Array  # g * h (k, n), whose sum over atoms is f
    f: Array  # regression function (n,)
    scale: Array | None = None  # outer scales eta_2 (k, 1) of a scaled family, h = scale * a


class Scratch:
    """Arrays kept from one evaluation to the next, one per name and shape, so that the least-squares loop
    allocates nothing: glibc hands fresh temporaries of a few hundred kB back to the OS after each
    evaluation, and paying for them again in page faults made an evaluation about 5 times slower at some n
    (benchmarks/README.md). An array from a Scratch is overwritten by the next call with its name and shape."""

    def __init__(self):
        self._arrays: dict[tuple[str, tuple[int, ...]], Array] = {}

    def __call__(self, name: str, shape: tuple[int, ...]) -> Array:
        array = self._arrays.get((name, shape))
        if array is None:
            array = self._arrays[name, shape] = np.empty(shape)
        return array


def _fresh(name: str, shape: tuple[int, ...]) -> Array:
    """A new array for every call: the `Scratch` of callers that keep their results."""
    return np.empty(shape)


def _logits_and_experts(spec: MoESpec, W: Array, feats: Features, scratch=_fresh) -> tuple[Array, ...]:
    """Gate logits z, expert pre-activations u, activations a = act(u) and expert values h, all (k, n), for
    stacked parameters W; h is a itself, or eta_2 a for a scaled family (eta_2 = W[k:, 0], left out of u)."""
    k, n = W.shape[0] // 2, feats.n
    scaled = spec.expert_family.scaled
    zu = scratch("zu", (2 * k, n))
    if feats.basis.shape[0] == 2:  # [1; x]: d = 1, a linear score and affine experts (measured 1.5x faster)
        np.multiply(W[:, 1:], feats.basis[1], out=zu)
        if scaled:
            zu[:k] += W[:k, :1]
        else:
            zu += W[:, :1]
    elif scaled:
        np.matmul(W[:k], feats.basis, out=zu[:k])
        np.matmul(W[k:, 1:], feats.basis[1:], out=zu[k:])
    else:
        np.matmul(W, feats.basis, out=zu)
    z, u = zu[:k], zu[k:]
    a = spec.expert_family.activation(u, out=scratch("h", (k, n)))
    if not scaled:
        return z, u, a, a
    return z, u, a, np.multiply(a, W[k:, :1], out=scratch("scaled_h", (k, n)))


def forward(spec: MoESpec, G: MixingMeasure, feats: Features) -> Forward:
    """f_G on the features, with the intermediates of the backward pass."""
    return forward_stacked(spec, feats.stack(G), feats)


def forward_stacked(spec: MoESpec, W: Array, feats: Features, scratch=_fresh) -> Forward:
    """`forward` for stacked parameters W = feats.stack(G): the least-squares objective's hot path, run in
    the arrays of `scratch` (a `Scratch`) when given."""
    z, u, a, h = _logits_and_experts(spec, W, feats, scratch)
    g = spec.gate_family.gates(z, scratch)
    gh = np.multiply(g, h, out=scratch("gh", g.shape))
    scale = W[g.shape[0] :, :1] if spec.expert_family.scaled else None
    return Forward(g, u, a, h, gh, sum_atoms(gh, scratch("f", (feats.n,))), scale)


def pullback(spec: MoESpec, fw: Forward, v, scratch=_fresh) -> Array:
    """[v df/dz; v df/du] (2k, n): the derivatives of f at each sample with respect to the gate logits and the
    expert pre-activations, scaled by v (an (n,) array or a number)."""
    k, n = fw.g.shape
    gv = np.multiply(fw.g, v, out=scratch("gv", (k, n)))
    D = scratch("D", (2 * k, n))
    dz, du = D[:k], D[k:]
    spec.gate_family.logit_pullback(fw, gv, dz)
    spec.expert_family.derivative(fw.u, fw.a, out=du)
    du *= gv
    if fw.scale is not None:
        du *= fw.scale
    return D


def _scale_pullback(fw: Forward, v, scratch=_fresh) -> Array:
    """v df/d eta_2 = v g act(u) (k, n): the derivative in a scaled family's outer scales."""
    out = np.multiply(fw.g, v, out=scratch("scale_pullback", fw.g.shape))
    out *= fw.a
    return out


def _expert_jacobian(du: Array, dscale: Array | None, psi: Array) -> Array:
    """Per-sample derivatives in the expert parameters (k, p, n) from those in the pre-activations du (k, n)
    and, for a scaled family, in the outer scales dscale (k, n), which come first."""
    grad = du[:, None, :] * psi[None]
    return grad if dscale is None else np.concatenate([dscale[:, None, :], grad], axis=1)


def regression_vjp(spec: MoESpec, feats: Features, fw: Forward, v: Array, scratch=_fresh) -> Array:
    """sum_t v_t df(x_t)/dW (2k, m) for the stacked parameters: the gradient of any loss whose df is v, one
    matrix-vector product per basis row (`feats.unstack` gives the to_vector layout)."""
    D = pullback(spec, fw, v, scratch)
    M = np.empty((feats.basis.shape[0], D.shape[0]))
    for row, out in zip(feats.basis, M):
        np.dot(D, row, out=out)
    if fw.scale is not None:  # the scales sit in the expert rows' column of the ones row
        k = fw.g.shape[0]
        np.sum(_scale_pullback(fw, v, scratch), axis=1, out=M[0, k:])
    return M.T


def regression_function(spec: MoESpec, G: MixingMeasure, X) -> Array:
    """f_G(x) = sum_i g_i(x) h(x; eta_i) at each row of X: shape (n,)."""
    X, _ = check_inputs(spec, X)
    spec.check_measure(G)
    feats = Features.of(spec, X)
    W = feats.stack(G)
    return np.concatenate([forward_stacked(spec, W, part).f for _, part in feats.chunks()])


def regression_gradient(spec: MoESpec, G: MixingMeasure, X) -> dict[str, Array]:
    """Per-sample gradient of f_G: {'bias': (k, n), 'gate': (k, q, n), 'expert': (k, p, n)}."""
    X, _ = check_inputs(spec, X)
    spec.check_measure(G)
    feats = Features.of(spec, X)
    fw = forward(spec, G, feats)
    D = pullback(spec, fw, 1.0)
    dfdz, dfdu = D[: G.k], D[G.k :]
    return {
        "bias": dfdz,
        "gate": dfdz[:, None, :] * feats.phi[None],
        "expert": _expert_jacobian(dfdu, None if fw.scale is None else _scale_pullback(fw, 1.0), feats.psi),
    }


def gaussian_log_joint(nx: Backend, z, h, y, var):
    """log g_i(x) + log N(y; h_i(x), var_i), shape (k, n), for softmax gates with logits z (k, n), expert means
    h (k, n) and variances var (k, 1), on the array backend nx: the one formula behind `log_density` and EM's
    E-step."""
    log_joint = y - h  # then in place (NumPy and torch alike): one (k, n) array, as EM's large n needs
    log_joint *= log_joint
    log_joint *= -0.5 / var
    log_joint -= 0.5 * (_LOG_2PI + nx.log(var))
    log_joint += z
    log_joint -= nx.logsumexp(z, axis=0)
    return log_joint


def log_density(spec: MoESpec, G: MixingMeasure, X, y) -> Array:
    """Gaussian MoE conditional log-density log p_G(y | x) at each sample: shape (n,)."""
    X, y = check_inputs(spec, X, y)
    _check_gaussian(spec, G)
    feats = Features.of(spec, X)
    z, _, _, h = _logits_and_experts(spec, feats.stack(G), feats)
    return _NUMPY.logsumexp(gaussian_log_joint(_NUMPY, z, h, y, G.var[:, None]), axis=0)[0]


def log_density_gradient(spec: MoESpec, G: MixingMeasure, X, y) -> dict[str, Array]:
    """Per-sample gradient of log p_G(y | x): bias (k, n), gate (k, q, n), expert (k, p, n), var (k, n)."""
    X, y = check_inputs(spec, X, y)
    _check_gaussian(spec, G)
    feats = Features.of(spec, X)
    z, u, a, h = _logits_and_experts(spec, feats.stack(G), feats)
    resp, _ = _NUMPY.softmax_logsumexp(gaussian_log_joint(_NUMPY, z, h, y, G.var[:, None]), axis=0)
    dz = resp - spec.gate_family.gates(z.copy())
    resid = y[None, :] - h
    var = G.var[:, None]
    dh = resp * resid / var
    du = dh * spec.expert_family.derivative(u, a)
    if spec.expert_family.scaled:
        du *= G.expert[:, :1]
    return {
        "bias": dz,
        "gate": dz[:, None, :] * feats.phi[None],
        "expert": _expert_jacobian(du, dh * a if spec.expert_family.scaled else None, feats.psi),
        "var": resp * (resid**2 / var - 1.0) / (2.0 * var),
    }


def _check_gaussian(spec: MoESpec, G: MixingMeasure) -> None:
    if spec.likelihood != "gaussian":
        raise ValueError(f"log_density needs likelihood='gaussian', got {spec.likelihood!r}")
    spec.check_measure(G)
