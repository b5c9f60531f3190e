"""Null atoms in over-specified sigmoid regime-2 fits, with and without `LeastSquares.expert_min` (issue 11).

The truth is the regime-2 truth of the former sigmoid_vs_softmax.toml (k* = 2), fitted with k = 3 as its sweep fitted it
(default starts with the truth given, 2 per strategy, weights >= 0.05 by the bias floor, one round of starts).
An atom's reach is max |h_i(x)| on the sample relative to tanh(0.1 max|x|), the least an expert tanh(a x + b)
with |a| >= 0.1 reaches there; an atom is null when its reach is below 0.2.

    .venv/bin/python benchmarks/null_atoms.py --reps 4 --n 1000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import moe_sim as ms
from moe_sim.model import Features, forward

TRUTH = ms.MixingMeasure(bias=[0.0, 0.0], gate=[[3.0], [-3.0]], expert=[[1.0, 4.0], [-1.0, -3.0]])
WEIGHT_FLOOR = {"bias": [-2.944, 20.0], "gate": [-20.0, 20.0], "expert": [-20.0, 20.0]}


def smallest_reach(spec: ms.MoESpec, G: ms.MixingMeasure, X: np.ndarray) -> float:
    """The smallest, over G's atoms, of max |h_i(x)| on X, relative to tanh(0.1 max|x|)."""
    expert_reach = np.max(np.abs(forward(spec, G, Features.of(spec, X)).h), axis=1)
    return float(np.min(expert_reach)) / np.tanh(0.1 * np.max(np.abs(X)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--expert", default="tanh")
    parser.add_argument("--noise", type=float, default=0.001)
    args = parser.parse_args()
    spec = ms.MoESpec(gate="sigmoid", expert=args.expert)
    print(f"expert={args.expert} n={args.n} noise_sd={args.noise} k=3, k*=2")
    print("| expert_min | replicates with a null atom | smallest reach per replicate | certified | "
          "median RSS/n / sigma^2 | median s per fit |")
    print("|---|---|---|---|---|---|")
    for expert_min in (0.0, 0.1):
        reach, certified, rss, seconds = [], 0, [], []
        for rep in range(args.reps):
            X, y = ms.sample(spec, TRUTH, args.n, rng=rep, noise_sd=args.noise)
            tic = time.perf_counter()
            result = ms.fit(spec, X, y, 3, n_starts=2, rng=rep, G_true=TRUTH, bounds=WEIGHT_FLOOR,
                            expert_min=expert_min, search={"max_rounds": 1})
            seconds.append(time.perf_counter() - tic)
            reach.append(smallest_reach(spec, result.measure, X))
            certified += result.certified
            rss.append(result.objective / args.n / args.noise**2)
        nulls = sum(r < 0.2 for r in reach)
        print(f"| {expert_min} | {nulls}/{args.reps} | {' '.join(f'{r:.2g}' for r in reach)} | "
              f"{certified}/{args.reps} | {np.median(rss):.3f} | {np.median(seconds):.1f} |")


if __name__ == "__main__":
    main()
