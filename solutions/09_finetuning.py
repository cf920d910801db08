# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 Fine-tuning: full, parameter-efficient, quantized, instruction-tuned
#
# A pretrained language model has learned a great deal about its corpus, but it does not yet
# do *your* task: it continues text, it does not follow instructions. **Fine-tuning** trains it
# a little more on examples of the task. Done naively (update every weight with Adam), that
# needs as much memory as pretraining: the weights, their gradients and two optimizer moments,
# sixteen bytes per parameter in float32. This chapter is about doing it cheaply, and about
# measuring what "cheaply" costs in quality.
#
# **Learning objectives.** After this chapter you can
#
# 1. compare full fine-tuning with parameter-efficient methods (adapters, prefix and prompt
#    tuning, BitFit, LoRA) by what they train and what they cost;
# 2. write the LoRA forward pass $y = xW^\top + \tfrac{\alpha}{r}\,x A^\top B^\top$, explain its
#    initialisation and merge it into the weight;
# 3. count LoRA's trainable parameters for a real model size by hand;
# 4. quantize numbers to 8 bits (affine and absmax) and weights to 4-bit NormalFloat (NF4),
#    and measure the error of each on real weights;
# 5. build instruction-tuning (SFT) examples with a chat template and mask the prompt out of
#    the loss;
# 6. fine-tune the course GPT with full fine-tuning, LoRA and QLoRA and compare accuracy,
#    trainable parameters and training memory.
#
# **How to use this notebook.** Cells marked *Exercise* are graded: replace
# `raise NotImplementedError()` with your code, then run the test cell below it. The visible
# tests tell you what was expected and what came back; hidden tests run at grading time.
# Demonstrations call the course library `llmcourse`, so they work before you solve anything.

# %%
import copy
import math
import random
import re
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import llmcourse
from llmcourse.checks import check_close, check_equal, check_shape
from llmcourse.display import glue
from llmcourse.finetune import (
    END,
    IGNORE_INDEX,
    LoRALinear,
    collate_sft,
    format_example,
    quantize_affine_uint8,
    quantize_int8_absmax,
    tokenize_prompt_response,
)
from llmcourse.finetune import lora_param_count as lib_lora_param_count

torch.manual_seed(0)
print("llmcourse", llmcourse.__version__, "| torch", torch.__version__)

# %% [markdown]
# ## 1. Full fine-tuning and why it is expensive
#
# Full fine-tuning continues training every parameter on the new data, with the same loss as
# pretraining (next-token cross-entropy) and a small learning rate. It is the most expressive
# option and, for a small model, often the best one. Its cost is memory. With AdamW in float32
# every parameter needs
#
# | what | bytes per parameter |
# |---|---|
# | the weight | 4 |
# | its gradient | 4 |
# | Adam's first and second moments | 4 + 4 |
# | **total** (before activations) | **16** |
#
# For a 7-billion-parameter model that is 112 GB before a single activation is stored, more
# than any single GPU holds, and every fine-tuned variant is another full copy of the model to
# store and serve. **Parameter-efficient fine-tuning** (PEFT) freezes the pretrained weights
# and trains a small number of new or selected parameters instead. Gradients and optimizer
# states are then needed only for those, and a task is stored as a small file next to one
# shared base model.
#
# ## 2. A map of parameter-efficient methods
#
# | method | what is trained | where it acts | extra inference cost |
# |---|---|---|---|
# | **adapters** {cite}`houlsby2019adapters` | small bottleneck MLPs $h \mapsto h + W_{\text{up}}\,\sigma(W_{\text{down}} h)$ inserted after attention and FFN | inside every block | yes: extra layers in sequence |
# | **prefix tuning** {cite}`li2021prefix` | $p$ trained key/value vectors prepended in *every* attention layer | attention of every layer | a longer attention span |
# | **prompt tuning** {cite}`lester2021prompt` | $p$ trained input embeddings ("soft prompt") prepended to the input | input layer only | $p$ more positions |
# | **BitFit** {cite}`benzaken2022bitfit` | only the bias vectors | every layer | none |
# | **LoRA** {cite}`hu2022lora` | a low-rank update $\tfrac{\alpha}{r}BA$ of chosen weight matrices | chosen Linear layers | none once merged |
# | **QLoRA** {cite}`dettmers2023qlora` | LoRA on top of a base model stored in 4 bits | chosen Linear layers | dequantization per layer |
#
# The sizes differ by orders of magnitude. A soft prompt of 20 tokens for a model of width
# 4096 is $20 \times 4096 = 81{,}920$ parameters: tens of thousands, not millions. BitFit on a
# BERT-base model trains about 0.1% of the weights. LoRA's count depends on the rank; it is
# the subject of Exercise 2. Prompt tuning works well only for large models: Lester et al.
# found that it closes the gap to full fine-tuning at around ten billion parameters, and falls
# far behind it for small ones. BitFit needs biases, and many modern LLMs (LLaMA, and the
# course GPT, built with `bias=False`) have none to train.
#
# ## 3. LoRA: a low-rank update
#
# Hu et al. observed that the *change* a fine-tuning run makes to a weight matrix has low
# intrinsic rank. So instead of learning a full $\Delta W \in \mathbb{R}^{d_\text{out}\times
# d_\text{in}}$ they write it as a product of two thin matrices and keep $W$ frozen:
#
# $$
# W' = W + \frac{\alpha}{r}\, B A, \qquad
# A \in \mathbb{R}^{r \times d_\text{in}},\quad B \in \mathbb{R}^{d_\text{out} \times r},\quad
# r \ll \min(d_\text{in}, d_\text{out}).
# $$
#
# Three details matter and are easy to get wrong:
#
# - **Initialisation.** $A$ starts random (like a Linear weight), $B$ starts at **zero**. So
#   $BA = 0$ and the adapted model is *exactly* the pretrained one at step 0; training moves it
#   away smoothly. (If both were random the model would start from a damaged copy of itself.
#   If both were zero no gradient would ever flow: $\partial L/\partial A \propto B^\top = 0$
#   and $\partial L/\partial B \propto A = 0$.)
# - **Scaling $\alpha / r$.** The update is multiplied by $\alpha/r$. With $\alpha$ fixed, doubling
#   the rank does not double the size of the update at initialisation, so the learning rate
#   found for one rank roughly carries over to another.
# - **Computation order.** In the forward pass we never form $BA$ (a full $d_\text{out}\times
#   d_\text{in}$ matrix): we compute $x A^\top$ first, which is only $r$ numbers per token, then
#   multiply by $B^\top$:
#
# $$ y = x W^\top + \frac{\alpha}{r}\,(x A^\top) B^\top. $$
#
# After training the update can be **merged**: $W \leftarrow W + \tfrac{\alpha}{r}BA$ gives a
# plain Linear layer with no extra inference cost; subtracting it again **unmerges**, so one
# base model can switch between many adapters.
#
# ```text
#          x (.., d_in)
#          |------------------------.
#          v                        v
#   [ W frozen (d_out x d_in) ]  [ A (r x d_in) ]  trainable, random init
#          |                        v
#          |                     [ B (d_out x r) ]  trainable, zero init
#          |                        v
#          |                    x alpha / r
#          '----------> + <---------'
#                       v
#                  y (.., d_out)
# ```
#
# ### Exercise 1: the LoRA forward pass
#
# Write `lora_forward(x, weight, lora_A, lora_B, alpha)` for `x` of shape `(..., d_in)`,
# a frozen `weight` `(d_out, d_in)`, `lora_A` `(r, d_in)` and `lora_B` `(d_out, r)`. Return
# $xW^\top + \tfrac{\alpha}{r}(xA^\top)B^\top$ with shape `(..., d_out)`, where $r$ is read from
# the shape of `lora_A`. Do not build $BA$.


