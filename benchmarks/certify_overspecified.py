"""How often over-specified least-squares fits certify: L-BFGS-B against Levenberg-Marquardt (issue 10).

The series of an experiment config as it defines them (default comparison (b),
`experiments/sigmoid_vs_softmax_same.toml`: k* = 2, k = 3, X ~ U[-1, 1], sigma = 1e-3), in the spaces it fits
them in (there: the box |parameters| <= 20; sigmoid also weights >= 0.05 and expert_min = 0.1), from the same
truth-free starts (one per strategy, one round) and at most `--max-iter` iterations per start, once with each
solver. Per sample and solver: the best RSS in sigma^2 above the better of the two, whether the best fit is
certified, how many starts certified, and seconds.

    .venv/bin/python benchmarks/certify_overspecified.py --n 800 --reps 4 --max-iter 5000
    .venv/bin/python benchmarks/certify_overspecified.py --config sample_complexity --n 3000 --reps 4
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

import moe_sim as ms
from moe_sim.plots import to_markdown

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def rows(config: str, n: int, reps: int, max_iter: int) -> list[dict]:
    cfg, out = ms.load_config(EXPERIMENTS / f"{config}.toml"), []
    for series in cfg.series:
        space = {key: value for key, value in series.options.items() if key != "solver"}
        for rep in range(reps):
            X, y = ms.sample(series.spec, series.truth, n, rng=rep, noise_sd=cfg.noise_sd, design=cfg.design,
                             bounds=cfg.bounds)
            fits = {}
            for solver in ("lbfgsb", "lm"):
                estimator = ms.LeastSquares(solver=solver, max_iter=max_iter, search=ms.Search(max_rounds=1), **space)
                start = time.perf_counter()
                fits[solver] = (ms.fit(series.spec, X, y, series.k, estimator=estimator, rng=rep, n_starts=1),
                                time.perf_counter() - start)
            best = min(fit.objective for fit, _ in fits.values())
            for solver, (fit, seconds) in fits.items():
                out.append({"cell": series.label, "n": n, "sample": rep, "solver": solver,
                            "RSS - best (sigma^2)": (fit.objective - best) / cfg.noise_sd**2,
                            "best certified": fit.converged,
                            "starts certified": sum(s.converged for s in fit.starts),
                            "starts": len(fit.starts), "seconds": seconds})
                print(out[-1], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sigmoid_vs_softmax_same", help="an experiment in experiments/")
    parser.add_argument("--n", type=int, default=800)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--max-iter", type=int, default=5000)
    args = parser.parse_args()
    table = pd.DataFrame(rows(args.config, args.n, args.reps, args.max_iter))
    summary = table.groupby(["cell", "solver"]).agg(
        lower_or_equal=("RSS - best (sigma^2)", lambda v: int((v <= 0.01).sum())),
        worst_miss=("RSS - best (sigma^2)", "max"), best_certified=("best certified", "sum"),
        starts_certified=("starts certified", "sum"), starts=("starts", "sum"), seconds=("seconds", "median"))
    print(to_markdown(summary.reset_index()))


if __name__ == "__main__":
    main()
