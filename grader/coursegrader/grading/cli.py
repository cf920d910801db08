"""The instructors' subcommands of ``course`` (and the students' ``course check``).

::

    course release 00 [01 ...] [--force]         freeze chapters, write student editions to hand out
    course collect INBOX [--chapter 00]          INBOX/STUDENT/CHAPTER.ipynb -> course/submitted
    course autograde [00 ...] [--workers N]      grade pending submissions (resumable)
    course feedback [00 ...] [--student S]       course/feedback/STUDENT/CHAPTER.html
    course export [--output grades.csv]          CSV of grades
    course check NOTEBOOK                        students: public tests k/n passed

Every instructor command takes ``--course DIR`` (default ``$COURSEGRADER_COURSE`` or
``./course``) and ``--db URL`` (default ``$COURSEGRADER_DB_URL``, ``db_url`` in
``COURSE/grader.yml``, or SQLite in the course folder).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .course import CourseDir, CourseError


def _course(args: argparse.Namespace) -> CourseDir:
    return CourseDir.default(args.course, args.db)


def _chapters(course: CourseDir, names: list[str]) -> list[str] | None:
    if not names:
        return None
    chosen = []
    for name in names:
        match = course.match_chapter(name)
        if match is None:
            raise CourseError(
                f"{name!r} is not a released chapter (released: {', '.join(course.released()) or 'none'})"
            )
        chosen.append(match)
    return chosen


def _cmd_release(args: argparse.Namespace) -> int:
    from ..project import find_root
    from .release import release, resolve_sources

    course = _course(args)
    for item in release(course, resolve_sources(find_root(), args.chapters), force=args.force):
        state = "released" if item.changed else "unchanged"
        print(
            f"{item.chapter}: {state}, {item.tests} graded test cells, {item.max_score:g} points "
            f"-> hand out {item.student_edition}"
        )
    return 0


def _cmd_collect(args: argparse.Namespace) -> int:
    from .collect import collect

    report = collect(_course(args), Path(args.inbox), args.chapter or None)
    counts: dict[str, int] = {}
    for item in report:
        counts[item.outcome] = counts.get(item.outcome, 0) + 1
        if item.outcome != "unchanged" or args.verbose:
            print(f"{item.outcome:9} {item.student}/{item.path.name}: {item.detail}")
    print(", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing to collect")
    return 0


def _cmd_autograde(args: argparse.Namespace) -> int:
    from .autograde import autograde
    from .sandbox import resolve_level

    course = _course(args)
    config = course.sandbox_config(
        cell_timeout_s=args.cell_timeout,
        notebook_timeout_s=args.notebook_timeout,
        memory_mb=args.memory_mb,
    )
    if args.sandbox:
        config.level = args.sandbox
    level = resolve_level(config)
    print(
        f"sandbox: {level}"
        + (
            ""
            if level != "rlimits"
            else "  (WARNING: no file-system or network isolation on this machine; see the instructor's guide)"
        ),
        file=sys.stderr,
    )
    summary = autograde(
        course,
        _chapters(course, args.chapters),
        args.student or None,
        workers=args.workers,
        force=args.force,
        progress=not args.no_progress,
        config=config,
    )
    print(
        f"graded {summary.graded}, invalid {summary.invalid}, grader errors {summary.grader_errors}, "
        f"already up to date {summary.skipped} ({summary.seconds:.1f} s, {summary.throughput:.2f} notebooks/s)"
    )
    for student, chapter, codes in summary.flagged:
        print(f"  flagged: {student} {chapter}: {', '.join(codes)}")
    if summary.grader_errors:
        print("grader errors are retried by the next `course autograde`", file=sys.stderr)
    return 1 if summary.grader_errors else 0


def _cmd_feedback(args: argparse.Namespace) -> int:
    from .feedback import write_feedback

    course = _course(args)
    written = write_feedback(course, _chapters(course, args.chapters), args.student or None)
    print(f"wrote {len(written)} feedback page(s) under {course.feedback_dir}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_csv

    course = _course(args)
    text = export_csv(
        course,
        Path(args.output) if args.output else None,
        _chapters(course, args.chapters),
        by_test=args.by_test,
    )
    if args.output:
        print(f"wrote {args.output} ({text.count(chr(10)) - 1} rows)")
    else:
        sys.stdout.write(text)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from .selfcheck import self_check

    report = self_check(args.notebook, args.reference, cell_timeout_s=args.cell_timeout)
    return 0 if report.passed == report.total else 1


def _guard(func):
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except CourseError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the grading subcommands to the ``course`` parser."""

    def instructor(name: str, help_: str, func) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help_, description=help_)
        p.add_argument("--course", help="course folder (default: $COURSEGRADER_COURSE or ./course)")
        p.add_argument(
            "--db", help="SQLAlchemy URL of the gradebook (default: SQLite in the course folder)"
        )
        p.set_defaults(func=_guard(func))
        return p

    p = instructor(
        "release",
        "freeze chapters for grading and write the student editions to hand out",
        _cmd_release,
    )
    p.add_argument("chapters", nargs="*", help="chapter numbers or names (default: all)")
    p.add_argument(
        "--force", action="store_true", help="re-release a chapter whose content changed"
    )

    p = instructor("collect", "collect submissions from INBOX/STUDENT/CHAPTER.ipynb", _cmd_collect)
    p.add_argument("inbox", help="folder with one sub-folder per student")
    p.add_argument("--chapter", action="append", help="only this chapter (repeatable)")
    p.add_argument("--verbose", action="store_true", help="also list unchanged files")

    p = instructor(
        "autograde", "grade every pending submission in sandboxes (resumable)", _cmd_autograde
    )
    p.add_argument("chapters", nargs="*", help="chapter numbers or names (default: all)")
    p.add_argument("--student", action="append", help="only this student (repeatable)")
    p.add_argument("--workers", type=int, help="parallel sandboxes (default: number of CPUs)")
    p.add_argument(
        "--force", action="store_true", help="re-grade submissions that are already graded"
    )
    p.add_argument("--cell-timeout", type=float, help="seconds per cell")
    p.add_argument("--notebook-timeout", type=float, help="seconds per notebook")
    p.add_argument("--memory-mb", type=int, help="address-space limit per process")
    p.add_argument(
        "--sandbox", choices=["auto", "namespaces", "userns", "rlimits"], help="sandbox level"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = instructor("feedback", "write an HTML feedback page per student and chapter", _cmd_feedback)
    p.add_argument("chapters", nargs="*")
    p.add_argument("--student", action="append")

    p = instructor("export", "grades as CSV", _cmd_export)
    p.add_argument("chapters", nargs="*")
    p.add_argument("--output", "-o", help="file to write (default: standard output)")
    p.add_argument("--by-test", action="store_true", help="one row per test instead of per chapter")

    p = subparsers.add_parser(
        "check", help="students: run the public tests the way the grader does"
    )
    p.add_argument("notebook")
    p.add_argument(
        "--reference",
        help="the student edition to take the tests from (default: found in chapters/)",
    )
    p.add_argument("--cell-timeout", type=float, default=120.0)
    p.set_defaults(func=_cmd_check)
