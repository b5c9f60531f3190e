"""How often over-specified least-squares fits certify: L-BFGS-B against Levenberg-Marquardt (issue 10).

Comparison (b)'s cells (`experiments/sigmoid_vs_softmax_same.toml`: k* = 2, k = 3, X ~ U[-1, 1], sigma =
1e-3), in the spaces its configs fit them in (the box |parameters| <= 20; sigmoid also weights >= 0.05 and
expert_min = 0.1), from the same truth-free starts (one per strategy, one round) and at most `--max-iter`
iterations per start, once with each solver. Per sample and solver: the best RSS in sigma^2 above the better
of the two, whether the best fit is certified, how many starts certified, and seconds.

    .venv/bin/python benchmarks/certify_overspecified.py --n 800 --reps 4 --max-iter 5000
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

import moe_sim as ms
from moe_sim.plots import to_markdown

SIGMA = 1e-3
BOX = {"bias": (-20.0, 20.0), "gate": (-20.0, 20.0), "expert": (-20.0, 20.0)}
SIGMOID_BOX = {**BOX, "bias": (-2.944, 20.0)}
CELLS = {  # spec, bounds, expert_min, truth
    "gelu_softmax": (ms.MoESpec(gate="softmax", expert="scaled_gelu"), BOX, 0.0,
                     ms.MixingMeasure(bias=[0.0, 0.0], gate=[[3.0], [0.0]], expert=[[2.0, 3.0], [-1.0, 2.0]])),
    "gelu_sigmoid": (ms.MoESpec(gate="sigmoid", expert="scaled_gelu"), SIGMOID_BOX, 0.1,
                     ms.MixingMeasure(bias=[0.0, 0.0], gate=[[3.0], [-3.0]], expert=[[2.0, 3.0], [-1.0, 2.0]])),
    "linear_softmax": (ms.MoESpec(gate="softmax", expert="linear"), BOX, 0.0,
                       ms.MixingMeasure(bias=[0.0, 0.0], gate=[[3.0], [0.0]], expert=[[1.0, 4.0], [-1.0, -3.0]])),
    "linear_sigmoid": (ms.MoESpec(gate="sigmoid", expert="linear"), SIGMOID_BOX, 0.1,
                       ms.MixingMeasure(bias=[0.0, 0.0], gate=[[3.0], [-3.0]], expert=[[1.0, 4.0], [-1.0, -3.0]])),
}


def rows(n: int, reps: int, max_iter: int) -> list[dict]:
    out = []
    for cell, (spec, bounds, expert_min, truth) in CELLS.items():
        for rep in range(reps):
            X, y = ms.sample(spec, truth, n, rng=rep, noise_sd=SIGMA, bounds=(-1.0, 1.0))
            fits = {}
            for solver in ("lbfgsb", "lm"):
                estimator = ms.LeastSquares(solver=solver, bounds=bounds, expert_min=expert_min, max_iter=max_iter,
                                            search=ms.Search(max_rounds=1))
                start = time.perf_counter()
                fits[solver] = (ms.fit(spec, X, y, 3, estimator=estimator, rng=rep, n_starts=1),
                                time.perf_counter() - start)
            best = min(fit.objective for fit, _ in fits.values())
            for solver, (fit, seconds) in fits.items():
                out.append({"cell": cell, "n": n, "sample": rep, "solver": solver,
                            "RSS - best (sigma^2)": (fit.objective - best) / SIGMA**2,
                            "best certified": fit.converged,
                            "starts certified": sum(s.converged for s in fit.starts),
                            "starts": len(fit.starts), "seconds": seconds})
                print(out[-1], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=800)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--max-iter", type=int, default=5000)
    args = parser.parse_args()
    table = pd.DataFrame(rows(args.n, args.reps, args.max_iter))
    summary = table.groupby(["cell", "solver"]).agg(
        lower_or_equal=("RSS - best (sigma^2)", lambda v: int((v <= 0.01).sum())),
        worst_miss=("RSS - best (sigma^2)", "max"), best_certified=("best certified", "sum"),
        starts_certified=("starts certified", "sum"), starts=("starts", "sum"), seconds=("seconds", "median"))
    print(to_markdown(summary.reset_index()))


if __name__ == "__main__":
    main()
