"""The model family (`MoESpec`) and the k atoms of a mixing measure (`MixingMeasure`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from .families import EXPERTS, SCORES, ExpertFamily, score_dim
from .gates import GATES, Gate

LIKELIHOODS = ("regression", "gaussian")


@dataclass(frozen=True)
class MoESpec:
    """A mixture-of-experts family: gate, score, expert, input dimension and likelihood.

    `gate` is a registered name or a `Gate`, `expert` a registered name or an `ExpertFamily`; `degree` is the
    polynomial experts' degree; `temperature` divides the gate score.
    """

    gate: str | Gate = "softmax"
    score: str = "linear"
    expert: str | ExpertFamily = "linear"
    d: int = 1
    likelihood: str = "regression"
    degree: int = 2
    temperature: float = 1.0
    gate_family: Gate = field(init=False, repr=False, compare=False)
    expert_family: ExpertFamily = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        gate = _resolve("gate", self.gate, Gate, GATES)
        object.__setattr__(self, "gate_family", gate)
        _check_choice("score", self.score, SCORES)
        _check_choice("likelihood", self.likelihood, LIKELIHOODS)
        family = _resolve("expert", self.expert, ExpertFamily, EXPERTS)
        object.__setattr__(self, "expert_family", family)
        if isinstance(self.d, bool) or not isinstance(self.d, (int, np.integer)) or self.d < 1:
            raise ValueError(f"d must be a positive integer, got {self.d!r}")
        if family.name == "polynomial":
            if self.d != 1:
                raise ValueError(f"d must be 1 for polynomial experts, got d={self.d}")
            if not isinstance(self.degree, (int, np.integer)) or self.degree < 1:
                raise ValueError(f"degree must be a positive integer, got {self.degree!r}")
        real = isinstance(self.temperature, (int, float, np.integer, np.floating)) and not isinstance(
            self.temperature, bool)
        if not (real and np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive finite number, got {self.temperature!r}")
        if self.likelihood not in gate.likelihoods:
            raise ValueError(
                f"likelihood={self.likelihood!r} is not allowed with gate={gate.name!r}; it allows "
                f"{', '.join(map(repr, gate.likelihoods))} (a Gaussian MoE needs gates that sum to one)"
            )

    @property
    def gate_name(self) -> str:
        return self.gate_family.name

    @property
    def expert_name(self) -> str:
        return self.expert_family.name

    @property
    def q(self) -> int:
        """Gate-score parameters per atom."""
        return score_dim(self.score, self.d)

    @property
    def p(self) -> int:
        """Expert parameters per atom."""
        return self.expert_family.n_params(self.d, self.degree)

    def weights(self, bias: np.ndarray) -> np.ndarray:
        """Atom weights w(c) of the gate family (softmax exp(c), sigmoid sigmoid(c))."""
        return self.gate_family.weight(bias)

    def weight_shares(self, bias: np.ndarray) -> np.ndarray:
        """w(c_i) / sum_j w(c_j) over the given atoms."""
        return self.gate_family.weight_shares(bias)

    def check_measure(self, G: "MixingMeasure", name: str = "G") -> "MixingMeasure":
        """Raise a ValueError unless G's parameter shapes fit this family."""
        if G.gate.shape[1] != self.q:
            raise ValueError(
                f"{name}.gate has {G.gate.shape[1]} columns; score={self.score!r} with d={self.d} needs {self.q}"
            )
        if G.expert.shape[1] != self.p:
            raise ValueError(
                f"{name}.expert has {G.expert.shape[1]} columns; expert={self.expert_name!r} with "
                f"d={self.d} needs {self.p}"
            )
        if self.likelihood == "gaussian" and G.var is None:
            raise ValueError(f"{name}.var is required for likelihood='gaussian'")
        if self.likelihood == "regression" and G.var is not None:
            raise ValueError(f"{name}.var = {G.var.tolist()} is not allowed for likelihood='regression': its noise "
                             f"is noise_sd; leave var out")
        return G


