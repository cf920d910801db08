"""The students' self-check: run a notebook the way the grader does, with the public tests only.

``course check NOTEBOOK`` (or :func:`self_check` from Python) executes the notebook's exercises
against the test cells of the pristine student edition (``chapters/NN_slug.ipynb`` when the
repository is at hand, else the notebook's own test cells), with the grader's time limits and
with stdin disabled, and prints ``public tests k/n passed; hidden tests run at grading``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import nbformat

from . import results as R
from .engine import grade_notebook
from .plan import load_assignment
from .results import SubmissionResult
from .sandbox import Limits, SandboxConfig
from .submission import SubmissionError, read_submission


@dataclass
class CheckReport:
    passed: int
    total: int
    result: SubmissionResult
    reference: str  # where the public tests came from

    @property
    def summary(self) -> str:
        return f"public tests {self.passed}/{self.total} passed; hidden tests run at grading"


def find_reference(notebook: Path, nb: nbformat.NotebookNode) -> tuple[Path | None, str]:
    """The student edition this notebook came from: same file name, else most shared grade ids."""
    try:
        from ..project import find_root

        chapters = sorted((find_root(notebook.parent) / "chapters").glob("*.ipynb"))
    except FileNotFoundError:
        chapters = []
    for candidate in chapters:
        if candidate.stem == notebook.stem and candidate.resolve() != notebook.resolve():
            return candidate, str(candidate)
    ids = {c.get("id") for c in nb.cells}
    best, overlap = None, 0
    for candidate in chapters:
        if candidate.resolve() == notebook.resolve():
            continue
        shared = len(ids & {c.get("id") for c in nbformat.read(candidate, as_version=4).cells})
        if shared > overlap:
            best, overlap = candidate, shared
    return (best, str(best)) if best else (None, "the notebook's own test cells")


def self_check(
    notebook: str | Path,
    reference: str | Path | None = None,
    *,
    cell_timeout_s: float = 120.0,
    notebook_timeout_s: float = 1800.0,
    level: str = "rlimits",
    out: TextIO | None = None,
) -> CheckReport:
    """Check ``notebook`` against the public tests; prints a report to ``out`` (stdout)."""
    out = out or sys.stdout
    notebook = Path(notebook)
    try:
        nb, _ = read_submission(notebook)
    except SubmissionError as exc:
        raise SystemExit(f"cannot check {notebook}: {exc}") from None
    if reference is None:
        ref_path, where = find_reference(notebook, nb)
    else:
        ref_path, where = Path(reference), str(reference)
    ref = nbformat.read(ref_path if ref_path else notebook, as_version=4)
    if ref_path is None:
        print(
            "note: no student edition found next to this notebook; using its own test cells "
            "(edited tests are not detected)",
            file=out,
        )
    assignment = load_assignment(notebook.stem, ref, ref)
    config = SandboxConfig(
        level=level,
        limits=Limits(cell_timeout_s=cell_timeout_s, notebook_timeout_s=notebook_timeout_s),
    )
    result = grade_notebook(nb, assignment, config, student="self-check")
    passed = sum(1 for t in result.tests if t.status == R.PASSED)
    for test in result.tests:
        mark = "ok  " if test.status == R.PASSED else "FAIL"
        line = f"  {mark} {test.grade_id} ({test.max_points:g} pt)"
        if test.status != R.PASSED:
            line += f": {test.message}"
        print(line, file=out)
    for cell in result.cells:
        print(f"  cell '{cell.cell}' {cell.status}: {cell.message}", file=out)
    for flag in result.flags:
        if flag.severity in (R.TAMPER, R.ERROR):
            print(f"  warning: {flag.message}", file=out)
    report = CheckReport(passed, len(result.tests), result, where)
    print(report.summary, file=out)
    return report
