"""``course export``: grades as CSV, one row per student and chapter (or per test)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from . import results as R
from .course import CourseDir

COLUMNS = [
    "student",
    "chapter",
    "attempt",
    "collected_at",
    "status",
    "score",
    "max_score",
    "percent",
    "tamper_flags",
    "review_flags",
    "graded_at",
    "error",
]
TEST_COLUMNS = [
    "student",
    "chapter",
    "attempt",
    "grade_id",
    "status",
    "points",
    "max_points",
    "message",
]


def export_rows(
    course: CourseDir, chapters: list[str] | None = None, by_test: bool = False
) -> list[dict]:
    rows = []
    for grade in course.gradebook().grades(chapters):
        result = grade.result
        if by_test:
            for test in result.tests if result else []:
                rows.append(
                    {
                        "student": grade.student,
                        "chapter": grade.chapter,
                        "attempt": grade.attempt,
                        "grade_id": test.grade_id,
                        "status": test.status,
                        "points": test.points,
                        "max_points": test.max_points,
                        "message": test.message,
                    }
                )
            continue
        rows.append(
            {
                "student": grade.student,
                "chapter": grade.chapter,
                "attempt": grade.attempt,
                "collected_at": grade.collected_at.isoformat() if grade.collected_at else "",
                "status": result.status if result else "not graded",
                "score": result.score if result else "",
                "max_score": result.max_score if result else "",
                "percent": round(100 * result.score / result.max_score, 1)
                if result and result.max_score
                else "",
                "tamper_flags": ";".join(result.flag_codes((R.TAMPER,))) if result else "",
                "review_flags": ";".join(result.flag_codes((R.REVIEW,))) if result else "",
                "graded_at": grade.graded_at.isoformat() if grade.graded_at else "",
                "error": (result.error or "") if result else "",
            }
        )
    return rows


def export_csv(
    course: CourseDir,
    output: Path | None = None,
    chapters: list[str] | None = None,
    by_test: bool = False,
) -> str:
    """Write the CSV to ``output`` (if given) and return its text."""
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=TEST_COLUMNS if by_test else COLUMNS, lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(export_rows(course, chapters, by_test))
    text = buffer.getvalue()
    if output is not None:
        Path(output).write_text(text, encoding="utf-8")
    return text
