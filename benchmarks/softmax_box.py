"""Over-specified softmax least squares with and without a bounded parameter space (issue 11).

The softmax series of an experiment config (default comparison (b), `experiments/sigmoid_vs_softmax_same.toml`:
k* = 2, k = 3, X ~ U[-1, 1], sigma = 1e-3), each sample fitted twice by the default search (`ms.fit`,
truth-free starts, L-BFGS-B): unbounded, as the softmax series were fitted before, and in a box: the one the
config gives the series (comparison (b): the sigmoid series' box without its floors), or, for a series the
config leaves unbounded, bias, gate and expert parameters in [-BOX, BOX] (`--box`, default 20). Per fit: the RSS in
units of sigma^2 above the better of the two, the largest |expert parameter| and |(bias, gate)| (softmax
translation pinned: the last atom's bias and gate at zero), the Voronoi loss to G* the series measures (D1
for GELU, D2r for linear), and whether the search met its stopping rule and the best fit was certified.

    .venv/bin/python benchmarks/softmax_box.py --n 800 3200 --reps 3
    .venv/bin/python benchmarks/softmax_box.py --config softmax_lse_experts --n 1000 4000 --reps 3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

import moe_sim as ms
from moe_sim.plots import to_markdown

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def largest_parameters(G: ms.MixingMeasure) -> tuple[float, float]:
    """max |expert parameter| and max |(bias, gate)| with the softmax translation pinned on the last atom: both
    blind to the translation, which the box does not fix."""
    pinned = G.translate(-G.bias[-1], -G.gate[-1])
    return float(np.max(np.abs(G.expert))), float(np.max(np.abs(np.c_[pinned.bias, pinned.gate])))


def rows(config: str, sizes, reps: int, half_width: float) -> list[dict]:
    cfg, out = ms.load_config(EXPERIMENTS / f"{config}.toml"), []
    default_box = {name: [-half_width, half_width] for name in ("bias", "gate", "expert")}
    for series in [s for s in cfg.series if s.spec.gate_name == "softmax"]:
        spec, truth = series.spec, series.truth
        box = series.options.get("bounds") or default_box
        spaces = (("unbounded", None), (f"box {max(abs(v) for v in box['expert']):g}", box))
        for n in sizes:
            for rep in range(reps):
                X, y = ms.sample(spec, truth, n, rng=rep, noise_sd=cfg.noise_sd, design=cfg.design, bounds=cfg.bounds)
                fits = {}
                for space, bounds in spaces:
                    start = time.perf_counter()
                    fit = ms.fit(spec, X, y, series.k, estimator=ms.LeastSquares(bounds=bounds), rng=rep)
                    fits[space] = (fit, time.perf_counter() - start)
                best = min(f.objective for f, _ in fits.values())
                for space, (fit, seconds) in fits.items():
                    expert, gate = largest_parameters(fit.measure)
                    out.append({"cell": series.label, "n": n, "sample": rep, "space": space,
                                "RSS - best (sigma^2)": (fit.objective - best) / cfg.noise_sd**2,
                                "max |expert|": expert, "max |bias, gate|": gate,
                                "loss to G*": ms.voronoi_loss(spec, fit.measure, truth, series.loss),
                                "search met": fit.search.met, "certified": fit.converged, "seconds": seconds})
                    print(out[-1], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sigmoid_vs_softmax_same", help="an experiment in experiments/")
    parser.add_argument("--n", type=int, nargs="+", default=[800, 3200])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--box", type=float, default=20.0, help="half-width of the box for unbounded series")
    args = parser.parse_args()
    table = pd.DataFrame(rows(args.config, args.n, args.reps, args.box))
    print(to_markdown(table))
    summary = table.groupby(["cell", "n", "space"]).agg(
        worse_by_median=("RSS - best (sigma^2)", "median"),
        expert_over_20=("max |expert|", lambda v: int(np.sum(v > 20))), loss_median=("loss to G*", "median"),
        met=("search met", "sum"), certified=("certified", "sum"), seconds_median=("seconds", "median"))
    print(to_markdown(summary.reset_index()))


if __name__ == "__main__":
    main()
