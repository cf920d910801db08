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
# # 06 The Transformer: positions, normalisation and the full model
#
# Chapter 05 built self-attention. Attention alone is not yet a model you can train deep: it
# does not know the order of its inputs, its outputs drift in scale from layer to layer, and it
# only mixes information *between* positions without transforming it *at* each position. The
# Transformer {cite}`vaswani2017attention` wraps attention in four more ingredients that fix
# exactly these problems: **position information**, **residual connections**, **layer
# normalisation** and a **position-wise feed-forward network**. This chapter writes each of
# them, measures why they matter, counts what they cost, and finally trains the full
# encoder-decoder model on chapter 04's date task.
#
# **Learning objectives.** After this chapter you can
#
# 1. explain why attention needs position information, write sinusoidal encodings and rotary
#    position embeddings (RoPE), and show numerically that RoPE scores depend only on the
#    distance between two tokens;
# 2. write LayerNorm and RMSNorm that match `torch.nn.LayerNorm` and `torch.nn.RMSNorm`;
# 3. explain residual connections and the difference between post-norm and pre-norm blocks,
#    and measure its effect on gradients and on training at a high learning rate;
# 4. write the SwiGLU feed-forward network of LLaMA-style models;
# 5. count the parameters of a Transformer layer and of BERT by hand;
# 6. train an encoder-decoder Transformer and compare it with an RNN seq2seq with attention.
#
# **How to use this notebook.** Cells marked *Exercise* are graded: replace
# `raise NotImplementedError()` with your code, then run the test cell below it. The visible
# tests tell you what was expected and what came back; hidden tests run at grading time.
# Demonstrations call the course library `llmcourse`, so they work before you solve anything.

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import llmcourse
from llmcourse import kernels
from llmcourse.checks import check_close, check_equal, check_shape
from llmcourse.display import glue
from llmcourse.models.bert import BertConfig, BertModel
from llmcourse.models.transformer import DecoderLayer, EncoderLayer, Transformer, TransformerConfig
from llmcourse.nn import (
    FeedForward,
    LayerNorm,
    LearnedPositions,
    MultiHeadAttention,
    RMSNorm,
    sinusoidal_encoding,
)

# The models here are small: one thread avoids the cost of splitting each small matrix product
# across cores, which dominates on a busy CPU.
torch.set_num_threads(1)
torch.manual_seed(0)
print("llmcourse", llmcourse.__version__, "| torch", torch.__version__)

# %% [markdown]
# ## 1. The architecture at a glance
#
# The original Transformer is an encoder-decoder model. Both halves are stacks of $N$
# identical layers; each *sub-layer* (attention or feed-forward) is wrapped in a residual
# connection followed by a LayerNorm, the step the paper calls **Add & Norm**:
#
# ```text
#          ENCODER layer (x N)                         DECODER layer (x N)
#  source ids -> embedding * sqrt(d) + PE        target prefix -> embedding * sqrt(d) + PE
#        |                                               |
#        +--> multi-head self-attention                  +--> masked multi-head self-attention
#        +--  Add & Norm                                 +--  Add & Norm                   (1)
#        +--> feed-forward (each position alone)         |
#        +--  Add & Norm                                 |
#        |                                               |
#        +------ encoder output ("memory") ------------->+--> cross-attention (queries from
#                                                        |    the decoder; keys and values
#                                                        |    from the encoder output)
#                                                        +--  Add & Norm                   (2)
#                                                        +--> feed-forward
#                                                        +--  Add & Norm                   (3)
#                                                        |
#                                                  linear + softmax -> next target token
# ```
#
# The output of the *last* encoder layer feeds the cross-attention of *every* decoder layer.
# An encoder layer has two sub-layers and so two Add & Norm steps; a **decoder layer has
# three** (masked self-attention, cross-attention, feed-forward). The two famous descendants
# each keep one half: BERT (chapter 08) is the encoder stack alone, and GPT (chapter 07) is a
# decoder stack *without* the cross-attention sub-layer, since there is no encoder to attend
# to; a GPT block has two sub-layers, like an encoder layer with a causal mask.
#
# Every self-attention sub-layer compares all pairs of positions, so for a sequence of $n$
# tokens it costs $O(n^2)$ time and memory (chapter 05 measured it). A Transformer has a fixed
# context window set at training time; it does not handle "much longer sequences" for free.
#
# ### Attention does not see order
#
# Self-attention treats its input as a *set*: permute the tokens and the outputs are permuted
# the same way, nothing else changes (the operation is *permutation-equivariant*). Without
# extra information "dog bites man" and "man bites dog" would produce the same vectors, only
# reordered. The check below uses the library's multi-head attention:

# %%
attn = MultiHeadAttention(d_model=16, n_heads=2)
tokens = torch.randn(1, 5, 16)  # (B, T, C)
perm = torch.tensor([3, 0, 4, 1, 2])
with torch.no_grad():
    out_then_perm = attn(tokens)[:, perm]
    perm_then_out = attn(tokens[:, perm])
print(
    "attention(permuted x) == permuted attention(x):",
    torch.allclose(out_then_perm, perm_then_out, atol=1e-6),
)


# %% [markdown]
# So position must be injected explicitly. There are two families: **add** a position vector
# to each token embedding (sinusoidal or learned encodings), or **rotate** queries and keys by
# an angle that grows with the position (RoPE).
#
# ## 2. Sinusoidal position encodings
#
# The original Transformer adds a fixed vector $\mathrm{PE}(p) \in \mathbb{R}^{d}$ to the
# embedding of the token at position $p$. The dimensions come in **pairs**: pair $i$
# ($i = 0, \dots, d/2 - 1$) holds a sine and a cosine of the same angle,
#
# $$
# \mathrm{PE}(p)_{2i} = \sin(p\,\omega_i), \qquad \mathrm{PE}(p)_{2i+1} = \cos(p\,\omega_i),
# \qquad \omega_i = \text{base}^{-2i/d}, \ \text{base} = 10000.
# $$
#
# Note that $i$ counts *pairs*, not single dimensions: dimensions $2i$ and $2i+1$ share the
# frequency $\omega_i$. The first pair turns fast (one radian per position); the last turns
# almost $10000$ times slower, so together the pairs act like the hands of a clock with many
# speeds, and every position gets a distinct pattern.
#
# ### Exercise 1 (worked numbers): sinusoidal encodings
#
# Write `sinusoidal_positions(num_positions, dim, base=10000.0)` returning the float32 table of
# shape `(num_positions, dim)` for positions $0, 1, \dots$ (compute the angles in float64,
# then convert). Work one row by hand first: with $d = 4$ the frequencies are
# $\omega_0 = 1$ and $\omega_1 = 10000^{-2/4} = 0.01$, so position 1 is
# $[\sin 1, \cos 1, \sin 0.01, \cos 0.01] = [0.8415, 0.5403, 0.0100, 0.99995]$.

