"""``course collect``: copy submissions from an inbox folder ``INBOX/STUDENT/CHAPTER.ipynb``.

Every distinct file is kept as a new numbered attempt (``attempt-002-1a2b3c4d.ipynb``); a file
identical to one already collected is reported as unchanged. Nothing is ever overwritten.
Symbolic links, unknown chapters and invalid student names are skipped with a reason.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from .course import CourseDir, CourseError

STUDENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}$")


@dataclass
class Collected:
    student: str
    chapter: str | None
    path: Path
    outcome: str  # "new", "unchanged", "skipped"
    detail: str = ""
    attempt: int | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def collect(course: CourseDir, inbox: Path, chapters: list[str] | None = None) -> list[Collected]:
    """Collect every ``INBOX/STUDENT/CHAPTER.ipynb`` (optionally only the given chapters)."""
    inbox = Path(inbox)
    if not inbox.is_dir():
        raise CourseError(f"inbox {inbox} is not a folder (expected INBOX/STUDENT/CHAPTER.ipynb)")
    released = course.released()
    if not released:
        raise CourseError(f"nothing is released in {course.path}; run `course release` first")
    wanted = {course.match_chapter(c) or c for c in chapters} if chapters else None
    gradebook = course.gradebook()
    report: list[Collected] = []
    for folder in sorted(inbox.iterdir()):
        student = folder.name
        if folder.is_symlink() or not folder.is_dir():
            if not folder.name.startswith("."):
                report.append(Collected(student, None, folder, "skipped", "not a student folder"))
            continue
        if not STUDENT_NAME.match(student):
            report.append(
                Collected(
                    student,
                    None,
                    folder,
                    "skipped",
                    "student folder names may use letters, digits and . _ @ + - only",
                )
            )
            continue
        for file in sorted(folder.iterdir()):
            if file.name.startswith("."):
                continue
            mode = os.lstat(file).st_mode
            if stat.S_ISLNK(mode) or not stat.S_ISREG(mode):
                report.append(
                    Collected(
                        student,
                        None,
                        file,
                        "skipped",
                        "not a regular file (links are not followed)",
                    )
                )
                continue
            chapter = course.match_chapter(file.stem) if file.suffix == ".ipynb" else None
            if chapter is None:
                report.append(
                    Collected(
                        student,
                        None,
                        file,
                        "skipped",
                        f"not a released chapter (expected one of: {', '.join(released)}.ipynb)",
                    )
                )
                continue
            if wanted is not None and chapter not in wanted:
                continue
            sha = _sha256(file)
            existing = gradebook.find_submission(student, chapter, sha)
            if existing is not None:
                report.append(
                    Collected(
                        student,
                        chapter,
                        file,
                        "unchanged",
                        f"identical to attempt {existing.attempt}",
                        existing.attempt,
                    )
                )
                continue
            attempt = gradebook.next_attempt(student, chapter)
            target_dir = course.submitted_dir / student / chapter
            target_dir.mkdir(parents=True, exist_ok=True)
            target = target_dir / f"attempt-{attempt:03d}-{sha[:8]}.ipynb"
            if target.exists():  # left by an interrupted collect: same name means same content
                if _sha256(target) != sha:
                    raise CourseError(
                        f"{target} exists with other content; move it away and collect again"
                    )
            else:
                tmp = target.with_suffix(".part")
                shutil.copyfile(file, tmp)
                os.chmod(tmp, 0o600)
                tmp.replace(target)
            gradebook.add_submission(
                student,
                chapter,
                attempt,
                sha,
                file.stat().st_size,
                file.name,
                str(target.relative_to(course.path)),
            )
            report.append(Collected(student, chapter, file, "new", f"attempt {attempt}", attempt))
    return report
