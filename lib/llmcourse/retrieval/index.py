"""Vector indexes: exact search, an inverted-file (IVF) approximate index, optional FAISS.

All indexes store float32 vectors with int64 ids and answer ``search(queries, k)`` with a
:class:`SearchHits` ``(scores (Q, k), ids (Q, k))``, best first. ``metric="cosine"``
L2-normalises vectors and queries, so scores are cosine similarities; ``metric="ip"`` uses
the raw inner product. Where fewer than ``k`` vectors can be returned, the missing slots
hold id ``-1`` and score ``-inf``.

* :class:`ExactIndex` -- brute force: one matrix product per block of the database.
* :class:`IVFIndex` -- k-means partitions the vectors into ``nlist`` lists; a query scans
  only the ``nprobe`` lists whose centroids are nearest. Cost ~ ``nprobe / nlist`` of exact,
  at the price of recall: a true neighbour in an unscanned list is missed.
  :func:`knn_recall` measures it against :class:`ExactIndex`.
* :class:`FaissIndex` -- the same two kinds through FAISS, only when ``faiss`` is installed
  (``pip install faiss-cpu``); :func:`faiss_available` says whether it is.

``save(path)`` writes a folder with ``index.safetensors`` (the tensors) and ``index.json``
(type and settings); :func:`load_index` reads it back into an identical index. No pickle.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..utils import ShapeError, check_shape, resolve_device
from .base import check_k
from .kmeans import _sq_dists, assign, kmeans

__all__ = [
    "SearchHits",
    "ExactIndex",
    "IVFIndex",
    "FaissIndex",
    "faiss_available",
    "load_index",
    "knn_recall",
]

Metric = Literal["cosine", "ip"]
_FORMAT = "llmcourse.vector_index"
_VERSION = 1


class SearchHits(NamedTuple):
    """Result of a vector search: ``scores`` (Q, k) float32 and ``ids`` (Q, k) int64."""

    scores: torch.Tensor
    ids: torch.Tensor


def _as_matrix(x: Any, dim: int, name: str) -> torch.Tensor:
    """Check that ``x`` is a (N, dim) float array/tensor and return it as float32 tensor."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.ndim == 1:
        raise ShapeError(
            f"{name}: expected 2 dims (N, {dim}), got shape {tuple(x.shape)}; use x[None] for one vector"
        )
    check_shape(x, (None, dim), name)
    if not x.is_floating_point():
        raise TypeError(
            f"{name}: expected a float tensor, got dtype {x.dtype}; convert with .float()"
        )
    return x.float()