def _resolve(name: str, value, kind: type, registry: dict):
    """A family given as an object of `kind`, or by a name registered in `registry`."""
    if isinstance(value, kind):
        return value
    _check_choice(name, value, tuple(registry))
    return registry[value]


def _check_choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")


@dataclass(frozen=True)
class MixingMeasure:
    """k atoms: gate bias c (k,), gate score parameters (k, q), expert parameters (k, p), variances (k,)."""

    bias: np.ndarray
    gate: np.ndarray
    expert: np.ndarray
    var: np.ndarray | None = None

    def __post_init__(self):
        bias = _as_float_array("bias", self.bias, ndim=1)
        k = bias.shape[0]
        if k < 1:
            raise ValueError("bias is empty: a mixing measure needs at least one atom")
        gate = _as_float_array("gate", self.gate, ndim=2, k=k)
        expert = _as_float_array("expert", self.expert, ndim=2, k=k)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "gate", gate)
        object.__setattr__(self, "expert", expert)
        if self.var is not None:
            var = _as_float_array("var", self.var, ndim=1, k=k)
            if np.any(var <= 0):
                raise ValueError(f"var must be positive, got {var.tolist()}")
            object.__setattr__(self, "var", var)

    @property
    def k(self) -> int:
        return self.bias.shape[0]

    def __len__(self) -> int:
        return self.k

    def blocks(self) -> dict[str, np.ndarray]:
        """The parameter blocks by name, the variance only when present."""
        out = {"bias": self.bias, "gate": self.gate, "expert": self.expert}
        if self.var is not None:
            out["var"] = self.var
        return out

    def to_vector(self) -> np.ndarray:
        """All parameters as one flat vector (bias, gate, expert, var), the optimisers' layout."""
        return np.concatenate([b.ravel() for b in self.blocks().values()])

    @classmethod
    def from_vector(cls, theta: np.ndarray, k: int, q: int, p: int, has_var: bool = False) -> "MixingMeasure":
        """Inverse of `to_vector`."""
        sizes = np.cumsum([k, k * q, k * p])
        bias, gate, expert, var = np.split(np.asarray(theta, dtype=float), sizes)
        return cls(bias, gate.reshape(k, q), expert.reshape(k, p), var if has_var else None)

    def subset(self, index) -> "MixingMeasure":
        """The atoms at `index`, in that order."""
        index = np.asarray(index)
        return MixingMeasure(
            self.bias[index], self.gate[index], self.expert[index], None if self.var is None else self.var[index]
        )

    def translate(self, t0: float, t: np.ndarray) -> "MixingMeasure":
        """Add (t0, t) to every atom's (bias, gate): the softmax gate's invariance."""
        return MixingMeasure(self.bias + t0, self.gate + t, self.expert, self.var)

    def to_dict(self) -> dict:
        return {name: value.tolist() for name, value in self.blocks().items()}

    @classmethod
    def from_dict(cls, data: dict) -> "MixingMeasure":
        unknown = set(data) - {"bias", "gate", "expert", "var"}
        if unknown:
            raise ValueError(f"unknown mixing-measure keys {sorted(unknown)}; allowed: bias, gate, expert, var")
        missing = {"bias", "gate", "expert"} - set(data)
        if missing:
            raise ValueError(f"mixing measure is missing {sorted(missing)}")
        return cls(**{key: np.asarray(value, dtype=float) for key, value in data.items()})


def _as_float_array(name: str, value, ndim: int, k: int | None = None) -> np.ndarray:
    try:
        arr = np.array(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric, got {value!r}") from exc
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if k is not None and arr.shape[0] != k:
        raise ValueError(f"{name} has {arr.shape[0]} atoms (leading dimension) but bias has {k}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf: {arr.tolist()}")
    arr.setflags(write=False)
    return arr
