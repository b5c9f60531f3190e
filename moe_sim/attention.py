"""Attention rows as mixtures of experts, with the parameters tied the way attention ties them (issue 13).

A sequence holds N tokens x_1..x_N in R^d. Row i of one head is sum_j g_j(x) v^T x_j, the gate g (any `Gate`)
taken over the N scores x_i^T W x_j / sqrt(d), with W free (d x d) or W = W_Q W_K^T of rank r <= d; H heads
add up. Read as an MoE (THEORY.md s1), a head is N linear experts v^T E_j xbar under a partially quadratic gate
on the stacked tokens xbar in R^{N d}: `moe_form` builds it, and the tests check it against `row_output`.

Sequences are arrays X of shape (n, N, d). Parameters are `AttentionParams`; `AttentionSpec.to_vector` and
`from_vector` give the flat layout of the least-squares fit (`RowObjective`, `local_solve`, `draw_start`,
`fit_student`: the estimator's local search, certificate and global search of `moe_sim.fit`). `head_errors`
and `function_error` measure a fit in coordinates the row identifies (the score matrix W, not W_Q and W_K;
heads matched like Voronoi cells), and `fit_replicate` runs one (teacher, student, n, replicate) fit and
returns tidy rows: the unit of the attention experiments.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from .backend import single_threaded_blas
from .fit.estimators import LeastSquares, Search
from .fit.lse import minimise, sigma2_floor
from .fit.result import FitResult, StartResult
from .gates import BiasedSigmoid, FixedMask, Gate, NormalisedSigmoid, Sigmoid, Softmax, TopKSoftmax
from .measure import MixingMeasure, MoESpec
from .model import Forward, regression_function
from .sample import draw_design

Array = np.ndarray

ATTENTION_GATES = ("softmax", "sigmoid", "sigmoid_logn", "normalised_sigmoid", "top_k", "band")
DESIGNS = ("gaussian", "uniform", "repeated")


def _positive_int(name: str, value, allowed: str = "an integer >= 1") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def attention_gate(kind: str, N: int, row: int = 0, top_k: int | None = None, width: int | None = None) -> Gate:
    """The gate of row `row` over N tokens: softmax; sigmoid (b = 0); sigmoid_logn (b = -log N, sigmoid
    attention); normalised_sigmoid; top_k (softmax over the top_k largest scores); band (softmax over the
    tokens j with |row - j| <= width)."""
    if kind not in ATTENTION_GATES:
        raise ValueError(f"kind={kind!r} is not allowed; choose one of {', '.join(map(repr, ATTENTION_GATES))}")
    N = _positive_int("N", N)
    if (top_k is not None) != (kind == "top_k") or (width is not None) != (kind == "band"):
        raise ValueError(f"kind={kind!r} takes {'top_k' if kind == 'top_k' else 'width' if kind == 'band' else 'no'}"
                         f" parameter; got top_k={top_k!r}, width={width!r}")
    if kind == "top_k":
        return _check_gate_fits(TopKSoftmax(top_k), N)
    if kind == "band":
        return FixedMask.band(row, width, N)
    return {"softmax": Softmax(), "sigmoid": Sigmoid(), "sigmoid_logn": BiasedSigmoid.for_length(N),
            "normalised_sigmoid": NormalisedSigmoid()}[kind]


def _check_gate_fits(gate: Gate, N: int) -> Gate:
    """Refuse a gate that keeps more tokens than N (top-K) or masks tokens beyond N (a band wider than N)."""
    for top in (gate, getattr(gate, "base", None)):
        if isinstance(top, TopKSoftmax) and top.top_k > N:
            raise ValueError(f"gate keeps top_k={top.top_k} tokens but N={N}; allowed: 1 <= top_k <= {N}")
    if isinstance(gate, FixedMask) and gate.allowed[-1] >= N:
        raise ValueError(f"gate mask allows tokens {gate.allowed}, beyond the N={N} tokens (a band wider than the "
                         f"sequence); allowed: indices 0..{N - 1}")
    return gate


def nonzero_budget(spec: "AttentionSpec") -> int:
    """How many tokens of a row can get a nonzero gate: K for top-K, the band's 2w + 1 (fewer at the sequence's
    ends), N otherwise; the budget the focus experiment holds equal across students."""
    gate, budget = spec.gate, spec.N
    if isinstance(gate, FixedMask):
        gate, budget = gate.base, len(gate.allowed)
    return min(budget, gate.top_k) if isinstance(gate, TopKSoftmax) else budget


def _as_array(name: str, value, ndim: int) -> Array:
    arr = np.array(value, dtype=float)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True)
class AttentionParams:
    """H heads: value vectors v (H, d) and either score matrices W (H, d, d) or query and key maps Q, K
    (H, d, r), W = Q K^T."""

    v: Array
    W: Array | None = None
    Q: Array | None = None
    K: Array | None = None

    def __post_init__(self):
        object.__setattr__(self, "v", _as_array("v", self.v, 2))
        if (self.W is None) == (self.Q is None or self.K is None) or (self.Q is None) != (self.K is None):
            raise ValueError("give either W or both Q and K")
        for name in ("W", "Q", "K"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _as_array(name, getattr(self, name), 3))

    @property
    def heads(self) -> int:
        return self.v.shape[0]

    def score_matrices(self) -> Array:
        """W (H, d, d), the parameters the row identifies (W_Q and W_K only up to W_Q A, W_K A^-T)."""
        return self.W if self.W is not None else self.Q @ np.swapaxes(self.K, 1, 2)


@dataclass(frozen=True)
class AttentionSpec:
    """Row `row` of H-head attention over N tokens in R^d with the gate `gate` (see `attention_gate`);
    rank None parametrises each head's W freely, rank r as W_Q W_K^T with W_Q, W_K in R^{d x r}."""

    N: int
    d: int
    gate: Gate
    row: int = 0
    heads: int = 1
    rank: int | None = None

    def __post_init__(self):
        N = _positive_int("N", self.N, "an integer >= 1 (tokens per sequence)")
        _positive_int("d", self.d, "an integer >= 1 (token dimension)")
        _positive_int("heads", self.heads)
        if isinstance(self.row, bool) or not isinstance(self.row, (int, np.integer)) or not 0 <= self.row < N:
            raise ValueError(f"row must be a token index, 0 <= row <= {N - 1}, got {self.row!r}")
        if self.rank is not None:
            _positive_int("rank", self.rank, f"None (W free) or an integer with 1 <= rank <= d={self.d}")
            if self.rank > self.d:
                raise ValueError(f"rank must be None (W free) or an integer with 1 <= rank <= d={self.d}, "
                                 f"got {self.rank}")
        if not isinstance(self.gate, Gate):
            raise ValueError(f"gate must be a Gate (see attention_gate), got {type(self.gate).__name__}")
        _check_gate_fits(self.gate, N)

    @property
    def n_params(self) -> int:
        score = self.d * self.d if self.rank is None else 2 * self.d * self.rank
        return self.heads * (score + self.d)

    def to_vector(self, params: AttentionParams) -> Array:
        """Flat layout: every head's W (or Q, then K), then every head's v."""
        self.check_params(params)
        blocks = [params.W] if self.rank is None else [params.Q, params.K]
        return np.concatenate([b.ravel() for b in blocks] + [params.v.ravel()])

    def from_vector(self, theta: Array) -> AttentionParams:
        theta = np.asarray(theta, dtype=float)
        if theta.shape != (self.n_params,):
            raise ValueError(f"theta must have shape ({self.n_params},), got {theta.shape}")
        H, d = self.heads, self.d
        v = theta[-H * d:].reshape(H, d)
        if self.rank is None:
            return AttentionParams(v, W=theta[: H * d * d].reshape(H, d, d))
        Q, K = np.split(theta[: -H * d], 2)
        return AttentionParams(v, Q=Q.reshape(H, d, self.rank), K=K.reshape(H, d, self.rank))

    def check_params(self, params: AttentionParams, name: str = "params") -> AttentionParams:
        """Raise a ValueError unless params has this spec's heads, dimension and parametrisation."""
        if not isinstance(params, AttentionParams):
            raise ValueError(f"{name} must be AttentionParams, got {type(params).__name__}")
        H, d = self.heads, self.d
        if params.v.shape != (H, d):
            raise ValueError(f"{name}.v has shape {params.v.shape}; heads={H}, d={d} need {(H, d)}")
        if self.rank is None and (params.W is None or params.W.shape != (H, d, d)):
            raise ValueError(f"{name} needs W of shape {(H, d, d)} for rank=None")
        if self.rank is not None and (params.Q is None or params.Q.shape != (H, d, self.rank)
                                      or params.K.shape != (H, d, self.rank)):
            raise ValueError(f"{name} needs Q and K of shape {(H, d, self.rank)} for rank={self.rank}")
        return params

    def check_sequences(self, X) -> Array:
        X = np.asarray(X, dtype=float)
        if X.ndim != 3 or X.shape[1:] != (self.N, self.d) or X.shape[0] < 1:
            raise ValueError(f"X must have shape (n, N={self.N}, d={self.d}) with n >= 1, got {X.shape}")
        if not np.all(np.isfinite(X)):
            raise ValueError("X contains NaN or inf")
        return X