# %% nbgrader={"grade": false, "grade_id": "lora_forward", "locked": false, "schema_version": 3, "solution": true, "task": false}
def lora_forward(
    x: torch.Tensor, weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, alpha: float
) -> torch.Tensor:
    """LoRA Linear without bias: x (..., d_in) -> (..., d_out)."""
    ### BEGIN SOLUTION
    r = lora_A.shape[0]
    base = x @ weight.t()  # (..., d_out)
    low_rank = (x @ lora_A.t()) @ lora_B.t()  # (..., r) -> (..., d_out)
    return base + (alpha / r) * low_rank
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "lora_forward_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
gen_ = torch.Generator().manual_seed(0)
x_ = torch.randn(5, 6, generator=gen_)
W_ = torch.randn(4, 6, generator=gen_)
A_ = torch.randn(2, 6, generator=gen_)
B_ = torch.randn(4, 2, generator=gen_)
merged_ = W_ + (16.0 / 2) * B_ @ A_
got_ = lora_forward(x_, W_, A_, B_, alpha=16.0)
check_shape(got_, (5, 4), "lora_forward output for x (5, 6), W (4, 6), r = 2")
check_close(
    got_,
    x_ @ merged_.t(),
    "LoRA output against the merged weight W + (alpha/r) B A",
    atol=1e-4,
    hints={
        "forgot the alpha / r scaling": x_ @ (W_ + B_ @ A_).t(),
        "scaled by alpha instead of alpha / r": x_ @ (W_ + 16.0 * B_ @ A_).t(),
        "scaled by r / alpha instead of alpha / r": x_ @ (W_ + (2 / 16.0) * B_ @ A_).t(),
        "returned only the low-rank update, without x W^T": x_ @ ((16.0 / 2) * B_ @ A_).t(),
    },
)
check_close(
    lora_forward(x_, W_, A_, torch.zeros(4, 2), alpha=16.0),
    x_ @ W_.t(),
    "with B = 0 (LoRA's initialisation) the output must equal the frozen layer's",
)
### BEGIN HIDDEN TESTS
for shape_, r_, alpha_ in [((2, 3, 8), 1, 1.0), ((7, 8), 4, 32.0), ((1, 1, 1, 8), 8, 8.0)]:
    base_ = torch.nn.Linear(8, 5, bias=False)
    layer_ = LoRALinear(base_, r=r_, alpha=alpha_)
    with torch.no_grad():
        layer_.lora_B.normal_(generator=gen_)
    xx_ = torch.randn(*shape_, generator=gen_)
    check_close(
        lora_forward(
            xx_, base_.weight.detach(), layer_.lora_A.detach(), layer_.lora_B.detach(), alpha_
        ),
        layer_(xx_).detach(),
        f"against llmcourse LoRALinear (x {shape_}, r={r_}, alpha={alpha_})",
        atol=1e-5,
    )
A_g = A_.clone().requires_grad_(True)
B_g = B_.clone().requires_grad_(True)
lora_forward(x_, W_, A_g, B_g, 16.0).sum().backward()
check_close(
    B_g.grad,
    8.0 * (x_ @ A_.t()).sum(0).expand(4, 2),
    "gradient with respect to B flows through your forward",
)
### END HIDDEN TESTS

# %% [markdown]
# The library's `LoRALinear` wraps any Linear layer this way (and a quantized one, which is
# QLoRA). It starts from the pretrained layer exactly, and merging folds the update into the
# weight without changing the output:

# %%
torch.manual_seed(1)
dense = torch.nn.Linear(64, 32, bias=False)
adapted = LoRALinear(copy.deepcopy(dense), r=4, alpha=8)
x_demo = torch.randn(3, 64)
print(
    "same output as the frozen layer at initialisation:",
    torch.equal(adapted(x_demo), dense(x_demo)),
)
with torch.no_grad():
    adapted.lora_B.normal_()  # pretend training moved B
before_merge = adapted(x_demo)
adapted.merge()
print(
    "max |difference| after merging:", f"{(adapted(x_demo) - before_merge).abs().max().item():.1e}"
)
adapted.unmerge()
print("trainable:", [n for n, p in adapted.named_parameters() if p.requires_grad])

# %% [markdown]
# ### Exercise 2 (worked numbers): how many parameters does LoRA train?
#
# One adapted matrix of shape $d_\text{out}\times d_\text{in}$ adds $A$ ($r \times d_\text{in}$)
# and $B$ ($d_\text{out} \times r$): $r\,(d_\text{in} + d_\text{out})$ parameters, instead of
# $d_\text{in} d_\text{out}$ for the full matrix. For $d = 4096$ and $r = 8$:
# $8 \cdot (4096 + 4096) = 65{,}536$, against $16{,}777{,}216$ for the matrix itself, 256 times
# fewer.
#
# A LLaMA-7B-sized model has 32 layers of width 4096; adapting the four attention projections
# $W_q, W_k, W_v, W_o$ (each $4096 \times 4096$) of every layer at $r = 8$ trains
# $32 \cdot 4 \cdot 65{,}536 = 8{,}388{,}608$ parameters: about 0.12% of its 6.7 billion.
#
# Write `lora_params(d_in, d_out, r)` (one matrix) and
# `lora_params_attention(n_layer, d_model, r)` (the four square attention projections of every
# layer), both returning Python ints.


# %% nbgrader={"grade": false, "grade_id": "lora_params", "locked": false, "schema_version": 3, "solution": true, "task": false}
def lora_params(d_in: int, d_out: int, r: int) -> int:
    """Trainable parameters LoRA adds to one (d_out, d_in) matrix at rank r."""
    ### BEGIN SOLUTION
    return r * (d_in + d_out)
    ### END SOLUTION


def lora_params_attention(n_layer: int, d_model: int, r: int) -> int:
    """LoRA parameters on W_q, W_k, W_v, W_o (each d_model x d_model) of every layer."""
    ### BEGIN SOLUTION
    return n_layer * 4 * lora_params(d_model, d_model, r)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "lora_params_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check_equal(
    lora_params(4096, 4096, 8), 65_536, "LoRA parameters of one 4096 x 4096 matrix at r = 8"
)
check_close(
    lora_params_attention(32, 4096, 8),
    8_388_608,
    "LoRA r = 8 on q, k, v, o of 32 layers of width 4096",
    atol=0,
    rtol=0,
    hints={
        "counted only A or only B": 4_194_304,
        "counted one matrix per layer instead of four": 2_097_152,
        "counted the full matrices instead of the adapters": 32 * 4 * 4096 * 4096,
    },
)
### BEGIN HIDDEN TESTS
check_close(
    lora_params(768, 2304, 4),
    4 * (768 + 2304),
    "a rectangular matrix (GPT-2's fused qkv, r = 4)",
    atol=0,
    rtol=0,
    hints={"assumed a square matrix": 2 * 4 * 768},
)
check_equal(
    lora_params(4096, 11008, 16),
    lib_lora_param_count(4096, 11008, 16),
    "against llmcourse.finetune.lora_param_count",
)
check_equal(lora_params_attention(4, 128, 8), 4 * 4 * 8 * 256, "4 layers of width 128, r = 8")
check_equal(type(lora_params_attention(2, 64, 2)), int, "type of the returned count")
### END HIDDEN TESTS

