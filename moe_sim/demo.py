"""A one-screen tour: sample from a sigmoid-gated MoE, perturb the truth, print Voronoi losses and rates."""

from __future__ import annotations

import numpy as np

import moe_sim as ms


def main() -> None:
    spec = ms.MoESpec(gate="sigmoid", score="linear", expert="tanh", d=1)
    G_true = ms.MixingMeasure(bias=[1.0, -0.5], gate=[[-1.2], [-1.5]], expert=[[1.0, -1.3], [-1.7, -0.4]])
    X, y = ms.sample(spec, G_true, n=1000, rng=0, noise_sd=0.1, bounds=(-3, 3))
    print(f"sampled n={len(y)} points from {spec}; y in [{y.min():.3f}, {y.max():.3f}]")
    rng = np.random.default_rng(1)
    for scale in (1e-1, 1e-2, 1e-3):
        G = ms.MixingMeasure(
            bias=G_true.bias + scale * rng.standard_normal(2),
            gate=G_true.gate + scale * rng.standard_normal((2, 1)),
            expert=G_true.expert + scale * rng.standard_normal((2, 2)),
        )
        print(f"perturbation {scale:g}: Voronoi loss D1 = {ms.voronoi_loss(spec, G, G_true, kind='D1'):.3e}")
    print(ms.predicted_rates(spec, G_true, 2)[["cell", "block", "rate", "tag"]].to_string(index=False))


if __name__ == "__main__":
    main()
