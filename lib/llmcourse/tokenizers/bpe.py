"""Byte-level byte-pair encoding (BPE), as in GPT-2: train, encode, decode, save, load.

Text is UTF-8 encoded, so the 256 byte values form the base vocabulary and every string can be
encoded (no unknown token). Training learns merges of adjacent tokens; encoding replays them,
lowest rank first, inside each pre-token. Files are written in GPT-2's format
(``encoder.json`` + ``vocab.bpe``) so GPT-2's own files load the same way.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np

from llmcourse.tokenizers.bpe_train import Pair, train_bpe_merges
from llmcourse.tokenizers.byte_level import (
    PreTokenizer,
    bytes_to_unicode,
    token_bytes_to_str,
    token_str_to_bytes,
)

__all__ = ["ByteLevelBPE", "read_text_chunks"]

PathLike = str | os.PathLike[str]
_ENCODER_FILE = "encoder.json"
_MERGES_FILE = "vocab.bpe"
_MERGES_HEADER = "#version: 0.2"


def read_text_chunks(path: PathLike, chunk_chars: int = 1 << 20) -> Iterator[str]:
    """Yield a UTF-8 text file in pieces of ``chunk_chars`` characters, newlines untouched."""
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars must be positive, got {chunk_chars}")
    with open(path, encoding="utf-8", newline="") as f:
        while chunk := f.read(chunk_chars):
            yield chunk


def _as_int_list(ids: Iterable[int]) -> list[int]:
    """Python ints from a list, a NumPy array or a 1-D tensor of ids."""
    tolist = getattr(ids, "tolist", None)
    values = tolist() if callable(tolist) else list(ids)
    if values and not isinstance(values[0], int):
        raise TypeError(f"ids must be integers, got {type(values[0]).__name__}")
    return values


class ByteLevelBPE:
    """A byte-level BPE tokenizer.

    Build one with :meth:`train`, :meth:`from_gpt2_files` or :meth:`load` rather than the
    constructor.

    Args:
        vocab: token id -> the token's bytes, for every id ``0 .. len(vocab) - 1``
            (special tokens included, as their UTF-8 text).
        merges: ``((left_id, right_id), result_id)`` in rank order (first = applied first).
        special_tokens: special token text -> id.
    """

    def __init__(
        self,
        vocab: Sequence[bytes],
        merges: Sequence[tuple[Pair, int]],
        special_tokens: dict[str, int] | None = None,
        *,
        cache_size: int = 200_000,
    ) -> None:
        self._vocab: list[bytes] = list(vocab)
        self._merge_list: list[tuple[Pair, int]] = list(merges)
        self.special_tokens: dict[str, int] = dict(special_tokens or {})
        n = len(self._vocab)
        for text, idx in self.special_tokens.items():
            if not 0 <= idx < n or self._vocab[idx] != text.encode("utf-8"):
                raise ValueError(
                    f"special token {text!r} must map to an id whose bytes are its text"
                )
        ordinary: dict[bytes, int] = {}
        specials = set(self.special_tokens.values())
        for idx, tok in enumerate(self._vocab):
            if idx not in specials:
                ordinary.setdefault(tok, idx)
        missing = [b for b in range(256) if bytes([b]) not in ordinary]
        if missing:
            raise ValueError(f"vocabulary lacks single-byte tokens for bytes {missing[:8]}")
        self._byte_ids: list[int] = [ordinary[bytes([b])] for b in range(256)]
        self._ranks: dict[Pair, tuple[int, int]] = {}
        for rank, (pair, result) in enumerate(self._merge_list):
            for idx in (*pair, result):
                if not 0 <= idx < n:
                    raise ValueError(f"merge {rank} refers to id {idx}, outside 0..{n - 1}")
            if self._vocab[pair[0]] + self._vocab[pair[1]] != self._vocab[result]:
                raise ValueError(f"merge {rank}: tokens {pair} do not concatenate to {result}")
            self._ranks.setdefault(pair, (rank, result))
        self._pre = PreTokenizer(self.special_tokens)
        self._cache: dict[str, list[int]] = {}
        self._cache_size = cache_size

    # ------------------------------------------------------------------ construction
    @classmethod
    def train(
        cls,
        text_or_path: str | os.PathLike[str] | Iterable[str],
        vocab_size: int,
        special_tokens: Sequence[str] = (),
    ) -> ByteLevelBPE:
        """Learn a vocabulary of ``vocab_size`` tokens from a corpus.

        Args:
            text_or_path: the training text as a ``str``, a file as a ``pathlib.Path`` (or any
                ``os.PathLike``; read in chunks), or an iterable of text chunks. A plain
                ``str`` is always taken as text, never as a file name.
            vocab_size: final size, counting the 256 byte tokens and the special tokens
                (smaller only when the corpus runs out of pairs to merge).
            special_tokens: strings that get their own ids (after the merged tokens, in the
                given order) and are cut out of the training text, so no merge crosses them.

        Pre-tokens are counted once; merges are learned over the unique pre-tokens with
        incremental pair counts (see :mod:`llmcourse.tokenizers.bpe_train`).
        """
        specials = list(dict.fromkeys(special_tokens))
        if vocab_size < 256 + len(specials):
            raise ValueError(
                f"vocab_size={vocab_size} is too small: it must hold the 256 byte tokens and "
                f"{len(specials)} special tokens (at least {256 + len(specials)})"
            )
        pre = PreTokenizer(specials)
        if isinstance(text_or_path, str):
            segments: Iterable[tuple[list[str], str | None]] = pre.segments(text_or_path)
        elif isinstance(text_or_path, os.PathLike):
            if not Path(text_or_path).is_file():
                raise FileNotFoundError(f"training file not found: {text_or_path}")
            segments = pre.stream_segments(read_text_chunks(text_or_path))
        else:
            segments = pre.stream_segments(text_or_path)
        counts: Counter[str] = Counter()
        for pieces, _ in segments:
            counts.update(pieces)
        word_counts = {word.encode("utf-8"): c for word, c in counts.items()}
        vocab, merges = train_bpe_merges(word_counts, vocab_size - len(specials))
        special_ids = {}
        for tok in specials:
            special_ids[tok] = len(vocab)
            vocab.append(tok.encode("utf-8"))
        return cls(vocab, merges, special_ids)

    @classmethod
    def from_gpt2_files(
        cls,
        encoder_json: PathLike,
        vocab_bpe: PathLike,
        special_tokens: Sequence[str] | None = None,
    ) -> ByteLevelBPE:
        """Load a tokenizer from GPT-2's ``encoder.json`` and ``vocab.bpe``.

        ``encoder.json`` maps each token, written in the GPT-2 byte alphabet, to its id;
        ``vocab.bpe`` lists one merge per line (``"Ġ t"``), in rank order, after a
        ``#version`` header. Entries of ``encoder.json`` that are neither a single byte nor
        the result of a merge (GPT-2: ``<|endoftext|>``) are special tokens, read as plain
        text; pass ``special_tokens`` to name them explicitly instead.
        """
        encoder_path, merges_path = Path(encoder_json), Path(vocab_bpe)
        for p in (encoder_path, merges_path):
            if not p.is_file():
                raise FileNotFoundError(f"GPT-2 tokenizer file not found: {p}")
        try:
            encoder: dict[str, int] = json.loads(encoder_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{encoder_path} is not valid JSON: {err}") from None
        if not isinstance(encoder, dict):
            raise ValueError(f"{encoder_path} must hold a JSON object token -> id")
        lines = merges_path.read_text(encoding="utf-8").split("\n")
        if lines and lines[0].startswith("#version"):
            lines = lines[1:]
        merge_strs: list[tuple[str, str]] = []
        for lineno, line in enumerate(lines, start=2):
            if not line:
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(f"{merges_path}:{lineno}: expected two tokens, got {line!r}")
            merge_strs.append((parts[0], parts[1]))

        n = len(encoder)
        ids = sorted(encoder.values())
        if ids != list(range(n)):
            raise ValueError(f"{encoder_path}: ids must be exactly 0..{n - 1}")
        merge_results = {a + b for a, b in merge_strs}
        byte_chars = set(bytes_to_unicode().values())
        if special_tokens is None:
            special = {
                tok: i
                for tok, i in encoder.items()
                if tok not in byte_chars and tok not in merge_results
            }
        else:
            missing = [t for t in special_tokens if t not in encoder]
            if missing:
                raise ValueError(f"special tokens {missing} are not in {encoder_path}")
            special = {tok: encoder[tok] for tok in special_tokens}

        vocab: list[bytes] = [b""] * n
        for tok, idx in encoder.items():
            vocab[idx] = tok.encode("utf-8") if tok in special else token_str_to_bytes(tok)
        merges: list[tuple[Pair, int]] = []
        for rank, (a, b) in enumerate(merge_strs):
            try:
                merges.append(((encoder[a], encoder[b]), encoder[a + b]))
            except KeyError as err:
                raise ValueError(
                    f"{merges_path}: merge {rank} ({a!r} {b!r}) uses {err.args[0]!r}, "
                    f"which is not in {encoder_path}"
                ) from None
        return cls(vocab, merges, special)

    @classmethod
    def gpt2(cls) -> ByteLevelBPE:
        """GPT-2's tokenizer, its two files obtained through :func:`llmcourse.data.fetch`
        (the mirror folder ``$LLMCOURSE_DATA_MIRROR``, the cache, or a verified download)."""
        from llmcourse.data import fetch

        return cls.from_gpt2_files(fetch("gpt2_encoder"), fetch("gpt2_vocab"))

    @classmethod
    def load(cls, path: PathLike) -> ByteLevelBPE:
        """Load from a folder holding ``encoder.json`` and ``vocab.bpe`` (see :meth:`save`)."""
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder} is not a folder; ByteLevelBPE.load expects a folder with "
                f"{_ENCODER_FILE} and {_MERGES_FILE} (use from_gpt2_files for other names)"
            )
        return cls.from_gpt2_files(folder / _ENCODER_FILE, folder / _MERGES_FILE)

    def save(self, path: PathLike) -> None:
        """Write ``encoder.json`` and ``vocab.bpe`` (GPT-2's format) into the folder ``path``."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        specials = {idx: text for text, idx in self.special_tokens.items()}
        encoder: dict[str, int] = {}
        for idx, tok in enumerate(self._vocab):
            key = specials[idx] if idx in specials else token_bytes_to_str(tok)
            if key in encoder:
                raise ValueError(
                    f"tokens {encoder[key]} and {idx} are both written as {key!r}; "
                    "the GPT-2 file format needs distinct tokens"
                )
            encoder[key] = idx
        lines = [_MERGES_HEADER]
        for (a, b), _ in self._merge_list:
            lines.append(
                f"{token_bytes_to_str(self._vocab[a])} {token_bytes_to_str(self._vocab[b])}"
            )
        (folder / _ENCODER_FILE).write_text(
            json.dumps(encoder, ensure_ascii=False), encoding="utf-8"
        )
        (folder / _MERGES_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        """Number of token ids (byte tokens, merged tokens and special tokens)."""
        return len(self._vocab)

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        """The merges as byte-string pairs, in rank order."""
        return [(self._vocab[a], self._vocab[b]) for (a, b), _ in self._merge_list]

    def token_bytes(self, idx: int) -> bytes:
        """The bytes of token ``idx``."""
        self._check_id(idx)
        return self._vocab[idx]

    def _check_id(self, idx: int) -> None:
        if not 0 <= idx < len(self._vocab):
            raise ValueError(f"token id {idx} is outside the vocabulary 0..{len(self._vocab) - 1}")

    # ------------------------------------------------------------------ encoding
    def _bpe(self, piece: str) -> list[int]:
        """Apply the merges inside one pre-token, lowest rank first."""
        ids = [self._byte_ids[b] for b in piece.encode("utf-8")]
        ranks = self._ranks
        while len(ids) > 1:
            best: tuple[int, int] | None = None
            best_pair: Pair | None = None
            for pair in pairwise(ids):
                found = ranks.get(pair)
                if found is not None and (best is None or found[0] < best[0]):
                    best, best_pair = found, pair
            if best is None or best_pair is None:
                break
            first, second = best_pair
            merged: list[int] = []
            i, n = 0, len(ids)
            while i < n:
                if i + 1 < n and ids[i] == first and ids[i + 1] == second:
                    merged.append(best[1])
                    i += 2
                else:
                    merged.append(ids[i])
                    i += 1
            ids = merged
        return ids

    def _encode_segments(
        self, segments: Iterable[tuple[list[str], str | None]]
    ) -> Iterator[list[int]]:
        cache, bpe, specials = self._cache, self._bpe, self.special_tokens
        for pieces, special in segments:
            out: list[int] = []
            for piece in pieces:
                ids = cache.get(piece)
                if ids is None:
                    ids = bpe(piece)
                    if len(cache) >= self._cache_size:
                        cache.clear()
                    cache[piece] = ids
                out.extend(ids)
            if special is not None:
                out.append(specials[special])
            yield out

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        """Token ids of ``text``.

        Special tokens written in the text (``"<|endoftext|>"``) become their ids, as in
        ``transformers``' GPT-2 tokenizer; with ``allow_special=False`` they are encoded as
        ordinary text (use this for untrusted input).
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        if allow_special:
            segments: Iterable[tuple[list[str], str | None]] = self._pre.segments(text)
        else:
            segments = [(self._pre.pieces(text), None)]
        out: list[int] = []
        for ids in self._encode_segments(segments):
            out.extend(ids)
        return out

    def iter_encode_file(
        self, path: PathLike, *, chunk_chars: int = 1 << 20
    ) -> Iterator[list[int]]:
        """Encode a UTF-8 file piece by piece, never holding more than about one chunk.

        Yields lists of ids whose concatenation equals ``encode(Path(path).read_text())``:
        pre-tokens and special tokens that straddle a chunk boundary are held back until the
        next chunk completes them.
        """
        yield from self.iter_encode_chunks(read_text_chunks(path, chunk_chars))

    def iter_encode_chunks(self, chunks: Iterable[str]) -> Iterator[list[int]]:
        """Encode a stream of text chunks as if they were one string (see iter_encode_file)."""
        for ids in self._encode_segments(self._pre.stream_segments(chunks)):
            if ids:
                yield ids

    def encode_file_to(
        self, path: PathLike, out_path: PathLike, *, dtype: str = "auto", chunk_chars: int = 1 << 20
    ) -> int:
        """Stream-encode ``path`` into a flat binary array of token ids; return the token count.

        ``dtype="auto"`` picks ``uint16`` when every id fits (vocabularies up to 65,536, GPT-2
        included), else ``uint32``. Read the result back with
        ``numpy.memmap(out_path, dtype=..., mode="r")``.
        """
        if dtype == "auto":
            dtype = "uint16" if self.vocab_size <= 1 << 16 else "uint32"
        np_dtype = np.dtype(dtype)
        if np.iinfo(np_dtype).max < self.vocab_size - 1:
            raise ValueError(f"dtype {dtype} cannot hold ids up to {self.vocab_size - 1}")
        total = 0
        with open(out_path, "wb") as f:
            for ids in self.iter_encode_file(path, chunk_chars=chunk_chars):
                np.asarray(ids, dtype=np_dtype).tofile(f)
                total += len(ids)
        return total

    # ------------------------------------------------------------------ decoding
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Concatenated bytes of the tokens (may end in the middle of a UTF-8 character)."""
        id_list = _as_int_list(ids)
        if id_list and (min(id_list) < 0 or max(id_list) >= len(self._vocab)):
            bad = next(i for i in id_list if not 0 <= i < len(self._vocab))
            self._check_id(bad)
        vocab = self._vocab
        return b"".join([vocab[i] for i in id_list])

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text of ``ids``; invalid UTF-8 (e.g. half an emoji) becomes U+FFFD by default."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def __repr__(self) -> str:
        return (
            f"ByteLevelBPE(vocab_size={self.vocab_size}, merges={len(self._merge_list)}, "
            f"special_tokens={list(self.special_tokens)})"
        )
