# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 GPT: pretraining, decoding and scaling a decoder-only Transformer
#
# A GPT is the simplest large language model there is: a stack of Transformer blocks that
# reads a sequence of tokens and, at every position, predicts the next one. Train it on a lot
# of text and it can continue any prompt. This chapter trains one on Tiny Shakespeare, loads
# the course's fully trained version, and then works through everything that happens around
# the model: how a sampler turns its scores into text, why generation is slow and how a
# key/value cache fixes much of that, how large a model should be for a given budget, how a
# mixture of experts makes a model bigger without making it slower, and how training is split
# over several processes.
#
# **Learning objectives.** After this chapter you can
#
# 1. explain what the letters of GPT stand for and how a decoder-only, pre-norm model differs
#    from the encoder-decoder Transformer of chapter 06;
# 2. write masked multi-head self-attention from its weight matrices and show that no position
#    sees the future;
# 3. read a pretraining loss curve against a reference run and recognise a broken one;
# 4. turn next-token logits into a sampling distribution with temperature, top-k and top-p,
#    apply repetition, frequency and presence penalties, and run beam search;
# 5. write the attention step of a key/value cache, check it against full recomputation and
#    measure what it saves;
# 6. estimate training compute with $C \approx 6ND$ and size a model with the Chinchilla rule;
# 7. write a top-2 mixture-of-experts layer and count total and active parameters;
# 8. explain data-parallel training and verify that two processes take the same step as one.
#
# **How to use this notebook.** Cells marked *Exercise* are graded: replace
# `raise NotImplementedError()` with your code, then run the test cell below it. The visible
# tests tell you what was expected and what came back; hidden tests run at grading time.
# Demonstrations call the course library `llmcourse`, so they work before you solve anything.

# %%
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

import llmcourse
from llmcourse.checks import ExerciseFailure, check_close, check_equal, check_shape
from llmcourse.data import DataUnavailableError, RandomBatches, load_text
from llmcourse.display import glue
from llmcourse.generation import (
    apply_penalties,
    apply_temperature,
    beam_search_hypotheses,
    generate,
    top_k_filter,
    top_p_filter,
)
from llmcourse.hub import load_pretrained, pretrained_metadata
from llmcourse.models.gpt import GPT, GPTConfig, LMOutput
from llmcourse.nn import (
    LayerKVCache,
    MoEFeedForward,
    MultiHeadAttention,
    scaled_dot_product_attention,
)
from llmcourse.optim import AdamW, WarmupCosine, weight_decay_groups
from llmcourse.tokenizers import CharTokenizer
from llmcourse.train import Trainer, TrainerConfig

# The models here are small: one thread avoids the cost of handing each small matrix product to
# several threads, which dominates on a busy CPU.
torch.set_num_threads(1)
torch.manual_seed(0)
print("llmcourse", llmcourse.__version__, "| torch", torch.__version__)

# %% [markdown]
# ## 1. What a GPT is
#
# **GPT** stands for **G**enerative **P**re-trained **T**ransformer {cite}`radford2018gpt`:
# *generative* because it produces text, *pre-trained* because it first learns from raw text
# with no labels before any task-specific use, and *Transformer* for the architecture. GPT-2
# {cite}`radford2019gpt2` and GPT-3 {cite}`brown2020gpt3` kept the recipe and scaled it up.
#
# Given tokens $x_1, \dots, x_T$, the model outputs, at every position $t$, a distribution
# $p_\theta(\cdot \mid x_{\le t})$ over the vocabulary for the *next* token. Pretraining
# minimises the average negative log-likelihood of the text it reads:
#
# $$ \mathcal{L}(\theta) = -\frac{1}{T} \sum_{t=1}^{T} \log p_\theta(x_{t+1} \mid x_1, \dots, x_t). $$
#
# One window of $T+1$ tokens thus gives $T$ training examples at once, all computed in a
# single forward pass. That is possible only because position $t$ is not allowed to look at
# $x_{t+1}, x_{t+2}, \dots$: the attention is *causal* (section 2).
#
# The architecture is the *decoder* of chapter 06's Transformer with the cross-attention
# removed (there is no encoder to attend to). What is left is a stack of identical blocks,
# each a masked self-attention and an MLP, each wrapped in a residual connection with the
# normalisation applied *before* the sublayer (**pre-norm**, as in GPT-2, GPT-3 and LLaMA):
#
# ```text
#  token ids (B, T) --> token embedding + position embedding --> x (B, T, C)
#                                  |
#        +-------------------------v-------------------------+
#        |  x = x + Attention_causal( LayerNorm(x) )          |
#        |  x = x + MLP( LayerNorm(x) )       (4C, GELU)      |   x n_layer
#        +-------------------------+-------------------------+
#                                  |
#                 final LayerNorm --> Linear(C -> V) --> logits (B, T, V)
#                                     (weights tied to the token embedding)
# ```
#
# Pre-norm keeps an unnormalised "residual stream" running from the embedding to the output,
# so gradients reach the lower layers without passing through any normalisation, which is why
# deep pre-norm stacks train stably without the careful warm-up post-norm needs
# {cite}`xiong2020prenorm`. LLaMA-style models make two substitutions, RMSNorm for LayerNorm
# and rotary position encodings (RoPE) for learned positions; the library's `GPTConfig`
# offers both (`norm="rmsnorm"`, `positions="rope"`, `mlp="swiglu"`).

# %% [markdown]
# ## 2. The causal mask
#
# In multi-head self-attention (chapter 05) each position projects its vector into a query,
# a key and a value, $Q = XW_Q$, $K = XW_K$, $V = XW_V$, split into $h$ heads of size
# $d = C/h$. For one head the scores are $S = QK^\top/\sqrt{d}$, a $T \times T$ matrix whose
# row $i$ says how much query $i$ matches every key $j$. The causal mask sets every score with
# $j > i$ to $-\infty$ *before* the softmax, so those keys get weight exactly
# $e^{-\infty} = 0$:
#
# $$
# \operatorname{Attention}(Q, K, V) = \operatorname{softmax}\!\Big(\frac{QK^\top}{\sqrt{d}} + M\Big)V,
# \qquad M_{ij} = \begin{cases} 0 & j \le i \\ -\infty & j > i. \end{cases}
# $$
#
# ```text
#  keys ->    j=0  j=1  j=2  j=3
#  query i=0   .   -inf -inf -inf      row i: position i may attend to 0..i only
#  query i=1   .    .   -inf -inf
#  query i=2   .    .    .   -inf
#  query i=3   .    .    .    .
# ```
#
# Note the sign: $-\infty$, not $+\infty$ (a $+\infty$ score would swallow the whole softmax
# and give NaN). The masked scores are still computed in a standard implementation and then
# thrown away; masking changes the result, not the cost.
#
# ### Exercise 1: masked multi-head self-attention
#
# Write `causal_self_attention(x, w_qkv, w_out, n_heads)` for `x` of shape `(B, T, C)`.
# `w_qkv` has shape `(3C, C)` and stacks $W_Q$, $W_K$, $W_V$ by rows (so `x @ w_qkv.T` gives
# `[q | k | v]` along the last axis); inside each, columns `h*d ... (h+1)*d - 1` of the
# projected vectors belong to head `h`. Split into heads, apply the causal mask and the
# $1/\sqrt{d}$ scaling, softmax, combine the values, concatenate the heads back to `(B, T, C)`
# and apply the output projection `w_out` `(C, C)` (again as `y @ w_out.T`). No biases. Build
# the mask yourself (no `is_causal=True`, no library attention).


# %% nbgrader={"grade": false, "grade_id": "causal_self_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def causal_self_attention(
    x: torch.Tensor, w_qkv: torch.Tensor, w_out: torch.Tensor, n_heads: int
) -> torch.Tensor:
    """Masked multi-head self-attention: x (B, T, C) -> (B, T, C)."""
    ### BEGIN SOLUTION
    b, t, c = x.shape
    d = c // n_heads
    q, k, v = (x @ w_qkv.T).split(c, dim=-1)  # each (B, T, C)
    q, k, v = (z.view(b, t, n_heads, d).transpose(1, 2) for z in (q, k, v))  # (B, H, T, D)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (B, H, T, T)
    future = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), diagonal=1)
    scores = scores.masked_fill(future, float("-inf"))
    y = torch.softmax(scores, dim=-1) @ v  # (B, H, T, D)
    return y.transpose(1, 2).reshape(b, t, c) @ w_out.T
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "causal_self_attention_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def _mha_reference(c: int, heads: int, seed: int, **kwargs) -> MultiHeadAttention:
    torch.manual_seed(seed)
    return MultiHeadAttention(c, heads, bias=False, causal=True, **kwargs)


def _check_causal_attention(b: int, t: int, c: int, heads: int, seed: int) -> None:
    mha = _mha_reference(c, heads, seed)
    x = torch.randn(b, t, c)
    got = causal_self_attention(x, mha.qkv.weight.detach(), mha.out.weight.detach(), heads)
    check_shape(got, (b, t, c), f"output for x of shape {(b, t, c)}")
    if torch.isnan(got).any():
        raise ExerciseFailure(
            "your output contains NaN: was the mask filled with +inf instead of -inf?"
        )
    unscaled = _mha_reference(c, heads, seed, scale=1.0)
    with torch.no_grad():
        hints = {
            "no causal mask (every position sees the whole sequence)": mha(x, causal=False),
            "the mask is transposed (positions see the future, not the past)": mha(x.flip(1)).flip(
                1
            ),
            "missing 1/sqrt(d) scaling of the scores": unscaled(x),
        }
        check_close(
            got,
            mha(x),
            f"causal attention, B={b}, T={t}, C={c}, {heads} heads",
            atol=1e-5,
            hints=hints,
        )


_check_causal_attention(2, 5, 8, 2, seed=0)
### BEGIN HIDDEN TESTS
_check_causal_attention(1, 9, 12, 3, seed=1)
_check_causal_attention(3, 1, 16, 4, seed=2)
# against torch.nn.MultiheadAttention with a boolean "may not attend" mask
torch.manual_seed(3)
ref = nn.MultiheadAttention(12, 3, bias=False, batch_first=True)
x_ = torch.randn(2, 7, 12)
future_ = torch.triu(torch.ones(7, 7, dtype=torch.bool), 1)
with torch.no_grad():
    want_ = ref(x_, x_, x_, attn_mask=future_, need_weights=False)[0]
