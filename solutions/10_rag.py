# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 10 Retrieval-augmented generation
#
# A language model answers from what its weights remember. That memory was fixed on the day
# training ended, it is lossy, it cannot be corrected without more training, and the model has
# no built-in way of saying "I never saw this": asked about something it does not know, it
# still produces a fluent answer. **Retrieval-augmented generation** (RAG)
# {cite}`lewis2020rag` gives the model a second memory that can be read, cited and edited: a
# collection of documents. For every question the system first **retrieves** the passages most
# likely to contain the answer and then **generates** an answer conditioned on them, placed in
# the prompt. Retrieval comes first; the generator never sees the collection, only what the
# retriever hands it.
#
# ```text
#  offline, once                                   online, for every question
#  documents -> chunks -> index                    question --> retriever --> top-k chunks
#                         (BM25 postings,                                        |
#                          embedding vectors)      prompt = chunks + question <--+
#                                                        |
#                                                        v
#                                                  generator (a language model) --> answer
# ```
#
# This chapter builds every box of that diagram with the course library and measures each one.
# The knowledge base is the course itself: its book pages, chapter text and library reference.
#
# **Learning objectives.** After this chapter you can
#
# 1. split documents into chunks and explain how chunk size and structure change retrieval;
# 2. compute a BM25 score by hand and say what its IDF, $k_1$ and $b$ do;
# 3. retrieve by cosine similarity of sentence embeddings, exactly or with an approximate
#    (IVF) index;
# 4. evaluate a retriever with recall@k, MRR and nDCG on questions with known answers;
# 5. fuse lexical and dense rankings with reciprocal rank fusion, diversify with MMR, rerank;
# 6. quantize embeddings to int8 and to single bits, search them by Hamming distance and
#    count the memory saved;
# 7. measure how much retrieval improves the answers of a small GPT on facts it never saw,
#    and recognise the failure it cannot fix: a wrong passage gives a confident wrong answer.
#
# **How to use this notebook.** Cells marked *Exercise* are graded: replace
# `raise NotImplementedError()` with your code, then run the test cell below it. The visible
# tests tell you what was expected and what came back; hidden tests run at grading time.
# Demonstrations call the course library `llmcourse`, so they work before you solve anything.

# %%
import math
import random
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import llmcourse
import llmcourse.retrieval as lr
from llmcourse.checks import check_close, check_equal, check_raises
from llmcourse.datasets import (
    collect_course_pages,
    evidence_span,
    fact_cards,
    fact_questions,
    load_course_pages,
    load_rag_questions,
    make_creatures,
    reader_prompt,
    reader_worlds,
    relevant_chunk_ids,
)
from llmcourse.display import glue

torch.manual_seed(0)
print("llmcourse", llmcourse.__version__, "| torch", torch.__version__)

# %% [markdown]
# ## 1. The knowledge base: this course
#
# Our documents are the course's own pages: the book pages (setup, grading, notation, GPU
# kernels), the text of the chapters, and the docstrings of the library's main modules, which
# read like reference pages. A frozen copy ships with the library
# (`llmcourse.datasets.load_course_pages`), so this notebook gives the same numbers in a clone,
# in Colab, and after the pages are edited.
#
# To measure a retriever we need questions whose answers we know. The course ships a set of
# questions written the way a student would ask them; each names the page that answers it and
# quotes the answering passage, its **evidence**, character for character. Relevance is
# therefore defined on *characters*, not on chunk numbers: whatever way we cut the pages
# later, a chunk is relevant to a question when it holds (most of) its evidence.

# %%
pages = load_course_pages()
questions = load_rag_questions()
n_chars = sum(len(text) for text in pages.values())
print(f"{len(pages)} pages, {n_chars:,} characters; {len(questions)} questions")
kinds = {}
for doc_id in pages:
    kinds[doc_id.split("/")[0]] = kinds.get(doc_id.split("/")[0], 0) + 1
print("pages by kind:", kinds)
example_q = questions[4]
print(f"\n{example_q.id}: {example_q.question}\n  page: {example_q.doc_id}\n  evidence: {example_q.evidence!r}")

# %% tags=["demo"]
glue("n_pages", f"{len(pages)}")
glue("n_chars", f"{n_chars:,}")
glue("n_questions", f"{len(questions)}")
repo = Path.cwd().parent
if (repo / "book").is_dir() and (repo / "solutions").is_dir():
    live = collect_course_pages(repo)
    changed = sorted(d for d in pages if d in live and live[d] != pages[d])
    print(f"The repository now has {len(live)} pages ({len(set(live) - set(pages))} not in the "
          f"snapshot, {len(changed)} edited since); this chapter uses the shipped snapshot.")
else:
    print("No repository next to this notebook (e.g. Colab): using the shipped snapshot.")

# %% [markdown]
# The snapshot holds {glue:text}`n_pages` pages ({glue:text}`n_chars` characters) and
# {glue:text}`n_questions` questions.
#
# ## 2. Chunking
#
# Pages are too long to retrieve whole: a page about GPU kernels answers dozens of questions,
# an embedding of the whole page is a blur of all of them, and the generator's context window
# (a few hundred characters for the model at the end of this chapter, a few thousand tokens
# for typical LLMs) holds only a few passages. So documents are cut into **chunks** and the chunks are
# indexed. The choices:
#
# - **Fixed-size windows** (`chunk_fixed`): every $n$ characters (or tokens), optionally with an
#   overlap so that a sentence cut at a boundary appears whole in one of the two windows.
#   Simple and blind: windows start in the middle of words and tables.
# - **Structure-aware**: pack whole sentences (`chunk_sentences`) or paragraphs
#   (`chunk_paragraphs`) up to a size limit, or cut Markdown at its headings
#   (`chunk_markdown`), splitting long sections by paragraphs. Each chunk also remembers its
#   heading path (`"Setting up > Data"`), which we prepend to the text we index: a chunk that
#   says "set this variable" is much easier to find when it also says which page and section
#   it belongs to.
#
# Every chunk keeps its character offsets in its page, which is how we decide relevance.

# %% tags=["demo"]
page = pages["book/setup.md"]
fixed = lr.chunk_fixed(page, size=300, overlap=50, doc_id="book/setup.md")
markdown = lr.chunk_markdown(page, max_size=300, doc_id="book/setup.md")
print(f"fixed windows: {len(fixed)} chunks; markdown sections: {len(markdown)} chunks\n")
print("fixed window 2:     ", repr(fixed[2].text[:150]), "...")
print("markdown chunk 2:   ", repr(markdown[2].with_context()[:150]), "...")

# %%
CHUNK_SIZE = 600
chunks = lr.chunk_corpus(pages, lr.chunk_markdown, max_size=CHUNK_SIZE)
chunk_texts = [c.with_context() for c in chunks]  # heading path + text: what we index
relevant = [relevant_chunk_ids(chunks, pages, q) for q in questions]
print(f"{len(chunks)} chunks of at most {CHUNK_SIZE} characters (mean {np.mean([len(c.text) for c in chunks]):.0f})")
print(f"{example_q.id} is answered by chunk(s) {sorted(relevant[4])}:\n{chunk_texts[min(relevant[4])][:300]}")

# %% [markdown]
# ## 3. Lexical retrieval: BM25
#
# The classic search engine scores a chunk by the query words it contains, weighted by how
# informative each word is. **Okapi BM25** {cite}`robertson2009bm25` scores a document $d$ for
# a query $q = (t_1, \dots, t_m)$ as
#
# $$
# \text{BM25}(q, d) = \sum_{i=1}^{m} \text{IDF}(t_i)\;
#   \frac{f(t_i, d)\,(k_1 + 1)}{f(t_i, d) + k_1\bigl(1 - b + b\,\frac{|d|}{\text{avgdl}}\bigr)},
# \qquad
# \text{IDF}(t) = \ln \frac{N - n(t) + 0.5}{n(t) + 0.5},
# $$
#
# with $f(t, d)$ the count of $t$ in $d$, $|d|$ the length of $d$ in tokens, avgdl the mean
# length, $N$ the number of documents and $n(t)$ how many contain $t$. Three ideas are packed
# in:
#
# - **Rare words count more** (IDF): "zorblat" in a query is worth far more than "the".
# - **Saturation** ($k_1$, typically 1.2 to 2): the second occurrence of a word adds less than
#   the first, the tenth almost nothing; the term part never exceeds $k_1 + 1$.
# - **Length normalisation** ($b \in [0, 1]$): a long document contains many words by chance,
#   so its counts are discounted; $b = 0$ ignores length, $b = 1$ normalises fully.
#
# For a word in more than half of the documents the IDF above is negative. Libraries differ
# here; the course's `BM25` (like the `rank_bm25` package, whose scores it reproduces) replaces
# such IDFs by a small positive floor. The examples below avoid those words.
#
# ### Exercise 1 (worked numbers): BM25 by hand
#
# Write `bm25_scores(query, corpus, k1=1.5, b=0.75)`: `query` is a list of tokens, `corpus` a
# list of documents, each a list of tokens; return the list of BM25 scores, one per document,
# with the formula above (natural log; each occurrence of a word in the query adds its term
# once). You may assume that no query word occurs in more than half of the documents.
#
# On the five-document corpus below and the query `["bm25", "rankings"]`: $N = 5$,
# avgdl $= 30/5 = 6$; "bm25" is in 2 documents, IDF $= \ln(3.5/2.5) = 0.3365$; "rankings" in
# one, IDF $= \ln 3 = 1.0986$. Document 0 has length 6 $=$ avgdl, so its term part is
# $2.5/(1 + 1.5) = 1$ and its score 0.3365. Document 2 (length 7) has both words:
# $(0.3365 + 1.0986) \cdot 2.5 / (1 + 1.5 \cdot 1.125) = 1.3350$. The others score 0.

