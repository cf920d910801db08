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
# # 04 Sequence to sequence and attention
#
# A language model continues one sequence. Many tasks instead turn one sequence into *another*
# of a different length: translation, summarisation, speech to text, or, in this chapter,
# rewriting dates such as "the 3rd of March 2021" or "03/03/21" into the ISO form
# "2021-03-03". The recipe that made neural machine translation work in 2014 is the
# **encoder-decoder** (or *sequence-to-sequence*, seq2seq) model: one recurrent network reads the
# input, a second one writes the output {cite}`sutskever2014seq2seq,cho2014gru`.
#
# Its first version passed a single vector from the encoder to the decoder, and that vector is
# a bottleneck: everything about the input has to fit into it. **Attention**
# {cite}`bahdanau2015attention` removed the bottleneck by letting the decoder look back at every
# input position at every output step. The same idea, with the recurrence removed, is the
# Transformer of chapters 05 and 06.
#
# **Learning objectives.** After this chapter you can
#
# 1. describe the encoder-decoder model and *measure* its fixed-vector bottleneck (accuracy
#    against input length, with and without attention);
# 2. implement Bahdanau (additive) attention with a padding mask, and Luong (dot and general)
#    attention, matching the course library;
# 3. explain teacher forcing and exposure bias, and measure the gap between teacher-forced and
#    free-running accuracy;
# 4. read an attention alignment heatmap (rows: output positions, columns: input positions);
# 5. implement beam search and show that it finds more likely outputs than greedy decoding;
# 6. compute BLEU (clipped counts, brevity penalty) and ROUGE by hand, and know their limits.
#
# **How to use this notebook.** Cells marked *Exercise* are graded: replace
# `raise NotImplementedError()` with your code, then run the test cell below it. The visible
# tests tell you what was expected and what came back; hidden tests run at grading time.
# Demonstrations call the course library `llmcourse`, so they work before you solve anything.

# %%
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

import llmcourse
from llmcourse.checks import check_close, check_equal, check_shape
from llmcourse.display import glue
from llmcourse.metrics import corpus_bleu, rouge_l, rouge_n, sentence_bleu, tokenize
from llmcourse.models.seq2seq_data import collate, exact_match, iterate_batches, make_date_task
from llmcourse.optim import Adam, clip_grad_norm
from llmcourse.recurrent import AdditiveAttention, DotAttention, GeneralAttention, Seq2Seq

# Small recurrent models run many tiny matrix products one after another; a single thread
# avoids the cost of splitting each of them across cores.
torch.set_num_threads(1)
torch.manual_seed(0)
print("llmcourse", llmcourse.__version__, "| torch", torch.__version__)

# %% [markdown]
# ## 1. The task: normalising dates
#
# We need a sequence-to-sequence task that is small enough to train in seconds on a laptop,
# needs no download, and has a single correct answer that we can check exactly. The library's
# date generator writes dates between 1950 and 2049 in ten surface forms and asks for the ISO
# form; we use the six shortest, to keep training short. An input may list several dates
# separated by ";", and then the output lists all of them. Inputs and outputs are handled
# character by character. The test split uses calendar days that never occur in training, so
# the model cannot pass by memorising.

# %%
FORMATS = ["dd/mm/yy", "d.m.yyyy", "dd-mm-yyyy", "d_mon_yyyy", "mon_d_yy_lower", "month_d_yyyy"]
task = make_date_task(n_train=4000, n_val=0, n_test=300, seed=0, n_dates=(1, 3), formats=FORMATS)
vocab = task.vocab
for pair in task.train[:6]:
    print(f"{pair.source!r:62} -> {pair.target}")
n_dates_of = [len(p.formats) for p in task.test]
print(
    f"{len(task.train)} training and {len(task.test)} test pairs; "
    f"{vocab.vocab_size} symbols (characters plus <pad>, <bos>, <eos>, <unk>)"
)


# %% [markdown]
# ## 2. The encoder-decoder and its bottleneck
#
# Write the input characters as $x_1, \dots, x_S$ and the output as $y_1, \dots, y_T$, ending
# with an end-of-sequence symbol. The model factorises the probability of the output left to
# right, each factor conditioned on the whole input:
#
# $$ p(y \mid x) = \prod_{t=1}^{T} p(y_t \mid y_1, \dots, y_{t-1}, x). $$
#
# **Encoder.** A recurrent network (here a bidirectional GRU, chapter 03) reads $x$ and produces
# one vector per input position, $h_j = [\overrightarrow{h}_j; \overleftarrow{h}_j]$, which
# describes character $j$ in its context.
#
# **Decoder.** A second GRU writes the output one symbol at a time. Its state $s_t$ is updated
# from the previous output symbol and a *context vector* $c_t$, and a linear layer plus softmax
# turns the state into a distribution over the next symbol:
#
# $$ s_t = \mathrm{GRU}\big([e(y_{t-1}); c_t],\ s_{t-1}\big), \qquad
#    p(y_t \mid y_{<t}, x) = \mathrm{softmax}\big(W_o [s_t; c_t; e(y_{t-1})]\big). $$
#
# **Without attention** the context is the same vector at every step: the encoder's final
# states, $c_t = c = [\overrightarrow{h}_S; \overleftarrow{h}_1]$, which also sets the
# decoder's initial state. Three dates in, 32 characters out, and all of it has to pass
# through this one fixed-size vector:
#
# ```text
#  x_1  x_2  ...  x_S                                 y_1    y_2   ...   y_T
#   |    |         |                                   ^      ^           ^
#  [h_1][h_2] ... [h_S] --> c (one vector) --> [s_1]->[s_2]-> ... ->[s_T]
#                             |                   ^      ^            ^
#                             +-------------------+------+------------+
# ```
#
# The model is trained by minimising the cross-entropy $-\sum_t \log p(y_t \mid y_{<t}, x)$ of
# the correct outputs. The library's `Seq2Seq` implements exactly this; its `attention=None`
# option gives the bottleneck model.
#
# ## 3. Attention
#
# Bahdanau, Cho and Bengio {cite}`bahdanau2015attention` let the decoder choose, at every
# step, which input positions to read. At step $t$ the previous decoder state $s_{t-1}$ acts as
# a **query**; every encoder vector $h_j$ is a **key** (something to match against) and a
# **value** (something to read). A small network scores how well each key fits the query, a
# softmax over the input positions turns the scores into weights, and the context is the
# weighted average of the values:
#
# $$
# e_{tj} = v^\top \tanh\big(W_q\, s_{t-1} + W_k\, h_j + b\big), \qquad
# \alpha_{tj} = \frac{\exp(e_{tj})}{\sum_{j'=1}^{S} \exp(e_{tj'})}, \qquad
# c_t = \sum_{j=1}^{S} \alpha_{tj}\, h_j .
# $$
#
# This is **additive** attention: query and key are projected to a common size $A$, added, and
# squashed. The weights $\alpha_{t1}, \dots, \alpha_{tS}$ are a probability distribution *over the
# input positions*, one distribution per output step. Now the decoder no longer needs the
# encoder to compress the input: when it writes the year, it can put its weight on the year's
# digits.
#
# **Padding.** A batch holds inputs of different lengths, right-padded to the longest. Padded
# positions must receive exactly zero weight, or the context would mix in vectors that do not
# belong to the input. The fix is to set their scores to $-\infty$ *before* the softmax, since
# $e^{-\infty} = 0$ (setting them to $0$ or $+\infty$ would not work).
#
# ### Exercise 1: Bahdanau (additive) attention
#
# Write `additive_attention` for one decoder step over a batch. Shapes: `query` $(B, D_q)$,
# `keys` $(B, S, D_k)$ (also used as the values), `mask` $(B, S)$ boolean with `True` for real
# input positions; weights `w_q` $(A, D_q)$, `w_k` $(A, D_k)$, `b_k` $(A,)$, `v` $(A,)$. Return
# `(context, weights)` with shapes $(B, D_k)$ and $(B, S)$. The softmax runs over the **input
# positions**, and masked positions get weight exactly 0. The test compares your function with
# `llmcourse.recurrent.AdditiveAttention` holding the same weights.

