"""How often the default fit reaches the global optimum, against a brute-force search on the same sample, and
what it costs; and the default EM on paper a's peer data, side by side with the peer's log-likelihood.

    .venv/bin/python benchmarks/bench_search.py [--reps 5] [--sizes 1000] [--brute 64] [--models ...]
                                                [--max-rounds 3] [--max-p-miss 1]
    .venv/bin/python benchmarks/bench_search.py --peer [--peer-sizes 1000 10000] [--var-floor 0.01]
    .venv/bin/python benchmarks/bench_search.py --cost [--cost-sizes 1000 10000 100000]

Global-fit rate: per model and n, over `--reps` samples, the share of default fits (`ms.fit` with the
truth-free default plan and its three-hit search, or the search that --max-rounds and --max-p-miss ask for)
whose objective is within 0.01 sigma^2 of RSS (least squares, sigma^2 the truth's noise variance) or 0.01 nats
(EM) of the best objective reached by either the default fit or a brute-force search of `--brute` k-means and
random starts (half each, every start fitted in full, one round). Also: the share whose search met its stopping
rule (certified), how many certified fits still missed the best (the failures a sweep cannot see), the median
p_miss the search reported, and the median seconds.
Cost: seconds per default fit (k = 3) at each n, medians over --reps samples.
BLAS is limited to one thread, as in a sweep task. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

import moe_sim as ms
from moe_sim.plots import to_markdown

PEER = Path(__file__).resolve().parents[2] / "shared" / "peer"
PAPER_A = ms.MoESpec(gate="softmax", expert="linear", likelihood="gaussian")
G_PAPER_A = ms.MixingMeasure(bias=[-8.0, 0.0], gate=[[25.0], [0.0]], expert=[[15.0, -20.0], [-5.0, 20.0]],
                             var=[0.09, 0.16])


@dataclass(frozen=True)
class Model:
    """A benchmark model: family, truth, fitted k, the sampling design and the estimator's options."""

    name: str
    spec: ms.MoESpec
    truth: ms.MixingMeasure
    k: int
    noise_sd: float
    design: str
    bounds: tuple
    options: dict

    @property
    def method(self) -> str:
        return "em" if self.spec.likelihood == "gaussian" else "lse"

    def sample(self, n: int, seed: int):
        return ms.sample(self.spec, self.truth, n, rng=seed, noise_sd=self.noise_sd, design=self.design,
                         bounds=self.bounds)


_SIGMOID_BOX = {"bias": (-2.944, 20.0), "gate": (-20.0, 20.0), "expert": (-20.0, 20.0)}
MODELS = {
    "paper_a_k3": Model("paper_a_k3", PAPER_A, G_PAPER_A, 3, 0.0, "equispaced", (0.0, 1.0), {"var_floor": 0.01}),
    "paper_a_k4": Model("paper_a_k4", PAPER_A, G_PAPER_A, 4, 0.0, "equispaced", (0.0, 1.0), {"var_floor": 0.01}),
    "paper_b_k3": Model("paper_b_k3", ms.MoESpec(gate="softmax", expert="sigmoid"),
                        ms.MixingMeasure([-2.0, 0.0], [[4.0], [0.0]], [[-6.0, 12.0], [4.0, -10.0]]), 3, 2e-4,
                        "uniform", (0.0, 1.0), {}),
    "sigmoid_tanh_k3": Model("sigmoid_tanh_k3", ms.MoESpec(gate="sigmoid", expert="tanh"),
                             ms.MixingMeasure([1.0, -0.5], [[-1.2], [-1.5]], [[1.0, -1.3], [-1.7, -0.4]]), 3, 0.1,
                             "uniform", (-3.0, 3.0), {"bounds": _SIGMOID_BOX}),
    "softmax_tanh_k3": Model("softmax_tanh_k3", ms.MoESpec(gate="softmax", expert="tanh"),
                             ms.MixingMeasure([0.0, 0.0], [[-1.2], [0.0]], [[1.0, -1.3], [-1.7, -0.4]]), 3, 0.1,
                             "uniform", (-3.0, 3.0), {}),
    "quadratic_softmax_tanh_k3": Model(
        "quadratic_softmax_tanh_k3", ms.MoESpec(gate="softmax", score="partial_quadratic", expert="tanh", d=2),
        ms.MixingMeasure([0.0, 0.0], [[2.0, 1.0, -1.5], [0.0, 0.0, 0.0]], [[0.5, 2.0, -1.0], [-0.5, -1.5, 2.0]]),
        3, 0.001, "uniform", (-1.0, 1.0), {}),
}


def _unit(model: Model) -> float:
    """The objective difference that counts as one unit of the 0.01 hit tolerance."""
    return model.noise_sd**2 if model.method == "lse" else 1.0