check_close(
    causal_self_attention(x_, ref.in_proj_weight.detach(), ref.out_proj.weight.detach(), 3),
    want_,
    "causal attention against torch.nn.MultiheadAttention",
    atol=1e-5,
)
# changing the future must not change the past
x2_ = x_.clone()
x2_[:, 4:] = torch.randn(2, 3, 12)
a_ = causal_self_attention(x_, ref.in_proj_weight.detach(), ref.out_proj.weight.detach(), 3)
b_ = causal_self_attention(x2_, ref.in_proj_weight.detach(), ref.out_proj.weight.detach(), 3)
check_close(a_[:, :4], b_[:, :4], "positions 0-3 after changing only positions 4-6", atol=1e-6)
### END HIDDEN TESTS

# %% [markdown]
# The library's `GPT` uses the same masked attention in every block. A direct way to see that
# the whole model is causal: feed two texts that share a prefix and compare the logits. Every
# position inside the shared prefix gets identical scores; the first position after it differs.
# (The check needs no training: causality is a property of the architecture.)

# %% tags=["demo"]
char_tok = CharTokenizer.ascii()
torch.manual_seed(0)
untrained = GPT(
    GPTConfig(vocab_size=char_tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32)
).eval()
a_text, b_text = "To be, or not to be", "To be, or not to go"
prefix = len(a_text) - 2  # the texts agree on their first 17 characters
with torch.no_grad():
    la = untrained(torch.tensor([char_tok.encode(a_text)])).logits[0]  # (T, V)
    lb = untrained(torch.tensor([char_tok.encode(b_text)])).logits[0]
diff = (la - lb).abs().amax(dim=-1)  # (T,)
print(
    f"largest logit difference inside the shared prefix (positions 0-{prefix - 1}): {diff[:prefix].max():.1e}"
)
print(
    f"largest logit difference after it (positions {prefix}-{len(a_text) - 1}): {diff[prefix:].max():.1e}"
)
glue("causal_prefix_diff", f"{diff[:prefix].max():.1e}")

# %% [markdown]
# Inside the shared prefix the largest logit difference is {glue:text}`causal_prefix_diff`:
# what the model says about position $t$ cannot depend on anything after $t$.
#
# ## 3. Pretraining on Tiny Shakespeare
#
# The course's base model, `gpt-shakespeare-char`, is a character-level GPT trained by the
# project's own command,
#
# ```text
# llmcourse train --config configs/gpt_shakespeare_char.toml --out checkpoints/gpt-shakespeare-char
# ```
#
# with AdamW, a linear warm-up and cosine decay (chapter 00), gradient clipping and the
# library's `Trainer`, which stops with an error naming the step if the loss ever becomes NaN
# or infinite. The checkpoint stores the weights in safetensors, unwrapped (no `module.` or
# `_orig_mod.` prefixes, so they load strictly into a plain `GPT`), together with the config,
# the tokenizer and the whole training history. Chapters 09 to 11 reuse this model.
#
# `load_pretrained` reads it from the repository's `checkpoints/` folder, or downloads it
# (verified by sha256) when the notebook runs outside a clone. Offline and without a clone,
# the cells that need it print a message instead.


# %% tags=["demo"]
try:
    base_model, base_tok = load_pretrained("gpt-shakespeare-char")
    base_meta = pretrained_metadata("gpt-shakespeare-char")
except DataUnavailableError as err:
    base_model = base_tok = base_meta = None
    print(f"The course checkpoint is not available here (offline, outside a clone): {err}")

if base_meta is not None:
    run_cfg = base_meta["config"]
    tokens_seen = base_meta["step"] * run_cfg["data"]["batch_size"] * run_cfg["data"]["block_size"]
    base_val = base_meta["extra"]["history"]["eval_loss"]["val"][-1]
    print(base_model.config)
    print(
        f"{base_model.num_parameters():,} parameters, trained for {base_meta['step']:,} steps "
        f"on {tokens_seen:,} characters; final validation loss {base_val:.3f} nats"
    )
    print("command:", run_cfg.get("command"))
    glue("base_params", f"{base_model.num_parameters():,}")
    glue("base_steps", f"{base_meta['step']:,}")
    glue("base_tokens", f"{tokens_seen / 1e6:.1f} million")
    glue("base_val", f"{base_val:.2f}")
    glue("base_bpc", f"{base_val / math.log(2):.2f}")
else:
    for key in ("base_params", "base_steps", "base_tokens", "base_val", "base_bpc"):
        glue(key, "(not available offline)")

# %% [markdown]
# The base model has {glue:text}`base_params` parameters and was trained for
# {glue:text}`base_steps` steps on {glue:text}`base_tokens` characters; it ends at a validation
# loss of {glue:text}`base_val` nats per character ({glue:text}`base_bpc` bits).
#
# ### A live run, inside the reference band
#
# "Is my loss curve normal?" is the most common question about a first training run. The
# answer needs a reference. Below we start a fresh model with the base model's recipe (the same
# architecture, optimizer, schedule and batch size, read from the checkpoint) but a different
# seed and a shorter context of 64 characters to keep it fast, and train it for 150 steps.
# The grey band around the full run's logged loss spans, at every step, the lowest and highest
# loss that run recorded within 10 steps either side, widened by 0.1 nats for the different
# seed and context. In its first few hundred steps a character model learns mostly short-range
# statistics (letter frequencies, then common pairs and short words), so the shorter context
# should cost little here; a run that leaves the band is not behaving like the reference, and
# the cell stops with an error if it ends above it. A NaN loss stops it at once (the `Trainer`
# raises `NonFiniteLossError`).

# %% tags=["demo"] mystnb={"image": {"alt": "Training loss against step for the first 150 steps: the live run falls from about 4.6 to about 2.5 nats and stays inside a grey band built from the full reference run's logged loss; the reference curve runs through the middle of the band. Dashed lines mark a unigram model (about 3.3 nats) and a bigram model (about 2.5 nats)."}}
LIVE_STEPS, LIVE_BLOCK, WINDOW, MARGIN = 150, 64, 10, 0.1
text = load_text("tinyshakespeare")
ids = torch.tensor(char_tok.encode(text))
split = int(0.9 * len(ids))
train_ids, val_ids = ids[:split], ids[split:]  # (N,) int64 each

# The recipe of the published run (fallback: the values in configs/gpt_shakespeare_char.toml).
recipe = (
    base_meta["config"]
    if base_meta is not None
    else {
        "model": dict(n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False),
        "data": {"batch_size": 16},
        "optim": dict(
            lr=2e-3,
            min_lr=2e-4,
            betas=[0.9, 0.99],
            weight_decay=0.1,
            warmup_steps=100,
            decay_steps=2000,
        ),
        "train": {"grad_clip": 1.0},
    }
)
model_keys = {
    "n_layer",
    "n_head",
    "n_embd",
    "dropout",
    "bias",
    "positions",
    "norm",
    "mlp",
    "tie_weights",
}
o, batch = recipe["optim"], recipe["data"]["batch_size"]
torch.manual_seed(7)
live_model = GPT(
    GPTConfig(
        vocab_size=char_tok.vocab_size,
        block_size=LIVE_BLOCK,
        **{k: v for k, v in recipe["model"].items() if k in model_keys},
    )
)
trainer = Trainer(
    live_model,
    AdamW(weight_decay_groups(live_model, o["weight_decay"]), lr=o["lr"], betas=tuple(o["betas"])),
    RandomBatches(train_ids, LIVE_BLOCK, batch, seed=7),
    RandomBatches(val_ids, LIVE_BLOCK, batch, seed=8),
    config=TrainerConfig(
        max_steps=LIVE_STEPS,
        grad_clip=recipe["train"]["grad_clip"],
        eval_batches=10,
        progress=False,
        log=False,
        device="cpu",
    ),
    schedule=WarmupCosine(
        max_lr=o["lr"],
        min_lr=o["min_lr"],
        warmup_steps=o["warmup_steps"],
        decay_steps=o["decay_steps"],
    ),
)
t0 = time.perf_counter()
live = trainer.fit()  # raises NonFiniteLossError if the loss becomes NaN or inf
live_seconds = time.perf_counter() - t0
live_loss = np.array(live.loss)
live_val = live.eval_loss["val"][-1]

# Two count-based baselines (chapter 01), as validation cross-entropies: a unigram model knows
# only how common each character is, a bigram model also the previous character.
V = char_tok.vocab_size
unigram = torch.bincount(train_ids, minlength=V).double() + 1  # add-one smoothing
h_uni = -(unigram / unigram.sum()).log()[val_ids].mean().item()
pairs = torch.bincount(train_ids[:-1] * V + train_ids[1:], minlength=V * V).double().view(V, V)
bigram = (pairs + 0.01) / (pairs + 0.01).sum(dim=1, keepdim=True)  # add-0.01 smoothing
h_bi = -bigram.log()[val_ids[:-1], val_ids[1:]].mean().item()

fig, ax = plt.subplots(figsize=(7, 3.6))
if base_meta is not None:
    ref = base_meta["extra"]["history"]
    ref_steps, ref_loss = np.array(ref["steps"]), np.array(ref["loss"])
    shown = ref_steps <= LIVE_STEPS
    lo = (
        np.array(
            [ref_loss[max(0, i - WINDOW) : i + WINDOW + 1].min() for i in range(len(ref_loss))]
        )
        - MARGIN
    )
    hi = (
        np.array(
            [ref_loss[max(0, i - WINDOW) : i + WINDOW + 1].max() for i in range(len(ref_loss))]
        )
        + MARGIN
    )
    ax.fill_between(ref_steps[shown], lo[shown], hi[shown], color="0.85", label="reference band")
    ax.plot(ref_steps[shown], ref_loss[shown], color="0.45", lw=1, label="full run (reference)")
    band_lo, band_hi = lo[:LIVE_STEPS], hi[:LIVE_STEPS]
    inside = float(np.mean((live_loss >= band_lo) & (live_loss <= band_hi)))
    tail_excess = float(np.mean(live_loss[-20:]) - np.mean(band_hi[-20:]))
    print(f"{inside:.0%} of the live steps lie inside the band")
    glue("live_inside", f"{inside:.0%}")
    if tail_excess > 0:
        raise RuntimeError(
            f"the live run ends {tail_excess:.2f} nats above the reference band: the training is "
            "not behaving like the reference run (learning rate? data? a changed model?)"
        )
else:
    glue("live_inside", "(no reference offline)")
    print("No reference run available offline: showing the live curve alone.")
