"""Is a least-squares fit bit-reproducible? The same `ms.fit` repeated in one process, its objective calls traced.

    .venv/bin/python benchmarks/determinism.py [--repeats 6] [--n 300]

The model is the quick `sample_complexity` sweep's over-specified softmax series (partially quadratic score,
tanh experts, k = 3), where a rerun of that sweep changed rows. Every call of the objective is recorded (its
input and output bytes) and every local fit's start; each repeat is compared with the first. A repeat that
differs prints where: the first objective call whose input differs, how many calls into its local fit, and
whether every call before it matched bit for bit (then the optimiser's step, not the objective, diverged).
"""

from __future__ import annotations

import argparse

import moe_sim as ms
from moe_sim.fit import lse

SPEC = ms.MoESpec(gate="softmax", score="partial_quadratic", expert="tanh")
TRUTH = ms.MixingMeasure(bias=[0.0, 0.0], gate=[[4.0], [0.0]], expert=[[0.5, 2.0], [-0.5, -1.5]])


def traced_fits(n: int, repeats: int) -> list[list[tuple]]:
    """The trace of each repeat: ("start", theta0) and ("call", theta, value, gradient) entries, as bytes."""
    X, y = ms.sample(SPEC, TRUTH, n, rng=0, noise_sd=0.001, bounds=(-1.5, 1.5))
    call, minimise = lse.RSSObjective.__call__, lse.minimise
    trace: list[tuple] = []

    def traced_call(self, theta):
        value, grad = call(self, theta)
        trace.append(("call", theta.tobytes(), float(value), grad.tobytes()))
        return value, grad

    def traced_minimise(obj, theta0, *args):
        trace.append(("start", theta0.tobytes()))
        return minimise(obj, theta0, *args)

    lse.RSSObjective.__call__, lse.minimise = traced_call, traced_minimise
    try:
        runs = []
        for _ in range(repeats):
            trace.clear()
            ms.fit(SPEC, X, y, 3, rng=1, G_true=TRUTH, n_starts=2)
            runs.append(list(trace))
        return runs
    finally:
        lse.RSSObjective.__call__, lse.minimise = call, minimise


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    runs = traced_fits(args.n, args.repeats)
    first = runs[0]
    for index, run in enumerate(runs[1:], start=1):
        differs = next((i for i, (a, b) in enumerate(zip(first, run)) if a != b), None)
        if differs is None and len(first) == len(run):
            print(f"repeat {index}: bit-identical ({len(run)} entries)")
            continue
        start = max(i for i in range(differs) if first[i][0] == "start")
        print(f"repeat {index}: differs at entry {differs} of {len(first)}, objective call {differs - start} of its "
              f"local fit; every entry before it identical: {first[:differs] == run[:differs]}; that entry is a "
              f"{first[differs][0]!r} with a different input: {first[differs][1] != run[differs][1]}")


if __name__ == "__main__":
    main()
