"""Token arrays on disk (memory-mapped) and random batches of training windows.

A corpus is tokenised once into a flat binary file of ids (``uint16`` when the vocabulary has
at most 65,536 entries, else ``uint32``) with a small JSON sidecar describing it. Training then
memory-maps the file, so even corpora larger than RAM cost almost no memory, and samples
random windows of ``block_size + 1`` tokens: the first ``block_size`` are the input ``x``, the
last ``block_size`` (shifted by one) the targets ``y``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from llmcourse.data.download import DATASETS, fetch, sha256_file, temp_file_beside

__all__ = [
    "token_dtype",
    "write_tokens",
    "load_tokens",
    "get_batch",
    "RandomBatches",
    "TokenSplits",
    "prepare_tokens",
]

TokenData = np.ndarray | Tensor


class _Tokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def save(self, path: str | Path) -> Any: ...


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every id of a ``vocab_size`` vocabulary."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size <= 2**16:
        return np.dtype(np.uint16)
    if vocab_size <= 2**32:
        return np.dtype(np.uint32)
    raise ValueError(f"vocab_size {vocab_size} does not fit in uint32 token files")


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = temp_file_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_tokens(
    ids: Sequence[int] | np.ndarray, path: str | Path, *, vocab_size: int, **meta: Any
) -> Path:
    """Write token ids to ``path`` (raw little-endian array) plus ``path + '.json'`` metadata.

    Both files are written atomically. Extra keyword arguments are stored in the metadata.
    Raises ``ValueError`` when an id is negative or ``>= vocab_size``.
    """
    path = Path(path)
    dtype = token_dtype(vocab_size)
    arr = np.asarray(ids, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"token ids must be a flat sequence, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        raise ValueError(
            f"token ids must lie in [0, {vocab_size}), got min {arr.min()} and max {arr.max()}"
        )
    _atomic_write_bytes(path, arr.astype(dtype.newbyteorder("<")).tobytes())
    info = {"dtype": dtype.name, "num_tokens": int(arr.size), "vocab_size": vocab_size, **meta}
    _atomic_write_bytes(_meta_path(path), json.dumps(info, indent=2).encode())
    return path


def load_tokens(path: str | Path, dtype: str | np.dtype | None = None) -> np.memmap:
    """Memory-map a token file read-only as a 1-D array.

    The dtype comes from the JSON sidecar written by :func:`write_tokens`; for a bare ``.bin``
    (e.g. from nanoGPT's prepare scripts, which use ``uint16``) pass ``dtype`` explicitly.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"token file {path} does not exist; create it with prepare_tokens()"
        )
    meta_file = _meta_path(path)
    expected: int | None = None
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        stored = np.dtype(meta["dtype"])
        if dtype is not None and np.dtype(dtype) != stored:
            raise TypeError(
                f"{path} holds {stored.name} tokens (per {meta_file.name}), not {np.dtype(dtype).name}"
            )
        dtype, expected = stored, int(meta["num_tokens"])
    elif dtype is None:
        raise ValueError(f"{path} has no {meta_file.name} sidecar; pass dtype='uint16' or 'uint32'")
    dtype = np.dtype(dtype).newbyteorder("<")
    size = path.stat().st_size
    if size % dtype.itemsize or (expected is not None and size != expected * dtype.itemsize):
        want = "a multiple of" if expected is None else "exactly"
        n = dtype.itemsize if expected is None else expected * dtype.itemsize
        raise ValueError(
            f"{path} is {size} bytes, expected {want} {n}: the file is truncated or corrupt"
        )
    if size == 0:
        return np.zeros(0, dtype=dtype)  # type: ignore[return-value]
    return np.memmap(path, dtype=dtype, mode="r")


