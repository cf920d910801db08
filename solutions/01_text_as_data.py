# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 Text as data: tokens, embeddings and n-gram language models
#
# A neural network only understands numbers, so every language model starts by turning text
# into a sequence of integers (*tokenization*), then turning each integer into a vector
# (*embedding*). This chapter goes through the main tokenizers in use, then looks at how word
# vectors are learned from the contexts words appear in, and ends with the oldest language model
# of all, the n-gram model, and the number used to score every language model since: perplexity.
#
# **Learning objectives.** After this chapter you can
#
# 1. compare character, word and subword tokenizers by vocabulary size, sequence length and
#    unknown words, using numbers measured on Tiny Shakespeare;
# 2. write the byte-pair-encoding (BPE) training loop and get exactly the merges of the
#    course library's `ByteLevelBPE`;
# 3. tokenize a word with WordPiece's greedy longest match against the real vocabulary of a
#    BERT model (all-MiniLM-L6-v2);
# 4. read GPT-2 tokens: why `"Hello"` and `" Hello"` are different tokens and why an emoji
#    costs several of them;
# 5. compute cosine similarities and use them on real sentence embeddings;
# 6. build the (context, target) examples that word2vec's CBOW and skip-gram models are trained on;
# 7. estimate an n-gram language model with add-k smoothing, sample from it, and evaluate it
#    with perplexity.
#
# **How to use this notebook.** Cells marked *Exercise* are graded: replace
# `raise NotImplementedError()` with your code, then run the test cell below it. The visible
# tests tell you what was expected and what came back; hidden tests run at grading time.
# Demonstrations call the course library `llmcourse`, so they work before you solve anything.

# %%
import math
import re
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import llmcourse
from llmcourse.checks import ExerciseFailure, check_close, check_equal, check_raises, check_shape
from llmcourse.data import load_text
from llmcourse.display import glue
from llmcourse.models.bert import minilm_path
from llmcourse.tokenizers import ByteLevelBPE, CharTokenizer, PreTokenizer, WordPiece
from llmcourse.tokenizers import bytes_to_unicode

torch.manual_seed(0)
text = load_text("tinyshakespeare")
# Hold out the last ~10% (cut at a line break) to measure what a tokenizer or model has not seen.
split_at = text.rfind("\n", 0, int(0.9 * len(text))) + 1
train_text, val_text = text[:split_at], text[split_at:]
WORD_RE = re.compile(r"[A-Za-z']+|[^\sA-Za-z']|\n")


def words_of(s: str, keep_newlines: bool = False) -> list[str]:
    """Split text into words (letters and apostrophes), single punctuation marks and, optionally,
    line breaks (useful to let an n-gram model learn the layout of a play)."""
    tokens = WORD_RE.findall(s)
    return tokens if keep_newlines else [t for t in tokens if t != "\n"]


print("llmcourse", llmcourse.__version__, "| torch", torch.__version__)
print(f"Tiny Shakespeare: {len(text):,} characters ({len(train_text):,} train, {len(val_text):,} held out)")
print(text[:200])

# %% [markdown]
# ## 1. Characters and words
#
# The simplest tokenizer maps each **character** to an id. Its vocabulary is tiny and it can
# never meet an unknown symbol in the text it was built from, but sequences are long: a model
# must look back hundreds of positions to see the previous sentence. The opposite choice maps
# each **word** to an id: sequences are short, but the vocabulary is large, and any word not
# seen while building it (a new name, a typo, a rare inflection) has no id at all and must be
# replaced by a catch-all `<unk>` token.
#
# Word frequencies make this worse than it sounds. They follow **Zipf's law**: the $r$-th most
# frequent word occurs roughly $\propto 1/r$ times, so a few words cover most of the text while
# a long tail of words is seen once or twice. A vocabulary can never contain that whole tail.

# %% tags=["demo"] mystnb={"image": {"alt": "Log-log plot of word frequency against frequency rank in Tiny Shakespeare: an almost straight falling line, close to the dashed 1/rank reference."}}
chars = CharTokenizer.from_text(text)
train_words, val_words = words_of(train_text), words_of(val_text)
word_freq = Counter(train_words)
oov_rate = sum(w not in word_freq for w in val_words) / len(val_words)
hapax = sum(1 for c in word_freq.values() if c == 1) / len(word_freq)
top100_share = sum(c for _, c in word_freq.most_common(100)) / len(train_words)
print(f"characters: vocabulary {chars.vocab_size}, sequence length {len(text):,}")
print(f"words:      vocabulary {len(word_freq):,} (train), {len(train_words) + len(val_words):,} word tokens")
print(f"held-out word tokens missing from the training vocabulary: {oov_rate:.1%}")
print(f"word types seen exactly once: {hapax:.0%}; the 100 most frequent words cover {top100_share:.0%} of the text")
glue("char_vocab", f"{chars.vocab_size}")
glue("word_vocab", f"{len(word_freq):,}")
glue("oov_rate", f"{oov_rate:.1%}")
glue("hapax_share", f"{hapax:.0%}")
glue("top100_share", f"{top100_share:.0%}")

freqs = np.array(sorted(word_freq.values(), reverse=True), dtype=float)
ranks = np.arange(1, len(freqs) + 1)
fig, ax = plt.subplots(figsize=(5.5, 3.5))
ax.loglog(ranks, freqs, label="Tiny Shakespeare words")
ax.loglog(ranks, freqs[0] / ranks, "--", color="gray", label="frequency $\\propto$ 1 / rank")
ax.set(xlabel="rank", ylabel="count", title="Zipf's law")
ax.legend()
plt.show()

# %% [markdown]
# Tiny Shakespeare has {glue:text}`char_vocab` distinct characters but {glue:text}`word_vocab`
# distinct words in its training part. {glue:text}`hapax_share` of those words occur exactly
# once, while the 100 most frequent words make up {glue:text}`top100_share` of the text. Even on
# text by the same author, {glue:text}`oov_rate` of the held-out words were never seen in
# training. Subword tokenizers sit between the two extremes: frequent words get one token and
# rare words are spelled out from smaller pieces, so (almost) nothing is unknown.
#
# ## 2. Byte-pair encoding (BPE)
#
# BPE began as a compression algorithm {cite}`gage1994bpe` and was brought to neural machine
# translation by {cite}`sennrich2016bpe`. GPT-2 {cite}`radford2019gpt2` made it **byte-level**:
# the text is encoded in UTF-8, so the starting vocabulary is the 256 possible bytes and every
# string, in any language or with any emoji, can be tokenized. Training learns a list of
# *merges*:
#
# 1. cut the corpus into *pre-tokens* (for GPT-2, a regular expression yields pieces such as
#    `"The"`, `" cat"`, `","`, `" 123"`: a word keeps its leading space), count each distinct
#    pre-token, and spell each one as a sequence of single-byte symbols;
# 2. count every pair of adjacent symbols, weighting a pair by the frequency of the word it
#    occurs in;
# 3. take the most frequent pair $(a, b)$, record the merge $a + b \to ab$, and replace every
#    occurrence of $a, b$ in every word by the new symbol $ab$ (left to right, so `a a a`
#    becomes `aa a`);
# 4. repeat from step 2 until the vocabulary has the size you asked for.
#
# Merges never cross pre-token boundaries, which is why step 1 matters: without it BPE would
# learn tokens such as `"e t"` that glue the end of one word to the start of the next.
# Encoding new text replays the merges in the order they were learned.
#
# **Worked example.** Take the word counts `low` ×5, `lower` ×2, `newest` ×6, `widest` ×3. The
# pair counts are `(e, s)` 9 (6 from *newest*, 3 from *widest*), `(s, t)` 9, `(w, e)` 8,
# `(l, o)` 7, `(o, w)` 7, ... Two pairs share the top count 9: we need a **tie rule**. The
# course library uses the one of Hugging Face's `tokenizers`: every symbol has a *rank*, and
# among pairs with the same count the smallest `(rank(left), rank(right))` wins. A single
# character ranks by its place in GPT-2's byte alphabet (visible ASCII characters in code-point
# order; the space, tab and newline after all of them), and each merged symbol ranks after every
# single character, in the order it was first created. So `(e, s)` wins over `(s, t)`, and the
# first five merges are `(e, s)`, `(es, t)`, `(l, o)`, `(lo, w)`, `(e, w)`. The function
# `char_rank` below gives the rank of one character.

