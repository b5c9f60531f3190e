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

    # The same two pieces on any array backend nx (`moe_sim.backend`), over a leading batch axis: what the
    # batched solver (`moe_sim.fit.lm`) runs. A gate without them runs on NumPy only.
    batched = False

    def values(self, nx, z):
        """Gate values from the logits z (batch, k, n)."""
        raise NotImplementedError

    def logit_derivative(self, nx, g, h, f):
        """d f / d z_i (batch, k, n) from the gates g and expert values h (batch, k, n) and f (batch, n)."""
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

    batched = True

    def values(self, nx, z):
        return nx.softmax(z, axis=-2)

    def logit_derivative(self, nx, g, h, f):
        return g * (h - f[:, None, :])


@dataclass(frozen=True)
class Sigmoid(Gate):
    """g_i = sigmoid(z_i), each atom on its own; weight sigmoid(c). No translation invariance."""

    name = "sigmoid"
    max_weight = 1.0

    def weight(self, bias):
        return sigmoid(bias)

    def bias_of(self, weight):
        return logit(weight)

    def scaled_bias(self, bias, share):
        return _sigmoid_scaled_bias(bias, share)

    def merged_bias(self, bias):
        return _sigmoid_merged_bias(bias)

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

    batched = True

    def values(self, nx, z):
        return nx.sigmoid(z)

    def logit_derivative(self, nx, g, h, f):
        return g * (1.0 - g) * h


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


# Gates of attention rows (issue 13): input-dependent sparsity (top-K), normalisation of sigmoids, input-agnostic
# sparsity (fixed masks) and the fixed bias of sigmoid attention. The Gaussian MoE density of `model` is written
# for the full softmax (log-softmax), so these gates allow the regression likelihood only.


