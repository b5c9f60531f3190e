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
# # Self-attention as a quadratic-gate mixture of experts
#
# Yan et al. (2025) read row i of self-attention as a mixture of experts (THEORY.md section 1): with the
# N tokens x_1..x_N stacked into xbar in R^{N d}, the gate of expert j has the *partially quadratic* score
# xbar^T M_ij xbar with M_ij = E_i^T W_Q W_K^T E_j / sqrt(d) (E_j picks token j out of xbar), and expert j is
# the linear value map v^T x_j = v^T E_j xbar. Softmax attention normalises the row; sigmoid attention
# applies sigmoid(score + b) elementwise with b = -log N (Ramapuram et al.).
#
# This notebook builds that MoE with `moe_sim`, checks it equals attention computed directly, and shows
# what the bias b = -log N does to the row sums.

# %% tags=["parameters"]
N = 6  # tokens
d_tok = 2  # token dimension
rank = 2  # rank of W = W_Q W_K^T (at most d_tok)
row = 0  # which attention row to read as an MoE
n_inputs = 200  # random sequences to compare on
seed = 0

# %%
import matplotlib.pyplot as plt
import numpy as np

from moe_sim import attention as at

# %% [markdown]
# `moe_sim.attention` holds the row: `AttentionSpec` (N tokens in R^d, the gate, the row, heads, the rank of
# W), `row_output` (attention computed directly, x_i^T W x_j / sqrt(d) scores through the gate) and
# `moe_form` (the N-atom MoE above, as a `MoESpec` with a partially quadratic score in dimension N d and one
# `MixingMeasure` per head). The scale is 1/sqrt(d) with d the token dimension, and W = W_Q W_K^T of rank
# `rank`.

# %%
rng = np.random.default_rng(seed)
for kind in ("softmax", "sigmoid_logn"):
    spec = at.AttentionSpec(N, d_tok, at.attention_gate(kind, N, row), row=row, rank=rank)
    params = at.draw_params(spec, rng, scale=2.0)
    moe, (G,) = at.moe_form(spec, params)
    xbar = rng.normal(size=(n_inputs, N * d_tok))
    X = xbar.reshape(n_inputs, N, d_tok)
    gap = np.max(np.abs(at.moe_output(spec, params, X) - at.row_output(spec, params, X)))
    print(f"{spec.gate.name:18s} {G.k} atoms, score={moe.score!r} in d={moe.d}: max |attention - MoE| = {gap:.2e}")
    assert gap < 1e-10

# %% [markdown]
# ## The bias b = -log N keeps sigmoid rows near one
#
# With b = 0 every sigmoid gate starts near 1/2, so a row sums to about N/2 and grows with the sequence;
# with b = -log N each gate is about 1/(N + 1) and the row sum stays near N/(N + 1), close to softmax's 1.
# Heads drawn with small scores (`draw_params` with scale 0.1, 50 heads of 20 sequences per length) mimic
# attention at initialisation.

# %%
lengths = np.array([4, 16, 64, 256, 1024])
sums = {"b = 0": [], "b = -log N": []}
for n_tok in lengths:
    for label, kind in (("b = 0", "sigmoid"), ("b = -log N", "sigmoid_logn")):
        spec = at.AttentionSpec(int(n_tok), d_tok, at.attention_gate(kind, int(n_tok)), heads=50)
        heads = at.draw_params(spec, seed, scale=0.1)
        gates = at.row_gates(spec, heads, at.draw_sequences(spec, 20, seed))  # (heads, N, sequences)
        sums[label].append(gates.sum(axis=1).mean())

fig, ax = plt.subplots(figsize=(5, 3.5))
for label, values in sums.items():
    ax.loglog(lengths, values, "o-", label=label)
ax.axhline(1.0, color="grey", ls=":", label="softmax (exactly 1)")
ax.set_xlabel("sequence length N")
ax.set_ylabel("mean row sum of sigmoid attention")
ax.legend()
fig.tight_layout()

np.testing.assert_allclose(sums["b = 0"], lengths / 2, rtol=0.02)
np.testing.assert_allclose(sums["b = -log N"], lengths / (lengths + 1), rtol=0.02)
