# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A new expert family, without editing the package
#
# Every expert in moe-sim is h(x; eta) = activation(eta . features(x)). A new family is an `ExpertFamily`
# with those pieces and the activation's derivative (given u and h = activation(u), so that families
# like tanh can reuse h); `register_expert` makes it available by name to
# `MoESpec` and to sweep configs. Here: SiLU (swish) experts, h = u sigmoid(u) with u = a x + b.

# %% tags=["parameters"]
n_grid = [1000, 2000, 4000, 8000, 16000, 32000]
replicates = 10
noise_sd = 0.05
seed = 7
slope_tolerance = 0.25  # |slope - (-1/2)| allowed for the loss and the regression function's L2 error

# %%
import tempfile

import numpy as np
from scipy.special import expit

import moe_sim as ms
from moe_sim.config import parse_config
from moe_sim.families import affine_features
from moe_sim.rates import rate_table
from moe_sim.store import load_results
from moe_sim.sweep import run_sweep


def silu(u):
    return u * expit(u)


def silu_derivative(u, h):
    """d/du of u sigmoid(u), given u and h = silu(u)."""
    s = expit(u)
    return s + h * (1 - s)


ms.register_expert(ms.ExpertFamily(
    name="silu",
    activation=silu,
    derivative=silu_derivative,
    features=lambda X, degree: affine_features(X),  # [1; x]: parameters [b, a_1..a_d]
    n_params=lambda d, degree: d + 1,
    identifiable="strong",  # not positively homogeneous, unlike ReLU
))

# %% [markdown]
# ## Check the gradient before trusting any fit
#
# Least squares runs on the analytic gradient, so a wrong derivative gives wrong fits silently. Compare
# `regression_gradient` with central differences.

# %%
spec = ms.MoESpec(gate="softmax", expert="silu")
G_true = ms.MixingMeasure(bias=[0.0, 0.0], gate=[[2.0], [0.0]], expert=[[1.0, -1.3], [-1.7, -0.4]])
X = ms.draw_design("uniform", 50, 1, rng=0, bounds=(-3, 3))
analytic = ms.regression_gradient(spec, G_true, X)["expert"]
numeric = np.zeros_like(analytic)
eps = 1e-6
for i in range(G_true.k):
    for j in range(spec.p):
        step = np.zeros_like(G_true.expert)
        step[i, j] = eps
        plus = ms.MixingMeasure(G_true.bias, G_true.gate, G_true.expert + step)
        minus = ms.MixingMeasure(G_true.bias, G_true.gate, G_true.expert - step)
        numeric[i, j] = (ms.regression_function(spec, plus, X) - ms.regression_function(spec, minus, X)) / (2 * eps)
np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)
print("expert gradient matches central differences")

# %% [markdown]
# ## Is this truth resolvable?
#
# SiLU is close to ReLU for large |u|, and ReLU experts trade scale within a cell: some truths are nearly
# unidentified. The asymptotic standard errors of an exact fit say so before any sweep: the same experts
# under sigmoid gates with these slopes have standard errors tens of times larger.

# %%
for gate, G in (("softmax", G_true),
                ("sigmoid", ms.MixingMeasure([1.0, -0.5], [[-1.2], [-1.5]], G_true.expert))):
    sd = ms.asymptotic_sd(ms.MoESpec(gate=gate, expert="silu"), G, n=2000, noise_sd=0.1, bounds=(-3, 3))
    print(f"{gate}: asymptotic sds at n = 2000 sum to {sd.sd.sum():.2f}")

# %% [markdown]
# ## The same sweep as any built-in family
#
# The config names the new family like any other. (`n_jobs > 1` sends the spec, with its functions, to
# worker processes by cloudpickle; the registry itself stays in this process.)

# %%
experiment = parse_config({
    "name": "silu_experts",
    "description": "softmax gate, SiLU experts, exact fit",
    "model": {"gate": "softmax", "expert": "silu"},
    "truth": G_true.to_dict(),
    "k": 2,
    "noise_sd": noise_sd,
    "bounds": [-3.0, 3.0],
    "n": n_grid,
    "replicates": replicates,
    "chunk": replicates,
    "seed": seed,
    "estimator": {"method": "lse", "init": "default", "n_starts": 2},
})
out = tempfile.mkdtemp(prefix="moe_sim_silu_")
run_sweep(experiment, out, progress=False)
rates = rate_table(load_results(out), experiment, quantities=["loss", "regression_l2"])
rates[["series", "quantity", "slope", "ci_low", "ci_high", "predicted_rate", "tag", "verdict"]]

# %%
for quantity in ("loss", "regression_l2"):
    rate = rates[rates.quantity == quantity].iloc[0]
    print(f"{quantity}: slope {rate.slope:.3f} [{rate.ci_low:.3f}, {rate.ci_high:.3f}]")
    assert abs(rate.slope + 0.5) < slope_tolerance

# %%
import matplotlib.pyplot as plt

from moe_sim.rates import summarize

summary = summarize(load_results(out).query("quantity in ['loss', 'regression_l2']"), "median")
fig, ax = plt.subplots(figsize=(5, 3.5))
for quantity, sub in summary.groupby("quantity"):
    ax.errorbar(sub.n, sub.center, yerr=[sub.center - sub.ci_low, sub.ci_high - sub.center], fmt="o-",
                capsize=2, label=quantity)
    n = sub.n.to_numpy(float)
    ax.plot(n, sub.center.iloc[0] * (n / n[0]) ** -0.5, "k:", lw=1)
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("n")
ax.set_ylabel("median over replicates")
ax.set_title("SiLU experts, softmax gate, k = k* = 2 (dotted: n^-1/2)", fontsize=9)
ax.legend(fontsize=8)
fig.tight_layout()