# %%
toy_corpus = [
    "bm25 ranks documents by term frequency".split(),
    "dense retrieval embeds queries and documents".split(),
    "hybrid retrieval fuses bm25 and dense rankings".split(),
    "rerankers rescore the top documents".split(),
    "chunking splits long documents into passages".split(),
]


# %% nbgrader={"grade": false, "grade_id": "bm25_scores", "locked": false, "schema_version": 3, "solution": true, "task": false}
def bm25_scores(query: list[str], corpus: list[list[str]], k1: float = 1.5, b: float = 0.75) -> list[float]:
    """Okapi BM25 score of every document in ``corpus`` (token lists) for ``query`` (tokens)."""
    ### BEGIN SOLUTION
    n_docs = len(corpus)
    avgdl = sum(len(d) for d in corpus) / n_docs
    doc_freq: dict[str, int] = {}
    for doc in corpus:
        for term in set(doc):
            doc_freq[term] = doc_freq.get(term, 0) + 1
    scores = []
    for doc in corpus:
        norm = k1 * (1 - b + b * len(doc) / avgdl)
        score = 0.0
        for term in query:
            tf = doc.count(term)
            if tf == 0:
                continue
            n = doc_freq[term]
            idf = math.log((n_docs - n + 0.5) / (n + 0.5))
            score += idf * tf * (k1 + 1) / (tf + norm)
        scores.append(score)
    return scores
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "bm25_scores_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def _bm25_without_length_norm(query, corpus, k1=1.5):
    n = len(corpus)
    out = []
    for doc in corpus:
        s = 0.0
        for t in query:
            tf, df = doc.count(t), sum(t in d for d in corpus)
            if tf:
                s += math.log((n - df + 0.5) / (df + 0.5)) * tf * (k1 + 1) / (tf + k1)
        out.append(s)
    return out


toy_query = ["bm25", "rankings"]
got = bm25_scores(toy_query, toy_corpus)
check_equal(len(got), 5, "number of scores (one per document)")
check_close(got, [0.3365, 0.0, 1.3350, 0.0, 0.0], "BM25 scores of the toy corpus for ['bm25', 'rankings']",
            atol=1e-3, hints={"no length normalisation (b treated as 0)": _bm25_without_length_norm(toy_query, toy_corpus),
                              "log base 10 instead of the natural log": [0.3365 / math.log(10), 0.0, 1.3350 / math.log(10), 0.0, 0.0]})
### BEGIN HIDDEN TESTS
check_close(bm25_scores(toy_query, toy_corpus, k1=1.2, b=0.0), lr.BM25(toy_corpus, k1=1.2, b=0.0).get_scores(toy_query),
            "BM25 with k1=1.2, b=0 against llmcourse.retrieval.BM25", atol=1e-9)
rng_ = random.Random(5)
vocab_ = [f"w{i}" for i in range(60)]
for trial in range(5):
    corpus_ = [[rng_.choice(vocab_) for _ in range(rng_.randint(3, 15))] for _ in range(30)]
    reference_ = lr.BM25(corpus_, k1=1.3 + 0.2 * trial, b=0.2 * trial)
    rare = [t for t in vocab_ if 0 < sum(t in d for d in corpus_) <= 15]
    query_ = rng_.sample(rare, 3) + [rare[0], "never_seen"]
    check_close(bm25_scores(query_, corpus_, k1=1.3 + 0.2 * trial, b=0.2 * trial), reference_.get_scores(query_),
                f"BM25 on a random corpus (trial {trial}, repeated and unseen query words) against llmcourse", atol=1e-9)
### END HIDDEN TESTS

# %% [markdown]
# The library's `BM25` keeps an inverted index (for every word, the documents that contain it
# and the counts), so a query touches only the postings of its own words instead of every
# document. Here it is on the course pages, tokenised by `simple_tokenize` (lowercase runs of
# letters and digits, no stemming):

# %%
bm25 = lr.BM25.from_texts(chunk_texts)
print(bm25)
for hit in bm25.search("What happens if I edit a test cell?", k=3):
    print(f"{hit.score:6.2f}  {chunks[hit.index].doc_id:28s} {chunks[hit.index].text[:70]!r}")

# %% [markdown]
# BM25 is fast, needs no training and is hard to beat on queries that share words with the
# answer: names, error messages, identifiers such as `LLMCOURSE_DATA_MIRROR`. It fails on
# **vocabulary mismatch**: a question that paraphrases its answer shares few words with it, and
# without stemming even "eat" and "eats" are different words.
#
# ## 4. Dense retrieval
#
# A **bi-encoder** maps the query and every chunk to vectors with the same sentence encoder and
# scores a pair by cosine similarity {cite}`karpukhin2020dpr,reimers2019sbert`. Here the
# encoder is all-MiniLM-L6-v2 {cite}`wang2020minilm` (chapter 08): 6 layers, 384 dimensions,
# trained on a billion sentence pairs so that paraphrases land close together. Chunks are
# embedded once, offline; a query costs one forward pass plus a matrix product with the
# matrix of chunk vectors. With unit vectors $\hat q$ and $\hat d_i$ the cosine is a dot
# product, so scoring every chunk is one matrix-vector product:
#
# $$ \cos(q, d_i) = \frac{q \cdot d_i}{\lVert q\rVert\,\lVert d_i\rVert} = \hat q \cdot \hat d_i,
#    \qquad \text{scores} = \hat D\,\hat q \in \mathbb{R}^N. $$
#
# The encoder reads at most 256 WordPiece tokens (about 1,000 characters of English): the rest
# of a longer chunk is silently cut off and cannot be found by dense retrieval.
#
# ### Exercise 2: cosine top-k
#
# Write `cosine_top_k(query, docs, k)` for a query vector of shape `(d,)` and document vectors
# `(N, d)` (not necessarily normalised): return `(indices, scores)`, the positions of the `k`
# documents with the highest cosine similarity, best first, as a `(k,)` long tensor, and their
# cosines as a `(k,)` float tensor. Normalise with `F.normalize` (it guards against zero
# vectors); do not loop over documents.

