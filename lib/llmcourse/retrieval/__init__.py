"""Retrieval for retrieval-augmented generation (chapter 10).

Chunking (:mod:`.chunking`), lexical search (:mod:`.bm25`), dense search (:mod:`.dense`)
over vector indexes (:mod:`.index`, :mod:`.kmeans`), fusion, MMR and reranking
(:mod:`.hybrid`), embedding quantization (:mod:`.quantize`) and evaluation (:mod:`.metrics`).
"""

from .base import Retriever, SearchResult
from .bm25 import BM25, simple_tokenize, top_k_indices
from .chunking import (
    Chunk,
    chunk_corpus,
    chunk_fixed,
    chunk_markdown,
    chunk_paragraphs,
    chunk_sentences,
    chunk_tokens,
    split_paragraphs,
    split_sentences,
)
from .dense import DenseRetriever, Embedder, HashingEmbedder, encode_checked, minilm_embedder
from .hybrid import (
    EmbeddingReranker,
    HybridRetriever,
    MaxSimReranker,
    RerankedRetriever,
    Reranker,
    mmr,
    reciprocal_rank_fusion,
)
from .index import (
    ExactIndex,
    FaissIndex,
    IVFIndex,
    SearchHits,
    faiss_available,
    knn_recall,
    load_index,
)
from .kmeans import kmeans
from .metrics import (
    average_precision,
    dcg_at_k,
    evaluate_rankings,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    reciprocal_rank,
)
from .quantize import (
    BinaryIndex,
    Int8Quantizer,
    binarize,
    embedding_bytes,
    hamming_distance,
    memory_footprint,
    pack_bits,
    popcount,
    unpack_bits,
)

__all__ = [
    "SearchResult",
    "Retriever",
    "BM25",
    "simple_tokenize",
    "top_k_indices",
    "Chunk",
    "chunk_fixed",
    "chunk_tokens",
    "chunk_sentences",
    "chunk_paragraphs",
    "chunk_markdown",
    "chunk_corpus",
    "split_sentences",
    "split_paragraphs",
    "Embedder",
    "HashingEmbedder",
    "DenseRetriever",
    "encode_checked",
    "minilm_embedder",
    "reciprocal_rank_fusion",
    "mmr",
    "Reranker",
    "EmbeddingReranker",
    "MaxSimReranker",
    "HybridRetriever",
    "RerankedRetriever",
    "ExactIndex",
    "IVFIndex",
    "FaissIndex",
    "SearchHits",
    "faiss_available",
    "knn_recall",
    "load_index",
    "kmeans",
    "recall_at_k",
    "precision_at_k",
    "reciprocal_rank",
    "average_precision",
    "dcg_at_k",
    "ndcg_at_k",
    "evaluate_rankings",
    "binarize",
    "pack_bits",
    "unpack_bits",
    "popcount",
    "hamming_distance",
    "Int8Quantizer",
    "BinaryIndex",
    "embedding_bytes",
    "memory_footprint",
]
