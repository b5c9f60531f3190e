"""One least-squares evaluation (`RSSObjective`) across n, and the pieces its layout was chosen by.

    .venv/bin/python benchmarks/bench_eval.py [--repeats 7]

Sigmoid gate, tanh experts, d = 1, BLAS limited to one thread. Prints three tables:
- sweep: microseconds per 1000 samples of one evaluation, k = 2 and 3, n from 4e3 to 1e5 (medians of
  `--repeats` timings of 30 evaluations). Run it at an older commit (PYTHONPATH=that checkout) to compare.
- ops: one 16384-sample chunk, k = 2: the stacked product over the basis [1; x] as an outer product against
  BLAS matmul, and the gradient's contraction as one matrix-vector product per basis row against one gemm.
- setup: building an `RSSObjective` at n = 1e5, and a threadpoolctl `ThreadpoolController`.
"""

from __future__ import annotations

import argparse
import timeit

import numpy as np
from threadpoolctl import ThreadpoolController, threadpool_limits

import moe_sim as ms
from moe_sim.fit.lse import RSSObjective

SPEC = ms.MoESpec(gate="sigmoid", expert="tanh")
SIZES = (4000, 8000, 10000, 16000, 20000, 33000, 50000, 100000)


def median_us(fn, number: int, repeats: int) -> float:
    return 1e6 * float(np.median(timeit.repeat(fn, number=number, repeat=repeats))) / number


def sweep(repeats: int) -> list[str]:
    lines = ["| k | " + " | ".join(f"n={n}" for n in SIZES) + " |", "|---|" + "---|" * len(SIZES)]
    for k in (2, 3):
        G = ms.MixingMeasure(bias=np.zeros(k), gate=np.ones((k, 1)), expert=np.ones((k, 2)))
        theta = np.random.default_rng(0).normal(size=4 * k) * 0.5
        cells = []
        for n in SIZES:
            X, y = ms.sample(SPEC, G, n, rng=0, noise_sd=0.1, bounds=(-3.0, 3.0))
            obj = RSSObjective(SPEC, X, y, k)
            cells.append(f"{median_us(lambda: obj(theta), 30, repeats) / n * 1000:.1f}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


def ops(repeats: int) -> list[str]:
    k, c = 2, 16384
    rng = np.random.default_rng(0)
    basis = np.vstack([np.ones(c), rng.normal(size=c)])
    W, D = rng.normal(size=(2 * k, 2)), rng.normal(size=(2 * k, c))
    out = np.empty((2 * k, c))

    def outer():
        np.multiply(W[:, 1:], basis[1], out=out)
        out.__iadd__(W[:, :1])

    rows = [
        ("W @ basis, outer product and add", outer),
        ("W @ basis, BLAS matmul", lambda: np.matmul(W, basis, out=out)),
        ("D @ basis.T, one gemv per basis row", lambda: [D @ row for row in basis]),
        ("D @ basis.T, one gemm", lambda: D @ basis.T),
        ("floor: np.exp over k x chunk", lambda: np.exp(D[:k])),
    ]
    return ["| operation (k = 2, 16384 samples) | us |", "|---|---|"] + [
        f"| {name} | {median_us(fn, 200, repeats):.1f} |" for name, fn in rows
    ]


def setup(repeats: int) -> list[str]:
    X, y = ms.sample(SPEC, ms.MixingMeasure(bias=[0.0, 0.0], gate=[[1.0], [-1.0]], expert=[[0.0, 1.0], [0.0, -1.0]]),
                     100_000, rng=0, noise_sd=0.1, bounds=(-3.0, 3.0))
    rows = [
        ("RSSObjective(n = 1e5, k = 2)", lambda: RSSObjective(SPEC, X, y, 2)),
        ("ThreadpoolController()", ThreadpoolController),
    ]
    return ["| setup | ms |", "|---|---|"] + [
        f"| {name} | {median_us(fn, 5, repeats) / 1e3:.2f} |" for name, fn in rows
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with threadpool_limits(limits=1, user_api="blas"):
        for table in (sweep(args.repeats), ops(args.repeats), setup(args.repeats)):
            print("\n".join(table), end="\n\n", flush=True)


if __name__ == "__main__":
    main()
