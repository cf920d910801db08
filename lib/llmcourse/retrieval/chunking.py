"""Split documents into chunks for retrieval.

Every chunker returns :class:`Chunk` objects whose ``start``/``end`` are character offsets
into the original document, so ``doc[chunk.start:chunk.end] == chunk.text`` always holds
(the tests check it). Sizes are measured by ``length_fn``: characters by default
(``len``), or tokens with ``length_fn=lambda s: len(tokenizer.encode(s))``.

Chunkers, from structure-blind to structure-aware:

* :func:`chunk_fixed` -- windows of ``size`` characters, ``overlap`` shared between neighbours.
* :func:`chunk_tokens` -- windows of ``size`` tokens of a given tokenizer.
* :func:`chunk_sentences` -- whole sentences packed greedily up to ``max_size``.
* :func:`chunk_paragraphs` -- whole paragraphs (blank-line separated) packed greedily.
* :func:`chunk_markdown` -- one section per heading, with the heading path in
  ``metadata["headings"]``; long sections are split by paragraphs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "Chunk",
    "chunk_fixed",
    "chunk_tokens",
    "chunk_sentences",
    "chunk_paragraphs",
    "chunk_markdown",
    "chunk_corpus",
    "split_sentences",
    "split_paragraphs",
]

LengthFn = Callable[[str], int]
Span = tuple[int, int]


@dataclass(frozen=True)
class Chunk:
    """A piece of a document.

    Attributes:
        text: the chunk's text, exactly ``document[start:end]``.
        doc_id: identifier of the source document (whatever the caller passed).
        start: character offset of the first character in the document.
        end: character offset one past the last character.
        metadata: extra facts, e.g. ``{"headings": ["Intro", "Setup"]}`` from
            :func:`chunk_markdown` or ``{"token_start": 0, "token_end": 128}`` from
            :func:`chunk_tokens`.
    """

    text: str
    doc_id: Hashable | None
    start: int
    end: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def with_context(self, separator: str = " > ") -> str:
        """The text prefixed by its heading path (when it has one), e.g. for embedding.

        ``"Setup > Colab\\n\\nOpen the notebook..."``. Without headings, just ``text``.
        """
        headings = self.metadata.get("headings") or []
        if not headings:
            return self.text
        return separator.join(headings) + "\n\n" + self.text


class TokenizerLike(Protocol):
    """The part of the course tokenizer protocol that :func:`chunk_tokens` needs."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


# --------------------------------------------------------------------------- helpers


def _check_size(max_size: int, name: str = "max_size") -> None:
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        raise ValueError(f"{name} must be a positive int, got {max_size!r}")


def _check_overlap(overlap: int, size: int, unit: str) -> None:
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"overlap must be an int >= 0, got {overlap!r}")
    if overlap >= size:
        raise ValueError(
            f"overlap ({overlap} {unit}) must be smaller than size ({size} {unit}); "
            "otherwise the window never advances"
        )