def _check_int(name: str, value, low: int, allowed: str) -> int:
    """value as an int >= low, or a ValueError naming the parameter, the value and what is allowed."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def _sigmoid_scaled_bias(bias: float, share: float, b: float = 0.0) -> float:
    """The bias whose weight sigmoid(c + b) is `share` times that of `bias`, in log space: exact where the
    weight underflows (a null atom), where bias_of(weight(c) share) returns -inf."""
    return _sigmoid_bias_of_log_weight(np.log(share) - np.logaddexp(0.0, -(bias + b))) - b


def _sigmoid_merged_bias(bias: Array, b: float = 0.0) -> float:
    """The bias whose weight sigmoid(c + b) is the total weight of the given atoms, below 1, in log space."""
    return _sigmoid_bias_of_log_weight(logsumexp(-np.logaddexp(0.0, -(np.asarray(bias, dtype=float) + b)))) - b


def _sigmoid_bias_of_log_weight(log_weight: float) -> float:
    """logit(w) from log w, with w held below 1 - 1e-6 (`Gate.merged_bias`)."""
    log_weight = min(float(log_weight), float(np.log1p(-1e-6)))
    return log_weight - float(np.log1p(-np.exp(log_weight)))


@dataclass(frozen=True)
class TopKSoftmax(Softmax):
    """Softmax over the K largest logits of each sample, the other gates exactly 0 (input-dependent sparsity).

    Tie rule: at equal logits the lower atom index ranks first (a stable sort of -z), so the selection is a
    deterministic function of z. The gate is smooth wherever the K-th and (K+1)-th logits differ, and there its
    gradient is softmax's on the selected atoms and 0 elsewhere, which is what `logit_pullback` (inherited)
    returns. Where they cross, f = sum_i g_i h_i jumps by the crossing atoms' gate times the difference of their
    experts (K < k): least squares over top-K gates is piecewise smooth with jumps, so a gradient certificate
    may not be reachable at its minimum. With fewer atoms than K (the global search fits chains of fewer atoms)
    every atom is kept: plain softmax. weight(c) = exp(c) is an atom's weight before the truncation: with
    constant scores the gate of a selected atom is its exp(c) over the sum of the K largest. Translation
    invariant: a common shift keeps both the order and the softmax. K larger than a known number of atoms (N
    tokens) is refused where that number is given (`moe_sim.attention.AttentionSpec`).
    """

    batched = False  # its gates differ from the parent's: NumPy only

    top_k: int
    likelihoods = ("regression",)

    def __post_init__(self):
        _check_int("top_k", self.top_k, 1, "an integer >= 1 (the number of atoms each sample keeps)")

    @property
    def name(self) -> str:
        return f"top{self.top_k}_softmax"

    def gates(self, z, scratch=_fresh):
        if self.top_k < z.shape[0]:
            dropped = np.argsort(-z, axis=0, kind="stable")[self.top_k:]
            np.put_along_axis(z, dropped, -np.inf, axis=0)
        return super().gates(z, scratch)


@dataclass(frozen=True)
class NormalisedSigmoid(Sigmoid):
    """g_i = sigmoid(z_i) / sum_j sigmoid(z_j): gates that sum to one without softmax's exponential
    competition. weight(c) = sigmoid(c), so `weight_shares` is the gate of atoms with constant scores. Not
    translation invariant. Its sigmoid regimes are those of the plain sigmoid (THEORY.md s1, restated for
    normalised sigmoid gates).

    The pullback needs sigmoid(-z_i), which the gate values alone do not determine (they lose the sum), so
    `gates` returns the first k rows of a (2k, n) array whose last k rows keep it, and `logit_pullback`
    reads them back through the array's base.
    """

    batched = False  # its gates differ from the parent's: NumPy only

    name = "normalised_sigmoid"

    def gates(self, z, scratch=_fresh):
        k, n = z.shape
        state = scratch("normalised_sigmoid", (2 * k, n))
        g, complement = state[:k], state[k:]
        np.negative(z, out=complement)
        sigmoid(complement, out=complement)  # sigmoid(-z) = 1 - sigmoid(z), accurate where sigmoid(z) is near 1
        sigmoid(z, out=g)
        total = sum_atoms(g, scratch("total", (n,)))
        g /= total
        return g

    def logit_pullback(self, fw, gv, out):
        # df/dz_l = sigmoid'(z_l) / S (h_l - f) = g_l (1 - sigmoid(z_l)) (h_l - f)
        state = fw.g.base
        k = fw.g.shape[0]
        if state is None or state.shape != (2 * k, fw.g.shape[1]):
            raise ValueError("NormalisedSigmoid.logit_pullback needs the gate values its own `gates` returned")
        np.subtract(fw.h, fw.f, out=out)
        out *= gv
        out *= state[k:]
        return out


@dataclass(frozen=True)
class BiasedSigmoid(Sigmoid):
    """g_i = sigmoid(z_i + b) with a fixed b added to every logit; b = -log N is sigmoid attention's bias over N
    tokens (Ramapuram et al.; `for_length`). weight(c) = sigmoid(c + b). Regimes and pullback are the plain
    sigmoid's (the derivative of sigmoid(z + b) in z is g (1 - g))."""

    batched = False  # its gates differ from the parent's: NumPy only

    b: float = 0.0

    def __post_init__(self):
        real = isinstance(self.b, (int, float, np.integer, np.floating)) and not isinstance(self.b, bool)
        if not (real and np.isfinite(self.b)):
            raise ValueError(f"b must be a finite number (the bias added to every logit), got {self.b!r}")

    @classmethod
    def for_length(cls, n_tokens: int) -> "BiasedSigmoid":
        """b = -log N, which keeps a row of N sigmoid gates near 1 at initialisation."""
        n_tokens = _check_int("n_tokens", n_tokens, 1, "an integer >= 1")
        return cls(-float(np.log(n_tokens)))

    @property
    def name(self) -> str:
        return f"sigmoid_b{self.b:+.6g}"

    def weight(self, bias):
        return sigmoid(np.asarray(bias, dtype=float) + self.b)

    def bias_of(self, weight):
        return logit(weight) - self.b

    def scaled_bias(self, bias, share):
        return _sigmoid_scaled_bias(bias, share, self.b)

    def merged_bias(self, bias):
        return _sigmoid_merged_bias(bias, self.b)

    def gates(self, z, scratch=_fresh):
        z += self.b
        return sigmoid(z, out=z)