# %%
_GPT2_ALPHABET = bytes_to_unicode()  # byte value -> the printable character GPT-2 writes it as
_BYTE_RANK = {b: r for r, b in enumerate(sorted(range(256), key=lambda b: _GPT2_ALPHABET[b]))}


def char_rank(ch: str) -> int:
    """Tie-break rank (0-255) of a one-byte character: its place in GPT-2's byte alphabet."""
    if len(ch) != 1 or ord(ch) > 127:
        raise ValueError(f"char_rank expects one ASCII character, got {ch!r}")
    return _BYTE_RANK[ord(ch)]


print("ranks of 'A', 'a', 'z', ' ', '\\n':", [char_rank(c) for c in "Aaz \n"])

# %% [markdown]
# ### Exercise 1: the BPE merge loop
#
# Write `learn_bpe(word_counts, num_merges)`. `word_counts` maps each pre-token (a string of
# ASCII characters, possibly starting with a space) to its count. Start with every word spelled
# as a list of its characters and run the loop above `num_merges` times, returning the merges
# in order as `(left, right)` string pairs. Break ties as described: a single character has
# rank `char_rank(ch)`; a merged symbol gets rank `256, 257, ...` in the order it is first
# created (a merge whose result already exists, such as `ab + c` after `a + bc`, keeps the old
# rank). Stop early when no pair is left. On the worked example, `learn_bpe(..., 5)` returns
# `[("e", "s"), ("es", "t"), ("l", "o"), ("lo", "w"), ("e", "w")]`.
#
# The tests feed your function the pre-tokens of Shakespeare excerpts and compare its merges
# with those of `llmcourse.tokenizers.ByteLevelBPE.train` on the same text.

# %% nbgrader={"grade": false, "grade_id": "learn_bpe", "locked": false, "schema_version": 3, "solution": true, "task": false}
def learn_bpe(word_counts: Mapping[str, int], num_merges: int) -> list[tuple[str, str]]:
    """The first ``num_merges`` BPE merges learned from pre-token counts, as (left, right) pairs."""
    ### BEGIN SOLUTION
    words = [(list(word), count) for word, count in word_counts.items() if count > 0]
    rank = {ch: char_rank(ch) for symbols, _ in words for ch in symbols}
    merges: list[tuple[str, str]] = []
    next_rank = 256  # merged symbols rank after all single characters, oldest first
    for _ in range(num_merges):
        pair_counts: Counter[tuple[str, str]] = Counter()
        for symbols, count in words:
            for pair in zip(symbols, symbols[1:], strict=False):  # adjacent pairs
                pair_counts[pair] += count
        if not pair_counts:
            break
        best = min(pair_counts, key=lambda p: (-pair_counts[p], rank[p[0]], rank[p[1]]))
        left, right = best
        merged = left + right
        if merged not in rank:
            rank[merged] = next_rank
            next_rank += 1
        merges.append(best)
        for i, (symbols, count) in enumerate(words):
            out, j = [], 0
            while j < len(symbols):
                if j + 1 < len(symbols) and symbols[j] == left and symbols[j + 1] == right:
                    out.append(merged)
                    j += 2
                else:
                    out.append(symbols[j])
                    j += 1
            words[i] = (out, count)
    return merges
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "learn_bpe_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def _check_merges(got: list, want: list, what: str) -> None:
    """Compare merge lists and name the first merge that differs."""
    if got is None:
        raise ExerciseFailure(f"{what}: your code returned None (did you forget `return`?)")
    got = [tuple(m) for m in got]
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        if g != w:
            raise ExerciseFailure(
                f"{what}: merge #{i} should be {w!r}, got {g!r} (merges before it agree). If both "
                "pairs had the same count, check the tie rule (char_rank for characters, "
                "256, 257, ... for merged symbols in creation order); if not, check that pairs "
                "are weighted by word counts and that merges are applied left to right."
            )
    check_equal(len(got), len(want), f"{what}: number of merges")


_toy = {"low": 5, "lower": 2, "newest": 6, "widest": 3}
_check_merges(
    learn_bpe(_toy, 10),
    [("e", "s"), ("es", "t"), ("l", "o"), ("lo", "w"), ("e", "w"),
     ("n", "ew"), ("new", "est"), ("d", "est"), ("i", "dest"), ("w", "idest")],
    "10 merges on low x5, lower x2, newest x6, widest x3",
)
_check_merges(learn_bpe({"aaaa": 1}, 3), [("a", "a"), ("aa", "aa")],
              "merges of 'aaaa' (non-overlapping, left to right; stops when one symbol is left)")
_excerpt = train_text[:3000]
_check_merges(
    learn_bpe(Counter(PreTokenizer().pieces(_excerpt)), 30),
    [(a.decode(), b.decode()) for a, b in ByteLevelBPE.train(_excerpt, 256 + 30).merges[:30]],
    "30 merges on the first 3,000 characters of Tiny Shakespeare vs llmcourse ByteLevelBPE.train",
)
### BEGIN HIDDEN TESTS
for _start, _length, _k in [(20_000, 12_000, 80), (400_000, 6_000, 60), (900_000, 2_000, 40)]:
    _excerpt = text[_start : _start + _length]
    _want = [(a.decode(), b.decode()) for a, b in ByteLevelBPE.train(_excerpt, 256 + _k).merges[:_k]]
    _check_merges(learn_bpe(Counter(PreTokenizer().pieces(_excerpt)), _k), _want,
                  f"{_k} merges on text[{_start}:{_start + _length}] vs ByteLevelBPE.train")
_check_merges(learn_bpe({"ab": 3, "c": 10}, 5), [("a", "b")], "stop early when no pair is left")
_check_merges(learn_bpe({" a": 1, "ab": 1}, 1), [("a", "b")],
              "tie between (' ', 'a') and ('a', 'b'): the space ranks after every visible character")
check_equal(learn_bpe(_toy, 0), [], "zero merges")
### END HIDDEN TESTS

# %% [markdown]
# The library trains the same algorithm much faster: it counts pairs once and then updates only
# the words that contain the merged pair (see `llmcourse/tokenizers/bpe_train.py`). Here it
# learns merges on the training part of Tiny Shakespeare until the vocabulary holds 4,096
# tokens, and we measure how many characters each token covers on the held-out part as the
# vocabulary grows.

# %% tags=["demo"] mystnb={"image": {"alt": "Characters per token on held-out Shakespeare against vocabulary size (log scale): byte-level BPE rises from 1 at 256 tokens to about 3 at 4096; GPT-2's 50257-token vocabulary is a separate point slightly higher; a dashed line marks word tokens."}}
from llmcourse.tokenizers.bpe_train import train_bpe_merges

pre_token_counts = Counter(PreTokenizer().pieces(train_text))
bpe_vocab, bpe_merges = train_bpe_merges(
    {w.encode("utf-8"): c for w, c in pre_token_counts.items()}, num_tokens=4096
)
print("first 12 merges:", [(bpe_vocab[a].decode(), bpe_vocab[b].decode()) for (a, b), _ in bpe_merges[:12]])
print("some late tokens:", [bpe_vocab[i].decode() for i in range(4080, 4096)])

sizes = [256, 320, 512, 1024, 2048, 4096]
chars_per_token = []
for n in sizes:
    # The tokenizer whose training stopped when it had n tokens: the merges before token n appeared.
    cut = next((i for i, (_, new_id) in enumerate(bpe_merges) if new_id >= n), len(bpe_merges))
    small = ByteLevelBPE(bpe_vocab[:n], bpe_merges[:cut])
    chars_per_token.append(len(val_text) / len(small.encode(val_text)))