ax.plot(np.arange(1, LIVE_STEPS + 1), live_loss, color="C0", label="live run (this notebook)")
ax.axhline(math.log(V), color="gray", ls=":", label="ln 97 (uniform guess)")
ax.axhline(h_uni, color="C2", ls="--", lw=1, label="unigram model (validation)")
ax.axhline(h_bi, color="C3", ls="--", lw=1, label="bigram model (validation)")
ax.set(
    xlabel="step",
    ylabel="training loss (nats per character)",
    title="GPT pretraining on Tiny Shakespeare",
)
ax.legend()
plt.tight_layout()
plt.show()
print(
    f"live run: {LIVE_STEPS} steps in {live_seconds:.0f} s, final training loss {live_loss[-1]:.3f}, "
    f"validation loss {live_val:.3f}"
)
glue("live_seconds", f"{live_seconds:.0f}")
glue("live_val", f"{live_val:.2f}")
glue("live_first", f"{live_loss[0]:.2f}")
glue("ln97", f"{math.log(V):.2f}")
glue("h_uni", f"{h_uni:.2f}")
glue("h_bi", f"{h_bi:.2f}")
smoothed = np.convolve(live_loss, np.ones(10) / 10, mode="valid")  # mean of steps i+1 .. i+10
glue("uni_step", f"{int(np.argmax(smoothed < h_uni)) + 10}")

# %% [markdown]
# The live run starts at {glue:text}`live_first` nats, the loss of a uniform guess over 97
# characters ($\ln 97 =$ {glue:text}`ln97`), and {glue:text}`live_inside` of its steps lie
# inside the reference band (it took {glue:text}`live_seconds` s here). Two count-based models
# from chapter 01 give a sense of scale. A unigram model, which knows only how often each
# character occurs, scores {glue:text}`h_uni` nats on the validation text; the GPT's training
# loss passes that level by step {glue:text}`uni_step`. A bigram model, which also knows the
# previous character, scores {glue:text}`h_bi`; after 150 steps the GPT's validation loss,
# {glue:text}`live_val`, is near that level. Everything below it (words, names, the rhythm of
# the verse) needs longer context, and that is what the rest of the full run learns: it ends
# at {glue:text}`base_val`.
#
# Here is what each model writes after the prompt `ROMEO:` (temperature 0.8, top-k 40, the
# library's `generate`):

# %% tags=["demo"]
prompt = torch.tensor([char_tok.encode("ROMEO:\n")])
for name, model in (("live run, 150 steps", live_model), ("base model (full run)", base_model)):
    if model is None:
        print(f"----- {name}: not available offline -----")
        continue
    out = generate(
        model, prompt, 250, temperature=0.8, top_k=40, generator=torch.Generator().manual_seed(1)
    )
    print(f"----- {name} -----\n{char_tok.decode(out[0])}\n")

# %% [markdown]
# After 150 steps the model has some of the shape of the text (short lines, capitalised names
# before a colon, spaces between word-like groups of letters) but few real words; the full run
# spells most common words correctly and imitates the dialogue format. Neither understands
# anything: the loss only rewards predicting the next character.
#
# ## 4. Decoding: from logits to text
#
# The model gives logits $z \in \mathbb{R}^V$ for the next token. A *decoding strategy* turns
# them into a choice, and that choice matters as much as the model for the quality of the text.
#
# * **Greedy** takes $\arg\max_i z_i$. Deterministic, and prone to loops.
# * **Temperature** $\tau$ samples from $\operatorname{softmax}(z/\tau)$. $\tau < 1$ sharpens
#   the distribution (towards greedy as $\tau \to 0$), $\tau > 1$ flattens it.
# * **Top-k** keeps the $k$ most likely tokens and renormalises.
# * **Top-p** (nucleus sampling {cite}`holtzman2020curious`) keeps the **smallest** set of
#   most likely tokens whose total probability is **at least** $p$, and renormalises. Sort the
#   probabilities in decreasing order, $p_{(1)} \ge p_{(2)} \ge \dots$; token $(j)$ is kept
#   when the mass *before* it, $\sum_{i<j} p_{(i)}$, is still below $p$. The set adapts to the
#   shape of the distribution: one token when the model is sure, many when it is not.
#
# "Renormalise" means: set the removed tokens' probability to 0 and divide the kept ones by
# their sum (equivalently, set the removed logits to $-\infty$ and take the softmax again).
# The library applies them in the order temperature, top-k, top-p.
#
# **A worked example.** Take a vocabulary of seven words with next-word probabilities
#
# | the | a | one | dog | cat | runs | sat |
# |---|---|---|---|---|---|---|
# | 0.35 | 0.25 | 0.12 | 0.10 | 0.08 | 0.05 | 0.05 |
#
# and $p = 0.85$. The running totals are 0.35, 0.60, 0.72, 0.82, **0.90**, ... The first four
# words hold only 0.82 < 0.85, so the nucleus needs the fifth: {the, a, one, dog, cat}, with
# probabilities $0.35/0.90 \approx 0.389$, $0.25/0.90 \approx 0.278$, and so on. (Keeping the
# tokens whose running total is *at most* $p$ would stop at four and fall short of $p$.) Note
# that the nucleus can only be determined from the *whole* distribution: knowing the
# probabilities of a few tokens is not enough when they add up to less than $p$.
#
# ### Exercise 2 (worked numbers): the sampling distribution
#
# Write `next_token_probs(logits, temperature=1.0, top_k=None, top_p=None)` for logits of
# shape `(V,)`. Return the probabilities `(V,)` a sampler would draw from: divide by the
# temperature, then keep the `top_k` most likely tokens (if given), then the top-p nucleus of
# what is left (if given), renormalising after each filter. Removed tokens must get
# probability exactly 0. On the table above you should get, for `top_p=0.85`,
# `[0.3889, 0.2778, 0.1333, 0.1111, 0.0889, 0, 0]`.


