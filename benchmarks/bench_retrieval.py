"""Benchmark retrieval: BM25 against rank-bm25, exact against IVF and binary vector search.

Run from the repository root::

    python benchmarks/bench_retrieval.py                    # defaults, ~1 min on one core
    python benchmarks/bench_retrieval.py --n 200000 --device cuda --threads 8

What it measures (all on the same machine, in the same run, so only ratios matter):

1. BM25 on Tiny Shakespeare paragraphs: index build time and time per query of
   ``llmcourse.retrieval.BM25`` and ``rank_bm25.BM25Okapi``, and the largest score difference.
2. Vector search on synthetic "embedding-like" unit vectors (topics in a low-rank space):
   time per query of ``ExactIndex`` and of ``IVFIndex`` at several ``nprobe``, with the
   IVF's recall@k against exact search; then ``BinaryIndex`` with and without rescoring.

``--threads`` defaults to 1: on a shared machine, multi-threaded BLAS on small matrices is
dominated by thread contention and the numbers become noise.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from llmcourse.data import load_text
from llmcourse.retrieval import BM25, BinaryIndex, ExactIndex, IVFIndex, knn_recall, simple_tokenize


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Best wall time of ``repeat`` runs (seconds) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def load_paragraphs() -> list[str]:
    """Tiny Shakespeare split at blank lines (via llmcourse.data: mirror, cache or download)."""
    return [p for p in load_text("tinyshakespeare").split("\n\n") if p.strip()]


def bench_bm25(n_queries: int, seed: int) -> dict[str, Any]:
    from rank_bm25 import BM25Okapi

    texts = load_paragraphs()
    corpus = [simple_tokenize(t) for t in texts]
    rng = np.random.default_rng(seed)
    queries = []
    for _ in range(n_queries):
        doc = corpus[rng.integers(len(corpus))]
        while not doc:
            doc = corpus[rng.integers(len(corpus))]
        queries.append(list(rng.choice(doc, size=min(len(doc), 4), replace=False)))
    t_ref_build, ref = timed(lambda: BM25Okapi(corpus))
    t_our_build, ours = timed(lambda: BM25(corpus))
    t_ref_q, ref_scores = timed(lambda: [ref.get_scores(q) for q in queries])
    t_our_q, our_scores = timed(lambda: [ours.get_scores(q) for q in queries], repeat=3)
    max_diff = max(float(np.abs(a - b).max()) for a, b in zip(ref_scores, our_scores, strict=True))
    return {
        "n_docs": len(corpus),
        "n_queries": n_queries,
        "build_s": {"rank_bm25": t_ref_build, "llmcourse": t_our_build},
        "ms_per_query": {
            "rank_bm25": 1e3 * t_ref_q / n_queries,
            "llmcourse": 1e3 * t_our_q / n_queries,
        },
        "query_speedup": t_ref_q / t_our_q,
        "max_abs_score_diff": max_diff,
    }


def embedding_like(n: int, args: argparse.Namespace, seed: int) -> torch.Tensor:
    """Synthetic unit vectors shaped like sentence embeddings.

    Each vector picks one of ``topics`` centres in a ``rank``-dim latent space, adds unit
    Gaussian noise there, is mapped to ``dim`` dims by a fixed random basis, and is
    normalised. Topics give the cluster structure an IVF index exploits; ``spread`` sets how
    far apart they are (1.0: nearest-neighbour cosine ~0.7, mean cosine ~0, close to
    MiniLM on short English sentences). Queries come from the same distribution.
    """
    basis = torch.randn(args.rank, args.dim, generator=torch.Generator().manual_seed(12345))
    centres = args.spread * torch.randn(
        args.topics, args.rank, generator=torch.Generator().manual_seed(54321)
    )
    g = torch.Generator().manual_seed(seed)
    z = centres[torch.randint(args.topics, (n,), generator=g)] + torch.randn(
        n, args.rank, generator=g
    )
    return F.normalize(z @ basis, dim=1)


def bench_vectors(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device
    x = embedding_like(args.n, args, seed=1)
    q = embedding_like(args.queries, args, seed=2)
    exact = ExactIndex(args.dim, "cosine", device=device)
    exact.add(x)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def search(index: Any, **kw: Any) -> Any:
        out = index.search(q, args.k, **kw)
        sync()
        return out

    search(exact)  # warm-up
    t_exact, truth = timed(lambda: search(exact), repeat=3)
    nlist = args.nlist or int(round(math.sqrt(args.n)))
    t_train, ivf = timed(lambda: IVFIndex.build(x, nlist=nlist, device=device))
    ivf_rows = []
    for nprobe in args.nprobe:
        search(ivf, nprobe=nprobe)
        t, hits = timed(lambda nprobe=nprobe: search(ivf, nprobe=nprobe), repeat=3)
        ivf_rows.append(
            {
                "nprobe": nprobe,
                "ms_per_query": 1e3 * t / args.queries,
                "speedup_vs_exact": t_exact / t,
                f"recall@{args.k}": knn_recall(hits.ids.cpu(), truth.ids.cpu()),
            }
        )
    binary_rows = []
    for rescore in (None, "binary", "int8", "float"):
        index = BinaryIndex(args.dim, rescore=rescore, rescore_multiplier=4)
        index.add(x)
        t, hits = timed(lambda index=index: index.search(q, args.k), repeat=1)
        binary_rows.append(
            {
                "rescore": str(rescore),
                "ms_per_query": 1e3 * t / args.queries,
                f"recall@{args.k}": knn_recall(hits.ids, truth.ids.cpu()),
                "bytes_per_vector": sum(index.memory_bytes().values()) / args.n,
            }
        )
    return {
        "n": args.n,
        "dim": args.dim,
        "queries": args.queries,
        "k": args.k,
        "device": device,
        "exact_ms_per_query": 1e3 * t_exact / args.queries,
        "ivf_nlist": nlist,
        "ivf_train_s": t_train,
        "ivf": ivf_rows,
        "binary": binary_rows,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=50_000, help="database vectors")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--rank", type=int, default=48, help="latent dimension of the synthetic data")
    p.add_argument("--topics", type=int, default=300, help="clusters in the synthetic data")
    p.add_argument("--spread", type=float, default=1.0, help="distance between topic centres")
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default sqrt(n))")
    p.add_argument("--nprobe", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--bm25-queries", type=int, default=200)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    bm = bench_bm25(args.bm25_queries, args.seed)
    print(f"BM25 on {bm['n_docs']} Tiny Shakespeare paragraphs, {bm['n_queries']} queries")
    print(
        f"  build   rank_bm25 {bm['build_s']['rank_bm25']:.3f} s   llmcourse {bm['build_s']['llmcourse']:.3f} s"
    )
    print(
        f"  query   rank_bm25 {bm['ms_per_query']['rank_bm25']:.3f} ms  llmcourse "
        f"{bm['ms_per_query']['llmcourse']:.3f} ms  ({bm['query_speedup']:.0f}x)"
    )
    print(f"  max |score difference| = {bm['max_abs_score_diff']:.3g}")

    vec = bench_vectors(args)
    print(
        f"\nVector search: {vec['n']} x {vec['dim']} vectors, {vec['queries']} queries, k={vec['k']}, "
        f"device={vec['device']}, threads={args.threads}"
    )
    print(f"  exact            {vec['exact_ms_per_query']:.3f} ms/query")
    print(f"  IVF nlist={vec['ivf_nlist']} (train {vec['ivf_train_s']:.1f} s)")
    recall_key = f"recall@{vec['k']}"
    for r in vec["ivf"]:
        print(
            f"    nprobe={r['nprobe']:<3} {r['ms_per_query']:.3f} ms/query  {r['speedup_vs_exact']:5.1f}x  "
            f"{recall_key}={r[recall_key]:.3f}"
        )
    print("  binary codes (Hamming top-4k, then rescoring)")
    for r in vec["binary"]:
        print(
            f"    rescore={r['rescore']:<6} {r['ms_per_query']:.3f} ms/query  "
            f"{recall_key}={r[recall_key]:.3f}  {r['bytes_per_vector']:.0f} B/vector"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"bm25": bm, "vectors": vec, "threads": args.threads}, indent=2)
        )


if __name__ == "__main__":
    main()
