"""The batched Levenberg-Marquardt solver on each backend, against itself and against L-BFGS-B, same starts.

    .venv/bin/python benchmarks/bench_lm.py [--sizes 1000 10000 100000] [--reps 1] [--starts 8]
    .venv/bin/python benchmarks/bench_lm.py --gpu-batch [--replicates 40 --starts 32 --n 100000]
                                            [--cpu-replicates 1 --cpu-starts 4]

Per model and n, on `--reps` samples, the same `--starts` truth-free starts (half k-means, half random) go to
`lm.solve` on NumPy, on torch (CPU) and to `lse.solve` (scipy L-BFGS-B, the default solver): seconds (median
over samples), local fits certified, the largest relative objective difference between NumPy and torch
among starts both certified, and the best certified objective of each solver relative to the best of all.
BLAS and torch are limited to one thread, as in a sweep task.

--gpu-batch: `lm.solve_batch` on `--replicates` samples x `--starts` starts at once on "cuda", against "numpy"
on the first `--cpu-replicates` x `--cpu-starts` of the same problems (`gpu_batch`): seconds, start-iterations,
the largest relative objective difference (both certified) and the speed-up per start-iteration; says so when
there is no GPU.
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

import moe_sim as ms
from moe_sim.fit import lm, lse
from moe_sim.fit.init import initial_measures
from moe_sim.plots import to_markdown

TANH = ms.MoESpec(gate="sigmoid", expert="tanh")
G_TANH = ms.MixingMeasure(bias=[1.0, -0.5], gate=[[-1.2], [-1.5]], expert=[[1.0, -1.3], [-1.7, -0.4]])
GELU = ms.MoESpec(gate="softmax", expert="scaled_gelu")
G_GELU = ms.MixingMeasure(bias=[0.0, 0.5], gate=[[1.0], [-1.5]], expert=[[1.0, 1.3], [-1.7, 2.0]])
MODELS = {"sigmoid_tanh_k3": (TANH, G_TANH, 3), "softmax_scaled_gelu_k2": (GELU, G_GELU, 2)}
TOL, MAX_ITER = 1e-7, 500


def _problem(spec, G, k, n, seed, n_starts):
    """A sample of the truth G and n_starts truth-free k-atom starts on it (half k-means, half random)."""
    X, y = ms.sample(spec, G, n, rng=seed, noise_sd=0.1, bounds=(-3.0, 3.0))
    plan = {"kmeans": n_starts // 2, "random": n_starts - n_starts // 2}
    return X, y, initial_measures(spec, X, y, k, plan, rng=seed + 1, method="lse")


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def backends(sizes, reps, n_starts) -> pd.DataFrame:
    rows = []
    for name, (spec, G, k) in MODELS.items():
        for n in sizes:
            times = {"numpy": [], "torch": [], "lbfgsb": []}
            certified = {key: 0 for key in times}
            gaps, best_gap = [], {key: [] for key in times}
            for seed in range(reps):
                X, y, starts = _problem(spec, G, k, n, seed, n_starts)
                runs = {
                    "numpy": lambda: lm.solve(spec, X, y, k, starts, tol=TOL, max_iter=MAX_ITER),
                    "torch": lambda: lm.solve(spec, X, y, k, starts, tol=TOL, max_iter=MAX_ITER, backend="torch"),
                    "lbfgsb": lambda: lse.solve(spec, X, y, k, starts, bounds=None, tol=TOL, max_iter=5000, maxcor=20),
                }
                out = {}
                for key, run in runs.items():
                    out[key], seconds = _timed(run)
                    times[key].append(seconds)
                    certified[key] += sum(r.converged for r in out[key])
                both = [(a.objective, b.objective) for a, b in zip(out["numpy"], out["torch"])
                        if a.converged and b.converged]
                gaps += [abs(a - b) / a for a, b in both]
                best = {key: min((r.objective for r in recs if r.converged), default=np.inf)
                        for key, recs in out.items()}
                overall = min(best.values())
                for key in times:
                    best_gap[key].append((best[key] - overall) / (overall / n))  # in sigma^2 units
            total = reps * n_starts
            rows.append({
                "model": name, "n": n,
                **{f"s {key}": round(float(np.median(v)), 2) for key, v in times.items()},
                **{f"certified {key}": f"{certified[key]}/{total}" for key in times},
                "max rel diff numpy-torch": f"{max(gaps):.1e}" if gaps else "none certified by both",
                **{f"best {key} - best (sigma^2)": f"{max(best_gap[key]):.3g}" for key in ("numpy", "lbfgsb")},
            })
    return pd.DataFrame(rows)


def _batch_line(label, results, seconds) -> str:
    """One line of the GPU report: problems, start-iterations, certified, seconds and ms per start-iteration."""
    fits = [r for recs in results for r in recs]
    iters = sum(r.n_iter for r in fits)
    return (f"{label}: {len(fits)} starts, {iters} start-iterations, {sum(r.converged for r in fits)} certified, "
            f"{seconds:.1f} s, {1e3 * seconds / max(iters, 1):.2f} ms per start-iteration")


def gpu_batch(replicates: int, n_starts: int, n: int, cpu_replicates: int, cpu_starts: int) -> None:
    """Prints, line by line as each stage ends: NumPy on the first `cpu_replicates` x `cpu_starts` problems (one
    core, as in a sweep task; the whole batch would take hours there), "cuda" on the same subset, their largest
    relative objective difference (starts both certify), then "cuda" on the whole batch and its speed-up per
    start-iteration over NumPy."""
    import torch

    if not torch.cuda.is_available():
        print("No CUDA device here: the GPU batch was not measured.")
        return
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, numpy {np.__version__}; sigmoid tanh k = 3, "
          f"n = {n}, tol {TOL:.0e}, at most {MAX_ITER} iterations", flush=True)
    spec, G, k = TANH, G_TANH, 3
    Xs, ys, starts = zip(*(_problem(spec, G, k, n, seed, n_starts) for seed in range(replicates)))
    lm.solve_batch(spec, Xs[:1], ys[:1], k, [starts[0][:1]], max_iter=2, backend="cuda")  # CUDA start-up
    subset = (Xs[:cpu_replicates], ys[:cpu_replicates], [s[:cpu_starts] for s in starts[:cpu_replicates]])
    out = {}
    for backend, (xs, y_, st) in (("numpy", subset), ("cuda", subset), ("cuda batch", (Xs, ys, starts))):
        if backend != "numpy":
            torch.cuda.synchronize()
        out[backend] = _timed(lambda: lm.solve_batch(spec, xs, y_, k, st, tol=TOL, max_iter=MAX_ITER,
                                                     backend=backend.split()[0]))
        print(_batch_line(f"{backend} ({len(xs)} x {len(st[0])})", *out[backend]), flush=True)
        if backend == "cuda":
            gaps = [abs(a.objective - b.objective) / a.objective for ra, rb in zip(out["numpy"][0], out["cuda"][0])
                    for a, b in zip(ra, rb) if a.converged and b.converged]
            print(f"same subset, certified by both: {len(gaps)}, largest relative objective difference "
                  f"{max(gaps, default=np.nan):.1e}", flush=True)
    per_iter = {key: seconds / sum(r.n_iter for recs in res for r in recs) for key, (res, seconds) in out.items()}
    print(f"speed-up per start-iteration: cuda batch over numpy {per_iter['numpy'] / per_iter['cuda batch']:.0f}x, "
          f"cuda subset over numpy {per_iter['numpy'] / per_iter['cuda']:.1f}x", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--starts", type=int, default=8)
    parser.add_argument("--gpu-batch", action="store_true")
    parser.add_argument("--replicates", type=int, default=40)
    parser.add_argument("--n", type=int, default=100000)
    parser.add_argument("--cpu-replicates", type=int, default=1)
    parser.add_argument("--cpu-starts", type=int, default=4)
    args = parser.parse_args()
    if args.gpu_batch:
        gpu_batch(args.replicates, args.starts, args.n, args.cpu_replicates, args.cpu_starts)
    else:
        print(to_markdown(backends(args.sizes, args.reps, args.starts)))


if __name__ == "__main__":
    main()