def _merge_topk(
    s1: torch.Tensor, i1: torch.Tensor, s2: torch.Tensor, i2: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the ``k`` best of two candidate sets (Q, k1) and (Q, k2)."""
    s = torch.cat([s1, s2], 1)
    i = torch.cat([i1, i2], 1)
    top, pos = s.topk(min(k, s.shape[1]), dim=1)
    return top, i.gather(1, pos)


def _pad(scores: torch.Tensor, ids: torch.Tensor, k: int) -> SearchHits:
    """Pad (Q, k') results to (Q, k) with score -inf / id -1."""
    missing = k - scores.shape[1]
    if missing > 0:
        q = scores.shape[0]
        scores = torch.cat([scores, scores.new_full((q, missing), float("-inf"))], 1)
        ids = torch.cat([ids, ids.new_full((q, missing), -1)], 1)
    ids = torch.where(torch.isneginf(scores), torch.full_like(ids, -1), ids)
    return SearchHits(scores, ids)


class _TorchIndex:
    """Storage, input checks and persistence shared by :class:`ExactIndex` and :class:`IVFIndex`."""

    def __init__(self, dim: int, metric: Metric, device: str | torch.device) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if metric not in ("cosine", "ip"):
            raise ValueError(f"metric must be 'cosine' or 'ip', got {metric!r}")
        self.dim = dim
        self.metric: Metric = metric
        self.device = resolve_device(device)
        self.vectors = torch.zeros(0, dim, device=self.device)  # (N, d) float32
        self.ids = torch.zeros(0, dtype=torch.int64, device=self.device)  # (N,)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def ntotal(self) -> int:
        """Number of stored vectors."""
        return len(self)

    def _prepare(self, x: Any, name: str) -> torch.Tensor:
        x = _as_matrix(x, self.dim, name).to(self.device)
        return F.normalize(x, dim=1) if self.metric == "cosine" else x

    def _new_ids(self, n: int, ids: Any) -> torch.Tensor:
        if ids is None:
            start = int(self.ids.max()) + 1 if len(self) else 0
            new = torch.arange(start, start + n, dtype=torch.int64)
        else:
            new = torch.as_tensor(ids, dtype=torch.int64).flatten()
            if new.shape[0] != n:
                raise ValueError(f"got {n} vectors but {new.shape[0]} ids")
            if (new < 0).any():
                raise ValueError("ids must be >= 0 (-1 marks a missing result)")
        new = new.to(self.device)
        both = torch.cat([self.ids, new])
        if torch.unique(both).shape[0] != both.shape[0]:
            raise ValueError(
                "ids must be unique: some of the new ids are repeated or already in the index"
            )
        return new

    # ----------------------------------------------------------------- persistence

    def _config(self) -> dict[str, Any]:
        return {"dim": self.dim, "metric": self.metric}

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {"vectors": self.vectors, "ids": self.ids}

    def save(self, path: str | Path) -> Path:
        """Write ``path/index.safetensors`` and ``path/index.json``; returns ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self._tensors().items()}
        save_file(tensors, str(path / "index.safetensors"))
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "type": type(self).__name__,
            **self._config(),
        }
        (path / "index.json").write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> _TorchIndex:
        """Read an index written by :meth:`save` (it must be of this class)."""
        index = load_index(path, device)
        if not isinstance(index, cls):
            raise TypeError(
                f"{path} holds a {type(index).__name__}, not a {cls.__name__}; use load_index"
            )
        return index


class ExactIndex(_TorchIndex):
    """Brute-force nearest-neighbour search.

    Args:
        dim: vector size d.
        metric: ``"cosine"`` (vectors normalised on the way in) or ``"ip"`` (inner product).
        device: where vectors live and scores are computed (``"auto"``: GPU when present).
        block_size: database rows scored per matrix product (bounds memory at Q x block_size).
    """

    def __init__(
        self,
        dim: int,
        metric: Metric = "cosine",
        *,
        device: str | torch.device = "cpu",
        block_size: int = 65536,
    ) -> None:
        super().__init__(dim, metric, device)
        self.block_size = int(block_size)

    def add(self, vectors: Any, ids: Any = None) -> torch.Tensor:
        """Append (N, d) vectors; ``ids`` default to consecutive ints. Returns the new ids (N,)."""
        x = self._prepare(vectors, "vectors")
        new = self._new_ids(x.shape[0], ids)
        self.vectors = torch.cat([self.vectors, x])
        self.ids = torch.cat([self.ids, new])
        return new

    @torch.no_grad()
    def search(self, queries: Any, k: int = 10) -> SearchHits:
        """The ``k`` best stored vectors for each query: queries (Q, d) -> SearchHits (Q, k)."""
        check_k(k)
        q = self._prepare(queries, "queries")
        best_s = q.new_empty(q.shape[0], 0)
        best_i = torch.zeros(q.shape[0], 0, dtype=torch.int64, device=self.device)
        for s in range(0, len(self), self.block_size):
            block = self.vectors[s : s + self.block_size]  # (B, d)
            scores = q @ block.T  # (Q, B)
            top, pos = scores.topk(min(k, block.shape[0]), dim=1)
            best_s, best_i = _merge_topk(best_s, best_i, top, self.ids[s + pos], k)
        return _pad(best_s, best_i, k)

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "block_size": self.block_size}


class IVFIndex(_TorchIndex):
    """Inverted-file index: k-means lists, scan only the ``nprobe`` nearest lists per query.

    Usage: ``index = IVFIndex(d, nlist=64); index.train(x); index.add(x)`` (or
    ``IVFIndex.build(x, nlist=64)``), then ``index.search(q, k, nprobe=8)``.

    Args:
        dim: vector size d.
        nlist: number of k-means lists (``~sqrt(N)`` is a common choice).
        metric: ``"cosine"`` or ``"ip"``; the coarse assignment to lists is always by L2
            distance to the centroids (for unit vectors that is the cosine order).
        nprobe: lists scanned per query by default; ``nprobe = nlist`` is exact search.
        n_iter, seed: k-means iterations and seed (training is deterministic).
        max_points_per_centroid: training uses at most ``nlist * this`` random vectors.
        device: where vectors live.

    Attributes:
        centroids: (nlist, d); vectors/ids are stored grouped by list, list ``l`` in rows
        ``offsets[l]:offsets[l + 1]``.
    """

    def __init__(
        self,
        dim: int,
        nlist: int,
        metric: Metric = "cosine",
        *,
        nprobe: int = 8,
        n_iter: int = 15,
        seed: int = 0,
        max_points_per_centroid: int = 128,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(dim, metric, device)
        check_k(nlist, "nlist")
        check_k(nprobe, "nprobe")
        self.nlist, self.nprobe = nlist, nprobe
        self.n_iter, self.seed = int(n_iter), int(seed)
        self.max_points_per_centroid = int(max_points_per_centroid)
        self.centroids: torch.Tensor | None = None
        self.offsets = torch.zeros(nlist + 1, dtype=torch.int64, device=self.device)

    @classmethod
    def build(cls, vectors: Any, nlist: int, ids: Any = None, **kwargs: Any) -> IVFIndex:
        """Create, train on ``vectors`` and add them (``kwargs`` go to the constructor)."""
        x = _as_matrix(vectors, int(vectors.shape[-1]), "vectors")
        index = cls(x.shape[1], nlist, **kwargs)
        index.train(x)
        index.add(x, ids)
        return index

    @property
    def is_trained(self) -> bool:
        return self.centroids is not None

    @property
    def list_sizes(self) -> torch.Tensor:
        """(nlist,) number of vectors in each list."""
        return self.offsets.diff()

    def train(self, vectors: Any) -> None:
        """Learn the ``nlist`` centroids by k-means on (a sample of) ``vectors`` (N, d)."""
        x = self._prepare(vectors, "vectors")
        if x.shape[0] < self.nlist:
            raise ValueError(
                f"training IVF with nlist={self.nlist} needs at least {self.nlist} vectors, got "
                f"{x.shape[0]}; lower nlist (about sqrt(N) is usual)"
            )
        limit = self.nlist * self.max_points_per_centroid
        if x.shape[0] > limit:
            gen = torch.Generator().manual_seed(self.seed)
            x = x[torch.randperm(x.shape[0], generator=gen)[:limit].to(x.device)]
        self.centroids = kmeans(x, self.nlist, n_iter=self.n_iter, seed=self.seed)

    def add(self, vectors: Any, ids: Any = None) -> torch.Tensor:
        """Assign (N, d) vectors to their nearest lists and store them. Returns the new ids."""
        if self.centroids is None:
            raise RuntimeError(
                "IVFIndex is not trained: call train(vectors) first, or use IVFIndex.build"
            )
        x = self._prepare(vectors, "vectors")
        new = self._new_ids(x.shape[0], ids)
        old_labels = torch.repeat_interleave(
            torch.arange(self.nlist, device=self.device), self.list_sizes
        )
        labels = torch.cat([old_labels, assign(x, self.centroids)])
        order = torch.sort(labels, stable=True).indices  # keeps insertion order inside a list
        self.vectors = torch.cat([self.vectors, x])[order]
        self.ids = torch.cat([self.ids, new])[order]
        counts = torch.bincount(labels, minlength=self.nlist)
        self.offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        return new

    @torch.no_grad()
    def search(self, queries: Any, k: int = 10, nprobe: int | None = None) -> SearchHits:
        """Approximate top-``k``: queries (Q, d) -> SearchHits (Q, k), scanning ``nprobe`` lists."""
        check_k(k)
        nprobe = min(check_k(nprobe if nprobe is not None else self.nprobe, "nprobe"), self.nlist)
        if self.centroids is None:
            raise RuntimeError(
                "IVFIndex is not trained: call train(vectors) and add(vectors) first"
            )
        q = self._prepare(queries, "queries")
        n_q = q.shape[0]
        probe = (
            _sq_dists(q, self.centroids).topk(nprobe, dim=1, largest=False).indices
        )  # (Q, nprobe)
        cand_s = q.new_full((n_q, nprobe, k), float("-inf"))
        cand_i = torch.full((n_q, nprobe, k), -1, dtype=torch.int64, device=self.device)
        offsets = self.offsets.tolist()
        # One matrix product per probed list, over all queries that probe it.
        for lst in torch.unique(probe).tolist():
            a, b = offsets[lst], offsets[lst + 1]
            if b == a:
                continue
            qi, slot = (probe == lst).nonzero(as_tuple=True)
            scores = q[qi] @ self.vectors[a:b].T  # (q_l, n_l)
            kk = min(k, b - a)
            top, pos = scores.topk(kk, dim=1)
            cand_s[qi, slot, :kk] = top
            cand_i[qi, slot, :kk] = self.ids[a + pos]
        top, pos = cand_s.flatten(1).topk(k, dim=1)
        return _pad(top, cand_i.flatten(1).gather(1, pos), k)

    def _config(self) -> dict[str, Any]:
        return {
            **super()._config(),
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "n_iter": self.n_iter,
            "seed": self.seed,
            "max_points_per_centroid": self.max_points_per_centroid,
            "trained": self.is_trained,
        }

    def _tensors(self) -> dict[str, torch.Tensor]:
        out = {**super()._tensors(), "offsets": self.offsets}
        if self.centroids is not None:
            out["centroids"] = self.centroids
        return out


def load_index(path: str | Path, device: str | torch.device = "cpu") -> ExactIndex | IVFIndex:
    """Read an index written by ``save(path)``; the type is taken from ``index.json``."""
    path = Path(path)
    meta_file, tensor_file = path / "index.json", path / "index.safetensors"
    for f in (meta_file, tensor_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: expected a folder written by index.save(path)")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != _FORMAT:
        raise ValueError(
            f"{meta_file} is not an llmcourse vector index (format={meta.get('format')!r})"
        )
    if meta.get("version") != _VERSION:
        raise ValueError(
            f"{meta_file}: unsupported version {meta.get('version')}, this library reads {_VERSION}"
        )
    tensors = load_file(str(tensor_file), device=str(resolve_device(device)))
    kind = meta["type"]
    if kind == "ExactIndex":
        index: ExactIndex | IVFIndex = ExactIndex(
            meta["dim"], meta["metric"], device=device, block_size=meta["block_size"]
        )
    elif kind == "IVFIndex":
        index = IVFIndex(
            meta["dim"],
            meta["nlist"],
            meta["metric"],
            nprobe=meta["nprobe"],
            n_iter=meta["n_iter"],
            seed=meta["seed"],
            max_points_per_centroid=meta["max_points_per_centroid"],
            device=device,
        )
        index.offsets = tensors["offsets"]
        index.centroids = tensors.get("centroids")
    else:
        raise ValueError(f"{meta_file}: unknown index type {kind!r}")
    index.vectors, index.ids = tensors["vectors"], tensors["ids"]
    return index


def knn_recall(approx_ids: torch.Tensor, exact_ids: torch.Tensor) -> float:
    """Mean fraction of the exact top-k ids that the approximate search also returned.

    ``approx_ids`` (Q, k') and ``exact_ids`` (Q, k) int64; ids of -1 (missing) never count.
    This "recall@k of the index" measures the index, not the retrieval quality of the
    embeddings (see :mod:`llmcourse.retrieval.metrics` for that).
    """
    if approx_ids.ndim != 2 or exact_ids.ndim != 2 or approx_ids.shape[0] != exact_ids.shape[0]:
        raise ShapeError(
            f"knn_recall: expected (Q, k') and (Q, k) id matrices, got {tuple(approx_ids.shape)} "
            f"and {tuple(exact_ids.shape)}"
        )
    hits = (exact_ids[:, :, None] == approx_ids[:, None, :]).any(-1) & (exact_ids >= 0)
    valid = (exact_ids >= 0).sum().clamp_min(1)
    return float(hits.sum() / valid)


# --------------------------------------------------------------------------- FAISS backend


def faiss_available() -> bool:
    """Whether the optional ``faiss`` package can be imported."""
    return importlib.util.find_spec("faiss") is not None


def _import_faiss() -> Any:
    if not faiss_available():
        raise ImportError(
            "FaissIndex needs the optional package faiss (pip install faiss-cpu, or faiss-gpu). "
            "Without it, use ExactIndex or IVFIndex from llmcourse.retrieval, which need only torch."
        )
    import faiss  # type: ignore[import-not-found]

    return faiss


class FaissIndex:
    """The FAISS counterpart of :class:`ExactIndex` (``nlist=None``) or :class:`IVFIndex`.

    Same ``add``/``search`` interface and return types. Only usable when ``faiss`` is
    installed (:func:`faiss_available`); otherwise the constructor raises ``ImportError``
    saying what to install. Cosine metric = inner product on L2-normalised vectors.
    Not persisted by this library: keep the vectors in an :class:`ExactIndex` for saving.
    """

    def __init__(
        self, dim: int, metric: Metric = "cosine", *, nlist: int | None = None, nprobe: int = 8
    ) -> None:
        faiss = _import_faiss()
        if metric not in ("cosine", "ip"):
            raise ValueError(f"metric must be 'cosine' or 'ip', got {metric!r}")
        self.dim, self.metric, self.nlist = dim, metric, nlist
        if nlist is None:
            self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        else:
            self._quantizer = faiss.IndexFlatL2(dim)  # kept alive: the IVF index refers to it
            self._index = faiss.IndexIVFFlat(
                self._quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT
            )
            self._index.nprobe = nprobe

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def _prepare(self, x: Any, name: str) -> np.ndarray:
        t = _as_matrix(x, self.dim, name).detach().cpu()
        if self.metric == "cosine":
            t = F.normalize(t, dim=1)
        return np.ascontiguousarray(t.numpy(), dtype=np.float32)

    def train(self, vectors: Any) -> None:
        """Train the IVF coarse quantizer (no-op for the flat index)."""
        self._index.train(self._prepare(vectors, "vectors"))

    def add(self, vectors: Any, ids: Any = None) -> torch.Tensor:
        """Append (N, d) vectors with int64 ids (default: consecutive). Returns the ids."""
        x = self._prepare(vectors, "vectors")
        start = len(self)
        new = (
            np.arange(start, start + x.shape[0], dtype=np.int64)
            if ids is None
            else np.asarray(ids, dtype=np.int64)
        )
        self._index.add_with_ids(x, new)
        return torch.from_numpy(new)

    def search(self, queries: Any, k: int = 10, nprobe: int | None = None) -> SearchHits:
        """Top-``k``: queries (Q, d) -> SearchHits (Q, k); missing results have id -1."""
        check_k(k)
        if nprobe is not None and self.nlist is not None:
            self._index.nprobe = nprobe
        scores, ids = self._index.search(self._prepare(queries, "queries"), k)
        s = torch.from_numpy(np.asarray(scores, dtype=np.float32))
        i = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        s = torch.where(i < 0, torch.full_like(s, float("-inf")), s)
        return SearchHits(s, i)