# %% nbgrader={"grade": false, "grade_id": "sinusoidal_positions", "locked": false, "schema_version": 3, "solution": true, "task": false}
def sinusoidal_positions(num_positions: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Sinusoidal encodings (num_positions, dim): sin/cos of p * base^(-2i/dim) in pair i."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "sinusoidal_positions_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
pe_small = sinusoidal_positions(3, 4)
check_shape(pe_small, (3, 4), "sinusoidal_positions(3, 4)")
check_close(
    pe_small[0],
    [0.0, 1.0, 0.0, 1.0],
    "position 0 (sin 0 = 0 and cos 0 = 1 in every pair)",
    hints={
        "all sines first, then all cosines (concatenated instead of interleaved)": [0, 0, 1, 1],
        "cosine on the even and sine on the odd dimensions": [1, 0, 1, 0],
    },
)
check_close(
    pe_small[1],
    [0.8415, 0.5403, 0.0100, 0.99995],
    "position 1 with dim=4",
    atol=5e-5,
    rtol=0,
    hints={
        "i counts single dimensions (exponent k/dim) instead of pairs (2i/dim)": [
            math.sin(1),
            math.cos(0.1),
            math.sin(0.01),
            math.cos(0.001),
        ],
        "the exponent uses the dimension index k in 2k/dim; i must count pairs": [
            math.sin(1),
            math.cos(0.01),
            math.sin(1e-4),
            math.cos(1e-6),
        ],
        "all sines first, then all cosines (concatenated instead of interleaved)": [
            math.sin(1),
            math.sin(0.01),
            math.cos(1),
            math.cos(0.01),
        ],
        "cosine on the even and sine on the odd dimensions": [
            math.cos(1),
            math.sin(1),
            math.cos(0.01),
            math.sin(0.01),
        ],
    },
)

# %% [markdown]
# The heatmap shows the table for 128 positions and $d = 64$ (from the library's
# `sinusoidal_encoding`, which your function now matches). On the left, the fast pairs
# (first columns) flicker and the slow pairs barely move. On the right, the dot product
# $\mathrm{PE}(p)\cdot\mathrm{PE}(q) = \sum_i \cos\bigl((p-q)\,\omega_i\bigr)$: it is the same
# along every diagonal, i.e. it depends only on the offset $p - q$, and it is largest at
# $p = q$.

# %% tags=["demo"] mystnb={"image": {"alt": "Left: heatmap of sinusoidal position encodings, positions 0 to 127 on the vertical axis and 64 dimensions on the horizontal axis; the first columns oscillate quickly, the last columns are almost constant. Right: heatmap of the dot products between the encodings of every pair of positions, constant along each diagonal and highest on the main diagonal."}}
table = sinusoidal_encoding(torch.arange(128), 64)  # (128, 64)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
im = ax1.imshow(table, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
ax1.set(xlabel="dimension (pairs 2i, 2i+1)", ylabel="position p", title="PE(p), d = 64")
fig.colorbar(im, ax=ax1)
im = ax2.imshow(table @ table.T, cmap="viridis")
ax2.set(xlabel="position q", ylabel="position p", title="PE(p) . PE(q)")
fig.colorbar(im, ax=ax2)
plt.tight_layout()
plt.show()


# %% [markdown]
# ### A shift by $k$ is a fixed rotation
#
# Why sines *and* cosines? Because of the angle-addition formulas. In pair $i$, with
# $a = p\,\omega_i$ and $b = k\,\omega_i$,
#
# $$
# \begin{pmatrix} \sin(a + b) \\ \cos(a + b) \end{pmatrix} =
# \begin{pmatrix} \cos b & \sin b \\ -\sin b & \cos b \end{pmatrix}
# \begin{pmatrix} \sin a \\ \cos a \end{pmatrix}.
# $$
#
# So $\mathrm{PE}(p + k) = M_k\,\mathrm{PE}(p)$, where $M_k$ is block-diagonal with one
# $2 \times 2$ rotation per pair and depends on the offset $k$ only, not on $p$. A linear layer
# can therefore express "look $k$ positions back" the same way at every position. Numerically,
# for $k = 7$ and every position up to 200:

# %%
def shift_matrix(k: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Block-diagonal (dim, dim) rotation M_k with M_k @ PE(p) = PE(p + k) for every p."""
    freqs = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,)
    blocks = [
        torch.tensor(
            [[math.cos(k * w), math.sin(k * w)], [-math.sin(k * w), math.cos(k * w)]],
            dtype=torch.float64,
        )
        for w in freqs.tolist()
    ]
    return torch.block_diag(*blocks)  # (dim, dim)


pe_table = sinusoidal_encoding(torch.arange(207), 16, dtype=torch.float64)  # (207, 16)
m7 = shift_matrix(7, 16)
shift_error = (pe_table[:200] @ m7.T - pe_table[7:]).abs().max().item()
orthogonality_error = (m7 @ m7.T - torch.eye(16, dtype=torch.float64)).abs().max().item()
glue("shift_error", f"{shift_error:.1e}")
print(f"max |M_7 PE(p) - PE(p + 7)| over p = 0..199: {shift_error:.1e}")
print(f"M_7 is a rotation: max |M_7 M_7^T - I| = {orthogonality_error:.1e}")

# %% [markdown]
# The largest difference is {glue:text}`shift_error`, i.e. rounding error: the identity holds
# exactly. Two cautions, though. First, being *expressible* by a rotation does not mean the
# model *uses* it: the encoding is added to the token embedding, and the attention scores mix
# content and position terms. Second, although the formula gives a vector for any position,
# **sinusoidal encodings do not extrapolate well**: a model trained on sequences of length 512
# has never seen the combinations of phases beyond it, and its quality drops quickly on longer
# inputs {cite}`press2022alibi`. Position schemes that are relative by construction (RoPE
# below, ALiBi) behave better, and even they need extra tricks to stretch far beyond the
# training length.
#
# ## 3. Learned position embeddings
#
# The simplest alternative, used by GPT-2 and BERT, is a trainable table with one vector per
# position, `LearnedPositions(max_len, dim)`, initialised at random and learned like token
# embeddings. It is flexible, but it has nothing at all to say about positions it never
# trained: the table simply has no row for them.

# %%
learned = LearnedPositions(max_len=16, dim=8)
print(
    "vectors for positions 0..3:",
    tuple(learned(torch.arange(4)).shape),
    "| trainable:",
    learned.weight.requires_grad,
)
try:
    learned(torch.arange(20))
except IndexError as err:
    print("IndexError:", err)


# %% [markdown]
# ## 4. Rotary position embeddings (RoPE)
#
# RoPE {cite}`su2021roformer` (used by LLaMA and most recent open models) adds nothing to the
# embeddings. Instead, inside every attention layer, it **rotates** each query and each key by
# an angle proportional to its position, just before the dot product. Split a head vector
# $x \in \mathbb{R}^D$ into two halves $x^{(1)} = x_{0:D/2}$ and $x^{(2)} = x_{D/2:D}$ and pair
# coordinate $i$ of the first half with coordinate $i$ of the second (the *rotate-half* layout
# of Hugging Face's LLaMA and of `llmcourse.kernels.apply_rope`). At position $p$, pair $i$ is
# rotated by $\theta = p\,\omega_i$ with $\omega_i = \text{base}^{-2i/D}$:
#
# $$
# \begin{aligned}
# y^{(1)}_i &= x^{(1)}_i \cos\theta - x^{(2)}_i \sin\theta, \\
# y^{(2)}_i &= x^{(2)}_i \cos\theta + x^{(1)}_i \sin\theta .
# \end{aligned}
# $$
#
# Why it works: a rotation $R_{\theta}$ satisfies $R_{\alpha}^\top R_{\beta} = R_{\beta - \alpha}$.
# A query at position $m$ and a key at position $n$ therefore score
#
# $$ (R_{m\omega} q)^\top (R_{n\omega} k) = q^\top R_{(n - m)\omega}\, k , $$
#
# a function of the content $q, k$ and of the **offset** $n - m$ only. Relative position
# comes out of the dot product for free, in every layer, and the values $v$ are left alone.
# (The original RoFormer paper pairs neighbouring coordinates $(x_{2i}, x_{2i+1})$ instead;
# the two layouts are the same idea with the coordinates permuted, but weights trained with
# one do not work with the other.)
#
# ### Exercise 2: apply RoPE
#
# Write `apply_rotary(x, positions, base=10000.0)` for queries or keys `x` of shape
# `(B, H, T, D)` and integer `positions` of shape `(T,)`, in the rotate-half layout above.
# Compute the angles in float64 and cast `cos`/`sin` to `x.dtype`. Worked example: $D = 4$,
# $x = [1, 2, 3, 4]$ at position 1. The pairs are $(1, 3)$ with $\theta = 1$ and $(2, 4)$ with
# $\theta = 0.01$, giving $[-1.9841, 1.9599, 2.4624, 4.0198]$; at position 0 nothing changes.

# %% nbgrader={"grade": false, "grade_id": "apply_rotary", "locked": false, "schema_version": 3, "solution": true, "task": false}
def apply_rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate x (B, H, T, D) by its positions (T,), pairing x[..., i] with x[..., i + D/2]."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "apply_rotary_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def _rope_interleaved(
    x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0
) -> torch.Tensor:
    """RoFormer's layout, pairs (x[2i], x[2i+1]): a different convention from the one asked."""
    cos, sin = kernels.rope_cos_sin(positions, x.shape[-1], base, dtype=x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1).flatten(-2)


# (B, H, T, D) = (1, 1, 2, 4): the same vector at positions 0 and 1
x_rope = torch.tensor([1.0, 2.0, 3.0, 4.0]).expand(1, 1, 2, 4)
pos_rope = torch.arange(2)
cos_, sin_ = kernels.rope_cos_sin(pos_rope, 4)
got_rope = apply_rotary(x_rope, pos_rope)
check_shape(got_rope, (1, 1, 2, 4), "apply_rotary output for x of shape (1, 1, 2, 4)")
check_close(got_rope[0, 0, 0], [1.0, 2.0, 3.0, 4.0], "position 0 (no rotation)")
check_close(
    got_rope[0, 0, 1],
    [-1.9841, 1.9599, 2.4624, 4.0198],
    "x = [1, 2, 3, 4] at position 1",
    atol=1e-4,
    hints={
        "paired neighbours (x[2i], x[2i+1]) instead of x[i] with x[i + D/2]": _rope_interleaved(
            x_rope, pos_rope
        )[0, 0, 1],
        "rotated the wrong way (sin with the opposite sign)": kernels.apply_rope(
            x_rope, cos_, -sin_
        )[0, 0, 1],
    },
)
check_close(
    got_rope, kernels.apply_rope(x_rope, cos_, sin_), "against llmcourse.kernels.apply_rope"
)

# %% [markdown]
# Now the relative-position property, measured with the library's kernels. Fix a random query
# $q$ and key $k$ ($D = 64$), put the query at position $m$ and the key at $n = m + \Delta$, and
# plot the score $q_m \cdot k_n$ against the offset $\Delta$ for three very different $m$:

# %% tags=["demo"] mystnb={"image": {"alt": "Attention score of a fixed random query and key after RoPE, plotted against the offset between key and query positions from -64 to 64, for query positions 0, 300 and 5000; the three curves lie exactly on top of each other."}}
head_dim = 64
gen = torch.Generator().manual_seed(1)
q_vec, k_vec = torch.randn(2, 1, 1, 1, head_dim, generator=gen, dtype=torch.float64)
offsets = torch.arange(-64, 65)


def rope_scores(m: int) -> torch.Tensor:
    """q rotated to position m, k rotated to positions m + offsets: scores (len(offsets),)."""
    cos_q, sin_q = kernels.rope_cos_sin(torch.tensor([m]), head_dim, dtype=torch.float64)
    cos_k, sin_k = kernels.rope_cos_sin(m + offsets, head_dim, dtype=torch.float64)
    q_rot = kernels.apply_rope(q_vec, cos_q, sin_q)  # (1, 1, 1, D)
    k_all = k_vec.expand(1, 1, len(offsets), head_dim)  # the same key at every position
    k_rot = kernels.apply_rope(k_all, cos_k, sin_k)  # (1, 1, 129, D)
    return (q_rot * k_rot).sum(-1).flatten()


curves = {m: rope_scores(m) for m in (0, 300, 5000)}
rope_spread = max((curves[m] - curves[0]).abs().max().item() for m in curves)
glue("rope_spread", f"{rope_spread:.1e}")
fig, ax = plt.subplots(figsize=(7, 3))
for (m, scores), style in zip(curves.items(), ["-", "--", ":"], strict=True):
    ax.plot(offsets, scores, style, lw=2, label=f"query at m = {m}")
ax.set(xlabel="offset n - m", ylabel="q_m . k_n", title="RoPE: the score depends only on n - m")
ax.legend()
plt.show()
print(f"largest difference between the curves: {rope_spread:.1e}")


# %% [markdown]
# The three curves coincide (largest difference {glue:text}`rope_spread`): a query at
# position 5000 relates to a key 10 places away exactly as a query at position 0 does.
#
# ## 5. Layer normalisation
#
# Deep stacks need the scale of the activations under control. **LayerNorm**
# {cite}`ba2016layernorm` normalises *each token's vector on its own*, over its $C$ features
# (not over the batch, unlike BatchNorm, so it works for any batch size and sequence length):
#
# $$
# \mu = \frac{1}{C}\sum_{j} x_j, \qquad \sigma^2 = \frac{1}{C}\sum_{j}(x_j - \mu)^2, \qquad
# y_j = \gamma_j\,\frac{x_j - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta_j .
# $$
#
# The variance is the **biased** one (divide by $C$, not $C - 1$), as in `torch.nn.LayerNorm`.
# $\gamma$ (`weight`, initialised to 1) and $\beta$ (`bias`, initialised to 0) let the model
# undo the normalisation where that helps; $\epsilon$ (default $10^{-5}$) avoids dividing by
# zero.
#
# ### Exercise 3 (worked numbers): LayerNorm
#
# Write `layer_norm(x, weight, bias, eps=1e-5)` for `x` of shape `(..., C)` and `weight`,
# `bias` of shape `(C,)`. By hand for $x = [1, 2, 3, 4]$: $\mu = 2.5$,
# $\sigma^2 = (2.25 + 0.25 + 0.25 + 2.25)/4 = 1.25$, so $y = (x - 2.5)/\sqrt{1.25} =
# [-1.3416, -0.4472, 0.4472, 1.3416]$ (with $\gamma = 1$, $\beta = 0$).

# %% nbgrader={"grade": false, "grade_id": "layer_norm", "locked": false, "schema_version": 3, "solution": true, "task": false}
def layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """LayerNorm over the last dimension of x (..., C), biased variance; weight, bias (C,)."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "layer_norm_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
x_ln = torch.tensor([[1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0]])  # (B, C) = (2, 4)
ones4, zeros4 = torch.ones(4), torch.zeros(4)
check_close(
    layer_norm(x_ln, ones4, zeros4),
    [[-1.3416, -0.4472, 0.4472, 1.3416]] * 2,
    "LayerNorm of [1, 2, 3, 4] and of [2, 4, 6, 8] (weight 1, bias 0)",
    hints={
        "unbiased variance (divided by C - 1); LayerNorm divides by C": [
            [-1.1619, -0.3873, 0.3873, 1.1619]
        ]
        * 2,
        "normalised over the batch (first) axis instead of the features (last axis)": [
            [-1.0] * 4,
            [1.0] * 4,
        ],
    },
)
check_close(
    layer_norm(x_ln, torch.full((4,), 2.0), torch.full((4,), 1.0))[0],
    [-1.6833, 0.1056, 1.8944, 3.6833],
    "LayerNorm of [1, 2, 3, 4] with weight 2 and bias 1 (scale, then shift)",
)


# %% [markdown]
# **RMSNorm** {cite}`zhang2019rmsnorm` drops the mean subtraction and the bias and divides by
# the root mean square,
#
# $$ y_j = \gamma_j\,\frac{x_j}{\sqrt{\frac{1}{C}\sum_k x_k^2 + \epsilon}} . $$
#
# It keeps the part of LayerNorm that matters for stability (controlling the scale), costs one
# reduction instead of two, and works as well in practice; LLaMA and most recent LLMs use it.
#
# ### Exercise 4: RMSNorm
#
# Write `rms_norm(x, weight, eps=1e-6)` for `x` of shape `(..., C)` and `weight` of shape
# `(C,)`. For $x = [1, 2, 3, 4]$ the mean square is $30/4 = 7.5$ and the result is
# $x/\sqrt{7.5} = [0.3651, 0.7303, 1.0954, 1.4606]$.

# %% nbgrader={"grade": false, "grade_id": "rms_norm", "locked": false, "schema_version": 3, "solution": true, "task": false}
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dimension of x (..., C): x / sqrt(mean(x^2) + eps) * weight (C,)."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "rms_norm_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
x_rms = torch.tensor([1.0, 2.0, 3.0, 4.0])
check_close(
    rms_norm(x_rms, torch.ones(4)),
    [0.3651, 0.7303, 1.0954, 1.4606],
    "RMSNorm of [1, 2, 3, 4] (weight 1)",
    hints={
        "subtracted the mean first (that is LayerNorm, not RMSNorm)": [
            -1.3416,
            -0.4472,
            0.4472,
            1.3416,
        ],
        "divided by the L2 norm instead of the root MEAN square": (x_rms / 30**0.5).tolist(),
    },
)
check_close(
    rms_norm(x_rms, torch.tensor([1.0, 0.0, -1.0, 2.0])),
    [0.3651, 0.0, -1.0954, 2.9212],
    "RMSNorm of [1, 2, 3, 4] with weight [1, 0, -1, 2]",
)

# %% [markdown]
# The two norms differ in what they forget. LayerNorm ignores both a shift and a rescaling of
# its input; RMSNorm ignores only the rescaling:

# %%
ln, rms = LayerNorm(6), RMSNorm(6)
v = torch.randn(6)
with torch.no_grad():
    print(
        "LayerNorm(v + 5) == LayerNorm(v):",
        torch.allclose(ln(v + 5), ln(v), atol=1e-4),
        "| LayerNorm(3 v) == LayerNorm(v):",
        torch.allclose(ln(3 * v), ln(v), atol=1e-4),
    )
    print(
        "RMSNorm(v + 5)   == RMSNorm(v):  ",
        torch.allclose(rms(v + 5), rms(v), atol=1e-4),
        "| RMSNorm(3 v)   == RMSNorm(v):  ",
        torch.allclose(rms(3 * v), rms(v), atol=1e-4),
    )


# %% [markdown]
# ## 6. Residual connections
#
# A residual (skip) connection {cite}`he2016resnet` computes $y = x + F(x)$ instead of
# $y = F(x)$: the sub-layer only has to learn a *correction* to its input. The gradient gets an
# identity path,
#
# $$ \frac{\partial y}{\partial x} = I + \frac{\partial F}{\partial x}, $$
#
# so even when $\partial F/\partial x$ is small, the signal from the loss reaches the early
# layers undiminished. Without it, the backward pass multiplies many Jacobians together and the
# gradient shrinks (or grows) geometrically with depth, exactly the problem of RNNs through
# time (chapter 02). A 30-layer stack of `tanh` layers at initialisation shows it:

# %% tags=["demo"] mystnb={"image": {"alt": "Gradient norm of each layer's weights at initialisation for a 30-layer tanh network, on a log scale: without residual connections it falls by orders of magnitude from the last layer to the first; with residual connections it stays roughly level."}}
def layer_grad_norms(depth: int, residual: bool, width: int = 64, seed: int = 0) -> list[float]:
    """Gradient norm of each layer's weight, at initialisation, for a plain or residual tanh stack."""
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(width, width) for _ in range(depth)]
    h = torch.randn(32, width)  # (B, C)
    for layer in layers:
        h = h + torch.tanh(layer(h)) if residual else torch.tanh(layer(h))
    h.pow(2).mean().backward()
    return [layer.weight.grad.norm().item() for layer in layers]


plain, resid = layer_grad_norms(30, residual=False), layer_grad_norms(30, residual=True)
glue("plain_ratio", f"{plain[-1] / plain[0]:.0e}")
glue("resid_ratio", f"{resid[-1] / resid[0]:.1f}")
fig, ax = plt.subplots(figsize=(7, 3))
ax.semilogy(range(1, 31), plain, "o-", label="y = tanh(W x + b)")
ax.semilogy(range(1, 31), resid, "s-", label="y = x + tanh(W x + b)")
ax.set(
    xlabel="layer (1 = closest to the input)",
    ylabel="||dL/dW||",
    title="gradients at initialisation, 30 layers",
)
ax.legend()
plt.show()

# %% [markdown]
# Without the skip connections the last layer's gradient is {glue:text}`plain_ratio` times the
# first layer's; with them, the ratio is {glue:text}`resid_ratio`. Every Transformer sub-layer
# is wrapped in a residual connection for this reason.
#
# ## 7. Post-norm or pre-norm?
#
# Where does the LayerNorm go relative to the residual connection? Two layouts exist:
#
# $$
# \text{post-norm:}\quad x_{l+1} = \mathrm{LN}\bigl(x_l + F_l(x_l)\bigr), \qquad\qquad
# \text{pre-norm:}\quad x_{l+1} = x_l + F_l\bigl(\mathrm{LN}(x_l)\bigr).
# $$
#
# The original Transformer and BERT are **post-norm**: the normalisation sits *on* the residual
# path, so every layer rescales the gradient flowing through it. GPT-2, GPT-3 and LLaMA are
# **pre-norm** {cite}`radford2019gpt2,brown2020gpt3,touvron2023llama`: the residual path
# $x_L = x_0 + \sum_l F_l(\cdot)$ is a clean sum from the embeddings to the output, and one
# final LayerNorm is applied after the last block. Xiong et al. {cite}`xiong2020prenorm` showed
# that at initialisation post-norm puts large gradients on the layers near the output, which
# is why post-norm models need a learning-rate **warm-up**, while pre-norm models can often
# train without one.
#
# The library's `EncoderLayer` and `DecoderLayer` implement both (`norm_first=False` is
# post-norm, `True` pre-norm). The experiments use chapter 04's task, built the same way:
# normalise one to three dates written in six formats ("09/02/25; March 1, 2004") to their ISO
# forms ("2025-02-09;2004-03-01"), character by character, with test dates that never occur in
# training. First experiment: a 12 + 12 layer Transformer ($d = 64$) at initialisation, one
# batch of that task, and the gradient norm of each decoder layer's parameters.

# %% tags=["demo"] mystnb={"image": {"alt": "Gradient norm of each of the 12 decoder layers of an untrained 12+12-layer Transformer on one batch of the date task, on a log scale. Post-norm: small near the input and growing steeply towards the output layer. Pre-norm: nearly flat across the layers."}}
from llmcourse.models.seq2seq_data import (
    BOS_ID,
    EOS_ID,
    collate,
    exact_match,
    iterate_batches,
    make_date_task,
)

FORMATS = ["dd/mm/yy", "d.m.yyyy", "dd-mm-yyyy", "d_mon_yyyy", "mon_d_yy_lower", "month_d_yyyy"]
date_task = make_date_task(
    n_train=4000, n_val=0, n_test=300, seed=0, n_dates=(1, 3), formats=FORMATS
)  # chapter 04's task
vocab = date_task.vocab
probe = collate(date_task.train[:64], vocab)  # src (64, S), tgt (64, T) = [bos, ..., eos, pad]


def small_transformer(norm_first: bool, layers: int, d_model: int, seed: int = 0) -> Transformer:
    """A Transformer for the date task (character vocabulary on both sides), no dropout."""
    torch.manual_seed(seed)
    config = TransformerConfig(
        vocab.vocab_size,
        vocab.vocab_size,
        d_model=d_model,
        n_heads=4,
        d_ff=2 * d_model,
        n_encoder_layers=layers,
        n_decoder_layers=layers,
        dropout=0.0,
        max_len=96,
        norm_first=norm_first,
    )
    return Transformer(config)


def decoder_grad_norms(model: Transformer) -> list[float]:
    """Gradient norm of each decoder layer's parameters after one backward pass on the probe batch."""
    model(probe.src, probe.tgt[:, :-1], probe.tgt[:, 1:]).loss.backward()
    return [
        math.sqrt(sum(p.grad.pow(2).sum().item() for p in layer.parameters()))
        for layer in model.decoder
    ]


grad_post = decoder_grad_norms(small_transformer(norm_first=False, layers=12, d_model=64))
grad_pre = decoder_grad_norms(small_transformer(norm_first=True, layers=12, d_model=64))
glue("post_grad_ratio", f"{grad_post[-1] / grad_post[0]:.0f}")
glue("pre_grad_ratio", f"{grad_pre[-1] / grad_pre[0]:.1f}")
fig, ax = plt.subplots(figsize=(7, 3))
ax.semilogy(range(1, 13), grad_post, "o-", label="post-norm: LN(x + F(x))")
ax.semilogy(range(1, 13), grad_pre, "s-", label="pre-norm: x + F(LN(x))")
ax.set(
    xlabel="decoder layer (1 = first)",
    ylabel="gradient norm",
    title="12 + 12 layers at initialisation",
)
ax.legend()
plt.show()

# %% [markdown]
# In the post-norm model the last decoder layer's gradient is {glue:text}`post_grad_ratio`
# times the first one's; in the pre-norm model the ratio is {glue:text}`pre_grad_ratio`. The
# post-norm stack is badly unbalanced across depth, the imbalance Xiong et al. connect to the
# need for warm-up; the pre-norm stack is much more even.
#
# Second experiment: train a 4 + 4 layer model ($d = 32$) with Adam at a high learning rate,
# $10^{-2}$, for 100 steps, three ways: post-norm with no warm-up, post-norm with a linear
# warm-up over the first 60 steps, and pre-norm with no warm-up.

# %% tags=["demo"] mystnb={"image": {"alt": "Training loss over 100 steps at learning rate 0.01 for three 4+4-layer Transformers on the date task. Post-norm without warm-up drops at first and then stays stuck on a plateau. Post-norm with a 60-step warm-up keeps improving. Pre-norm without warm-up reaches the lowest loss."}}
from llmcourse.optim import Adam, clip_grad_norm, lr_at


def train_steps(
    model: torch.nn.Module,
    loss_fn,
    steps: int,
    max_lr: float,
    warmup: int,
    decay: bool,
    batch_size: int,
    clip: float | None = None,
) -> tuple[list[float], list[float]]:
    """Adam on the date task's training split. Returns (loss per step, seconds elapsed per step).

    The learning rate rises linearly over ``warmup`` steps, then stays (``decay=False``) or
    follows a cosine down to max_lr / 10 at the last step. Raises on a NaN or inf loss.
    """
    optimizer = Adam(model.parameters(), lr=max_lr)
    losses, seconds, step, epoch = [], [], 0, 0
    start = time.perf_counter()
    while step < steps:
        for batch in iterate_batches(date_task.train, vocab, batch_size, seed=epoch):
            lr = lr_at(
                step,
                max_lr=max_lr,
                min_lr=max_lr / 10 if decay else max_lr,
                warmup_steps=warmup,
                decay_steps=steps if decay else warmup,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = loss_fn(model, batch)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}")
            optimizer.zero_grad()
            loss.backward()
            if clip is not None:
                clip_grad_norm(model.parameters(), clip)
            optimizer.step()
            losses.append(loss.item())
            seconds.append(time.perf_counter() - start)
            step += 1
            if step == steps:
                break
        epoch += 1
    return losses, seconds


def transformer_loss(model: Transformer, batch) -> torch.Tensor:
    """Teacher forcing: read [bos, y1, ..., y_{T-1}], predict [y1, ..., eos] (padding ignored)."""
    return model(batch.src, batch.tgt[:, :-1], batch.tgt[:, 1:]).loss


stability_runs = {
    "post-norm, no warm-up": dict(norm_first=False, warmup=0),
    "post-norm, 60-step warm-up": dict(norm_first=False, warmup=60),
    "pre-norm, no warm-up": dict(norm_first=True, warmup=0),
}
stability = {}
for name, run in stability_runs.items():
    model = small_transformer(run["norm_first"], layers=4, d_model=32)
    stability[name], _ = train_steps(
        model,
        transformer_loss,
        steps=100,
        max_lr=1e-2,
        warmup=run["warmup"],
        decay=False,
        batch_size=32,
    )
final_loss = {name: float(np.mean(curve[-10:])) for name, curve in stability.items()}
for name, value in final_loss.items():
    print(f"{name:>28}: mean loss over the last 10 steps {value:.3f}")
glue("stab_post", f"{final_loss['post-norm, no warm-up']:.2f}")
glue("stab_post_warm", f"{final_loss['post-norm, 60-step warm-up']:.2f}")
glue("stab_pre", f"{final_loss['pre-norm, no warm-up']:.2f}")
char_counts = torch.bincount(
    collate(date_task.train, vocab).tgt[:, 1:].flatten(), minlength=vocab.vocab_size
)[1:]
char_freq = (
    char_counts[char_counts > 0] / char_counts.sum()
)  # target characters and <eos>, padding left out
glue("unigram_entropy", f"{-(char_freq * char_freq.log()).sum().item():.2f}")

fig, ax = plt.subplots(figsize=(7, 3.2))
for name, curve in stability.items():
    ax.plot(curve, label=name)
ax.set(xlabel="step", ylabel="cross-entropy", title="4 + 4 layers, Adam, lr = 0.01")
ax.legend()
plt.show()

# %% [markdown]
# Post-norm without warm-up stalls at a loss of about {glue:text}`stab_post`. That is almost
# exactly the entropy of the target characters' frequencies, {glue:text}`unigram_entropy`
# nats: the first large steps pushed the model onto a plateau where it ignores the source and
# predicts how common each character is. The same model with a warm-up reaches
# {glue:text}`stab_post_warm`, and the pre-norm model, with no warm-up at all,
# {glue:text}`stab_pre`. This is the practical reason modern LLMs are pre-norm. (Pre-norm has
# its own cost: the residual stream grows with depth, so later layers' contributions are
# relatively smaller; a final norm and careful initialisation keep it in check.)
#
# ## 8. The position-wise feed-forward network
#
# Attention mixes information *across* positions; the **feed-forward network** (FFN) then
# transforms each position's vector *on its own*, with the same weights at every position:
#
# $$ \mathrm{FFN}(x) = W_2\,\phi(W_1 x + b_1) + b_2, \qquad W_1 \in \mathbb{R}^{d_{ff}\times d},
# \ W_2 \in \mathbb{R}^{d \times d_{ff}}, $$
#
# usually with $d_{ff} = 4d$. The activation $\phi$ was ReLU in the original Transformer,
# **GELU** in BERT and GPT-2 {cite}`hendrycks2016gelu`. Two thirds of a layer's parameters
# live here.
#
# LLaMA-style models use a *gated* variant, **SwiGLU** {cite}`shazeer2020glu`: two input
# projections, one passed through SiLU ($\mathrm{silu}(z) = z\,\sigma(z)$) acting as a soft
# gate on the other, no biases:
#
# $$ \mathrm{SwiGLU}(x) = W_{\text{down}}\bigl(\mathrm{silu}(W_{\text{gate}}\,x) \odot W_{\text{up}}\,x\bigr). $$
#
# With three matrices instead of two, the hidden size is cut to about $\tfrac{8}{3}d$ to keep
# the parameter count of a $4d$ FFN: $3 \cdot d \cdot \tfrac{8}{3}d = 8d^2 = 2 \cdot d \cdot 4d$.
# LLaMA-7B has $d = 4096$ and a hidden size of 11008 (about $\tfrac{8}{3}d$, rounded up).

# %% tags=["demo"] mystnb={"image": {"alt": "The activation functions ReLU, GELU and SiLU between -4 and 4. ReLU is zero for negative inputs and the identity for positive ones; GELU and SiLU are smooth versions of it that dip slightly below zero for negative inputs."}}
z = torch.linspace(-4, 4, 200)
fig, ax = plt.subplots(figsize=(6, 3))
for name, fn in [
    ("ReLU (original Transformer)", F.relu),
    ("GELU (BERT, GPT-2)", F.gelu),
    ("SiLU (gate of SwiGLU)", F.silu),
]:
    ax.plot(z, fn(z), label=name)
ax.set(xlabel="z", ylabel="activation", title="FFN activations")
ax.legend()
plt.show()


# %% [markdown]
# ### Exercise 5: a SwiGLU feed-forward network
#
# Write `swiglu_ffn(x, w_gate, w_up, w_down)` for `x` of shape `(..., d)`, `w_gate` and `w_up`
# of shape `(h, d)` and `w_down` of shape `(d, h)`: weights in the `(out_features,
# in_features)` layout of `torch.nn.Linear`, so $W x$ is `x @ w.T`. No biases.

# %% nbgrader={"grade": false, "grade_id": "swiglu_ffn", "locked": false, "schema_version": 3, "solution": true, "task": false}
def swiglu_ffn(
    x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor
) -> torch.Tensor:
    """SwiGLU FFN: (silu(x W_gate^T) * (x W_up^T)) W_down^T; x (..., d) -> (..., d)."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "swiglu_ffn_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def _library_swiglu(w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> FeedForward:
    """llmcourse's FeedForward(activation="swiglu") holding these weights (fc1 = [W_gate; W_up])."""
    ffn = FeedForward(w_gate.shape[1], w_gate.shape[0], "swiglu", bias=False).to(w_gate.dtype)
    with torch.no_grad():
        ffn.fc1.weight.copy_(torch.cat([w_gate, w_up]))
        ffn.fc2.weight.copy_(w_down)
    return ffn


xs_ = torch.tensor([[1.0, -1.0], [0.5, 2.0]])  # (2, d=2)
wg_ = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # (h=3, d)
wu_ = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, -1.0]])  # (h, d)
wd_ = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, -1.0]])  # (d, h)
with torch.no_grad():
    expected_swiglu = _library_swiglu(wg_, wu_, wd_)(xs_)
