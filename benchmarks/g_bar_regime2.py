"""Is regime 2's target G_bar identifiable at the n a sweep reaches? (comparison (a) of sigmoid_vs_softmax_papers)

For each sigmoid truth of `experiments/sigmoid_vs_softmax_papers.toml` plus tanh(a x + b) experts (the family
with an inner bias, which is not closed under sums), G_bar with k = 3 is computed by `closest_measure` in the
space without null atoms for several floors (expert_min, weight_min) and design seeds. Printed per setting:
the excess risk mean((f_Gbar - f_G*)^2), the n at which it equals the noise variance over n (sigma^2 /
excess: below that n the data cannot tell G_bar from G*, nor from any other measure as close), and the D3
distance from the first setting's G_bar. A target that the data can locate has an excess risk well above
sigma^2 / n_max and settings that agree.

    .venv/bin/python benchmarks/g_bar_regime2.py
"""

from __future__ import annotations

import time
import warnings

import moe_sim as ms

CONFIG = "experiments/sigmoid_vs_softmax_papers.toml"
SETTINGS = [(0.1, 0.05, 0), (0.1, 0.05, 1), (0.1, 0.1, 0), (0.3, 0.05, 0)]  # (expert_min, weight_min, rng)


def main() -> None:
    exp = ms.load_config(CONFIG)
    sigma2, n_max = exp.noise_sd ** 2, max(exp.n_grid)
    truths = {s.label: (s.spec, s.truth) for s in exp.series if s.spec.gate_name == "sigmoid"}
    gelu_truth = truths["gelu_sigmoid"][1]
    tanh_truth = ms.MixingMeasure(gelu_truth.bias, gelu_truth.gate, [[0.5, 2.0], [-0.5, -1.5]])
    truths["tanh_sigmoid (a x + b)"] = (ms.MoESpec(gate="sigmoid", expert="tanh"), tanh_truth)
    print(f"{CONFIG}: sigma^2 = {sigma2:g}, largest n = {n_max}; G_bar on a noise-free uniform design, n = 5000, "
          f"3 starts per strategy")
    print("| truth | expert_min | weight_min | design seed | excess risk | sigma^2 / excess | D3 to the first "
          "setting's G_bar | issues | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, (spec, truth) in truths.items():
        first = None
        for expert_min, weight_min, rng in SETTINGS:
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # degeneracy is printed in the issues column
                g_bar = ms.closest_measure(spec, truth, 3, design=exp.design, bounds=exp.bounds, n=5000, rng=rng,
                                           expert_min=expert_min, weight_min=weight_min)
            seconds = time.perf_counter() - start
            first = g_bar.measure if first is None else first
            d3 = ms.voronoi_loss(spec, g_bar.measure, first, "D3")
            print(f"| {label} | {expert_min} | {weight_min} | {rng} | {g_bar.excess_risk:.2g} | "
                  f"{sigma2 / max(g_bar.excess_risk, 1e-300):.2g} | {d3:.3g} | {'; '.join(g_bar.issues) or '-'} | "
                  f"{seconds:.1f} |")


if __name__ == "__main__":
    main()
