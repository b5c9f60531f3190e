"""Are LM's worse certified optima local optima of the box, or an artefact of how LM treats bounds? (issue 10)

One series of an experiment config (default: sample_complexity's sigmoid series, where LM certified optima far
above L-BFGS-B's), one sample: the default search's first round (one start per strategy, in the config's
space) by L-BFGS-B and by LM from the same starts, then L-BFGS-B started at each of LM's end points. If LM
stopped where the box's projected gradient does not vanish, L-BFGS-B moves on from there; if its end points
are local optima of the box, L-BFGS-B stays.

    .venv/bin/python benchmarks/lm_end_points.py --config sample_complexity --series sigmoid --n 1200 --sample 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import moe_sim as ms
from moe_sim.fit import lse

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sample_complexity", help="an experiment in experiments/")
    parser.add_argument("--series", default="sigmoid", help="a series label of that config")
    parser.add_argument("--n", type=int, default=1200)
    parser.add_argument("--sample", type=int, default=0)
    args = parser.parse_args()
    cfg = ms.load_config(EXPERIMENTS / f"{args.config}.toml")
    series = next(s for s in cfg.series if s.label == args.series)
    space = {key: value for key, value in series.options.items() if key != "solver"}
    X, y = ms.sample(series.spec, series.truth, args.n, rng=args.sample, noise_sd=cfg.noise_sd, design=cfg.design,
                     bounds=cfg.bounds)
    sigma2 = cfg.noise_sd**2
    fits = {solver: ms.fit(series.spec, X, y, series.k, rng=args.sample, n_starts=1, estimator=ms.LeastSquares(
        solver=solver, max_iter=5000, search=ms.Search(max_rounds=1), **space)) for solver in ("lbfgsb", "lm")}
    ends = [(start.init, start.measure) for start in fits["lm"].starts]
    polished = lse.solve(series.spec, X, y, series.k, ends, bounds=space.get("bounds"), tol=1e-7, max_iter=5000,
                         maxcor=20, expert_min=space.get("expert_min", 0.0))
    print("| start | L-BFGS-B RSS | LM RSS | L-BFGS-B from LM's end | moved | certified there |")
    print("|---|---|---|---|---|---|")
    for own, end, again in zip(fits["lbfgsb"].starts, fits["lm"].starts, polished):
        print(f"| {end.init} | {own.objective / sigma2:.6g} | {end.objective / sigma2:.6g} | "
              f"{again.objective / sigma2:.6g} | {(end.objective - again.objective) / sigma2:.2g} | "
              f"{again.converged} ({again.stop or again.reason}) |")
    best = min(fits["lm"].starts, key=lambda start: start.objective).measure
    print(f"\nRSS in sigma^2 = {sigma2:g}. LM's best end point: bias {best.bias.round(2)}, gate "
          f"{best.gate.ravel().round(2)}, expert {best.expert.round(2).tolist()}")


if __name__ == "__main__":
    main()
