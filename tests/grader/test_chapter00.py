"""Chapter 00 end to end: release it, then autograde the instructor edition (full marks), the
untouched student edition (zero) and a partly solved notebook, and check the exact scores that
the gradebook records."""

from __future__ import annotations

import copy
from pathlib import Path

import nbformat
import pytest

from coursegrader.grading import results as R
from coursegrader.grading.autograde import autograde
from coursegrader.grading.collect import collect
from coursegrader.grading.course import CourseDir
from coursegrader.grading.release import release, resolve_sources
from coursegrader.project import repository

pytestmark = pytest.mark.slow

CHAPTER = "00_foundations"
#: points of each graded test cell of chapter 00 (the chapter's contract with its students)
POINTS = {
    "forward_backward_test": 2.0,
    "softmax_cross_entropy_test": 2.0,
    "adam_steps_test": 2.0,
    "adamw_test": 3.0,
    "warmup_cosine_test": 2.0,
    "clip_global_norm_test": 2.0,
}
PARTLY_SOLVED = ("forward_backward", "adam_steps")  # exercises the partial submission solves


def test_three_submissions_of_chapter_00_get_exact_scores(root: Path, tmp_path: Path) -> None:
    course = CourseDir(tmp_path / "course")
    (released,) = release(course, resolve_sources(root, ["00"]), repo=repository(root))
    assert released.chapter == CHAPTER and released.max_score == sum(POINTS.values()) == 13.0

    instructor = nbformat.read(course.source_dir / f"{CHAPTER}.ipynb", as_version=4)
    student = nbformat.read(course.release_dir / f"{CHAPTER}.ipynb", as_version=4)
    partial = copy.deepcopy(student)
    solutions = {c.get("id"): c.source for c in instructor.cells}
    for cell in partial.cells:
        if cell.get("id") in PARTLY_SOLVED:
            cell.source = solutions[cell.get("id")]
    inbox = tmp_path / "inbox"
    for name, nb in (("instructor", instructor), ("untouched", student), ("partial", partial)):
        (inbox / name).mkdir(parents=True)
        nbformat.write(nb, inbox / name / f"{CHAPTER}.ipynb")
    assert [c.outcome for c in collect(course, inbox)] == ["new"] * 3

    summary = autograde(
        course, workers=2, progress=False, config=course.sandbox_config(cell_timeout_s=300)
    )
    assert (summary.graded, summary.invalid, summary.grader_errors) == (3, 0, 0)

    grades = {g.student: g.result for g in course.gradebook().grades()}
    partial_points = {
        gid: (p if gid.removesuffix("_test") in PARTLY_SOLVED else 0.0) for gid, p in POINTS.items()
    }
    expected = {
        "instructor": POINTS,
        "untouched": dict.fromkeys(POINTS, 0.0),
        "partial": partial_points,
    }
    for student_name, points in expected.items():
        result = grades[student_name]
        assert result.status == R.GRADED, result.error
        recorded = {t.grade_id: t.points for t in result.tests}
        assert recorded == points, (
            student_name,
            [(t.grade_id, t.status, t.message) for t in result.tests],
        )
        assert result.max_score == 13.0
        assert not result.flag_codes((R.TAMPER,)), (student_name, result.flags)
    assert [grades[s].score for s in ("instructor", "untouched", "partial")] == [13.0, 0.0, 4.0]
    untouched = {t.grade_id: t for t in grades["untouched"].tests}
    assert all("NotImplementedError" in t.message for t in untouched.values())
