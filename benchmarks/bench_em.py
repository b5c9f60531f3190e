"""Milliseconds per EM iteration on paper a's peer data, side by side with the peer, one BLAS thread.

    .venv/bin/python benchmarks/bench_em.py [--repeats 40]
    .venv/bin/python benchmarks/bench_em.py --backends [--sizes 1000 10000 100000] [--reps 3] [--starts 8]

For every peer file at n = 1e3 and 1e4 (../shared/peer, five seeds each) and K = 2, 3: 40 repeats of a
10-iteration EM run (tolerance 0 and no polish, so every run does 10 working iterations) from a start
perturbed away from the truth, on the file's own samples; the median ms per iteration over repeats and
seeds, against the peer's wall seconds per EM iteration on the same file (`peer_fits.csv`: wall_s /
iters_total, R + C++, which includes its per-fit set-up; a fit of 4 iterations weighs that set-up most).
n = 1e5 has no peer file: it runs on a sample from the peer's model, and the peer's 130 ms per iteration
there (k = 2, THEORY.md s6) is the only peer figure at that size. The data's sufficient statistics are
built once per sample (outside the timing), as the estimator does once per fit. The peer ran on another
machine, so its ratio carries the two machines' difference; the column that compares across machines is
the floor: an iteration's time in units of one np.exp over a (k, n) array, measured in the same run.

--backends: EM with its E-steps on NumPy, on torch (CPU) and, where torch sees a GPU, on "cuda", k = 3 on
`--reps` samples of paper a's model per n, each backend against NumPy: seconds per default fit
(`EM(backend=...)`, the whole global search, median over samples), the largest relative log-likelihood
difference of the two fits and how many samples' fits differ by more than 1e-9; and
from the same `--starts` truth-free starts (half k-means, half random) through `em.solve`, the local fits
both certify and the largest relative log-likelihood difference among them. BLAS and torch on one thread,
as in a sweep task.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

import moe_sim as ms
from moe_sim.fit import EM, em
from moe_sim.fit.init import initial_measures
from moe_sim.plots import to_markdown

PEER = Path(__file__).resolve().parents[2] / "shared" / "peer"
SPEC = ms.MoESpec(gate="softmax", expert="linear", d=1, likelihood="gaussian")
TRUTH = ms.MixingMeasure(bias=[-8.0, 0.0], gate=[[25.0], [0.0]], expert=[[15.0, -20.0], [-5.0, 20.0]],
                         var=[0.09, 0.16])
PEER_MS_AT_1E5 = {2: 130.0}  # THEORY.md s6, k = 2 only


def start(k: int, rng) -> ms.MixingMeasure:
    """k atoms cycling over the true ones, every parameter moved by N(0, 1), variances times 1.5."""
    rng = np.random.default_rng(rng)
    S = TRUTH.subset(np.arange(k) % 2)
    return ms.MixingMeasure(S.bias + rng.normal(0, 1, k), S.gate + rng.normal(0, 1, (k, 1)),
                            S.expert + rng.normal(0, 1, (k, 2)), S.var * 1.5)


def ms_per_iteration(X, y, k: int, repeats: int, iterations: int = 10) -> list[float]:
    design = em._Design.of(SPEC, X, y)
    G0 = start(k, 1)
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        path = em._run(design, G0, 0.0, iterations, 1e-6, False)
        times.append((time.perf_counter() - tic) / path.n_iter * 1e3)
    return times


def exp_floor_ms(k: int, n: int, repeats: int = 50) -> float:
    """Median ms of one np.exp over a (k, n) array: the cost of one pass over the E-step's arrays."""
    a = np.random.default_rng(0).normal(size=(k, n))
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        np.exp(a)
        times.append(time.perf_counter() - tic)
    return float(np.median(times)) * 1e3


def _timed(fn):
    tic = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - tic


def _usable_backends() -> list[str]:
    """NumPy and torch on the CPU, and "cuda" where torch sees a GPU."""
    import torch

    return ["numpy", "torch"] + (["cuda"] if torch.cuda.is_available() else [])


