"""``course release``: freeze chapters for grading and write the student editions to hand out."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nbformat

from .. import source as chapter_source
from ..generate import instructor_notebook, student_notebook
from ..project import Repository, find_root, repository
from .course import CourseDir, CourseError
from .plan import load_assignment


@dataclass
class Released:
    chapter: str
    student_edition: Path
    max_score: float
    tests: int
    changed: bool  # False when the same edition was already released


def resolve_sources(root: Path, names: list[str]) -> list[Path]:
    """Chapter sources in ``root/solutions`` named by stem (00_foundations) or number (00)."""
    sources = chapter_source.chapter_sources(root)
    if not names:
        return sources
    chosen = []
    for name in names:
        hits = [
            p
            for p in sources
            if p.stem == name or p.stem.split("_", 1)[0] == name or p == Path(name).resolve()
        ]
        if len(hits) != 1:
            known = ", ".join(p.stem for p in sources) or "none"
            raise CourseError(
                f"no single chapter source matches {name!r} in {root / 'solutions'} (chapters: {known})"
            )
        chosen.append(hits[0])
    return chosen


def _write(path: Path, nb: nbformat.NotebookNode, mode: int) -> None:
    tmp = path.with_suffix(".tmp")
    nbformat.write(nb, tmp)
    os.chmod(tmp, mode)
    tmp.replace(path)


def release(
    course: CourseDir, sources: list[Path], repo: Repository | None = None, force: bool = False
) -> list[Released]:
    """Release each chapter source: instructor edition to ``source/``, student edition to ``release/``.

    Re-releasing a chapter whose content changed requires ``force`` (its submissions are then
    re-graded by the next ``autograde``)."""
    course.ensure()
    gradebook = course.gradebook()
    repo = repo or repository(find_root())
    done = []
    for path in sources:
        instructor = instructor_notebook(path, repo)
        student = student_notebook(instructor)
        chapter = path.stem
        assignment = load_assignment(chapter, instructor, student)
        previous = gradebook.assignment(chapter)
        changed = previous is None or previous["source_sha"] != assignment.source_sha
        if previous is not None and changed and not force:
            raise CourseError(
                f"{chapter} was already released with different content. Re-release with --force: "
                "the next autograde then re-grades its submissions against the new version."
            )
        _write(
            course.source_dir / f"{chapter}.ipynb", instructor, 0o600
        )  # hidden tests: instructor only
        _write(course.release_dir / f"{chapter}.ipynb", student, 0o644)  # to hand out
        tests = [
            {"grade_id": t.grade_id, "points": t.points, "hidden": t.hidden}
            for t in assignment.tests
        ]
        gradebook.release(chapter, assignment.source_sha, tests, assignment.max_score)
        done.append(
            Released(
                chapter,
                course.release_dir / f"{chapter}.ipynb",
                assignment.max_score,
                len(tests),
                changed,
            )
        )
    return done