gpt2 = ByteLevelBPE.gpt2()
gpt2_val_tokens = len(gpt2.encode(val_text))
glue("bpe4096_cpt", f"{chars_per_token[-1]:.2f}")
glue("gpt2_cpt", f"{len(val_text) / gpt2_val_tokens:.2f}")
glue("word_cpt", f"{len(val_text) / len(val_words):.2f}")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.semilogx(sizes, chars_per_token, "o-", base=2, label="byte-level BPE trained on Shakespeare")
ax.semilogx([gpt2.vocab_size], [len(val_text) / gpt2_val_tokens], "r*", markersize=12, base=2,
            label=f"GPT-2 ({gpt2.vocab_size:,} tokens)")
ax.axhline(len(val_text) / len(val_words), ls="--", color="gray",
           label=f"words (but {oov_rate:.1%} unknown)")
ax.set(xlabel="vocabulary size", ylabel="characters per token (held out)",
       title="Bigger vocabularies, shorter sequences")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The first merges are the ones you would guess (`" t"`, `"he"`, then `" the"` a few merges
# later); late merges are whole words and names. With 4,096 tokens one token covers
# {glue:text}`bpe4096_cpt` characters of unseen Shakespeare, and GPT-2's vocabulary, trained on
# web text, covers {glue:text}`gpt2_cpt`. A word token covers more ({glue:text}`word_cpt`
# characters), but only by giving up on every word outside its vocabulary; BPE has no unknown
# words at all. Sequence length matters: a transformer's attention cost grows with the square of
# the number of tokens.
#
# ## 3. GPT-2's tokenizer on real text
#
# `ByteLevelBPE.gpt2()` loads GPT-2's published vocabulary (`encoder.json`) and merges
# (`vocab.bpe`); the course's tests check that it gives the same ids as Hugging Face's GPT-2
# tokenizer. Look at how it cuts a few tricky strings.

# %% tags=["demo"]
sample = "Hello world! hello world\n  Hello   world 12345 naïve café 🙂"
ids = gpt2.encode(sample)
print(f"{len(sample)} characters, {len(sample.encode('utf-8'))} UTF-8 bytes -> {len(ids)} GPT-2 tokens")
for i in ids:
    raw = gpt2.token_bytes(i)
    shown = raw.decode("utf-8", errors="replace")
    print(f"{i:>6}  {shown!r:16} bytes={raw!r}")
assert gpt2.decode(ids) == sample, "byte-level BPE must decode back to the exact text"
print("'Hello' ->", gpt2.encode("Hello"), "| ' Hello' ->", gpt2.encode(" Hello"),
      "| 'hello' ->", gpt2.encode("hello"), "| ' HELLO' ->", gpt2.encode(" HELLO"))
emoji_ids = gpt2.encode("🙂")
print("'🙂' alone ->", emoji_ids, "pieces:", [gpt2.token_bytes(i) for i in emoji_ids],
      "decoded one by one:", [gpt2.decode([i]) for i in emoji_ids])
all_ids = gpt2.encode(text)
glue("gpt2_tokens_all", f"{len(all_ids):,}")
glue("gpt2_chars_all", f"{len(text):,}")
glue("gpt2_words_per_token", f"{len(words_of(text)) / len(all_ids):.2f}")
print(f"Tiny Shakespeare: {len(text):,} characters -> {len(all_ids):,} GPT-2 tokens")

# %% [markdown]
# What to notice:
#
# - **The space belongs to the next word.** `"Hello"`, `" Hello"`, `"hello"` and `" HELLO"` are
#   different token sequences; a model has to learn separately that they mean the same thing.
#   Runs of spaces become separate space tokens, and the newline is a token of its own.
# - **Numbers are cut into chunks** (`" 123"`, `"45"`) that do not line up with place value,
#   one reason why language models are clumsy at arithmetic.
# - **Tokens are bytes, not characters.** An accented letter is two UTF-8 bytes and the emoji
#   four. With its leading space this emoji happens to be one GPT-2 token; on its own it is
#   split into byte pieces that do not decode separately (each shows as `�`), so a model can
#   emit half a character. Decoding the whole sequence gives back the exact text, which is why
#   byte-level BPE never needs an unknown token.
# - The whole of Tiny Shakespeare, {glue:text}`gpt2_chars_all` characters, is
#   {glue:text}`gpt2_tokens_all` GPT-2 tokens: {glue:text}`gpt2_words_per_token` of our words
#   per token (a word here also counts each punctuation mark).
#
# ## 4. WordPiece
#
# BERT {cite}`devlin2019bert` and its descendants, such as all-MiniLM-L6-v2
# {cite}`wang2020minilm`, use **WordPiece** {cite}`schuster2012wordpiece`. Its vocabulary is
# learned in a way similar to BPE (merges chosen by a likelihood score rather than a raw count),
# but encoding is different: there is no list of merges to replay. The text is split on spaces
# and around punctuation (and lowercased, for *uncased* models such as MiniLM), then each word
# is cut **greedily, longest match first**:
#
# 1. starting at the beginning of the word, find the longest prefix that is in the vocabulary;
# 2. emit it, and continue from where it ended; pieces that do not start the word are looked
#    up with the prefix `##` (so `"##ing"` means "ing inside a word", a different token from
#    the word `"ing"`);
# 3. if at some position no piece matches, give up: the **whole word** becomes `[UNK]`.
#
# ```text
# "unaffable" with vocabulary {un, ##aff, ##able, ...}
#   position 0: try "unaffable", "unaffabl", ..., "un"     -> emit "un"
#   position 2: try "##affable", "##affabl", ..., "##aff"  -> emit "##aff"
#   position 5: try "##able"                               -> emit "##able"
# ```
#
# ### Exercise 2: greedy longest-match WordPiece
#
# Write `wordpiece_tokenize(word, vocab)`: the WordPiece pieces of one already normalised word
# (lowercase, no spaces, no punctuation), following the three steps above. `vocab` is any
# collection that supports `in` (a set, or a dict token -> id). A word longer than
# `max_chars` characters is `[UNK]` without trying. The tests compare your function with the
# course library's `WordPiece` loaded with the 30,522-token vocabulary of all-MiniLM-L6-v2.

# %%
minilm_wordpiece = WordPiece.from_vocab_file(minilm_path())
print(minilm_wordpiece, "| 'tokenization' ->", minilm_wordpiece.tokenize("tokenization"))

# %% nbgrader={"grade": false, "grade_id": "wordpiece_tokenize", "locked": false, "schema_version": 3, "solution": true, "task": false}
def wordpiece_tokenize(word: str, vocab: Collection[str], unk: str = "[UNK]",
                       max_chars: int = 100) -> list[str]:
    """Greedy longest-match-first WordPiece split of one normalised word."""
    ### BEGIN SOLUTION
    if len(word) > max_chars:
        return [unk]
    pieces: list[str] = []
    start = 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                pieces.append(piece)
                start = end
                break
        else:
            return [unk]
    return pieces
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "wordpiece_tokenize_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def _check_pieces(got: list, want: list, what: str) -> None:
    """check_equal for WordPiece output, naming the usual mistakes."""
    if got is not None and list(got) != want:
        stripped = [p[2:] if p.startswith("##") else p for p in want]
        if list(got) == stripped:
            raise ExerciseFailure(f"{what}: expected {want}, got {list(got)}. Pieces after the "
                                  "first must be looked up (and returned) with the '##' prefix.")
        if want == ["[UNK]"]:
            raise ExerciseFailure(f"{what}: expected ['[UNK]'], got {list(got)}. When no piece "
                                  "matches at some position, the whole word becomes [UNK].")
    check_equal(None if got is None else list(got), want, what)


_toy_vocab = {"un", "##aff", "##able", "aff", "able", "a", "##a", "##b", "ab", "[UNK]"}
_check_pieces(wordpiece_tokenize("unaffable", _toy_vocab), ["un", "##aff", "##able"],
              "'unaffable' with a toy vocabulary")
_check_pieces(wordpiece_tokenize("abab", _toy_vocab), ["ab", "##a", "##b"],
              "'abab' with a toy vocabulary (longest match first: 'ab', then '##a', '##b')")
_check_pieces(wordpiece_tokenize("unx", _toy_vocab), ["[UNK]"], "'unx' ('x' matches nothing)")
_check_pieces(wordpiece_tokenize("tokenization", minilm_wordpiece.token_to_id),
              ["token", "##ization"], "'tokenization' with the MiniLM vocabulary")
### BEGIN HIDDEN TESTS
_words = sorted({w.lower() for w in words_of(text[:200_000]) if w.isalpha()})[::7]
for _w in _words:
    _check_pieces(wordpiece_tokenize(_w, minilm_wordpiece.token_to_id),
                  minilm_wordpiece.tokenize(_w), f"'{_w}' vs llmcourse WordPiece (MiniLM vocabulary)")
for _w in ["unbelievably", "wherefore", "snow☃man", "x" * 101, "a" * 100]:
    _check_pieces(wordpiece_tokenize(_w, minilm_wordpiece.token_to_id),
                  minilm_wordpiece.tokenize(_w), f"{_w[:20]!r} vs llmcourse WordPiece")
_check_pieces(wordpiece_tokenize("unaffable", _toy_vocab, unk="<unk>", max_chars=5), ["<unk>"],
              "a word longer than max_chars")
check_equal(wordpiece_tokenize("", _toy_vocab), [], "the empty word")
### END HIDDEN TESTS

# %% [markdown]
# Here is the library's full tokenizer (normalisation, punctuation splitting, WordPiece, the
# special tokens `[CLS]` and `[SEP]`, padding) on a line of Shakespeare:

# %% tags=["demo"]
line = "O Romeo, Romeo! wherefore art thou Romeo?"
print(minilm_wordpiece.tokenize(line))
print(minilm_wordpiece.encode(line))
padded = minilm_wordpiece("Hello", padding="max_length", max_length=4)
print("'Hello' padded to 4:", padded["input_ids"], "attention mask", padded["attention_mask"])
distinct = sorted({w.lower() for w in val_words if w.isalpha()})
split_share = np.mean([len(minilm_wordpiece.tokenize(w)) > 1 for w in distinct])
glue("wp_split_share", f"{split_share:.0%}")
glue("wp_vocab", f"{minilm_wordpiece.vocab_size:,}")
print(f"{split_share:.0%} of the {len(distinct):,} distinct held-out words are split into several pieces")

# %% [markdown]
# With {glue:text}`wp_vocab` tokens learned on modern English, {glue:text}`wp_split_share` of the
# distinct words in held-out Shakespeare need more than one piece (*wherefore* becomes
# `where ##for ##e`). A padded batch adds `[PAD]` (id 0) after `[SEP]`, and the attention mask
# marks it with a 0 so the model ignores it.
#
# ## 5. Embeddings and cosine similarity
#
# Token ids are arbitrary labels: id 1000 is not "closer" to id 1001 than to id 7. A model
# therefore maps each id to a learned vector, row $i$ of an **embedding matrix**
# $E \in \mathbb{R}^{V \times d}$. The lookup is the same as multiplying a one-hot vector by
# $E$, $\;e_i = \text{onehot}(i)^\top E$, but costs nothing: it is indexing (`llmcourse.nn.Embedding`,
# `torch.nn.Embedding`). Training moves the rows so that tokens used in similar ways end up
# with similar vectors.
#
# Similarity between vectors is usually measured by the **cosine** of the angle between them,
#
# $$ \cos(u, v) = \frac{u \cdot v}{\lVert u\rVert\,\lVert v\rVert} \in [-1, 1], $$
#
# which ignores length (often tied to frequency) and looks only at direction. If the vectors
# are normalised to unit length first, the cosine is a plain dot product, so a whole matrix of
# similarities is one matrix product.
#
# ### Exercise 3: a matrix of cosine similarities
#
# Write `cosine_similarity_matrix(a, b)` for `a` of shape `(N, D)` and `b` of shape `(M, D)`,
# returning the `(N, M)` matrix whose entry $(i, j)$ is $\cos(a_i, b_j)$. Divide by
# $\max(\lVert a_i\rVert, \epsilon)\max(\lVert b_j\rVert, \epsilon)$ so that a zero row gives
# similarity 0 instead of NaN. Use matrix products, not Python loops.

# %% nbgrader={"grade": false, "grade_id": "cosine_similarity_matrix", "locked": false, "schema_version": 3, "solution": true, "task": false}
def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarities (N, M) between the rows of a (N, D) and b (M, D)."""
    ### BEGIN SOLUTION
    a_unit = a / a.norm(dim=1, keepdim=True).clamp(min=eps)  # (N, D)
    b_unit = b / b.norm(dim=1, keepdim=True).clamp(min=eps)  # (M, D)
    return a_unit @ b_unit.T  # (N, M)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "cosine_similarity_matrix_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
_a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
_b = torch.tensor([[0.0, 2.0], [3.0, 0.0], [-1.0, -1.0]])
_want = torch.tensor([[0.0, 1.0, -(0.5**0.5)], [0.5**0.5, 0.5**0.5, -1.0]])
check_close(
    cosine_similarity_matrix(_a, _b), _want, "cosine similarities of [[1,0],[1,1]] with [[0,2],[3,0],[-1,-1]]",
    hints={"raw dot products (forgot to divide by the norms)": _a @ _b.T,
           "divided by the norms of a only": (_a / _a.norm(dim=1, keepdim=True)) @ _b.T,
           "divided by the norms of b only": _a @ (_b / _b.norm(dim=1, keepdim=True)).T},
)
### BEGIN HIDDEN TESTS
_gen = torch.Generator().manual_seed(1)
_a, _b = torch.randn(5, 16, generator=_gen) * 3, torch.randn(7, 16, generator=_gen)
check_close(cosine_similarity_matrix(_a, _b), F.cosine_similarity(_a[:, None, :], _b[None, :, :], dim=-1),
            "(5, 16) x (7, 16) against torch.nn.functional.cosine_similarity", atol=1e-5)
check_close(cosine_similarity_matrix(_a, _a * 10), cosine_similarity_matrix(_a, _a),
            "cosine similarity must not depend on the vectors' lengths", atol=1e-5)
_z = torch.cat([torch.zeros(1, 16), _b[:2]])
check_close(cosine_similarity_matrix(_z, _b)[0], torch.zeros(7), "a zero row gives similarity 0 (no NaN)")
check_shape(cosine_similarity_matrix(_a, _b), (5, 7), "output of (5, 16) x (7, 16)")
### END HIDDEN TESTS

# %% [markdown]
# **Sentence embeddings.** A sentence encoder such as all-MiniLM-L6-v2
# {cite}`reimers2019sbert,wang2020minilm` runs a small BERT over the WordPiece tokens, averages
# the output vectors and normalises the result, so similar *meanings* get a high cosine even
# when the words differ. `llmcourse.models.bert.SentenceEncoder` does exactly that with the
# real pretrained weights (chapter 08 builds the model).

# %% tags=["demo"] mystnb={"image": {"alt": "8 by 8 heatmap of cosine similarities between sentence embeddings; the four pairs of paraphrases form bright 2 by 2 blocks on the diagonal, all other entries are near zero."}}
from llmcourse.models.bert import SentenceEncoder, load_minilm

minilm, minilm_tok = load_minilm()
encoder = SentenceEncoder(minilm, minilm_tok)
labels = ["man, guitar", "strumming", "cat, sofa", "kitten, couch", "markets fell",
          "prices dropped", "to be or not", "exist or not"]
sentences = [
    "A man is playing a guitar.",
    "Someone is strumming an instrument.",
    "A cat sleeps on the sofa.",
    "A kitten naps on the couch.",
    "Stock markets fell sharply today.",
    "Share prices dropped at the exchange.",
    "To be, or not to be, that is the question.",
    "Whether to exist or not: that is what I ask.",
]
emb = encoder.encode(sentences)  # (8, 384), rows of unit length
sim = (emb @ emb.T).numpy()  # cosine similarities, since the rows are normalised
pair_mask = np.kron(np.eye(4), np.ones((2, 2))).astype(bool) & ~np.eye(8, dtype=bool)
glue("sent_para_sim", f"{sim[pair_mask].mean():.2f}")
glue("sent_other_sim", f"{sim[~np.kron(np.eye(4), np.ones((2, 2))).astype(bool)].mean():.2f}")

for label, sentence in zip(labels, sentences, strict=True):
    print(f"{label:>15}: {sentence}")
fig, ax = plt.subplots(figsize=(6.5, 5))
im = ax.imshow(sim, cmap="viridis", vmin=-0.2, vmax=1)
ax.set_xticks(range(8), labels, rotation=45, ha="right", fontsize=8)
ax.set_yticks(range(8), labels, fontsize=8)
for i in range(8):
    for j in range(8):
        ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=7,
                color="black" if sim[i, j] > 0.5 else "white")
fig.colorbar(im, label="cosine similarity")
ax.set_title("all-MiniLM-L6-v2 sentence embeddings")
plt.tight_layout()
plt.show()

# %% [markdown]
# Paraphrases score {glue:text}`sent_para_sim` on average, unrelated sentences
# {glue:text}`sent_other_sim`, although the paraphrases share almost no words. The *input*
# embedding table of the same model (one 384-dimensional row per WordPiece token, before any
# attention layer) already places related words near each other:

# %% tags=["demo"]
token_vectors = F.normalize(minilm.embeddings.word.weight.detach(), dim=1)  # (30522, 384)
for word in ["king", "love", "sword", "happy", "france"]:
    scores = token_vectors @ token_vectors[minilm_tok.token_to_id[word]]  # (30522,)
    nearest = [minilm_tok.vocab[j] for j in scores.topk(7).indices.tolist()[1:]]
    print(f"{word:>7}: {nearest}")

# %% [markdown]
# ## 6. Learning word vectors from context: the word2vec idea
#
# "You shall know a word by the company it keeps": words that appear in the same contexts tend
# to mean similar things. **word2vec** {cite}`mikolov2013efficient,mikolov2013word2vec` turns
# this into a training task. Slide a window of $w$ words on each side over the text; at each
# position the middle word is the **target** and the surrounding words are its **context**.
#
# ```text
#   The    cat   [ sat ]   on    the    mat        window w = 2
#   c-2    c-1   target    c+1   c+2
# ```
#
# - **CBOW** (continuous bag of words) predicts the target from its context: the average of the
#   context vectors goes through a softmax over the vocabulary. Here the example is
#   ([The, cat, on, the] $\to$ sat).
# - **Skip-gram** predicts each context word from the target: the same window gives the pairs
#   (sat $\to$ The), (sat $\to$ cat), (sat $\to$ on), (sat $\to$ the). With input vectors $v$ and
#   output vectors $u$ it models $P(c \mid t) = \exp(u_c^\top v_t) / \sum_{w} \exp(u_w^\top v_t)$.
#
# The sum over the whole vocabulary is expensive, so word2vec uses **negative sampling**: for
# each true pair it draws $K$ random "noise" words $n_1, \dots, n_K$ (with probability
# proportional to frequency$^{3/4}$) and maximises
# $\log\sigma(u_c^\top v_t) + \sum_{i=1}^{K} \log\sigma(-u_{n_i}^\top v_t)$: true pairs should
# score high, random pairs low. Both models learn from the same windows; they differ only in
# which side is predicted.
#
# ### Exercise 4 (worked example): CBOW training examples
#
# Write `cbow_examples(tokens, window)` returning one `(context, target)` pair per position of
# `tokens`: the context is the list of up to `window` tokens before the target followed by up
# to `window` tokens after it, in text order (fewer near the ends). Raise `ValueError` when
# `window < 1`. For `"The cat sat on the mat".split()` and `window=2` the third example is
# `(["The", "cat", "on", "the"], "sat")`.

# %% nbgrader={"grade": false, "grade_id": "cbow_examples", "locked": false, "schema_version": 3, "solution": true, "task": false}
def cbow_examples(tokens: Sequence[str], window: int) -> list[tuple[list[str], str]]:
    """(context, target) for every position: up to ``window`` tokens on each side of the target."""
    ### BEGIN SOLUTION
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    examples = []
    for i, target in enumerate(tokens):
        context = list(tokens[max(0, i - window) : i]) + list(tokens[i + 1 : i + 1 + window])
        examples.append((context, target))
    return examples
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "cbow_examples_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
_sentence = "The cat sat on the mat".split()
_examples = cbow_examples(_sentence, 2)
check_equal(None if _examples is None else len(_examples), 6, "number of examples for 6 tokens")
_context, _target = _examples[2]
if list(_context) == ["The", "cat", "on", "the"] and _target != "sat":
    raise ExerciseFailure(f"the context [The, cat, on, the] has target 'sat' (the word in the "
                          f"middle of the window), got {_target!r}. 'mat' is the last word; its "
                          "own context is [on, the].")
check_equal((list(_context), _target), (["The", "cat", "on", "the"], "sat"), "third example, window 2")
check_equal((list(_examples[0][0]), _examples[0][1]), (["cat", "sat"], "The"),
            "first example (no words to the left)")
check_equal((list(_examples[5][0]), _examples[5][1]), (["on", "the"], "mat"),
            "last example (no words to the right)")
### BEGIN HIDDEN TESTS
def _reference_cbow(tokens, window):
    n = len(tokens)
    return [([tokens[j] for j in range(i - window, i + window + 1) if 0 <= j < n and j != i], tokens[i])
            for i in range(n)]


_rng = np.random.default_rng(3)
for _w in (1, 3, 5):
    _toks = [str(x) for x in _rng.integers(0, 6, size=17)]
    _got = [(list(c), t) for c, t in cbow_examples(_toks, _w)]
    check_equal(_got, _reference_cbow(_toks, _w), f"examples of 17 random tokens, window {_w}")
check_equal(cbow_examples([], 2), [], "no tokens, no examples")
check_equal([(list(c), t) for c, t in cbow_examples(["solo"], 3)], [([], "solo")], "a single token")
check_raises(lambda: cbow_examples(_sentence, 0), ValueError, "window=0")
### END HIDDEN TESTS

# %% [markdown]
# **Training word vectors on Shakespeare, the fast way.** Running word2vec's stochastic
# gradient descent to convergence takes minutes. Levy and Goldberg {cite}`levy2014neural`
# showed that skip-gram with negative sampling implicitly factorises a matrix of
# *pointwise mutual information*, $\text{PMI}(t, c) = \log \frac{P(t, c)}{P(t)P(c)}$: how much
# more often $t$ and $c$ share a window than chance predicts. So we can count the skip-gram pairs
# (window 2, the 3,000 most frequent words), keep the positive PMI values, and compress the
# matrix to 100 dimensions with a truncated SVD. The whole thing takes seconds.

# %% tags=["demo"] mystnb={"image": {"alt": "Two-dimensional PCA projection of count-based Shakespeare word vectors: family words, royal titles, body parts and time words form four separate clusters."}}
lower_words = [w for w in words_of(text.lower()) if w[0].isalpha()]
vocab_w2v = [w for w, _ in Counter(lower_words).most_common(3000)]
index_w2v = {w: i for i, w in enumerate(vocab_w2v)}
ids_w2v = torch.tensor([index_w2v.get(w, -1) for w in lower_words])  # -1 = outside the vocabulary
V_w2v, window = len(vocab_w2v), 2
cooc = torch.zeros(V_w2v * V_w2v, dtype=torch.float64)
for offset in range(1, window + 1):  # skip-gram pairs (t, c) at distance offset, both directions
    t_ids, c_ids = ids_w2v[:-offset], ids_w2v[offset:]
    keep = (t_ids >= 0) & (c_ids >= 0)
    cooc.index_add_(0, t_ids[keep] * V_w2v + c_ids[keep], torch.ones(int(keep.sum()), dtype=torch.float64))
cooc = cooc.view(V_w2v, V_w2v)
cooc = cooc + cooc.T  # (V, V) counts of skip-gram pairs
total = cooc.sum()
p_context = cooc.sum(0, keepdim=True) ** 0.75  # word2vec's smoothed context distribution
p_context = p_context / p_context.sum()
pmi = torch.log(cooc / total) - torch.log(cooc.sum(1, keepdim=True) / total) - torch.log(p_context)
ppmi = pmi.clamp(min=0).nan_to_num(0.0, posinf=0.0, neginf=0.0).float()  # (V, V), log 0 -> 0
U, S, _ = torch.svd_lowrank(ppmi, q=100, niter=3)
word_vectors = F.normalize(U * S.sqrt(), dim=1)  # (V, 100)
print(f"{int(cooc.sum()):,} skip-gram pairs over a {V_w2v:,}-word vocabulary")
for word in ["king", "father", "thou", "speak", "eyes", "rome"]:
    scores = word_vectors @ word_vectors[index_w2v[word]]
    print(f"{word:>7}: {[vocab_w2v[j] for j in scores.topk(7).indices.tolist()[1:]]}")

groups = {
    "family": ["father", "mother", "son", "daughter", "brother", "sister", "wife", "husband"],
    "titles": ["king", "queen", "prince", "duke", "lord", "lady", "earl", "noble"],
    "body": ["eyes", "hand", "heart", "head", "face", "tongue", "lips", "cheeks"],
    "time": ["day", "night", "hour", "morning", "time", "year", "tomorrow", "week"],
}
fig, ax = plt.subplots(figsize=(6.5, 4.5))
chosen = [w for ws in groups.values() for w in ws if w in index_w2v]
vecs = word_vectors[[index_w2v[w] for w in chosen]]
vecs = vecs - vecs.mean(0)
coords = (vecs @ torch.linalg.svd(vecs, full_matrices=False).Vh[:2].T).numpy()  # (n, 2) PCA
for name, ws in groups.items():
    rows = [chosen.index(w) for w in ws if w in index_w2v]
    ax.scatter(coords[rows, 0], coords[rows, 1], label=name)
    for r in rows:
        ax.annotate(chosen[r], coords[r], fontsize=8, xytext=(3, 3), textcoords="offset points")
ax.set(title="Shakespeare word vectors (PPMI + SVD), first two principal components")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Nothing told the method that *father* and *son* are kin or that *thou* goes with *art* and
# *hast*: it only counted which words share windows. These static vectors have one weakness
# that the rest of the course removes: a word has **one** vector whatever its sentence, so
# "bank" (river) and "bank" (money) are the same point. Contextual models (BERT, GPT) compute a
# new vector for each occurrence.
#
# ## 7. n-gram language models
#
# A **language model** assigns a probability to a sequence of tokens. By the chain rule of
# probability, exactly,
#
# $$ P(w_1, \dots, w_T) = \prod_{t=1}^{T} P(w_t \mid w_1, \dots, w_{t-1}). $$
#
# An **n-gram model** makes the Markov assumption that only the last $n - 1$ tokens matter,
# $P(w_t \mid w_{<t}) \approx P(w_t \mid w_{t-n+1}, \dots, w_{t-1})$, and estimates each
# conditional probability by counting {cite}`jurafsky2025slp`:
#
# $$ P_{\text{MLE}}(w \mid h) = \frac{C(h, w)}{C(h)}, \qquad C(h) = \sum_{w'} C(h, w'), $$
#
# where $h$ is the context (the $n-1$ previous tokens), $C(h, w)$ counts the n-gram "$h$
# followed by $w$" in the training text and $C(h)$ counts how often $h$ is followed by
# anything. A bigram model ($n = 2$) looks at one previous token, a trigram model at two.
#
# The trouble is zeros: an n-gram never seen in training gets probability 0, and one zero makes
# the probability of a whole test text 0. **Add-k smoothing** (Laplace smoothing when $k = 1$)
# pretends every one of the $V$ vocabulary words was seen $k$ extra times after every context:
#
# $$ P_{k}(w \mid h) = \frac{C(h, w) + k}{C(h) + kV}. $$
#
# The $kV$ in the denominator keeps the distribution normalised: summing the numerator over all
# $V$ words gives $C(h) + kV$. For "the cat sat on the mat" (vocabulary {the, cat, sat, on,
# mat}, $V = 5$) the bigram counts after "the" are *cat* 1 and *mat* 1, so $C(\text{the}) = 2$
# and, with $k = 1$, $P(\text{cat} \mid \text{the}) = (1 + 1)/(2 + 5) = 2/7 \approx 0.286$ and
# $P(\text{sat} \mid \text{the}) = 1/7$, where the unsmoothed estimates are $1/2$ and $0$.
#
# The helper `count_ngrams` (given) counts the n-grams of a token list.

# %%
def count_ngrams(tokens: Sequence[str], n: int) -> Counter:
    """Counts of every n-gram (a tuple of n consecutive tokens) in ``tokens``."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return Counter(zip(*(tokens[i:] for i in range(n)), strict=False))


print(count_ngrams("the cat sat on the mat".split(), 2))

# %% [markdown]
# ### Exercise 5 (worked numbers): add-k smoothed n-gram probability
#
# Write `ngram_probability(counts, context, word, vocab_size, k)`: the add-k estimate of
# $P(\text{word} \mid \text{context})$ from the n-gram counts `counts` (as returned by
# `count_ngrams`, with `n = len(context) + 1`). Compute $C(h)$ as the sum of the counts of the
# n-grams that start with `context`. If the denominator is 0 (an unseen context with $k = 0$),
# raise `ValueError`. The example above must give $2/7$.

# %% nbgrader={"grade": false, "grade_id": "ngram_probability", "locked": false, "schema_version": 3, "solution": true, "task": false}
def ngram_probability(counts: Mapping[tuple[str, ...], int], context: tuple[str, ...], word: str,
                      vocab_size: int, k: float = 1.0) -> float:
    """Add-k smoothed P(word | context) from n-gram counts (n = len(context) + 1)."""
    ### BEGIN SOLUTION
    context = tuple(context)
    n_context = len(context)
    context_count = sum(c for gram, c in counts.items() if gram[:n_context] == context)
    denominator = context_count + k * vocab_size
    if denominator <= 0:
        raise ValueError(f"P({word!r} | {context!r}) is undefined: the context was never seen and k = {k}")
    return (counts.get(context + (word,), 0) + k) / denominator
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ngram_probability_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
_bigrams = count_ngrams("the cat sat on the mat".split(), 2)
check_close(ngram_probability(_bigrams, ("the",), "cat", vocab_size=5, k=1.0), 2 / 7,
            "P(cat | the), add-1, on 'the cat sat on the mat'",
            hints={"forgot k * V in the denominator": 1.0, "added k, not k * V, to the denominator": 2 / 3})
check_close(ngram_probability(_bigrams, ("the",), "sat", vocab_size=5, k=1.0), 1 / 7,
            "P(sat | the), add-1 (an unseen bigram)", hints={"no smoothing of unseen n-grams": 0.0})
check_close(ngram_probability(_bigrams, ("the",), "cat", vocab_size=5, k=0.0), 0.5,
            "P(cat | the) without smoothing (k = 0)")
### BEGIN HIDDEN TESTS
_toks = words_of(text[:30_000].lower())
_vocab = sorted(set(_toks))
_tri = count_ngrams(_toks, 3)
_ctx_counts = Counter(tuple(_toks[i : i + 2]) for i in range(len(_toks) - 2))
for _h, _w in [(("i", "am"), "not"), (("my", "lord"), ","), ((",", "and"), "the"), (("of", "the"), "zzz")]:
    for _k in (1.0, 0.05):
        _expect = (_tri.get(_h + (_w,), 0) + _k) / (_ctx_counts.get(_h, 0) + _k * len(_vocab))
        check_close(ngram_probability(_tri, _h, _w, len(_vocab), _k), _expect,
                    f"trigram P({_w!r} | {_h}) with k={_k} on Shakespeare", rtol=1e-9, atol=1e-12)
_h = ("my", "lord")
check_close(sum(ngram_probability(_tri, _h, _w, len(_vocab), 0.1) for _w in _vocab), 1.0,
            "probabilities over the whole vocabulary must sum to 1", atol=1e-9)
check_close(ngram_probability(_tri, ("never", "seen"), "x", 100, 0.5), 0.01,
            "an unseen context gives the uniform 1/V")
check_raises(lambda: ngram_probability(_tri, ("never", "seen"), "x", 100, 0.0), ValueError,
             "unseen context with k = 0")
_unigrams = count_ngrams(_toks, 1)
check_close(ngram_probability(_unigrams, (), "the", len(_vocab), 0.0), _unigrams[("the",)] / len(_toks),
            "a unigram model (empty context)")
### END HIDDEN TESTS

# %% [markdown]
# ## 8. Perplexity
#
# How good is a language model? Give it text it has not seen, $w_1, \dots, w_N$, and look at the
# probabilities $p_t = P(w_t \mid w_{<t})$ it gave to the tokens that actually came. The
# average negative log-probability is the **cross-entropy** $H$ (the loss every neural language
# model in this course minimises), and **perplexity** is its exponential:
#
# $$
# \text{PPL} = \exp\Bigl(-\frac{1}{N}\sum_{t=1}^{N} \ln p_t\Bigr)
#            = \Bigl(\prod_{t=1}^{N} p_t\Bigr)^{-1/N}
#            = 2^{-\frac{1}{N}\sum_t \log_2 p_t}.
# $$
#
# It is the inverse of the geometric mean of the probabilities, and the base of the logarithm
# does not matter as long as the exponential uses the same base. A model that spreads its
# probability uniformly over $V$ tokens has $p_t = 1/V$ everywhere and perplexity exactly $V$:
# perplexity is the size of a uniform choice that would be equally surprised, the *effective
# branching factor*. Lower is better; 1 would be a model that is always certain and right.
#
# **Worked example.** With $p = [0.5, 0.25, 0.125, 0.5]$ the product is $2^{-7}$, so
# $\text{PPL} = (2^{-7})^{-1/4} = 2^{7/4} \approx 3.36$. Note that this is not the arithmetic
# mean of $1/p_t$ (which is 4): perplexity punishes one bad prediction less than that, but a
# single $p_t = 0$ makes it infinite.
#
# ### Exercise 6 (worked numbers): perplexity
#
# Write `perplexity(probs)` for a sequence (list, array or 1-D tensor) of the probabilities a
# model gave to the observed tokens. Return a Python float; return `math.inf` if a probability
# is 0; raise `ValueError` for an empty input or values outside $[0, 1]$.

# %% nbgrader={"grade": false, "grade_id": "perplexity", "locked": false, "schema_version": 3, "solution": true, "task": false}
def perplexity(probs: Sequence[float] | torch.Tensor) -> float:
    """exp of the mean negative log-probability of the observed tokens."""
    ### BEGIN SOLUTION
    p = torch.as_tensor(probs, dtype=torch.float64).flatten()
    if p.numel() == 0:
        raise ValueError("perplexity of an empty sequence is undefined")
    if bool(((p < 0) | (p > 1)).any()):
        raise ValueError(f"probabilities must lie in [0, 1], got min {p.min().item()}, max {p.max().item()}")
    if bool((p == 0).any()):
        return math.inf
    return math.exp(-torch.log(p).mean().item())
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "perplexity_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check_close(
    perplexity([0.5, 0.25, 0.125, 0.5]), 3.3636, "perplexity of [0.5, 0.25, 0.125, 0.5]",
    hints={"forgot the minus sign (this is 1 / perplexity)": 1 / 3.3636,
           "summed the log-probabilities instead of averaging them": 128.0,
           "mixed bases: log2 averaged, then exp": math.exp(1.75),
           "arithmetic mean of 1/p instead of the geometric mean": 4.0},
)
check_close(perplexity([0.1] * 10), 10.0, "perplexity of a uniform choice among 10 tokens")
### BEGIN HIDDEN TESTS
_gen = torch.Generator().manual_seed(5)
_logits, _targets = torch.randn(50, 30, generator=_gen) * 2, torch.randint(0, 30, (50,), generator=_gen)
_p = torch.softmax(_logits, dim=1)[torch.arange(50), _targets]
check_close(perplexity(_p), math.exp(F.cross_entropy(_logits, _targets).item()),
            "perplexity equals exp(cross-entropy) (against torch.nn.functional.cross_entropy)", rtol=1e-5)
