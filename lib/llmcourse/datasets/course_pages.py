"""The course's own pages as a retrieval corpus, with questions that say where their answer is.

The knowledge base of chapter 10 is this course: the book pages (``book/*.md``), the text
(Markdown cells) of the chapters (``solutions/NN_*.py``) and the module docstrings of the
library's main modules, which read like reference pages. :func:`collect_course_pages`
gathers them from a clone of the repository; a frozen copy ships with the package
(``course_pages.json``) so that the chapter works where the repository is absent (Colab) and
its numbers do not move when a page is edited. Rebuild the copy with::

    python -m llmcourse.datasets.course_pages /path/to/repository

which refuses to write a snapshot in which some question's evidence can no longer be found.

Each question (``rag_questions.json``) names the page that answers it and quotes the passage
(``evidence``, an exact substring of that page). Relevance is therefore defined on characters,
not on chunk numbers: for any chunking of the pages, :func:`relevant_chunk_ids` marks the
chunks that hold (most of) the passage, so chunkings of different sizes are judged alike.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "RagQuestion",
    "BOOK_PAGES",
    "LIBRARY_MODULES",
    "chapter_markdown",
    "collect_course_pages",
    "load_course_pages",
    "load_rag_questions",
    "evidence_span",
    "relevant_chunk_ids",
    "write_course_pages",
]

PAGES_FILE = "course_pages.json"
QUESTIONS_FILE = "rag_questions.json"
_FORMAT = "llmcourse.course_pages"

BOOK_PAGES = ("intro.md", "setup.md", "grading_students.md", "notation.md", "kernels_on_gpu.md")
LIBRARY_MODULES = (
    "retrieval/bm25.py",
    "retrieval/chunking.py",
    "retrieval/dense.py",
    "retrieval/hybrid.py",
    "retrieval/index.py",
    "retrieval/metrics.py",
    "retrieval/quantize.py",
    "finetune/lora.py",
    "finetune/sft.py",
    "finetune/quantization.py",
    "finetune/qlora.py",
    "generation/decoding.py",
    "models/gpt.py",
    "models/bert.py",
    "tokenizers/wordpiece.py",
    "tokenizers/byte_level.py",
    "optim/optimizers.py",
    "optim/schedules.py",
    "data/download.py",
    "hub.py",
)

_CELL = re.compile(r"^# %%(?P<header>.*)$")
_ROLE = re.compile(r"\{(?:cite|glue:text|glue)\}`([^`]*)`")


@dataclass(frozen=True)
class RagQuestion:
    """A question about the course pages and where its answer is.

    Attributes:
        id: short identifier (``"q01"``).
        question: the question as a student would type it.
        doc_id: the page that answers it (a key of :func:`load_course_pages`).
        evidence: the answering passage, an exact substring of that page.
        answer: a short answer, for reading (not used to score retrieval).
    """

    id: str
    question: str
    doc_id: str
    evidence: str
    answer: str


# --------------------------------------------------------------------------- building


def chapter_markdown(source: str) -> str:
    """The Markdown cells of a Jupytext percent-format chapter, joined by blank lines.

    Cells start at ``# %% [markdown]``; their lines lose the leading ``# `` (or ``#``).
    MyST roles are flattened for reading: ``{cite}`key``` becomes ``[key]`` and
    ``{glue:text}`name``` becomes ``[name]`` (the glued number is not in the source).
    """
    cells: list[list[str]] = []
    current: list[str] | None = None
    for line in source.splitlines():
        m = _CELL.match(line)
        if m:
            current = [] if "[markdown]" in m.group("header") else None
            if current is not None:
                cells.append(current)
            continue
        if current is not None:
            if line.startswith("# "):
                current.append(line[2:])
            elif line.strip() == "#":
                current.append("")
            elif line.strip():
                current.append(line)
    text = "\n\n".join("\n".join(c).strip() for c in cells if any(s.strip() for s in c))
    return _ROLE.sub(lambda m: f"[{m.group(1)}]", text)


def _module_page(path: Path, module: str) -> str | None:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    return f"# {module}\n\n{doc.strip()}" if doc else None


def collect_course_pages(repo_root: str | Path) -> dict[str, str]:
    """Gather the course pages from a clone of the repository: ``{doc_id: text}``.

    ``doc_id`` is ``"book/<page>.md"``, ``"chapters/<NN_slug>"`` or ``"library/<module>"``
    (e.g. ``"library/llmcourse.retrieval.bm25"``). Missing files are skipped; raises
    ``FileNotFoundError`` when ``repo_root`` holds none of them.
    """
    root = Path(repo_root)
    pages: dict[str, str] = {}
    for name in BOOK_PAGES:
        path = root / "book" / name
        if path.is_file():
            pages[f"book/{name}"] = path.read_text(encoding="utf-8").strip()
    for path in sorted((root / "solutions").glob("[0-9][0-9]_*.py")):
        text = chapter_markdown(path.read_text(encoding="utf-8"))
        if text:
            pages[f"chapters/{path.stem}"] = text
    for rel in LIBRARY_MODULES:
        path = root / "lib" / "llmcourse" / rel
        module = "llmcourse." + rel.removesuffix(".py").replace("/", ".")
        if path.is_file():
            page = _module_page(path, module)
            if page:
                pages[f"library/{module}"] = page
    if not pages:
        raise FileNotFoundError(
            f"{root} holds none of the course pages (book/, solutions/, lib/llmcourse/); pass "
            "the root of a clone of the course repository"
        )
    return pages


def write_course_pages(pages: Mapping[str, str], path: str | Path) -> Path:
    """Write a snapshot ``{"format", "pages": {doc_id: text}}`` as JSON; returns the path."""
    path = Path(path)
    payload = {"format": _FORMAT, "version": 1, "pages": dict(pages)}
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- loading


def _read_json(name: str) -> Any:
    return json.loads(resources.files(__package__).joinpath(name).read_text(encoding="utf-8"))


def load_course_pages() -> dict[str, str]:
    """The shipped snapshot of the course pages: ``{doc_id: text}`` (insertion-ordered)."""
    payload = _read_json(PAGES_FILE)
    if payload.get("format") != _FORMAT:
        raise ValueError(
            f"{PAGES_FILE}: expected format {_FORMAT!r}, got {payload.get('format')!r}"
        )
    return dict(payload["pages"])


def load_rag_questions() -> list[RagQuestion]:
    """The questions about the course pages, each with its page and evidence passage."""
    rows = _read_json(QUESTIONS_FILE)
    return [RagQuestion(**row) for row in rows]


# --------------------------------------------------------------------------- relevance


def evidence_span(pages: Mapping[str, str], question: RagQuestion) -> tuple[int, int]:
    """``(start, end)`` character offsets of the question's evidence in its page.

    Raises ``KeyError`` for an unknown page and ``ValueError`` when the passage is missing or
    occurs more than once (then it would not say *where* the answer is).
    """
    if question.doc_id not in pages:
        raise KeyError(f"{question.id}: page {question.doc_id!r} is not in the corpus")
    text = pages[question.doc_id]
    start = text.find(question.evidence)
    if start < 0:
        raise ValueError(
            f"{question.id}: its evidence {question.evidence[:60]!r}... is not in "
            f"{question.doc_id}; the page changed since the questions were written"
        )
    if text.find(question.evidence, start + 1) >= 0:
        raise ValueError(f"{question.id}: its evidence occurs twice in {question.doc_id}")
    return start, start + len(question.evidence)


def relevant_chunk_ids(
    chunks: Sequence[Any],
    pages: Mapping[str, str],
    question: RagQuestion,
    min_fraction: float = 0.5,
) -> set[int]:
    """Positions of the chunks that answer ``question``.

    ``chunks`` are objects with ``doc_id``, ``start`` and ``end`` (the library's ``Chunk``).
    A chunk is relevant when it lies in the question's page and holds at least
    ``min_fraction`` of the evidence's characters; when no chunk does (tiny chunks), the
    chunk(s) with the largest overlap are relevant. Never empty.
    """
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"min_fraction must lie in (0, 1], got {min_fraction}")
    s, e = evidence_span(pages, question)
    overlap = {
        i: min(e, c.end) - max(s, c.start)
        for i, c in enumerate(chunks)
        if c.doc_id == question.doc_id and min(e, c.end) > max(s, c.start)
    }
    if not overlap:
        raise ValueError(f"{question.id}: no chunk of {question.doc_id} overlaps its evidence")
    relevant = {i for i, o in overlap.items() if o >= min_fraction * (e - s)}
    if not relevant:
        best = max(overlap.values())
        relevant = {i for i, o in overlap.items() if o == best}
    return relevant


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """Rebuild the shipped snapshot from a clone, checking every question against it."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("repo_root", type=Path, help="root of a clone of the course repository")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).with_name(PAGES_FILE), help="snapshot file"
    )
    args = parser.parse_args(argv)
    pages = collect_course_pages(args.repo_root)
    problems = []
    for q in load_rag_questions():
        try:
            evidence_span(pages, q)
        except (KeyError, ValueError) as err:
            problems.append(str(err))
    if problems:
        print(
            "not written; fix these questions first:\n  " + "\n  ".join(problems), file=sys.stderr
        )
        return 1
    write_course_pages(pages, args.out)
    print(f"wrote {len(pages)} pages ({sum(map(len, pages.values())):,} characters) to {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