# %% nbgrader={"grade": false, "grade_id": "next_token_probs", "locked": false, "schema_version": 3, "solution": true, "task": false}
def next_token_probs(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Sampling distribution (V,) after temperature, top-k and top-p (in that order)."""
    ### BEGIN SOLUTION
    probs = torch.softmax(logits / temperature, dim=-1)  # (V,)
    if top_k is not None and top_k < probs.numel():
        kth = torch.topk(probs, top_k).values[-1]
        probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
        probs = probs / probs.sum()
    if top_p is not None:
        sorted_p, order = torch.sort(probs, descending=True)
        mass_before = torch.cumsum(sorted_p, dim=0) - sorted_p
        keep_sorted = mass_before < top_p
        keep = torch.zeros_like(keep_sorted).scatter(0, order, keep_sorted)
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        probs = probs / probs.sum()
    return probs
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "next_token_probs_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
words = ["the", "a", "one", "dog", "cat", "runs", "sat"]
p_words = torch.tensor([0.35, 0.25, 0.12, 0.10, 0.08, 0.05, 0.05])
z_words = p_words.log()
check_close(next_token_probs(z_words), p_words, "no filtering at temperature 1 (plain softmax)")
check_close(
    next_token_probs(z_words, top_k=2),
    [0.35 / 0.6, 0.25 / 0.6, 0, 0, 0, 0, 0],
    "top_k=2 (renormalised)",
    hints={"forgot to renormalise": [0.35, 0.25, 0, 0, 0, 0, 0]},
)
nucleus = torch.cat([p_words[:5] / 0.90, torch.zeros(2)])
check_close(
    next_token_probs(z_words, top_p=0.85),
    nucleus,
    "top_p=0.85 (smallest set with mass >= 0.85)",
    hints={
        "kept the tokens whose cumulative probability is <= p (too few)": torch.cat(
            [p_words[:4] / 0.82, torch.zeros(3)]
        )
    },
)
check_close(
    next_token_probs(z_words, temperature=0.5),
    p_words**2 / (p_words**2).sum(),
    "temperature 0.5 (sharper)",
    hints={
        "multiplied by the temperature instead of dividing": p_words**0.5 / (p_words**0.5).sum()
    },
)


### BEGIN HIDDEN TESTS
def _library_probs(z, temperature=1.0, top_k=None, top_p=None):
    z = apply_temperature(z[None], temperature)
    if top_k is not None:
        z = top_k_filter(z, top_k)
    if top_p is not None:
        z = top_p_filter(z, top_p)
    return torch.softmax(z, -1)[0]


gen_ = torch.Generator().manual_seed(5)
for settings in [
    dict(temperature=0.7),
    dict(top_k=5),
    dict(top_p=0.5),
    dict(top_p=0.99),
    dict(temperature=1.5, top_k=20, top_p=0.8),
    dict(temperature=0.3, top_p=0.9),
    dict(top_k=1),
    dict(top_p=0.01),
]:
    z_ = torch.randn(50, generator=gen_) * 2
    got_ = next_token_probs(z_, **settings)
    check_close(
        got_,
        _library_probs(z_, **settings),
        f"50 random logits with {settings} against llmcourse",
        atol=1e-6,
    )
    check_equal(
        bool((got_[_library_probs(z_, **settings) == 0] == 0).all()),
        True,
        f"removed tokens must have probability exactly 0 ({settings})",
    )
check_close(
    next_token_probs(z_words, temperature=0.5, top_p=0.85),
    _library_probs(z_words, temperature=0.5, top_p=0.85),
    "temperature applied before top-p",
)
### END HIDDEN TESTS

# %% [markdown]
# Here is what these knobs do to the base model's real next-character distribution after the
# prompt below (the figure shows the 15 most likely characters; `⏎` is a newline and `␣` a
# space):

# %% tags=["demo"] mystnb={"image": {"alt": "Four bar charts of the base model's next-character probabilities after a prompt: at temperature 1, at temperature 0.5 (the top character dominates), at temperature 1.5 (flatter), and the top-p 0.9 nucleus with the removed characters at zero and the kept ones renormalised."}}
lm = base_model if base_model is not None else live_model
context = "ROMEO:\nWhat light is this? Speak, and "
with torch.no_grad():
    z_next = lm(torch.tensor([char_tok.encode(context)[-lm.config.block_size :]])).logits[
        0, -1
    ]  # (V,)
panels = {
    "temperature 1": torch.softmax(z_next, -1),
    "temperature 0.5": torch.softmax(apply_temperature(z_next[None], 0.5), -1)[0],
    "temperature 1.5": torch.softmax(apply_temperature(z_next[None], 1.5), -1)[0],
    "top-p 0.9 (temperature 1)": torch.softmax(top_p_filter(z_next[None], 0.9), -1)[0],
}
top15 = torch.topk(panels["temperature 1"], 15).indices
labels = [
    {"\n": "⏎", " ": "␣"}.get(char_tok.decode([int(i)]), char_tok.decode([int(i)])) for i in top15
]
fig, axes = plt.subplots(1, 4, figsize=(12, 2.8), sharey=True)
for ax, (title, p) in zip(axes, panels.items(), strict=True):
    ax.bar(range(15), p[top15].numpy())
    ax.set_xticks(range(15), labels, fontsize=8)
    kept = int((p > 0).sum())
    ax.set_title(f"{title}\n({kept} of 97 characters possible)", fontsize=9)
axes[0].set_ylabel("probability")
plt.suptitle(f"next character after {context[-22:]!r}", fontsize=10)
plt.tight_layout()
plt.show()
nucleus_size = int((panels["top-p 0.9 (temperature 1)"] > 0).sum())
glue("nucleus_size", f"{nucleus_size}")

# %% [markdown]
# The top-p 0.9 nucleus here holds {glue:text}`nucleus_size` of the 97 characters; at a point
# where the model is sure (inside a word) it would hold one or two.
#
# ### Penalties against repetition
#
# Greedy and low-temperature decoding tend to fall into loops, because once a phrase is in the
# context, the model finds it likely again. Three common penalties lower the logits of tokens
# that already occur in the context (prompt and generated text):
#
# * the **repetition penalty** $\theta > 1$ of CTRL {cite}`keskar2019ctrl` divides a seen
#   token's logit by $\theta$ when it is positive and multiplies it by $\theta$ when it is
#   negative (dividing a negative logit would *raise* it);
# * the **frequency penalty** subtracts $\alpha_f \cdot \text{count}(i)$, growing with every
#   repetition;
# * the **presence penalty** subtracts $\alpha_p$ once from every token that occurred at all.
#
# $$ z_i' = \tilde z_i - \alpha_f\, c_i - \alpha_p\, [c_i > 0], \qquad
#    \tilde z_i = \begin{cases} z_i/\theta & c_i > 0,\ z_i > 0 \\ z_i\,\theta & c_i > 0,\ z_i \le 0 \\ z_i & c_i = 0 \end{cases} $$
#
# where $c_i$ counts token $i$ in the context. They act on logits, before the temperature
# and the filters.
#
# ### Exercise 3: repetition, frequency and presence penalties
#
# Write `penalise(logits, context, repetition_penalty=1.0, frequency_penalty=0.0,
# presence_penalty=0.0)` for logits `(V,)` and a list of token ids, following the formula
# (repetition penalty first). With logits `[2, -1, 0.5, 3, 0]` and context `[0, 3, 0, 1]`, a
# repetition penalty of 2 gives `[1, -2, 0.5, 1.5, 0]`.


# %% nbgrader={"grade": false, "grade_id": "penalise", "locked": false, "schema_version": 3, "solution": true, "task": false}
def penalise(
    logits: torch.Tensor,
    context: list[int],
    repetition_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
) -> torch.Tensor:
    """Penalised logits (V,) given the token ids already in the context."""
    ### BEGIN SOLUTION
    counts = torch.zeros_like(logits)
    for token in context:
        counts[token] += 1
    seen = counts > 0
    scaled = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
    out = torch.where(seen, scaled, logits)
    return out - frequency_penalty * counts - presence_penalty * seen.to(logits.dtype)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "penalise_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
z_pen = torch.tensor([2.0, -1.0, 0.5, 3.0, 0.0])
ctx_pen = [0, 3, 0, 1]
check_close(
    penalise(z_pen, ctx_pen, repetition_penalty=2.0),
    [1.0, -2.0, 0.5, 1.5, 0.0],
    "repetition penalty 2",
    hints={
        "divided negative logits too (that makes a seen token MORE likely)": [
            1.0,
            -0.5,
            0.5,
            1.5,
            0.0,
        ]
    },
)
check_close(
    penalise(z_pen, ctx_pen, frequency_penalty=0.5, presence_penalty=0.3),
    [0.7, -1.8, 0.5, 2.2, 0.0],
    "frequency penalty 0.5 and presence penalty 0.3",
    hints={"presence penalty multiplied by the count": [0.4, -1.8, 0.5, 2.2, 0.0]},
)
check_close(penalise(z_pen, []), z_pen, "an empty context changes nothing")
### BEGIN HIDDEN TESTS
gen_ = torch.Generator().manual_seed(11)
for rep, freq, pres in [
    (1.3, 0.0, 0.0),
    (1.0, 0.7, 0.0),
    (1.0, 0.0, 1.1),
    (1.5, 0.2, 0.4),
    (0.8, 0.1, 0.0),
]:
    z_ = torch.randn(30, generator=gen_) * 3
    ctx_ = torch.randint(0, 30, (25,), generator=gen_)
    want_ = apply_penalties(z_[None], ctx_[None], rep, freq, pres)[0]
    check_close(
        penalise(z_, ctx_.tolist(), rep, freq, pres),
        want_,
        f"penalties (repetition {rep}, frequency {freq}, presence {pres}) against llmcourse",
    )
### END HIDDEN TESTS

# %% [markdown]
# Below, the base model continues a prompt greedily, greedily with a repetition penalty of
# 1.3, and by sampling (temperature 0.8, top-p 0.9). The share of distinct 10-character
# substrings measures repetition (1.0: nothing repeats).


# %% tags=["demo"]
def distinct_ngrams(s: str, n: int = 10) -> float:
    """Share of distinct character n-grams in s (1.0 means no n-gram occurs twice)."""
    grams = [s[i : i + n] for i in range(len(s) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


prompt = torch.tensor([char_tok.encode("KING HENRY:\nMy lord, ")])
settings = {
    "greedy": dict(temperature=0.0),
    "greedy + repetition penalty 1.3": dict(temperature=0.0, repetition_penalty=1.3),
    "temperature 0.8, top-p 0.9": dict(temperature=0.8, top_p=0.9),
}
distinct = {}
for name, kwargs in settings.items():
    out = generate(lm, prompt, 300, generator=torch.Generator().manual_seed(3), **kwargs)
    continuation = char_tok.decode(out[0, prompt.shape[1] :])
    distinct[name] = distinct_ngrams(continuation)
    print(f"----- {name}: distinct 10-grams {distinct[name]:.2f} -----\n{continuation[:220]}\n")
glue("distinct_greedy", f"{distinct['greedy']:.2f}")
glue("distinct_penalty", f"{distinct['greedy + repetition penalty 1.3']:.2f}")
glue("distinct_sampled", f"{distinct['temperature 0.8, top-p 0.9']:.2f}")

# %% [markdown]
# Greedy decoding keeps coming back to the same few phrases: the share of distinct 10-character
# substrings in its output is only {glue:text}`distinct_greedy`. The repetition penalty raises
# it to {glue:text}`distinct_penalty`, sampling to {glue:text}`distinct_sampled`. On a *character*
# model penalties are a blunt tool: every common letter is already in the context, so the
# penalty lowers all of them alike and pushes the model towards rare letters. They were designed
# for word and subword vocabularies, where a repeated token means a repeated word.
#
# ### Beam search
#
# Greedy decoding commits to the best *next* token; the best *sequence* may start with a token
# that is not the best. Beam search keeps the $K$ most likely partial sequences (the *beams*).
# At every step it extends each beam by every token, scores each candidate by its total
# log-probability $\sum_t \log p(x_t \mid x_{<t})$, and keeps the $K$ best candidates overall.
# $K = 1$ is greedy decoding; $K = V^n$ would be exhaustive search.
#
# A toy model shows the difference. Its next-token distribution depends only on the last
# token (a bigram table over four tokens `·`, `A`, `B`, `C`, starting from `·`):
#
# | after | `·` | `A` | `B` | `C` |
# |---|---|---|---|---|
# | `·` | 0.02 | 0.48 | 0.40 | 0.10 |
# | `A` | 0.20 | 0.30 | 0.26 | 0.24 |
# | `B` | 0.05 | 0.05 | 0.85 | 0.05 |
# | `C` | 0.25 | 0.25 | 0.25 | 0.25 |
#
# Greedy picks `A` (0.48), then `A` again (0.30): probability $0.48 \times 0.30 = 0.144$.
# With two beams, `B` survives the first step (0.40) and `B B` scores
# $0.40 \times 0.85 = 0.34$, more than twice as likely.
#
# ### Exercise 4: beam search
#
# Write `beam_search_simple(next_log_probs, prompt, steps, beam_size)`.
# `next_log_probs(seq)` takes a list of token ids and returns the log-probabilities `(V,)` of
# the next token. Start from one beam, the prompt with score 0; at each of `steps` steps,
# extend every beam by every token and keep the `beam_size` highest-scoring candidates. Return
# the final beams as a list of `(tokens, score)` pairs, best first, where `tokens` is the
# prompt followed by the generated ids (a list of ints) and `score` the sum of the generated
# tokens' log-probabilities (a float). `TableLM` below turns a table like the one above into a
# model that the library's `beam_search` can run too.


# %%
class TableLM(nn.Module):
    """A toy language model whose next-token distribution depends only on the last token.

    table: (V, V), row a = probabilities of the token after a. forward(idx (B, T)) returns an
    LMOutput with logits (B, T, V) = log table[idx], like the library's GPT.
    """

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("log_table", table.log())

    def forward(self, idx: torch.Tensor) -> LMOutput:
        return LMOutput(logits=self.log_table[idx])


toy_table = torch.tensor(
    [
        [0.02, 0.48, 0.40, 0.10],
        [0.20, 0.30, 0.26, 0.24],
        [0.05, 0.05, 0.85, 0.05],
        [0.25, 0.25, 0.25, 0.25],
    ]
)
toy_lm = TableLM(toy_table)


def toy_next_log_probs(seq: list[int]) -> torch.Tensor:
    """Log-probabilities (V,) of the toy model's next token after seq."""
    return toy_lm(torch.tensor([seq])).logits[0, -1]


# %% nbgrader={"grade": false, "grade_id": "beam_search_simple", "locked": false, "schema_version": 3, "solution": true, "task": false}
def beam_search_simple(
    next_log_probs, prompt: list[int], steps: int, beam_size: int
) -> list[tuple[list[int], float]]:
    """The beam_size best continuations of prompt after `steps` tokens, best first."""
    ### BEGIN SOLUTION
    beams = [(list(prompt), 0.0)]
    for _ in range(steps):
        candidates = []
        for tokens, score in beams:
            log_probs = next_log_probs(tokens)  # (V,)
            for token, lp in enumerate(log_probs.tolist()):
                candidates.append((tokens + [token], score + lp))
        candidates.sort(key=lambda c: c[1], reverse=True)
        beams = candidates[:beam_size]
    return beams
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "beam_search_simple_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
greedy_ = beam_search_simple(toy_next_log_probs, [0], 2, beam_size=1)
check_equal(len(greedy_), 1, "number of beams returned with beam_size=1")
check_equal(list(greedy_[0][0]), [0, 1, 1], "beam_size=1 is greedy decoding: tokens")
check_close(
    greedy_[0][1],
    math.log(0.48 * 0.30),
    "score of the greedy sequence (sum of log-probabilities)",
    hints={"returned the probability instead of the log-probability": 0.48 * 0.30},
)
beams_ = beam_search_simple(toy_next_log_probs, [0], 2, beam_size=2)
check_equal(
    [list(t) for t, _ in beams_], [[0, 2, 2], [0, 1, 1]], "the two beams after 2 steps, best first"
)
check_close([s for _, s in beams_], [math.log(0.34), math.log(0.144)], "their scores")
### BEGIN HIDDEN TESTS
gen_ = torch.Generator().manual_seed(21)
for vocab_, steps_, k_ in [(6, 4, 3), (5, 5, 1), (4, 3, 16), (8, 3, 5)]:
    table_ = torch.softmax(torch.randn(vocab_, vocab_, generator=gen_) * 2, dim=-1)
    model_ = TableLM(table_)
    mine_ = beam_search_simple(
        lambda s, m=model_: m(torch.tensor([s])).logits[0, -1], [1], steps_, k_
    )
    ref_ = beam_search_hypotheses(model_, torch.tensor([[1]]), steps_, k_, length_penalty=0.0)
    check_equal(
        [list(map(int, t)) for t, _ in mine_],
        [h.tokens.tolist() for h in ref_],
        f"beams (V={vocab_}, {steps_} steps, beam_size={k_}) against llmcourse.generation.beam_search",
    )
    check_close(
        [s for _, s in mine_],
        [h.log_prob for h in ref_],
        "their scores against llmcourse",
        atol=1e-5,
    )


class _PositionLM(nn.Module):  # the distribution depends on the position and the last token
    def __init__(self, tables):
        super().__init__()
        self.register_buffer("log_tables", tables.log())

    def forward(self, idx):
        pos = idx.shape[1] - 1
        return LMOutput(
            logits=self.log_tables[pos][idx[:, -1]][:, None, :].expand(-1, idx.shape[1], -1)
        )


tables_ = torch.softmax(torch.randn(6, 5, 5, generator=gen_) * 2, dim=-1)
pos_model_ = _PositionLM(tables_)
mine_ = beam_search_simple(lambda s: pos_model_(torch.tensor([s])).logits[0, -1], [0, 3], 4, 3)
ref_ = beam_search_hypotheses(pos_model_, torch.tensor([[0, 3]]), 4, 3, length_penalty=0.0)
check_equal(
    [list(map(int, t)) for t, _ in mine_],
    [h.tokens.tolist() for h in ref_],
    "beams for a model that depends on the whole sequence (pass the full sequence)",
)
### END HIDDEN TESTS

# %% [markdown]
# On the base model, we compare how likely the model itself finds the greedy continuation and
# the best of four beams (both 40 characters):


# %% tags=["demo"]
def sequence_log_prob(model: nn.Module, ids: torch.Tensor, start: int) -> float:
    """Total log-probability the model assigns to ids[0, start:] given what comes before."""
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[:, :-1]).logits[0], dim=-1)  # (T-1, V)
    return float(logp[start - 1 :].gather(1, ids[0, start:, None]).sum())


