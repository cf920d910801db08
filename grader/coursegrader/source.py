"""Read and validate a chapter's single source: ``solutions/NN_slug.py`` (Jupytext percent format).

A chapter source is a notebook whose cells may carry nbgrader metadata::

    # %% nbgrader={"grade": false, "grade_id": "adam_step", "locked": false,
    #              "schema_version": 3, "solution": true, "task": false}
    def adam_step(...):
        ### BEGIN SOLUTION
        ...
        ### END SOLUTION

    # %% nbgrader={"grade": true, "grade_id": "adam_step_test", "locked": true,
    #              "points": 2, "schema_version": 3, "solution": false, "task": false}
    assert ...
    ### BEGIN HIDDEN TESTS
    assert ...
    ### END HIDDEN TESTS

Rules checked by :func:`validate` (each failure names the file, the cell and the reason):

* every nbgrader cell has a ``grade_id``, unique in the chapter;
* a graded cell (``grade: true``) has ``points > 0``;
* solution markers appear only in solution cells, hidden-test markers only in test cells,
  and each ``BEGIN`` is closed by its ``END`` (no nesting);
* a code solution cell contains at least one solution block;
* every exercise (code solution cell) is followed by at least one graded test cell before the
  next exercise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import jupytext
import nbformat

BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
BEGIN_HIDDEN = "### BEGIN HIDDEN TESTS"
END_HIDDEN = "### END HIDDEN TESTS"

CHAPTER_FILE = re.compile(r"^(?P<number>\d\d)_(?P<slug>[a-z0-9_]+)\.py$")


class ChapterSourceError(ValueError):
    """A chapter source breaks a rule; the message names the file, the cell and the reason."""


@dataclass(frozen=True)
class CellRef:
    """Where a cell is: its index in the notebook and the line of its ``# %%`` marker."""

    index: int
    line: int | None


def nbgrader_meta(cell: nbformat.NotebookNode) -> dict:
    """The cell's nbgrader metadata (empty dict for ordinary cells)."""
    return dict(cell.get("metadata", {}).get("nbgrader", {}))


def is_solution_cell(cell: nbformat.NotebookNode) -> bool:
    """An exercise the student fills in: ``solution: true`` and not graded itself."""
    meta = nbgrader_meta(cell)
    return bool(meta.get("solution")) and not meta.get("grade")


def is_test_cell(cell: nbformat.NotebookNode) -> bool:
    """An autograded test cell: ``grade: true`` and not a solution."""
    meta = nbgrader_meta(cell)
    return bool(meta.get("grade")) and not meta.get("solution")


def is_exercise_cell(cell: nbformat.NotebookNode) -> bool:
    """Solution or test cell: the cells the website shows without outputs."""
    return bool(nbgrader_meta(cell).get("solution") or nbgrader_meta(cell).get("grade"))


def grade_id(cell: nbformat.NotebookNode) -> str | None:
    return nbgrader_meta(cell).get("grade_id")