gate_, up_ = xs_ @ wg_.T, xs_ @ wu_.T  # (2, h) each
check_close(
    swiglu_ffn(xs_, wg_, wu_, wd_),
    expected_swiglu,
    "SwiGLU of a 2-token batch (d=2, h=3)",
    hints={
        "SiLU applied to the up projection instead of the gate": (gate_ * F.silu(up_)) @ wd_.T,
        "ReLU instead of SiLU": (F.relu(gate_) * up_) @ wd_.T,
        "no gate (a plain SiLU MLP)": F.silu(up_) @ wd_.T,
    },
)


# %% [markdown]
# ## 9. Counting parameters
#
# Counting parameters by hand is the quickest check that you know what a model contains. For
# one layer with model width $d$ and FFN width $d_{ff}$ (biases everywhere, as in the original
# Transformer and BERT):
#
# | sub-layer | weights | biases |
# |---|---|---|
# | attention: $W_Q, W_K, W_V, W_O$, each $d \times d$ | $4d^2$ | $4d$ |
# | FFN: $W_1$ ($d_{ff} \times d$), $W_2$ ($d \times d_{ff}$) | $2 d\, d_{ff}$ | $d_{ff} + d$ |
# | each LayerNorm: $\gamma, \beta$ | | $2d$ |
#
# An encoder layer has one attention, one FFN and two LayerNorms. A decoder layer adds the
# cross-attention and a third LayerNorm. The number of heads does **not** appear: $h$ heads of
# width $d/h$ split the same $d \times d$ projections, they do not add weights.
#
# ### Exercise 6 (worked numbers): parameters of a layer
#
# Write `layer_num_parameters(d_model, n_heads, d_ff, decoder=False)`. The encoder layer of
# the base Transformer ($d = 512$, 8 heads, $d_{ff} = 2048$) has
# $4\cdot 512^2 + 4\cdot 512 + 2\cdot 512\cdot 2048 + 2048 + 512 + 4\cdot 512 = 3{,}152{,}384$
# parameters. The test also rebuilds **bert-base-uncased** from your function: its
# embeddings ($(30522 + 512 + 2)\cdot 768$ token, position and segment vectors plus one
# LayerNorm), 12 encoder layers with $d = 768$, $d_{ff} = 3072$, and a pooler ($768^2 + 768$)
# add up to 109,482,240.