prompt = torch.tensor([char_tok.encode("JULIET:\nO Romeo, ")])
n = prompt.shape[1]
greedy_out = generate(lm, prompt, 40, temperature=0.0)
beam_out = beam_search_hypotheses(lm, prompt, 40, beam_size=4, length_penalty=0.0)[0].tokens[None]
scores = {}
for name, out in (("greedy", greedy_out), ("beam search, 4 beams", beam_out)):
    scores[name] = sequence_log_prob(lm, out, n)
    print(f"{name:>22}: log p = {scores[name]:7.2f} | {char_tok.decode(out[0, n:])!r}")
glue("greedy_logp", f"{scores['greedy']:.1f}")
glue("beam_logp", f"{scores['beam search, 4 beams']:.1f}")
beam_better = scores["beam search, 4 beams"] >= scores["greedy"]
glue(
    "beam_vs_greedy",
    "at least as high as" if beam_better else "lower than (beam search is not guaranteed to win)",
)

# %% [markdown]
# Beam search's continuation has log-probability {glue:text}`beam_logp`,
# {glue:text}`beam_vs_greedy` greedy's {glue:text}`greedy_logp`. Higher likelihood is not the same as better text, though: for
# open-ended generation the most likely sequences are often bland and repetitive
# {cite}`holtzman2020curious`, which is why chat models sample (with temperature and top-p),
# and beam search is used where there is one right answer, as in translation (chapter 04).
#
# ## 5. Generation and the key/value cache
#
# A GPT produces **one token per forward pass**: to write 256 tokens it runs 256 forward
# passes, each conditioned on everything so far. The library counts them for us here:

# %% tags=["demo"]
calls = []
hook = lm.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[1]))
generate(lm, prompt, 40, temperature=0.0)
hook.remove()
print(
    f"40 new tokens -> {len(calls)} forward passes; tokens fed per pass: {calls[:4]} ... {calls[-2:]}"
)
glue("n_passes", f"{len(calls)}")

# %% [markdown]
# Forty tokens took {glue:text}`n_passes` forward passes; the first pass reads the whole prompt,
# every later one only **one** new token. That is the key/value cache at work. Without it, step
# $t$ would feed all $t$ tokens again and recompute every key and value, although the keys and
# values of old positions never change (they depend only on earlier tokens, thanks to the
# causal mask). The cache stores each layer's $K$ and $V$; a step computes the query, key and
# value of the new token only, appends the key and value, and attends over the whole cache:
#
# ```text
#  step t:  new token x_t --> q_t, k_t, v_t            (one row, not t rows)
#           cache K = [k_1 .. k_{t-1}] ++ k_t ;  cache V = [v_1 .. v_{t-1}] ++ v_t
#           out_t = softmax(q_t K^T / sqrt(d)) V        (1 x t scores instead of t x t)
# ```
#
# Generating $n$ tokens thus costs $O(n)$ token-passes instead of $O(n^2)$, paid for with
# memory: $2 \times$ layers $\times$ positions $\times C$ numbers per sequence
# {cite}`pope2023inference`. A cache does **not** remove the sequential loop: it makes each
# step cheap, but there is still one forward pass per generated token.
#
# When the new block holds several tokens (the prompt, fed at once), each of them may see the
# cached keys and the new keys up to itself. With $L$ positions cached and $T$ new ones, new
# query $i$ (absolute position $L + i$) may attend to keys $0, \dots, L+i$: the causal mask
# of section 2, shifted right by $L$.
#
# ### Exercise 5: attention with a key/value cache
#
# Write `attend_with_cache(q, k, v, cache)` for the `T_new` newest tokens: `q`, `k`, `v` have
# shape `(B, H, T_new, D)`. `cache` is a dict holding the earlier keys and values under `"k"`
# and `"v"` (each `(B, H, L, D)`), or an empty dict at the start. Append the new keys and
# values to the cache (store the longer tensors back into the dict), then let every new query
# attend, with $1/\sqrt{D}$ scaling and the shifted causal mask, over all keys in the cache.
# Return the output `(B, H, T_new, D)`.


# %% nbgrader={"grade": false, "grade_id": "attend_with_cache", "locked": false, "schema_version": 3, "solution": true, "task": false}
def attend_with_cache(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: dict
) -> torch.Tensor:
    """Append k, v (B, H, T_new, D) to cache, attend q over all cached positions -> (B, H, T_new, D)."""
    ### BEGIN SOLUTION
    if "k" in cache:
        cache["k"] = torch.cat([cache["k"], k], dim=2)
        cache["v"] = torch.cat([cache["v"], v], dim=2)
    else:
        cache["k"], cache["v"] = k, v
    keys, values = cache["k"], cache["v"]  # (B, H, L + T_new, D)
    t_new, total = q.shape[2], keys.shape[2]
    past = total - t_new
    scores = q @ keys.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T_new, L + T_new)
    query_pos = past + torch.arange(t_new, device=q.device)[:, None]  # (T_new, 1)
    key_pos = torch.arange(total, device=q.device)[None, :]  # (1, L + T_new)
    scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
    return torch.softmax(scores, dim=-1) @ values
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "attend_with_cache_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def _full_causal(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


torch.manual_seed(0)
q_, k_, v_ = (torch.randn(1, 1, 6, 4) for _ in range(3))
full_ = _full_causal(q_, k_, v_)  # (1, 1, 6, 4): recomputed from scratch
cache_ = {}
steps_out_ = [
    attend_with_cache(q_[:, :, t : t + 1], k_[:, :, t : t + 1], v_[:, :, t : t + 1], cache_)
    for t in range(6)
]
check_shape(steps_out_[0], (1, 1, 1, 4), "output of one decoding step")
check_shape(cache_.get("k", torch.empty(0)), (1, 1, 6, 4), "cache['k'] after 6 one-token steps")
check_close(
    torch.cat(steps_out_, dim=2),
    full_,
    "6 cached one-token steps against full causal attention",
    hints={"attended only to the new token (did the new query see the cache?)": v_},
)
### BEGIN HIDDEN TESTS
torch.manual_seed(1)
b_, h_, d_ = 2, 3, 8
q_, k_, v_ = (torch.randn(b_, h_, 10, d_) for _ in range(3))
full_ = _full_causal(q_, k_, v_)
cache_ = {}
pieces_ = []
for lo_, hi_ in [
    (0, 4),
    (4, 5),
    (5, 6),
    (6, 8),
    (8, 10),
]:  # a 4-token prompt, then steps and blocks
    pieces_.append(
        attend_with_cache(q_[:, :, lo_:hi_], k_[:, :, lo_:hi_], v_[:, :, lo_:hi_], cache_)
    )


def _mask_from_first_key(q, k, v, past):  # a common mistake: the block's mask not shifted by past
    t_new, total = q.shape[2], k.shape[2]
    allowed = torch.arange(total)[None, :] <= torch.arange(t_new)[:, None]
    s = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~allowed, float("-inf"))
    return torch.softmax(s, -1) @ v


