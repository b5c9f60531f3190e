"""Gate families: how the k gate logits z_i(x) = c_i + s(x; beta_i) become the gate values g_i(x).

A gate is an object that carries its own rules, like `moe_sim.families.ExpertFamily`: its weight map
w(c) and inverse, whether it is invariant to a common translation of every atom's (bias, score), the
sigmoid-regime test, which likelihoods it allows, and the two hot-path pieces (logits to gates, in place, and
the pullback of f = sum_i g_i h_i to the logits). A new gate is one subclass plus its tests; `register_gate`
makes it available by name to `MoESpec(gate=name)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logit, logsumexp

from .families import sigmoid

Array = np.ndarray


def _fresh(name: str, shape: tuple[int, ...]) -> Array:
    """A new array for every call: the scratch of callers that keep their results (see `model.Scratch`)."""
    return np.empty(shape)


def sum_atoms(a: Array, out: Array) -> Array:
    """Sum over the atoms axis of a (k, n) array, by row additions: faster than a.sum(axis=0) for few rows."""
    if len(a) == 1:
        np.copyto(out, a[0])
        return out
    np.add(a[0], a[1], out=out)
    for row in a[2:]:
        out += row
    return out


@dataclass(frozen=True)
class Gate:
    """A gate family. Subclasses define the methods below; the class attributes state its rules.

    translation_invariant: adding the same (t0, t) to every atom's (bias, score parameters) leaves every
    gate value unchanged, so measures are compared up to that translation and one atom may be pinned.
    likelihoods: the data models it can gate ("gaussian" needs gates that sum to one). max_weight: the supremum
    of w(c).
    """

    name = "gate"
    translation_invariant = False
    likelihoods = ("regression",)
    max_weight = np.inf

    def weight(self, bias: Array) -> Array:
        """The atom weights w(c)."""
        raise NotImplementedError

    def bias_of(self, weight: Array) -> Array:
        """The inverse of `weight`: the biases whose weights are the given ones."""
        raise NotImplementedError

    def weight_shares(self, bias: Array) -> Array:
        """w(c_i) / sum_j w(c_j) over the given atoms."""
        w = self.weight(bias)
        return w / w.sum() if len(w) else np.zeros(0)

    def scaled_bias(self, bias: float, share: float) -> float:
        """The bias whose weight is `share` times the weight of `bias` (splitting an atom)."""
        return float(self.bias_of(self.weight(np.array([bias])) * share)[0])

    def merged_bias(self, bias: Array) -> float:
        """The bias whose weight is the total weight of the given atoms (merging them), below max_weight."""
        return float(self.bias_of(min(float(self.weight(bias).sum()), (1 - 1e-6) * self.max_weight)))

    def regime(self, G_true) -> int | None:
        """The sigmoid regime of THEORY.md s1 (1 or 2) where the gate has one, else None."""
        return None

    def gates(self, z: Array, scratch=_fresh) -> Array:
        """Gate values from the logits z (k, n), computed in place on z."""
        raise NotImplementedError

    def logit_pullback(self, fw, gv: Array, out: Array) -> Array:
        """d f / d z_i at each sample, times v, into out (k, n); fw is the `model.Forward` of the
        evaluation and gv = g * v."""
        raise NotImplementedError


@dataclass(frozen=True)
class Softmax(Gate):
    """g_i = exp(z_i) / sum_j exp(z_j); weight exp(c)."""

    name = "softmax"
    translation_invariant = True
    likelihoods = ("regression", "gaussian")

    def weight(self, bias):
        with np.errstate(over="ignore"):  # inf for a runaway bias, without a warning
            return np.exp(bias)

    def bias_of(self, weight):
        return np.log(weight)

    def weight_shares(self, bias):
        """Stable for biases whose exp overflows."""
        return np.exp(bias - logsumexp(bias)) if len(bias) else np.zeros(0)

    def scaled_bias(self, bias, share):
        return float(bias + np.log(share))

    def merged_bias(self, bias):
        return float(logsumexp(bias))

    def gates(self, z, scratch=_fresh):
        z -= np.max(z, axis=0, out=scratch("top", z.shape[1:]))
        np.exp(z, out=z)
        total = sum_atoms(z, scratch("total", z.shape[1:]))
        np.divide(1.0, total, out=total)
        z *= total
        return z

    def logit_pullback(self, fw, gv, out):
        # df/dz_i = g_i (h_i - f)
        np.subtract(fw.h, fw.f, out=out)
        out *= gv
        return out


@dataclass(frozen=True)
class Sigmoid(Gate):
    """g_i = sigmoid(z_i), each atom on its own; weight sigmoid(c). No translation invariance."""

    name = "sigmoid"
    max_weight = 1.0

    def weight(self, bias):
        return sigmoid(bias)

    def bias_of(self, weight):
        return logit(weight)

    def regime(self, G_true):
        """1 when some true atom has zero score parameters (a constant gate extra atoms can split), else 2."""
        return 1 if np.any(np.all(G_true.gate == 0, axis=1)) else 2

    def gates(self, z, scratch=_fresh):
        return sigmoid(z, out=z)

    def logit_pullback(self, fw, gv, out):
        # df/dz_i = g_i (1 - g_i) h_i = g_i (h_i - g_i h_i)
        np.subtract(fw.h, fw.gh, out=out)
        out *= gv
        return out


GATES: dict[str, Gate] = {"softmax": Softmax(), "sigmoid": Sigmoid()}


def register_gate(gate: Gate) -> Gate:
    """Make a new gate family available by name to `MoESpec(gate=name)`.

    Worker processes of a sweep do not see this registry; pass the `Gate` object itself as `MoESpec(gate=...)`
    when the gate must travel to other processes.
    """
    if not isinstance(gate, Gate):
        raise ValueError(f"gate must be a Gate, got {type(gate).__name__}")
    GATES[gate.name] = gate
    return gate