def backends(sizes, reps: int, n_starts: int, k: int = 3) -> pd.DataFrame:
    """The --backends table (module docstring): each other backend against NumPy."""
    names = _usable_backends()
    others = names[1:]
    rows = []
    for n in sizes:
        seconds = {name: [] for name in names}
        fit_gaps, certified, start_gaps = ({name: [] for name in others}, {name: 0 for name in others},
                                           {name: [] for name in others})
        for seed in range(reps):
            X, y = ms.sample(SPEC, TRUTH, n, rng=seed, design="equispaced", bounds=(0.0, 1.0))
            plan = {"kmeans": n_starts // 2, "random": n_starts - n_starts // 2}
            starts = initial_measures(SPEC, X, y, k, plan, rng=seed + 1, method="em")
            est = EM()
            fits, local = {}, {}
            for backend in names:
                fits[backend], took = _timed(lambda: ms.fit(SPEC, X, y, k, estimator=EM(backend=backend), rng=seed))
                seconds[backend].append(took)
                local[backend] = em.solve(SPEC, X, y, k, starts, tol=est.tol, max_iter=est.max_iter,
                                          var_floor=est.var_floor, polish=est.polish, backend=backend)
            base = fits["numpy"].objective
            for name in others:
                fit_gaps[name].append(abs(base - fits[name].objective) / abs(base))
                both = [(a.objective, b.objective) for a, b in zip(local["numpy"], local[name])
                        if a.converged and b.converged]
                certified[name] += len(both)
                start_gaps[name] += [abs(a - b) / abs(a) for a, b in both]
        numpy_s = float(np.median(seconds["numpy"]))
        for name in others:
            other_s = float(np.median(seconds[name]))
            rows.append({"k": k, "n": n, "backend": name, "s/fit numpy": numpy_s, "s/fit backend": other_s,
                         "backend / numpy": other_s / numpy_s,
                         "max rel diff of the fits": f"{max(fit_gaps[name]):.1e}",
                         "fits > 1e-9 apart": f"{sum(g > 1e-9 for g in fit_gaps[name])}/{reps}",
                         "same starts certified by both": f"{certified[name]}/{reps * n_starts}",
                         "same starts max rel diff": f"{max(start_gaps[name], default=np.nan):.1e}",
                         "same starts > 1e-9 apart": sum(g > 1e-9 for g in start_gaps[name])})
    return pd.DataFrame(rows)


def main(repeats: int) -> None:
    fits = pd.read_csv(PEER / "peer_fits.csv")
    print("| k | n | moe-sim median ms/iteration | exp-floor passes/iteration | peer median ms/iteration "
          "| peer / moe-sim |\n|---|---|---|---|---|---|")
    with threadpool_limits(limits=1):
        for k in (2, 3):
            for n in (1000, 10000, 100000):
                peer = fits[(fits.n == n) & (fits.K == k)]
                if len(peer):
                    files = [pd.read_csv(PEER / f"sgame_n{n}_seed{row.seed}.csv") for row in peer.itertuples()]
                    ours = [t for data in files
                            for t in ms_per_iteration(data[["x"]].to_numpy(), data.y.to_numpy(), k, repeats)]
                    peer_ms = float(np.median(1e3 * peer.wall_s / peer.iters_total))
                else:
                    X, y = ms.sample(SPEC, TRUTH, n, rng=0, design="equispaced", bounds=(0.0, 1.0))
                    ours = ms_per_iteration(X, y, k, repeats)
                    peer_ms = PEER_MS_AT_1E5.get(k, np.nan)
                mine = float(np.median(ours))
                passes = mine / exp_floor_ms(k, n)
                print(f"| {k} | {n} | {mine:.3f} | {passes:.1f} | {peer_ms:.2f} | {peer_ms / mine:.0f} |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--backends", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--starts", type=int, default=8)
    args = parser.parse_args()
    if args.backends:
        with threadpool_limits(limits=1):
            print(to_markdown(backends(args.sizes, args.reps, args.starts)))
    else:
        main(args.repeats)
