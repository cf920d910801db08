"""The gradebook on SQLite and on PostgreSQL (``LLMCOURSE_TEST_POSTGRES_URL``).

The PostgreSQL variants are marked ``postgres``. They never skip: without the URL they fail
and say how to start a server (``scripts/start_postgres.sh``); deselect them locally with
``-m "not postgres"``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import IntegrityError

from coursegrader.grading import gradebook as gb
from coursegrader.grading.results import GRADED, GRADER_ERROR, Flag, SubmissionResult, TestResult

POSTGRES_ENV = "LLMCOURSE_TEST_POSTGRES_URL"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def book(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'gradebook.db'}"
    else:
        url = os.environ.get(POSTGRES_ENV)
        if not url:
            pytest.fail(
                f"{POSTGRES_ENV} is not set: start a server with `scripts/start_postgres.sh` and export the "
                "URL it prints (CI does this), or deselect these tests with -m 'not postgres'"
            )
        engine = create_engine(url)
        gb.metadata.drop_all(engine)  # a clean schema for every test
        engine.dispose()
    book = gb.Gradebook(url)
    yield book
    if request.param == "postgres":
        gb.metadata.drop_all(book.engine)
    book.close()


def result(
    submission_id: int, score: float, status: str = GRADED, sha: str = "v1"
) -> SubmissionResult:
    tests = [
        TestResult("a_test", score, 1.0, "passed" if score else "failed", "" if score else "boom")
    ]
    return SubmissionResult(
        "ann",
        "90_toy",
        submission_id,
        status,
        score,
        1.0,
        tests,
        flags=[Flag("cells-added", "info", "note")],
        source_sha=sha,
        sandbox="namespaces",
    )


def add(book: gb.Gradebook, student: str = "ann", sha: str = "f1") -> gb.Submission:
    attempt = book.next_attempt(student, "90_toy")
    return book.add_submission(
        student, "90_toy", attempt, sha, 10, "90_toy.ipynb", f"submitted/{student}/{sha}"
    )


def test_release_and_update(book: gb.Gradebook) -> None:
    book.release("90_toy", "v1", [{"grade_id": "a_test", "points": 1}], 1.0)
    book.release("90_toy", "v2", [{"grade_id": "a_test", "points": 2}], 2.0)
    assert book.assignment("90_toy")["source_sha"] == "v2"
    assert book.chapters() == ["90_toy"]


def test_every_distinct_file_is_a_new_attempt(book: gb.Gradebook) -> None:
    first, second = add(book, sha="f1"), add(book, sha="f2")
    assert (first.attempt, second.attempt) == (1, 2)
    assert book.find_submission("ann", "90_toy", "f1") == first
    with pytest.raises(
        IntegrityError
    ):  # the same content twice is a constraint violation, never a silent overwrite
        book.add_submission("ann", "90_toy", 3, "f1", 10, "x", "y")
    assert [s.attempt for s in book.latest_submissions()] == [2]


def test_to_grade_follows_results_and_releases(book: gb.Gradebook) -> None:
    book.release("90_toy", "v1", [], 1.0)
    ann, bob = add(book, "ann"), add(book, "bob")
    assert {s.student for s in book.to_grade()} == {"ann", "bob"}
    book.record(result(ann.id, 1.0))
    book.record(result(bob.id, 0.0, status=GRADER_ERROR))
    assert [s.student for s in book.to_grade()] == ["bob"]  # grader errors are retried
    assert {s.student for s in book.to_grade(force=True)} == {"ann", "bob"}
    book.release("90_toy", "v2", [], 1.0)  # a new release makes old results stale
    assert {s.student for s in book.to_grade()} == {"ann", "bob"}
    newer = add(book, "ann", sha="f9")
    assert [s.id for s in book.to_grade(students=["ann"])] == [newer.id]


def test_record_replaces_the_whole_result(book: gb.Gradebook) -> None:
    sub = add(book)
    book.record(result(sub.id, 0.0))
    book.record(result(sub.id, 1.0))
    stored = book.result(sub.id)
    assert stored is not None and stored.score == 1.0
    assert [t.status for t in stored.tests] == ["passed"]
    assert stored.flags[0].code == "cells-added"
    with book.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(gb.test_results)).scalar() == 1


def test_a_failed_write_leaves_the_previous_result_intact(book: gb.Gradebook) -> None:
    sub = add(book)
    book.record(result(sub.id, 1.0))
    broken = result(sub.id, 0.0)
    broken.tests.append(
        TestResult("a_test", 0.0, 1.0, "failed")
    )  # duplicate key: the insert fails mid-way
    with pytest.raises(IntegrityError):
        book.record(broken)
    stored = book.result(sub.id)
    assert stored is not None and stored.score == 1.0 and len(stored.tests) == 1


def test_grades_show_the_latest_attempt(book: gb.Gradebook) -> None:
    first = add(book, sha="f1")
    book.record(result(first.id, 1.0))
    add(book, sha="f2")
    (grade,) = book.grades()
    assert grade.attempt == 2 and grade.result is None