def cell_lines(path: Path) -> list[int]:
    """1-based line numbers of the ``# %%`` markers, i.e. of each cell, in file order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [i + 1 for i, line in enumerate(lines) if line.startswith("# %%")]


def read_source(path: str | Path) -> nbformat.NotebookNode:
    """Read a chapter source into a notebook (no validation; see :func:`load_chapter`)."""
    path = Path(path)
    if not path.is_file():
        raise ChapterSourceError(f"{path}: no such chapter source")
    try:
        return jupytext.read(path, fmt="py:percent")
    except Exception as exc:  # jupytext raises many types on malformed input
        raise ChapterSourceError(f"{path}: cannot be read as a Jupytext percent file: {exc}") from exc


def _where(path: Path, ref: CellRef, gid: str | None) -> str:
    line = f", line {ref.line}" if ref.line else ""
    name = f" (grade_id '{gid}')" if gid else ""
    return f"{path}: cell {ref.index}{line}{name}"


def _check_markers(text: str, begin: str, end: str) -> str | None:
    """Return a reason if ``begin``/``end`` markers are unbalanced or nested, else None."""
    open_ = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped == begin:
            if open_:
                return f"'{begin}' opened twice without '{end}' in between"
            open_ = True
        elif stripped == end:
            if not open_:
                return f"'{end}' without a matching '{begin}'"
            open_ = False
    return f"unclosed '{begin}' (add '{end}')" if open_ else None


def validate(nb: nbformat.NotebookNode, path: Path) -> None:
    """Check the rules in the module docstring; raise :class:`ChapterSourceError` on the first."""
    markers = cell_lines(path) if path.is_file() else []
    # Jupytext may read a leading cell without a marker; align marker lines to the last cells.
    offset = len(nb.cells) - len(markers)
    seen: dict[str, int] = {}
    pending_exercise: tuple[CellRef, str | None] | None = None

    for index, cell in enumerate(nb.cells):
        ref = CellRef(index, markers[index - offset] if 0 <= index - offset < len(markers) else None)
        meta = nbgrader_meta(cell)
        gid = meta.get("grade_id")
        text = cell.source
        has_solution = BEGIN_SOLUTION in text or END_SOLUTION in text
        has_hidden = BEGIN_HIDDEN in text or END_HIDDEN in text

        if meta:
            if not gid:
                raise ChapterSourceError(f"{_where(path, ref, None)}: nbgrader cell without a grade_id")
            if not re.fullmatch(r"[A-Za-z0-9_\-]+", gid):
                raise ChapterSourceError(
                    f"{_where(path, ref, gid)}: grade_id may only use letters, digits, '_' and '-'"
                )
            if gid in seen:
                raise ChapterSourceError(
                    f"{_where(path, ref, gid)}: duplicate grade_id (also used by cell {seen[gid]})"
                )
            seen[gid] = index
            if meta.get("grade"):
                points = meta.get("points")
                if not isinstance(points, (int, float)) or points <= 0:
                    raise ChapterSourceError(
                        f"{_where(path, ref, gid)}: graded cell without points "
                        "(add \"points\": N with N > 0 to its nbgrader metadata)"
                    )

        if has_solution and not meta.get("solution"):
            raise ChapterSourceError(
                f"{_where(path, ref, gid)}: solution markers in a cell that is not a solution cell"
            )
        if has_hidden and not is_test_cell(cell):
            raise ChapterSourceError(
                f"{_where(path, ref, gid)}: hidden-test markers in a cell that is not a test cell"
            )
        for begin, end in ((BEGIN_SOLUTION, END_SOLUTION), (BEGIN_HIDDEN, END_HIDDEN)):
            reason = _check_markers(text, begin, end)
            if reason:
                raise ChapterSourceError(f"{_where(path, ref, gid)}: {reason}")

        if is_solution_cell(cell) and cell.cell_type == "code":
            if BEGIN_SOLUTION not in text:
                raise ChapterSourceError(
                    f"{_where(path, ref, gid)}: solution cell without a '{BEGIN_SOLUTION}' block"
                )
            if pending_exercise is not None:
                pref, pgid = pending_exercise
                raise ChapterSourceError(
                    f"{_where(path, pref, pgid)}: exercise with no test "
                    "(add a graded test cell after it, before the next exercise)"
                )
            pending_exercise = (ref, gid)
        elif is_test_cell(cell):
            pending_exercise = None

    if pending_exercise is not None:
        pref, pgid = pending_exercise
        raise ChapterSourceError(f"{_where(path, pref, pgid)}: exercise with no test after it")


def assign_cell_ids(nb: nbformat.NotebookNode) -> None:
    """Give every cell a stable id: its grade_id for nbgrader cells, else ``cell-NNN``.

    Ids depend only on the source, so regenerating gives identical notebooks, and the
    instructor and student editions share ids cell for cell.
    """
    for index, cell in enumerate(nb.cells):
        cell["id"] = grade_id(cell) or f"cell-{index:03d}"


def load_chapter(path: str | Path) -> nbformat.NotebookNode:
    """Read, validate and id a chapter source. The returned notebook is the instructor edition."""
    path = Path(path)
    match = CHAPTER_FILE.match(path.name)
    if not match:
        raise ChapterSourceError(f"{path}: chapter sources are named NN_slug.py (e.g. 00_foundations.py)")
    nb = read_source(path)
    validate(nb, path)
    nb.nbformat, nb.nbformat_minor = 4, 5
    assign_cell_ids(nb)
    return nb


def chapter_sources(root: Path) -> list[Path]:
    """All chapter sources under ``root/solutions`` in chapter order."""
    return sorted(p for p in (root / "solutions").glob("*.py") if CHAPTER_FILE.match(p.name))