# %% nbgrader={"grade": false, "grade_id": "cosine_top_k", "locked": false, "schema_version": 3, "solution": true, "task": false}
def cosine_top_k(query: torch.Tensor, docs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (k,) and cosine similarities (k,) of the k documents (N, d) closest to query (d,)."""
    ### BEGIN SOLUTION
    scores = F.normalize(docs, dim=1) @ F.normalize(query, dim=0)  # (N,)
    top = scores.topk(k)
    return top.indices, top.values
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "cosine_top_k_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
q_ = torch.tensor([1.0, 0.0, 1.0])
docs_ = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [2.0, 0.0, 2.1], [-1.0, 0.0, -1.0]])
idx_, val_ = cosine_top_k(q_, docs_, 2)
what_ = "indices of the 2 most similar documents, best first"
if [int(i) for i in idx_] == [3, 2]:
    what_ += " (this is the dot-product ranking: document 3 is longer, not closer; normalise both sides)"
check_equal([int(i) for i in idx_], [2, 3], what_)
check_close(val_, [1.0, 0.99970], "their cosine similarities", atol=1e-4)
### BEGIN HIDDEN TESTS
gen_ = torch.Generator().manual_seed(3)
docs_ = torch.randn(200, 16, generator=gen_) * torch.rand(200, 1, generator=gen_) * 10
for trial in range(3):
    q_ = torch.randn(16, generator=gen_)
    index_ = lr.ExactIndex(16, "cosine")
    index_.add(docs_)
    want_ = index_.search(q_[None], 7)
    got_idx, got_val = cosine_top_k(q_, docs_, 7)
    check_equal([int(i) for i in got_idx], want_.ids[0].tolist(), f"top-7 indices on random data (trial {trial}) against ExactIndex")
    check_close(got_val, want_.scores[0], f"top-7 cosines on random data (trial {trial})", atol=1e-5)
check_equal(tuple(cosine_top_k(q_, docs_, 1)[0].shape), (1,), "shape of the indices for k=1")
### END HIDDEN TESTS

# %% [markdown]
# Now with the real encoder. Embedding is the expensive step of the whole pipeline (a forward
# pass of a 22-million-parameter model per chunk), so the demonstrations wrap the encoder in a
# small cache and embed every distinct text once.

# %% tags=["demo"]
class CachedEmbedder:
    """An embedder that remembers what it has encoded (texts -> (N, d) unit vectors)."""

    def __init__(self, embedder: lr.Embedder) -> None:
        self.embedder, self.cache, self.encoded = embedder, {}, 0

    def encode(self, texts: list[str]) -> torch.Tensor:
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if new:
            self.cache.update(zip(new, self.embedder.encode(new), strict=True))
            self.encoded += len(new)
        return torch.stack([self.cache[t] for t in texts])


start = time.perf_counter()
embedder = CachedEmbedder(lr.minilm_embedder())
embedder.encode([q.question for q in questions])  # all questions in one batch
dense = lr.DenseRetriever.from_texts(chunk_texts, embedder)
print(f"embedded {len(chunk_texts)} chunks in {time.perf_counter() - start:.1f} s "
      f"({dense.index.vectors.shape[0]} x {dense.index.vectors.shape[1]} float32)")
top1 = {name: [r.search(q.question, k=1)[0].index for q in questions] for name, r in (("BM25", bm25), ("dense", dense))}
for winner, loser in (("dense", "BM25"), ("BM25", "dense")):
    i = next((i for i in range(len(questions)) if top1[winner][i] in relevant[i] and top1[loser][i] not in relevant[i]), None)
    if i is None:
        continue
    print(f"\nOnly {winner} puts the answer first: {questions[i].question!r}")
    for name in ("BM25", "dense"):
        print(f"  {name:5s} top-1: {chunks[top1[name][i]].text[:100]!r}")
print(f"\nright chunk at rank 1: BM25 {np.mean([t in r for t, r in zip(top1['BM25'], relevant, strict=True)]):.2f}, "
      f"dense {np.mean([t in r for t, r in zip(top1['dense'], relevant, strict=True)]):.2f}")

# %% [markdown]
# Neither retriever dominates: each puts the right chunk first for questions the other gets
# wrong, typically paraphrases for dense retrieval and rare exact terms for BM25.
#
# **Vector indexes.** Scoring every chunk is exact and, for a few hundred chunks, instant. For
# millions of vectors, approximate nearest-neighbour indexes trade a little recall for a lot of
# speed. An **inverted-file index** (IVF) clusters the vectors with k-means into `nlist` lists
# and scans, for each query, only the `nprobe` lists whose centroids are closest; a true
# neighbour that sits in an unscanned list is missed. Graph indexes such as HNSW
# {cite}`malkov2018hnsw` and compressed codes such as product quantization {cite}`jegou2011pq`
# are the other common families. The library's `IVFIndex` shows the trade-off on our chunk
# vectors: recall of the exact top 10 against the fraction of vectors scanned.

# %% tags=["demo"] mystnb={"image": {"alt": "Recall of the exact top-10 neighbours against the fraction of vectors scanned by an IVF index with 16 lists, for nprobe 1, 2, 4, 8 and 16; recall rises towards 1 as more lists are scanned."}}
vectors = dense.index.vectors  # (N, 384), unit rows
query_vectors = embedder.encode([q.question for q in questions])  # (Q, 384), cached
exact = lr.ExactIndex(vectors.shape[1], "cosine")
exact.add(vectors)
ivf = lr.IVFIndex(vectors.shape[1], nlist=16, metric="cosine", seed=0)
ivf.train(vectors)
ivf.add(vectors)
exact_ids = exact.search(query_vectors, 10).ids  # (Q, 10)
probes = [1, 2, 4, 8, 16]
ivf_recall = [lr.knn_recall(ivf.search(query_vectors, 10, nprobe=p).ids, exact_ids) for p in probes]
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot([p / 16 for p in probes], ivf_recall, marker="o")
for p, r in zip(probes, ivf_recall, strict=True):
    ax.annotate(f"nprobe={p}", (p / 16, r), textcoords="offset points", xytext=(4, -12), fontsize=8)
ax.set(xlabel="fraction of lists scanned (nprobe / nlist)", ylabel="recall of exact top-10",
       title="IVF index: speed against recall", ylim=(0, 1.05))
plt.tight_layout()
plt.show()
glue("ivf_recall_1", f"{ivf_recall[0]:.2f}")
glue("ivf_recall_4", f"{ivf_recall[2]:.2f}")

# %% [markdown]
# Scanning one list in sixteen keeps {glue:text}`ivf_recall_1` of the true top 10; four lists
# keep {glue:text}`ivf_recall_4`. Scanning all of them is exact search again.
#
# ## 5. Measuring retrieval
#
# A retriever is judged on questions whose relevant chunks are known. For one question with
# relevant set $R$ and ranking $d_1, d_2, \dots$:
#
# - **recall@k** $= |\{d_1..d_k\} \cap R| \,/\, |R|$: did the answer make it into the $k$
#   passages we hand to the generator? This is the number that matters most for RAG, because
#   the generator never sees what is not retrieved.
# - **precision@k** $= |\{d_1..d_k\} \cap R| \,/\, k$: how much of the context is useful.
# - **reciprocal rank** $= 1/\text{rank of the first relevant chunk}$ (0 if none is
#   retrieved); its mean over questions is the **MRR**. It rewards putting the answer first.
# - **nDCG@k** {cite}`jarvelin2002ndcg`: each relevant chunk at rank $i$ earns
#   $\text{rel}_i / \log_2(i + 1)$ (the discounted cumulative gain, DCG), and the sum is divided
#   by the DCG of the ideal ranking (all relevant chunks first), so nDCG lies in $[0, 1]$. It
#   handles several relevant chunks and graded relevance.
#
# A retriever's *scores* are not a quality measure: a cosine of 0.6 or a BM25 score of 12 says
# nothing about whether the answer was found. Only judged questions do.
#
# ### Exercise 3 (worked numbers): recall@k, reciprocal rank, nDCG@k
#
# Write the three metrics for binary relevance (`relevant` is a set of ids; a ranking is a
# list of ids, best first). `recall_at_k` and `ndcg_at_k` raise `ValueError` when `relevant`
# is empty (they are undefined). `reciprocal_rank` looks at the whole ranking. For
# `ranking = ["d3", "d1", "d7", "d2", "d5"]` and `relevant = {"d1", "d2", "d9"}`:
# recall@5 $= 2/3$, reciprocal rank $= 1/2$, and
# $\text{nDCG@5} = \frac{1/\log_2 3 + 1/\log_2 5}{1 + 1/\log_2 3 + 1/\log_2 4} = 0.4982$
# (the ideal ranking puts all three relevant ids first).

# %% nbgrader={"grade": false, "grade_id": "retrieval_metrics", "locked": false, "schema_version": 3, "solution": true, "task": false}
def recall_at_k(ranking: list, relevant: set, k: int) -> float:
    """Fraction of the relevant ids that appear in the first k of ``ranking``."""
    ### BEGIN SOLUTION
    if not relevant:
        raise ValueError("recall@k is undefined without relevant ids")
    return len(set(ranking[:k]) & set(relevant)) / len(relevant)
    ### END SOLUTION


def reciprocal_rank(ranking: list, relevant: set) -> float:
    """1 / (1-based rank of the first relevant id), or 0.0 if none is in ``ranking``."""
    ### BEGIN SOLUTION
    for rank, doc in enumerate(ranking, start=1):
        if doc in relevant:
            return 1.0 / rank
    return 0.0
    ### END SOLUTION


def ndcg_at_k(ranking: list, relevant: set, k: int) -> float:
    """Normalised discounted cumulative gain of the first k ids, binary relevance."""
    ### BEGIN SOLUTION
    if not relevant:
        raise ValueError("nDCG is undefined without relevant ids")
    dcg = sum(1.0 / math.log2(i + 2) for i, doc in enumerate(ranking[:k]) if doc in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    return dcg / ideal
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "retrieval_metrics_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
ranking_ = ["d3", "d1", "d7", "d2", "d5"]
relevant_ = {"d1", "d2", "d9"}
check_close(recall_at_k(ranking_, relevant_, 5), 2 / 3, "recall@5 of the worked example",
            hints={"divided by k (that is precision@k)": 2 / 5})
check_close(recall_at_k(ranking_, relevant_, 1), 0.0, "recall@1 of the worked example")
check_close(reciprocal_rank(ranking_, relevant_), 0.5, "reciprocal rank of the worked example",
            hints={"0-based rank": 1.0})
check_close(ndcg_at_k(ranking_, relevant_, 5), 0.49819, "nDCG@5 of the worked example",
            hints={"ideal DCG computed from the retrieved relevant ids only, not all of R": 1.06161 / 1.63093,
                   "discount log2(i) with i counted from 1 (log2(1) = 0)": 0.0})
### BEGIN HIDDEN TESTS
check_raises(lambda: recall_at_k(ranking_, set(), 5), ValueError, "recall@k with no relevant ids")
check_raises(lambda: ndcg_at_k(ranking_, set(), 5), ValueError, "nDCG with no relevant ids")
check_close(reciprocal_rank(ranking_, {"d9"}), 0.0, "reciprocal rank when no relevant id is retrieved")
check_close(ndcg_at_k(["a", "b"], {"a"}, 10), 1.0, "nDCG@10 of a perfect ranking shorter than k")
rng_ = random.Random(11)
for trial in range(20):
    ids_ = list(range(30))
    rng_.shuffle(ids_)
    ranking_ = ids_[: rng_.randint(1, 25)]
    relevant_ = set(rng_.sample(range(30), rng_.randint(1, 6)))
    k_ = rng_.randint(1, 12)
    check_close(recall_at_k(ranking_, relevant_, k_), lr.recall_at_k(ranking_, relevant_, k_), f"recall@{k_} on random ranking {trial}")
    check_close(reciprocal_rank(ranking_, relevant_), lr.reciprocal_rank(ranking_, relevant_), f"reciprocal rank on random ranking {trial}")
    check_close(ndcg_at_k(ranking_, relevant_, k_), lr.ndcg_at_k(ranking_, relevant_, k_), f"nDCG@{k_} on random ranking {trial}")
### END HIDDEN TESTS

# %% [markdown]
# ## 6. Hybrid retrieval, MMR and reranking
#
# BM25 and dense retrieval fail on different questions, so combining them helps. Their scores
# cannot simply be added: BM25 is unbounded and depends on the query's length, a cosine lies
# in $[-1, 1]$. **Reciprocal rank fusion** (RRF) {cite}`cormack2009rrf` uses only ranks: a
# chunk at rank $r_j(d)$ (counted from 1) in ranking $j$ gets
#
# $$ \text{RRF}(d) = \sum_{j} \frac{1}{k + r_j(d)}, \qquad k = 60, $$
#
# summed over the rankings that contain it. The constant $k$ keeps the top of each list from
# dominating: with $k = 60$, rank 1 is worth $1/61$ and rank 10 still $1/70$, so a chunk that
# both retrievers rank fairly high beats one that only one of them ranks first.
#
# ### Exercise 4 (worked numbers): reciprocal rank fusion
#
# Write `rrf_fuse(rankings, k=60)`: `rankings` is a list of rankings (lists of ids, best
# first); return a list of `(id, score)` pairs for every id that appears anywhere, sorted by
# score, highest first. For `[["A", "B", "C"], ["B", "D", "A"]]`: B $= 1/62 + 1/61 = 0.032523$,
# A $= 1/61 + 1/63 = 0.032266$, D $= 1/62 = 0.016129$, C $= 1/63 = 0.015873$.

# %% nbgrader={"grade": false, "grade_id": "rrf_fuse", "locked": false, "schema_version": 3, "solution": true, "task": false}
def rrf_fuse(rankings: list[list], k: float = 60) -> list[tuple]:
    """Reciprocal rank fusion of several rankings: [(id, score), ...], best first."""
    ### BEGIN SOLUTION
    scores: dict = {}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, start=1):
            scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda item: -item[1])
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "rrf_fuse_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
fused_ = rrf_fuse([["A", "B", "C"], ["B", "D", "A"]])
check_equal([doc for doc, _ in fused_], ["B", "A", "D", "C"], "order of the fused ranking")
check_close([s for _, s in fused_], [1 / 62 + 1 / 61, 1 / 61 + 1 / 63, 1 / 62, 1 / 63], "fused scores", atol=1e-9,
            hints={"0-based ranks (1/(k + 0) for the first place)": [1 / 61 + 1 / 60, 1 / 60 + 1 / 62, 1 / 61, 1 / 62]})
### BEGIN HIDDEN TESTS
rng_ = random.Random(2)
for trial in range(10):
    runs_ = [rng_.sample(range(40), rng_.randint(1, 20)) for _ in range(rng_.randint(1, 4))]
    k_ = rng_.choice([0, 1, 10, 60])
    got_ = rrf_fuse(runs_, k=k_)
    want_ = dict(lr.reciprocal_rank_fusion(runs_, k=k_))
    check_equal(sorted(doc for doc, _ in got_), sorted(want_), f"ids in the fused ranking (trial {trial})")
    check_close([s for _, s in got_], [want_[doc] for doc, _ in got_], f"fused scores against llmcourse (trial {trial}, k={k_})", atol=1e-12)
    check_equal(all(a[1] >= b[1] for a, b in zip(got_, got_[1:], strict=False)), True, f"scores sorted from highest to lowest (trial {trial})")
### END HIDDEN TESTS

# %% [markdown]
# **MMR.** The top results of a retriever are often near-duplicates (the same paragraph in two
# overlapping chunks). **Maximal marginal relevance** {cite}`carbonell1998mmr` picks results
# one at a time, each maximising $\lambda \cos(q, d) - (1 - \lambda) \max_{s \in S} \cos(d, s)$
# over the already selected set $S$: relevant to the query, but unlike what is already there.
# With $\lambda = 1$ it is plain top-k; lower $\lambda$ trades relevance for coverage
# (`lr.mmr`).
#
# **Reranking.** A first stage must be cheap because it scores the whole collection. A second
# stage can afford a costlier scorer on its top 20 to 100 candidates. The strongest rerankers
# are *cross-encoders*, which read query and passage together in one transformer
# {cite}`nogueira2019passage`; late-interaction models such as ColBERT
# {cite}`khattab2020colbert` sit in between. No cross-encoder weights ship with this course, so
# our reranker is the two-stage pipeline "BM25 finds 20 candidates, MiniLM reorders them"
# (`RerankedRetriever` with `EmbeddingReranker`): the neural model embeds 20 passages per
# question instead of the whole collection.
#
# Here are the four retrievers on the {glue:text}`n_questions` questions, with chunks of at
# most 600 characters:

# %% tags=["demo"] mystnb={"image": {"alt": "Grouped bar chart of recall@1, recall@5, MRR and nDCG@10 for BM25, dense (MiniLM), hybrid (RRF) and BM25 followed by a MiniLM reranker on the course questions."}}
def rankings_of(retriever, k: int = 10) -> list[list[int]]:
    """Top-k chunk positions for every question."""
    return [[hit.index for hit in retriever.search(q.question, k)] for q in questions]


def quality(rankings: list[list[int]], rel: list[set[int]]) -> dict[str, float]:
    m = lr.evaluate_rankings(rankings, rel, ks=(1, 5, 10))
    return {"recall@1": m["recall@1"], "recall@5": m["recall@5"], "MRR": m["mrr"], "nDCG@10": m["ndcg@10"]}


hybrid = lr.HybridRetriever([bm25, dense], candidates=50)
reranked = lr.RerankedRetriever(bm25, lr.EmbeddingReranker(embedder), candidates=20)
retrievers = {"BM25": bm25, "dense (MiniLM)": dense, "hybrid (RRF)": hybrid, "BM25 + reranker": reranked}
runs = {name: rankings_of(r) for name, r in retrievers.items()}
table = {name: quality(rk, relevant) for name, rk in runs.items()}

print(f"{'retriever':18s}" + "".join(f"{m:>10s}" for m in next(iter(table.values()))))
for name, row in table.items():
    print(f"{name:18s}" + "".join(f"{v:10.3f}" for v in row.values()))

fig, ax = plt.subplots(figsize=(8, 3.5))
metrics = list(next(iter(table.values())))
width = 0.2
for j, (name, row) in enumerate(table.items()):
    ax.bar(np.arange(len(metrics)) + (j - 1.5) * width, list(row.values()), width, label=name)
ax.set_xticks(np.arange(len(metrics)), metrics)
ax.set(ylim=(0, 1), ylabel="score", title=f"retrieval quality on {len(questions)} questions (chunks <= {CHUNK_SIZE} chars)")
ax.legend(fontsize=8, loc="lower right")
plt.tight_layout()
plt.show()

hit5 = {name: [bool(set(rk[:5]) & rel) for rk, rel in zip(rk_all, relevant, strict=True)] for name, rk_all in runs.items()}
only_hybrid_vs_bm25 = sum(h and not b for h, b in zip(hit5["hybrid (RRF)"], hit5["BM25"], strict=True))
only_hybrid_vs_dense = sum(h and not d for h, d in zip(hit5["hybrid (RRF)"], hit5["dense (MiniLM)"], strict=True))
stderr = math.sqrt(table["hybrid (RRF)"]["recall@5"] * (1 - table["hybrid (RRF)"]["recall@5"]) / len(questions))
for name, key in (("BM25", "bm25"), ("dense (MiniLM)", "dense"), ("hybrid (RRF)", "hybrid"), ("BM25 + reranker", "rerank")):
    glue(f"{key}_r5", f"{table[name]['recall@5']:.2f}")
    glue(f"{key}_mrr", f"{table[name]['MRR']:.2f}")
glue("hybrid_gain_bm25", f"{only_hybrid_vs_bm25}")
glue("hybrid_gain_dense", f"{only_hybrid_vs_dense}")
glue("r5_stderr", f"{stderr:.2f}")
glue("one_question", f"{1 / len(questions):.3f}")

# %% [markdown]
# Recall@5 is {glue:text}`bm25_r5` for BM25, {glue:text}`dense_r5` for dense retrieval and
# {glue:text}`hybrid_r5` for the hybrid, whose top 5 holds the answer for
# {glue:text}`hybrid_gain_bm25` questions that BM25 misses and {glue:text}`hybrid_gain_dense`
# that dense retrieval misses. Reordering BM25's top 20 with MiniLM lifts recall@5 to
# {glue:text}`rerank_r5` and the MRR from {glue:text}`bm25_mrr` to {glue:text}`rerank_mrr`,
# while embedding only 20 candidates per question. It can only reorder what BM25 found, though,
# and a bi-encoder that reads query and passage separately is a weaker judge than a
# cross-encoder that reads them together.
#
# Keep the sample size in mind: one question is {glue:text}`one_question` of recall, and the
# standard error of a recall@5 near {glue:text}`hybrid_r5` over this many questions is about
# {glue:text}`r5_stderr`. Differences of a few points between retrievers are within noise;
# real evaluations use hundreds to thousands of judged questions.
#
# **MMR in practice.** What does diversity cost? We rerank the 20 best dense results of every
# question with `lr.mmr` and count how many different pages the top 5 come from ($\lambda = 1$
# is the plain cosine ranking).

# %% tags=["demo"]
for lam in (1.0, 0.7, 0.5):
    tops = []
    for i, q in enumerate(questions):
        candidates = [hit.index for hit in dense.search(q.question, 20)]
        tops.append([candidates[j] for j in lr.mmr(query_vectors[i], vectors[candidates], k=5, lambda_=lam)])
    pages_per_query = np.mean([len({chunks[j].doc_id for j in top}) for top in tops])
    recall5 = np.mean([lr.recall_at_k(top, rel, 5) for top, rel in zip(tops, relevant, strict=True)])
    print(f"lambda = {lam:.1f}: distinct pages in the top 5 {pages_per_query:.2f}, recall@5 {recall5:.3f}")
    glue(f"mmr_pages_{int(10 * lam)}", f"{pages_per_query:.1f}")
    glue(f"mmr_r5_{int(10 * lam)}", f"{recall5:.2f}")

# %% [markdown]
# The plain top 5 come from {glue:text}`mmr_pages_10` pages on average, with recall@5
# {glue:text}`mmr_r5_10`. MMR with $\lambda = 0.7$ spreads them over {glue:text}`mmr_pages_7`
# pages at recall {glue:text}`mmr_r5_7`; $\lambda = 0.5$ over {glue:text}`mmr_pages_5` pages,
# but recall falls to {glue:text}`mmr_r5_5`: pushed hard, diversity evicts the relevant chunk in
# favour of merely different ones. Diversity pays when a question needs facts from several
# places or the collection holds near-duplicates; for questions with one answering passage,
# like ours, keep $\lambda$ high.
#
# **Chunk size.** Smaller chunks are more precise (a chunk about one thing embeds as that
# thing) but an answer may be cut in half, and a heading far above the passage is lost. Larger
# chunks keep context together but blur their embedding, and whatever lies past the encoder's
# 256 tokens is invisible to dense retrieval. They also cost the generator: five 1,200-character
# chunks are 6,000 characters of prompt. We repeat the evaluation with Markdown chunks of at
# most 300, 600 and 1,200 characters.

# %% tags=["demo"] mystnb={"image": {"alt": "Left: recall@5 of BM25, dense and hybrid retrieval for chunks of at most 300, 600 and 1200 characters. Right: characters of context handed to the generator with the top 5 hybrid chunks, growing with chunk size."}}
sizes = [300, 600, 1200]
sweep = {}
for size in sizes:
    ch = chunks if size == CHUNK_SIZE else lr.chunk_corpus(pages, lr.chunk_markdown, max_size=size)
    texts = [c.with_context() for c in ch]
    rel = [relevant_chunk_ids(ch, pages, q) for q in questions]
    b = lr.BM25.from_texts(texts)
    d = lr.DenseRetriever.from_texts(texts, embedder)
    h = lr.HybridRetriever([b, d], candidates=50)
    row = {"chunks": len(ch)}
    for name, r in (("BM25", b), ("dense", d), ("hybrid", h)):
        rk = rankings_of(r)
        row[name] = quality(rk, rel)
        if name == "hybrid":
            row["context chars @5"] = float(np.mean([sum(len(ch[i].text) for i in top[:5]) for top in rk]))
    sweep[size] = row

print(f"{'max size':>8s} {'chunks':>7s} {'R@5 BM25':>9s} {'R@5 dense':>10s} {'R@5 hybrid':>11s} {'MRR hybrid':>11s} {'context @5':>11s}")
for size, row in sweep.items():
    print(f"{size:8d} {row['chunks']:7d} {row['BM25']['recall@5']:9.3f} {row['dense']['recall@5']:10.3f} "
          f"{row['hybrid']['recall@5']:11.3f} {row['hybrid']['MRR']:11.3f} {row['context chars @5']:11.0f}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.3))
for name in ("BM25", "dense", "hybrid"):
    ax1.plot(sizes, [sweep[s][name]["recall@5"] for s in sizes], marker="o", label=name)
ax1.set(xscale="log", xticks=sizes, xticklabels=[str(s) for s in sizes], xlabel="max chunk size (characters)",
        ylabel="recall@5", title="finding the answer", ylim=(0.5, 1.0))
ax1.legend(fontsize=8)
ax2.bar([str(s) for s in sizes], [sweep[s]["context chars @5"] for s in sizes], color="gray")
ax2.set(xlabel="max chunk size (characters)", ylabel="characters", title="context handed to the generator (top 5)")
plt.tight_layout()
plt.show()
best_size = max(sizes, key=lambda s: sweep[s]["hybrid"]["recall@5"])
glue("best_size", f"{best_size}")
glue("ctx_300", f"{sweep[300]['context chars @5']:,.0f}")
glue("ctx_1200", f"{sweep[1200]['context chars @5']:,.0f}")
glue("dense_r5_1200", f"{sweep[1200]['dense']['recall@5']:.2f}")
glue("dense_r5_600", f"{sweep[600]['dense']['recall@5']:.2f}")

# %% [markdown]
# On these questions the hybrid's recall@5 is highest with chunks of at most
# {glue:text}`best_size` characters. Dense retrieval drops from {glue:text}`dense_r5_600` to
# {glue:text}`dense_r5_1200` when chunks grow from 600 to 1,200 characters, while the context
# handed to the generator grows from {glue:text}`ctx_300` to {glue:text}`ctx_1200` characters
# between the smallest and the largest chunks. There is no universal best size: it depends on
# the documents, the questions, the encoder's window and the generator's budget, so measure it
# on questions like yours.
#
# ## 7. Embedding quantization
#
# An index of $n$ vectors of $d$ float32 numbers takes $4nd$ bytes: 100 million passages
# embedded in 768 dimensions need 307 GB. Two tricks cut that
# {cite}`shakir2024embeddingquant`:
#
# - **int8 (scalar) quantization**: map each dimension's range, calibrated on sample
#   embeddings, linearly onto the 256 levels $-128..127$: one byte per dimension, 4 times
#   smaller, with a small loss.
# - **Binary quantization**: keep only the sign of each dimension, 1 if it is positive and 0
#   otherwise, and pack eight dimensions into a byte: 32 times smaller. Two codes are compared
#   by their **Hamming distance**, the number of differing bits, which a CPU computes with an
#   XOR and a population count. For unit vectors, the fraction of differing bits estimates the
#   angle between them, so a small Hamming distance means a high cosine.
#
# The loss is real (the magnitudes are gone), so binary search is usually followed by
# **rescoring**: fetch a few times more candidates than needed by Hamming distance, then rank
# them by the dot product of the float query with their stored (int8 or float) vectors.
#
# ### Exercise 5 (worked example): binary codes and Hamming distance
#
# Write `binarize_embedding(x)`: a 0/1 `torch.uint8` tensor of the same shape as the float
# tensor `x`, 1 where the value is strictly positive. Then write `hamming(a, b)`: the number of
# positions where two 0/1 tensors differ, counted along the last dimension (so two `(8,)`
# codes give a 0-dim tensor, `(N, 8)` and `(N, 8)` give `(N,)`). The vector
# `[12, 1, -100, 0.003, -0.001, 128, -1000, 0.0001]` becomes `[1, 1, 0, 1, 0, 1, 0, 1]`, and the
# codes `11010101` and `11001101` are at Hamming distance 2.

# %% nbgrader={"grade": false, "grade_id": "binary_codes", "locked": false, "schema_version": 3, "solution": true, "task": false}
def binarize_embedding(x: torch.Tensor) -> torch.Tensor:
    """1 where x > 0, else 0: same shape as x, dtype torch.uint8."""
    ### BEGIN SOLUTION
    return (x > 0).to(torch.uint8)
    ### END SOLUTION


def hamming(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Number of differing 0/1 entries of a and b along the last dimension."""
    ### BEGIN SOLUTION
    return (a != b).sum(dim=-1)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "binary_codes_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
bits_ = binarize_embedding(torch.tensor([12, 1, -100, 0.003, -0.001, 128, -1000, 0.0001]))
check_equal(bits_.tolist(), [1, 1, 0, 1, 0, 1, 0, 1], "binary code of [12, 1, -100, 0.003, -0.001, 128, -1000, 0.0001]")
check_equal(bits_.dtype, torch.uint8, "dtype of the binary code")
code_a = torch.tensor([int(c) for c in "11010101"], dtype=torch.uint8)
code_b = torch.tensor([int(c) for c in "11001101"], dtype=torch.uint8)
check_equal(int(hamming(code_a, code_b)), 2, "Hamming distance of 11010101 and 11001101")
### BEGIN HIDDEN TESTS
check_equal(binarize_embedding(torch.tensor([0.0, -0.0, 1e-30, -1e-30])).tolist(), [0, 0, 1, 0], "zero maps to 0, tiny positive to 1")
gen_ = torch.Generator().manual_seed(4)
emb_ = torch.randn(6, 5, 64, generator=gen_)
check_equal(binarize_embedding(emb_).tolist(), lr.binarize(emb_).tolist(), "binary codes of a (6, 5, 64) tensor against llmcourse")
a_, b_ = torch.randn(10, 64, generator=gen_), torch.randn(10, 64, generator=gen_)
want_ = lr.hamming_distance(lr.pack_bits(lr.binarize(a_)), lr.pack_bits(lr.binarize(b_))).diagonal()
got_ = hamming(binarize_embedding(a_), binarize_embedding(b_))
check_equal(tuple(got_.shape), (10,), "shape of the distances of 10 pairs of codes")
check_equal(got_.tolist(), want_.tolist(), "Hamming distances of 10 random pairs against llmcourse (packed, popcount)")
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 6 (worked numbers): memory of one embedding
#
# Write `embedding_memory(dim, precision)`: the bytes needed to store one `dim`-dimensional
# embedding in `"float32"` (4 bytes per number), `"float16"` (2), `"int8"` (1) or `"binary"`
# (1 bit per dimension, rounded up to whole bytes). Raise `ValueError` for any other precision.
# A 768-dimensional embedding takes 3,072 bytes in float32, 768 in int8 and 96 in binary.

# %% nbgrader={"grade": false, "grade_id": "embedding_memory", "locked": false, "schema_version": 3, "solution": true, "task": false}
def embedding_memory(dim: int, precision: str) -> int:
    """Bytes to store one embedding of ``dim`` numbers at ``precision``."""
    ### BEGIN SOLUTION
    if precision == "binary":
        return (dim + 7) // 8
    per_dim = {"float32": 4, "float16": 2, "int8": 1}
    if precision not in per_dim:
        raise ValueError(f"unknown precision {precision!r}; expected float32, float16, int8 or binary")
    return dim * per_dim[precision]
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "embedding_memory_test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
check_equal(embedding_memory(768, "float32"), 3072, "bytes of a 768-dim float32 embedding")
check_equal(embedding_memory(768, "int8"), 768, "bytes of a 768-dim int8 embedding")
check_equal(embedding_memory(768, "binary"), 96, "bytes of a 768-dim binary embedding"
            if embedding_memory(768, "binary") != 768 else "bytes of a 768-dim binary embedding (1 bit per dimension, not 1 byte)")
### BEGIN HIDDEN TESTS
for dim_ in (1, 7, 8, 100, 384, 1536):
    for p_ in ("float32", "float16", "int8", "binary"):
        check_equal(embedding_memory(dim_, p_), lr.embedding_bytes(dim_, p_), f"bytes of a {dim_}-dim {p_} embedding")
check_raises(lambda: embedding_memory(768, "int4"), ValueError, "an unknown precision")
### END HIDDEN TESTS

# %% [markdown]
# The library's `BinaryIndex` packs the bits (`pack_bits`: eight dimensions per byte) and
# computes Hamming distances on 64-bit words. How much retrieval quality survives on our
# questions, with the 384-dimensional MiniLM vectors of the 600-character chunks?

# %% tags=["demo"]
dim = vectors.shape[1]
quantizer = lr.Int8Quantizer().fit(vectors)
int8_index = lr.ExactIndex(dim, "ip")
int8_index.add(quantizer.dequantize(quantizer.quantize(vectors)))
variants = {"float32, exact": (exact, 4 * dim), "int8, exact": (int8_index, dim)}
for label, rescore in (("binary, Hamming only", None), ("binary + float rescoring", "float")):
    index = lr.BinaryIndex(dim, rescore=rescore, rescore_multiplier=4)
    index.add(vectors)
    variants[label] = (index, lr.embedding_bytes(dim, "binary"))
print(f"{'index':26s} {'bytes/vector':>12s} {'recall@5':>9s} {'MRR':>6s}   (dense retrieval, {len(questions)} questions)")
quant_r5 = {}
for label, (index, nbytes) in variants.items():
    ids = index.search(query_vectors, 10).ids.tolist()
    row = quality(ids, relevant)
    quant_r5[label] = row["recall@5"]
    print(f"{label:26s} {nbytes:12d} {row['recall@5']:9.3f} {row['MRR']:6.3f}")
footprint = lr.memory_footprint(100_000_000, 768)
glue("q_float_r5", f"{quant_r5['float32, exact']:.2f}")
glue("q_int8_r5", f"{quant_r5['int8, exact']:.2f}")
glue("q_bin_r5", f"{quant_r5['binary, Hamming only']:.2f}")
glue("q_rescore_r5", f"{quant_r5['binary + float rescoring']:.2f}")
glue("gb_float", f"{footprint['float32']['bytes'] / 1e9:.0f}")
glue("gb_binary", f"{footprint['binary']['bytes'] / 1e9:.1f}")

# %% [markdown]
# Dense recall@5 is {glue:text}`q_float_r5` with float32 vectors, {glue:text}`q_int8_r5` with
# int8, {glue:text}`q_bin_r5` with 48-byte binary codes alone and {glue:text}`q_rescore_r5`
# when the Hamming candidates are rescored. At scale the saving is what matters: 100 million
# 768-dimensional vectors take {glue:text}`gb_float` GB in float32 and
# {glue:text}`gb_binary` GB as bits, small enough for the RAM of one machine, with the float
# vectors left on disk and read only for the few candidates being rescored.

# %% [markdown]
# ## 8. Generation: closed-book against retrieval-augmented
#
# Retrieval is only half of RAG. To see what it does to *answers*, we need a generator and
# questions whose answers it cannot know from pretraining. The course's GPT of chapter 07 was
# pretrained on Shakespeare, so we invent the facts: creatures with made-up names, colours,
# home towns and foods (`llmcourse.datasets.fact_cards`). Every fact is one short card, and the
# knowledge base is the set of cards:
#
# ```text
# The zorblat is teal.             Q: What colour is the zorblat?   A: teal
# The zorblat lives in Varnholt.   Q: Where does the zorblat live?  A: Varnholt
# The zorblat eats figs.           Q: What does the zorblat eat?    A: figs
# ```
#
# **The reader.** A character-level model pretrained on plays does not answer questions, so it
# was fine-tuned (with the script `configs/train_rag_reader.py`, which uses the library's SFT
# batches with the loss on the answer only, chapter 09, and the course `Trainer`) on prompts of
# the form `"<cards>\nQ: <question>\nA: "` followed by the answer and a newline. Its training
# questions are about a *different* set of creatures, and most prompts hold the answering card
# plus a distractor card, so what it learned is a skill, reading the right card, not the facts
# we test. A tenth of its training prompts have no card at all, so a prompt without context is
# not new to it either. Prompts of two cards and a question fit easily in its context window of
# {glue:text}`reader_block` characters.
#
# We evaluate it on questions about creatures it has never seen: closed-book (no context), with
# the cards retrieved by BM25, dense and hybrid retrieval over all the cards, and with the right
# card handed to it (the "oracle", an upper bound that isolates the reader from the
# retriever). An answer counts when it matches exactly. We also record the model's
# **confidence**: the geometric mean of the probabilities of the characters it generated.

# %% tags=["demo"]
from llmcourse.data.download import DataUnavailableError
from llmcourse.generation import generate
from llmcourse.hub import load_pretrained
from llmcourse.train import CheckpointError

try:
    reader, char_tokenizer = load_pretrained("gpt-shakespeare-char-reader")
except (DataUnavailableError, CheckpointError, KeyError) as err:
    reader = None
    print(f"The reader checkpoint is not available ({err}); the generation demos are skipped.")
else:
    print(f"reader: {reader.num_parameters():,} parameters, context {reader.config.block_size} characters")
    glue("reader_block", f"{reader.config.block_size}")

test_world = reader_worlds()[2][:30]  # creatures the reader never saw
cards = fact_cards(test_world)
card_texts = [c.text for c in cards]
fact_qs = fact_questions(test_world)
gold_card = {(c.creature, c.relation): i for i, c in enumerate(cards)}
print(f"{len(test_world)} creatures, {len(cards)} cards, {len(fact_qs)} questions; e.g. {card_texts[:3]}")


@torch.no_grad()
def read_batch(prompts: list[str], max_new_tokens: int = 12) -> list[tuple[str, float]]:
    """Greedy answers to prompts of equal length, decoded together, each with its confidence:
    the geometric mean of the probabilities of the generated characters (newline included)."""
    ids = torch.tensor([char_tokenizer.encode(p) for p in prompts])  # (B, n)
    n = ids.shape[1]
    seq = generate(reader, ids, max_new_tokens, temperature=0.0, stop_sequences=[char_tokenizer.encode("\n")])
    new = seq[:, n:]  # (B, m) generated ids; finished rows are padded after their newline
    logits = reader(seq[:, :-1]).logits[:, n - 1:]  # (B, m, V): the logits that chose them
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, new[..., None]).squeeze(-1)  # (B, m)
    out = []
    for b in range(len(prompts)):
        answer = char_tokenizer.decode(new[b].tolist()).split("\n")[0]
        used = min(len(answer) + 1, new.shape[1])  # the answer's characters and its newline
        out.append((answer, float(logp[b, :used].mean().exp())))
    return out


