"""``course autograde``: grade the latest submission of every student, in parallel, resumably.

Each worker process grades one submission at a time in its own sandbox slot (its own sandbox
user); the main process writes each result to the gradebook in one transaction as soon as it
arrives. What is already graded against the current release is skipped, so killing autograde
and running it again finishes the job with the same grades.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

from tqdm import tqdm

from . import results as R
from .course import CourseDir
from .gradebook import Submission
from .plan import Assignment
from .results import SubmissionResult
from .sandbox import SandboxConfig, die_with_parent

_worker: dict = {}


@dataclass
class AutogradeSummary:
    graded: int = 0
    invalid: int = 0
    grader_errors: int = 0
    skipped: int = 0  # already graded against the current release
    seconds: float = 0.0
    flagged: list[tuple[str, str, list[str]]] = field(
        default_factory=list
    )  # (student, chapter, tamper codes)
    results: list[SubmissionResult] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.graded + self.invalid + self.grader_errors

    @property
    def throughput(self) -> float:
        return self.total / self.seconds if self.seconds else 0.0


def _init_worker(
    slots, course_path: str, db_url: str, config: SandboxConfig, max_mb: float
) -> None:
    die_with_parent()
    _worker.update(
        slot=slots.get(),
        course=CourseDir(course_path, db_url),
        config=config,
        max_mb=max_mb,
        assignments={},
    )


def _assignment(chapter: str) -> Assignment:
    cache = _worker["assignments"]
    if chapter not in cache:
        cache[chapter] = _worker["course"].assignment(chapter)
    return cache[chapter]


def _grade_job(job: tuple[int, str, str, str]) -> dict:
    """Grade one submission in a worker; never raises (failures become GRADER_ERROR results)."""
    from .engine import grade_file

    submission_id, student, chapter, stored = job
    try:
        assignment = _assignment(chapter)
        path = _worker["course"].path / stored
        result = grade_file(
            path,
            assignment,
            _worker["config"],
            student=student,
            submission_id=submission_id,
            slot=_worker["slot"],
            max_mb=_worker["max_mb"],
        )
    except (
        Exception
    ) as exc:  # a grader bug must not stop the batch; it is recorded and retried next run
        result = SubmissionResult(
            student,
            chapter,
            submission_id,
            R.GRADER_ERROR,
            0.0,
            0.0,
            error=f"grader error: {type(exc).__name__}: {exc}",
        )
    return result.to_dict()


def autograde(
    course: CourseDir,
    chapters: list[str] | None = None,
    students: list[str] | None = None,
    *,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
    config: SandboxConfig | None = None,
    keep_results: bool = False,
) -> AutogradeSummary:
    """Grade pending submissions; returns counts (and the results if ``keep_results``)."""
    start = time.monotonic()
    gradebook = course.gradebook()
    config = config or course.sandbox_config()
    pending: list[Submission] = gradebook.to_grade(chapters, students, force=force)
    summary = AutogradeSummary(
        skipped=len(gradebook.latest_submissions(chapters, students)) - len(pending)
    )
    if not pending:
        summary.seconds = time.monotonic() - start
        return summary
    workers = max(1, min(workers or course.settings.workers or os.cpu_count() or 1, len(pending)))
    jobs = [(s.id, s.student, s.chapter, s.stored_path) for s in pending]
    bar = tqdm(
        total=len(jobs), desc="autograde", unit="nb", disable=not progress, dynamic_ncols=True
    )

    def record(data: dict) -> None:
        result = SubmissionResult.from_dict(data)
        gradebook.record(result)
        if result.status == R.GRADED:
            summary.graded += 1
        elif result.status == R.INVALID:
            summary.invalid += 1
        else:
            summary.grader_errors += 1
        tamper = result.flag_codes((R.TAMPER,))
        if tamper:
            summary.flagged.append((result.student, result.chapter, tamper))
        if keep_results:
            summary.results.append(result)
        bar.set_postfix_str(
            f"{result.student}: {result.score:g}/{result.max_score:g}", refresh=False
        )
        bar.update()

    if workers == 1:  # no pool to start: grade here, one sandbox at a time
        _worker.update(
            slot=0,
            course=course,
            config=config,
            max_mb=course.settings.max_submission_mb,
            assignments={},
        )
        for job in jobs:
            record(_grade_job(job))
    else:
        context = multiprocessing.get_context("spawn")
        slots = context.Queue()
        for slot in range(workers):
            slots.put(slot)
        with ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(
                slots,
                str(course.path),
                course.db_url,
                config,
                course.settings.max_submission_mb,
            ),
        ) as pool:
            futures = {pool.submit(_grade_job, job): job for job in jobs}
            for future in as_completed(futures):
                try:
                    record(future.result())
                except (
                    Exception
                ) as exc:  # a worker died (e.g. killed by the OOM killer): retried next run
                    submission_id, student, chapter, _ = futures[future]
                    record(
                        SubmissionResult(
                            student,
                            chapter,
                            submission_id,
                            R.GRADER_ERROR,
                            0.0,
                            0.0,
                            error=f"grader error: the worker failed ({type(exc).__name__}: {exc})",
                        ).to_dict()
                    )
    bar.close()
    summary.seconds = time.monotonic() - start
    return summary
