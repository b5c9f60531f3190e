"""Replicates per second for one (config, n) cell: NumPy estimators one replicate at a time against the torch
backend fitting the whole cell as one batch, on identical samples and starts.

    .venv/bin/python benchmarks/bench_torch.py [--n 1000 10000 100000] [--replicates 40] [--threads 1]
        [--numpy-replicates 40] [--repeats 3] [--device cpu] [--configs lse-tanh-k3 em-paper-a-k2]

Samples come from each replicate's own seed (SeedSequence(0, spawn_key=(config, n, replicate))), starts from
`moe_sim.fit.init.initial_measures` with the same seed; both backends get the same (X, y, starts). Only the
fits are timed. NumPy runs with BLAS limited to `--threads` (threadpoolctl), torch with
torch.set_num_threads(--threads). `--numpy-replicates` times the NumPy path on the first m replicates only
(replicates/s = m / their time), for large n. Prints one Markdown row per cell with the medians over
`--repeats` and how the objectives compare replicate by replicate.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

import moe_sim as ms
from moe_sim.fit.em import em_fit
from moe_sim.fit.init import initial_measures
from moe_sim.fit.lse import lse_fit
from moe_sim.fit.torch_backend import fit_batch

CONFIGS = {
    # Over-specified softmax / tanh regression (k = 3 > k* = 2), a near-truth and a k-means start.
    "lse-tanh-k3": dict(
        spec=ms.MoESpec(gate="softmax", expert="tanh"),
        G=ms.MixingMeasure(bias=[0.3, 0.0], gate=[[2.0], [-1.0]], expert=[[0.5, 2.0], [-0.5, -1.5]]),
        k=3, method="lse", sample=dict(noise_sd=0.1), init=["near_truth", "kmeans"],
    ),
    # Paper a's Gaussian MoE (THEORY.md s4), exactly specified, one near-truth start.
    "em-paper-a-k2": dict(
        spec=ms.MoESpec(likelihood="gaussian"),
        G=ms.MixingMeasure(bias=[-8.0, 0.0], gate=[[25.0], [0.0]], expert=[[15.0, -20.0], [-5.0, 20.0]],
                           var=[0.09, 0.16]),
        k=2, method="em", sample=dict(design="equispaced", bounds=(0.0, 1.0)), init=["near_truth"],
    ),
    # Paper a over-specified: k = 3, two near-truth starts.
    "em-paper-a-k3": dict(
        spec=ms.MoESpec(likelihood="gaussian"),
        G=ms.MixingMeasure(bias=[-8.0, 0.0], gate=[[25.0], [0.0]], expert=[[15.0, -20.0], [-5.0, 20.0]],
                           var=[0.09, 0.16]),
        k=3, method="em", sample=dict(design="equispaced", bounds=(0.0, 1.0)), init=["near_truth"] * 2,
    ),
}


def cell(name: str, n: int, R: int):
    """The cell's samples and starts, replicate by replicate."""
    cfg = CONFIGS[name]
    config_index, n_index = list(CONFIGS).index(name), int(np.log10(n))
    Xs, ys, starts = [], [], []
    for r in range(R):
        data_seed, start_seed = np.random.SeedSequence(0, spawn_key=(config_index, n_index, r)).spawn(2)
        X, y = ms.sample(cfg["spec"], cfg["G"], n, rng=data_seed, **cfg["sample"])
        rng = np.random.default_rng(start_seed)
        st = [s for init in cfg["init"] for s in initial_measures(cfg["spec"], X, y, cfg["k"], init, 1, rng,
                                                                  cfg["G"], scale=0.05)]
        Xs.append(X), ys.append(y), starts.append(st)
    return cfg, Xs, ys, starts


def run_numpy(cfg, Xs, ys, starts, m: int):
    """Seconds for the first m replicates, and their objectives."""
    fit = lse_fit if cfg["method"] == "lse" else em_fit
    t0 = time.perf_counter()
    objs = [fit(cfg["spec"], X, y, cfg["k"], st).objective for X, y, st in zip(Xs[:m], ys[:m], starts[:m])]
    return time.perf_counter() - t0, np.array(objs)


def run_torch(cfg, Xs, ys, starts, device: str, dtype: str, threads: int):
    t0 = time.perf_counter()
    res = fit_batch(cfg["spec"], Xs, ys, cfg["k"], starts, method=cfg["method"], device=device, dtype=dtype,
                    threads=threads)
    return time.perf_counter() - t0, np.array([r.objective for r in res]), res


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--replicates", type=int, default=40)
    parser.add_argument("--numpy-replicates", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args(argv)
    print(f"device={args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}), "
          f"dtype={args.dtype}, threads={args.threads}, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| config | n | R | NumPy rep/s | torch rep/s | speed-up | torch better | torch worse | "
          "median rel. diff | torch converged |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.configs:
        for n in args.n:
            cfg, Xs, ys, starts = cell(name, n, args.replicates)
            m = min(args.numpy_replicates or args.replicates, args.replicates)
            np_times, torch_times = [], []
            for _ in range(args.repeats):
                with threadpool_limits(args.threads):
                    t_np, obj_np = run_numpy(cfg, Xs, ys, starts, m)
                t_torch, obj_torch, res = run_torch(cfg, Xs, ys, starts, args.device, args.dtype, args.threads)
                np_times.append(t_np), torch_times.append(t_torch)
            np_rate = m / statistics.median(np_times)
            torch_rate = args.replicates / statistics.median(torch_times)
            sign = 1.0 if cfg["method"] == "lse" else -1.0  # lse: lower is better; em: higher
            gain = sign * (obj_np - obj_torch[:m]) / np.abs(obj_np)
            print(f"| {name} | {n} | {args.replicates} (NumPy {m}) | {np_rate:.3g} | {torch_rate:.3g} | "
                  f"{torch_rate / np_rate:.2g}x | {np.mean(gain > 1e-6):.0%} | {np.mean(gain < -1e-6):.0%} | "
                  f"{np.median(np.abs(gain)):.1e} | {np.mean([r.converged for r in res]):.0%} |", flush=True)


if __name__ == "__main__":
    main()
