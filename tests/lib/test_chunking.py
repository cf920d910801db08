"""Chunkers: exact character offsets, sizes, overlaps and structure (sentences, Markdown)."""

from __future__ import annotations

import pytest

from llmcourse.retrieval import (
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

PROSE = (
    "Dr. Smith arrived at 9 a.m. on Monday. He brought the results, e.g. the BM25 scores! "
    "Were they good? J. Doe thought so.\n\n"
    "A second paragraph starts here. It has two sentences.\n\n"
    "Third paragraph, one sentence only."
)

MARKDOWN = """Preamble before any heading.

# Retrieval

Intro to retrieval.

## BM25

BM25 scores terms.

```python
# not a heading: inside a code fence
x = 1
```

### Saturation

k1 controls saturation.

## Dense

Embeddings and cosine.

# Agents

Tools and loops.
"""


def assert_offsets(text: str, chunks: list[Chunk]) -> None:
    for c in chunks:
        assert text[c.start : c.end] == c.text, f"chunk text differs from text[{c.start}:{c.end}]"


class CharTok:
    """A lossless character tokenizer (ids = code points)."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


class ByteTok:
    """A lossless byte-level tokenizer: multi-byte UTF-8 characters span several tokens."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class LowerTok(CharTok):
    """A lossy tokenizer: lowercases."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text.lower()]


def test_fixed_windows_and_overlap():
    chunks = chunk_fixed("abcdefgh", size=4, overlap=1, doc_id="d")
    assert [c.text for c in chunks] == ["abcd", "defg", "gh"]
    assert [(c.start, c.end) for c in chunks] == [(0, 4), (3, 7), (6, 8)]
    assert all(c.doc_id == "d" for c in chunks)
    # exact fit: no trailing window contained in the previous one
    assert [c.text for c in chunk_fixed("abcdef", 3)] == ["abc", "def"]
    assert chunk_fixed("", 5) == []


def test_fixed_covers_text_and_shares_overlap():
    text = PROSE * 3
    chunks = chunk_fixed(text, size=50, overlap=10)
    assert_offsets(text, chunks)
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.start == a.end - 10
        assert a.text[-10:] == b.text[:10]


@pytest.mark.parametrize("size,overlap", [(0, 0), (5, 5), (5, 7), (5, -1)])
def test_fixed_rejects_bad_sizes(size, overlap):
    with pytest.raises(ValueError, match="size|overlap"):
        chunk_fixed("hello world", size, overlap)


def test_tokens_char_tokenizer():
    text = "hello world, this is token chunking"
    chunks = chunk_tokens(text, CharTok(), size=10, overlap=3)
    assert_offsets(text, chunks)
    assert [c.text for c in chunks][:2] == [text[0:10], text[7:17]]
    assert chunks[0].metadata == {"token_start": 0, "token_end": 10}
    assert chunks[-1].end == len(text)


def test_tokens_byte_tokenizer_moves_edges_off_split_characters():
    text = "naïve café — résumé " * 5  # ï, é, — take 2-3 bytes
    tok = ByteTok()
    chunks = chunk_tokens(text, tok, size=7, overlap=2)
    assert_offsets(text, chunks)
    assert chunks[-1].end == len(text)
    for c in chunks:
        # every chunk is whole characters, within about one window of bytes
        assert tok.decode(tok.encode(c.text)) == c.text
        assert len(c.text.encode()) <= 7 + 3


def test_tokens_with_offsets_fn():
    text = "one two three four five"

    def offsets(t: str) -> list[tuple[int, int]]:  # whitespace "tokens"
        out, pos = [], 0
        for w in t.split():
            s = t.index(w, pos)
            out.append((s, s + len(w)))
            pos = s + len(w)
        return out

    chunks = chunk_tokens(text, None, size=2, overlap=1, offsets_fn=offsets)
    assert [c.text for c in chunks] == ["one two", "two three", "three four", "four five"]


def test_tokens_lossy_tokenizer_is_a_clear_error():
    with pytest.raises(ValueError, match="lossless"):
        chunk_tokens("Hello World", LowerTok(), size=4)


def test_split_sentences_abbreviations_and_initials():
    spans = split_sentences(PROSE)
    sentences = [PROSE[s:e] for s, e in spans]
    assert sentences[:4] == [
        "Dr. Smith arrived at 9 a.m. on Monday.",
        "He brought the results, e.g. the BM25 scores!",
        "Were they good?",
        "J. Doe thought so.",
    ]
    assert sentences[-1] == "Third paragraph, one sentence only."


def test_sentence_chunks_keep_sentences_whole():
    chunks = chunk_sentences(PROSE, max_size=100, doc_id=7)
    assert_offsets(PROSE, chunks)
    sentences = {PROSE[s:e] for s, e in split_sentences(PROSE)}
    for c in chunks:
        assert len(c.text) <= 100
        # every chunk starts at a sentence start and ends at a sentence end
        assert any(c.text.startswith(s) for s in sentences)
        assert any(c.text.endswith(s) for s in sentences)


def test_sentence_overlap_repeats_sentences():
    chunks = chunk_sentences(PROSE, max_size=90, overlap=1)
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.start < a.end  # the last sentence of a opens b


def test_long_sentence_is_split_at_words():
    text = "word " * 60  # one 300-character "sentence"
    chunks = chunk_sentences(text, max_size=50)
    assert_offsets(text, chunks)
    assert all(len(c.text) <= 50 and not c.text.startswith(" ") for c in chunks)
    assert all(c.text.replace("word", "").strip() == "" for c in chunks)  # no cut words


def test_length_fn_counts_tokens():
    words = lambda s: len(s.split())  # noqa: E731
    chunks = chunk_sentences(PROSE, max_size=12, length_fn=words)
    assert all(words(c.text) <= 12 for c in chunks)


def test_paragraph_chunks():
    assert [PROSE[s:e][:8] for s, e in split_paragraphs(PROSE)] == [
        "Dr. Smit",
        "A second",
        "Third pa",
    ]
    chunks = chunk_paragraphs(PROSE, max_size=100)
    assert_offsets(PROSE, chunks)
    # paragraph 1 (120 chars) is too long: split by sentences; paragraphs 2 and 3 fit together
    assert (
        chunks[-1].text
        == "A second paragraph starts here. It has two sentences.\n\nThird paragraph, one sentence only."
    )
    assert all(len(c.text) <= 100 for c in chunks)
    big = chunk_paragraphs(PROSE, max_size=10_000)
    assert len(big) == 1 and big[0].text == PROSE.strip()


def test_markdown_heading_paths():
    chunks = chunk_markdown(MARKDOWN, max_size=1000, doc_id="page")
    assert_offsets(MARKDOWN, chunks)
    paths = [c.metadata["headings"] for c in chunks]
    assert paths == [
        [],
        ["Retrieval"],
        ["Retrieval", "BM25"],
        ["Retrieval", "BM25", "Saturation"],
        ["Retrieval", "Dense"],
        ["Agents"],
    ]
    bm25 = chunks[2]
    assert bm25.text.startswith("## BM25") and "# not a heading" in bm25.text
    assert chunks[4].with_context() == "Retrieval > Dense\n\n## Dense\n\nEmbeddings and cosine."
    assert chunks[0].with_context() == "Preamble before any heading."


def test_markdown_long_section_split_keeps_metadata():
    body = "\n\n".join(f"Paragraph {i} has some words in it." for i in range(20))
    text = f"# Top\n\n## Long\n\n{body}\n"
    chunks = chunk_markdown(text, max_size=120)
    assert_offsets(text, chunks)
    long_chunks = [c for c in chunks if c.metadata["headings"] == ["Top", "Long"]]
    assert len(long_chunks) > 3 and all(len(c.text) <= 120 for c in long_chunks)
    assert all(c.metadata["level"] == 2 for c in long_chunks)


def test_markdown_max_level():
    chunks = chunk_markdown(MARKDOWN, max_level=1)
    assert [c.metadata["headings"] for c in chunks] == [[], ["Retrieval"], ["Agents"]]


def test_chunk_corpus_assigns_doc_ids():
    chunks = chunk_corpus({"a": "one. two.", "b": "three."}, chunk_sentences, max_size=6)
    assert [(c.doc_id, c.text) for c in chunks] == [("a", "one."), ("a", "two."), ("b", "three.")]
    chunks = chunk_corpus(["x y", "z"], chunk_fixed, size=10)
    assert [c.doc_id for c in chunks] == [0, 1]
    with pytest.raises(TypeError, match="document"):
        chunk_corpus([b"bytes"], chunk_fixed, size=3)
