"""Over-specified softmax least squares with and without a bounded parameter space (issue 11).

Comparison (b)'s softmax cells (`experiments/sigmoid_vs_softmax_same.toml`: k* = 2, k = 3, X ~ U[-1, 1],
sigma = 1e-3), each sample fitted twice by the default search (`ms.fit`, truth-free starts): unbounded, as the
softmax series were fitted, and in the box the sigmoid series use, without their weight floor (bias, gate and
expert parameters in [-20, 20]). Per fit: the RSS in units of sigma^2 above the better of the two, the largest
|expert parameter| and |(bias, gate)| (softmax translation pinned: the last atom's bias and gate at zero), the
Voronoi loss to G* (D1 for GELU, D2r for linear, as the experiment measures) and whether the search met its
stopping rule and the best fit was certified.

    .venv/bin/python benchmarks/softmax_box.py --n 800 3200 --reps 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

import moe_sim as ms
from moe_sim.plots import to_markdown

SIGMA = 1e-3
BOX = {"bias": (-20.0, 20.0), "gate": (-20.0, 20.0), "expert": (-20.0, 20.0)}
CELLS = {
    "gelu_softmax": (ms.MoESpec(gate="softmax", expert="scaled_gelu"), "D1",
                     ms.MixingMeasure(bias=[0.0, 0.0], gate=[[3.0], [0.0]], expert=[[2.0, 3.0], [-1.0, 2.0]])),
    "linear_softmax": (ms.MoESpec(gate="softmax", expert="linear"), "D2r",
                       ms.MixingMeasure(bias=[0.0, 0.0], gate=[[3.0], [0.0]], expert=[[1.0, 4.0], [-1.0, -3.0]])),
}


def largest_parameters(G: ms.MixingMeasure) -> tuple[float, float]:
    """max |expert parameter| and max |(bias, gate)| with the softmax translation pinned on the last atom: both
    blind to the translation, which the box does not fix."""
    pinned = G.translate(-G.bias[-1], -G.gate[-1])
    return float(np.max(np.abs(G.expert))), float(np.max(np.abs(np.c_[pinned.bias, pinned.gate])))


def rows(sizes, reps: int) -> list[dict]:
    out = []
    for cell, (spec, loss, truth) in CELLS.items():
        for n in sizes:
            for rep in range(reps):
                X, y = ms.sample(spec, truth, n, rng=rep, noise_sd=SIGMA, bounds=(-1.0, 1.0))
                fits = {}
                for space, bounds in (("unbounded", None), ("box 20", BOX)):
                    start = time.perf_counter()
                    fit = ms.fit(spec, X, y, 3, estimator=ms.LeastSquares(bounds=bounds), rng=rep)
                    fits[space] = (fit, time.perf_counter() - start)
                best = min(f.objective for f, _ in fits.values())
                for space, (fit, seconds) in fits.items():
                    expert, gate = largest_parameters(fit.measure)
                    out.append({"cell": cell, "n": n, "sample": rep, "space": space,
                                "RSS - best (sigma^2)": (fit.objective - best) / SIGMA**2,
                                "max |expert|": expert, "max |bias, gate|": gate,
                                "loss to G*": ms.voronoi_loss(spec, fit.measure, truth, loss),
                                "search met": fit.search.met, "certified": fit.converged, "seconds": seconds})
                    print(out[-1], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[800, 3200])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    table = pd.DataFrame(rows(args.n, args.reps))
    print(to_markdown(table))
    summary = table.groupby(["cell", "n", "space"]).agg(
        worse_by_median=("RSS - best (sigma^2)", "median"),
        expert_over_20=("max |expert|", lambda v: int(np.sum(v > 20))), loss_median=("loss to G*", "median"),
        met=("search met", "sum"), certified=("certified", "sum"), seconds_median=("seconds", "median"))
    print(to_markdown(summary.reset_index()))


if __name__ == "__main__":
    main()
