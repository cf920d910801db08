"""Tests of llmcourse.datasets: the shipped course-page snapshot and its questions, relevance
by character overlap, the snapshot builder, and the fact-card generator of chapter 10."""

from __future__ import annotations

import json
import random

import pytest

from llmcourse.datasets import (
    RELATIONS,
    RagQuestion,
    collect_course_pages,
    evidence_span,
    fact_cards,
    fact_questions,
    load_course_pages,
    load_rag_questions,
    make_creatures,
    reader_example,
    reader_prompt,
    reader_worlds,
    relevant_chunk_ids,
)
from llmcourse.datasets import course_pages as cp
from llmcourse.retrieval import Chunk, chunk_corpus, chunk_fixed, chunk_markdown

# ----------------------------------------------------------------------------- shipped data


def test_snapshot_and_questions_are_consistent():
    pages = load_course_pages()
    questions = load_rag_questions()
    assert len(questions) >= 50
    assert len({q.id for q in questions}) == len(questions)
    assert {d.split("/")[0] for d in pages} == {"book", "chapters", "library"}
    for q in questions:
        start, end = evidence_span(pages, q)
        assert pages[q.doc_id][start:end] == q.evidence
        assert q.question.endswith("?") and q.answer


@pytest.mark.parametrize("size", [80, 300, 600, 2000])
def test_every_question_has_a_relevant_chunk_for_any_chunking(size):
    pages = load_course_pages()
    questions = load_rag_questions()
    for chunker, kwargs in ((chunk_markdown, {"max_size": size}), (chunk_fixed, {"size": size})):
        chunks = chunk_corpus(pages, chunker, **kwargs)
        for q in questions:
            rel = relevant_chunk_ids(chunks, pages, q)
            assert rel and all(chunks[i].doc_id == q.doc_id for i in rel)


# ----------------------------------------------------------------------------- relevance


def _question(evidence: str, doc_id: str = "d") -> RagQuestion:
    return RagQuestion(id="t", question="?", doc_id=doc_id, evidence=evidence, answer="")


def test_relevant_chunk_ids_overlap_rule_and_fallback():
    text = "aaaa bbbb cccc dddd"
    pages = {"d": text, "e": text}
    q = _question("bbbb cccc")  # characters 5..14
    chunks = [Chunk(text[s:e], "d", s, e) for s, e in ((0, 7), (7, 19))] + [
        Chunk(text, "e", 0, len(text))
    ]
    # chunk 0 holds 2 of 9 evidence characters, chunk 1 holds 7: only chunk 1 is relevant;
    # the other page never counts even though its text is identical.
    assert relevant_chunk_ids(chunks, pages, q) == {1}
    assert relevant_chunk_ids(chunks, pages, q, min_fraction=0.2) == {0, 1}
    tiny = [Chunk(text[s : s + 3], "d", s, s + 3) for s in range(0, 18, 3)]
    assert relevant_chunk_ids(tiny, pages, q) == {2, 3}  # no chunk holds half: largest overlaps
    with pytest.raises(ValueError, match="min_fraction"):
        relevant_chunk_ids(chunks, pages, q, min_fraction=0.0)


def test_evidence_span_errors_name_the_problem():
    pages = {"d": "one two one two"}
    with pytest.raises(KeyError, match="not in the corpus"):
        evidence_span(pages, _question("one", doc_id="x"))
    with pytest.raises(ValueError, match="not in"):
        evidence_span(pages, _question("three"))
    with pytest.raises(ValueError, match="twice"):
        evidence_span(pages, _question("one two"))
    assert evidence_span(pages, _question("two one")) == (4, 11)


# ----------------------------------------------------------------------------- building


_CHAPTER = """# ---
# jupyter:
#   kernelspec:
#     name: python3
# ---

# %% [markdown]
# # 99 Title
#
# Cite {cite}`lewis2020rag` and show {glue:text}`acc`.

# %%
x = 1  # code is not text

# %% [markdown]
# ## Section
# Last line.
"""