check_close(
    pieces_[3],
    full_[:, :, 6:8],
    "a 2-token block after 6 cached positions",
    hints={
        "the causal mask of the new block is not shifted by the cached length": _mask_from_first_key(
            q_[:, :, 6:8], k_[:, :, :8], v_[:, :, :8], 6
        )
    },
)
check_close(
    torch.cat(pieces_, dim=2),
    full_,
    "prompt + steps + blocks against full causal attention (B=2, H=3)",
)
check_shape(cache_["v"], (b_, h_, 10, d_), "cache['v'] after 10 positions")
# against the library's cache and attention
lib_cache_ = LayerKVCache(max_len=10)
lib_k_, lib_v_ = lib_cache_.update(k_[:, :, :7], v_[:, :, :7])
check_close(
    attend_with_cache(
        q_[:, :, 4:7], k_[:, :, 4:7], v_[:, :, 4:7], {"k": k_[:, :, :4], "v": v_[:, :, :4]}
    ),
    scaled_dot_product_attention(q_[:, :, 4:7], lib_k_, lib_v_, causal=True),
    "a 3-token block after 4 cached positions against llmcourse.nn",
)
### END HIDDEN TESTS

# %% [markdown]
# The library's `MultiHeadAttention` does exactly this with a preallocated
# `llmcourse.nn.KVCache`, and `generate(..., use_kv_cache=True)` (the default) feeds only the
# new token at each step. To measure what that saves, we generate 256 tokens after a 32-token
# prompt with a model of the base model's size but a 512-token window, so that the whole
# sequence fits without sliding (the timing does not depend on the weights, so this model is
# untrained). The hook records when each forward pass ends.

# %% tags=["demo"] mystnb={"image": {"alt": "Time per generated token against the position in the sequence for 256 new tokens: without a KV cache the time per step grows roughly linearly with the sequence length; with the cache it stays flat and low."}}
torch.manual_seed(0)
timing_model = GPT(
    GPTConfig(vocab_size=97, block_size=512, n_layer=4, n_head=4, n_embd=128, bias=False)
).eval()
timing_prompt = torch.tensor([char_tok.encode(text[:32])])
per_step, totals = {}, {}
for use_cache in (False, True):
    stamps: list[float] = []
    hook = timing_model.register_forward_hook(
        lambda *_, log=stamps: log.append(time.perf_counter())
    )
    t0 = time.perf_counter()
    out = generate(timing_model, timing_prompt, 256, temperature=0.0, use_kv_cache=use_cache)
    totals[use_cache] = time.perf_counter() - t0
    hook.remove()
    per_step[use_cache] = np.diff([t0, *stamps]) * 1000  # ms per forward pass
    print(
        f"KV cache {'on ' if use_cache else 'off'}: 256 tokens in {totals[use_cache]:.2f} s "
        f"({len(stamps)} forward passes)"
    )

fig, ax = plt.subplots(figsize=(7, 3.2))
for use_cache, label in (
    (False, "no cache: every step re-reads the whole sequence"),
    (True, "KV cache: one new token per step"),
):
    # median over 9 neighbouring steps: single steps are noisy on a shared CPU
    smooth = np.median(np.lib.stride_tricks.sliding_window_view(per_step[use_cache], 9), axis=1)
    ax.plot(np.arange(32 + 4, 32 + 256 - 4), smooth, label=label)
ax.set(
    xlabel="sequence length when the token is generated",
    ylabel="ms per token (median of 9 steps)",
    yscale="log",
    title="generating 256 tokens (4 layers, 128 dims)",
)
ax.legend(loc="upper left", fontsize=8)
plt.tight_layout()
plt.show()
glue("kv_off_s", f"{totals[False]:.2f}")
glue("kv_on_s", f"{totals[True]:.2f}")
glue("kv_speedup", f"{totals[False] / totals[True]:.1f}")

# Same tokens with and without the cache (checked on the trained model, whose choices are clear).
same = torch.equal(
    generate(lm, prompt, 100, temperature=0.0, use_kv_cache=True),
    generate(lm, prompt, 100, temperature=0.0, use_kv_cache=False),
)
print("greedy output identical with and without the cache:", same)
if not same:
    raise RuntimeError("the KV cache changed the generated tokens")

# %% [markdown]
# With the cache, 256 tokens take {glue:text}`kv_on_s` s instead of {glue:text}`kv_off_s` s
# ({glue:text}`kv_speedup` times faster here), and the greedy output is identical. Without a
# cache the cost of a step grows with the length of the sequence; with it, the cost per step is
# nearly flat (the attention over the cache still grows, but for short sequences the matrix
# products of the new token dominate).
#
# ## 6. Scaling laws: how big, on how much data?
#
# **Compute.** A forward pass costs about $2N$ floating-point operations per token for a model
# with $N$ parameters (one multiply and one add per weight), and the backward pass about
# twice that ($4N$: gradients with respect to both activations and weights). Training on $D$
# tokens therefore costs
#
# $$ C \approx 6ND \ \text{FLOPs} $$
#
# (ignoring the attention scores, a small share for long-enough models)
# {cite}`kaplan2020scaling`. GPT-3: $N = 175 \times 10^9$, $D = 300 \times 10^9$ tokens,
# $C \approx 6 \cdot 1.75\cdot10^{11} \cdot 3\cdot10^{11} = 3.15 \times 10^{23}$ FLOPs.
#
# **Loss falls as a power law** in $N$, $D$ and $C$ over many orders of magnitude
# {cite}`kaplan2020scaling`, so the result of a large run can be predicted from small ones.
# For a fixed budget $C$ the question is how to split it between a bigger model and more data.
# **Chinchilla** {cite}`hoffmann2022chinchilla` fitted hundreds of runs and found that $N$
# and $D$ should grow in equal proportion, about **20 tokens per parameter**: with $D = 20N$,
# $C = 6N \cdot 20N = 120N^2$, so $N = \sqrt{C/120}$. By that rule GPT-3 (1.7 tokens per
# parameter) and Gopher (280B parameters, 300B tokens) were **undertrained**: too large for
# the data they saw. Chinchilla itself, 70B parameters on 1.4T tokens with about Gopher's
# compute, beat Gopher. Later models such as LLaMA train far past 20 tokens per parameter on
# purpose: a smaller model costs more to train to a given loss but less every time it is used.
#
# ### Exercise 6 (worked numbers): compute and the Chinchilla rule
#
# Write `training_flops(n_params, n_tokens)` ($6ND$) and `compute_optimal(flops,
# tokens_per_param=20.0)`, which returns the `(n_params, n_tokens)` that spend `flops` with
# `n_tokens = tokens_per_param * n_params`. Check: `training_flops(175e9, 300e9)` is
# `3.15e23`; `compute_optimal(3.15e23)` is about `(5.12e10, 1.02e12)`: GPT-3's compute would
# have been best spent on a 51B model trained on a trillion tokens.


# %% nbgrader={"grade": false, "grade_id": "scaling", "locked": false, "schema_version": 3, "solution": true, "task": false}
def training_flops(n_params: float, n_tokens: float) -> float:
    """Training compute C = 6 N D in FLOPs."""
    ### BEGIN SOLUTION
    return 6.0 * n_params * n_tokens
    ### END SOLUTION


def compute_optimal(flops: float, tokens_per_param: float = 20.0) -> tuple[float, float]:
    """(N, D) with 6 N D = flops and D = tokens_per_param * N."""
    ### BEGIN SOLUTION
    n_params = math.sqrt(flops / (6.0 * tokens_per_param))
    return n_params, tokens_per_param * n_params
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "scaling_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check_close(
    training_flops(175e9, 300e9),
    3.15e23,
    "GPT-3's training compute (175B parameters, 300B tokens)",
    rtol=1e-9,
    atol=0,
    hints={"counted only the forward pass (2ND)": 1.05e23},
)
n_opt, d_opt = compute_optimal(3.15e23)
check_close(
    [n_opt, d_opt],
    [5.1235e10, 1.0247e12],
    "compute-optimal (N, D) for 3.15e23 FLOPs",
    rtol=1e-3,
    atol=0,
)
### BEGIN HIDDEN TESTS
check_close(
    compute_optimal(5.88e23),
    [7.0e10, 1.4e12],
    "Chinchilla: 5.88e23 FLOPs -> 70B parameters, 1.4T tokens",
    rtol=1e-6,
    atol=0,
)
n_, d_ = compute_optimal(1e21, tokens_per_param=100.0)
check_close(
    [d_ / n_, training_flops(n_, d_)],
    [100.0, 1e21],
    "tokens_per_param=100 is respected and spends the budget",
    rtol=1e-9,
    atol=0,
)
check_close(training_flops(7e9, 2e12), 8.4e22, "a 7B model on 2T tokens", rtol=1e-9, atol=0)
### END HIDDEN TESTS

# %% [markdown]
# The figure places a few well-documented models against the 20-tokens-per-parameter line.
# Dotted lines are curves of equal compute: moving along one trades parameters for data at the
# same cost.

# %% tags=["demo"] mystnb={"image": {"alt": "Log-log plot of training tokens against parameters for five published models. A solid line marks 20 tokens per parameter: GPT-3 and Gopher lie far below it (undertrained), Chinchilla on it, LLaMA 65B and Llama 2 70B above it. Dotted diagonal lines mark equal training compute."}}
known = {  # name: (parameters, training tokens, label offset in points), as published
    "GPT-3": (175e9, 300e9, (-20, -22)),
    "Gopher": (280e9, 300e9, (6, 6)),
    "Chinchilla": (70e9, 1.4e12, (8, -10)),
    "LLaMA 65B": (65e9, 1.4e12, (-92, -3)),
    "Llama 2 70B": (70e9, 2.0e12, (-30, 8)),
}
fig, ax = plt.subplots(figsize=(7, 4))
n_grid = np.logspace(10, 12.2, 50)
ax.plot(n_grid, 20 * n_grid, "k-", lw=1, label="D = 20 N (Chinchilla)")
for c in (1e23, 3e23, 1e24):
    ax.plot(n_grid, c / (6 * n_grid), ":", color="0.6", lw=1)
    ax.text(c / (6 * 1.2e11), 1.2e11, f"C = {c:.0e}", fontsize=7, color="0.4")
