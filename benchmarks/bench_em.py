"""Milliseconds per EM iteration on paper a's set-up (THEORY.md s4), one BLAS thread.

    .venv/bin/python benchmarks/bench_em.py

Each row: 40 repeats of a 10-iteration EM run (tolerance 0, so every run does 10 iterations) from a start
perturbed away from the truth; the median and the minimum of ms per iteration. The data's sufficient
statistics are built once per sample (outside the timing), as em_fit does once per fit. Paper a's peer
(R with C++) costs about 1.3 / 8 / 130 ms per iteration at n = 1e3 / 1e4 / 1e5, k = 2 (THEORY.md s6).
"""

import time

import numpy as np
from threadpoolctl import threadpool_limits

import moe_sim as ms
from moe_sim.fit import em

SPEC = ms.MoESpec(gate="softmax", expert="linear", d=1, likelihood="gaussian")
TRUTH = ms.MixingMeasure(bias=[-8.0, 0.0], gate=[[25.0], [0.0]], expert=[[15.0, -20.0], [-5.0, 20.0]],
                         var=[0.09, 0.16])


def start(k: int, rng) -> ms.MixingMeasure:
    """k atoms cycling over the true ones, every parameter moved by N(0, 1), variances times 1.5."""
    rng = np.random.default_rng(rng)
    S = TRUTH.subset(np.arange(k) % 2)
    return ms.MixingMeasure(S.bias + rng.normal(0, 1, k), S.gate + rng.normal(0, 1, (k, 1)),
                            S.expert + rng.normal(0, 1, (k, 2)), S.var * 1.5)


def main(repeats: int = 40, iterations: int = 10) -> None:
    print("| k | n | median ms/iteration | min ms/iteration |\n|---|---|---|---|")
    with threadpool_limits(limits=1):
        for k in (2, 3):
            for n in (1000, 10000, 100000):
                X, y = ms.sample(SPEC, TRUTH, n, rng=0, design="equispaced", bounds=(0.0, 1.0))
                design = em._Design.of(SPEC, X, y, em._CHUNK)
                G0 = start(k, 1)
                per_iter = []
                for _ in range(repeats):
                    tic = time.perf_counter()
                    path = em._run(SPEC, design, G0, 0.0, iterations, 1e-6)
                    per_iter.append((time.perf_counter() - tic) / path.n_iter * 1e3)
                print(f"| {k} | {n} | {np.median(per_iter):.3f} | {np.min(per_iter):.3f} |")


if __name__ == "__main__":
    main()