def global_rate_rows(models, sizes, reps: int, brute: int, search: dict) -> list[dict]:
    rows = []
    for name in models:
        model = MODELS[name]
        sense = 1.0 if model.method == "lse" else -1.0
        for n in sizes:
            hits, certified, seconds, misses, certified_misses, p_miss = 0, 0, [], [], 0, []
            for rep in range(reps):
                X, y = model.sample(n, 1000 * rep + n)
                tic = time.perf_counter()
                default = ms.fit(model.spec, X, y, model.k, method=model.method, rng=rep, search=search,
                                 **model.options)
                seconds.append(time.perf_counter() - tic)
                in_full = {"screen": None} if model.method == "lse" else {}
                reference = ms.fit(model.spec, X, y, model.k, method=model.method, rng=10_000 + rep,
                                   init={"kmeans": brute // 2, "random": brute - brute // 2},
                                   search={"hits": 1, "max_rounds": 1}, **in_full, **model.options)
                best = min(sense * default.objective, sense * reference.objective)
                miss = (sense * default.objective - best) / _unit(model)
                misses.append(miss)
                hits += miss <= 0.01
                certified += default.certified
                certified_misses += bool(default.certified and miss > 0.01)
                p_miss.append(default.search.p_miss)
            rows.append({"model": name, "n": n, "reached best": f"{hits}/{reps}",
                         "certified": f"{certified}/{reps}", "certified but missed": certified_misses,
                         "median p_miss": f"{np.median(p_miss):.2g}", "worst miss": f"{max(misses):.3g}",
                         "median s per default fit": f"{np.median(seconds):.1f}"})
            print(rows[-1], flush=True)
    return rows


def peer_rows(sizes, var_floor: float | None) -> list[dict]:
    fits = pd.read_csv(PEER / "peer_fits.csv")
    rows = []
    for row in fits[fits.n.isin(sizes)].itertuples():
        data = pd.read_csv(PEER / f"sgame_n{row.n}_seed{row.seed}.csv")
        tic = time.perf_counter()
        floor = {} if var_floor is None else {"var_floor": var_floor}
        res = ms.fit(PAPER_A, data.x.to_numpy(), data.y.to_numpy(), row.K, method="em", rng=row.seed, **floor)
        rows.append({"n": row.n, "seed": row.seed, "K": row.K, "peer loglik": f"{row.loglik:.3f}",
                     "moe-sim loglik": f"{res.objective:.3f}", "difference": f"{res.objective - row.loglik:+.3f}",
                     "smallest variance": f"{res.measure.var.min():.2g}", "certified": res.certified,
                     "seconds": f"{time.perf_counter() - tic:.1f}", "peer seconds": f"{row.wall_s:.2f}"})
        print(rows[-1], flush=True)
    return rows


def cost_rows(sizes, reps: int) -> list[dict]:
    rows = []
    for name in ("paper_a_k3", "sigmoid_tanh_k3"):
        model = MODELS[name]
        for n in sizes:
            seconds, starts = [], []
            for rep in range(reps):
                X, y = model.sample(n, 7 + rep)
                tic = time.perf_counter()
                res = ms.fit(model.spec, X, y, model.k, method=model.method, rng=rep, **model.options)
                seconds.append(time.perf_counter() - tic)
                starts.append(res.search.n_starts)
            rows.append({"model": name, "n": n, "median s per fit": f"{np.median(seconds):.1f}",
                         "local fits in full (median)": int(np.median(starts))})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--brute", type=int, default=64)
    parser.add_argument("--max-rounds", type=int, default=3, help="the default fit's Search.max_rounds")
    parser.add_argument("--max-p-miss", type=float, default=1.0, help="the default fit's Search.max_p_miss")
    parser.add_argument("--peer", action="store_true", help="the peer table instead of the global-fit rates")
    parser.add_argument("--peer-sizes", nargs="+", type=int, default=[1000, 10000])
    parser.add_argument("--var-floor", type=float, help="EM's variance floor in the peer table (default: EM's)")
    parser.add_argument("--cost", action="store_true", help="the cost table instead of the global-fit rates")
    parser.add_argument("--cost-sizes", nargs="+", type=int, default=[1000, 10000, 100000])
    args = parser.parse_args()
    with threadpool_limits(limits=1):
        if args.peer:
            rows = peer_rows(args.peer_sizes, args.var_floor)
        elif args.cost:
            rows = cost_rows(args.cost_sizes, args.reps)
        else:
            search = {"max_rounds": args.max_rounds, "max_p_miss": args.max_p_miss}
            rows = global_rate_rows(args.models, args.sizes, args.reps, args.brute, search)
    print(to_markdown(pd.DataFrame(rows)), end="")


if __name__ == "__main__":
    main()