def read_all(prompts: list[str]) -> list[tuple[str, float]]:
    """:func:`read_batch` over any prompts, grouped by length; answers in the input order."""
    by_length: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault(len(char_tokenizer.encode(prompt)), []).append(i)
    out: list[tuple[str, float]] = [("", 0.0)] * len(prompts)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small decodes fastest on one thread
    try:
        for rows in by_length.values():
            for i, result in zip(rows, read_batch([prompts[i] for i in rows]), strict=True):
                out[i] = result
    finally:
        torch.set_num_threads(threads)
    return out

# %% tags=["demo"] mystnb={"image": {"alt": "Left: exact-match accuracy of the reader closed-book, with BM25, dense and hybrid retrieval (top 1 and top 2), and with the right card; bars for accuracy and markers for how often the right card was in the context. Right: histogram of the reader's confidence for right answers, for wrong answers with retrieved context, and for closed-book guesses; right answers sit near 1, wrong ones spread from 0.3 to 1."}}
if reader is not None:
    start = time.perf_counter()
    card_bm25 = lr.BM25.from_texts(card_texts)
    card_dense = lr.DenseRetriever.from_texts(card_texts, embedder)
    card_hybrid = lr.HybridRetriever([card_bm25, card_dense], candidates=20)
    embedder.encode([q.question for q in fact_qs])

    def top(retriever, k):
        return lambda q: [hit.index for hit in retriever.search(q.question, k)]

    conditions = {
        "closed-book": lambda q: [],
        "BM25 top-1": top(card_bm25, 1),
        "dense top-1": top(card_dense, 1),
        "hybrid top-1": top(card_hybrid, 1),
        "hybrid top-2": top(card_hybrid, 2),
        "right card (oracle)": lambda q: [gold_card[(q.creature, q.relation)]],
    }
    results = {}
    for name, retrieve in conditions.items():
        contexts = [retrieve(q) for q in fact_qs]
        answers = read_all([reader_prompt([card_texts[i] for i in ctx], q.question) for q, ctx in zip(fact_qs, contexts, strict=True)])
        results[name] = [
            {"q": q, "context": ctx, "answer": answer, "confidence": confidence,
             "correct": answer == q.answer, "hit": gold_card[(q.creature, q.relation)] in ctx}
            for q, ctx, (answer, confidence) in zip(fact_qs, contexts, answers, strict=True)
        ]
    print(f"{len(conditions) * len(fact_qs)} answers generated in {time.perf_counter() - start:.1f} s\n")

    print(f"{'condition':20s} {'right card in context':>22s} {'accuracy':>9s} {'mean confidence':>16s}")
    summary = {}
    for name, rows in results.items():
        acc = float(np.mean([r["correct"] for r in rows]))
        hit = float(np.mean([r["hit"] for r in rows]))
        summary[name] = (acc, hit)
        hit_text = "-" if name == "closed-book" else f"{hit:.2f}"
        print(f"{name:20s} {hit_text:>22s} {acc:9.2f} {np.mean([r['confidence'] for r in rows]):16.2f}")

    retrieved = [r for name, rows in results.items() if name not in ("closed-book", "right card (oracle)") for r in rows]
    right = [r["confidence"] for r in retrieved if r["correct"]]
    wrong = [r["confidence"] for r in retrieved if not r["correct"]]
    guessed = [r["confidence"] for r in results["closed-book"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1.4, 1]})
    names = list(summary)
    ax1.bar(range(len(names)), [summary[n][0] for n in names], color="tab:blue", label="accuracy")
    ax1.plot(range(1, len(names)), [summary[n][1] for n in names[1:]], "k_", markersize=22, mew=2,
             label="right card in context")
    ax1.set_xticks(range(len(names)), [n.replace(" ", "\n", 1) for n in names], fontsize=8)
    ax1.set(ylim=(0, 1.05), ylabel="fraction of questions", title="answers about unseen creatures")
    ax1.legend(fontsize=8, loc="upper left")
    bins = np.linspace(0, 1, 21)
    ax2.hist([right, wrong, guessed], bins, label=["right (retrieved context)", "wrong (retrieved context)", "closed-book"])
    ax2.set(xlabel="confidence (geometric-mean character probability)", ylabel="answers", title="how sure was it?")
    ax2.legend(fontsize=8, loc="upper left")
    plt.tight_layout()
    plt.show()

    best = max((n for n in names if n not in ("closed-book", "right card (oracle)")), key=lambda n: summary[n][0])
    glue("acc_closed", f"{summary['closed-book'][0]:.0%}")
    glue("acc_oracle", f"{summary['right card (oracle)'][0]:.0%}")
    glue("best_rag", best)
    glue("acc_best_rag", f"{summary[best][0]:.0%}")
    glue("rag_gain", f"{100 * (summary[best][0] - summary['closed-book'][0]):.0f}")
    for name, key in (("BM25 top-1", "bm25"), ("dense top-1", "dense"), ("hybrid top-1", "hybrid1"), ("hybrid top-2", "hybrid2")):
        glue(f"acc_{key}", f"{summary[name][0]:.0%}")
        glue(f"hit_{key}", f"{summary[name][1]:.0%}")
    glue("conf_right", f"{np.median(right):.2f}")
    glue("conf_wrong", f"{np.median(wrong):.2f}" if wrong else "n/a")
    glue("conf_closed", f"{np.median(guessed):.2f}")
    glue("n_wrong_retrieved", f"{len(wrong)}")
    glue("wrong_confident", f"{np.mean([c > 0.8 for c in wrong]):.0%}" if wrong else "n/a")