def get_batch(
    data: TokenData,
    block_size: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor]:
    """Sample ``batch_size`` random windows from a 1-D token array.

    Args:
        data: token ids, a NumPy array / memmap or a 1-D integer tensor, length ``N``.
        block_size: context length ``T``; needs ``N >= T + 1``.
        batch_size: number of windows ``B``.
        generator: torch RNG for the start positions (``None``: the global torch RNG).
        device: where the returned tensors live.

    Returns:
        ``x`` (B, T) int64 and ``y`` (B, T) int64 with ``y[:, t] == data[start + t + 1]``.
    """
    if block_size < 1 or batch_size < 1:
        raise ValueError(f"block_size and batch_size must be >= 1, got {block_size}, {batch_size}")
    if data.ndim != 1:
        raise ValueError(f"data must be a 1-D token array, got shape {tuple(data.shape)}")
    n = len(data)
    if n < block_size + 1:
        raise ValueError(
            f"data has {n} tokens but a window needs block_size + 1 = {block_size + 1}; "
            "use a smaller block_size or more data"
        )
    starts = torch.randint(n - block_size, (batch_size,), generator=generator)
    offsets = starts[:, None] + torch.arange(block_size + 1)  # (B, T + 1)
    if isinstance(data, Tensor):
        windows = data[offsets.to(data.device)].long()
    else:
        windows = torch.from_numpy(data[offsets.numpy()].astype(np.int64))
    x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
    device = torch.device(device)
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(
            device, non_blocking=True
        )
    return x.to(device), y.to(device)


class RandomBatches:
    """An endless, reproducible source of random ``(x, y)`` batches from one token array.

    Calling the object returns the next batch. It owns its RNG (seeded with ``seed``), whose
    state is part of :meth:`state_dict`, so a checkpointed run resumes on exactly the batches
    it would have seen. In data-parallel training give each rank a different ``seed``.
    """

    def __init__(
        self,
        data: TokenData,
        block_size: int,
        batch_size: int,
        *,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        if len(data) < block_size + 1:
            raise ValueError(
                f"data has {len(data)} tokens but a window needs block_size + 1 = {block_size + 1}"
            )
        self.data, self.block_size, self.batch_size = data, block_size, batch_size
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self) -> tuple[Tensor, Tensor]:
        """Next batch: ``x`` (B, T) and ``y`` (B, T), int64."""
        return get_batch(self.data, self.block_size, self.batch_size, self.generator, self.device)

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])


@dataclass(frozen=True)
class TokenSplits:
    """Paths of the prepared train/validation token files and the vocabulary size."""

    train: Path
    val: Path
    vocab_size: int


def _tokenizer_fingerprint(tokenizer: _Tokenizer) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "tokenizer.json"
        tokenizer.save(target)
        files = sorted(p for p in Path(tmp).rglob("*") if p.is_file())
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.name.encode() + f.read_bytes())
    return f"{type(tokenizer).__name__}:{digest.hexdigest()}"


def prepare_tokens(
    source: str | Path,
    tokenizer: _Tokenizer,
    out_dir: str | Path,
    *,
    val_fraction: float = 0.1,
) -> TokenSplits:
    """Tokenise a corpus once into ``out_dir/train.bin`` and ``out_dir/val.bin``.

    ``source`` is a name from :data:`llmcourse.data.DATASETS` (fetched) or a path to a UTF-8
    text file. The text is split by characters: the first ``1 - val_fraction`` for training,
    the rest for validation (nanoGPT's split). When both files already exist for the same source
    file, tokenizer and split, they are reused without re-tokenising.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    path = fetch(str(source)) if str(source) in DATASETS else Path(source)
    if not path.is_file():
        raise FileNotFoundError(
            f"corpus {path} not found (and {source!r} is not a known data name)"
        )
    out = Path(out_dir)
    meta = {
        "source": str(source),
        "source_sha256": sha256_file(path),
        "tokenizer": _tokenizer_fingerprint(tokenizer),
        "val_fraction": val_fraction,
    }
    splits = TokenSplits(out / "train.bin", out / "val.bin", tokenizer.vocab_size)
    if all(_meta_path(p).is_file() for p in (splits.train, splits.val)):
        stored = [json.loads(_meta_path(p).read_text()) for p in (splits.train, splits.val)]
        if all({k: s.get(k) for k in meta} == meta for s in stored):
            return splits
    text = path.read_text(encoding="utf-8")
    cut = int(len(text) * (1.0 - val_fraction))
    for part, target in ((text[:cut], splits.train), (text[cut:], splits.val)):
        write_tokens(tokenizer.encode(part), target, vocab_size=tokenizer.vocab_size, **meta)
    return splits
