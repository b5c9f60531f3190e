"""Initialisation strategies for the multi-start estimators.

Each strategy maps (spec, X, y, k, rng) to one k-atom starting measure. Starting measures of a Gaussian MoE
carry variances (the residual variance of the start's regression function, or the truth's for near_truth).

- ``near_truth`` (needs the truth): every true atom gets at least one fitted atom, the extra atoms go to true
  atoms drawn at random, atoms sharing a true atom split its weight evenly, then every parameter gets Gaussian
  noise of sd ``scale * n**-power`` (power 0 by default: n-independent noise; THEORY.md s4 warns that noise
  shrinking with n can bias fitted slopes).
- ``kmeans`` (truth-free): k-means on standardised (x, y), y weighted by a random factor in [1/e, e] so that
  repeated starts cluster differently, then per cluster a least-squares expert (through
  the activation's linearisation for FFN experts) and a least-squares gate that scores the cluster's members.
- ``random`` (truth-free): each expert interpolates p data points drawn at random (RANSAC-like, so its scale
  follows the data), gates drawn at the scale of the gate features.
- ``split`` (truth-free, k >= 2): from the best fit with k - 1 atoms (itself reached from fewer: the global
  search fits the chain), one atom is split in two along its gate, its expert or its weight, the classic
  route to the optima of over-specified mixtures (greedy and split-and-merge EM); for fits that keep each
  start's expert sign, also into two atoms of opposite expert signs.
- ``merge`` (truth-free, k >= 3, from the second round of a search on): the reverse move on the best k-atom
  fit so far: its two closest atoms merged, another atom split along its expert.

`split` and `merge` start from fits, so `initial_measures` leaves them to the global search
(`moe_sim.fit.estimators.Estimator.fit`), which draws them through `split_starts` and `merge_starts`.
"""

from __future__ import annotations

import numpy as np

from ..measure import MixingMeasure, MoESpec
from ..model import Features, check_inputs, forward

TRUTH_FREE = ("kmeans", "random", "split", "merge")
FROM_FITS = ("split", "merge")  # drawn by the global search from its own fits
INITS = ("near_truth", *TRUTH_FREE)
# init="default", per estimator and round of the global search: starts per strategy (near_truth only when the
# truth is given). Least squares keeps k-means starts: on paper b's over-specified model the lowest RSS lies
# in a distant configuration that random and near-truth starts alone miss (benchmarks/README.md).
DEFAULT_PLAN = {
    "lse": {"kmeans": 8, "random": 8, "split": 6, "merge": 2, "near_truth": 8},
    "em": {"kmeans": 2, "random": 2, "split": 4, "merge": 2, "near_truth": 1},
}
PER_STRATEGY = {"lse": 8, "em": 2}  # starts per named strategy when n_starts is not given
_GATE_LOGIT = 2.0  # target gate logit of a cluster's members (minus for non-members)
_MAX_POINTS = 4000  # truth-free strategies look at a random subsample of at most this many points
_RIDGE = 1e-8


def _linearisation_point(spec: MoESpec) -> tuple[float, float, float]:
    """(u0, act(u0), act'(u0)) at the candidate pre-activation where the activation is steepest."""
    fam = spec.expert_family
    cand = np.array([0.0, 0.5, 1.0, -0.5, -1.0])
    values = fam.activation(cand)
    slope = fam.derivative(cand, values)
    i = int(np.argmax(slope))
    return float(cand[i]), float(values[i]), float(slope[i])