for name, (n_, d_, offset) in known.items():
    ax.scatter(n_, d_, zorder=3)
    ax.annotate(
        f"{name} ({d_ / n_:.1f} tok/param)",
        (n_, d_),
        fontsize=7,
        xytext=offset,
        textcoords="offset points",
    )
ax.set(
    xscale="log",
    yscale="log",
    xlabel="parameters N",
    ylabel="training tokens D",
    xlim=(2e10, 2e12),
    ylim=(1e11, 2e13),
    title="compute-optimal training (C = 6ND)",
)
ax.legend(loc="upper right", fontsize=8)
plt.tight_layout()
plt.show()
if base_meta is not None:
    n_base = base_model.num_parameters(non_embedding=True)
    base_flops = 6 * n_base * tokens_seen
    glue("base_flops", f"{base_flops:.1e}")
    glue("base_ratio", f"{tokens_seen / n_base:.0f}")
    glue("gpt3_ratio", f"{3.15e23 / base_flops / 1e9:.0f} billion")
    print(
        f"base model: N = {n_base:,} (without embeddings), D = {tokens_seen:,} characters, "
        f"{tokens_seen / n_base:.1f} per parameter, C = 6ND = {base_flops:.2e} FLOPs"
    )
else:
    for key in ("base_flops", "base_ratio", "gpt3_ratio"):
        glue(key, "(not available offline)")

# %% [markdown]
# The same arithmetic for the course's base model (its $N$ without the embeddings, as in
# {cite}`kaplan2020scaling`, and $D$ the characters it was trained on): it saw about
# {glue:text}`base_ratio` characters per parameter (the Chinchilla
# rule would ask for 20 tokens) and cost {glue:text}`base_flops` FLOPs to train, about
# {glue:text}`gpt3_ratio` times less than GPT-3. (Characters are not subword tokens, and the
# rule was fitted on models thousands of times larger, so this is an illustration, not a
# prediction.)
#
# ## 7. Mixture of experts: more parameters, same compute per token
#
# The MLP holds about two thirds of a Transformer block's parameters. A **mixture-of-experts**
# (MoE) layer {cite}`shazeer2017moe` replaces that one MLP by $E$ independent MLPs, the
# *experts*, and a small *router* that sends each token to only $k$ of them. The layer holds
# $E$ MLPs' worth of parameters but each token pays for $k$. Attention, embeddings and norms
# stay shared: **only the MLP blocks are experts**.
#
# For a token $x \in \mathbb{R}^C$ with router weights $W_r \in \mathbb{R}^{E \times C}$:
#
# $$
# p = \operatorname{softmax}(W_r x), \qquad S = \text{the } k \text{ experts with the largest } p_e, \qquad
# y = \sum_{e \in S} \frac{p_e}{\sum_{j \in S} p_j}\, \mathrm{FFN}_e(x).
# $$
#
# Switch Transformers {cite}`fedus2022switch` use $k=1$; GShard {cite}`lepikhin2021gshard`
# and Mixtral {cite}`jiang2024mixtral` use $k=2$ with the two gate weights renormalised to
# sum to 1, as above. Left alone, a router tends to collapse onto a few favourite experts
# (which then train faster and get chosen even more), so training adds a **load-balancing
# loss**: with $f_e$ the share of assignments that went to expert $e$ and $P_e$ its mean
# router probability, $\mathcal{L}_{\text{aux}} = E \sum_e f_e P_e$, which is 1 for a perfectly
# balanced router and up to $E$ for a collapsed one; a small multiple (about 0.01) is added
# to the language-model loss.
#
# **Mixtral 8x7B** has $E = 8$ experts per layer and $k = 2$. Its name suggests 56B
# parameters, but only the MLPs are replicated: it has **46.7B parameters in total and uses
# 12.9B per token** (the shared attention and embeddings plus two of the eight MLPs in each of
# its 32 layers), so it runs at the speed and cost of a 13B dense model.
#
# ### Exercise 7: a top-2 mixture-of-experts layer
#
# Write `top2_moe(x, router_weight, experts)` for tokens `x` `(N, C)`, router weights
# `(E, C)` and a list of `E` expert modules (each maps `(n, C)` to `(n, C)`). Compute the router
# probabilities, choose the two most probable experts per token (most probable first),
# renormalise their two probabilities, and combine the experts' outputs. Run every expert
# **only on the tokens routed to it** (that is the point of an MoE). Return
# `(y, weights, indices)`: `y` `(N, C)`, the renormalised gate weights `(N, 2)` and the chosen
# experts `(N, 2)` (long).