# %% nbgrader={"grade": false, "grade_id": "additive_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def additive_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    mask: torch.Tensor,
    w_q: torch.Tensor,
    w_k: torch.Tensor,
    b_k: torch.Tensor,
    v: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive attention: query (B, Dq), keys (B, S, Dk), mask (B, S) -> (B, Dk), (B, S)."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "additive_attention_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def _additive_reference(dq, dk, a, seed):
    """The library's module and its weights laid out as in the exercise."""
    torch.manual_seed(seed)
    module = AdditiveAttention(dq, dk, a)
    weights = (module.w_q.weight, module.w_k.weight, module.w_k.bias, module.v.weight[0])
    return module, [w.detach() for w in weights]


ref_attention, attention_weights_ = _additive_reference(4, 6, 3, seed=0)
q_, k_ = torch.randn(2, 4), torch.randn(2, 5, 6)  # B = 2, S = 5
mask_ = torch.tensor([[True, True, True, True, True], [True, True, True, False, False]])
want_context, want_weights = ref_attention(q_, k_, mask=mask_)
raw_scores_ = ref_attention.score(q_.unsqueeze(1), ref_attention.prepare(k_)).squeeze(1).detach()
got_context, got_weights = additive_attention(q_, k_, mask_, *attention_weights_)
check_shape(got_weights, (2, 5), "attention weights (B, S)")
check_shape(got_context, (2, 6), "context (B, Dk)")
check_close(
    got_weights,
    want_weights,
    "attention weights against llmcourse AdditiveAttention",
    hints={
        "softmax over the wrong axis (the batch, dim=0, instead of the input positions)": (
            torch.softmax(raw_scores_.masked_fill(~mask_, float("-inf")), dim=0)
        ),
        "the padding mask is not applied": torch.softmax(raw_scores_, dim=-1),
        "masked scores set to 0 instead of -inf": (
            torch.softmax(raw_scores_.masked_fill(~mask_, 0.0), dim=-1)
        ),
    },
)
check_close(got_weights[1, 3:], [0.0, 0.0], "weights on the two padded positions of row 1")
check_close(got_context, want_context, "context vectors against llmcourse AdditiveAttention")


# %% [markdown]
# ### Luong attention: dot and general scores
#
# Luong, Pham and Manning {cite}`luong2015effective` simplified the score. Their **dot** score
# compares query and key directly, $e_{tj} = s^\top h_j$ (query and key must have the same size);
# their **general** score puts a learned matrix in between, $e_{tj} = s^\top W_a h_j$, which also
# allows different sizes. The rest (masked softmax over input positions, weighted average of
# the values) is unchanged. Dot scores are a single batched matrix product, which is why the
# Transformer uses them, divided by $\sqrt{d_k}$ (chapter 05); Luong et al. did not scale.
# (They also used the *current* decoder state $s_t$ as the query and mixed the context in after
# the recurrent step; the library keeps Bahdanau's ordering for every score, so only the score
# function differs.)
#
# ### Exercise 2: Luong attention
#
# Write `luong_attention(query, keys, mask, w_a=None)`: the dot score when `w_a` is `None`, the
# general score $s^\top W_a h_j$ when `w_a` is a matrix of shape $(D_q, D_k)$. Same shapes and
# return values as Exercise 1; no scaling.

# %% nbgrader={"grade": false, "grade_id": "luong_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def luong_attention(
    query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, w_a: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dot (w_a None) or general (w_a (Dq, Dk)) attention: (B, Dq), (B, S, Dk) -> (B, Dk), (B, S)."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "luong_attention_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
torch.manual_seed(1)
q_, k_ = torch.randn(2, 4), torch.randn(2, 5, 4)
mask_ = torch.tensor([[True, True, True, True, False], [True, True, True, True, True]])
want_context, want_weights = DotAttention(4)(q_, k_, mask=mask_)
got_context, got_weights = luong_attention(q_, k_, mask_)
dot_scores_ = torch.einsum("bd,bsd->bs", q_, k_).masked_fill(~mask_, float("-inf"))
check_close(
    got_weights,
    want_weights,
    "dot-attention weights against llmcourse DotAttention",
    hints={
        "scores divided by sqrt(d) (that is the Transformer's scaled dot product)": (
            torch.softmax(dot_scores_ / 2.0, dim=-1)
        )
    },
)
check_close(got_context, want_context, "dot-attention context")
general = GeneralAttention(4, 4)
w_a_ = general.w_a.weight.detach()  # (Dq, Dk)
want_context, want_weights = general(q_, k_, mask=mask_)
got_context, got_weights = luong_attention(q_, k_, mask_, w_a_)
transposed_ = torch.einsum("bd,bsd->bs", q_, k_ @ w_a_).masked_fill(~mask_, float("-inf"))
check_close(
    got_weights,
    want_weights.detach(),
    "general-attention weights against llmcourse GeneralAttention",
    hints={"W_a transposed (computed s^T W_a^T h)": torch.softmax(transposed_, dim=-1)},
)

