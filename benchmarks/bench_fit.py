"""Time `moe_sim.fit` against a machine-independent floor, and count fits that reach the truth's objective.

    .venv/bin/python benchmarks/bench_fit.py [--reps 5] [--seeds 50] [--em-seeds 20] [--starts]
        [--sizes 1000 10000 100000] [--quality-n 10000] [--skip-timing]

Floor: one np.exp over a k x n array, timed in the same run (interleaved with the objective evaluations), so
"x floor" ratios compare across machines.
Per iteration: a single-start fit on the full sample (no screening), its runtime over its iterations (an
L-BFGS-B iteration is about 1.1 objective-and-gradient evaluations; an EM iteration one E and one M step).
Per fit: the default multi-start `fit` (least squares: kmeans, random and near_truth starts, 8 each; EM: paper a's
protocol, 1 near-truth start for k = 2 and 5 for k = 3, noise sd 0.05 n^-0.083).
BLAS is limited to one thread, as in a sweep task.
Quality: over `--seeds` samples, the share of fits whose residual sum of squares is no larger than the
truth's on the same sample (a smaller share means local optima); over `--em-seeds` samples of paper a at
n = 1e5, how often EM from truth-free starts ends with a Voronoi loss below 0.05; with --tolerances, the
with --starts, random against k-means starts on four more models.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import moe_sim as ms
from moe_sim.fit.init import initial_measures
from moe_sim.fit import LeastSquares
from moe_sim.fit.lse import RSSObjective

TANH = ms.MoESpec(gate="sigmoid", score="linear", expert="tanh")
G_TANH = ms.MixingMeasure(bias=[1.0, -0.5], gate=[[-1.2], [-1.5]], expert=[[1.0, -1.3], [-1.7, -0.4]])
TANH_BOX, TANH_SIGMA = (-3.0, 3.0), 0.1
PAPER_A = ms.MoESpec(gate="softmax", score="linear", expert="linear", likelihood="gaussian")
G_PAPER_A = ms.MixingMeasure(bias=[-8.0, 0.0], gate=[[25.0], [0.0]], expert=[[15.0, -20.0], [-5.0, 20.0]],
                             var=[0.09, 0.16])


def median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def floor(k: int, n: int, reps: int = 50) -> float:
    """Median seconds of one np.exp over a k x n array."""
    a = np.random.default_rng(0).standard_normal((k, n))
    return median_time(lambda: np.exp(a), reps)


def lse_rows(sizes, reps: int, k: int) -> list[dict]:
    rows = []
    for n in sizes:
        fits, per_iter, evals, floors = [], [], [], []
        a = np.random.default_rng(0).standard_normal((k, n))
        for seed in range(reps):
            X, y = ms.sample(TANH, G_TANH, n, rng=seed, noise_sd=TANH_SIGMA, bounds=TANH_BOX)
            fits.append(ms.fit(TANH, X, y, k, rng=seed, G_true=G_TANH).runtime_s)
            start = initial_measures(TANH, X, y, k, "near_truth", 1, seed, G_TANH)
            one = LeastSquares().fit_starts(TANH, X, y, k, start)
            per_iter.append(one.runtime_s / max(one.n_iter, 1))
            obj = RSSObjective(TANH, X, y, k)
            theta = one.measure.to_vector()
            for _ in range(20):  # interleaved with the floor, so both see the same machine load
                evals.append(median_time(lambda: obj(theta), 1))
                floors.append(median_time(lambda: np.exp(a), 1))
        base = float(np.median(floors))
        rows.append({"model": f"sigmoid tanh, lse, k={k}", "n": n, "fit_s": np.median(fits),
                     "iter_ms": 1e3 * np.median(per_iter), "eval_ms": 1e3 * np.median(evals), "floor_ms": 1e3 * base})
    return rows


def em_rows(sizes, reps: int, k: int) -> list[dict]:
    rows = []
    n_starts = 1 if k == 2 else 5
    for n in sizes:
        fits, per_iter = [], []
        for seed in range(reps):
            X, y = ms.sample(PAPER_A, G_PAPER_A, n, rng=seed, design="equispaced", bounds=(0.0, 1.0))
            res = ms.fit(PAPER_A, X, y, k, method="em", init="near_truth", n_starts=n_starts, rng=seed,
                         G_true=G_PAPER_A, init_options={"scale": 0.05, "power": 0.083})
            fits.append(res.runtime_s)
            per_iter.append(res.runtime_s / max(sum(s.n_iter for s in res.starts), 1))
        base = floor(k, n)
        rows.append({"model": f"paper a Gaussian MoE, em, k={k}", "n": n, "fit_s": np.median(fits),
                     "iter_ms": 1e3 * np.median(per_iter), "eval_ms": np.nan, "floor_ms": 1e3 * base})
    return rows


QUALITY = (
    ("default: kmeans, random, near_truth x 8", "default", None),
    ("truth-free: kmeans, random x 8", ("kmeans", "random"), 8),
    ("truth-free: random x 16", "random", 16),
)
G_SOFTMAX_TANH = ms.MixingMeasure(bias=[0.0, 0.0], gate=[[2.0], [0.0]], expert=[[1.0, -1.3], [-1.7, -0.4]])
G_SOFTMAX_SHARP = ms.MixingMeasure(bias=[0.0, 0.0], gate=[[3.0], [0.0]], expert=[[0.5, 2.0], [-0.5, -1.0]])
START_MODELS = (  # name, spec, truth, X range, noise sd, k
    ("softmax tanh", ms.MoESpec(gate="softmax", expert="tanh"), G_SOFTMAX_TANH, (-3.0, 3.0), 0.1, (2, 3)),
    ("softmax relu", ms.MoESpec(gate="softmax", expert="relu"), G_SOFTMAX_SHARP, (-1.0, 1.0), 0.2, (2, 3)),
    ("softmax linear", ms.MoESpec(gate="softmax", expert="linear"), G_SOFTMAX_SHARP, (-1.0, 1.0), 0.2, (2, 3)),
    ("sigmoid gelu", ms.MoESpec(gate="sigmoid", expert="gelu"), G_TANH, (-3.0, 3.0), 0.1, (2, 3)),
    ("paper b, sigmoid FFN", ms.MoESpec(gate="softmax", expert="sigmoid"),
     ms.MixingMeasure(bias=[-2.0, 0.0], gate=[[4.0], [0.0]], expert=[[-6.0, 12.0], [4.0, -10.0]]), (0.0, 1.0), 2e-4,
     (3,)),
)
START_SETS = (("random x 16", {"random": 16}), ("kmeans, random x 8", {"kmeans": 8, "random": 8}))


def quality_rows(n: int, seeds: int) -> list[dict]:
    rows = []
    for k in (2, 3):
        for label, init, n_starts in QUALITY:
            ok, times = 0, []
            for seed in range(seeds):
                X, y = ms.sample(TANH, G_TANH, n, rng=1000 + seed, noise_sd=TANH_SIGMA, bounds=TANH_BOX)
                res = ms.fit(TANH, X, y, k, init=init, n_starts=n_starts, rng=seed, G_true=G_TANH)
                ok += not res.worse_than_truth
                times.append(res.runtime_s)
            rows.append({"k": k, "starts": label, "n": n, "no_worse_than_truth": f"{ok}/{seeds}",
                         "fit_s": float(np.median(times))})
    return rows


def start_rows(n: int = 10_000, samples: int = 20) -> list[dict]:
    """Truth-free starts on other models: 16 random against 8 k-means and 8 random, on the same samples (seeds
    2000..): how often each set is no worse than the truth, and how often it has the lowest RSS of the two
    (within 1e-9 relative): a fit can beat the truth and still miss a lower optimum."""
    rows = []
    for name, spec, truth, box, sd, ks in START_MODELS:
        for k in ks:
            tallies = {label: [0, 0, []] for label, _ in START_SETS}
            for seed in range(samples):
                X, y = ms.sample(spec, truth, n, rng=2000 + seed, noise_sd=sd, bounds=box)
                fits = {label: ms.fit(spec, X, y, k, init=init, rng=seed, G_true=truth) for label, init in START_SETS}
                lowest = min(res.objective for res in fits.values())
                for label, res in fits.items():
                    tallies[label][0] += not res.worse_than_truth
                    tallies[label][1] += res.objective <= lowest * (1 + 1e-9)
                    tallies[label][2].append(res.runtime_s)
            row = {"model": name, "k": k}
            for label, (no_worse, is_lowest, times) in tallies.items():
                row[f"{label}: no_worse"] = f"{no_worse}/{samples}"
                row[f"{label}: lowest"] = f"{is_lowest}/{samples}"
                row[f"{label}: fit_s"] = float(np.median(times))
            rows.append(row)
    return rows


def em_recovery_row(n: int, seeds: int) -> dict:
    """Paper a's Gaussian MoE, k = k* = 2, EM from truth-free starts (kmeans and random): how often the
    Voronoi loss is below 0.05 and the fit no worse than the truth, over `seeds` samples (seeds 0..)."""
    losses, ok, times = [], 0, []
    for seed in range(seeds):
        X, y = ms.sample(PAPER_A, G_PAPER_A, n, rng=seed, design="equispaced", bounds=(0.0, 1.0))
        res = ms.fit(PAPER_A, X, y, 2, method="em", init=("kmeans", "random"), rng=seed, G_true=G_PAPER_A)
        losses.append(ms.voronoi_loss(PAPER_A, res.measure, G_PAPER_A))
        ok += not res.worse_than_truth
        times.append(res.runtime_s)
    losses = np.array(losses)
    return {"n": n, "loss_below_0.05": f"{np.sum(losses < 0.05)}/{seeds}", "median_loss": float(np.median(losses)),
            "max_loss": float(losses.max()), "no_worse_than_truth": f"{ok}/{seeds}", "fit_s": float(np.median(times))}


def markdown(rows: list[dict]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5, help="samples per size (median over them)")
    parser.add_argument("--seeds", type=int, default=50, help="samples of the quality count (0: skip)")
    parser.add_argument("--quality-n", type=int, nargs="+", default=[10_000], help="sample sizes of the count")
    parser.add_argument("--em-seeds", type=int, default=20, help="samples of the EM recovery count (0: skip)")
    parser.add_argument("--starts", action="store_true", help="also truth-free starts on four other models")
    parser.add_argument("--skip-timing", action="store_true", help="only the quality counts")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    args = parser.parse_args()
    with threadpool_limits(limits=1, user_api="blas"):
        if not args.skip_timing:
            timing = lse_rows(args.sizes, args.reps, 2) + lse_rows(args.sizes, args.reps, 3)
            if (Path(ms.__file__).parent / "fit" / "em.py").exists():
                timing += em_rows(args.sizes, args.reps, 2) + em_rows(args.sizes, args.reps, 3)
            for row in timing:
                row["iter_x_floor"] = row["iter_ms"] / row["floor_ms"]
                row["eval_x_floor"] = row["eval_ms"] / row["floor_ms"]
            print(markdown(timing), flush=True)
        if args.seeds:
            print()
            print(markdown([row for n in args.quality_n for row in quality_rows(n, args.seeds)]))
        if args.starts:
            print()
            print(markdown(start_rows()))
        if args.em_seeds:
            print()
            print(markdown([em_recovery_row(100_000, args.em_seeds)]))


if __name__ == "__main__":
    main()
