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
# xbar^T M_ij xbar with M_ij = E_i^T W_Q W_K^T E_j / sqrt(d_k) (E_j picks token j out of xbar), and expert j is
# the linear value map v^T x_j = v^T E_j xbar. Softmax attention normalises the row; sigmoid attention
# applies sigmoid(score + b) elementwise with b = -log N (Ramapuram et al.).
#
# This notebook builds that MoE with `moe_sim`, checks it equals attention computed directly, and shows
# what the bias b = -log N does to the row sums.

# %% tags=["parameters"]
N = 6  # tokens
d_tok = 2  # token dimension
d_k = 3  # query/key dimension
row = 0  # which attention row to read as an MoE
n_inputs = 200  # random sequences to compare on
seed = 0

# %%
import matplotlib.pyplot as plt
import numpy as np

import moe_sim as ms

rng = np.random.default_rng(seed)
W_Q, W_K = rng.normal(size=(d_tok, d_k)), rng.normal(size=(d_tok, d_k))
v = rng.normal(size=d_tok)  # a scalar value map, so each expert is a scalar linear function of xbar
D = N * d_tok


def selector(j):
    """E_j: the (d_tok, N d_tok) matrix with x_j = E_j xbar."""
    E = np.zeros((d_tok, D))
    E[:, j * d_tok:(j + 1) * d_tok] = np.eye(d_tok)
    return E


def monomial_coefficients(M):
    """Coefficients of xbar_u xbar_v (u <= v) of the quadratic form xbar^T M xbar, in moe_sim's order."""
    iu, ju = np.triu_indices(M.shape[0])
    return np.where(iu == ju, M[iu, ju], M[iu, ju] + M[ju, iu])


def attention_moe(gate, bias):
    """The row-`row` MoE: N atoms with partially quadratic scores and linear experts."""
    spec = ms.MoESpec(gate=gate, score="partial_quadratic", expert="linear", d=D)
    scores = [selector(row).T @ W_Q @ W_K.T @ selector(j) / np.sqrt(d_k) for j in range(N)]
    G = ms.MixingMeasure(
        bias=np.full(N, bias),
        gate=np.stack([monomial_coefficients(M) for M in scores]),
        expert=np.stack([np.r_[0.0, selector(j).T @ v] for j in range(N)]),
    )
    return spec, G


# %% [markdown]
# Attention computed directly, one sequence per row of `xbar`:

# %%
def attention_row(xbar, gate, bias):
    tokens = xbar.reshape(len(xbar), N, d_tok)
    logits = np.einsum("sa,ak,sjb,bk->sj", tokens[:, row], W_Q, tokens, W_K) / np.sqrt(d_k)
    if gate == "softmax":
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
    else:
        weights = 1 / (1 + np.exp(-(logits + bias)))
    return np.einsum("sj,sj->s", weights, tokens @ v)


xbar = rng.normal(size=(n_inputs, D))
for gate, bias in (("softmax", 0.0), ("sigmoid", -np.log(N))):
    spec, G = attention_moe(gate, bias)
    gap = np.max(np.abs(ms.regression_function(spec, G, xbar) - attention_row(xbar, gate, bias)))
    print(f"{gate:8s} attention row vs its MoE form: max |difference| = {gap:.2e}")
    assert gap < 1e-10

# %% [markdown]
# ## The bias b = -log N keeps sigmoid rows near one
#
# With b = 0 every sigmoid gate starts near 1/2, so a row sums to about N/2 and grows with the sequence;
# with b = -log N each gate is about 1/(N + 1) and the row sum stays near N/(N + 1), close to softmax's 1.
# Small random scores mimic attention at initialisation.

# %%
lengths = np.array([4, 16, 64, 256, 1024])
sums = {"b = 0": [], "b = -log N": []}
for n_tok in lengths:
    logits = 0.1 * rng.normal(size=(100, n_tok))
    sums["b = 0"].append((1 / (1 + np.exp(-logits))).sum(axis=1).mean())
    sums["b = -log N"].append((1 / (1 + np.exp(-(logits - np.log(n_tok))))).sum(axis=1).mean())

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