# %% nbgrader={"grade": false, "grade_id": "layer_num_parameters", "locked": false, "schema_version": 3, "solution": true, "task": false}
def layer_num_parameters(d_model: int, n_heads: int, d_ff: int, decoder: bool = False) -> int:
    """Parameters of one Transformer layer with biases: encoder, or decoder (with cross-attention)."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "layer_num_parameters_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
check_close(
    layer_num_parameters(512, 8, 2048),
    3_152_384,
    "parameters of one encoder layer (d=512, 8 heads, d_ff=2048)",
    atol=0,
    rtol=0,
    hints={
        "forgot the two LayerNorms (2 x 2d)": 3_150_336,
        "forgot the biases of the linear layers": 3_147_776,
        "counted one LayerNorm instead of two": 3_151_360,
        "multiplied the attention weights by the number of heads": 3_152_384 + 7 * 4 * 512 * 512,
    },
)
bert_embeddings = (30522 + 512 + 2) * 768 + 2 * 768  # token, position, segment tables + LayerNorm
bert_pooler = 768 * 768 + 768
check_close(
    bert_embeddings + 12 * layer_num_parameters(768, 12, 3072) + bert_pooler,
    109_482_240,
    "bert-base-uncased rebuilt from 12 encoder layers (d=768, 12 heads, d_ff=3072)",
    atol=0,
    rtol=0,
)

# %% [markdown]
# The library agrees. Building models on PyTorch's `meta` device allocates no memory, so even
# the full base Transformer and bert-base cost nothing to count:

# %% tags=["demo"]
with torch.device("meta"):
    base_layer = EncoderLayer(512, 8, 2048)
    base_transformer = Transformer(TransformerConfig(src_vocab_size=37000, tgt_vocab_size=37000))
    bert_base = BertModel(BertConfig())
n_layer = sum(p.numel() for p in base_layer.parameters())
n_base = base_transformer.num_parameters()
n_embedding = base_transformer.src_emb.weight.numel()
glue("n_enc_layer", f"{n_layer:,}")
glue("n_base_transformer", f"{n_base:,}")
glue("n_base_shared", f"{(n_base - n_embedding) / 1e6:.1f}M")
glue("n_bert", f"{bert_base.num_parameters():,}")
print(f"EncoderLayer(512, 8, 2048):                        {n_layer:>12,}")
print(f"Transformer base, separate source/target tables:   {n_base:>12,}")
print(f"  ... with one shared embedding table (the paper): {n_base - n_embedding:>12,}")
print(f"BertModel(BertConfig()) = bert-base-uncased:       {bert_base.num_parameters():>12,}")

# %% [markdown]
# One encoder layer: {glue:text}`n_enc_layer`. The library's base Transformer, with separate
# source and target embedding tables of 37,000 tokens, has {glue:text}`n_base_transformer`
# parameters; the paper shares a single table between the encoder, the decoder and the output
# layer, which leaves {glue:text}`n_base_shared`, close to the 65M it reports. bert-base-uncased
# has {glue:text}`n_bert` (chapter 08 loads real BERT-family weights into this model).
#
# ## 10. The full encoder-decoder Transformer on the date task
#
# Everything above is assembled in `llmcourse.models.transformer.Transformer`: token embeddings
# scaled by $\sqrt{d}$ plus sinusoidal encodings, an encoder stack, a decoder stack with
# masked self-attention and cross-attention, and an output layer tied to the target embedding.
# Training uses **teacher forcing**, like chapter 04, but with one difference that matters for
# speed: the decoder reads the whole target prefix at once and predicts every next character in
# *one* parallel pass (the causal mask keeps it honest), whereas the RNN decoder has to step
# through the target one character at a time, and its encoder through the source.
#
# We train a small Transformer (2 + 2 post-norm layers, $d = 64$, warm-up then cosine decay)
# and chapter 04's GRU seq2seq with additive attention (same sizes and learning rate as there)
# for the same number of steps on the same batches of chapter 04's task, and compare their
# exact-match accuracy on the held-out test inputs and their training time on this machine.

# %% tags=["demo"] mystnb={"image": {"alt": "Left: training loss against wall-clock seconds for the Transformer and for the GRU seq2seq with attention on the date task, both falling steeply and flattening. Right: grouped bars of exact-match accuracy on the 300 test inputs, split by the number of dates in the input (1, 2 or 3), for the two models side by side."}}
from llmcourse.models.seq2seq_data import translate
from llmcourse.recurrent import Seq2Seq

STEPS = 252  # 4 epochs of 63 batches, as in chapter 04
torch.manual_seed(0)
date_transformer = Transformer(
    TransformerConfig(
        vocab.vocab_size,
        vocab.vocab_size,
        d_model=64,
        n_heads=4,
        d_ff=128,
        n_encoder_layers=2,
        n_decoder_layers=2,
        dropout=0.0,
        max_len=96,
        norm_first=False,
    )
)
torch.manual_seed(0)
date_rnn = Seq2Seq.build(  # chapter 04's model: bidirectional GRU encoder, additive attention
    vocab.vocab_size, vocab.vocab_size, embed_dim=16, hidden_size=32, attention="additive"
)


def rnn_loss(model: Seq2Seq, batch) -> torch.Tensor:
    return model(batch.src, batch.tgt, batch.src_mask).loss


tf_losses, tf_seconds = train_steps(
    date_transformer,
    transformer_loss,
    STEPS,
    max_lr=5e-3,
    warmup=50,
    decay=True,
    batch_size=64,
    clip=1.0,
)
rnn_losses, rnn_seconds = train_steps(  # chapter 04's schedule: 10 warm-up steps, then constant
    date_rnn, rnn_loss, STEPS, max_lr=1e-2, warmup=10, decay=False, batch_size=64, clip=1.0
)

test_sources = [p.source for p in date_task.test]
test_targets = [p.target for p in date_task.test]
date_transformer.eval()
test_src = collate(date_task.test, vocab).src  # (300, S)
tf_out = date_transformer.greedy_decode(test_src, max_new_tokens=34, bos_id=BOS_ID, eos_id=EOS_ID)
tf_predictions = [vocab.decode(row) for row in tf_out]
rnn_predictions = translate(date_rnn, test_sources, vocab)
results = {
    "Transformer": dict(
        em=exact_match(tf_predictions, test_targets),
        seconds=tf_seconds[-1],
        params=date_transformer.num_parameters(),
    ),
    "GRU seq2seq + attention": dict(
        em=exact_match(rnn_predictions, test_targets),
        seconds=rnn_seconds[-1],
        params=sum(p.numel() for p in date_rnn.parameters()),
    ),
}
n_dates = np.array([len(p.formats) for p in date_task.test])  # dates per test input, 1 to 3
for name, predictions in [
    ("Transformer", tf_predictions),
    ("GRU seq2seq + attention", rnn_predictions),
]:
    correct = np.array([p == t for p, t in zip(predictions, test_targets, strict=True)])
    results[name]["by_dates"] = [correct[n_dates == k].mean() for k in (1, 2, 3)]
for name, r in results.items():
    print(
        f"{name:>24}: exact match {r['em']:.1%} (1, 2, 3 dates: "
        f"{', '.join(f'{v:.0%}' for v in r['by_dates'])}) | {STEPS} steps in {r['seconds']:.1f} s "
        f"({1000 * r['seconds'] / STEPS:.0f} ms/step) | {r['params']:,} parameters"
    )
glue("tf_em", f"{results['Transformer']['em']:.1%}")
glue("rnn_em", f"{results['GRU seq2seq + attention']['em']:.1%}")
glue("tf_ms", f"{1000 * tf_seconds[-1] / STEPS:.0f}")
glue("rnn_ms", f"{1000 * rnn_seconds[-1] / STEPS:.0f}")
glue("tf_params", f"{results['Transformer']['params']:,}")
glue("rnn_params", f"{results['GRU seq2seq + attention']['params']:,}")
glue("date_steps", f"{STEPS}")
glue("tf_em1", f"{results['Transformer']['by_dates'][0]:.0%}")
glue("tf_em3", f"{results['Transformer']['by_dates'][2]:.0%}")
glue("rnn_em3", f"{results['GRU seq2seq + attention']['by_dates'][2]:.0%}")
glue("tf_final_loss", f"{np.mean(tf_losses[-10:]):.3f}")
glue("rnn_final_loss", f"{np.mean(rnn_losses[-10:]):.3f}")
# the RNN's loss when it had trained as long as the Transformer's whole run (10-step mean)
rnn_step_at_tf_end = int(np.searchsorted(rnn_seconds, tf_seconds[-1]))
glue(
    "rnn_loss_at_tf_end",
    f"{np.mean(rnn_losses[max(0, rnn_step_at_tf_end - 10) : rnn_step_at_tf_end]):.3f}",
)
glue("rnn_step_at_tf_end", f"{rnn_step_at_tf_end}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5), gridspec_kw={"width_ratios": [2, 1]})
ax1.plot(tf_seconds, tf_losses, label="Transformer")
ax1.plot(rnn_seconds, rnn_losses, label="GRU seq2seq + attention")
ax1.set(
    xlabel="training time (s)",
    ylabel="cross-entropy",
    yscale="log",
    title=f"{STEPS} steps of batch 64",
)
ax1.legend()
for j, (name, r) in enumerate(results.items()):
    ax2.bar(np.arange(3) + 0.4 * j - 0.2, r["by_dates"], width=0.4, color=f"C{j}", label=name)
ax2.set(
    xticks=range(3),
    xticklabels=["1 date", "2 dates", "3 dates"],
    ylim=(0, 1.3),
    yticks=np.linspace(0, 1, 6),
    ylabel="exact match (test)",
)
ax2.legend(fontsize=7, loc="upper center")
plt.tight_layout()
plt.show()

# %% [markdown]
# After {glue:text}`date_steps` steps the Transformer ({glue:text}`tf_params` parameters)
# gets {glue:text}`tf_em` of the test inputs exactly right ({glue:text}`tf_em1` of those with
# one date, {glue:text}`tf_em3` of those with three), the GRU with attention
# ({glue:text}`rnn_params` parameters) {glue:text}`rnn_em` ({glue:text}`rnn_em3` with three
# dates). Their final training losses are {glue:text}`tf_final_loss` and
# {glue:text}`rnn_final_loss`. A training step took {glue:text}`tf_ms` ms for the Transformer
# and {glue:text}`rnn_ms` ms for the RNN on this machine, so the left panel, drawn against
# seconds rather than steps, is worth a second look: at the moment the Transformer finished
# (loss {glue:text}`tf_final_loss`), the RNN had done {glue:text}`rnn_step_at_tf_end` steps and
# its loss was {glue:text}`rnn_loss_at_tf_end`. Equal steps gave the RNN more time. A few test
# inputs, with mistakes marked by `x`:

# %% tags=["demo"]
for i in [int(np.flatnonzero(n_dates == k)[j]) for k in (1, 2, 3) for j in (0, 1)]:
    print(f"input       {test_sources[i]!r}\ntarget      {test_targets[i]}")
    for name, pred in [("Transformer", tf_predictions[i]), ("GRU + attn", rnn_predictions[i])]:
        print(f"{name:<11} {pred}{'' if pred == test_targets[i] else '   x'}")
    print()

# %% [markdown]
# How to read this comparison honestly. With a few thousand short examples, a budget of a few
# hundred steps and a laptop CPU, the recurrent model with attention is a strong baseline: its
# inductive bias (read the input in order, move the attention along it roughly monotonically)
# fits this task, so it learns fast. The Transformer starts with no notion of order except the
# sinusoidal encodings it must learn to use; it picks up single dates first, while inputs with
# several dates need it to work out, from positions alone, which date it is currently copying,
# and that takes more training than this run gives it (its training loss is still falling). The
# Transformer's advantages are structural and show at scale: each training step processes all
# positions in parallel (the RNN walks through the input and the output one character at a
# time, which is why its step is slower here even though it is the smaller model, and on a GPU
# the gap grows much larger), any position reaches any other in one layer instead of through a
# chain of recurrent states, and the architecture keeps improving as it is made deeper, wider
# and trained on more data, which is what the following chapters exploit.
#
# ```{admonition} Common misconceptions
# :class: warning
#
# - **"Sinusoidal encodings let a model handle any length."** The formula is defined for every
#   position, but models trained with it degrade quickly beyond their training length; they do
#   not extrapolate well. What sinusoids *do* guarantee is that $\mathrm{PE}(p + k)$ is a fixed
#   rotation of $\mathrm{PE}(p)$, and in the formula $i$ indexes *pairs* of dimensions.
# - **"GPT uses post-norm, like the original Transformer."** GPT-2, GPT-3 and LLaMA are
#   pre-norm ($x + F(\mathrm{LN}(x))$, plus a final norm); LLaMA also swaps LayerNorm for
#   RMSNorm and learned positions for RoPE. The original Transformer and BERT are post-norm.
# - **"A decoder layer has two Add & Norm steps."** In the original encoder-decoder Transformer
#   it has three: after masked self-attention, after cross-attention and after the FFN.
# - **"GPT's blocks have cross-attention."** GPT is decoder-only: there is no encoder, so there
#   is nothing to cross-attend to. Its block is masked self-attention + FFN.
# - **"BERT's FFN is $\max(0, \cdot)$."** BERT (and GPT-2) use GELU; ReLU was the original
#   Transformer's choice, SwiGLU is LLaMA's.
# - **"Transformers handle much longer sequences than RNNs."** Self-attention costs $O(n^2)$ time
#   and memory in the sequence length, and the context window is fixed at training time. What
#   Transformers handle better is *parallel training* and *direct* long-range connections
#   within that window.
# - **"More heads means more parameters."** The heads split $d_{\text{model}}$; a layer's count
#   does not depend on their number.
# ```
#
# ## Summary
#
# You wrote sinusoidal position encodings and RoPE (and saw that RoPE's scores depend only on
# relative position), LayerNorm and RMSNorm, a SwiGLU feed-forward network and a parameter
# counter, and you measured why residual connections and pre-norm make deep stacks trainable.
# The library's versions (`llmcourse.nn.sinusoidal_encoding`, `RotaryEmbedding`,
# `llmcourse.kernels.apply_rope`, `LayerNorm`, `RMSNorm`, `FeedForward`, `EncoderLayer`,
# `DecoderLayer`, `Transformer`) are tested against PyTorch and are what chapter 07 (GPT, a
# pre-norm decoder-only stack) and chapter 08 (BERT, a post-norm encoder) build on.
#
# ## References
#
# {cite}`vaswani2017attention` (the Transformer), {cite}`su2021roformer` (RoPE),
# {cite}`press2022alibi` (length extrapolation), {cite}`ba2016layernorm` (LayerNorm),
# {cite}`zhang2019rmsnorm` (RMSNorm), {cite}`he2016resnet` (residual connections),
# {cite}`xiong2020prenorm` (pre- and post-norm), {cite}`shazeer2020glu` (GLU variants, SwiGLU),
# {cite}`hendrycks2016gelu` (GELU), {cite}`touvron2023llama` (LLaMA),
# {cite}`devlin2019bert` (BERT), {cite}`radford2019gpt2` (GPT-2). Full entries are on the
# [bibliography](../book/bibliography.md) page.
