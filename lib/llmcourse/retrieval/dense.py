"""Dense retrieval: embed texts, store the vectors in an index, search by cosine similarity.

An :class:`Embedder` is anything with ``encode(list[str]) -> Tensor (N, d)`` returning
L2-normalised rows. The course's real one is the MiniLM sentence encoder from
:mod:`llmcourse.models.bert` (:func:`minilm_embedder`); :class:`HashingEmbedder` is a small
deterministic stand-in (feature hashing of words and character n-grams) for tests and for
machines without the model weights. It captures lexical overlap only, not meaning.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from ..utils import ShapeError
from .base import SearchResult, attach_texts, check_k
from .index import ExactIndex, IVFIndex, load_index

__all__ = ["Embedder", "HashingEmbedder", "DenseRetriever", "minilm_embedder", "encode_checked"]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised embeddings: ``encode(texts) -> (N, d)`` float tensor."""

    def encode(self, texts: list[str]) -> torch.Tensor: ...


def encode_checked(
    embedder: Embedder, texts: Sequence[str], normalize: bool = True
) -> torch.Tensor:
    """``embedder.encode(texts)`` with its output checked: (N, d) float32 on the CPU.

    Raises ``ShapeError`` when the embedder returns the wrong number of rows or dims, and
    re-normalises (``normalize=True``) so that inner products are cosines even for an
    embedder that forgot to.
    """
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a list of str")
    out = embedder.encode(texts)
    if not isinstance(out, torch.Tensor):
        out = torch.as_tensor(out)
    if out.ndim != 2 or out.shape[0] != len(texts):
        raise ShapeError(
            f"{type(embedder).__name__}.encode: expected shape ({len(texts)}, d) for {len(texts)} "
            f"texts, got {tuple(out.shape)}"
        )
    out = out.detach().float().cpu()
    return F.normalize(out, dim=1) if normalize else out


