"""Time one least-squares objective-and-gradient evaluation at n = 1e5 (k = 3) for several chunk sizes.

    .venv/bin/python benchmarks/bench_chunks.py

Prints the median milliseconds per evaluation and its ratio to one np.exp over a 3 x n array, timed
interleaved in the same run; moe_sim.model.CHUNK is set from it.
"""

import time

import numpy as np
from threadpoolctl import threadpool_limits

import moe_sim as ms
from moe_sim.fit.lse import RSSObjective
from moe_sim.model import Features

SPEC = ms.MoESpec(gate="sigmoid", expert="tanh")
G = ms.MixingMeasure(bias=[1.0, -0.5, 0.2], gate=[[-1.2], [-1.5], [0.3]],
                     expert=[[1.0, -1.3], [-1.7, -0.4], [0.1, 0.2]])


def main(n: int = 100_000, repeats: int = 40) -> None:
    X, y = ms.sample(SPEC, G, n, rng=0, bounds=(-3, 3))
    theta = G.to_vector()
    z = np.random.default_rng(0).normal(size=(G.k, n))
    obj = RSSObjective(SPEC, X, y, G.k)
    print("| chunk | eval_ms | eval_x_floor |\n|---|---|---|")
    for chunk in (1024, 2048, 4096, 8192, 16384, 32768, n):
        obj.parts = [(part, y[s]) for s, part in Features.of(SPEC, X).chunks(chunk)]
        evals, floors = [], []
        with threadpool_limits(limits=1):
            for _ in range(repeats):
                tic = time.perf_counter()
                obj(theta)
                evals.append(time.perf_counter() - tic)
                tic = time.perf_counter()
                np.exp(z)
                floors.append(time.perf_counter() - tic)
        print(f"| {chunk} | {1e3 * np.median(evals):.2f} | {np.median(evals) / np.median(floors):.1f} |")


if __name__ == "__main__":
    main()