else:
    print("skipped: no reader model")

# %% [markdown]
# Closed-book, the reader gets {glue:text}`acc_closed` of the answers right: it has never seen
# these creatures, and what it produces is a guess in the right format (a colour, a food, a
# capitalised made-up town). With the right card in its prompt it answers
# {glue:text}`acc_oracle` correctly: it can read. With retrieval the best setting
# ({glue:text}`best_rag`) reaches {glue:text}`acc_best_rag`, a gain of {glue:text}`rag_gain`
# percentage points over closed-book, and accuracy follows the retriever. The right card is
# the top result of BM25 for only {glue:text}`hit_bm25` of the questions (accuracy
# {glue:text}`acc_bm25`) and of dense retrieval for {glue:text}`hit_dense` (accuracy
# {glue:text}`acc_dense`). The generator cannot be better than what it is given.
#
# **Why BM25 fails here.** "What does the zorblat eat?" shares *the* and *zorblat* with all
# three zorblat cards, and *eat* with none of them: the card says *eats*, and BM25 does not
# stem. The three cards tie on the creature's name, and length normalisation favours the
# shortest, usually the colour card. Dense retrieval knows that "eat" and "eats" mean the same.
# Fusing the two does not always help: the hybrid's top card is right for
# {glue:text}`hit_hybrid1` of the questions, because BM25 is confidently wrong on every "eat" and
# "live" question and pulls its wrong card up; with the top *two* cards the right one is almost
# always in the prompt ({glue:text}`hit_hybrid2`) and the reader picks it out.
#
# **A wrong card and no answer.** When the retrieved card is about the right creature but holds
# another fact, the reader does not say "the card does not tell": it was never taught to. It
# guesses in the right format, as it does closed-book. Its confidence is lower on these guesses
# (median {glue:text}`conf_wrong` over the {glue:text}`n_wrong_retrieved` wrong answers given
# with retrieved context, against {glue:text}`conf_right` for right answers and
# {glue:text}`conf_closed` for closed-book guesses), which a system could use to flag doubtful
# answers, but it is not a reliable signal: {glue:text}`wrong_confident` of these wrong answers
# come with a confidence above 0.8. Some of them:

# %% tags=["demo"]
if reader is not None:
    shown = 0
    for r in results["BM25 top-1"]:
        if not r["hit"] and not r["correct"] and shown < 4:
            print(f"{r['q'].question}\n    retrieved: {' '.join(card_texts[i] for i in r['context'])}\n"
                  f"    answer: {r['answer']!r} (confidence {r['confidence']:.2f}); true answer: {r['q'].answer!r}")
            shown += 1

# %% [markdown]
# The worst case is a passage that *looks* right: a card with the right kind of fact about the
# wrong creature, which is what a retriever returns when names are similar or when the right
# card is missing from the collection. To measure it, we hand the reader, for every question,
# the card about *another* creature and the *same* relation that dense retrieval ranks highest,
# and count how often the reader repeats that card's fact as its answer.

# %% tags=["demo"]
if reader is not None:
    near_miss = []
    for q in fact_qs:
        ranked = card_dense.search(q.question, k=len(cards))
        near_miss.append(next(h.index for h in ranked if cards[h.index].relation == q.relation
                              and cards[h.index].creature != q.creature))
    answers = read_all([reader_prompt([card_texts[i]], q.question) for q, i in zip(fact_qs, near_miss, strict=True)])
    copied = [answer == test_world[cards[i].creature].fact(q.relation)
              for q, i, (answer, _) in zip(fact_qs, near_miss, answers, strict=True)]
    copy_conf = [conf for (_, conf), c in zip(answers, copied, strict=True) if c]
    for q, i, (answer, conf) in list(zip(fact_qs, near_miss, answers, strict=True))[:3]:
        print(f"{q.question}\n    given: {card_texts[i]}\n    answer: {answer!r} (confidence {conf:.2f}); true answer: {q.answer!r}")
    print(f"\nanswers copied from the wrong creature's card: {np.mean(copied):.0%}, "
          f"median confidence {np.median(copy_conf) if copy_conf else float('nan'):.2f}")
    glue("copy_rate", f"{np.mean(copied):.0%}")
    glue("copy_conf", f"{np.median(copy_conf):.2f}" if copy_conf else "n/a")