def check_pair(teacher: AttentionSpec, student: AttentionSpec) -> None:
    """A student must read the teacher's sequences and row: same N, d and row (gate, heads, rank may differ)."""
    for field in ("N", "d", "row"):
        if getattr(teacher, field) != getattr(student, field):
            raise ValueError(f"student {field}={getattr(student, field)} differs from teacher "
                             f"{field}={getattr(teacher, field)}; allowed: the teacher's value")


def draw_sequences(spec: AttentionSpec, n: int, rng=None, design: str = "gaussian", bounds=(-1.0, 1.0)) -> Array:
    """n sequences (n, N, d). gaussian: standard normal tokens; uniform: tokens uniform on the box `bounds`;
    repeated: each sequence draws ceil(N/2) standard normal tokens and fills its N positions with them at
    random, so tokens repeat (and scores tie exactly)."""
    if design not in DESIGNS:
        raise ValueError(f"design={design!r} is not allowed; choose one of {', '.join(map(repr, DESIGNS))}")
    n = _positive_int("n", n)
    rng = np.random.default_rng(rng)
    N, d = spec.N, spec.d
    if design == "gaussian":
        return rng.standard_normal((n, N, d))
    if design == "uniform":
        return draw_design("uniform", n * N, d, rng, bounds).reshape(n, N, d)
    pool = rng.standard_normal((n, -(-N // 2), d))
    return np.take_along_axis(pool, rng.integers(pool.shape[1], size=(n, N))[:, :, None], axis=1)


def double_sequences(X: Array) -> Array:
    """Each sequence concatenated with itself (n, 2N, d): softmax rows are invariant to it."""
    return np.concatenate([X, X], axis=1)


def draw_params(spec: AttentionSpec, rng=None, scale: float = 1.0) -> AttentionParams:
    """Random heads, drawn from the spec alone (truth-free): scores x_i^T W x_j / sqrt(d) of standard deviation
    about `scale` for standard normal tokens (W entries N(0, scale^2 / d), or Q, K entries N(0, scale / sqrt(r d)))
    and values v^T x of standard deviation about 1 (v entries N(0, 1 / d))."""
    rng = np.random.default_rng(rng)
    H, d = spec.heads, spec.d
    v = rng.normal(scale=1 / np.sqrt(d), size=(H, d))
    if spec.rank is None:
        return AttentionParams(v, W=rng.normal(scale=scale / np.sqrt(d), size=(H, d, d)))
    sd = np.sqrt(scale / np.sqrt(spec.rank * d))
    return AttentionParams(v, Q=rng.normal(scale=sd, size=(H, d, spec.rank)),
                           K=rng.normal(scale=sd, size=(H, d, spec.rank)))


def _heads(spec: AttentionSpec, params: AttentionParams, X: Array) -> list[Forward]:
    """Each head's forward pass in the model's atoms-major layout: gates g and values h = v^T x_j, (N, n)."""
    out = []
    for W, v in zip(params.score_matrices(), params.v):
        z = np.ascontiguousarray(np.einsum("sa,sja->js", X[:, spec.row] @ W, X)) / np.sqrt(spec.d)
        g = spec.gate.gates(z)
        h = np.ascontiguousarray(np.einsum("sja,a->js", X, v))
        gh = g * h
        out.append(Forward(g=g, u=h, a=h, h=h, gh=gh, f=gh.sum(axis=0)))
    return out


def row_output(spec: AttentionSpec, params: AttentionParams, X) -> Array:
    """The row's output for each sequence, (n,): the attention formula, head by head."""
    X = spec.check_sequences(X)
    spec.check_params(params)
    return sum(fw.f for fw in _heads(spec, params, X))


def row_gates(spec: AttentionSpec, params: AttentionParams, X) -> Array:
    """The row's gate values (H, N, n); their sum over tokens is the row sum of the attention matrix."""
    X = spec.check_sequences(X)
    spec.check_params(params)
    return np.stack([fw.g for fw in _heads(spec, params, X)])


def _jacobian(spec: AttentionSpec, params: AttentionParams, X: Array, heads: list[Forward]) -> Array:
    """d f(X_s) / d theta (n, P) in the `to_vector` layout, from the heads' forward passes."""
    JW, Jv = [], []
    for fw in heads:
        dz = spec.gate.logit_pullback(fw, fw.g.copy(), np.empty_like(fw.g))  # d f_s / d score_js
        key = np.einsum("js,sjb->sb", dz, X) / np.sqrt(spec.d)  # score_js = x_row^T W x_j / sqrt(d)
        JW.append(X[:, spec.row, :, None] * key[:, None, :])
        Jv.append(np.einsum("js,sja->sa", fw.g, X))
    JW = np.stack(JW, axis=1)  # (n, H, d, d)
    if spec.rank is None:
        blocks = [JW]
    else:  # W = Q K^T: dQ = dW K, dK = dW^T Q
        blocks = [JW @ params.K, np.swapaxes(JW, 2, 3) @ params.Q]
    n = X.shape[0]
    return np.hstack([b.reshape(n, -1) for b in blocks] + [np.stack(Jv, axis=1).reshape(n, -1)])


def row_jacobian(spec: AttentionSpec, params: AttentionParams, X) -> Array:
    """d f(X_s) / d theta for each sequence, (n, P) in the `AttentionSpec.to_vector` layout."""
    X = spec.check_sequences(X)
    spec.check_params(params)
    return _jacobian(spec, params, X, _heads(spec, params, X))


def row_vjp(spec: AttentionSpec, params: AttentionParams, X, weights) -> Array:
    """sum_s weights_s d f(X_s) / d theta: the gradient of any loss whose derivative in f is `weights` (n,)."""
    return np.asarray(weights, dtype=float) @ row_jacobian(spec, params, X)


def sample_rows(spec: AttentionSpec, params: AttentionParams, n: int, rng=None, noise_sd: float = 0.1,
                design: str = "gaussian") -> tuple[Array, Array]:
    """(X, y) from a teacher: n sequences of the design and y = row output + noise_sd * N(0, 1)."""
    if not (np.isfinite(noise_sd) and noise_sd >= 0):
        raise ValueError(f"noise_sd must be a non-negative number, got {noise_sd!r}")
    rng = np.random.default_rng(rng)
    X = draw_sequences(spec, n, rng, design)
    return X, row_output(spec, params, X) + noise_sd * rng.standard_normal(X.shape[0])


def moe_form(spec: AttentionSpec, params: AttentionParams) -> tuple[MoESpec, list[MixingMeasure]]:
    """The row as moe_sim MoEs on xbar = X.reshape(n, N d), one N-atom measure per head (the row is their
    sum): a partially quadratic score with coefficients of xbar^T E_i^T W E_j xbar / sqrt(d) for atom j, and
    the linear expert v^T E_j xbar (E_j selects token j). Atom biases are 0: a fixed bias lives in the gate."""
    spec.check_params(params)
    N, d, i = spec.N, spec.d, spec.row
    D = N * d
    iu, ju = np.triu_indices(D)
    measures = []
    for W, v in zip(params.score_matrices(), params.v):
        scores, experts = [], np.zeros((N, 1 + D))
        for j in range(N):
            M = np.zeros((D, D))
            M[i * d:(i + 1) * d, j * d:(j + 1) * d] = W / np.sqrt(d)
            scores.append(np.where(iu == ju, M[iu, ju], M[iu, ju] + M[ju, iu]))  # monomial xbar_u xbar_v, u <= v
            experts[j, 1 + j * d:1 + (j + 1) * d] = v
        measures.append(MixingMeasure(np.zeros(N), np.stack(scores), experts))
    return MoESpec(gate=spec.gate, score="partial_quadratic", expert="linear", d=D), measures


def moe_output(spec: AttentionSpec, params: AttentionParams, X) -> Array:
    """The row through its MoE form: the sum over heads of `regression_function` on the stacked tokens."""
    X = spec.check_sequences(X)
    moe, measures = moe_form(spec, params)
    xbar = X.reshape(X.shape[0], -1)
    return sum(regression_function(moe, G, xbar) for G in measures)


class RowObjective:
    """The least-squares objective of a student on (X, y) in the form `moe_sim.fit.lse.minimise` takes, so the
    attention fit shares the estimator's local search and certificate: F = RSS / (2 n var(y)) with its
    gradient (`__call__`; (inf, 0) where theta or F is not finite), and the residuals f - y with their
    Jacobian (`residuals_and_jacobian`, for its Gauss-Newton polish and decrement)."""

    def __init__(self, spec: AttentionSpec, X, y):
        self.spec, self.X = spec, spec.check_sequences(X)
        self.y = np.asarray(y, dtype=float)
        if self.y.shape != (self.X.shape[0],) or not np.all(np.isfinite(self.y)):
            raise ValueError(f"y must be finite with shape ({self.X.shape[0]},) to match X, got {self.y.shape}")
        self.n = len(self.y)
        self.scale = 1.0 / (self.n * max(float(np.var(self.y)), 1e-12))
        self.sigma2_floor = sigma2_floor(self.y)

    def residuals_and_jacobian(self, theta: Array) -> tuple[Array, Array]:
        params = self.spec.from_vector(theta)
        heads = _heads(self.spec, params, self.X)
        return sum(fw.f for fw in heads) - self.y, _jacobian(self.spec, params, self.X, heads)

    def __call__(self, theta: Array) -> tuple[float, Array]:
        if not np.all(np.isfinite(theta)):
            return np.inf, np.zeros_like(theta)
        with np.errstate(all="ignore"):
            r, J = self.residuals_and_jacobian(theta)
            value, grad = 0.5 * float(r @ r) * self.scale, (r @ J) * self.scale
        if not (np.isfinite(value) and np.all(np.isfinite(grad))):
            return np.inf, np.zeros_like(theta)
        return value, grad


class LocalFit(NamedTuple):
    """One local solve: where it ended, the mean squared error there, the certificate's statistic
    (||grad F||_inf / F), the iterations, whether a certificate holds, why not, and which one held
    ("gradient" or "decrement", `moe_sim.fit.lse`)."""

    theta: Array
    objective: float
    grad_norm: float
    n_iter: int
    converged: bool
    reason: str
    stop: str


def local_solve(spec: AttentionSpec, X, y, theta0, tol: float = 1e-7, max_iter: int = 5000,
                maxcor: int = 20) -> LocalFit:
    """The estimator's local search (`moe_sim.fit.lse.minimise`: L-BFGS-B on F / F_ref with restarts, a
    Gauss-Newton polish where the line search reaches machine precision) from theta0, certified when
    ||grad F||_inf / F <= tol or the Gauss-Newton decrement is below 1e-3 sigma^2: criteria that do not scale
    with n (THEORY.md s7)."""
    obj = RowObjective(spec, X, y)
    with single_threaded_blas(), np.errstate(all="ignore"):  # L-BFGS-B's BLAS calls on tiny vectors
        end = minimise(obj, np.asarray(theta0, dtype=float), None, tol, max_iter, maxcor)
    return LocalFit(end.theta, 2.0 * end.value / (obj.scale * obj.n), end.statistic, end.n_iter, end.converged,
                    end.reason, end.stop)


def draw_start(spec: AttentionSpec, rng, scale: float = 1.0) -> Array:
    """A truth-free start: `draw_params` as a flat vector."""
    return spec.to_vector(draw_params(spec, rng, scale))


def fit_student(spec: AttentionSpec, X, y, n_starts: int = 8, search: Search = Search(), rng=None,
                scale: float = 1.0, **solve_options) -> FitResult:
    """Least squares by the estimator's global search: rounds of n_starts truth-free random starts
    (`draw_start`, `local_solve`) until the best objective is reached from `search.hits` starts (within
    `search.hit_tol` sigma^2 of RSS) or `search.max_rounds` rounds have run. A `FitResult` whose measure is the
    fitted `AttentionParams`, objective the RSS, starts one `StartResult` per local solve (measure: its end
    point) and search the `SearchReport`."""
    t0 = time.perf_counter()
    n_starts = _positive_int("n_starts", n_starts)
    rng = np.random.default_rng(rng)
    n = spec.check_sequences(X).shape[0]
    estimator = LeastSquares(search=search)
    records: list[StartResult] = []
    for round_ in range(search.max_rounds):
        for _ in range(n_starts):
            end = local_solve(spec, X, y, draw_start(spec, rng, scale), **solve_options)
            finite = np.isfinite(end.objective)
            records.append(StartResult("random", n * end.objective if finite else np.nan, end.n_iter,
                                       end.converged, end.reason, end.grad_norm,
                                       spec.from_vector(end.theta) if finite else None, end.stop))
        report = estimator.search_report(records, y, round_ + 1)
        if report.met:
            break
    best = estimator.best_start(records)
    if best is None:
        return FitResult(None, np.nan, sum(r.n_iter for r in records), False, time.perf_counter() - t0, "lse",
                         "every start failed", records, search=report)
    return FitResult(best.measure, best.objective, best.n_iter, best.converged, time.perf_counter() - t0, "lse",
                     best.reason, records, grad_norm=best.grad_norm, stop=best.stop, search=report)


def head_errors(student_spec: AttentionSpec, student: AttentionParams, teacher_spec: AttentionSpec,
                teacher: AttentionParams) -> list[dict]:
    """Per teacher head j, the error of the student heads matched to it, in the coordinates the row identifies:
    the score matrix W (not W_Q, W_K) and v. Heads are matched one to one (Hungarian, on ||dW||_F + ||dv||)
    when the student has no more heads than the teacher, else in Voronoi cells (each student head to its
    nearest teacher head). W_error is the largest ||W_i - W*_j||_F over the cell and W_error_weighted its
    average weighted by ||v_i|| (a head with a vanishing v is a null head whose W the data cannot see; THEORY.md
    s7 asks for both), NaN for an empty cell; v_error is ||sum_{i in cell} v_i - v*_j||, since heads with one
    W act through the sum of their v."""
    check_pair(teacher_spec, student_spec)
    student_spec.check_params(student, "student")
    teacher_spec.check_params(teacher, "teacher")
    Ws, Wt = student.score_matrices(), teacher.score_matrices()
    dW = np.linalg.norm(Ws[:, None] - Wt[None], axis=(2, 3))
    cost = dW + np.linalg.norm(student.v[:, None] - teacher.v[None], axis=2)
    if student.heads <= teacher.heads:
        rows, cols = linear_sum_assignment(cost)
        cell_of = dict(zip(rows, cols))
    else:
        cell_of = dict(enumerate(np.argmin(cost, axis=1)))
    size = np.linalg.norm(student.v, axis=1)
    out = []
    for j in range(teacher.heads):
        cell = [i for i, c in cell_of.items() if c == j]
        out.append({
            "head": j,
            "cell_size": len(cell),
            "W_error": float(max(dW[cell, j])) if cell else float("nan"),
            "W_error_weighted": float(size[cell] @ dW[cell, j] / size[cell].sum()) if cell else float("nan"),
            "v_error": float(np.linalg.norm(student.v[cell].sum(axis=0) - teacher.v[j])),
        })
    return out


def function_error(student_spec: AttentionSpec, student: AttentionParams, teacher_spec: AttentionSpec,
                   teacher: AttentionParams, X) -> float:
    """Root mean square of the student's minus the teacher's row output on the sequences X (fresh ones)."""
    check_pair(teacher_spec, student_spec)
    diff = row_output(student_spec, student, X) - row_output(teacher_spec, teacher, X)
    return float(np.sqrt(np.mean(diff**2)))


def fit_replicate(teacher_spec: AttentionSpec, teacher: AttentionParams, student_spec: AttentionSpec, n: int,
                  replicate: int, seed: int = 0, noise_sd: float = 0.1, design: str = "gaussian",
                  n_starts: int = 8, search: Search = Search(), n_test: int = 2000, **solve_options) -> list[dict]:
    """One replicate: draw n sequences from the teacher, fit the student (`fit_student`) and return one tidy
    row per teacher head with the head errors, the function error on n_test fresh sequences, the fit's mean
    squared error, certificate and search report, and the teacher's mean squared error on the same sample.
    The data, starts and test sequences come from the seed sequence (seed, n, replicate), so students of
    another gate fitted with the same seed see the same sample (THEORY.md s3, comparison (b))."""
    check_pair(teacher_spec, student_spec)
    teacher_spec.check_params(teacher, "teacher")
    rng = np.random.default_rng([seed, n, replicate])
    X, y = sample_rows(teacher_spec, teacher, n, rng, noise_sd, design)
    fit = fit_student(student_spec, X, y, n_starts, search, rng, **solve_options)
    fit.compare_with_truth(float(np.sum((y - row_output(teacher_spec, teacher, X)) ** 2)))
    test = draw_sequences(teacher_spec, n_test, rng, design)
    common = {
        "teacher_gate": teacher_spec.gate.name, "student_gate": student_spec.gate.name, "N": teacher_spec.N,
        "d": teacher_spec.d, "teacher_heads": teacher_spec.heads, "student_heads": student_spec.heads, "n": n,
        "replicate": replicate, "design": design, "noise_sd": noise_sd, "mse": fit.objective / n,
        "truth_mse": fit.truth_objective / n, "worse_than_truth": fit.worse_than_truth, "grad_norm": fit.grad_norm,
        "converged": fit.converged, "certified": fit.certified, "stop": fit.stop, "local_fits": fit.search.n_starts,
        "hits": fit.search.n_hits, "optima": fit.search.n_optima, "p_miss": fit.search.p_miss,
        "search_gap": fit.search.gap, "n_iter": fit.n_iter,
        "function_error": np.nan if fit.measure is None else function_error(
            student_spec, fit.measure, teacher_spec, teacher, test),
        "runtime_s": fit.runtime_s,
    }
    if fit.measure is None:
        errors = [{"head": j, "cell_size": 0, "W_error": np.nan, "W_error_weighted": np.nan, "v_error": np.nan}
                  for j in range(teacher_spec.heads)]
    else:
        errors = head_errors(student_spec, fit.measure, teacher_spec, teacher)
    return [{**common, **row} for row in errors]