@dataclass(frozen=True)
class FixedMask(Gate):
    """A base gate over the atoms of a fixed index set `allowed`, the others exactly 0 for every input
    (input-agnostic sparsity; `band` gives attention's |i - j| <= w). The masked logits are set to -inf
    before the base gate, so a normalising base normalises over the allowed atoms only. weight, bias_of,
    regime and translation invariance are the base gate's: `weight` is an atom's weight where it is allowed
    (the mask is a property of atom positions, not of biases). In an MoE of k atoms the allowed indices below k
    count (the global search fits chains of fewer atoms); with none of them the MoE is the zero function. Masks
    beyond a known number of atoms (N tokens, a band wider than N) are refused where that number is given
    (`band`, `moe_sim.attention.AttentionSpec`).
    """

    allowed: tuple[int, ...]
    base: Gate = Softmax()
    likelihoods = ("regression",)

    def __post_init__(self):
        allowed = tuple(_check_int("allowed", i, 0, "a non-empty set of atom indices >= 0")
                        for i in np.atleast_1d(self.allowed).tolist())
        if not allowed or len(set(allowed)) != len(allowed):
            raise ValueError(f"allowed must be a non-empty set of distinct atom indices >= 0, got {self.allowed!r}")
        if not isinstance(self.base, Gate):
            raise ValueError(f"base must be a Gate, got {type(self.base).__name__}")
        object.__setattr__(self, "allowed", tuple(sorted(allowed)))

    @classmethod
    def band(cls, center: int, width: int, n_atoms: int, base: Gate = Softmax()) -> "FixedMask":
        """The atoms j with |center - j| <= width among n_atoms: row `center` of banded attention."""
        n_atoms = _check_int("n_atoms", n_atoms, 1, "an integer >= 1")
        center = _check_int("center", center, 0, f"an atom index, 0 <= center <= {n_atoms - 1}")
        if center >= n_atoms:
            raise ValueError(f"center must be an atom index, 0 <= center <= {n_atoms - 1}, got {center}")
        width = _check_int("width", width, 0, f"an integer with 0 <= width <= {n_atoms - 1}")
        if width >= n_atoms:
            raise ValueError(f"width must be an integer with 0 <= width <= {n_atoms - 1} (n_atoms - 1 already "
                             f"allows every atom), got {width}")
        return cls(tuple(range(max(0, center - width), min(n_atoms, center + width + 1))), base)

    @property
    def name(self) -> str:
        return f"{self.base.name}_mask{'-'.join(map(str, self.allowed))}"

    @property
    def translation_invariant(self) -> bool:
        return self.base.translation_invariant

    @property
    def max_weight(self) -> float:
        return self.base.max_weight

    def weight(self, bias):
        return self.base.weight(bias)

    def bias_of(self, weight):
        return self.base.bias_of(weight)

    def weight_shares(self, bias):
        return self.base.weight_shares(bias)

    def scaled_bias(self, bias, share):
        return self.base.scaled_bias(bias, share)

    def merged_bias(self, bias):
        return self.base.merged_bias(bias)

    def regime(self, G_true):
        return self.base.regime(G_true)

    def gates(self, z, scratch=_fresh):
        k = z.shape[0]
        if self.allowed[0] >= k:  # no allowed atom among the k: every gate is 0
            z.fill(0.0)
            return z
        blocked = np.ones(k, dtype=bool)
        blocked[[i for i in self.allowed if i < k]] = False
        z[blocked] = -np.inf
        return self.base.gates(z, scratch)

    def logit_pullback(self, fw, gv, out):
        if self.allowed[0] >= len(out):
            out.fill(0.0)
            return out
        # gv = g v is 0 on the masked atoms, so the base pullback is 0 there: their logits do not reach f
        return self.base.logit_pullback(fw, gv, out)


register_gate(NormalisedSigmoid())  # the one new gate without parameters; the others are built with theirs
