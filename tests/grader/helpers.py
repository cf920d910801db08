"""Shared helpers of the grader tests: the synthetic chapters and fast sandbox limits."""

from __future__ import annotations

from pathlib import Path

import nbformat

from coursegrader.generate import instructor_notebook, student_notebook
from coursegrader.grading.course import CourseDir
from coursegrader.grading.release import release
from coursegrader.project import Repository

FIXTURES = Path(__file__).parent / "fixtures" / "solutions"
TOY = FIXTURES / "90_toy.py"
OTHER = FIXTURES / "91_other.py"
REPO = Repository("https://github.com/llmcourse/rnn-to-rlhf", "main")
#: limits small enough that the corpus (timeouts, memory, disk) runs in seconds
FAST = {
    "cell_timeout_s": 3.0,
    "notebook_timeout_s": 60.0,
    "memory_mb": 1536,
    "cpu_s": 60,
    "file_mb": 16,
    "disk_mb": 48,
    "processes": 64,
}


def editions(path: Path) -> tuple[nbformat.NotebookNode, nbformat.NotebookNode]:
    """(instructor edition, student edition) of a fixture chapter."""
    instructor = instructor_notebook(path, REPO)
    return instructor, student_notebook(instructor)


def released_course(path: Path, db_url: str | None = None) -> CourseDir:
    """A course folder at ``path`` with the toy chapter released."""
    course = CourseDir(path, db_url)
    release(course, [TOY], repo=REPO)
    return course