check_close(perplexity(np.full(7, 1 / 50_257)), 50_257.0, "uniform over GPT-2's vocabulary", rtol=1e-6)
check_close(perplexity([1.0, 1.0]), 1.0, "a model that is always certain and right")
check_equal(perplexity([0.5, 0.0, 0.9]), math.inf, "a zero probability gives infinite perplexity")
check_raises(lambda: perplexity([]), ValueError, "empty input")
check_raises(lambda: perplexity([0.5, 1.5]), ValueError, "a probability above 1")
check_equal(type(perplexity([0.5])), float, "return type")
### END HIDDEN TESTS

# %% [markdown]
# **n-gram models of Shakespeare.** Word-level unigram, bigram and trigram models (line breaks
# kept as tokens, so the model also learns the layout of a play) are counted on the training
# part; words never seen in training become `<unk>`. The figure shows held-out perplexity
# against the smoothing constant $k$. The dashed line is a simple fix we do not derive here:
# *interpolation*, $0.1\,P_1 + 0.3\,P_2 + 0.6\,P_3$, which mixes the unsmoothed trigram and
# bigram estimates with an add-1 unigram so that an unseen trigram falls back on shorter
# contexts {cite}`jurafsky2025slp,chen1999smoothing`.

# %% tags=["demo"] mystnb={"image": {"alt": "Held-out perplexity of word-level unigram, bigram and trigram models on Shakespeare against the add-k constant k on a log scale: the bigram and trigram curves have their minimum at a small k, the unigram falls towards k = 1, the trigram lies far above the others; a dashed line for the interpolated model lies below all curves."}}
ngram_train = words_of(train_text, keep_newlines=True)
ngram_vocab = set(ngram_train) | {"<unk>"}
ngram_val = [w if w in ngram_vocab else "<unk>" for w in words_of(val_text, keep_newlines=True)]
V_ng = len(ngram_vocab)
ks = np.logspace(-4, 0, 9)
ngram_counts, context_counts, ppl = {}, {}, {}
per_token_mle = {}  # n -> (numerators, denominators) of the held-out tokens
for n in (1, 2, 3):
    ngram_counts[n] = count_ngrams(ngram_train, n)
    context_counts[n] = Counter()
    for gram, c in ngram_counts[n].items():
        context_counts[n][gram[:-1]] += c
    history = ngram_train[len(ngram_train) - (n - 1):] if n > 1 else []
    seq = history + ngram_val  # give the first held-out tokens their real context
    grams = [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]  # one per held-out token
    num = np.array([ngram_counts[n].get(g, 0) for g in grams], dtype=float)
    den = np.array([context_counts[n].get(g[:-1], 0) for g in grams], dtype=float)
    per_token_mle[n] = (num, den)
    ppl[n] = [math.exp(-np.mean(np.log((num + k) / (den + k * V_ng)))) for k in ks]

