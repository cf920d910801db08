"""Fixtures for the grader tests: tiny synthetic chapters, fast limits, a released course."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from coursegrader.grading.course import CourseDir
from coursegrader.grading.plan import Assignment, load_assignment
from coursegrader.grading.sandbox import Limits, SandboxConfig

from .helpers import FAST, TOY, editions, released_course


@pytest.fixture(scope="session")
def toy() -> tuple[nbformat.NotebookNode, nbformat.NotebookNode]:
    return editions(TOY)


@pytest.fixture(scope="session")
def toy_assignment(toy) -> Assignment:
    return load_assignment(TOY.stem, *toy)


@pytest.fixture
def fast_config() -> SandboxConfig:
    return SandboxConfig(limits=Limits(**FAST))


@pytest.fixture
def course(tmp_path: Path) -> CourseDir:
    """A course folder with the toy chapter released (SQLite gradebook)."""
    return released_course(tmp_path / "course")