class HashingEmbedder:
    """A deterministic bag-of-features embedder (no training, no weights).

    Each text becomes the sum of signed one-hot vectors of its features, hashed into ``dim``
    buckets (the "hashing trick"), then L2-normalised. Features: lowercased words and the
    character n-grams (``ngram_range``) of each word padded with spaces. Texts sharing words or
    word pieces get a high cosine; synonyms do not. Stable across runs and machines (BLAKE2b,
    not Python's salted ``hash``).
    """

    def __init__(
        self, dim: int = 256, ngram_range: tuple[int, int] = (3, 4), word_weight: float = 1.0
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        lo, hi = ngram_range
        if not 1 <= lo <= hi:
            raise ValueError(f"ngram_range must satisfy 1 <= lo <= hi, got {ngram_range}")
        self.dim, self.ngram_range, self.word_weight = dim, (lo, hi), float(word_weight)
        self._cache: dict[str, tuple[int, float]] = {}

    def _bucket(self, feature: str) -> tuple[int, float]:
        hit = self._cache.get(feature)
        if hit is None:
            h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
            hit = (h % self.dim, 1.0 if (h >> 63) & 1 else -1.0)
            if len(self._cache) < 1_000_000:
                self._cache[feature] = hit
        return hit

    def features(self, text: str) -> list[tuple[str, float]]:
        """The (feature, weight) pairs of ``text``: words, then their character n-grams."""
        out: list[tuple[str, float]] = []
        lo, hi = self.ngram_range
        for word in re.findall(r"\w+", text.lower()):
            out.append(("w:" + word, self.word_weight))
            padded = f" {word} "
            for n in range(lo, hi + 1):
                out.extend(("c:" + padded[i : i + n], 1.0) for i in range(len(padded) - n + 1))
        return out

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embed ``texts``: (N, dim) float32, rows of unit norm (all-zero for empty text)."""
        out = torch.zeros(len(texts), self.dim)
        for row, text in enumerate(texts):
            for feat, w in self.features(text):
                j, sign = self._bucket(feat)
                out[row, j] += sign * w
        return F.normalize(out, dim=1)


def minilm_embedder(batch_size: int = 32) -> Embedder:
    """The course's all-MiniLM-L6-v2 sentence encoder (384 dims) as an :class:`Embedder`.

    Loads the weights with ``llmcourse.models.bert.load_minilm()``; fails with
    ``ImportError`` when that module is missing.
    """
    try:
        from ..models.bert import SentenceEncoder, load_minilm
    except ImportError as err:  # pragma: no cover - depends on the BERT module being present
        raise ImportError(
            "minilm_embedder needs llmcourse.models.bert (load_minilm, SentenceEncoder); "
            f"it could not be imported: {err}. Use HashingEmbedder for a weight-free stand-in."
        ) from err
    model, tokenizer = load_minilm()
    return _BatchedEncoder(SentenceEncoder(model, tokenizer), batch_size)


class _BatchedEncoder:
    """Adapts ``SentenceEncoder.encode(texts, batch_size, normalize)`` to :class:`Embedder`."""

    def __init__(self, encoder: Any, batch_size: int) -> None:
        self.encoder, self.batch_size = encoder, batch_size

    def encode(self, texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return self.encoder.encode(list(texts), batch_size=self.batch_size, normalize=True)


class DenseRetriever:
    """Embed a corpus once, then answer queries by cosine similarity.

    Args:
        embedder: an :class:`Embedder` (MiniLM, :class:`HashingEmbedder`, ...).
        index: where vectors go; default a cosine :class:`ExactIndex`. An untrained
            :class:`IVFIndex` is trained on the first batch of added texts.
        batch_size: texts embedded per ``encode`` call while indexing.

    ``add(texts)`` appends texts (and optional metadata); ``search(query, k)`` returns
    :class:`SearchResult` with ``index`` = position of the text in insertion order.
    """

    def __init__(
        self,
        embedder: Embedder,
        index: ExactIndex | IVFIndex | None = None,
        *,
        batch_size: int = 64,
    ) -> None:
        if not isinstance(embedder, Embedder):
            raise TypeError(
                f"embedder must have an encode(list[str]) method, got {type(embedder).__name__}"
            )
        self.embedder = embedder
        self.index = index
        self.batch_size = batch_size
        self.texts: list[str] = []
        self.metadata: list[dict[str, Any]] = []

    @classmethod
    def from_texts(
        cls,
        texts: Sequence[str],
        embedder: Embedder,
        metadata: Sequence[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> DenseRetriever:
        """Build a retriever over ``texts`` (``kwargs`` go to the constructor)."""
        retriever = cls(embedder, **kwargs)
        retriever.add(texts, metadata)
        return retriever

    def __len__(self) -> int:
        return len(self.texts)

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed texts in batches: (N, d) float32, unit rows."""
        parts = [
            encode_checked(self.embedder, texts[s : s + self.batch_size])
            for s in range(0, len(texts), self.batch_size)
        ]
        if not parts:
            raise ValueError("no texts to embed")
        return torch.cat(parts)

    def add(self, texts: Sequence[str], metadata: Sequence[dict[str, Any]] | None = None) -> None:
        """Embed ``texts`` and add them to the index."""
        texts = list(texts)
        if metadata is not None and len(metadata) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(metadata)} metadata entries")
        vectors = self.embed(texts)
        if self.index is None:
            self.index = ExactIndex(vectors.shape[1], "cosine")
        if isinstance(self.index, IVFIndex) and not self.index.is_trained:
            self.index.train(vectors)
        start = len(self.texts)
        self.index.add(vectors, torch.arange(start, start + len(texts)))
        self.texts.extend(texts)
        self.metadata.extend(dict(m) for m in (metadata or [{}] * len(texts)))

    def search(self, query: str, k: int = 10) -> list[SearchResult]:
        """The ``k`` texts most similar to ``query``, best first."""
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: Sequence[str], k: int = 10) -> list[list[SearchResult]]:
        """:meth:`search` for several queries with one embedding call."""
        check_k(k)
        if self.index is None or len(self) == 0:
            raise RuntimeError("the retriever is empty: call add(texts) first")
        hits = self.index.search(self.embed(list(queries)), k)
        out = []
        for scores, ids in zip(hits.scores.tolist(), hits.ids.tolist(), strict=True):
            pairs = [(i, s) for i, s in zip(ids, scores, strict=True) if i >= 0]
            out.append(
                attach_texts(
                    [i for i, _ in pairs], [s for _, s in pairs], self.texts, self.metadata
                )
            )
        return out

    def save(self, path: str | Path) -> Path:
        """Write the index (``path/index.*``) and the texts and metadata (``path/texts.json``).

        The embedder is not saved: pass the same one to :meth:`load`.
        """
        if self.index is None:
            raise RuntimeError("nothing to save: the retriever is empty")
        path = Path(path)
        self.index.save(path)
        payload = {"texts": self.texts, "metadata": self.metadata}
        (path / "texts.json").write_text(json.dumps(payload, ensure_ascii=False))
        return path

    @classmethod
    def load(cls, path: str | Path, embedder: Embedder, **kwargs: Any) -> DenseRetriever:
        """Read a retriever written by :meth:`save`; ``embedder`` must be the one used to build it."""
        path = Path(path)
        texts_file = path / "texts.json"
        if not texts_file.is_file():
            raise FileNotFoundError(
                f"{texts_file} not found: expected a folder written by DenseRetriever.save"
            )
        payload = json.loads(texts_file.read_text())
        retriever = cls(embedder, load_index(path), **kwargs)
        retriever.texts, retriever.metadata = list(payload["texts"]), list(payload["metadata"])
        if len(retriever.texts) != len(retriever.index or []):
            raise ValueError(
                f"{path}: {len(retriever.texts)} texts but {len(retriever.index or [])} vectors"
            )
        return retriever