# %% [markdown]
# ## 4. Quantization: storing weights in fewer bits
#
# LoRA shrinks what is *trained*; the frozen weights still take 2 or 4 bytes each. Quantization
# stores them in 8 or 4 bits. Two mappings from floats to integers are used everywhere.
#
# **Affine (asymmetric, min-max) quantization** maps a range $[\ell, h]$ onto the integers
# $0 \dots 255$:
#
# $$
# s = \frac{h - \ell}{255}, \qquad z = \operatorname{round}\!\Big(\frac{-\ell}{s}\Big), \qquad
# q = \operatorname{clamp}\big(\operatorname{round}(x / s) + z,\ 0,\ 255\big), \qquad
# \hat x = (q - z)\, s .
# $$
#
# The *zero point* $z$ is the integer that stands for $0.0$, so zero (padding, ReLU outputs) is
# exactly representable. Worked example: $x = 0.34567$ on $[-1, 1]$. Then
# $s = 2/255 \approx 0.0078431$, $z = \operatorname{round}(127.5) = 128$, $x/s = 44.07$, so
# $q = 44 + 128 = 172$, and $\hat x = (172 - 128) \cdot 2/255 = 0.345098$. The error,
# $0.00057$, is below half a step ($s/2 = 0.0039$), as it must be for any value in range.
#
# **Absmax (symmetric) quantization** to int8 uses no zero point: $s = \max|x| / 127$,
# $q = \operatorname{round}(x / s) \in [-127, 127]$, $\hat x = q\,s$. It wastes a little range
# when the values are not symmetric, but weights are roughly symmetric around zero, and the
# dequantization is a single multiplication.
#
# ### Exercise 3 (worked numbers): affine uint8
#
# Write `affine_quantize(x, lo, hi)` returning `(q, scale, zero_point)`, with `q` a `uint8`
# tensor of `x`'s shape, `scale` a float and `zero_point` an int, using the formulas above
# (assume $\ell < 0 < h$; values outside the range are clamped), and
# `affine_dequantize(q, scale, zero_point)` returning float32 values. Use `torch.round` (and
# Python's `round` for the zero point).


# %% nbgrader={"grade": false, "grade_id": "affine_quantize", "locked": false, "schema_version": 3, "solution": true, "task": false}
def affine_quantize(x: torch.Tensor, lo: float, hi: float) -> tuple[torch.Tensor, float, int]:
    """Asymmetric uint8 quantization of x over [lo, hi]: (q, scale, zero_point)."""
    ### BEGIN SOLUTION
    scale = (hi - lo) / 255
    zero_point = int(round(-lo / scale))
    q = torch.clamp(torch.round(x / scale) + zero_point, 0, 255).to(torch.uint8)
    return q, scale, zero_point
    ### END SOLUTION


