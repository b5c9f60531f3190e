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
# # Quickstart: define, sample, fit, measure
#
# A mixture of experts is a family (`MoESpec`: gate, score, expert, input dimension) and a mixing measure
# (`MixingMeasure`: the k atoms' gate biases, gate scores and expert parameters). This notebook samples
# from a sigmoid-gated and a softmax-gated model with tanh experts, fits each by least squares, and reads
# the fit through its Voronoi cells and loss.

# %% tags=["parameters"]
n = 2000
noise_sd = 0.1
seed = 0

# %%
import matplotlib.pyplot as plt
import numpy as np

import moe_sim as ms

box = (-3.0, 3.0)  # inputs uniform on [-3, 3]
experts = [[1.0, -1.3], [-1.7, -0.4]]  # [b, a]: h(x) = tanh(a x + b)
models = {
    "sigmoid": (
        ms.MoESpec(gate="sigmoid", score="linear", expert="tanh", d=1),
        ms.MixingMeasure(bias=[1.0, -0.5], gate=[[-1.2], [-1.5]], expert=experts),
    ),
    # softmax is invariant to translating every (bias, gate): the last atom is pinned to zero
    "softmax": (
        ms.MoESpec(gate="softmax", score="linear", expert="tanh", d=1),
        ms.MixingMeasure(bias=[0.0, 0.0], gate=[[2.0], [0.0]], expert=experts),
    ),
}

# %% [markdown]
# ## Is the truth resolvable at this n?
#
# Rates say how errors shrink; constants say where they start. `asymptotic_sd` gives the standard errors
# of an exactly specified least-squares fit, sigma sqrt(diag((J^T J)^-1)). Check a truth before sweeping
# it: a truth whose f is nearly matched by distant parameters has standard errors of order one at every n
# a sweep can afford.

# %%
for name, (spec, G_true) in models.items():
    sd = ms.asymptotic_sd(spec, G_true, n=n, noise_sd=noise_sd, bounds=box)
    print(f"{name}: asymptotic sd of the {len(sd)} free parameters sum to {sd.sd.sum():.3f}")

# %% [markdown]
# ## Sample and fit with the true number of atoms
#
# `ms.fit` runs several truth-free starts (and near-truth ones when it is given `G_true`), keeps the best
# objective, and records the truth's own objective on the same sample: a fit worse than the truth is a
# local optimum, flagged by `worse_than_truth`.

# %%
fits = {}
fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
for ax, (name, (spec, G_true)) in zip(axes, models.items()):
    X, y = ms.sample(spec, G_true, n=n, rng=seed, noise_sd=noise_sd, bounds=box)
    result = ms.fit(spec, X, y, k=2, rng=seed, G_true=G_true)
    fits[name] = result
    loss = ms.voronoi_loss(spec, result.measure, G_true)
    print(f"{name}: converged={result.converged}, RSS={result.objective:.3f} "
          f"(truth {result.truth_objective:.3f}), Voronoi loss ({ms.loss_kind(spec, G_true, 2)}) = {loss:.4f}")
    assert not result.worse_than_truth
    # the loss is a sum of parameter errors: a few asymptotic standard errors at most
    assert loss < 3 * ms.asymptotic_sd(spec, G_true, n=n, noise_sd=noise_sd, bounds=box).sd.sum()
    grid = np.linspace(*box, 200)[:, None]
    ax.plot(X[:, 0], y, ".", ms=2, alpha=0.3, label="sample")
    ax.plot(grid, ms.regression_function(spec, G_true, grid), "k-", label="truth")
    ax.plot(grid, ms.regression_function(spec, result.measure, grid), "r--", label="fit")
    ax.set_title(f"{name} gate, k = 2")
    ax.set_xlabel("x")
axes[0].set_ylabel("y")
axes[0].legend()
fig.tight_layout()

# %% [markdown]
# ## Over-specify: three atoms for two
#
# With k = 3 one true atom receives two fitted atoms. The Voronoi cells say which; `parameter_errors` gives
# per-cell, per-block errors (the cell maximum and the weight-averaged error).

# %%
spec, G_true = models["softmax"]
X, y = ms.sample(spec, G_true, n=n, rng=seed + 1, noise_sd=noise_sd, bounds=box)
over = ms.fit(spec, X, y, k=3, rng=seed, G_true=G_true)
cells = ms.voronoi_cells(spec, over.measure, G_true)
print("cells:", [c.tolist() for c in cells])
assert sorted(len(c) for c in cells) == [1, 2]
errors = ms.parameter_errors(spec, over.measure, G_true)
errors
