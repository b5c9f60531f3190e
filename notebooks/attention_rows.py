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
# # Learning an attention row
#
# Row i of self-attention over N tokens x_1..x_N in R^d is sum_j g_j(x) v^T x_j, the gate g taken over the
# scores x_i^T W x_j / sqrt(d) with W = W_Q W_K^T (THEORY.md sections 1 and 5). Read as a mixture of experts,
# it has N linear experts and a partially quadratic gate on the stacked tokens, but unlike the free MoEs of
# the other notebooks its parameters are *tied*: every atom's score comes from the one matrix W and every
# expert from the one vector v. `moe_sim.attention` holds that model. This notebook
#
# 1. checks that the row equals its MoE form for every gate (softmax, sigmoid with b = 0 and b = -log N,
#    normalised sigmoid, top-K, banded),
# 2. shows what sequence doubling does to softmax and sigmoid rows,
# 3. fits a sigmoid (b = -log N) and a softmax student by least squares, each to data from a teacher of its own
#    family (the papers' comparison, THEORY.md s3), and plots their learning curves.

# %% tags=["parameters"]
N = 4  # tokens per sequence
d = 2  # token dimension
n_grid = [100, 200, 400, 800, 1600, 3200]
replicates = 8
n_starts = 3  # truth-free random starts per round of the global search
noise_sd = 0.1
seed = 0

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from moe_sim import attention as at

# %% [markdown]
# ## A row is an MoE of N atoms
#
# `moe_form` writes each head as an N-atom MoE on xbar in R^{N d}: atom j's score has the coefficients of
# xbar^T E_i^T W E_j xbar / sqrt(d) on the monomials xbar_u xbar_v, and its expert is v^T E_j xbar. The gate
# object is shared: the same `Gate` gates the row and the MoE.

# %%
gate_options = {"top_k": {"top_k": 2}, "band": {"width": 1}}
X = at.draw_sequences(at.AttentionSpec(N, d, at.attention_gate("softmax", N)), 500, seed)
for kind in at.ATTENTION_GATES:
    spec = at.AttentionSpec(N, d, at.attention_gate(kind, N, **gate_options.get(kind, {})), heads=2, rank=1)
    params = at.draw_params(spec, seed, scale=2.0)
    moe, measures = at.moe_form(spec, params)
    gap = np.max(np.abs(at.moe_output(spec, params, X) - at.row_output(spec, params, X)))
    print(f"{spec.gate.name:22s} {len(measures)} heads of {measures[0].k} atoms, score dimension "
          f"{moe.q}: max |MoE - attention| = {gap:.1e}")
    assert gap < 1e-10

# %% [markdown]
# ## Sequence doubling
#
# Concatenating each sequence with itself leaves a softmax row unchanged (every weight halves, every value
# appears twice), doubles a sigmoid row with b = 0, and multiplies a sigmoid row with b = -log N by a factor
# between 1 and 2 (Ramapuram et al.'s argument for the 1/N-type bias).

# %%
doubled_X = at.double_sequences(X)
for kind in ("softmax", "sigmoid", "sigmoid_logn"):
    spec = at.AttentionSpec(N, d, at.attention_gate(kind, N))
    doubled = at.AttentionSpec(2 * N, d, at.attention_gate(kind, 2 * N))
    params = at.draw_params(spec, seed)
    ratio = at.row_gates(doubled, params, doubled_X).sum(axis=1) / at.row_gates(spec, params, X).sum(axis=1)
    change = np.max(np.abs(at.row_output(doubled, params, doubled_X) - at.row_output(spec, params, X)))
    print(f"{kind:13s} row-sum ratio after doubling: {ratio.min():.3f} to {ratio.max():.3f}; "
          f"max |row change| = {change:.1e}")
    if kind == "softmax":
        assert change < 1e-12
    elif kind == "sigmoid":
        np.testing.assert_allclose(ratio, 2.0, rtol=1e-12)
    else:
        assert np.all((ratio > 1) & (ratio < 2))

# %% [markdown]
# ## Learning curves
#
# One head, W free (d^2 + d = 6 parameters). For each n and replicate, `fit_replicate` draws n sequences from
# the teacher and fits the student with the estimator's global search: rounds of `n_starts` truth-free random
# starts until three of them reach the best objective, each local fit certified by the estimator's test
# (||grad F|| / F <= 1e-7, or a Gauss-Newton decrement below 1e-3 sigma^2). It measures the error of W and v
# (coordinates the row identifies) and the root-mean-square function error on fresh sequences.

# %%
rows = []
for kind in ("sigmoid_logn", "softmax"):
    spec = at.AttentionSpec(N, d, at.attention_gate(kind, N))
    teacher = at.draw_params(spec, seed, scale=2.0)
    for n in n_grid:
        for replicate in range(replicates):
            rows += [{**row, "student": kind} for row in at.fit_replicate(
                spec, teacher, spec, n, replicate, seed=seed, noise_sd=noise_sd, n_starts=n_starts, n_test=1000)]
results = pd.DataFrame(rows)
print(f"{len(results)} fits, {results.certified.mean():.0%} certified, {results.local_fits.sum()} local fits, "
      f"median {results.runtime_s.median():.2f} s per fit")
assert results.certified.all()

# %% [markdown]
# The slope of log(error) on log(n), over every replicate, with its standard error. The theory bounds both
# the parameter and the function errors of an exactly specified model by n^-1/2 (up to log factors). Every
# error here falls, and its slope is within 3 standard errors of -1/2, by an interval no wider than +-0.3 (a
# stated margin, so that a flat or noisy curve cannot pass). This is comparison (a) of THEORY.md s3, each gate
# on its own teacher, so the two curves are not a race between the gates on one truth.

# %%
def slope(frame, column):
    x, y = np.log(frame.n.to_numpy(float)), np.log(frame[column].to_numpy())
    A = np.c_[np.ones_like(x), x]
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - A @ coef
    se = np.sqrt(resid @ resid / (len(y) - 2) * np.linalg.inv(A.T @ A)[1, 1])
    return coef[1], se


errors = ["W_error", "v_error", "function_error"]
table = pd.DataFrame([
    {"student": kind, "error": column, "slope": s, "se": se}
    for kind, frame in results.groupby("student") for column in errors for s, se in [slope(frame, column)]
])
print(table.to_string(index=False, float_format="{:.3f}".format))
assert np.all(table.slope + 3 * table.se < 0)
assert np.all(np.abs(table.slope + 0.5) <= 3 * table.se)
assert np.all(3 * table.se <= 0.3)

# %%
fig, axes = plt.subplots(1, 3, figsize=(11, 3.5), sharex=True)
for ax, column in zip(axes, errors):
    for kind, frame in results.groupby("student"):
        median = frame.groupby("n")[column].median()
        ax.loglog(median.index, median.to_numpy(), "o-", label={"sigmoid_logn": "sigmoid, b = -log N"}.get(kind, kind))
    reference = median.iloc[0] * (np.array(n_grid) / n_grid[0]) ** -0.5
    ax.loglog(n_grid, reference, "k:", label="n^-1/2")
    ax.set_xlabel("n (sequences)")
    ax.set_title(column.replace("_", " "))
axes[0].set_ylabel("median over replicates")
axes[0].legend()
fig.tight_layout()