def affine_dequantize(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """Float32 values (q - zero_point) * scale."""
    ### BEGIN SOLUTION
    return (q.to(torch.float32) - zero_point) * scale
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "affine_quantize_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
q_, s_, z_ = affine_quantize(torch.tensor([0.34567]), -1.0, 1.0)
check_close(s_, 2 / 255, "scale for the range [-1, 1]", atol=1e-9)
check_equal(z_, 128, "zero point for the range [-1, 1] (round(127.5) = 128)")
check_equal(q_.dtype, torch.uint8, "dtype of the quantized values")
check_close(
    q_,
    [172],
    "0.34567 quantized on [-1, 1]",
    atol=0,
    hints={
        "zero point truncated to 127 instead of rounded": [171],
    },
)
check_close(affine_dequantize(q_, s_, z_), [0.345098], "172 dequantized back", atol=1e-6)
### BEGIN HIDDEN TESTS
gen_ = torch.Generator().manual_seed(3)
for lo_, hi_ in [(-1.0, 1.0), (-0.3, 2.5), (-4.0, 0.5)]:
    xs_ = (torch.rand(200, generator=gen_) * 1.2 - 0.1) * (
        hi_ - lo_
    ) + lo_  # some values out of range
    ref_ = quantize_affine_uint8(xs_, lo_, hi_)
    q2_, s2_, z2_ = affine_quantize(xs_, lo_, hi_)
    check_equal(z2_, ref_.zero_point, f"zero point for [{lo_}, {hi_}] against llmcourse")
    check_close(
        q2_,
        ref_.data,
        f"quantized values for [{lo_}, {hi_}] (with clamping) against llmcourse",
        atol=0,
    )
    check_close(
        affine_dequantize(q2_, s2_, z2_),
        ref_.dequantize(),
        f"dequantized values for [{lo_}, {hi_}]",
        atol=1e-6,
    )
check_equal(
    tuple(affine_quantize(torch.zeros(2, 3), -1.0, 1.0)[0].shape),
    (2, 3),
    "shape of q for a (2, 3) input",
)
check_close(
    affine_dequantize(*affine_quantize(torch.zeros(4), -0.7, 1.3)),
    torch.zeros(4),
    "zero must come back exactly",
    atol=0,
)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 4 (worked numbers): absmax int8
#
# Write `absmax_int8(x)` returning `(q, scale)`: `q` an `int8` tensor and `scale` a Python float,
# with one scale for the whole tensor, $s = \max|x|/127$ and $q = \operatorname{round}(x/s)$.
# For $x = (0.5, -1.27, 0, 0.3)$: $s = 0.01$ and $q = (50, -127, 0, 30)$. An all-zero tensor
# must not divide by zero: use $s = 1$ then.


# %% nbgrader={"grade": false, "grade_id": "absmax_int8", "locked": false, "schema_version": 3, "solution": true, "task": false}
def absmax_int8(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Symmetric int8 quantization with one scale: (q int8, scale)."""
    ### BEGIN SOLUTION
    absmax = float(x.abs().max()) if x.numel() else 0.0
    scale = absmax / 127 if absmax > 0 else 1.0
    q = torch.clamp(torch.round(x / scale), -127, 127).to(torch.int8)
    return q, scale
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "absmax_int8_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
q_, s_ = absmax_int8(torch.tensor([0.5, -1.27, 0.0, 0.3]))
check_close(
    s_,
    0.01,
    "scale of (0.5, -1.27, 0, 0.3)",
    atol=1e-9,
    hints={
        "divided by 128 instead of 127": 1.27 / 128,
        "divided by 255 (the uint8 range)": 1.27 / 255,
    },
)
check_equal(q_.dtype, torch.int8, "dtype of q")
check_close(q_, [50, -127, 0, 30], "quantized values", atol=0)
### BEGIN HIDDEN TESTS
gen_ = torch.Generator().manual_seed(4)
w_ = torch.randn(16, 32, generator=gen_) * 0.05
q2_, s2_ = absmax_int8(w_)
ref_ = quantize_int8_absmax(w_)
check_close(q2_, ref_.data, "a (16, 32) weight against llmcourse quantize_int8_absmax", atol=0)
check_close(s2_, ref_.scale, "its scale against llmcourse", atol=1e-9)
check_close(
    (q2_.float() * s2_ - w_).abs().max() <= w_.abs().max() / 254 + 1e-7,
    True,
    "error bound |x - q s| <= max|x| / 254",
)
qz_, sz_ = absmax_int8(torch.zeros(5))
check_close(qz_, torch.zeros(5), "an all-zero tensor quantizes to zeros (no NaN)", atol=0)
check_close(sz_, 1.0, "scale of an all-zero tensor")
### END HIDDEN TESTS

# %% [markdown]
# ### 4-bit NormalFloat (NF4)
#
# At 4 bits there are only 16 levels, and where they sit matters. Two observations lead to
# QLoRA's **NF4** {cite}`dettmers2023qlora`:
#
# 1. **Blockwise scales.** One outlier stretches a per-tensor scale and wastes levels for
#    everyone else. NF4 splits the weights into blocks of 64 and gives each block its own absmax
#    (so every block, divided by its absmax, lies in $[-1, 1]$).
# 2. **Levels at normal quantiles.** Pretrained weights are roughly normally distributed, so
#    evenly spaced levels put too many of them in the sparse tails. NF4 places its 16 values at
#    quantiles of a standard normal (rescaled to $[-1, 1]$, with an exact zero), so each level
#    is used about equally often.
#
# The per-block absmax constants cost 32 bits per 64 weights, 0.5 bit per weight. **Double
# quantization** stores them in 8 bits (with one float per 256 blocks): $4 + 8/64 +
# 32/(64\cdot 256) \approx 4.127$ bits per weight. During training and inference each layer's
# weights are **dequantized on the fly** to the compute dtype (bfloat16 on a GPU) for the
# matrix product; only storage is 4-bit.
#
# Here are the three schemes on the real weights of the course GPT (chapter 07): all its Linear
# layers, about 0.8 million weights. "Uniform 4-bit" uses the same blocks of 64 with 15 evenly
# spaced levels $\{-7, \dots, 7\}/7$ (absmax), so the only difference from NF4 is where the
# levels sit.

# %% tags=["demo"]
from llmcourse.finetune import (
    LINEAR_TYPES,
    NF4_CODE,
    apply_lora,
    build_sft_batch,
    count_trainable,
    format_bytes,
    load_adapter,
    merge_lora,
    model_nbytes,
    nf4_bits_per_param,
    prepare_qlora,
    quantize_nf4,
    save_adapter,
    soft_target_loss,
    training_memory_bytes,
)
from llmcourse.data import load_text
from llmcourse.generation import generate
from llmcourse.hub import load_hf_gpt2, load_pretrained
from llmcourse.optim import AdamW, clip_grad_norm, lr_at

base_model, tokenizer = load_pretrained("gpt-shakespeare-char")
base_model.eval()
linear_weights = {
    n: m.weight.detach() for n, m in base_model.named_modules() if isinstance(m, LINEAR_TYPES)
}
n_linear = sum(w.numel() for w in linear_weights.values())
print(
    f"course GPT: {base_model.num_parameters():,} parameters, {len(linear_weights)} Linear layers "
    f"holding {n_linear:,} weights"
)
glue("n_params_base", f"{base_model.num_parameters():,}")


def uniform4_blockwise(w: torch.Tensor, block: int = 64) -> torch.Tensor:
    """Dequantized absmax 4-bit (levels -7..7) in blocks of ``block``: same shape as w."""
    flat = w.reshape(-1, block)  # (n_blocks, block); our layers are multiples of 64
    scale = flat.abs().amax(1, keepdim=True) / 7
    return (torch.round(flat / scale).clamp(-7, 7) * scale).reshape(w.shape)


schemes = {
    "int8 absmax\n(per tensor)": (lambda w: quantize_int8_absmax(w).dequantize(), 8 + 32 / 16384),
    "uniform 4-bit\n(blocks of 64)": (uniform4_blockwise, 4 + 32 / 64),
    "NF4\n(blocks of 64, DQ)": (lambda w: quantize_nf4(w).dequantize(), nf4_bits_per_param()),
}
errors = {}
for name, (roundtrip, bits) in schemes.items():
    se = sum(float((roundtrip(w) - w).pow(2).sum()) for w in linear_weights.values())
    errors[name] = (math.sqrt(se / n_linear), bits)
weight_rms = math.sqrt(sum(float(w.pow(2).sum()) for w in linear_weights.values()) / n_linear)
for name, (rmse, bits) in errors.items():
    print(
        f"{name.replace(chr(10), ' '):38s} {bits:5.2f} bits/weight   RMSE {rmse:.2e}  ({rmse / weight_rms:.1%} of the weights' RMS)"
    )
nf4_rmse, u4_rmse, i8_rmse = (
    errors[k][0] for k in (list(schemes)[2], list(schemes)[1], list(schemes)[0])
)
glue("nf4_vs_u4", f"{u4_rmse / nf4_rmse:.2f}")
glue("nf4_rel", f"{nf4_rmse / weight_rms:.1%}")
glue("i8_rel", f"{i8_rmse / weight_rms:.1%}")
glue("nf4_bits", f"{nf4_bits_per_param():.3f}")

# %% tags=["demo"] mystnb={"image": {"alt": "Left: histogram of the course GPT's Linear weights divided by their block absmax, with the 16 NF4 levels crowded near zero and the 15 uniform 4-bit levels evenly spaced. Right: root-mean-square quantization error of int8, uniform 4-bit and NF4 on the same weights, on a log scale; NF4 is below uniform 4-bit and well above int8."}}
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1.5, 1]})
normalized = torch.cat(
    [
        (w.reshape(-1, 64) / w.reshape(-1, 64).abs().amax(1, keepdim=True)).reshape(-1)
        for w in linear_weights.values()
    ]
)
ax1.hist(
    normalized.numpy(), bins=120, color="lightgray", density=True, label="weights / block absmax"
)
for i, v in enumerate(NF4_CODE.tolist()):
    ax1.axvline(v, color="tab:red", lw=1, ymax=0.95, label="NF4 levels" if i == 0 else None)
for i, v in enumerate(np.arange(-7, 8) / 7):
    ax1.axvline(
        v,
        color="tab:blue",
        lw=1,
        ls=":",
        ymax=0.6,
        label="uniform 4-bit levels" if i == 0 else None,
    )
ax1.set(xlabel="normalized weight", ylabel="density", title="where the 4-bit levels sit")
ax1.legend(fontsize=8)
names = list(errors)
ax2.bar(range(3), [errors[n][0] for n in names], color=["tab:green", "tab:blue", "tab:red"])
ax2.set_xticks(range(3), names, fontsize=8)
ax2.set(
    yscale="log", ylabel="RMSE of dequantized weights", title="error on the course GPT's weights"
)
for i, n in enumerate(names):
    ax2.text(i, errors[n][0] * 1.1, f"{errors[n][1]:.2f} bits", ha="center", fontsize=8)
ax2.set_ylim(top=max(e for e, _ in errors.values()) * 1.6)
plt.tight_layout()
plt.show()

# %% [markdown]
# On the same budget of about four bits, NF4's error is {glue:text}`nf4_vs_u4` times smaller
# than that of evenly spaced levels, because its levels are dense where the weights are dense.
# Its error is {glue:text}`nf4_rel` of the weights' typical size, against {glue:text}`i8_rel`
# for int8, at {glue:text}`nf4_bits` bits per weight: 4-bit weights are visibly approximate.
# QLoRA's answer is to let the LoRA adapters, trained in full precision *on top of* the
# quantized model, absorb part of that error during fine-tuning.
#
# ## 5. Instruction tuning: chat templates and loss masking
#
# **Instruction tuning** (supervised fine-tuning, SFT) trains a model on (instruction, response)
# pairs so that it answers instead of merely continuing text
# {cite}`wei2022flan,ouyang2022instructgpt`. Two ingredients:
#
# 1. A **chat template** turns a conversation into one string with role markers. The course
#    uses printable ASCII markers, so that even a character-level model can read them:
#
#    ```text
#    <|user|>
#    Uppercase: honour<|end|>
#    <|assistant|>
#    HONOUR<|end|>
#    ```
#
#    At inference the prompt ends with `<|assistant|>\n` and generation stops at `<|end|>`.
# 2. **Loss masking.** The prompt is given, not predicted: training the model to reproduce
#    user turns would waste capacity on them and teach it to write questions. So the targets of
#    prompt tokens are set to $-100$, the `ignore_index` of the cross-entropy, and only the
#    response tokens (including its `<|end|>`, so the model learns to stop) are supervised.
#
# With the next-token convention, the model input is `tokens[:-1]` and the target at position
# $t$ is `tokens[t + 1]`. A target is masked when *the token it asks for* belongs to the
# prompt. The last prompt character (the newline after `<|assistant|>`) therefore has the
# first response character as its target, which is supervised: that is the prediction that
# starts the answer.
#
# ```text
# tokens     p0   p1   p2   r0   r1   r2          (p: prompt, r: response)
# input      p0   p1   p2   r0   r1
# target    -100 -100   r0   r1   r2
# ```
#
# ### Exercise 5: SFT targets with the prompt masked
#
# Write `sft_targets(prompt_ids, response_ids)`: given the token ids of the formatted prompt and
# of the response (both non-empty lists), return `(input_ids, targets)`, two 1-D `long` tensors
# of length `len(prompt_ids) + len(response_ids) - 1`, with `IGNORE_INDEX` (-100) wherever the
# target token belongs to the prompt.


# %% nbgrader={"grade": false, "grade_id": "sft_targets", "locked": false, "schema_version": 3, "solution": true, "task": false}
def sft_targets(
    prompt_ids: list[int], response_ids: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token (input_ids, targets), each (T,), with targets of prompt tokens = -100."""
    ### BEGIN SOLUTION
    tokens = torch.tensor(list(prompt_ids) + list(response_ids), dtype=torch.long)
    supervised = torch.tensor([False] * len(prompt_ids) + [True] * len(response_ids))
    input_ids = tokens[:-1]
    targets = torch.where(supervised[1:], tokens[1:], torch.full_like(tokens[1:], IGNORE_INDEX))
    return input_ids, targets
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "sft_targets_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
inp_, tgt_ = sft_targets([10, 11, 12], [20, 21, 22])
check_equal(inp_.dtype, torch.long, "dtype of input_ids")
check_close(
    inp_,
    [10, 11, 12, 20, 21],
    "input_ids for prompt [10, 11, 12] and response [20, 21, 22]",
    atol=0,
    hints={"forgot to drop the last token from the input": lambda g: g.size == 6},
)
check_close(
    tgt_,
    [-100, -100, 20, 21, 22],
    "targets (prompt targets masked with -100)",
    atol=0,
    hints={
        "masked by the position of the input token instead of the target token (off by one)": [
            -100,
            -100,
            -100,
            21,
            22,
        ],
        "did not mask the prompt": [11, 12, 20, 21, 22],
        "targets not shifted by one": [-100, -100, -100, 20, 21, 22][:5],
    },
)
### BEGIN HIDDEN TESTS
from llmcourse.tokenizers import CharTokenizer

char_tok_ = CharTokenizer.ascii()
for prompt_, answer_ in [("Uppercase: thee", "THEE"), ("Reverse: ab", "ba"), ("x", "y")]:
    p_text_, r_text_ = format_example(prompt_, answer_)
    ref_ = collate_sft([tokenize_prompt_response(p_text_, r_text_, char_tok_)])
    got_in_, got_tgt_ = sft_targets(char_tok_.encode(p_text_), char_tok_.encode(r_text_))
    check_close(
        got_in_,
        ref_.input_ids[0],
        f"input_ids for {prompt_!r} against llmcourse.finetune.collate_sft",
        atol=0,
    )
    check_close(
        got_tgt_,
        ref_.targets[0],
        f"targets for {prompt_!r} against llmcourse.finetune.collate_sft",
        atol=0,
    )
inp1_, tgt1_ = sft_targets([5], [6])
check_close(tgt1_, [6], "a one-token prompt and a one-token response", atol=0)
### END HIDDEN TESTS

# %% [markdown]
# ## 6. Measured: full fine-tuning, LoRA and QLoRA on the course GPT
#
# The base model is chapter 07's character-level GPT (4 layers, width 128, about 0.8 million
# parameters, pretrained on Tiny Shakespeare). It has never seen a chat template. We generate
# an instruction dataset from its own corpus: **uppercase a word**. Every word of 3 to 7 letters
# in Tiny Shakespeare becomes one example; a random set of words is held out, so the test
# measures whether the model learned the *skill* rather than memorised answers.
#
# The task is small enough to learn in seconds and not trivial for this model: it has to read
# the word after the instruction, copy it character by character, and map each lowercase
# letter to a different token, the uppercase one. Accuracy is an **exact match** of the greedy
# answer (up to `<|end|>`) on the held-out words.

# %% tags=["demo"]
# A model this small trains about as fast on one thread, and one thread is not slowed down
# by other programs competing for the second core.
torch.set_num_threads(1)
corpus = load_text("tinyshakespeare")
words = sorted({w.lower() for w in re.findall(r"[A-Za-z]+", corpus) if 3 <= len(w) <= 7})
random.Random(0).shuffle(words)
N_TEST = 100
test_words, train_words = words[:N_TEST], words[N_TEST:]


def task(word: str) -> tuple[str, str]:
    """One instruction example: (instruction, answer)."""
    return f"Uppercase: {word}", word.upper()


example_prompt, example_response = format_example(*task(train_words[0]))
print(f"{len(words):,} words: {len(train_words):,} for training, {len(test_words)} held out")
print("one training example, as the model sees it:\n" + example_prompt + example_response)
glue("n_train_words", f"{len(train_words):,}")
glue("n_test_words", f"{len(test_words)}")


@torch.no_grad()
def exact_match(model: torch.nn.Module, words_: list[str]) -> tuple[float, list[str]]:
    """Greedy answers to the held-out prompts: (exact-match accuracy, the answers)."""
    model.eval()
    by_length: dict[int, list[int]] = {}
    prompts = [format_example(*task(w))[0] for w in words_]
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    answers = [""] * len(words_)
    for rows in by_length.values():  # equal-length prompts decode together
        ids = torch.tensor([tokenizer.encode(prompts[i]) for i in rows])  # (B, n)
        out = generate(
            model, ids, max_new_tokens=16, temperature=0.0, stop_sequences=[tokenizer.encode(END)]
        )
        for i, row in zip(rows, out[:, ids.shape[1] :].tolist(), strict=True):
            answers[i] = tokenizer.decode(row).split(END)[0]
    accuracy = sum(a == task(w)[1] for a, w in zip(answers, words_, strict=True)) / len(words_)
    return accuracy, answers


base_accuracy, base_answers = exact_match(base_model, test_words)
print(
    f"base model: exact match {base_accuracy:.0%}; e.g. {test_words[0]!r} -> {base_answers[0][:40]!r}"
)
glue("acc_base", f"{base_accuracy:.0%}")

# %% [markdown]
# The base model continues the prompt with Shakespeare-like text: it does not know the
# template, the task, or when to stop. Now three ways of fine-tuning it, each for the same
# number of steps on the same batches (16 examples per step, AdamW, linear warm-up and cosine
# decay, gradient clipping):
#
# - **full fine-tuning**: every parameter trains;
# - **LoRA**: adapters of rank $r$ on all four Linear layers of every block (`qkv`, `out`,
#   `fc1`, `fc2`); everything else, embeddings and norms included, is frozen;
# - **QLoRA**: the same, but the frozen Linear weights are first stored in NF4 with double
#   quantization (`prepare_qlora`).
#
# LoRA's learning rate is higher than full fine-tuning's, as is usual: the adapters start at
# zero and must travel further.

# %% tags=["demo"]
STEPS, BATCH = 400, 16
LORA_RANK, LORA_ALPHA = 8, 32
TARGETS = ["qkv", "out", "fc1", "fc2"]
LR = {"full fine-tuning": 2e-3, "LoRA": 5e-3, "QLoRA": 5e-3}


def finetune(model: torch.nn.Module, lr: float, seed: int = 1) -> tuple[list[float], AdamW, float]:
    """Train the trainable parameters of ``model`` on the task: (losses, optimizer, seconds)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    rng = random.Random(seed)  # the same batches for every method
    losses = []
    model.train()
    start = time.perf_counter()
    for step in range(STEPS):
        batch = build_sft_batch([task(rng.choice(train_words)) for _ in range(BATCH)], tokenizer)
        loss = model(batch.input_ids, batch.targets).loss  # mean over supervised tokens only
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}")
        optimizer.zero_grad()
        loss.backward()
        clip_grad_norm(params, 1.0)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(
                step, max_lr=lr, min_lr=0.1 * lr, warmup_steps=20, decay_steps=STEPS
            )
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses, optimizer, time.perf_counter() - start


def optimizer_nbytes(optimizer: AdamW) -> int:
    """Bytes actually held by the optimizer's state tensors (Adam's two moments)."""
    return sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if torch.is_tensor(t)
    )


def build(method: str) -> torch.nn.Module:
    """A fresh copy of the base model, prepared for ``method``."""
    model = copy.deepcopy(base_model)
    if method == "LoRA":
        apply_lora(model, TARGETS, r=LORA_RANK, alpha=LORA_ALPHA)
    elif method == "QLoRA":
        prepare_qlora(model, TARGETS, r=LORA_RANK, alpha=LORA_ALPHA)
    return model


results = {}
for method in LR:
    torch.manual_seed(0)
    model = build(method)
    trainable = count_trainable(model).trainable
    estimate = training_memory_bytes(
        model
    )  # weights + grads + 2 Adam moments of the trainable ones
    losses, optimizer, seconds = finetune(model, LR[method])
    measured = (
        model_nbytes(model)
        + sum(
            p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None
        )
        + optimizer_nbytes(optimizer)
    )
    accuracy, answers = exact_match(model, test_words)
    results[method] = {
        "model": model,
        "losses": losses,
        "accuracy": accuracy,
        "answers": answers,
        "trainable": trainable,
        "weights": model_nbytes(model),
        "estimate": estimate,
        "measured": measured,
        "seconds": seconds,
    }
    print(f"{method:17s} {seconds:5.1f} s  final loss {losses[-1]:.3f}  exact match {accuracy:.0%}")

# %% tags=["demo"]
n_base = base_model.num_parameters()
print(
    f"{'method':17s} {'trainable':>10s} {'share':>7s} {'weights':>10s} {'train memory':>13s} {'measured':>10s} {'accuracy':>9s}"
)
print(
    f"{'base model':17s} {'-':>10s} {'-':>7s} {format_bytes(model_nbytes(base_model)):>10s} {'-':>13s} {'-':>10s} {base_accuracy:9.0%}"
)
for method, r in results.items():
    print(
        f"{method:17s} {r['trainable']:10,} {r['trainable'] / n_base:7.2%} {format_bytes(r['weights']):>10s} "
        f"{format_bytes(r['estimate']):>13s} {format_bytes(r['measured']):>10s} {r['accuracy']:9.0%}"
    )
for method, key in (("full fine-tuning", "full"), ("LoRA", "lora"), ("QLoRA", "qlora")):
    r = results[method]
    glue(f"acc_{key}", f"{r['accuracy']:.0%}")
    glue(f"share_{key}", f"{r['trainable'] / n_base:.1%}")
    glue(f"trainable_{key}", f"{r['trainable']:,}")
    glue(f"mem_{key}", format_bytes(r["estimate"]))
    glue(f"weights_{key}", format_bytes(r["weights"]))
    glue(f"seconds_{key}", f"{r['seconds']:.0f}")
glue("steps", f"{STEPS}")
glue("lora_rank", f"{LORA_RANK}")
glue(
    "mem_ratio_lora", f"{results['full fine-tuning']['estimate'] / results['LoRA']['estimate']:.1f}"
)
glue(
    "mem_ratio_qlora",
    f"{results['full fine-tuning']['estimate'] / results['QLoRA']['estimate']:.1f}",
)
example_word = test_words[1]
for method, r in results.items():
    print(f"{method:17s} {example_word!r} -> {r['answers'][1]!r}")

# %% tags=["demo"] mystnb={"image": {"alt": "Left: training loss on the masked response tokens against step for full fine-tuning, LoRA and QLoRA; full fine-tuning falls fastest and furthest, LoRA and QLoRA level off well above it. Right: bars of the estimated training memory (weights, gradients and Adam states) of each method, with the exact-match accuracy on held-out words written above each bar."}}
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
colors = {"full fine-tuning": "tab:blue", "LoRA": "tab:orange", "QLoRA": "tab:red"}
for method, r in results.items():
    smooth = np.convolve(r["losses"], np.ones(10) / 10, mode="valid")
    ax1.plot(r["losses"], color=colors[method], alpha=0.25)
    ax1.plot(np.arange(9, len(r["losses"])), smooth, color=colors[method], label=method)
ax1.set(
    xlabel="step", ylabel="cross-entropy on response tokens", yscale="log", title="fine-tuning loss"
)
ax1.legend()
methods = list(results)
memory_kib = [results[m]["estimate"] / 1024 for m in methods]
ax2.bar(range(3), memory_kib, color=[colors[m] for m in methods])
for i, m in enumerate(methods):
    ax2.text(
        i, memory_kib[i] * 1.02, f"accuracy {results[m]['accuracy']:.0%}", ha="center", fontsize=9
    )
ax2.set_xticks(range(3), methods)
ax2.set(
    ylabel="KiB (weights + grads + Adam)",
    title=f"training memory (base model: {base_accuracy:.0%})",
    ylim=(0, max(memory_kib) * 1.15),
)
plt.tight_layout()
plt.show()

# %% [markdown]
# | | trainable parameters | share of the model | training memory (estimate) | held-out exact match |
# |---|---|---|---|---|
# | base model | none | | | {glue:text}`acc_base` |
# | full fine-tuning | {glue:text}`trainable_full` | {glue:text}`share_full` | {glue:text}`mem_full` | {glue:text}`acc_full` |
# | LoRA, $r =$ {glue:text}`lora_rank` | {glue:text}`trainable_lora` | {glue:text}`share_lora` | {glue:text}`mem_lora` | {glue:text}`acc_lora` |
# | QLoRA, $r =$ {glue:text}`lora_rank` | {glue:text}`trainable_qlora` | {glue:text}`share_qlora` | {glue:text}`mem_qlora` | {glue:text}`acc_qlora` |
#
# After {glue:text}`steps` steps, the base model's {glue:text}`acc_base` becomes
# {glue:text}`acc_full` with full fine-tuning, {glue:text}`acc_lora` with LoRA and
# {glue:text}`acc_qlora` with QLoRA, on words none of them saw in training. LoRA trains
# {glue:text}`share_lora` of the parameters and needs {glue:text}`mem_ratio_lora` times less
# training memory than full fine-tuning; QLoRA, whose model (4-bit Linear weights plus
# full-precision embeddings, norms and adapters) takes {glue:text}`weights_qlora` instead of
# {glue:text}`weights_lora`, saves a factor of
# {glue:text}`mem_ratio_qlora`. The "measured" column of the printed table adds up the bytes of
# the tensors that really exist after training (weights, buffers, `.grad` tensors and the
# optimizer's moment tensors) and agrees with the estimate.
#
# The loss curves show the difference in *how* they learn: the adapters start more slowly
# and stay above full fine-tuning's loss for most of the run, yet end at nearly the same
# held-out accuracy. Differences of a few points are within the noise of this experiment: each
# test word is one point, and the adapters are still improving when the run stops. With fewer
# steps the adapters fall clearly behind (set `STEPS = 200` and see). With
# large models LoRA typically matches full fine-tuning {cite}`hu2022lora`, and QLoRA matches
# 16-bit LoRA {cite}`dettmers2023qlora`.
#
# Why do the adapters' losses level off near {glue:text}`lora_loss_end` while full
# fine-tuning's keeps falling? The next cell splits the loss on held-out examples by the
# character being predicted: the answer's letters, and the characters of the `<|end|>` marker.

# %% tags=["demo"]
marker_ids = {tokenizer.encode(c)[0] for c in "<|>"}
held_out = build_sft_batch([task(w) for w in test_words], tokenizer)
supervised = held_out.targets != IGNORE_INDEX  # (B, T)
is_marker = torch.isin(held_out.targets, torch.tensor(sorted(marker_ids))) & supervised
print(f"'<', '|', '>' in Tiny Shakespeare: {sum(corpus.count(c) for c in '<|>')} times")
print(f"{'method':17s} {'loss on marker chars':>21s} {'loss on other answer chars':>27s}")
marker_loss = {}
with torch.no_grad():
    for method, r in results.items():
        logits = r["model"](held_out.input_ids).logits  # (B, T, V)
        nll = F.cross_entropy(
            logits.transpose(1, 2), held_out.targets.clamp(min=0), reduction="none"
        )  # (B, T)
        marker_loss[method] = nll[is_marker].mean().item()
        other = nll[supervised & ~is_marker].mean().item()
        print(f"{method:17s} {marker_loss[method]:21.3f} {other:27.3f}")
unit_rows = F.normalize(base_model.tok_emb.weight.detach(), dim=1)  # (V, C)
unseen = [i for i in range(tokenizer.vocab_size) if tokenizer.decode([i]) not in corpus]
seen = [i for i in range(tokenizer.vocab_size) if i not in unseen]
cos_unseen = unit_rows[unseen] @ unit_rows[unseen].t()  # (U, U)
marker_cos = (unit_rows[sorted(marker_ids)] @ unit_rows[sorted(marker_ids)].t()).min().item()
letter_ids = [tokenizer.encode(c)[0] for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
letter_cos = (unit_rows[letter_ids] @ unit_rows[letter_ids].t()).fill_diagonal_(-1).max().item()
print(
    f"{len(unseen)} characters never occur in the corpus: {''.join(tokenizer.decode([i]) for i in unseen)!r}"
)
print(
    f"cosine similarity of their embedding rows: at least {cos_unseen.min().item():.3f}; "
    f"of '<', '|', '>': at least {marker_cos:.3f}; of two capital letters: at most {letter_cos:.3f}"
)
glue("lora_loss_end", f"{np.mean(results['LoRA']['losses'][-20:]):.2f}")
glue("marker_loss_lora", f"{marker_loss['LoRA']:.2f}")
glue("marker_loss_full", f"{marker_loss['full fine-tuning']:.3f}")
glue("n_unseen", f"{len(unseen)}")
glue("unseen_cos", f"{cos_unseen.min().item():.3f}")
glue("letter_cos", f"{letter_cos:.2f}")

# %% [markdown]
# The characters `<`, `|` and `>` never occur in Tiny Shakespeare. During pretraining the
# only gradient their embedding rows received was "less likely, everywhere", the same push for
# all {glue:text}`n_unseen` unseen characters, so their rows ended up pointing in almost the
# same direction (cosine similarity at least {glue:text}`unseen_cos`, against at most
# {glue:text}`letter_cos` between two capital letters). The course GPT ties its output layer
# to the embedding: the logit of a character is the dot product of the final hidden state with
# its row. With the embedding frozen, LoRA and QLoRA can make "one of the unseen characters"
# likely, and greedy decoding still picks the right one by a small margin (hence the high
# accuracy), but they can hardly separate `<` from `|` from `>`: the loss on those characters
# stays near {glue:text}`marker_loss_lora` nats, against {glue:text}`marker_loss_full` for full
# fine-tuning, which trains the rows apart. Large models meet the same problem when special
# tokens are added for a chat template: their rows start untrained, and PEFT recipes then
# also train the embedding and output rows (in Hugging Face PEFT, `modules_to_save` or
# `trainable_token_indices`).
#
# Two cautions in reading these numbers. First, on a model this small the savings are modest,
# because embeddings and norms (not quantized, not adapted) are a large share of it, and a LoRA
# rank of {glue:text}`lora_rank` on a width of 128 is not very "low"; at $d = 4096$ the same recipe trains
# a fraction of a percent of the weights. Second, the memory counted here leaves out
# activations, which LoRA does not reduce (the forward pass is the same size or larger);
# for long sequences they dominate, which is why QLoRA also uses gradient checkpointing and
# paged optimizer states.
#
# ### Adapters are small files
#
# Only the adapter needs to be saved. It loads into a fresh copy of the base model, and
# merging it gives a plain GPT whose outputs are unchanged:

# %% tags=["demo"]
lora_model = results["LoRA"]["model"]
with tempfile.TemporaryDirectory() as folder:
    save_adapter(lora_model, folder)
    adapter_bytes = sum(f.stat().st_size for f in Path(folder).iterdir())
    restored = copy.deepcopy(base_model)
    load_adapter(restored, folder)
probe = torch.tensor([tokenizer.encode(format_example(*task(test_words[0]))[0])])
with torch.no_grad():
    same = torch.allclose(restored(probe).logits, lora_model(probe).logits, atol=1e-6)
    unmerged_logits = restored(probe).logits
    merge_lora(restored)
    merge_gap = (restored(probe).logits - unmerged_logits).abs().max().item()
print(
    f"adapter files: {format_bytes(adapter_bytes)} (the full model: {format_bytes(model_nbytes(base_model))})"
)
print(f"reloaded adapter reproduces the logits: {same}; max change after merging: {merge_gap:.1e}")
glue("adapter_size", format_bytes(adapter_bytes))
glue("model_size", format_bytes(model_nbytes(base_model)))

# %% [markdown]
# The adapter takes {glue:text}`adapter_size` on disk, against {glue:text}`model_size` for the
# model: one base model can serve many tasks, each a small file.
#
# ## 7. Knowledge distillation
#
# Fine-tuning adapts a model; **distillation** {cite}`hinton2015distilling` makes a smaller
# one. A small *student* is trained to match the output distribution of a large *teacher*,
# softened by a temperature $T > 1$ so that the teacher's ranking of the wrong answers (which
# wrong answers are plausible) carries information:
#
# $$
# \mathcal{L} = \alpha\, T^2\, \mathrm{KL}\big(\operatorname{softmax}(z_t / T)\,\big\|\,
# \operatorname{softmax}(z_s / T)\big) + (1 - \alpha)\, \mathrm{CE}(z_s, y).
# $$
#
# The factor $T^2$ is not optional. The gradient of the KL term with respect to the student's
# logits is $(p_s^{(T)} - p_t^{(T)})/T$, and the softened probabilities differ by about $1/T$
# times their logit differences, so without $T^2$ the soft term's gradient shrinks like
# $1/T^2$ and is silently switched off at high temperature. The library's
# `distillation_loss` includes it; the cell below measures the gradient size with and without.

# %% tags=["demo"]
torch.manual_seed(0)
teacher_logits = torch.randn(64, 97) * 3
student_logits = torch.randn(64, 97, requires_grad=True)
print(f"{'T':>4s} {'grad norm with T^2':>20s} {'without':>10s}")
for temperature in (1.0, 2.0, 4.0, 8.0):
    grad_with = torch.autograd.grad(
        soft_target_loss(student_logits, teacher_logits, temperature), student_logits
    )[0]
    grad_without = grad_with / temperature**2
    print(f"{temperature:4.0f} {grad_with.norm().item():20.4f} {grad_without.norm().item():10.4f}")

# %% [markdown]
# ## 8. The same recipe on real GPT-2 weights
#
# Nothing above depends on the model's size. The next cell loads the 124-million-parameter
# GPT-2 {cite}`radford2019gpt2` from Hugging Face into the course's `GPT` class and puts LoRA
# adapters on its attention projections. It needs the weights (about 500 MB), so it runs only
# when they are cached or the Hugging Face Hub can be reached; otherwise it says so and moves
# on.


# %% tags=["demo"]
hf_gpt2, reason = load_hf_gpt2()  # never raises: (None, why) offline
if hf_gpt2 is None:
    print(f"Skipping the GPT-2 demo: {reason}.")
else:
    from llmcourse.models.gpt import GPT

    gpt2 = GPT.from_hf_gpt2(hf_gpt2).eval()
    ids = torch.tensor(
        [[464, 2068, 7586, 21831, 18045, 625, 262]]
    )  # "The quick brown fox jumps over the"
    with torch.no_grad():
        reference = hf_gpt2(ids).logits
        before = gpt2(ids).logits
    wrapped = apply_lora(gpt2, ["qkv", "out"], r=8, alpha=16)
    with torch.no_grad():
        after = gpt2(ids).logits
    print(f"GPT-2: {len(wrapped)} Linear layers adapted; {count_trainable(gpt2)}")
    print(
        f"max |logit difference| course GPT vs Hugging Face: {(before - reference).abs().max().item():.1e}; "
        f"LoRA at initialisation changes nothing: {(after - before).abs().max().item():.1e}"
    )
    print(
        f"LoRA r = 8 on q, k, v, o of 12 layers of width 768: {12 * (lib_lora_param_count(768, 3 * 768, 8) + lib_lora_param_count(768, 768, 8)):,} "
        "parameters (GPT-2 fuses q, k, v into one 768 x 2304 matrix)"
    )

# %% [markdown]
# ```{admonition} Common misconceptions
# :class: warning
#
# - **"LoRA adds $BA$ to the weight."** It adds $\tfrac{\alpha}{r}BA$, and the initialisation
#   is part of the method: $B = 0$, $A$ random, so training starts from the pretrained model
#   exactly. Drop the scaling and the effective learning rate changes whenever you change $r$.
# - **Library names.** In Hugging Face PEFT the scaling is `LoraConfig(lora_alpha=...)`; there
#   is no `alpha` argument (passing it raises a `TypeError`). LoRA's `bias` option is a string,
#   usually `bias="none"`. The task types are `SEQ_CLS`, `SEQ_2_SEQ_LM`, `CAUSAL_LM`,
#   `TOKEN_CLS`, `QUESTION_ANS` and `FEATURE_EXTRACTION`, and PEFT has no `AdapterConfig`.
#   4-bit loading with bitsandbytes is configured by `BitsAndBytesConfig(load_in_4bit=True,
#   bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
#   bnb_4bit_compute_dtype=torch.bfloat16)`.
# - **"QLoRA fine-tunes a 65B model in under 24 GB" / "QLoRA computes in 4 bits."** The paper's
#   headline is a 65-billion-parameter model on a single **48 GB** GPU. The weights are *stored*
#   in 4 bits and dequantized layer by layer to bfloat16 for every matrix product; the
#   arithmetic is not 4-bit.
# - **"GaLore cuts memory by 82.5% by quantizing the model."** GaLore projects *gradients* into
#   a low-rank subspace to shrink optimizer state; the 82.5% optimizer-memory figure is for its
#   8-bit variant, and it does not quantize the model weights.
# - **"Prompt tuning trains a few million parameters."** A soft prompt of 20 tokens at width
#   4096 is $20 \times 4096 = 81{,}920$ parameters.
# - **"Distillation is just KL between teacher and student."** At temperature $T$ the soft term
#   must be multiplied by $T^2$ (section 7), and the teacher must be a trained model: distilling
#   from an untrained head teaches noise.
# - **"Masking the prompt means masking the prompt's input positions."** It means masking
#   the *targets* that are prompt tokens. The last prompt position predicts the first answer
#   token and must be supervised; masking by input position is an off-by-one that the test of
#   Exercise 5 recognises.
# ```
#
# ## Summary
#
# You wrote the LoRA forward pass and counted its parameters (65,536 per $4096\times4096$ matrix
# at $r = 8$; 8,388,608 for the attention of a 7B model), quantized numbers with affine uint8 and
# absmax int8 and saw why NF4 beats evenly spaced 4-bit levels on real weights, and built SFT
# targets with the prompt masked. With the library (`llmcourse.finetune`: `apply_lora`,
# `prepare_qlora`, `build_sft_batch`, `save_adapter`, `training_memory_bytes`) you taught the
# course GPT a new instruction with full fine-tuning, LoRA and QLoRA and measured what each
# costs. Chapter 10's reader model was fine-tuned with the same SFT batches, and chapter 11
# continues from an SFT model to preference alignment.
#
# ## References
#
# {cite}`hu2022lora` (LoRA), {cite}`dettmers2023qlora` (QLoRA, NF4, double quantization),
# {cite}`dettmers2022llmint8` (int8 inference), {cite}`houlsby2019adapters` (adapters),
# {cite}`li2021prefix` (prefix tuning), {cite}`lester2021prompt` (prompt tuning),
# {cite}`benzaken2022bitfit` (BitFit), {cite}`wei2022flan` and {cite}`ouyang2022instructgpt`
# (instruction tuning), {cite}`hinton2015distilling` (distillation), {cite}`radford2019gpt2`
# (GPT-2). Full entries are on the [bibliography](../book/bibliography.md) page.
