"""Every chapter's instructor edition executes top to bottom; its student edition fails every
graded test (so no test passes without the student's work)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from coursegrader import source

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = [p.stem for p in source.chapter_sources(ROOT)]
BUDGET_S = 300  # the hard cap per chapter on a 2-core CPU


@pytest.mark.slow
@pytest.mark.notebooks
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_instructor_edition_executes(executed_chapters, chapter):
    run = executed_chapters[chapter]
    print(f"{chapter}: {run.seconds:.1f} s ({'cached' if run.cached else 'executed now'})")
    assert run.error is None, f"{chapter} failed to execute:\n{run.error}"
    nb = nbformat.read(run.path, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert run.seconds < BUDGET_S, f"{chapter} took {run.seconds:.0f} s, over the {BUDGET_S} s cap per chapter"


@pytest.mark.slow
@pytest.mark.notebooks
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_student_edition_fails_every_graded_test(chapter):
    """Run the student edition without its demonstrations: each graded test cell must fail."""
    student = nbformat.read(ROOT / "chapters" / f"{chapter}.ipynb", as_version=4)
    student.cells = [c for c in student.cells if "demo" not in c.metadata.get("tags", [])]
    NotebookClient(student, timeout=300, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(ROOT / "chapters")}}).execute()
    tests = [c for c in student.cells if source.is_test_cell(c)]
    assert len(tests) >= 4, f"{chapter} has {len(tests)} graded test cells; the standard asks for at least 4"
    passing = [source.grade_id(c) for c in tests if not any(o.output_type == "error" for o in c.outputs)]
    assert not passing, f"{chapter}: graded tests pass on the untouched student edition: {passing}"
    for cell in student.cells:
        if cell.cell_type == "code" and not source.is_exercise_cell(cell):
            errors = [o for o in cell.outputs if o.output_type == "error"]
            assert not errors, (f"{chapter}: non-exercise cell {cell['id']} fails in the student edition "
                                f"(does it depend on a demo cell or an unfinished exercise?): "
                                f"{errors[0].ename}: {errors[0].evalue}")