# %% [markdown]
# The reader repeats the wrong creature's fact in {glue:text}`copy_rate` of the cases, with a
# median confidence of {glue:text}`copy_conf`: a fluent, confident answer, grounded in a real
# passage, and wrong. This is the failure RAG adds to a language model's own hallucinations:
# the answer is only as good as the passage, and the reader cannot tell.
#
# Better retrieval is the first fix. The others attack the reader: train it with distractor and
# even wrong passages so that it learns to ignore them (RAFT {cite}`zhang2024raft`), let it
# abstain when no passage supports an answer, have it cite the passage it used so a user can
# check, or put a separate evaluator between retriever and generator that grades the retrieved
# documents and triggers a new search when they look wrong (Corrective RAG
# {cite}`yan2024crag`).
#
# ```{admonition} Common misconceptions
# :class: warning
#
# - **"RAG generates an answer, then retrieves documents to check or complete it."** The order
#   is the other way round: the retriever runs first, on the question, and the generator
#   produces its answer *conditioned on* the retrieved passages placed in its input
#   {cite}`lewis2020rag`. Iterative variants retrieve several times, but every piece of the
#   answer is generated after, and from, what was retrieved before it.
# - **"RAG eliminates hallucination."** It moves the problem to the retriever. When the right
#   passage is missing, a model trained to use its context copies whatever is there, and with
#   the same confidence as a right answer (section 8). Retrieval quality bounds answer quality;
#   measure both.
# - **"CRAG's retrieval evaluator is a tiny 7M-parameter T5."** The evaluator of Corrective RAG
#   is a fine-tuned T5-large, about 770 million parameters {cite}`yan2024crag`. It is
#   lightweight only next to the LLM that generates the answer.
# - **"The retriever's similarity score tells you retrieval quality."** A cosine of 0.6 or a
#   BM25 score of 12 says nothing about whether the answer was found, and scores of different
#   retrievers are not comparable. Retrieval quality needs questions with known relevant
#   passages and rank metrics: recall@k (is the answer in what the generator sees?), MRR (how
#   high is the first relevant passage?), nDCG (graded, several relevant passages).
# - **"Dense retrieval makes BM25 obsolete."** BM25 wins on exact names, identifiers and rare
#   terms, dense retrieval on paraphrases; on our questions the hybrid of the two is better than
#   either. Check the failure cases of each before choosing.
# - **"Binary embeddings keep 96% of the quality for free."** Such figures depend on the
#   encoder (some are trained to survive binarisation) and on rescoring the candidates with
#   finer vectors. Binarisation throws away every magnitude; measure the loss on your own
#   questions, as in section 7.
# - **"There is a right chunk size."** It depends on the documents, the questions, the
#   encoder's window (MiniLM reads 256 tokens and ignores the rest) and the generator's
#   context budget. Measure recall@k at a few sizes.
# ```
#
# ## Summary
#
# You computed BM25 by hand, ranked by cosine similarity, wrote recall@k, MRR and nDCG, fused
# rankings with RRF, and turned embeddings into bits compared by Hamming distance. With the
# library's versions you built a retrieval pipeline over the course's own pages, measured BM25,
# dense, hybrid and reranked retrieval and the effect of chunk size, and saw how far
# quantization shrinks an index. Finally you measured what retrieval does for a generator: a
# small GPT that cannot know facts about invented creatures answers them once the right card is
# in its prompt, and answers wrongly, with confidence, when retrieval hands it the wrong one.
# The library's retrieval module (`llmcourse.retrieval`) is what chapter 12's agent uses as its
# search tool.
#
# ## References
#
# {cite}`lewis2020rag` (RAG), {cite}`robertson2009bm25` (BM25), {cite}`karpukhin2020dpr` and
# {cite}`reimers2019sbert` (dense retrieval, sentence embeddings), {cite}`wang2020minilm`
# (MiniLM), {cite}`malkov2018hnsw` and {cite}`jegou2011pq` (approximate nearest neighbours),
# {cite}`jarvelin2002ndcg` (nDCG), {cite}`cormack2009rrf` (reciprocal rank fusion),
# {cite}`carbonell1998mmr` (MMR), {cite}`nogueira2019passage` and {cite}`khattab2020colbert`
# (reranking), {cite}`shakir2024embeddingquant` (embedding quantization),
# {cite}`zhang2024raft` (RAFT) and {cite}`yan2024crag` (Corrective RAG). Full entries are on the
# [bibliography](../book/bibliography.md) page.
