"""Score and expert families.

Every score in the zoo is linear in its parameters over a fixed feature map of x, and every expert is an
activation applied to a linear function of its parameters over another fixed feature map, optionally times an
outer scale:

    s(x; beta) = beta . phi(x),     h(x; eta) = act(eta . psi(x))   or   h(x; eta) = eta_2 act(eta_1 . psi(x)).

So a model is fully described by two feature maps and an activation with its derivative, the features are
computed once per data set, and every gradient is a pair of matrix products. A new expert family is an
`ExpertFamily` with those three pieces (see `register_expert`).

Two kinds of FFN expert: "tanh", "gelu", "sigmoid", "relu" are act(a^T x + b), with an inner bias
(parameters [b, a]); "scaled_tanh", "scaled_gelu", "scaled_sigmoid", "scaled_relu" are eta_2 act(eta_1^T x),
an outer scale and no inner bias (parameters [eta_2, eta_1]): the strongly identifiable FFN expert of
THEORY.md s1, the one whose rates the theory predicts. act(a^T x + b) under a gate with a slope is outside
that class (dh/da = x dh/db), and eta_2 relu(eta_1^T x) trades scale between eta_2 and eta_1. Being linear in
eta_2 (d^2 h / d eta_2^2 = 0), the scaled experts' over-specified cells are flat along eta_2, as the profile
pre-flight measures (`moe_sim.fit.profile`): their `identifiable` is the theory's label, not a measurement.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.special import ndtr

Array = np.ndarray

SCORES = ("linear", "quadratic", "partial_quadratic")


def score_dim(score: str, d: int) -> int:
    """Number of gate-score parameters for a score family in dimension d."""
    n_quad = d * (d + 1) // 2
    return {"linear": d, "quadratic": n_quad + d, "partial_quadratic": n_quad}[score]


def score_features(score: str, X: Array) -> Array:
    """Gate feature map phi(X), atoms-major: shape (q, n).

    Quadratic coefficients are those of the monomials x_u x_v (u <= v) in row-major order of the upper
    triangle; the fully quadratic score appends the d linear coefficients.
    """
    Xt = X.T
    if score == "linear":
        return np.ascontiguousarray(Xt)
    iu, ju = np.triu_indices(X.shape[1])
    quad = Xt[iu] * Xt[ju]
    if score == "partial_quadratic":
        return quad
    return np.vstack([quad, Xt])


def sigmoid(z: Array, out: Array | None = None) -> Array:
    """The logistic function as 0.5 + 0.5 tanh(z / 2), into `out` (which may be z itself) or a new array:
    several times faster than scipy.special.expit on NumPy's vectorised tanh. Accurate to rounding in
    absolute terms; below z = -37 it returns 0 where expit returns a tiny positive number."""
    if out is None:
        out = np.array(z, dtype=float)
    elif out is not z:
        np.copyto(out, z)
    out *= 0.5
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


# Activations take (u, out=None) and derivatives (u, h, out=None): with `out` they write into it, so the
# least-squares hot loop allocates nothing (see `ExpertFamily`).


def _identity(u: Array, out: Array | None = None) -> Array:
    if out is None:
        return u
    np.copyto(out, u)
    return out


def _ones(u: Array, h: Array, out: Array | None = None) -> Array:
    if out is None:
        return np.ones_like(u)
    out.fill(1.0)
    return out


def _relu(u: Array, out: Array | None = None) -> Array:
    return np.maximum(u, 0.0, out=out)


def _relu_grad(u: Array, h: Array, out: Array | None = None) -> Array:
    return np.heaviside(u, 0.0, out=out)  # 1 where u > 0, 0 elsewhere (0 at the kink)


_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


def _gelu(u: Array, out: Array | None = None) -> Array:
    out = ndtr(u, out=out)
    out *= u
    return out


def _gelu_grad(u: Array, h: Array, out: Array | None = None) -> Array:
    out = ndtr(u, out=out)
    out += u * _INV_SQRT_2PI * np.exp(-0.5 * u * u)
    return out


def _sigmoid_grad(u: Array, h: Array, out: Array | None = None) -> Array:
    out = np.subtract(1.0, h, out=out)
    out *= h
    return out


def _tanh_grad(u: Array, h: Array, out: Array | None = None) -> Array:
    out = np.multiply(h, h, out=out)
    np.subtract(1.0, out, out=out)
    return out


# The same activations on any array backend (`moe_sim.backend`), for the batched solver: (nx, u) -> (act(u),
# act'(u)).


def _identity_nx(nx, u):
    return u, nx.ones_like(u)


def _relu_nx(nx, u):
    step = nx.positive(u)
    return u * step, step


def _gelu_nx(nx, u):
    cdf = nx.ndtr(u)
    return u * cdf, cdf + u * nx.normal_pdf(u)


def _sigmoid_nx(nx, u):
    s = nx.sigmoid(u)
    return s, s * (1.0 - s)


def _tanh_nx(nx, u):
    t = nx.tanh(u)
    return t, 1.0 - t * t


def _writing_into_out(fn: Callable) -> Callable:
    """fn itself when it takes an `out` argument (a ufunc, or a Python function with an `out` parameter),
    else a wrapper that computes fn's value and copies it into out."""
    if isinstance(fn, np.ufunc):
        return fn
    try:
        if "out" in inspect.signature(fn).parameters:
            return fn
    except (TypeError, ValueError):
        pass

    @functools.wraps(fn)
    def wrapped(*args, out=None):
        value = fn(*args)
        if out is None:
            return value
        np.copyto(out, value)
        return out

    return wrapped