# %% nbgrader={"grade": false, "grade_id": "top2_moe", "locked": false, "schema_version": 3, "solution": true, "task": false}
def top2_moe(
    x: torch.Tensor, router_weight: torch.Tensor, experts: list
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-2 MoE: x (N, C) -> (y (N, C), gate weights (N, 2), expert indices (N, 2))."""
    ### BEGIN SOLUTION
    probs = torch.softmax(x @ router_weight.T, dim=-1)  # (N, E)
    top_p, indices = torch.topk(probs, 2, dim=-1)  # (N, 2) each
    weights = top_p / top_p.sum(dim=-1, keepdim=True)
    y = torch.zeros_like(x)
    for e, expert in enumerate(experts):
        token_idx, slot = torch.where(indices == e)
        if token_idx.numel():
            y.index_add_(0, token_idx, weights[token_idx, slot, None] * expert(x[token_idx]))
    return y, weights, indices
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "top2_moe_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def _moe_layer(dim: int, n_experts: int, seed: int) -> MoEFeedForward:
    torch.manual_seed(seed)
    layer = MoEFeedForward(dim, 2 * dim, n_experts=n_experts, top_k=2)
    nn.init.normal_(layer.router.weight, std=1.0)  # a decisive router
    return layer


moe_ = _moe_layer(16, 4, seed=0)
x_ = torch.randn(10, 16)
with torch.no_grad():
    y_, w_, i_ = top2_moe(x_, moe_.router.weight, list(moe_.experts))
    want_routing_ = moe_.route(x_)
    probs_ = torch.softmax(x_ @ moe_.router.weight.T, -1)
    raw_top2_ = probs_.topk(2, -1).values
    check_equal(i_.tolist(), want_routing_.indices.tolist(), "chosen experts (most probable first)")
    check_close(
        w_,
        want_routing_.weights,
        "gate weights",
        hints={
            "forgot to renormalise the two probabilities": raw_top2_,
            "softmax over the tokens (dim=0) instead of the experts": torch.softmax(
                x_ @ moe_.router.weight.T, 0
            )
            .topk(2, -1)
            .values,
        },
    )
    check_close(y_, moe_(x_), "MoE output against llmcourse.nn.MoEFeedForward", atol=1e-5)


### BEGIN HIDDEN TESTS
class _Counting(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.rows = inner, 0

    def forward(self, z):
        self.rows += z.shape[0]
        return self.inner(z)


moe_ = _moe_layer(12, 8, seed=1)
x_ = torch.randn(40, 12)
counted_ = [_Counting(e) for e in moe_.experts]
with torch.no_grad():
    y_, w_, i_ = top2_moe(x_, moe_.router.weight, counted_)
    check_close(y_, moe_(x_), "8 experts, 40 tokens against llmcourse", atol=1e-5)
    check_equal(
        [c.rows for c in counted_],
        [int((i_ == e).sum()) for e in range(8)],
        "rows each expert processed (run an expert only on the tokens routed to it)",
    )
    y1_, _, _ = top2_moe(x_[:1], moe_.router.weight, list(moe_.experts))
    check_close(y1_, moe_(x_[:1]), "a single token", atol=1e-5)
### END HIDDEN TESTS

# %% [markdown]
# The library's `MoEFeedForward` is the same layer with `FeedForward` experts; it also records
# the routing and the load-balancing loss of its last call. Below, an (untrained) 8-expert
# layer routes the base model's final hidden states for a passage of Shakespeare; then we
# count Mixtral's parameters from its published configuration.

# %% tags=["demo"] mystnb={"image": {"alt": "Bar chart of how many of 512 token-to-expert assignments each of 8 experts of an untrained top-2 MoE layer receives for real hidden states, compared with the even share of 128 per expert; the counts are uneven."}}
passage = torch.tensor([char_tok.encode(text[5000 : 5000 + 256])])
with torch.no_grad():
    hidden = lm(passage[:, -lm.config.block_size :]).hidden[0]  # (T, C) = (256, 128)
    torch.manual_seed(0)
    moe_demo = MoEFeedForward(
        hidden.shape[-1], 4 * hidden.shape[-1], n_experts=8, top_k=2, activation="gelu_tanh"
    )
    moe_demo(hidden)
load = torch.bincount(moe_demo.last_routing.indices.flatten(), minlength=8)
total, active = moe_demo.parameter_counts()
fig, ax = plt.subplots(figsize=(6, 2.8))
ax.bar(range(8), load.numpy())
ax.axhline(load.sum().item() / 8, color="k", ls="--", lw=1, label="even share")
ax.set(
    xlabel="expert",
    ylabel="assignments",
    title=f"top-2 routing of {hidden.shape[0]} tokens (untrained router)",
)
ax.legend()
plt.tight_layout()
plt.show()
print(f"load-balancing loss {moe_demo.aux_loss.item():.3f} (1.0 = perfectly balanced)")
print(f"this layer: {total:,} parameters, {active:,} used per token")
glue("moe_aux", f"{moe_demo.aux_loss.item():.2f}")


def moe_transformer_params(
    d: int,
    layers: int,
    ffn_hidden: int,
    experts: int,
    k: int,
    vocab: int,
    heads: int,
    kv_heads: int,
) -> tuple[int, int]:
    """(total, active per token) parameters of a Mixtral-style model (SwiGLU experts, grouped-query
    attention, RMSNorm, untied embeddings)."""
    head_dim = d // heads
    attention = 2 * d * d + 2 * d * kv_heads * head_dim  # W_q, W_o and the smaller W_k, W_v
    expert = 3 * d * ffn_hidden  # SwiGLU: gate, up, down
    shared = attention + experts * d + 2 * d  # + router + two RMSNorm gains
    embeddings = 2 * vocab * d + d  # input table, output layer, final norm
    return (
        layers * (shared + experts * expert) + embeddings,
        layers * (shared + k * expert) + embeddings,
    )


mixtral_total, mixtral_active = moe_transformer_params(4096, 32, 14336, 8, 2, 32000, 32, 8)
print(
    f"Mixtral 8x7B: {mixtral_total / 1e9:.1f}B parameters in total, {mixtral_active / 1e9:.1f}B active per token"
)
if (round(mixtral_total / 1e9, 1), round(mixtral_active / 1e9, 1)) != (46.7, 12.9):
    raise RuntimeError("the Mixtral parameter count does not match the published 46.7B / 12.9B")
glue("mixtral_total", f"{mixtral_total / 1e9:.1f}B")
glue("mixtral_active", f"{mixtral_active / 1e9:.1f}B")

# %% [markdown]
# Even an untrained router spreads the tokens unevenly (load-balancing loss
# {glue:text}`moe_aux`); training with the auxiliary loss keeps it near 1. Counting from the
# configuration (hidden size 4096, 32 layers, SwiGLU experts of width 14336, 8 experts, top 2,
# grouped-query attention with 8 key/value heads, vocabulary 32000) gives
# {glue:text}`mixtral_total` parameters in total and {glue:text}`mixtral_active` per token,
# the published figures.
#
# ## 8. Data-parallel training
#
# When one device is too slow, **data parallelism** gives each of $W$ processes (ranks) a full
# copy of the model and a different slice of every batch. Each rank computes the gradient of
# the mean loss over its slice; an **all-reduce** then averages the gradients across ranks, so
# every rank holds
#
# $$ \bar g = \frac{1}{W} \sum_{r=1}^{W} \nabla_\theta \frac{1}{B}\sum_{i \in \text{slice}_r} \ell_i
#           = \nabla_\theta \frac{1}{WB} \sum_{i \in \text{batch}} \ell_i, $$
#
# the gradient of the whole batch of $W \times B$ examples, and takes the same optimizer step.
# The copies never drift apart, and the result equals single-process training on the combined
# batch. PyTorch's `DistributedDataParallel` {cite}`li2020pytorchddp` overlaps the all-reduce
# with the backward pass; the library's `Trainer` wraps the model in it automatically when the
# script is started by `torchrun`. (Model, tensor and pipeline parallelism, which split the
# model itself, are for models too large for one device.)
#
# The cell below writes a small training script and runs it twice: once as a single process on
# batches of 8 windows of Tiny Shakespeare, and once as **two CPU processes** with
# `torchrun --nproc_per_node 2` (the gloo backend), each taking 4 of the same 8 windows.

# %% tags=["demo"]
DDP_SCRIPT = '''
"""Train a tiny GPT for a few steps, alone or as one of several torchrun processes."""
import json
import sys

import torch
from safetensors.torch import load_file, save_file

from llmcourse.models.gpt import GPT, GPTConfig
from llmcourse.optim import AdamW
from llmcourse.train import Trainer, TrainerConfig, cleanup_distributed, init_distributed

STEPS, GLOBAL_BATCH, BLOCK = 5, 8, 32
info = init_distributed("cpu")  # joins the process group under torchrun; rank 0 of 1 otherwise
torch.set_num_threads(1)
tokens = load_file(sys.argv[1])["tokens"]
rows_per_rank = GLOBAL_BATCH // info.world_size
step = [0]


def my_share_of_the_batch():
    """Every rank draws the same GLOBAL_BATCH windows for this step and keeps its own slice."""
    gen = torch.Generator().manual_seed(step[0])
    step[0] += 1
    starts = torch.randint(len(tokens) - BLOCK - 1, (GLOBAL_BATCH,), generator=gen)
    windows = tokens[starts[:, None] + torch.arange(BLOCK + 1)]  # (GLOBAL_BATCH, BLOCK + 1)
    mine = windows[info.rank * rows_per_rank : (info.rank + 1) * rows_per_rank]
    return mine[:, :-1], mine[:, 1:]


torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=97, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32))
trainer = Trainer(model, AdamW(model.parameters(), lr=3e-3), my_share_of_the_batch, eval_sources={},
                  config=TrainerConfig(max_steps=STEPS, progress=False, log=False, device="cpu"))
history = trainer.fit()  # under torchrun the Trainer wraps the model in DistributedDataParallel
if info.is_main:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, sys.argv[2] + ".safetensors")
    with open(sys.argv[2] + ".json", "w") as f:
        json.dump({"world_size": info.world_size, "loss": history.loss}, f)
cleanup_distributed()
'''

work = Path(tempfile.mkdtemp(prefix="ddp_demo_"))
(work / "train_tiny.py").write_text(DDP_SCRIPT)
save_file({"tokens": ids[:50_000].clone()}, str(work / "tokens.safetensors"))
env = {**os.environ, "OMP_NUM_THREADS": "1"}
commands = {
    "one process, 8 windows per step": [
        sys.executable,
        "train_tiny.py",
        "tokens.safetensors",
        "single",
    ],
    "two processes, 4 windows each": [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "train_tiny.py",
        "tokens.safetensors",
        "ddp",
    ],
}
t0 = time.perf_counter()
for name, cmd in commands.items():
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=240)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
ddp_seconds = time.perf_counter() - t0
runs = {tag: json.loads((work / f"{tag}.json").read_text()) for tag in ("single", "ddp")}
weights = {tag: load_file(str(work / f"{tag}.safetensors")) for tag in ("single", "ddp")}
max_diff = max(
    (weights["single"][k] - weights["ddp"][k]).abs().max().item() for k in weights["single"]
)
torch.manual_seed(0)
initial = GPT(GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=32)).state_dict()
moved = max((weights["single"][k] - initial[k]).abs().max().item() for k in initial)
for tag, run in runs.items():
    print(f"{tag:>6} (world size {run['world_size']}): losses {[round(v, 4) for v in run['loss']]}")
print(
    f"largest weight difference between the two runs: {max_diff:.1e} "
    f"(the weights moved by up to {moved:.1e} during training); both runs took {ddp_seconds:.0f} s"
)
if max_diff > 1e-5:
    raise RuntimeError("data-parallel training diverged from single-process training")
glue("ddp_diff", f"{max_diff:.1e}")
glue("ddp_moved", f"{moved:.1e}")

# %% [markdown]
# The two processes report the same losses as the single process, and their final weights
# differ by at most {glue:text}`ddp_diff` (floating-point rounding in the all-reduce), while
# training moved them by up to {glue:text}`ddp_moved`. The same launcher trains the course's
# model on several processes: `torchrun --nproc_per_node 2 -m llmcourse.cli train --config ...`.
# With $W$ ranks the *global* batch is $W$ times the per-rank batch, which is why learning
# rates are usually retuned when the number of devices changes.
#
# ```{admonition} Common misconceptions
# :class: warning
#
# - **"GPT stands for General Purpose Transformer."** It is *Generative Pre-trained
#   Transformer*: a model pretrained to generate text, then adapted.
# - **"GPT is an encoder-decoder with cross-attention."** GPT is *decoder-only*: each block is
#   masked self-attention and an MLP. There is no encoder and no cross-attention; the prompt is
#   simply the beginning of the sequence.
# - **"GPT uses post-norm (Add & Norm after each sublayer)."** GPT-2 and GPT-3 use *pre-norm*,
#   $x + f(\mathrm{LN}(x))$, with a final LayerNorm; LLaMA also uses pre-norm, with RMSNorm and
#   rotary position embeddings. Post-norm is the original 2017 Transformer (and BERT).
# - **"A Transformer generates the whole answer in one forward pass."** Generation needs one
#   forward pass per output token. The KV cache makes each pass cheaper (only the new token
#   is processed), not fewer.
# - **"Masked positions get a score of $+\infty$."** They get $-\infty$ (or a large negative
#   number) before the softmax, so their weight is 0; a $+\infty$ gives NaN. Masking does not
#   save compute in a standard implementation.
# - **"Top-p keeps the tokens whose cumulative probability is at most $p$."** It keeps the
#   *smallest* set whose cumulative probability is *at least* $p$; the "at most" version can
#   fall short of $p$, or keep nothing. Which tokens form the nucleus can only be decided from
#   the whole distribution: for "the 0.35, a 0.25, dog 0.10, runs 0.05, ..." and $p = 0.9$ the
#   four listed tokens hold only 0.75, so the set is not determined by them.
# - **"A model too small for its data is undertrained."** The reverse: by Chinchilla's
#   analysis a model *too large for its data* (GPT-3: 175B parameters, 300B tokens, under 2
#   tokens per parameter) is undertrained; compute-optimal training uses about 20 tokens per
#   parameter, and $C \approx 6ND$.
# - **"Mixtral 8x7B is eight 7B models, 56B parameters, all used per token."** Only the MLP
#   blocks are experts; attention and embeddings are shared. It has 46.7B parameters in total
#   and uses 12.9B per token (two experts per layer).
# - **"Data parallelism splits the model across devices."** It replicates the model and splits
#   the *data*; gradients are averaged so that all copies stay identical. Splitting the model
#   is model (tensor or pipeline) parallelism.
# ```
#
# ## Summary
#
# A GPT is a stack of pre-norm decoder blocks, masked self-attention and an MLP, trained to
# predict the next token. You wrote its causal attention, checked a live training run against
# the reference run of the course's base model, turned logits into sampling distributions
# (temperature, top-k, top-p, penalties), searched for likely sequences with beams, built the
# attention step of a key/value cache and timed it, sized models with $C \approx 6ND$ and the
# Chinchilla rule, wrote a top-2 mixture-of-experts layer and watched two processes train in
# lockstep with one. The library's versions (`llmcourse.models.gpt.GPT`,
# `llmcourse.generation.generate` / `beam_search`, `llmcourse.nn.KVCache`,
# `llmcourse.nn.MoEFeedForward`, `llmcourse.train.Trainer` under `torchrun`) are what the
# following chapters build on: chapter 09 fine-tunes the base model, chapter 11 aligns it.
#
# ## References
#
# {cite}`radford2018gpt,radford2019gpt2,brown2020gpt3` (GPT, GPT-2, GPT-3),
# {cite}`vaswani2017attention` (the Transformer), {cite}`xiong2020prenorm` (pre-norm),
# {cite}`karpathy2022nanogpt` (nanoGPT, whose Tiny Shakespeare setup the base model follows),
# {cite}`holtzman2020curious` (nucleus sampling), {cite}`keskar2019ctrl` (repetition penalty),
# {cite}`pope2023inference` (inference and the KV cache), {cite}`kaplan2020scaling` and
# {cite}`hoffmann2022chinchilla` (scaling laws), {cite}`shazeer2017moe,lepikhin2021gshard,fedus2022switch,jiang2024mixtral`
# (mixtures of experts), {cite}`li2020pytorchddp` (PyTorch DDP). Full entries are on the
# [bibliography](../book/bibliography.md) page.