# %% [markdown]
# ## 4. Measuring the bottleneck
#
# Now the experiment. Two models with the same encoder, decoder and training budget, one with
# additive attention and one without, are trained on inputs that list one to three dates. Both
# are the library's `Seq2Seq` (a bidirectional GRU encoder with 32 units per direction, a GRU
# decoder with 64), trained with Adam and gradient clipping from chapter 00. The learning rate
# is warmed up over 10 steps and then kept constant: in runs this short, a decaying rate made
# the attention model slower to discover its alignment. This is a short live run, sized for a
# laptop CPU.

# %% tags=["demo"] mystnb={"image": {"alt": "Training loss (cross-entropy per output character, log scale) against step for the seq2seq model with additive attention and the one without attention; the attention model's loss falls much lower."}}
EMBED, HIDDEN, BATCH, EPOCHS, MAX_LR, WARMUP = 16, 32, 64, 4, 1e-2, 10


def train_seq2seq(attention: str | None) -> tuple[Seq2Seq, list[float], float]:
    """Train one model on task.train; returns (model, loss per step, seconds)."""
    torch.manual_seed(0)
    model = Seq2Seq.build(
        vocab.vocab_size,
        vocab.vocab_size,
        embed_dim=EMBED,
        hidden_size=HIDDEN,
        attention=attention,
    )
    optimizer = Adam(model.parameters(), lr=MAX_LR)
    losses, step, t0 = [], 0, time.perf_counter()
    for epoch in range(EPOCHS):
        for batch in iterate_batches(task.train, vocab, BATCH, seed=epoch):
            for group in optimizer.param_groups:  # linear warm-up, then constant
                group["lr"] = MAX_LR * min(1.0, (step + 1) / WARMUP)
            loss = model(batch.src, batch.tgt, batch.src_mask).loss  # teacher forcing
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}")
            optimizer.zero_grad()
            loss.backward()
            clip_grad_norm(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            step += 1
    return model.eval(), losses, time.perf_counter() - t0


runs = {
    name: train_seq2seq(kind) for name, kind in [("attention", "additive"), ("no attention", None)]
}
fig, ax = plt.subplots(figsize=(7, 3.5))
for (name, (_, losses, seconds)), color in zip(runs.items(), ["C0", "C1"], strict=True):
    smooth = np.convolve(losses, np.ones(10) / 10, mode="valid")
    ax.plot(losses, color=color, alpha=0.25)
    ax.plot(np.arange(9, len(losses)), smooth, color=color, label=f"{name} ({seconds:.0f} s)")
ax.set(
    xlabel=f"step (batches of {BATCH})",
    ylabel="cross-entropy per character",
    yscale="log",
    title="training the two seq2seq models",
)
ax.legend()
plt.show()
attn_model, no_attn_model = runs["attention"][0], runs["no attention"][0]
for name, (model, losses, seconds) in runs.items():
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{name:13}: {n_params:,} parameters, final loss {np.mean(losses[-10:]):.3f}, "
        f"{seconds:.1f} s"
    )
glue("steps", f"{len(runs['attention'][1])}")
glue("loss_attn", f"{np.mean(runs['attention'][1][-10:]):.3f}")
glue("loss_none", f"{np.mean(runs['no attention'][1][-10:]):.3f}")

# %% [markdown]
# Both models train for {glue:text}`steps` steps. The final training loss is
# {glue:text}`loss_attn` with attention and {glue:text}`loss_none` without. The loss is not
# the task, though: what counts is whether the whole output is right. The next cell decodes the
# held-out test inputs greedily (section 6 explains decoding) and reports the **exact match**,
# the fraction of outputs equal to the reference, separately for inputs with one, two and
# three dates.

# %% tags=["demo"] mystnb={"image": {"alt": "Two bar charts against the number of dates in the input (1, 2, 3), for the models with and without attention. Left, exact match on held-out test inputs: high for every length with attention, near zero without. Right, character accuracy: close to 1 with attention; without attention clearly lower and falling as the inputs get longer."}}
test_batch = collate(task.test, vocab)
max_out = 11 * max(n_dates_of)  # 10 characters and a separator or <eos> per date
greedy = {
    name: runs[name][0].greedy_decode(test_batch.src, test_batch.src_mask, max_len=max_out)
    for name in runs
}
predictions = {
    name: [vocab.decode(row) for row in result.tokens] for name, result in greedy.items()
}
lengths = sorted(set(n_dates_of))
references = [p.target for p in task.test]


def with_n_dates(values: Sequence, n: int) -> list:
    """The entries of ``values`` (one per test pair) whose input lists ``n`` dates."""
    return [v for v, k in zip(values, n_dates_of, strict=True) if k == n]


def char_accuracy(prediction: str, target: str) -> float:
    """Fraction of the target's characters that the prediction has at the same position."""
    return sum(a == b for a, b in zip(prediction, target, strict=False)) / len(target)


scores = {"exact match": {}, "character accuracy": {}}
for name, preds in predictions.items():
    scores["exact match"][name] = [
        exact_match(with_n_dates(preds, n), with_n_dates(references, n)) for n in lengths
    ]
    per_char = [char_accuracy(p, t) for p, t in zip(preds, references, strict=True)]
    scores["character accuracy"][name] = [
        float(np.mean(with_n_dates(per_char, n))) for n in lengths
    ]
mean_chars = [np.mean(with_n_dates([len(p.source) for p in task.test], n)) for n in lengths]

fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
for ax, (metric, by_model) in zip(axes, scores.items(), strict=True):
    for i, (name, values) in enumerate(by_model.items()):
        bars = ax.bar(np.arange(len(lengths)) + (i - 0.5) * 0.38, values, 0.38, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(
        np.arange(len(lengths)),
        [
            f"{n} date{'s' * (n > 1)}\n~{c:.0f} characters"
            for n, c in zip(lengths, mean_chars, strict=True)
        ],
        fontsize=9,
    )
    ax.set(ylabel=metric, ylim=(0, 1.1), title=f"{metric}, held-out test inputs")
axes[0].legend()
plt.show()
for metric, by_model in scores.items():
    for name, values in by_model.items():
        print(f"{name:13}: {metric} by number of dates {[round(v, 3) for v in values]}")
em = scores["exact match"]
if min(em["attention"]) < 0.6 or max(em["no attention"]) > min(em["attention"]):
    raise RuntimeError(f"unexpected result {em}: the attention model should win at every length")
for metric, key in [("exact match", "em"), ("character accuracy", "ca")]:
    for name, tag in [("attention", "attn"), ("no attention", "none")]:
        for n, value in zip(lengths, scores[metric][name], strict=True):
            glue(f"{key}_{tag}_{n}", f"{value:.2f}")

# %% [markdown]
# With attention, exact match is {glue:text}`em_attn_1`, {glue:text}`em_attn_2` and
# {glue:text}`em_attn_3` for one, two and three dates. Without it: {glue:text}`em_none_1`,
# {glue:text}`em_none_2` and {glue:text}`em_none_3`. The model without attention has the same
# encoder, the same decoder and the same training; the only difference is that every output
# step sees the same summary vector instead of choosing what to read. In this short run it
# gets almost no output entirely right. The character accuracy (the fraction of output
# characters that are right, at the right place) shows the trend: without attention it goes
# from {glue:text}`ca_none_1` for one date to {glue:text}`ca_none_3` for three, because more
# has to be squeezed through the same vector; with attention it stays at
# {glue:text}`ca_attn_1` to {glue:text}`ca_attn_3`. It is the pattern Bahdanau et al. measured
# on translation {cite}`bahdanau2015attention`: without attention, quality dropped as the
# sentences got longer; with attention, it did not.
#
# ### Reading an alignment heatmap
#
# The attention weights $\alpha_{tj}$ of one example form a matrix: **one row per output
# position $t$ (the query, the character being written), one column per input position $j$
# (the key, the character being read)**. Each row is a probability distribution and sums to 1.
# (Some notes draw it the other way round; with rows as queries you can read the matrix row by
# row as "while writing this, the model looked there".)

# %% tags=["demo"] mystnb={"image": {"alt": "Attention heatmap for one test input listing two dates. Rows are the output characters of the ISO dates, columns are the input characters. Bright cells form a path: while writing each output digit the model attends to the input characters that encode it, reading the year first, then going back to the month name and then to the day."}}
example = next(
    p
    for p in task.test
    if len(p.formats) == 2 and "month_d_yyyy" in p.formats and p.formats[0] != p.formats[1]
)
one = collate([example], vocab)
result = attn_model.greedy_decode(one.src, one.src_mask, max_len=max_out)
n_out = int(result.lengths[0])  # output characters including <eos>
weights = result.attention[0, :n_out].numpy()  # (output positions, input positions)
out_labels = list(vocab.decode(result.tokens[0])) + ["<eos>"]
fig, ax = plt.subplots(figsize=(9, 5.5))
im = ax.imshow(weights, cmap="viridis", aspect="auto", vmin=0, vmax=1)
ax.set_xticks(range(len(example.source)), list(example.source), fontsize=8)
ax.set_yticks(range(n_out), out_labels[:n_out], fontsize=8)
ax.set(
    xlabel="input character (key)",
    ylabel="output character (query)",
    title=f"{example.source!r} -> {vocab.decode(result.tokens[0])!r}",
)
fig.colorbar(im, ax=ax, label="attention weight (each row sums to 1)")
plt.show()
print("row sums:", np.round(weights.sum(axis=1), 4))


# %% [markdown]
# Follow the bright cells down the rows: the model reads the year before it writes the year,
# then jumps to wherever the month and the day are written in this particular format. It was
# never told where anything is; the alignment is learned from input-output pairs alone, which
# is what the title of Bahdanau et al.'s paper means by "jointly learning to align and
# translate". Treat such maps as a description of what the model read, not as a proof of *why*
# it decided: attention weights are not guaranteed to be faithful explanations
# {cite}`jain2019attention`.
#
# ## 5. Teacher forcing and exposure bias
#
# During training the decoder's input at step $t$ is the **correct** previous character
# $y_{t-1}$ from the data, not the model's own guess. This is **teacher forcing**
# {cite}`williams1989teacher`: every step learns from a correct prefix, the per-step losses
# are independent given the data, and early mistakes cannot derail the rest of a training
# example. (For a Transformer it also lets all positions be trained in parallel.)
#
# At test time there is no teacher. The decoder consumes its own previous outputs, and a
# prefix containing its own mistakes is something it never saw in training. One wrong
# character can throw the following ones off. This mismatch between training and use is called
# **exposure bias** {cite}`ranzato2016sequence`. The library's
# `Seq2Seq.forward(..., teacher_forcing_ratio=r)` feeds the true character with probability $r$
# and the model's own prediction otherwise; lowering $r$ during training (*scheduled
# sampling*, {cite}`bengio2015scheduled`) is one remedy.
#
# The cell below measures on the test set how often the predicted character is right **with**
# teacher forcing (the true prefix is given, which is what the training loss measures) and
# **free-running** (greedy decoding from the model's own prefix, which is what a user gets),
# over all positions and over the positions that come after the model's first own mistake.

# %% tags=["demo"] mystnb={"image": {"alt": "Grouped bar chart of character accuracy on the test set for the two models: teacher-forced and free-running over all positions, and on the positions after the model's first free-running mistake. For both models, on the positions after their first free-running mistake, accuracy is lower when they continue from their own output than when they are given the true prefix."}}
def prefix_effect(model: Seq2Seq) -> dict[str, float]:
    """Character accuracy on the test set with the true prefix (teacher-forced) and with the
    model's own prefix (free-running), over all positions and after the first own mistake."""
    target = test_batch.tgt[:, 1:]  # (B, T): the characters to write, <eos>, then padding
    real = target != 0
    with torch.no_grad():
        forced = model(test_batch.src, test_batch.tgt, test_batch.src_mask).logits.argmax(-1)
        free = model.greedy_decode(
            test_batch.src, test_batch.src_mask, max_len=target.shape[1]
        ).tokens
    free = torch.nn.functional.pad(free, (0, target.shape[1] - free.shape[1]))  # (B, T)
    wrong = ((free != target) & real).long()
    after = real & (wrong.cumsum(1) - wrong > 0)  # positions after the first free-running mistake

    def accuracy(prediction: torch.Tensor, where: torch.Tensor) -> float:
        return ((prediction == target) & where).sum().item() / max(1, where.sum().item())

    return {
        "teacher-forced\n(all)": accuracy(forced, real),
        "free-running\n(all)": accuracy(free, real),
        "teacher-forced\n(after 1st mistake)": accuracy(forced, after),
        "free-running\n(after 1st mistake)": accuracy(free, after),
    }


effects = {name: prefix_effect(model) for name, (model, _, _) in runs.items()}
fig, ax = plt.subplots(figsize=(8, 3.6))
for i, (name, values) in enumerate(effects.items()):
    bars = ax.bar(np.arange(4) + (i - 0.5) * 0.38, list(values.values()), 0.38, label=name)
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    print(
        f"{name:13}: " + ", ".join(f"{k.replace(chr(10), ' ')} {v:.3f}" for k, v in values.items())
    )
ax.set_xticks(np.arange(4), list(effects["attention"]), fontsize=8)
ax.set(
    ylabel="character accuracy",
    ylim=(0, 1.1),
    title="the same models, with the true prefix or their own",
)
ax.legend(fontsize=8)
plt.show()
for name, tag in [("attention", "attn"), ("no attention", "none")]:
    for key, short in zip(effects[name], ["tf", "free", "tf_after", "free_after"], strict=True):
        glue(f"{short}_{tag}", f"{effects[name][key]:.2f}")

# %% [markdown]
# Both models are right more often with the true prefix than with their own: without
# attention {glue:text}`tf_none` against {glue:text}`free_none` of all characters, with
# attention {glue:text}`tf_attn` against {glue:text}`free_attn`. The difference sits after the
# model's first mistake. On the positions that follow it, the attention model is right
# {glue:text}`free_after_attn` of the time when it continues from its own output, but
# {glue:text}`tf_after_attn` when it is handed the true prefix at those same positions (without
# attention: {glue:text}`free_after_none` against {glue:text}`tf_after_none`). A wrong or
# skipped character puts the decoder in a situation it never met in training, and errors
# compound. The teacher-forced numbers, which are what the training loss tracks, flatter the
# model; only free-running decoding measures what a user gets.
#
# ## 6. Decoding: greedy and beam search
#
# The trained model gives $p(y_t \mid y_{<t}, x)$; decoding must pick an output. We would like
# the most likely one, $\arg\max_y \sum_t \log p(y_t \mid y_{<t}, x)$, but the number of
# candidates grows as $V^T$. **Greedy decoding** takes the single most likely symbol at each
# step. It is fast, and it is short-sighted: a first symbol that looks best now can lead to a
# continuation that is worse overall.
#
# **Beam search** keeps the $k$ best partial outputs (the *beam*). At each step it extends every
# unfinished one by every symbol, scores each candidate by its total log-probability, and keeps
# the best $k$ of all candidates; a candidate that has produced the end symbol is finished and
# keeps its score. With $k = 1$ this is greedy decoding; with $k$ large enough to keep
# everything it is an exhaustive search. In between it is a heuristic: it usually finds more
# likely outputs than greedy decoding, with no guarantee of finding the best. Because every
# extra symbol adds a negative log-probability, practical systems also divide the score by a
# power of the length, so that short outputs are not favoured unfairly {cite}`wu2016gnmt`
# (the library's `length_penalty`; here we rank by the plain sum).
#
# A toy model makes the difference concrete. Its vocabulary is `<eos>` (id 0), `a` (1) and
# `b` (2), and its next-symbol probabilities depend on the prefix:

# %%
TOY_EOS = 0
TOY_TABLE = {  # prefix -> P(<eos>), P(a), P(b)
    (): [0.1, 0.5, 0.4],
    (1,): [0.3, 0.4, 0.3],  # after "a"
    (2,): [0.9, 0.05, 0.05],  # after "b"
}


def toy_next_log_probs(prefix: tuple[int, ...]) -> torch.Tensor:
    """log P(next symbol | prefix) (3,) of the toy model; unlisted prefixes get [0.4, 0.3, 0.3]."""
    return torch.tensor(TOY_TABLE.get(tuple(prefix), [0.4, 0.3, 0.3]), dtype=torch.float64).log()


# %% [markdown]
# Greedy decoding picks `a` (0.5), then `a` again (0.4), then `<eos>` (0.4): the output "a a"
# has probability $0.5 \cdot 0.4 \cdot 0.4 = 0.08$. But "b" followed by `<eos>` has probability
# $0.4 \cdot 0.9 = 0.36$, more than four times as much. With a beam of 2, step 1 keeps `a`
# (0.5) and `b` (0.4); step 2 ranks "b <eos>" (0.36) first and "a a" (0.2) second, and step 3
# finishes "a a <eos>" (0.08) next to the already finished "b <eos>".
#
# ### Exercise 3: beam search
#
# Write `beam_search_table(next_log_probs, beam_size, max_len, eos_id)` for a model given as a
# function from a prefix (a tuple of ids) to a tensor of next-symbol log-probabilities.
#
# - Start from the empty prefix with score 0.
# - A hypothesis is **finished** when its last symbol is `eos_id` or it has `max_len` symbols.
# - At each step, every unfinished hypothesis is extended by every symbol (score: its score plus
#   the symbol's log-probability); every finished hypothesis is carried over unchanged. Keep the
#   `beam_size` candidates with the highest scores (sort with Python's `sorted(..., reverse=True)`
#   on the score, which keeps ties in order).
# - Stop when every kept hypothesis is finished, and return them best first as a list of
#   `(tokens, log_prob)` pairs with `tokens` a tuple of ints (including `eos_id` when present).

# %% nbgrader={"grade": false, "grade_id": "beam_search", "locked": false, "schema_version": 3, "solution": true, "task": false}
def beam_search_table(
    next_log_probs: Callable[[tuple[int, ...]], torch.Tensor],
    beam_size: int,
    max_len: int,
    eos_id: int,
) -> list[tuple[tuple[int, ...], float]]:
    """Beam search over a next-symbol model; returns up to beam_size (tokens, log_prob), best first."""

    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "beam_search_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
beam_ = beam_search_table(toy_next_log_probs, beam_size=2, max_len=5, eos_id=TOY_EOS)
check_equal(
    [tokens for tokens, _ in beam_], [(2, 0), (1, 1, 0)], "the two hypotheses of a beam of 2"
)
check_close(
    [score for _, score in beam_],
    [math.log(0.36), math.log(0.08)],
    "their log-probabilities",
    hints={
        "scored by the last symbol's log-probability instead of the sum": [
            math.log(0.9),
            math.log(0.4),
        ]
    },
)
greedy_ = beam_search_table(toy_next_log_probs, beam_size=1, max_len=5, eos_id=TOY_EOS)
check_equal([tokens for tokens, _ in greedy_], [(1, 1, 0)], "beam of 1 (greedy decoding)")



# %% [markdown]
# On the trained date models the library's batched `Seq2Seq.beam_search` does the same with
# tensors. With `length_penalty=0` it ranks by total log-probability, exactly as your function
# does. The cell compares the log-probability of the output found by greedy decoding and by a
# beam of 4 for every test input.

# %% tags=["demo"]
for name, (model, _, _) in runs.items():
    beam = model.beam_search(
        test_batch.src, test_batch.src_mask, beam_size=4, max_len=max_out, length_penalty=0.0
    )
    gain = (beam.log_probs - greedy[name].log_probs).numpy()
    beam_em = exact_match([vocab.decode(row) for row in beam.tokens], references)
    greedy_em = exact_match(predictions[name], references)
    better, worse = (gain > 1e-4).mean(), (gain < -1e-4).mean()
    print(
        f"{name:13}: beam more likely on {better:.1%} of inputs, less likely on {worse:.1%}; "
        f"mean gain {gain.mean():.3f} nats; exact match greedy {greedy_em:.3f}, beam {beam_em:.3f}"
    )
    tag = "attn" if name == "attention" else "none"
    glue(f"beam_better_{tag}", f"{better:.1%}")
    glue(f"beam_worse_{tag}", f"{worse:.1%}")
    glue(f"beam_em_{tag}", f"{beam_em:.2f}")
    glue(f"greedy_em_{tag}", f"{greedy_em:.2f}")


# %% [markdown]
# For the model without attention, which is unsure of many characters, the beam finds a more
# likely output than greedy decoding for {glue:text}`beam_better_none` of the test inputs and a
# less likely one for {glue:text}`beam_worse_none` (beam search is a heuristic: it can prune
# the path that greedy decoding follows). Its exact match goes from {glue:text}`greedy_em_none`
# to {glue:text}`beam_em_none`: a more likely output is not a correct one when the model itself
# is wrong. The attention model is so sure of itself that the beam finds a more likely output
# for only {glue:text}`beam_better_attn` of the inputs; its exact match goes from
# {glue:text}`greedy_em_attn` (greedy) to {glue:text}`beam_em_attn` (beam). Beam search
# matters most for uncertain models and for tasks with many plausible outputs, such as
# translation; for open-ended text generation it tends to produce bland, repetitive text,
# which is why chapter 07 samples instead.
#
# ## 7. Evaluating generated text: BLEU and ROUGE
#
# Exact match suits dates, where there is one right answer. A sentence has many correct
# translations, so machine translation is scored by **overlap** with one or more human
# references *in the same language as the output*.
#
# **BLEU** {cite}`papineni2002bleu` is precision-oriented. For each $n = 1, \dots, N$ (usually
# $N = 4$) it computes the **modified $n$-gram precision**
#
# $$ p_n = \frac{\sum_{g \in \text{n-grams}(\hat y)} \min\big(\mathrm{count}_{\hat y}(g),\ \max_{r} \mathrm{count}_{r}(g)\big)}{\sum_{g \in \text{n-grams}(\hat y)} \mathrm{count}_{\hat y}(g)}, $$
#
# where the **clip** $\max_r \mathrm{count}_r(g)$ is the largest number of times $g$ occurs in
# any single reference $r$. Without the clip, "the the the the the the the" would score a
# perfect unigram precision against "the cat is on the mat"; with it, "the" earns at most 2
# of its 7 counts. Precision alone rewards very short outputs, so BLEU multiplies by a
# **brevity penalty** that depends on the output length $c$ and the reference length $r$ (with
# several references, the one closest to $c$):
#
# $$ \mathrm{BP} = \begin{cases} 1 & c > r \\ e^{\,1 - r/c} & c \le r \end{cases}, \qquad
#    \mathrm{BLEU} = \mathrm{BP} \cdot \exp\Big(\sum_{n=1}^{N} \tfrac{1}{N} \log p_n\Big). $$
#
# The geometric mean means that **one $p_n = 0$ makes BLEU 0**. On a whole test set that
# rarely happens, because **corpus BLEU** adds up the clipped counts and the lengths over all
# sentences before dividing (it is not the average of sentence scores). For a single short
# sentence it happens all the time, so sentence-level BLEU is usually *smoothed*, e.g. by
# giving a zero count a small value {cite}`chen2014smoothing`. Tokenisation changes BLEU too,
# which is why published scores should come from one standard implementation
# {cite}`post2018sacrebleu`.
#
# **ROUGE** {cite}`lin2004rouge` was made for summaries, where covering the reference's content
# matters most, so it is recall-oriented. ROUGE-$n$ counts the clipped $n$-gram overlap and
# divides by the number of $n$-grams in the *reference* (recall) or in the output (precision);
# ROUGE-L replaces $n$-grams by the **longest common subsequence** (LCS), the longest sequence of
# words that appears in both texts in the same order, not necessarily adjacent. Scores are
# usually reported as the F1 of precision and recall.
#
# **A worked example.** Take the output "The cat sat on the mat." and the reference "A cat sat
# on a mat.", lower-cased and without punctuation: 6 words each.
#
# - Unigrams: cat, sat, on, mat match; the two "the" do not. $p_1 = 4/6$.
# - Bigrams: "cat sat" and "sat on" match out of 5. $p_2 = 2/5$.
# - Trigrams: only "cat sat on", $p_3 = 1/4$; 4-grams: none of 3, $p_4 = 0$.
# - Both have 6 words, so $\mathrm{BP} = 1$. BLEU-2 $= \sqrt{4/6 \cdot 2/5} = 0.516$;
#   unsmoothed BLEU-4 $= 0$, since $p_4 = 0$.
# - ROUGE-1: 4 of 6 in both directions, F1 $= 0.667$. ROUGE-2: F1 $= 2/5 = 0.40$. ROUGE-L: the
#   LCS is "cat sat on mat", 4 words, F1 $= 0.667$.
#
# ### Exercise 4 (worked numbers): BLEU
#
# Write `bleu(hypothesis, references, max_n=4)` for token lists: clipped $n$-gram counts for
# $n = 1 \dots$ `max_n`, uniform weights, the brevity penalty with the closest reference length
# (on a tie, the shorter reference), no smoothing. Return 0.0 when any $p_n$ is 0 (including
# when the hypothesis is too short to have any $n$-grams). The test checks the numbers above.

# %% nbgrader={"grade": false, "grade_id": "bleu", "locked": false, "schema_version": 3, "solution": true, "task": false}
def bleu(hypothesis: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Sentence BLEU of one tokenised hypothesis against tokenised references (no smoothing)."""

    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "bleu_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
hyp_, ref_ = tokenize("The cat sat on the mat."), tokenize("A cat sat on a mat.")
check_close(
    bleu(hyp_, [ref_], max_n=2),
    0.516,
    "BLEU-2 of the worked example",
    atol=5e-4,
    hints={"arithmetic instead of geometric mean of p1, p2": (4 / 6 + 2 / 5) / 2},
)
check_close(
    bleu(hyp_, [ref_], max_n=4),
    0.0,
    "unsmoothed BLEU-4 of the worked example (no 4-gram matches)",
    hints={
        "skipped the zero precision instead of returning 0": (
            lambda got: (
                np.allclose(got, [(4 / 6 * 2 / 5 * 1 / 4) ** (1 / 3)], atol=1e-4)
                or np.allclose(got, [(4 / 6 * 2 / 5 * 1 / 4) ** (1 / 4)], atol=1e-4)
            )
        )
    },
)
sevens_ = ["the"] * 7
refs_ = [tokenize("The cat is on the mat."), tokenize("There is a cat on the mat.")]
check_close(
    bleu(sevens_, refs_, max_n=1),
    2 / 7,
    "'the' x7: clipped unigram precision (BP = 1)",
    hints={
        "counts not clipped": 1.0,
        "clipped by the sum over references instead of the maximum": 3 / 7,
    },
)
check_close(
    bleu(["the", "cat"], [tokenize("the cat sat on the mat")], max_n=2),
    math.exp(-2),
    "a 2-word output against a 6-word reference: BP = exp(1 - 6/2)",
    hints={"no brevity penalty": 1.0, "brevity penalty exp(1 - c/r)": math.exp(1 - 2 / 6)},
)


# %% [markdown]
# ### Exercise 5 (worked numbers): ROUGE
#
# Write `rouge(hypothesis, reference)` for token lists that returns the F1 scores of ROUGE-1,
# ROUGE-2 and ROUGE-L as a dict with keys `"rouge1"`, `"rouge2"`, `"rougeL"`. Overlap counts
# are clipped (an $n$-gram counts at most as often as it occurs in the reference). Define
# F1 as 0 when precision and recall are both 0. For the LCS, fill a table
# $L[i][j]$ = LCS length of the first $i$ hypothesis words and the first $j$ reference words:
# $L[i][j] = L[i-1][j-1] + 1$ when the words match, else $\max(L[i-1][j], L[i][j-1])$.

# %% nbgrader={"grade": false, "grade_id": "rouge", "locked": false, "schema_version": 3, "solution": true, "task": false}
def rouge(hypothesis: Sequence[str], reference: Sequence[str]) -> dict[str, float]:
    """F1 of ROUGE-1, ROUGE-2 and ROUGE-L for one tokenised hypothesis and reference."""

    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "rouge_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
scores_ = rouge(tokenize("The cat sat on the mat."), tokenize("A cat sat on a mat."))
check_equal(sorted(scores_), ["rouge1", "rouge2", "rougeL"], "keys of the returned dict")
check_close(
    [scores_["rouge1"], scores_["rouge2"], scores_["rougeL"]],
    [0.667, 0.40, 0.667],
    "ROUGE-1, ROUGE-2, ROUGE-L F1 of the worked example",
    atol=5e-4,
)
short_ = rouge(["the", "cat"], tokenize("the cat sat on the mat"))
check_close(
    short_["rouge1"],
    0.5,
    "ROUGE-1 F1 of 'the cat' against 'the cat sat on the mat' (P = 1, R = 1/3)",
    hints={"returned recall instead of F1": 1 / 3, "returned precision instead of F1": 1.0},
)
check_close(
    rouge(["the", "the", "the"], ["the"])["rouge1"],
    0.5,
    "ROUGE-1 F1 of 'the the the' against 'the' (overlap clipped to 1: P = 1/3, R = 1)",
    hints={"overlap not clipped (3 matches of a word the reference has once)": 1.5},
)

# %% [markdown]
# The library's `llmcourse.metrics` has the same metrics with more options (corpus BLEU,
# several references, weights, smoothing, precision and recall). The cell below scores the
# worked example with it, shows how each smoothing method rescues the zero 4-gram precision,
# and shows two things BLEU cannot do: give credit for a paraphrase, or compare an output with
# a reference in another language.

# %% tags=["demo"]
out_, ref_ = "The cat sat on the mat.", "A cat sat on a mat."
b4 = sentence_bleu(out_, ref_)
print(f"p_n = {[round(p, 3) for p in b4.precisions]}, BP = {b4.brevity_penalty:.2f}")
print(f"BLEU-2 {sentence_bleu(out_, ref_, max_n=2).score:.3f}, BLEU-4 {b4.score:.3f}")
for method in ("floor", "add1", "exp"):
    print(
        f"BLEU-4 smoothed with {method!r:7}: {sentence_bleu(out_, ref_, smoothing=method).score:.3f}"
    )
print(
    f"ROUGE-1 {rouge_n(out_, ref_, 1).fmeasure:.3f}, ROUGE-2 {rouge_n(out_, ref_, 2).fmeasure:.3f}, "
    f"ROUGE-L {rouge_l(out_, ref_).fmeasure:.3f}"
)
paraphrase = sentence_bleu("A cat was sitting on the rug.", ref_, smoothing="floor").score
french = sentence_bleu("Je suis étudiant.", "I am a student.").score
print(f"paraphrase 'A cat was sitting on the rug.': smoothed BLEU-4 {paraphrase:.3f}")
print(f"'Je suis étudiant.' against the English 'I am a student.': BLEU-4 {french:.3f}")
glue("bleu_paraphrase", f"{paraphrase:.2f}")
glue("bleu_french", f"{french:.3f}")

# %% [markdown]
# The paraphrase means nearly the same thing and scores only {glue:text}`bleu_paraphrase`,
# even smoothed; a correct French translation scored against an English sentence gets
# {glue:text}`bleu_french`, because the two share no words. BLEU measures overlap with
# references in the output's language, nothing more.
#
# Back to the date models. Exact match gives no credit for an output that is right except
# for one digit; character-level corpus BLEU (each character a token) does. Scored this way,
# the model without attention is not hopeless: it gets much of the structure and many digits
# right, and its score falls with the input length, the bottleneck again.

# %% tags=["demo"] mystnb={"image": {"alt": "Character-level corpus BLEU-4 of the two date models against the number of dates in the input: with attention close to 1 for all lengths, without attention clearly lower and falling as inputs get longer."}}
char_bleu = {
    name: [
        corpus_bleu(
            [list(p) for p in with_n_dates(preds, n)],
            [[list(t)] for t in with_n_dates(references, n)],
        ).score
        for n in lengths
    ]
    for name, preds in predictions.items()
}
fig, ax = plt.subplots(figsize=(5.5, 3.2))
for name, scores in char_bleu.items():
    ax.plot(lengths, scores, "o-", label=name)
    print(f"{name:13}: character BLEU-4 by number of dates {[round(s, 3) for s in scores]}")
ax.set(
    xlabel="dates in the input",
    ylabel="character-level corpus BLEU-4",
    ylim=(0, 1.05),
    xticks=lengths,
    title="partial credit for near misses",
)
ax.legend()
plt.show()
glue("char_bleu_none_1", f"{char_bleu['no attention'][0]:.2f}")
glue("char_bleu_none_3", f"{char_bleu['no attention'][-1]:.2f}")

# %% [markdown]
# Without attention, character BLEU goes from {glue:text}`char_bleu_none_1` for one date to
# {glue:text}`char_bleu_none_3` for three.
#
# ```{admonition} Common misconceptions
# :class: warning
#
# - **"BLEU can score a translation against the source sentence or a reference in another
#   language."** BLEU counts $n$-grams shared with references *in the output's language*; a
#   perfect French translation of an English sentence shares no $n$-grams with it and scores
#   0, as the demo shows.
# - **"Modified precision counts every output $n$-gram that appears in a reference."** Each
#   $n$-gram is *clipped* at the most times it occurs in a single reference; otherwise
#   repeating a common word would be rewarded ("the" x7 scores 2/7, not 7/7).
# - **"A BLEU-4 of 0 means the output is wrong."** Unsmoothed BLEU-4 is 0 whenever no 4-gram
#   matches, even for "The cat sat on the mat." against "A cat sat on a mat." (BLEU-2 0.516).
#   Report corpus BLEU for systems; smooth sentence-level scores.
# - **"In an attention heatmap the rows are the input tokens being attended to."** Rows are the
#   queries (here: output positions), columns are the keys (input positions), and each row sums
#   to 1. Swapping them makes the picture unreadable as "while writing this, look there".
# - **"Padded positions are masked by setting their scores to 0 (or $+\infty$)."** A score of 0
#   still gets weight $e^0$; masked scores are set to $-\infty$ (or a very negative number) before
#   the softmax, so that their weight is exactly 0.
# - **"Beam search returns the most likely output."** It is a heuristic that prunes; only an
#   exhaustive search is guaranteed to. A larger beam usually, not always, finds a more likely
#   output, and the most likely output is not always the best one.
# - **"Teacher forcing is also used when generating."** It is a training device: at test time
#   the true prefix is unknown and the model consumes its own outputs (exposure bias).
# ```
#
# ## Summary
#
# An encoder-decoder maps a sequence to a sequence; squeezing the input through one vector
# limits it, and accuracy falls as inputs grow. Attention gives each output step its own
# context, a weighted average of the encoder states with weights from a masked softmax over
# input positions, additive (Bahdanau) or dot / general (Luong). Training feeds the true prefix
# (teacher forcing); generation feeds the model's own outputs, greedily or with beam search.
# Generated text is scored by exact match where one answer exists, and by overlap metrics such
# as BLEU (clipped precision, brevity penalty) and ROUGE (recall, LCS) otherwise. The next
# chapter removes the recurrence altogether and keeps only attention.
#
# ## References
#
# {cite}`sutskever2014seq2seq` and {cite}`cho2014gru` (encoder-decoder),
# {cite}`bahdanau2015attention` (additive attention), {cite}`luong2015effective` (dot and
# general attention), {cite}`williams1989teacher`, {cite}`bengio2015scheduled` and
# {cite}`ranzato2016sequence` (teacher forcing, scheduled sampling, exposure bias),
# {cite}`wu2016gnmt` (beam search with length normalisation in practice),
# {cite}`papineni2002bleu`, {cite}`chen2014smoothing` and {cite}`post2018sacrebleu` (BLEU),
# {cite}`lin2004rouge` (ROUGE), {cite}`jain2019attention` (attention as explanation). Full
# entries are on the [bibliography](../book/bibliography.md) page.