def affine_features(X: Array) -> Array:
    """[1; x] as rows: the features of a^T x + b with parameters [b, a_1..a_d]."""
    return np.vstack([np.ones(X.shape[0]), X.T])


def _constant_features(X: Array) -> Array:
    return np.ones((1, X.shape[0]))


@dataclass(frozen=True)
class ExpertFamily:
    """An expert h(x; eta) = activation(eta . features(x)), or eta_2 activation(eta_1 . features(x)) when
    `scaled` (the first expert parameter is an outer scale eta_2, the others eta_1).

    features(X, degree) maps (n, d) inputs to an (r, n) array; n_params(d, degree) gives the number of expert
    parameters p (r = p, or p - 1 when scaled); derivative(u, h)
    is activation'(u), given u and h = activation(u) so that tanh and sigmoid reuse h. Both may take an
    `out` keyword and write into it (NumPy ufuncs do), which keeps the least-squares loop free of
    allocations; functions without one are wrapped to copy their value into `out`. `identifiable` says
    whether over-specified cells of this family converge under least squares ("strong": FFN experts that
    are not positively homogeneous; "homogeneous": ReLU, a scale trade inside a cell; "weak": linear and
    polynomial; "none": input-independent). `affine` marks the [b, a] layout (intercept first).
    `linear_in_params` marks experts linear in eta (EM's weighted least squares needs it). `activation_nx`
    (nx, u) -> (activation(u), activation'(u)) is the same activation on any array backend (`moe_sim.backend`),
    which the batched solver (`moe_sim.fit.lm`) needs; None for a family that only runs on NumPy.
    """

    name: str
    activation: Callable[[Array], Array]
    derivative: Callable[[Array, Array], Array]
    features: Callable[[Array, int], Array]
    n_params: Callable[[int, int], int]
    identifiable: str = "strong"
    affine: bool = True
    linear_in_params: bool = False
    scaled: bool = False
    activation_nx: Callable | None = None

    def __post_init__(self):
        if self.scaled and (self.affine or self.linear_in_params):
            raise ValueError(
                f"ExpertFamily {self.name!r}: scaled=True (eta_2 act(eta_1 . psi)) has no intercept and is not "
                f"linear in its parameters; got affine={self.affine}, linear_in_params={self.linear_in_params}"
            )
        object.__setattr__(self, "activation", _writing_into_out(self.activation))
        object.__setattr__(self, "derivative", _writing_into_out(self.derivative))

    def size_index(self, expert: Array) -> Array:
        """Per atom (rows of expert, shape (k, p)), the coordinate whose magnitude measures the expert's size:
        the outer scale eta_2 of a scaled expert, the largest slope of an affine one, else the largest
        coefficient. A lower bound on it keeps an atom from being null (THEORY.md s1); the norm bound the
        theory states is not a box, so the largest coordinate stands in for it."""
        if self.scaled:
            return np.zeros(len(expert), dtype=int)
        offset = 1 if self.affine and expert.shape[1] > 1 else 0
        return offset + np.argmax(np.abs(expert[:, offset:]), axis=1)

    def floor_index(self, expert: Array) -> Array:
        """Per atom, the coordinates (k, m) that `LeastSquares.expert_min` keeps away from zero so that no atom
        is null: the size coordinate, and for a scaled expert whose activation vanishes at 0 (GELU, tanh, ReLU,
        identity) also its largest inner weight, since eta_2 act(0 . x) = 0 whatever eta_2 is."""
        size = self.size_index(expert)
        if not (self.scaled and self.activation(np.zeros(1))[0] == 0.0):
            return size[:, None]
        return np.column_stack([size, 1 + np.argmax(np.abs(expert[:, 1:]), axis=1)])


