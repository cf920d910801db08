"""The gradebook: released chapters, every collected submission, and grading results.

A small SQLAlchemy Core schema (tables prefixed ``cg_``) on any SQLAlchemy URL: SQLite by
default (one file in the course folder), PostgreSQL (``postgresql+psycopg://...``) or others.

Why not nbgrader's own ``Gradebook``: it commits after each call (a crash can leave a submission
half-recorded), keeps one submission per student and assignment, and has nowhere to store the
flags, cell timeouts and sandbox errors this grader reports. Here, everything about one graded
submission is written in a single transaction (:meth:`Gradebook.record`), and every collected
file is kept as a numbered attempt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine

from .results import GRADER_ERROR, CellReport, Flag, SubmissionResult, TestResult

metadata = MetaData()

assignments = Table(
    "cg_assignments",
    metadata,
    Column("chapter", String(200), primary_key=True),
    Column("source_sha", String(64), nullable=False),
    Column("max_score", Float, nullable=False),
    Column("tests_json", Text, nullable=False),
    Column("released_at", DateTime(timezone=True), nullable=False),
)

submissions = Table(
    "cg_submissions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("student", String(200), nullable=False, index=True),
    Column("chapter", String(200), nullable=False, index=True),
    Column("attempt", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("original_name", String(500), nullable=False),
    Column("stored_path", String(1000), nullable=False),
    Column("collected_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("student", "chapter", "sha256", name="cg_submission_content"),
    UniqueConstraint("student", "chapter", "attempt", name="cg_submission_attempt"),
)

results = Table(
    "cg_results",
    metadata,
    Column(
        "submission_id",
        Integer,
        ForeignKey("cg_submissions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("status", String(32), nullable=False),
    Column("score", Float, nullable=False),
    Column("max_score", Float, nullable=False),
    Column("source_sha", String(64), nullable=False),
    Column("sandbox", String(32), nullable=False),
    Column("seconds", Float, nullable=False),
    Column("error", Text),
    Column("flags_json", Text, nullable=False),
    Column("cells_json", Text, nullable=False),
    Column("graded_at", DateTime(timezone=True), nullable=False),
)

test_results = Table(
    "cg_test_results",
    metadata,
    Column(
        "submission_id",
        Integer,
        ForeignKey("cg_results.submission_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("grade_id", String(200), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("points", Float, nullable=False),
    Column("max_points", Float, nullable=False),
    Column("status", String(32), nullable=False),
    Column("hidden", Integer, nullable=False),
    Column("seconds", Float, nullable=False),
    Column("message", Text, nullable=False),
)


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


@dataclass(frozen=True)
class Submission:
    id: int
    student: str
    chapter: str
    attempt: int
    sha256: str
    stored_path: str
    collected_at: datetime


@dataclass(frozen=True)
class Grade:
    """The grade of a student for a chapter: their latest submission and its result."""

    student: str
    chapter: str
    attempt: int
    collected_at: datetime
    result: SubmissionResult | None
    graded_at: datetime | None


class Gradebook:
    """All reads and writes of the gradebook. Safe to share between commands, not threads."""

    def __init__(self, url: str, engine: Engine | None = None) -> None:
        self.url = url
        self.engine = engine or create_engine(url, future=True, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            from sqlalchemy import event

            @event.listens_for(self.engine, "connect")
            def _sqlite_pragmas(dbapi_connection, _record):  # noqa: ANN001 - SQLAlchemy's signature
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.execute("PRAGMA busy_timeout=30000")
                cursor.close()

        metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- assignments ----------------------------------------------------------------------------
    def release(self, chapter: str, source_sha: str, tests: list[dict], max_score: float) -> None:
        row = {
            "source_sha": source_sha,
            "max_score": max_score,
            "tests_json": json.dumps(tests),
            "released_at": now(),
        }
        with self.engine.begin() as conn:
            exists = conn.execute(
                select(assignments.c.chapter).where(assignments.c.chapter == chapter)
            ).first()
            if exists:
                conn.execute(
                    update(assignments).where(assignments.c.chapter == chapter).values(**row)
                )
            else:
                conn.execute(insert(assignments).values(chapter=chapter, **row))

    def assignment(self, chapter: str) -> dict | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(select(assignments).where(assignments.c.chapter == chapter))
                .mappings()
                .first()
            )
        return dict(row) if row else None

    def chapters(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(assignments.c.chapter).order_by(assignments.c.chapter)
                ).scalars()
            )

    # -- submissions ----------------------------------------------------------------------------
    def find_submission(self, student: str, chapter: str, sha256: str) -> Submission | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(submissions).where(
                        submissions.c.student == student,
                        submissions.c.chapter == chapter,
                        submissions.c.sha256 == sha256,
                    )
                )
                .mappings()
                .first()
            )
        return _submission(row) if row else None

    def next_attempt(self, student: str, chapter: str) -> int:
        with self.engine.connect() as conn:
            last = conn.execute(
                select(func.max(submissions.c.attempt)).where(
                    submissions.c.student == student, submissions.c.chapter == chapter
                )
            ).scalar()
        return int(last or 0) + 1

    def add_submission(
        self,
        student: str,
        chapter: str,
        attempt: int,
        sha256: str,
        size: int,
        original_name: str,
        stored_path: str,
    ) -> Submission:
        with self.engine.begin() as conn:
            new_id = conn.execute(
                insert(submissions).values(
                    student=student,
                    chapter=chapter,
                    attempt=attempt,
                    sha256=sha256,
                    size=size,
                    original_name=original_name,
                    stored_path=stored_path,
                    collected_at=now(),
                )
            ).inserted_primary_key[0]
        found = self.submission(int(new_id))
        assert found is not None
        return found

    def submission(self, submission_id: int) -> Submission | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(select(submissions).where(submissions.c.id == submission_id))
                .mappings()
                .first()
            )
        return _submission(row) if row else None

    def latest_submissions(
        self, chapters: list[str] | None = None, students: list[str] | None = None
    ) -> list[Submission]:
        """The latest attempt of every (student, chapter), sorted by chapter then student."""
        latest = (
            select(
                submissions.c.student,
                submissions.c.chapter,
                func.max(submissions.c.attempt).label("attempt"),
            )
            .group_by(submissions.c.student, submissions.c.chapter)
            .subquery()
        )
        query = select(submissions).join(
            latest,
            (submissions.c.student == latest.c.student)
            & (submissions.c.chapter == latest.c.chapter)
            & (submissions.c.attempt == latest.c.attempt),
        )
        if chapters:
            query = query.where(submissions.c.chapter.in_(chapters))
        if students:
            query = query.where(submissions.c.student.in_(students))
        query = query.order_by(submissions.c.chapter, submissions.c.student)
        with self.engine.connect() as conn:
            return [_submission(row) for row in conn.execute(query).mappings()]

    def to_grade(
        self,
        chapters: list[str] | None = None,
        students: list[str] | None = None,
        force: bool = False,
    ) -> list[Submission]:
        """Latest submissions without a current result (none, a grader error, or an old release)."""
        pending = []
        with self.engine.connect() as conn:
            shas = dict(conn.execute(select(assignments.c.chapter, assignments.c.source_sha)).all())
            done = {
                row.submission_id: (row.status, row.source_sha)
                for row in conn.execute(
                    select(results.c.submission_id, results.c.status, results.c.source_sha)
                )
            }
        for sub in self.latest_submissions(chapters, students):
            if sub.chapter not in shas:
                continue
            status, sha = done.get(sub.id, (None, None))
            if force or status is None or status == GRADER_ERROR or sha != shas[sub.chapter]:
                pending.append(sub)
        return pending

    # -- results --------------------------------------------------------------------------------
    def record(self, result: SubmissionResult) -> None:
        """Store one submission's result, replacing any earlier one: all of it or nothing."""
        if result.submission_id is None:
            raise ValueError("record() needs a result with a submission_id")
        graded_at = now()
        with self.engine.begin() as conn:
            conn.execute(
                delete(test_results).where(test_results.c.submission_id == result.submission_id)
            )
            conn.execute(delete(results).where(results.c.submission_id == result.submission_id))
            conn.execute(
                insert(results).values(
                    submission_id=result.submission_id,
                    status=result.status,
                    score=result.score,
                    max_score=result.max_score,
                    source_sha=result.source_sha,
                    sandbox=result.sandbox,
                    seconds=result.seconds,
                    error=result.error,
                    flags_json=json.dumps([f.__dict__ for f in result.flags]),
                    cells_json=json.dumps([c.__dict__ for c in result.cells]),
                    graded_at=graded_at,
                )
            )
            if result.tests:
                conn.execute(
                    insert(test_results),
                    [
                        {
                            "submission_id": result.submission_id,
                            "grade_id": t.grade_id,
                            "position": i,
                            "points": t.points,
                            "max_points": t.max_points,
                            "status": t.status,
                            "hidden": int(t.hidden),
                            "seconds": t.seconds,
                            "message": t.message,
                        }
                        for i, t in enumerate(result.tests)
                    ],
                )

    def result(self, submission_id: int) -> SubmissionResult | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(results, submissions.c.student, submissions.c.chapter)
                    .join(submissions, submissions.c.id == results.c.submission_id)
                    .where(results.c.submission_id == submission_id)
                )
                .mappings()
                .first()
            )
            if row is None:
                return None
            tests = (
                conn.execute(
                    select(test_results)
                    .where(test_results.c.submission_id == submission_id)
                    .order_by(test_results.c.position)
                )
                .mappings()
                .all()
            )
        return SubmissionResult(
            student=row["student"],
            chapter=row["chapter"],
            submission_id=submission_id,
            status=row["status"],
            score=row["score"],
            max_score=row["max_score"],
            tests=[
                TestResult(
                    t["grade_id"],
                    t["points"],
                    t["max_points"],
                    t["status"],
                    t["message"],
                    bool(t["hidden"]),
                    t["seconds"],
                )
                for t in tests
            ],
            cells=[CellReport(**c) for c in json.loads(row["cells_json"])],
            flags=[Flag(**f) for f in json.loads(row["flags_json"])],
            error=row["error"],
            sandbox=row["sandbox"],
            seconds=row["seconds"],
            source_sha=row["source_sha"],
        )

    def graded_at(self, submission_id: int) -> datetime | None:
        with self.engine.connect() as conn:
            return conn.execute(
                select(results.c.graded_at).where(results.c.submission_id == submission_id)
            ).scalar()

    def grades(
        self, chapters: list[str] | None = None, students: list[str] | None = None
    ) -> list[Grade]:
        """Each student's latest submission per chapter with its result (None if not graded)."""
        out = []
        for sub in self.latest_submissions(chapters, students):
            out.append(
                Grade(
                    sub.student,
                    sub.chapter,
                    sub.attempt,
                    sub.collected_at,
                    self.result(sub.id),
                    self.graded_at(sub.id),
                )
            )
        return out


def _submission(row) -> Submission:
    return Submission(
        row["id"],
        row["student"],
        row["chapter"],
        row["attempt"],
        row["sha256"],
        row["stored_path"],
        row["collected_at"],
    )