p1 = (per_token_mle[1][0] + 1) / (per_token_mle[1][1] + V_ng)
p2, p3 = (np.divide(nu, de, out=np.zeros_like(nu), where=de > 0) for nu, de in (per_token_mle[2], per_token_mle[3]))
ppl_interp = math.exp(-np.mean(np.log(0.1 * p1 + 0.3 * p2 + 0.6 * p3)))
best = {n: (ks[int(np.argmin(ppl[n]))], min(ppl[n])) for n in ppl}
for n, name in ((1, "unigram"), (2, "bigram"), (3, "trigram")):
    print(f"{name:>8}: best k = {best[n][0]:.0e}, held-out perplexity {best[n][1]:.0f}")
    glue(f"ppl_best_{n}", f"{best[n][1]:.0f}")
    glue(f"ppl_k1_{n}", f"{ppl[n][-1]:.0f}")
print(f"interpolated: held-out perplexity {ppl_interp:.0f}  (vocabulary V = {V_ng:,})")
glue("ppl_interp", f"{ppl_interp:.0f}")
glue("ngram_vocab", f"{V_ng:,}")

fig, ax = plt.subplots(figsize=(6, 3.8))
for n, name in ((1, "unigram"), (2, "bigram"), (3, "trigram")):
    ax.loglog(ks, ppl[n], "o-", label=name)