def _ffn(name: str, act, dact, act_nx, identifiable: str = "strong") -> ExpertFamily:
    return ExpertFamily(
        name=name,
        activation=act,
        derivative=dact,
        activation_nx=act_nx,
        features=lambda X, degree: affine_features(X),
        n_params=lambda d, degree: d + 1,
        identifiable=identifiable,
    )


def _scaled_ffn(act_name: str, act, dact, act_nx, identifiable: str = "strong") -> ExpertFamily:
    """eta_2 act(eta_1^T x): parameters [eta_2, eta_1_1..eta_1_d] over the features x (no inner bias)."""
    return ExpertFamily(
        name=f"scaled_{act_name}",
        activation=act,
        derivative=dact,
        activation_nx=act_nx,
        features=lambda X, degree: np.ascontiguousarray(X.T),
        n_params=lambda d, degree: d + 1,
        identifiable=identifiable,
        affine=False,
        scaled=True,
    )


def _polynomial_features(X: Array, degree: int) -> Array:
    return X[:, 0][None, :] ** np.arange(degree + 1)[:, None]


EXPERTS: dict[str, ExpertFamily] = {
    "linear": ExpertFamily(
        "linear", _identity, _ones, lambda X, degree: affine_features(X), lambda d, degree: d + 1,
        identifiable="weak", linear_in_params=True, activation_nx=_identity_nx,
    ),
    "polynomial": ExpertFamily(
        "polynomial", _identity, _ones, _polynomial_features, lambda d, degree: degree + 1,
        identifiable="weak", affine=False, linear_in_params=True, activation_nx=_identity_nx,
    ),
    "relu": _ffn("relu", _relu, _relu_grad, _relu_nx, identifiable="homogeneous"),
    "gelu": _ffn("gelu", _gelu, _gelu_grad, _gelu_nx),
    "sigmoid": _ffn("sigmoid", sigmoid, _sigmoid_grad, _sigmoid_nx),
    "tanh": _ffn("tanh", np.tanh, _tanh_grad, _tanh_nx),
    "scaled_relu": _scaled_ffn("relu", _relu, _relu_grad, _relu_nx, identifiable="homogeneous"),
    "scaled_gelu": _scaled_ffn("gelu", _gelu, _gelu_grad, _gelu_nx),
    "scaled_sigmoid": _scaled_ffn("sigmoid", sigmoid, _sigmoid_grad, _sigmoid_nx),
    "scaled_tanh": _scaled_ffn("tanh", np.tanh, _tanh_grad, _tanh_nx),
    "constant": ExpertFamily(
        "constant", _identity, _ones, lambda X, degree: _constant_features(X), lambda d, degree: 1,
        identifiable="none", affine=False, linear_in_params=True, activation_nx=_identity_nx,
    ),
}


def register_expert(family: ExpertFamily) -> ExpertFamily:
    """Make a new expert family available by name to `MoESpec(expert=name)`.

    Worker processes of a sweep do not see this registry; pass the `ExpertFamily` object itself as
    `MoESpec(expert=family)` when the family must travel to other processes.
    """
    if not isinstance(family, ExpertFamily):
        raise ValueError(f"family must be an ExpertFamily, got {type(family).__name__}")
    EXPERTS[family.name] = family
    return family