def _strip_span(text: str, start: int, end: int) -> Span:
    """Shrink ``[start, end)`` so that it neither starts nor ends with whitespace."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _make_chunks(
    text: str,
    spans: Iterable[Span],
    doc_id: Hashable | None,
    metadata: Mapping[str, Any] | None = None,
) -> list[Chunk]:
    meta = dict(metadata or {})
    return [Chunk(text[s:e], doc_id, s, e, dict(meta)) for s, e in spans if e > s]


def _split_by_length(
    text: str, start: int, end: int, max_size: int, length_fn: LengthFn
) -> list[Span]:
    """Cut ``text[start:end]`` into pieces of at most ``max_size`` (per ``length_fn``).

    Each piece is as long as allowed, then pulled back to the last whitespace in its second
    half so that words stay whole when possible. ``length_fn`` must grow with the text.
    """
    spans: list[Span] = []
    s = start
    while True:
        s, end = _strip_span(text, s, end)
        if s >= end:
            return spans
        if length_fn(text[s:end]) <= max_size:
            spans.append((s, end))
            return spans
        lo, hi = s + 1, end  # the longest prefix that fits lies in [lo, hi]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if length_fn(text[s:mid]) <= max_size:
                lo = mid
            else:
                hi = mid - 1
        cut = lo
        space = max(text.rfind(" ", s, cut), text.rfind("\n", s, cut))
        if space > s + (cut - s) // 2:
            cut = space
        piece = _strip_span(text, s, cut)
        if piece[1] > piece[0]:
            spans.append(piece)
        s = cut


def _pack(
    text: str,
    units: Sequence[Span],
    max_size: int,
    length_fn: LengthFn,
    overlap: int,
    split_long: Callable[[int, int], list[Span]],
) -> list[Span]:
    """Greedily join consecutive ``units`` into spans of at most ``max_size``.

    A unit that alone exceeds ``max_size`` is handed to ``split_long``. With ``overlap``
    > 0, each new span starts ``overlap`` units before the previous one ended (always
    advancing by at least one unit).
    """
    spans: list[Span] = []
    i, n = 0, len(units)
    while i < n:
        s, e = units[i]
        if length_fn(text[s:e]) > max_size:
            spans.extend(split_long(s, e))
            i += 1
            continue
        j = i
        while j + 1 < n and length_fn(text[s : units[j + 1][1]]) <= max_size:
            j += 1
        spans.append((s, units[j][1]))
        if j + 1 >= n:
            break
        i = max(j + 1 - overlap, i + 1)
    return spans


# --------------------------------------------------------------------------- splitters

# Words that end with a period without ending a sentence.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e al fig eq no vol cf approx dept".split()
)
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s)|\n\s*\n")


def split_sentences(text: str) -> list[Span]:
    """Character spans of the sentences of ``text`` (whitespace trimmed).

    A sentence ends at ``.``, ``!`` or ``?`` (plus closing quotes/brackets) followed by
    whitespace, or at a blank line. A period does not end a sentence after a common
    abbreviation (``Dr.``, ``e.g.``), after a single letter (an initial, ``J. Smith``), or
    when the next word starts lowercase. A rule-based splitter: good for prose, not perfect.
    """
    spans: list[Span] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        end = m.end()
        if m.group().startswith("."):
            word = re.search(r"([\w.]+)$", text[start : m.start()])
            prev = word.group(1).lower().rstrip(".") if word else ""
            nxt = re.match(r"\s*(\S)", text[end:])
            if (
                prev in _ABBREVIATIONS
                or (len(prev) == 1 and prev.isalpha())
                or (nxt is not None and nxt.group(1).islower())
            ):
                continue
        span = _strip_span(text, start, end)
        if span[1] > span[0]:
            spans.append(span)
        start = end
    span = _strip_span(text, start, len(text))
    if span[1] > span[0]:
        spans.append(span)
    return spans


_BLANK_LINE = re.compile(r"\n[ \t]*\n\s*")


def split_paragraphs(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    """Character spans of the blank-line separated paragraphs of ``text[start:end]``."""
    end = len(text) if end is None else end
    spans: list[Span] = []
    pos = start
    for m in _BLANK_LINE.finditer(text, start, end):
        span = _strip_span(text, pos, m.start())
        if span[1] > span[0]:
            spans.append(span)
        pos = m.end()
    span = _strip_span(text, pos, end)
    if span[1] > span[0]:
        spans.append(span)
    return spans


# --------------------------------------------------------------------------- chunkers


def chunk_fixed(
    text: str, size: int, overlap: int = 0, doc_id: Hashable | None = None
) -> list[Chunk]:
    """Windows of ``size`` characters; neighbours share ``overlap`` characters.

    Window ``i`` covers ``[i * (size - overlap), i * (size - overlap) + size)``; the last one
    is shorter when the text runs out, and no window lies entirely inside the previous one.
    Example: ``chunk_fixed("abcdefgh", 4, 1)`` -> ``"abcd", "defg", "gh"``.
    """
    _check_size(size, "size")
    _check_overlap(overlap, size, "characters")
    step = size - overlap
    spans = []
    for s in range(0, max(len(text), 1), step):
        e = min(s + size, len(text))
        spans.append((s, e))
        if e == len(text):
            break
    return _make_chunks(text, spans, doc_id)


def _token_char_offsets(
    text: str, ids: Sequence[int], decode: Callable[[list[int]], str], positions: Iterable[int]
) -> dict[int, int]:
    """Map token positions to character offsets by decoding the pieces between them.

    A position that falls inside a character (a byte-level BPE token holding half of a
    multi-byte UTF-8 character) moves forward to the next token boundary that is also a
    character boundary (at most 4 tokens). Raises ``ValueError`` when the tokenizer does not
    round-trip the text (decode(encode(text)) != text, e.g. a lowercasing WordPiece).
    """
    out: dict[int, int] = {}
    cur_tok, cur_char = 0, 0
    for pos in sorted(set(positions)):
        if pos <= cur_tok:
            out[pos] = cur_char
            continue
        for cand in range(pos, min(pos + 4, len(ids)) + 1):
            piece = decode(list(ids[cur_tok:cand]))
            if text.startswith(piece, cur_char):
                cur_tok, cur_char = cand, cur_char + len(piece)
                out[pos] = cur_char
                break
        else:
            raise ValueError(
                f"the tokenizer does not reproduce the text: decoding tokens {cur_tok}..{pos} "
                f"gives {decode(list(ids[cur_tok:pos]))[:40]!r}, but the text at character "
                f"{cur_char} reads {text[cur_char : cur_char + 40]!r}. chunk_tokens needs a "
                "lossless tokenizer (e.g. byte-level BPE); for others pass offsets_fn"
            )
    return out


def chunk_tokens(
    text: str,
    tokenizer: TokenizerLike | None,
    size: int,
    overlap: int = 0,
    doc_id: Hashable | None = None,
    *,
    offsets_fn: Callable[[str], Sequence[tuple[int, int]]] | None = None,
) -> list[Chunk]:
    """Windows of ``size`` tokens; neighbours share ``overlap`` tokens.

    Args:
        text: the document.
        tokenizer: anything with ``encode(str) -> list[int]`` and ``decode(list[int]) -> str``
            that round-trips text (the course's ``ByteLevelBPE`` or ``CharTokenizer``).
        size: tokens per window; ``overlap``: tokens shared by neighbouring windows.
        doc_id: stored on each chunk.
        offsets_fn: alternative to ``tokenizer`` for lossy tokenizers: a function giving the
            ``(start, end)`` character span of every token (e.g. from a Hugging Face fast
            tokenizer's ``return_offsets_mapping=True``).

    Each chunk's ``metadata`` holds ``token_start``/``token_end`` (token positions). With
    byte-level BPE a window edge inside a multi-byte character moves to the next character.
    """
    _check_size(size, "size")
    _check_overlap(overlap, size, "tokens")
    step = size - overlap
    if offsets_fn is not None:
        offsets = list(offsets_fn(text))
        n = len(offsets)
        windows = _token_windows(n, size, step)
        spans = [(offsets[a][0], offsets[b - 1][1]) for a, b in windows]
    elif tokenizer is not None:
        ids = tokenizer.encode(text)
        n = len(ids)
        windows = _token_windows(n, size, step)
        char_at = _token_char_offsets(text, ids, tokenizer.decode, [p for w in windows for p in w])
        spans = [(char_at[a], char_at[b]) for a, b in windows]
    else:
        raise ValueError("chunk_tokens needs a tokenizer or an offsets_fn")
    return [
        Chunk(text[s:e], doc_id, s, e, {"token_start": a, "token_end": b})
        for (s, e), (a, b) in zip(spans, windows, strict=True)
        if e > s
    ]


def _token_windows(n: int, size: int, step: int) -> list[tuple[int, int]]:
    windows = []
    for a in range(0, n, step):
        b = min(a + size, n)
        windows.append((a, b))
        if b == n:
            break
    return windows


def chunk_sentences(
    text: str,
    max_size: int = 500,
    overlap: int = 0,
    doc_id: Hashable | None = None,
    *,
    length_fn: LengthFn = len,
) -> list[Chunk]:
    """Pack whole sentences (see :func:`split_sentences`) into chunks of at most ``max_size``.

    ``overlap`` counts sentences repeated at the start of the next chunk. A single sentence
    longer than ``max_size`` is cut at word boundaries. ``metadata`` is empty.
    """
    _check_size(max_size)
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"overlap (sentences) must be an int >= 0, got {overlap!r}")

    def split_long(s: int, e: int) -> list[Span]:
        return _split_by_length(text, s, e, max_size, length_fn)

    spans = _pack(text, split_sentences(text), max_size, length_fn, overlap, split_long)
    return _make_chunks(text, spans, doc_id)


def _paragraph_spans(
    text: str, start: int, end: int, max_size: int, length_fn: LengthFn
) -> list[Span]:
    """Pack the paragraphs of ``text[start:end]``; long paragraphs fall back to sentences."""

    def split_sentence(s: int, e: int) -> list[Span]:
        return _split_by_length(text, s, e, max_size, length_fn)

    def split_paragraph(s: int, e: int) -> list[Span]:
        sentences = [(a + s, b + s) for a, b in split_sentences(text[s:e])]
        return _pack(text, sentences, max_size, length_fn, 0, split_sentence)

    units = split_paragraphs(text, start, end)
    return _pack(text, units, max_size, length_fn, 0, split_paragraph)


def chunk_paragraphs(
    text: str,
    max_size: int = 1000,
    doc_id: Hashable | None = None,
    *,
    length_fn: LengthFn = len,
) -> list[Chunk]:
    """Pack whole paragraphs (blank-line separated) into chunks of at most ``max_size``.

    A paragraph longer than ``max_size`` is split into sentence-packed chunks, and a sentence
    longer than that at word boundaries. ``metadata`` is empty.
    """
    _check_size(max_size)
    return _make_chunks(text, _paragraph_spans(text, 0, len(text), max_size, length_fn), doc_id)


_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^[ \t]*(```|~~~)")


def _markdown_sections(text: str, max_level: int) -> list[tuple[int, int, list[str], int]]:
    """``(start, end, heading_path, level)`` for every section of a Markdown text.

    ATX headings (``#`` to ``######``) outside fenced code blocks open a section; the
    heading path holds the titles of the enclosing headings and the section's own.
    Text before the first heading is a section with an empty path (level 0).
    """
    sections: list[tuple[int, int, list[str], int]] = []
    path: list[tuple[int, str]] = []  # (level, title) of the open headings
    sec_start, sec_path, sec_level = 0, [], 0
    in_fence: str | None = None
    pos = 0
    for line in text.splitlines(keepends=True):
        fence = _FENCE.match(line)
        if fence:
            marker = fence.group(1)
            in_fence = None if in_fence == marker else (in_fence or marker)
        heading = None if in_fence or fence else _HEADING.match(line.rstrip("\r\n"))
        if heading and len(heading.group(1)) <= max_level:
            sections.append((sec_start, pos, sec_path, sec_level))
            level, title = len(heading.group(1)), heading.group(2).strip()
            path = [(lv, t) for lv, t in path if lv < level] + [(level, title)]
            sec_start, sec_path, sec_level = pos, [t for _, t in path], level
        pos += len(line)
    sections.append((sec_start, len(text), sec_path, sec_level))
    return sections


def chunk_markdown(
    text: str,
    max_size: int = 1000,
    doc_id: Hashable | None = None,
    *,
    max_level: int = 6,
    length_fn: LengthFn = len,
) -> list[Chunk]:
    """One chunk per Markdown section, keeping the heading path as metadata.

    A section runs from an ATX heading (``#`` ... ``######``, level <= ``max_level``) to the
    next one; its text includes the heading line. Headings inside fenced code blocks are
    ignored. A section longer than ``max_size`` is split by paragraphs (then sentences);
    every piece keeps the section's ``metadata``: ``{"headings": [...], "level": int}``,
    e.g. ``["Setup", "Colab"]`` for a ``## Colab`` under ``# Setup``.
    """
    _check_size(max_size)
    if not 1 <= max_level <= 6:
        raise ValueError(f"max_level must be in 1..6, got {max_level}")
    chunks: list[Chunk] = []
    for start, end, headings, level in _markdown_sections(text, max_level):
        s, e = _strip_span(text, start, end)
        if e <= s:
            continue
        meta = {"headings": list(headings), "level": level}
        if length_fn(text[s:e]) <= max_size:
            spans = [(s, e)]
        else:
            spans = _paragraph_spans(text, s, e, max_size, length_fn)
        chunks.extend(_make_chunks(text, spans, doc_id, meta))
    return chunks


def chunk_corpus(
    documents: Mapping[Hashable, str] | Sequence[str],
    chunker: Callable[..., list[Chunk]],
    **kwargs: Any,
) -> list[Chunk]:
    """Apply ``chunker`` to every document and concatenate the chunks.

    ``documents`` is a mapping ``doc_id -> text`` or a sequence of texts (``doc_id`` is then
    the position). ``kwargs`` go to the chunker, e.g.
    ``chunk_corpus(pages, chunk_markdown, max_size=800)``.
    """
    items = documents.items() if isinstance(documents, Mapping) else enumerate(documents)
    out: list[Chunk] = []
    for doc_id, text in items:
        if not isinstance(text, str):
            raise TypeError(f"document {doc_id!r} is a {type(text).__name__}, expected str")
        out.extend(chunker(text, doc_id=doc_id, **kwargs))
    return out