ax.axhline(ppl_interp, ls="--", color="k", label="interpolated 1-2-3-gram")
ax.set(xlabel="add-k constant k", ylabel="held-out perplexity", title="Word n-grams on Tiny Shakespeare")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# With its best $k$ the bigram model reaches a held-out perplexity of {glue:text}`ppl_best_2`,
# better than the unigram's {glue:text}`ppl_best_1`, but the trigram model is *worse*
# ({glue:text}`ppl_best_3`): with only about a million characters of training text most word
# pairs are seen once or never, so add-k spreads most of the probability of a trigram context
# over the {glue:text}`ngram_vocab` vocabulary words. Add-one ($k = 1$) is far worse still
# (trigram: {glue:text}`ppl_k1_3`). Interpolation, which trusts the trigram only where it has
# evidence, reaches {glue:text}`ppl_interp`. Neural models sidestep the sparsity by sharing
# statistical strength between similar contexts through their embeddings: that is the story of
# chapters 02 to 07.
#
# Sampling shows the same thing from the other side. From the add-1 trigram, almost every word
# is drawn from the smoothing mass, i.e. uniformly from the vocabulary; from the unsmoothed
# trigram, the text is locally fluent but stitched from fragments of the training plays.

# %% tags=["demo"]
continuations = defaultdict(Counter)  # context (2 words) -> counts of the next word
for (a, b, c), count in ngram_counts[3].items():
    continuations[(a, b)][c] += count