def _solve(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Ridge-stabilised least squares of A x = b, A of shape (m, p)."""
    return np.linalg.solve(A.T @ A + _RIDGE * np.eye(A.shape[1]), A.T @ b)


def _expert_fit(spec: MoESpec, psi: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Expert parameters whose (linearised) expert fits y: psi (p, m), y (m,)."""
    if spec.expert_family.linear_in_params:
        return _solve(psi.T, y)
    if spec.expert_family.scaled:
        return np.clip(_scaled_expert_fit(spec, psi, y), -10.0, 10.0)
    u0, a0, s0 = _linearisation_point(spec)
    eta = _solve(psi.T, u0 + (y - a0) / s0)
    return np.clip(eta, -10.0, 10.0)


_SCALED_SPREADS = (0.5, 1.0, 2.0, 4.0)  # candidate sd of eta_1 . x: near-linear to saturated activations


def _scaled_expert_fit(spec: MoESpec, psi: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[eta_2, eta_1] of eta_2 act(eta_1 . x) fitting y: eta_1 along the slope of an affine least-squares fit
    of y on x, at the sign and length (a few spreads of eta_1 . x) whose best scale eta_2 (a 1-d least
    squares, in closed form) leaves the smallest residual. A pre-activation without an inner bias cannot be
    shifted to the activation's steepest point, so the length is searched instead of linearised; both signs
    are tried because relu(eta_1 . x) is zero on one side."""
    slope = _solve(np.vstack([np.ones(psi.shape[1]), psi]).T, y)[1:]
    norm = np.linalg.norm(slope)
    direction = slope / norm if norm > 0 else np.eye(len(slope))[0]
    t = direction @ psi
    spread = max(float(np.std(t)), float(np.max(np.abs(t))) / 2, 1e-12)
    best = None
    for length in _SCALED_SPREADS:
        for sign in (1.0, -1.0):
            eta_1 = sign * length / spread * direction
            a = spec.expert_family.activation(eta_1 @ psi)
            eta_2 = float(a @ y) / (float(a @ a) + _RIDGE)
            rss = float(np.sum((y - eta_2 * a) ** 2))
            if best is None or rss < best[0]:
                best = (rss, np.concatenate([[eta_2], eta_1]))
    return best[1]


def _subsample(X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if len(y) <= _MAX_POINTS:
        return X, y
    idx = rng.choice(len(y), _MAX_POINTS, replace=False)
    return X[idx], y[idx]


def _kmeans_labels(Z: np.ndarray, k: int, rng: np.random.Generator, n_iter: int = 50) -> np.ndarray:
    """Lloyd's algorithm with k-means++ seeding on the rows of Z."""
    centres = [Z[rng.integers(len(Z))]]
    for _ in range(1, k):
        d2 = np.min(((Z[:, None, :] - np.array(centres)[None]) ** 2).sum(axis=2), axis=1)
        total = d2.sum()
        p = d2 / total if total > 0 else None
        centres.append(Z[rng.choice(len(Z), p=p)])
    centres = np.array(centres)
    labels = np.full(len(Z), -1)
    for _ in range(n_iter):
        new = np.argmin(((Z[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            if np.any(labels == j):
                centres[j] = Z[labels == j].mean(axis=0)
    return labels


def kmeans(spec: MoESpec, X: np.ndarray, y: np.ndarray, k: int, rng=None) -> MixingMeasure:
    """k-means on standardised (x, y) (y randomly reweighted), then a least-squares expert and gate per
    cluster (truth-free)."""
    rng = np.random.default_rng(rng)
    Xs, ys = _subsample(X, y, rng)
    Z = np.column_stack([Xs, ys])
    Z = (Z - Z.mean(axis=0)) / np.where(Z.std(axis=0) > 0, Z.std(axis=0), 1.0)
    Z[:, -1] *= np.exp(rng.uniform(-1.0, 1.0))  # a random weight of y against x: diverse clusterings
    labels = _kmeans_labels(Z, k, rng)
    feats = Features.of(spec, Xs)
    design = np.vstack([np.ones(len(ys)), feats.phi]).T
    global_expert = _expert_fit(spec, feats.psi, ys)
    bias, gate, expert = np.empty(k), np.empty((k, spec.q)), np.empty((k, spec.p))
    for j in range(k):
        member = labels == j
        coef = _solve(design, np.where(member, _GATE_LOGIT, -_GATE_LOGIT))
        bias[j], gate[j] = coef[0], coef[1:]
        enough = member.sum() > 2 * spec.p
        expert[j] = _expert_fit(spec, feats.psi[:, member], ys[member]) if enough else global_expert
    return MixingMeasure(bias, gate, expert)


def random(spec: MoESpec, X: np.ndarray, y: np.ndarray, k: int, rng=None) -> MixingMeasure:
    """Experts through p random data points each, gates at the gate features' scale (truth-free)."""
    rng = np.random.default_rng(rng)
    Xs, ys = _subsample(X, y, rng)
    feats = Features.of(spec, Xs)
    expert = np.empty((k, spec.p))
    for i in range(k):
        idx = rng.choice(len(ys), min(spec.p, len(ys)), replace=False)
        expert[i] = _expert_fit(spec, feats.psi[:, idx], ys[idx])
    spread = feats.phi.std(axis=1)
    gate = rng.normal(size=(k, spec.q)) * 2.0 / np.where(spread > 0, spread, 1.0)
    bias = rng.normal(size=k) - gate @ feats.phi.mean(axis=1)
    return MixingMeasure(bias, gate, expert)


def near_truth(
    spec: MoESpec, X: np.ndarray, y: np.ndarray, k: int, rng=None, G_true: MixingMeasure | None = None,
    scale: float = 0.1, power: float = 0.0,
) -> MixingMeasure:
    """The truth with every true atom covered, weights split evenly within a cell, noise sd scale * n^-power.

    With k < k* the start covers k true atoms drawn at random.
    """
    if G_true is None:
        raise ValueError("init='near_truth' needs the true measure: pass G_true=...")
    spec.check_measure(G_true, "G_true")
    if not (np.isfinite(scale) and scale >= 0):
        raise ValueError(f"scale must be a non-negative number, got {scale!r}")
    if not np.isfinite(power):
        raise ValueError(f"power must be a finite number, got {power!r}")
    rng = np.random.default_rng(rng)
    k_true = G_true.k
    if k >= k_true:
        owner = np.concatenate([np.arange(k_true), rng.integers(k_true, size=k - k_true)])
    else:
        owner = np.sort(rng.choice(k_true, k, replace=False))
    share = np.bincount(owner, minlength=k_true)[owner]
    w = spec.weights(G_true.bias[owner]) / share
    bias = spec.gate_family.bias_of(w)
    sd = scale * float(len(y)) ** -power
    var = None
    if spec.likelihood == "gaussian":
        var = G_true.var[owner] * np.exp(sd * rng.normal(size=k))
    return MixingMeasure(
        bias + sd * rng.normal(size=k),
        G_true.gate[owner] + sd * rng.normal(size=(k, spec.q)),
        G_true.expert[owner] + sd * rng.normal(size=(k, spec.p)),
        var,
    )


def _with_atom(G: MixingMeasure, i: int, first: tuple, second: tuple) -> MixingMeasure:
    """G with atom i replaced by two atoms (bias, gate, expert[, var]) given as `first` and `second`."""
    keep = [j for j in range(G.k) if j != i]
    rest = G.subset(keep) if keep else None
    parts = [np.array([first[0], second[0]]), np.vstack([first[1], second[1]]), np.vstack([first[2], second[2]])]
    var = None if G.var is None else np.array([G.var[i], G.var[i]])
    if rest is None:
        return MixingMeasure(*parts, var)
    return MixingMeasure(np.concatenate([rest.bias, parts[0]]), np.vstack([rest.gate, parts[1]]),
                         np.vstack([rest.expert, parts[2]]), None if var is None else np.concatenate([rest.var, var]))


def _direction(shape, rng: np.random.Generator, scale: np.ndarray) -> np.ndarray:
    u = rng.normal(size=shape)
    return u / max(np.linalg.norm(u), 1e-12) * scale


def _canonical(spec: MoESpec, G: MixingMeasure) -> tuple[MixingMeasure, tuple[float, np.ndarray]]:
    """G with its atoms sorted by their expert parameters and, under a translation-invariant gate, translated so
    that the last atom's (bias, gate) is zero; and the translation (t0, t) that takes it back to G's own. Splits
    drawn on it depend on the measure, not on the order or translation a fit left its atoms in (tied chain fits
    with permuted atoms otherwise drew different split directions for the same atom)."""
    G = G.subset(np.lexsort(G.expert.T[::-1]))
    if not spec.gate_family.translation_invariant:
        return G, (0.0, np.zeros(G.gate.shape[1]))
    shift = (float(G.bias[-1]), G.gate[-1].copy())
    return G.translate(-shift[0], -shift[1]), shift


SPLIT_DIRECTIONS = ("gate", "expert", "weight")
_SPLIT_STEP = 0.25  # split size, relative to 1 + the size of the parameter block


def split_starts(spec: MoESpec, G_fewer: MixingMeasure, rng, count: int | None = None,
                 both_signs: bool = False) -> list[MixingMeasure]:
    """Measures with one more atom than G_fewer: each atom in turn split along its gate, its expert and its
    weight (two copies with shares 0.7 / 0.3), in a random order; the first `count` (all when None). The atoms
    are taken in a canonical order (`_canonical`), so a permutation of G_fewer draws the same starts, and a
    softmax translation of it the same starts, translated.

    both_signs: also split each atom into shares 0.7 / 0.3 whose expert sizes (`ExpertFamily.size_index`)
    have opposite signs, for fits that keep each start's sign (`LeastSquares.expert_min`) and so cannot
    reach an opposite-signed atom from the other splits."""
    rng = np.random.default_rng(rng)
    gate = spec.gate_family
    G_fewer, shift = _canonical(spec, G_fewer)
    sizes = spec.expert_family.size_index(G_fewer.expert)
    out = []
    for i in range(G_fewer.k):
        c, beta, eta = G_fewer.bias[i], G_fewer.gate[i], G_fewer.expert[i]
        half = gate.scaled_bias(c, 0.5)
        if both_signs:
            flipped = eta.copy()
            flipped[sizes[i]] *= -1.0
            out.append(_with_atom(G_fewer, i, (gate.scaled_bias(c, 0.7), beta, eta),
                                  (gate.scaled_bias(c, 0.3), beta, flipped)))
        for direction in SPLIT_DIRECTIONS:
            db = _direction(beta.shape, rng, _SPLIT_STEP * (1 + np.linalg.norm(beta)))
            de = _direction(eta.shape, rng, _SPLIT_STEP * (1 + np.linalg.norm(eta)))
            if direction == "gate":
                first, second = (half, beta + db, eta), (half, beta - db, eta)
            elif direction == "expert":
                first, second = (half, beta, eta + de), (half, beta, eta - de)
            else:
                first = (gate.scaled_bias(c, 0.7), beta, eta + 0.1 * de)
                second = (gate.scaled_bias(c, 0.3), beta, eta - 0.1 * de)
            out.append(_with_atom(G_fewer, i, first, second))
    order = rng.permutation(len(out))
    return [out[j].translate(*shift) for j in order[:count]]


def merge_starts(spec: MoESpec, G: MixingMeasure, rng, count: int) -> list[MixingMeasure]:
    """Split-and-merge moves on G (k >= 3): its closest pair of atoms merged into their weight-averaged atom,
    then another atom split along its expert; up to `count` measures, one per atom split."""
    rng = np.random.default_rng(rng)
    if G.k < 3:
        return []
    theta = np.hstack([G.gate, G.expert])
    dist = np.linalg.norm(theta[:, None] - theta[None], axis=2) + np.diag(np.full(G.k, np.inf))
    i, j = np.unravel_index(np.argmin(dist), dist.shape)
    share = spec.weight_shares(G.bias[[i, j]])
    merged_bias = spec.gate_family.merged_bias(G.bias[[i, j]])
    rest = [a for a in range(G.k) if a not in (i, j)]
    merged = MixingMeasure(
        np.concatenate([G.bias[rest], [merged_bias]]), np.vstack([G.gate[rest], share @ G.gate[[i, j]]]),
        np.vstack([G.expert[rest], share @ G.expert[[i, j]]]),
        None if G.var is None else np.concatenate([G.var[rest], [share @ G.var[[i, j]]]]),
    )
    out = []
    for a in rng.permutation(merged.k - 1)[:count]:
        c, beta, eta = merged.bias[a], merged.gate[a], merged.expert[a]
        de = _direction(eta.shape, rng, _SPLIT_STEP * (1 + np.linalg.norm(eta)))
        half = spec.gate_family.scaled_bias(c, 0.5)
        out.append(_with_atom(merged, int(a), (half, beta, eta + de), (half, beta, eta - de)))
    return out


_STRATEGIES = {"near_truth": near_truth, "kmeans": kmeans, "random": random}


def _with_variance(spec: MoESpec, G: MixingMeasure, X: np.ndarray, y: np.ndarray) -> MixingMeasure:
    """Attach the residual variance of G's regression function (floored) to every atom."""
    f = forward(spec, G, Features.of(spec, X)).f
    var = max(float(np.mean((y - f) ** 2)), 1e-3 * float(np.var(y)), 1e-12)
    return MixingMeasure(G.bias, G.gate, G.expert, np.full(G.k, var))


def check_starts(spec: MoESpec, k, starts) -> list[tuple[str, MixingMeasure]]:
    """The starts as a list of (name, k-atom measure of this family) pairs, or a ValueError naming the bad one."""
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    starts = list(starts)
    if not starts:
        raise ValueError("starts is empty: give at least one (name, MixingMeasure) pair")
    for i, start in enumerate(starts):
        if not (
            isinstance(start, tuple) and len(start) == 2 and isinstance(start[0], str)
            and isinstance(start[1], MixingMeasure)
        ):
            raise ValueError(f"starts[{i}] must be a (name, MixingMeasure) pair, got {start!r}")
        spec.check_measure(start[1], f"starts[{i}] measure")
        if start[1].k != k:
            raise ValueError(f"starts[{i}] ({start[0]!r}) has {start[1].k} atoms, but k={k}")
    return starts


def start_plan(init, n_starts: int | None, G_true: MixingMeasure | None, method: str = "lse") -> dict[str, int]:
    """Starts per strategy, {name: count}, from `init`: "default" (DEFAULT_PLAN[method]; n_starts, when given,
    replaces every count), a strategy name or a sequence of names (n_starts each, by default
    PER_STRATEGY[method]), or a dict {name: count}."""
    if method not in DEFAULT_PLAN:
        raise ValueError(f"method={method!r} is not allowed; choose one of {', '.join(map(repr, DEFAULT_PLAN))}")
    if n_starts is not None and not (isinstance(n_starts, (int, np.integer)) and n_starts >= 1):
        raise ValueError(f"n_starts must be a positive integer, got {n_starts!r}")
    if isinstance(init, str) and init == "default":
        plan = {name: count for name, count in DEFAULT_PLAN[method].items()
                if name != "near_truth" or G_true is not None}
        return plan if n_starts is None else dict.fromkeys(plan, int(n_starts))
    if isinstance(init, dict):
        if n_starts is not None:
            raise ValueError(f"init={init!r} gives the counts: leave n_starts (got {n_starts!r}) unset")
        plan = dict(init)
        bad_counts = {name: c for name, c in plan.items() if not (isinstance(c, (int, np.integer)) and c >= 1)}
        if bad_counts:
            raise ValueError(f"init={init!r}: every count must be a positive integer, got {bad_counts}")
    else:
        names = (init,) if isinstance(init, str) else tuple(init)
        plan = dict.fromkeys(names, int(PER_STRATEGY[method] if n_starts is None else n_starts))
    bad = [name for name in plan if name not in INITS]
    if bad or not plan:
        raise ValueError(f"init={init!r} is not allowed; choose 'default', a dict of counts or any of "
                         f"{', '.join(map(repr, INITS))}")
    return plan


def initial_measures(
    spec: MoESpec, X, y, k: int, init="default", n_starts: int | None = None, rng=None,
    G_true: MixingMeasure | None = None, scale: float = 0.1, power: float = 0.0, method: str = "lse",
) -> list[tuple[str, MixingMeasure]]:
    """Starting measures as (strategy name, measure) pairs, as many per strategy as `start_plan` says (the
    plan's split and merge starts are left to the global search, which draws them from its fits).

    scale and power set the near_truth noise sd, scale * n^-power. Deterministic for a seed.
    """
    X, y = check_inputs(spec, X, y)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    plan = start_plan(init, n_starts, G_true, method)
    rng = np.random.default_rng(rng)
    starts = []
    from_fits = sorted(set(plan) & set(FROM_FITS))
    if from_fits and not (isinstance(init, str) and init == "default"):
        raise ValueError(f"init {from_fits} start from fits: the global search of `moe_sim.fit.fit` draws them")
    plan = {name: count for name, count in plan.items() if name not in FROM_FITS}
    for name, count in plan.items():
        for _ in range(count):
            if name == "near_truth":
                G = near_truth(spec, X, y, k, rng, G_true=G_true, scale=scale, power=power)
            else:
                G = _STRATEGIES[name](spec, X, y, k, rng)
            if spec.likelihood == "gaussian" and G.var is None:
                G = _with_variance(spec, G, X, y)
            starts.append((name, G))
    return starts
