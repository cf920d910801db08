"""The committed student editions are generated, current, and free of solutions."""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import pytest

from coursegrader import source
from coursegrader.generate import SETUP_CELL_ID, generate, instructor_notebook, render_student
from coursegrader.project import repository

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = source.chapter_sources(ROOT)


def test_there_are_chapters():
    assert CHAPTERS, "no chapter sources found in solutions/"


def test_student_editions_are_not_stale():
    stale = generate(ROOT, check=True)
    assert not stale, f"stale student editions, run `course generate`: {[str(p) for p in stale]}"


def test_regenerating_is_deterministic():
    repo = repository(ROOT)
    for path in CHAPTERS:
        assert render_student(path, repo) == render_student(path, repo)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_student_edition_has_stubs_and_no_solutions(path: Path):
    instructor = instructor_notebook(path, repository(ROOT))
    student = nbformat.read(ROOT / "chapters" / f"{path.stem}.ipynb", as_version=4)
    nbformat.validate(student)
    assert [c["id"] for c in student.cells] == [c["id"] for c in instructor.cells], "cell ids differ"
    text = "\n".join(c.source for c in student.cells)
    for marker in (source.BEGIN_SOLUTION, source.END_SOLUTION, source.BEGIN_HIDDEN, source.END_HIDDEN):
        assert marker not in text
    for cell in instructor.cells:
        if source.is_solution_cell(cell) and cell.cell_type == "code":
            twin = next(c for c in student.cells if c["id"] == cell["id"])
            assert "raise NotImplementedError()" in twin.source
            for line in _solution_lines(cell.source):
                assert line not in twin.source, f"solution line leaked into {path.stem}: {line!r}"
    assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_pairing_is_intact(path: Path):
    ipynb = nbformat.read(ROOT / "chapters" / f"{path.stem}.ipynb", as_version=4)
    py = jupytext.read(ROOT / "chapters" / path.name)
    assert ipynb.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert [c.source for c in py.cells] == [c.source for c in ipynb.cells]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_first_cell_installs_in_colab_only(path: Path):
    nb = nbformat.read(ROOT / "chapters" / f"{path.stem}.ipynb", as_version=4)
    first = nb.cells[0]
    assert first["id"] == SETUP_CELL_ID
    assert '"google.colab" in sys.modules' in first.source
    assert repository(ROOT).pip_spec() in first.source  # derived from _config.yml
    namespace: dict = {}
    exec(compile(first.source, "setup-cell", "exec"), namespace)  # locally: does nothing


def _solution_lines(code: str) -> list[str]:
    """Distinctive lines between the solution markers (long enough not to occur by chance)."""
    lines, inside = [], False
    for line in code.splitlines():
        if line.strip() == source.BEGIN_SOLUTION:
            inside = True
        elif line.strip() == source.END_SOLUTION:
            inside = False
        elif inside and len(line.strip()) >= 20:
            lines.append(line.strip())
    return lines