vocab_list = sorted(ngram_vocab - {"<unk>"})
rng = np.random.default_rng(0)


def sample_trigram(k: float, length: int = 70) -> str:
    """Sample from the add-k trigram model, starting at the beginning of a speech."""
    out = ["\n", "\n"]
    for _ in range(length):
        seen = continuations.get((out[-2], out[-1]), Counter())
        total_seen = sum(seen.values())
        # (C(h, w) + k) / (C(h) + kV) is a mixture: the counts w.p. C(h) / (C(h) + kV), else uniform.
        if total_seen and rng.random() < total_seen / (total_seen + k * V_ng):
            words, weights = list(seen), list(seen.values())
            out.append(words[rng.choice(len(words), p=np.array(weights) / total_seen)])
        else:
            out.append(vocab_list[rng.integers(len(vocab_list))])
    joined = " ".join(out[2:])
    return re.sub(r" ?\n ?", "\n", re.sub(r" ([.,;:!?])", r"\1", joined))


print("--- add-1 trigram ---")
print(sample_trigram(1.0))
print("\n--- unsmoothed trigram (k = 0) ---")
print(sample_trigram(0.0))

# %% [markdown]
# ```{admonition} Common misconceptions
# :class: warning
#
# - **"In CBOW the context [The, cat, on, the] predicts *mat*."** For "The cat sat on the mat"
#   with a window of 2 words on each side, that context surrounds *sat*, so the target is
#   *sat*. *mat* is the last word; its context is [on, the]. Skip-gram uses the same window in
#   the other direction: *sat* predicts each of The, cat, on, the.
# - **"A token is a word."** GPT-2 tokens are pieces of UTF-8 bytes: a common word with its
#   leading space is one token, a rare word or an emoji several, and `"Hello"` and `" Hello"`
#   are different tokens. Token counts, not word counts, set a model's context length and cost.
# - **"Subword tokenizers still need an unknown token."** Byte-level BPE can spell any string
#   from its 256 byte tokens, so it has no `[UNK]`. WordPiece works on characters and does fall
#   back to `[UNK]` for a word it cannot build (try `"snow☃man"`).
# - **"BERT's tokenizer output for 'Hello'."** Padded to length 4, `"Hello"` is
#   `[101, 7592, 102, 0]` (`[CLS] hello [SEP] [PAD]`) with attention mask `[1, 1, 1, 0]`:
#   the `[SEP]` token is always there, and only padding gets a 0 in the mask.
# - **"Perplexity 10 means the model chooses among 10 words."** It means the model is as
#   surprised, on average (geometrically), as a uniform choice among 10 would be. And it is
#   *per token*: perplexities of models with different tokenizers (characters, words, GPT-2
#   tokens) are not comparable; compare bits per character or per byte instead.
# - **"Perplexity uses $2^{H}$, so it differs from $e^{H}$."** $2^{H_2}$ with $H_2$ in bits
#   and $e^{H}$ with $H$ in nats are the same number; only mixing bases is wrong.
# - **"Add-one smoothing is a safe default."** With a large vocabulary it gives most of the
#   probability to words never seen after a context: the trigram above goes from
#   {glue:text}`ppl_best_3` to {glue:text}`ppl_k1_3` in perplexity. Use a small $k$, or better
#   interpolation or Kneser-Ney smoothing.
# - **"A cosine similarity of 0.6 means 60% similar."** The scale depends on the model (the
#   unrelated sentences above score about 0, other models put everything above 0.5); use
#   cosines to rank, and compare them only within one model.
# ```
#
# ## Summary
#
# You wrote the BPE merge loop and matched the library's byte-level BPE merge for merge,
# tokenized words with WordPiece's greedy longest match against a real BERT vocabulary,
# computed cosine similarities and used them on real sentence embeddings, built the windows
# that word2vec learns from, and estimated and evaluated smoothed n-gram models with
# perplexity. The library's versions (`llmcourse.tokenizers.ByteLevelBPE`, `WordPiece`,
# `CharTokenizer`, `llmcourse.models.bert.SentenceEncoder`) are the ones every later chapter
# uses: chapter 02 trains a character-level RNN on the same Tiny Shakespeare text and measures
# it with the same perplexity.
#
# ## References
#
# {cite}`gage1994bpe` and {cite}`sennrich2016bpe` (BPE), {cite}`radford2019gpt2` (byte-level
# BPE, GPT-2), {cite}`schuster2012wordpiece` and {cite}`devlin2019bert` (WordPiece, BERT),
# {cite}`reimers2019sbert` and {cite}`wang2020minilm` (sentence embeddings, MiniLM),
# {cite}`mikolov2013efficient`, {cite}`mikolov2013word2vec` (word2vec) and
# {cite}`levy2014neural` (its link to PMI), {cite}`jurafsky2025slp` (chapter 3: n-gram models,
# smoothing, perplexity), {cite}`chen1999smoothing` (smoothing compared). Full entries are on
# the [bibliography](../book/bibliography.md) page.
