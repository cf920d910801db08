"""Embedding quantization: binary (1 bit per dim) and int8 (1 byte per dim), with rescoring.

Binary: each dimension becomes one bit, ``1`` where the value is > 0, else ``0``:
``[12, 1, -100, 0.003, -0.001, 128, -1000, 0.0001] -> [1, 1, 0, 1, 0, 1, 0, 1]``. Eight
bits pack into a byte (first dimension = most significant bit), and the distance of two
codes is the Hamming distance: the number of differing bits, ``popcount(a XOR b)``
(``11010101`` vs ``11001101`` -> 2).

int8: each dimension is mapped linearly from a calibrated range ``[lo, hi]`` (from sample
embeddings) onto the 256 levels -128..127.

Memory per vector of d dims: float32 ``4d`` bytes, int8 ``d``, binary ``d / 8``
(768 dims: 3,072 / 768 / 96 bytes) -- see :func:`embedding_bytes`.

:class:`BinaryIndex` searches binary codes by Hamming distance, then rescores the best
``k * rescore_multiplier`` candidates with the float query against a finer copy of the
documents (their ±1 bits, int8 codes or float32 vectors), recovering most of the accuracy
lost to 1-bit codes.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..utils import ShapeError, check_dtype, check_shape
from .base import check_k
from .index import SearchHits

__all__ = [
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

Precision = Literal["float32", "float16", "bfloat16", "int8", "binary"]
_BYTES_PER_DIM = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0, "int8": 1.0, "binary": 1 / 8}
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.uint8)


def binarize(x: torch.Tensor) -> torch.Tensor:
    """1 where ``x > 0`` else 0 (zero maps to 0): same shape as ``x``, dtype uint8."""
    if not x.is_floating_point():
        raise TypeError(f"binarize expects float embeddings, got dtype {x.dtype}")
    return (x > 0).to(torch.uint8)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack 0/1 values along the last dim, 8 per byte, first value = most significant bit.

    bits (..., d) -> (..., ceil(d / 8)) uint8; the last byte is padded with zero bits.
    ``pack_bits([1,1,0,1,0,1,0,1])`` -> ``[0b11010101] = [213]``.
    """
    if bits.dtype == torch.bool:
        bits = bits.to(torch.uint8)
    check_dtype(bits, (torch.uint8,), "bits")
    if bool((bits > 1).any()):
        raise ValueError("pack_bits expects values 0 or 1 (use binarize(x) first)")
    d = bits.shape[-1]
    pad = (-d) % 8
    if pad:
        bits = F.pad(bits, (0, pad))
    groups = bits.reshape(*bits.shape[:-1], -1, 8)  # (..., d/8, 8)
    return (groups * _BIT_WEIGHTS.to(bits.device)).sum(-1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: (..., ceil(dim / 8)) uint8 -> (..., dim) uint8 of 0/1."""
    check_dtype(packed, (torch.uint8,), "packed")
    if packed.shape[-1] != (dim + 7) // 8:
        raise ShapeError(
            f"packed: expected last dim {(dim + 7) // 8} for dim={dim}, got {packed.shape[-1]}"
        )
    weights = _BIT_WEIGHTS.to(packed.device)
    bits = (packed.unsqueeze(-1) & weights) > 0  # (..., B, 8)
    return bits.reshape(*packed.shape[:-1], -1)[..., :dim].to(torch.uint8)


def popcount(x: torch.Tensor) -> torch.Tensor:
    """Number of set bits of every uint8 element (same shape, uint8), by table lookup."""
    check_dtype(x, (torch.uint8,), "x")
    return _POPCOUNT.to(x.device)[x.long()]


_M1, _M2, _M4, _H01 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x0101010101010101


def _popcount64(x: torch.Tensor) -> torch.Tensor:
    """Set bits of every int64 word, by the classic SWAR bit tricks (no lookup table):
    count bits in pairs, then nibbles, then bytes, then sum the 8 bytes with one multiply."""
    x = x - ((x >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4
    return ((x * _H01) >> 56) & 0xFF  # the multiply wraps around; the mask undoes sign fill


def _as_words(codes: torch.Tensor) -> torch.Tensor:
    """(N, B) uint8 -> (N, ceil(B / 8)) int64, zero-padded (pads match, so add no distance)."""
    pad = (-codes.shape[1]) % 8
    x = F.pad(codes, (0, pad)) if pad else codes.contiguous()
    if x.storage_offset() % 8:
        x = x.clone()
    return x.view(torch.int64)


def hamming_distance(
    a: torch.Tensor, b: torch.Tensor, method: Literal["auto", "popcount", "matmul"] = "auto"
) -> torch.Tensor:
    """Pairwise Hamming distances of packed codes: a (Na, B), b (Nb, B) uint8 -> (Na, Nb) int32.

    Two exact ways to the same numbers:

    * ``"popcount"``: ``popcount(a_i XOR b_j)``, on 64-bit words -- what search engines do
      with one CPU instruction per word; fastest for few queries.
    * ``"matmul"``: with bits mapped to ±1, ``<a, b> = (#agree - #differ)``, so
      ``hamming = (8B - <a, b>) / 2``: one matrix product, fastest for many queries.

    ``"auto"`` picks ``matmul`` for 16 or more rows of ``a``. Work is done in blocks of ``b``
    so memory stays bounded.
    """
    check_shape(a, (None, "B"), "a")
    check_shape(b, (None, a.shape[1]), "b")
    check_dtype(a, (torch.uint8,), "a")
    check_dtype(b, (torch.uint8,), "b")
    if method == "auto":
        method = "matmul" if a.shape[0] >= 16 else "popcount"
    out = torch.empty(a.shape[0], b.shape[0], dtype=torch.int32, device=a.device)
    if method == "popcount":
        wa, wb = _as_words(a), _as_words(b)  # (Na, W), (Nb, W)
        block = max(1, (1 << 22) // max(1, wa.shape[0] * wa.shape[1]))
        for s in range(0, wb.shape[0], block):
            xor = wa[:, None, :] ^ wb[None, s : s + block, :]  # (Na, blk, W)
            out[:, s : s + block] = _popcount64(xor).sum(-1, dtype=torch.int32)
    elif method == "matmul":
        n_bits = 8 * a.shape[1]
        sa = unpack_bits(a, n_bits).float() * 2 - 1  # (Na, 8B) of ±1
        block = 8192
        for s in range(0, b.shape[0], block):
            sb = unpack_bits(b[s : s + block], n_bits).float() * 2 - 1  # (blk, 8B)
            out[:, s : s + block] = ((n_bits - sa @ sb.T) / 2).round().to(torch.int32)
    else:
        raise ValueError(f"method must be 'auto', 'popcount' or 'matmul', got {method!r}")
    return out


class Int8Quantizer:
    """Per-dimension linear int8 quantization with ranges calibrated on sample embeddings.

    ``fit(calibration)`` records per-dimension ``lo``/``hi`` (min/max, or the ``clip``
    quantiles to ignore outliers). Then ``q = round((x - lo) / scale) - 128`` clamped to
    [-128, 127] with ``scale = (hi - lo) / 255``; ``dequantize`` maps back to the level
    centres. The error per dimension is at most ``scale / 2`` inside the calibrated range.
    """

    def __init__(self, clip: float | None = None) -> None:
        if clip is not None and not 0.0 <= clip < 0.5:
            raise ValueError(f"clip is a tail quantile in [0, 0.5), got {clip}")
        self.clip = clip
        self.lo: torch.Tensor | None = None  # (d,)
        self.scale: torch.Tensor | None = None  # (d,)

    def fit(self, calibration: torch.Tensor) -> Int8Quantizer:
        """Calibrate on (N, d) float embeddings; returns ``self``."""
        check_shape(calibration, (None, None), "calibration")
        x = calibration.float()
        if self.clip:
            lo = torch.quantile(x, self.clip, dim=0)
            hi = torch.quantile(x, 1 - self.clip, dim=0)
        else:
            lo, hi = x.min(0).values, x.max(0).values
        self.lo = lo
        self.scale = ((hi - lo) / 255).clamp_min(1e-12)  # a constant dimension still works
        return self

    def _fitted(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.lo is None or self.scale is None:
            raise RuntimeError("Int8Quantizer is not calibrated: call fit(sample_embeddings) first")
        return self.lo, self.scale

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) float -> (N, d) int8."""
        lo, scale = self._fitted()
        check_shape(x, (None, lo.shape[0]), "x")
        q = torch.round((x.float() - lo.to(x.device)) / scale.to(x.device)) - 128
        return q.clamp_(-128, 127).to(torch.int8)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        """(N, d) int8 -> (N, d) float32 approximations."""
        lo, scale = self._fitted()
        check_dtype(q, (torch.int8,), "q")
        return (q.float() + 128) * scale.to(q.device) + lo.to(q.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        lo, scale = self._fitted()
        return {"lo": lo, "scale": scale}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> Int8Quantizer:
        self.lo, self.scale = state["lo"].float(), state["scale"].float()
        return self


class BinaryIndex:
    """Hamming-distance search over 1-bit codes, optionally rescored with float queries.

    Args:
        dim: embedding size d.
        rescore: what the candidates are rescored against: ``"binary"`` (the ±1 vectors the
            bits stand for; no extra memory), ``"int8"`` (int8 codes kept beside the bits,
            d bytes per vector), ``"float"`` (the original float32 vectors, 4d bytes -- in
            practice read from disk only for the candidates), or ``None`` (no rescoring:
            results ranked by Hamming distance, score = ``-distance``).
        rescore_multiplier: candidates fetched by Hamming distance = ``k * rescore_multiplier``.
    """

    def __init__(
        self,
        dim: int,
        rescore: Literal["binary", "int8", "float"] | None = "binary",
        rescore_multiplier: int = 4,
    ) -> None:
        if rescore not in ("binary", "int8", "float", None):
            raise ValueError(f"rescore must be 'binary', 'int8', 'float' or None, got {rescore!r}")
        self.dim, self.rescore = dim, rescore
        self.rescore_multiplier = check_k(rescore_multiplier, "rescore_multiplier")
        self.codes = torch.zeros(0, (dim + 7) // 8, dtype=torch.uint8)  # (N, d/8)
        self.fine: torch.Tensor | None = None  # int8 codes or float vectors for rescoring
        self.quantizer: Int8Quantizer | None = None

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def add(self, embeddings: torch.Tensor, calibration: torch.Tensor | None = None) -> None:
        """Add (N, d) float embeddings (ids are positions). For ``rescore="int8"`` the int8
        ranges come from ``calibration`` (default: the first batch added)."""
        check_shape(embeddings, (None, self.dim), "embeddings")
        x = embeddings.detach().float().cpu()
        self.codes = torch.cat([self.codes, pack_bits(binarize(x))])
        if self.rescore == "float":
            fine = x
        elif self.rescore == "int8":
            if self.quantizer is None:
                self.quantizer = Int8Quantizer().fit(x if calibration is None else calibration)
            fine = self.quantizer.quantize(x)
        else:
            return
        self.fine = fine if self.fine is None else torch.cat([self.fine, fine])

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held for search (``codes``) and for rescoring (``fine``)."""
        fine = 0 if self.fine is None else self.fine.numel() * self.fine.element_size()
        return {"codes": self.codes.numel(), "rescore": fine}

    def _candidate_vectors(self, idx: torch.Tensor) -> torch.Tensor:
        """Rescoring vectors for candidate ids (Q, C) -> (Q, C, d) float32."""
        if self.rescore == "binary":
            return unpack_bits(self.codes[idx], self.dim).float() * 2 - 1
        assert self.fine is not None
        if self.rescore == "int8":
            assert self.quantizer is not None
            return self.quantizer.dequantize(self.fine[idx])
        return self.fine[idx]

    def search(self, queries: torch.Tensor, k: int = 10, rescore: bool = True) -> SearchHits:
        """Top-``k`` for (Q, d) float queries: Hamming candidates, then float rescoring.

        Scores are inner products of the float query with the rescoring vectors, or
        ``-hamming`` when rescoring is off. Ids are positions in insertion order.
        """
        check_k(k)
        check_shape(queries, (None, self.dim), "queries")
        q = queries.detach().float().cpu()
        n = len(self)
        if n == 0:
            raise RuntimeError("BinaryIndex is empty: call add(embeddings) first")
        dist = hamming_distance(pack_bits(binarize(q)), self.codes)  # (Q, N)
        do_rescore = rescore and self.rescore is not None
        n_cand = min(n, k * self.rescore_multiplier if do_rescore else k)
        # Smallest distance first, ties to the lower id: one top-k on the key distance * N + id.
        key = dist.to(torch.int64) * n + torch.arange(n)
        cand = key.topk(n_cand, dim=1, largest=False).indices  # (Q, C)
        if not do_rescore:
            return SearchHits(-dist.gather(1, cand).float(), cand)
        vecs = self._candidate_vectors(cand)  # (Q, C, d)
        scores = torch.einsum("qd,qcd->qc", q, vecs)
        top, pos = scores.topk(min(k, n_cand), dim=1)
        return SearchHits(top, cand.gather(1, pos))


def embedding_bytes(dim: int, precision: Precision = "float32") -> int:
    """Bytes to store one ``dim``-dimensional embedding (binary rounds up to whole bytes).

    ``embedding_bytes(768, "float32") = 3072``, ``"int8"`` -> 768, ``"binary"`` -> 96.
    """
    if precision not in _BYTES_PER_DIM:
        raise ValueError(f"precision must be one of {sorted(_BYTES_PER_DIM)}, got {precision!r}")
    if precision == "binary":
        return (dim + 7) // 8
    return int(dim * _BYTES_PER_DIM[precision])


def memory_footprint(n_vectors: int, dim: int) -> dict[str, Any]:
    """Bytes for ``n_vectors`` embeddings at each precision, and the saving vs float32."""
    out: dict[str, Any] = {}
    base = n_vectors * embedding_bytes(dim, "float32")
    for p in ("float32", "float16", "int8", "binary"):
        total = n_vectors * embedding_bytes(dim, p)  # type: ignore[arg-type]
        out[p] = {"bytes": total, "vs_float32": base / total}
    return out