def test_chapter_markdown_keeps_text_cells_only():
    text = cp.chapter_markdown(_CHAPTER)
    assert text == "# 99 Title\n\nCite [lewis2020rag] and show [acc].\n\n## Section\nLast line."


def _fake_repo(root, setup_text="Setup text. Offline, set the mirror."):
    (root / "book").mkdir()
    (root / "book" / "setup.md").write_text(setup_text)
    (root / "solutions").mkdir()
    (root / "solutions" / "99_demo.py").write_text(_CHAPTER)
    (root / "solutions" / "notes.py").write_text("# %% [markdown]\n# not a chapter")
    mod = root / "lib" / "llmcourse" / "retrieval"
    mod.mkdir(parents=True)
    (mod / "bm25.py").write_text('"""BM25 docs."""\nX = 1\n')
    return root


def test_collect_course_pages_from_a_repository(tmp_path):
    pages = collect_course_pages(_fake_repo(tmp_path))
    assert list(pages) == ["book/setup.md", "chapters/99_demo", "library/llmcourse.retrieval.bm25"]
    assert pages["library/llmcourse.retrieval.bm25"] == "# llmcourse.retrieval.bm25\n\nBM25 docs."
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="none of the course pages"):
        collect_course_pages(empty)


def test_builder_writes_only_when_every_question_still_matches(tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    _fake_repo(repo)
    out = tmp_path / "pages.json"
    monkeypatch.setattr(
        cp, "load_rag_questions", lambda: [_question("Offline, set", doc_id="book/setup.md")]
    )
    assert cp.main([str(repo), "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["format"] == cp._FORMAT and "book/setup.md" in payload["pages"]
    (repo / "book" / "setup.md").write_text("The page was rewritten.")
    out.unlink()
    assert cp.main([str(repo), "--out", str(out)]) == 1
    assert not out.exists() and "not written" in capsys.readouterr().err


# ----------------------------------------------------------------------------- fact cards


def test_creatures_are_deterministic_distinct_and_excludable():
    a = make_creatures(50, seed=3)
    assert a == make_creatures(50, seed=3)
    assert len({c.name for c in a}) == 50 and len({c.home for c in a}) == 50
    assert all(len(c.name) <= 8 for c in a)
    b = make_creatures(50, seed=4, exclude=a)
    assert not {c.name for c in a} & {c.name for c in b}
    assert not {c.home for c in a} & {c.home for c in b}
    with pytest.raises(KeyError, match="unknown relation"):
        a[0].fact("size")
    with pytest.raises(ValueError):
        make_creatures(-1, seed=0)


def test_cards_and_questions_are_aligned():
    world = make_creatures(5, seed=0)
    cards, questions = fact_cards(world), fact_questions(world)
    assert len(cards) == len(questions) == 3 * len(world)
    for card, q in zip(cards, questions, strict=True):
        assert (card.creature, card.relation) == (q.creature, q.relation)
        assert world[q.creature].name in card.text and world[q.creature].name in q.question
        assert card.text.endswith(f"{q.answer}.")
    assert set(RELATIONS) == {c.relation for c in cards}


def test_reader_prompt_format():
    assert reader_prompt(["A.", "B."], "Q?") == "A. B.\nQ: Q?\nA: "
    assert reader_prompt([], "Q?") == "Q: Q?\nA: "
    with pytest.raises(TypeError):
        reader_prompt("A.", "Q?")


def test_reader_examples_fit_the_model_and_contain_their_answer():
    train, val, test = reader_worlds()
    names = [{c.name for c in w} for w in (train, val, test)]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    rng = random.Random(0)
    n_closed = n_two = 0
    for _ in range(2000):
        prompt, answer = reader_example(train, rng)
        assert answer.endswith("\n") and len(prompt) + len(answer) <= 128
        context = prompt.split("\nQ: ")[0] if not prompt.startswith("Q: ") else ""
        if context:
            assert f" {answer[:-1]}." in f" {context}"
            n_two += context.count(".") == 2
        else:
            n_closed += 1
    assert 100 < n_closed < 300 and n_two > 1000
    with pytest.raises(ValueError):
        reader_example(train[:1], rng)
