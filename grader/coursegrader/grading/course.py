"""The course folder: where released chapters, submissions, feedback and the gradebook live.

Layout (created with mode 0700: nobody but the instructor's account may read it)::

    COURSE/
      grader.yml                    optional settings (see GraderSettings)
      gradebook.db                  the default SQLite gradebook
      source/NN_slug.ipynb          frozen instructor edition (with hidden tests) used for grading
      release/NN_slug.ipynb         the student edition handed out
      submitted/STUDENT/NN_slug/attempt-001-SHA8.ipynb   every collected file, never overwritten
      feedback/STUDENT/NN_slug.html
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import nbformat
import yaml

from .gradebook import Gradebook
from .plan import Assignment, load_assignment
from .sandbox import Limits, SandboxConfig

COURSE_ENV = "COURSEGRADER_COURSE"
DB_ENV = "COURSEGRADER_DB_URL"


class CourseError(RuntimeError):
    """A problem with the course folder or its settings; the message says how to fix it."""


@dataclass
class GraderSettings:
    """Settings from ``COURSE/grader.yml`` (all optional)::

    db_url: postgresql+psycopg://grader:secret@127.0.0.1:5432/course
    workers: 4
    max_submission_mb: 256
    sandbox: {level: auto, user: coursegrader-sandbox, readable: [/data/models]}
    limits: {cell_timeout_s: 60, notebook_timeout_s: 900, memory_mb: 4096, threads: 1}
    """

    db_url: str | None = None
    workers: int | None = None
    max_submission_mb: float = 256
    sandbox: dict = field(default_factory=dict)
    limits: dict = field(default_factory=dict)


class CourseDir:
    def __init__(self, path: str | Path, db_url: str | None = None) -> None:
        self.path = Path(path).resolve()
        self.settings = self._read_settings()
        self.db_url = (
            db_url
            or os.environ.get(DB_ENV)
            or self.settings.db_url
            or f"sqlite:///{self.path / 'gradebook.db'}"
        )
        self._gradebook: Gradebook | None = None

    @classmethod
    def default(cls, path: str | Path | None = None, db_url: str | None = None) -> CourseDir:
        """``path``, else ``$COURSEGRADER_COURSE``, else ``./course``."""
        return cls(path or os.environ.get(COURSE_ENV) or "course", db_url)

    def _read_settings(self) -> GraderSettings:
        file = self.path / "grader.yml"
        if not file.is_file():
            return GraderSettings()
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise CourseError(f"{file}: not valid YAML ({exc})") from exc
        known = {f.name for f in fields(GraderSettings)}
        unknown = set(data) - known
        if unknown:
            raise CourseError(
                f"{file}: unknown setting(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        return GraderSettings(**data)

    # -- folders ------------------------------------------------------------------------------
    def ensure(self) -> CourseDir:
        """Create the folder tree (mode 0700 at the top)."""
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        for sub in ("source", "release", "submitted", "feedback"):
            (self.path / sub).mkdir(exist_ok=True)
        return self

    @property
    def source_dir(self) -> Path:
        return self.path / "source"

    @property
    def release_dir(self) -> Path:
        return self.path / "release"

    @property
    def submitted_dir(self) -> Path:
        return self.path / "submitted"

    @property
    def feedback_dir(self) -> Path:
        return self.path / "feedback"

    def gradebook(self) -> Gradebook:
        if self._gradebook is None:
            self.ensure()
            self._gradebook = Gradebook(self.db_url)
        return self._gradebook

    # -- assignments --------------------------------------------------------------------------
    def assignment(self, chapter: str) -> Assignment:
        """The released chapter, as graded (frozen instructor edition + student edition)."""
        inst, rel = self.source_dir / f"{chapter}.ipynb", self.release_dir / f"{chapter}.ipynb"
        if not inst.is_file() or not rel.is_file():
            raise CourseError(
                f"chapter {chapter!r} has not been released into {self.path} (run `course release`)"
            )
        return load_assignment(
            chapter, nbformat.read(inst, as_version=4), nbformat.read(rel, as_version=4)
        )

    def released(self) -> list[str]:
        return (
            sorted(p.stem for p in self.source_dir.glob("*.ipynb"))
            if self.source_dir.is_dir()
            else []
        )

    def match_chapter(self, name: str) -> str | None:
        """A released chapter named exactly ``name``, or the only one whose number is ``name``."""
        released = self.released()
        if name in released:
            return name
        hits = [c for c in released if c.split("_", 1)[0] == name]
        return hits[0] if len(hits) == 1 else None

    # -- grading settings ---------------------------------------------------------------------
    def sandbox_config(self, **limit_overrides: float | None) -> SandboxConfig:
        limits = Limits(
            **{
                **self.settings.limits,
                **{k: v for k, v in limit_overrides.items() if v is not None},
            }
        )
        sandbox = dict(self.settings.sandbox)
        forbidden = [str(self.path), *sandbox.pop("forbidden", [])]
        try:
            from ..project import find_root

            root = find_root()
            forbidden += [str(root / "solutions"), str(root / "_build"), str(root / ".git")]
        except FileNotFoundError:
            pass
        if self.db_url.startswith("sqlite:///"):
            forbidden.append(str(Path(self.db_url.removeprefix("sqlite:///")).parent))
        return SandboxConfig(limits=limits, forbidden=forbidden, **sandbox)
