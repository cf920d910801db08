"""Byte-level building blocks shared by BPE training and encoding.

Three pieces live here:

* the GPT-2 byte <-> printable-character table, used to write token byte strings into the
  text files ``encoder.json`` and ``vocab.bpe``;
* the GPT-2 pre-tokenisation pattern, which cuts text into "words" (a letter run with its
  leading space, a number run, a punctuation run, whitespace, English contractions) that BPE
  never merges across;
* :class:`PreTokenizer`, which first cuts text at special tokens and then applies the pattern,
  on a whole string or on a stream of chunks (a large file) with identical results.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

import regex

__all__ = [
    "GPT2_SPLIT_PATTERN",
    "bytes_to_unicode",
    "unicode_to_bytes",
    "token_bytes_to_str",
    "token_str_to_bytes",
    "PreTokenizer",
]

#: GPT-2's pre-tokenisation pattern: contractions, an optional space followed by letters,
#: numbers or other symbols, then whitespace. ``\s+(?!\S)`` leaves the last space of a run to
#: the following word, so " world" keeps its leading space.
GPT2_SPLIT_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Map each of the 256 byte values to one printable Unicode character.

    Bytes that are already visible Latin-1 characters keep their own character; the others
    (control bytes, space, ...) are moved to code points 256 and up, in byte order. This is
    the table GPT-2's ``encoder.json`` and ``vocab.bpe`` are written with (space -> "Ġ",
    newline -> "Ċ").
    """
    visible = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table: dict[int, str] = {b: chr(b) for b in visible}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return dict(sorted(table.items()))


@functools.lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    """Inverse of :func:`bytes_to_unicode`."""
    return {ch: b for b, ch in bytes_to_unicode().items()}


def token_bytes_to_str(data: bytes) -> str:
    """Write a token's bytes in the printable GPT-2 alphabet (as stored in ``encoder.json``)."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in data)


def token_str_to_bytes(token: str) -> bytes:
    """Read a token written in the GPT-2 alphabet back into bytes.

    Raises ``ValueError`` naming the character when ``token`` uses a character outside the
    256-character alphabet (such a string cannot come from :func:`token_bytes_to_str`).
    """
    table = unicode_to_bytes()
    try:
        return bytes(table[ch] for ch in token)
    except KeyError as err:
        raise ValueError(
            f"token {token!r} contains {err.args[0]!r}, which is not in the GPT-2 byte alphabet"
        ) from None


class PreTokenizer:
    """Cut text into special tokens and pre-tokens (the units BPE works inside).

    Args:
        special_tokens: strings that are never split and never merged with their neighbours,
            e.g. ``"<|endoftext|>"``. When two overlap, the longer one wins.
        pattern: the pre-tokenisation regular expression (``regex`` syntax).

    Both :meth:`segments` and :meth:`stream_segments` yield ``(pieces, special)`` pairs: a list
    of pre-token strings followed by the special token that ends them (``None`` for the last
    segment).
    """

    def __init__(
        self, special_tokens: Iterable[str] = (), pattern: str = GPT2_SPLIT_PATTERN
    ) -> None:
        self.special_tokens = tuple(dict.fromkeys(special_tokens))
        for tok in self.special_tokens:
            if not tok:
                raise ValueError("special tokens must be non-empty strings")
        self.pattern = regex.compile(pattern)
        if self.special_tokens:
            by_length = sorted(self.special_tokens, key=len, reverse=True)
            self._special_re: regex.Pattern[str] | None = regex.compile(
                "|".join(regex.escape(tok) for tok in by_length)
            )
            self._max_special = len(by_length[0])
        else:
            self._special_re = None
            self._max_special = 0

    def pieces(self, text: str) -> list[str]:
        """Pre-tokens of ``text`` by the pattern alone (special tokens are not looked for)."""
        return self.pattern.findall(text)

    def segments(self, text: str) -> Iterator[tuple[list[str], str | None]]:
        """Yield ``(pieces, special)`` for a whole string."""
        if self._special_re is None:
            yield self.pattern.findall(text), None
            return
        start = 0
        for match in self._special_re.finditer(text):
            yield self.pattern.findall(text, start, match.start()), match.group()
            start = match.end()
        yield self.pattern.findall(text, start), None

    def stream_segments(self, chunks: Iterable[str]) -> Iterator[tuple[list[str], str | None]]:
        """Like :meth:`segments` on ``"".join(chunks)``, holding only about one chunk in memory.

        After each chunk, everything before a *safe cut* is emitted and the rest is kept for
        the next chunk. How the pattern splits a pre-token can depend on up to two characters
        after it (``"'ll"`` against ``"'"``, a whitespace run before a word), and a special
        token may be cut off by the buffer's end, so the cut is the start of a pre-token that
        lies at least ``max(longest special, 1) + 1`` characters before the buffer's end.
        """
        margin = max(self._max_special, 1) + 1
        buffer = ""
        for chunk in chunks:
            if not chunk:
                continue
            buffer += chunk
            limit = len(buffer) - margin
            start = 0
            if self._special_re is not None:
                for match in self._special_re.finditer(buffer):
                    if match.start() + self._max_special > len(buffer):
                        break  # a longer special token starting here might run past the end
                    yield self.pattern.findall(buffer, start, match.start()), match.group()
                    start = match.end()
            pieces, cut = self._stable_prefix(buffer, start, limit)
            if pieces:
                yield pieces, None
            buffer = buffer[cut:]
        if buffer:
            yield from self.segments(buffer)

    def _stable_prefix(self, buffer: str, start: int, limit: int) -> tuple[list[str], int]:
        """Pre-tokens of ``buffer[start:]`` that later text cannot change, and where they end.

        The cut is the start of the last pre-token beginning at or before ``limit``.
        """
        if start > limit:
            return [], start
        pieces: list[str] = []
        cut = start
        for match in self.pattern.finditer(buffer, start):
            if match.start() > limit:
                break
            if match.start() > cut:
                pieces.append(buffer[cut : match.start()])
                cut = match.start()
        return pieces, cut
