"""The adversarial corpus (corpus.py), graded in one parallel batch: each case's expected outcome.

One autograde run grades every case, so the tests also show that no submission, however
broken or hostile, stops the batch or disturbs the others.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from coursegrader.grading import results as R
from coursegrader.grading.autograde import autograde
from coursegrader.grading.collect import collect
from coursegrader.grading.feedback import write_feedback
from coursegrader.grading.sandbox import Limits, SandboxConfig

from .corpus import CASES, Case, write_case
from .helpers import FAST, TOY, editions, released_course

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("corpus")
    course = released_course(base / "course")
    instructor, student = editions(TOY)
    for case in CASES:
        write_case(case, instructor, student, base / "inbox" / case.name / "90_toy.ipynb")
    collected = collect(course, base / "inbox")
    assert {c.outcome for c in collected} == {"new"}
    config = course.sandbox_config(**FAST)
    summary = autograde(course, workers=2, progress=False, config=config, keep_results=True)
    write_feedback(course)
    return {
        "course": course,
        "summary": summary,
        "results": {r.student: r for r in summary.results},
    }


def test_corpus_is_large_enough_and_named_by_purpose() -> None:
    assert len(CASES) >= 20
    assert len({c.name for c in CASES}) == len(CASES)
    assert all(c.purpose and c.name.replace("_", "").isalnum() for c in CASES)


def test_batch_grades_every_case_once(graded: dict) -> None:
    summary = graded["summary"]
    assert summary.grader_errors == 0, [
        r.error for r in summary.results if r.status == R.GRADER_ERROR
    ]
    assert sorted(graded["results"]) == sorted(c.name for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_outcome(case: Case, graded: dict) -> None:
    result = graded["results"][case.name]
    expect = case.expect
    tests = {t.grade_id: t for t in result.tests}
    detail = (
        f"{case.name}: {result.status} {result.score}, error={result.error}, tests="
        + "; ".join(f"{t.grade_id}={t.status}({t.message[:80]})" for t in result.tests)
        + f", flags={result.flag_codes()}"
    )
    assert result.status == expect.status, detail
    assert result.score == expect.score, detail
    assert result.max_score == 5.0
    for gid, status in expect.tests.items():
        assert tests[gid].status == status, detail
    for gid, text in expect.message.items():
        assert text in tests[gid].message, detail
    codes = set(result.flag_codes())
    assert expect.flags <= codes, detail
    assert not (expect.absent & codes), detail
    if expect.no_tamper:
        assert not result.flag_codes((R.TAMPER,)), detail
    if expect.error:
        assert expect.error in (result.error or ""), detail
    # a tampered test always names its reason
    for test in result.tests:
        if test.status == R.TAMPERED:
            assert test.points == 0 and test.message, detail


def test_no_hidden_test_text_reaches_results_or_feedback(graded: dict, toy_assignment) -> None:
    course = graded["course"]
    secrets = [
        "SECRET-ADD-CHECK",
        "SECRET-MEAN-CHECK",
        "SECRET-SCALE-CHECK",
        *toy_assignment.hidden_lines,
    ]
    for result in graded["results"].values():
        texts = (
            [t.message for t in result.tests]
            + [c.message for c in result.cells]
            + [f.message for f in result.flags]
        )
        for secret in secrets:
            assert not any(secret in text for text in texts), (result.student, secret)
    pages = list(Path(course.feedback_dir).rglob("*.html"))
    assert len(pages) == len(CASES)
    for page in pages:
        html = page.read_text()
        assert not any(secret in html for secret in secrets), page


def test_exfiltration_attempt_is_redacted(graded: dict) -> None:
    result = graded["results"]["hidden_test_exfiltration"]
    scale = next(t for t in result.tests if t.grade_id == "scale_test")
    assert "ValueError" in scale.message and "[hidden test code removed]" in scale.message


def test_disk_filler_stayed_inside_the_sandbox(graded: dict) -> None:
    result = graded["results"]["disk_filler"]
    assert result.sandbox in ("namespaces", "userns")
    assert not list(Path("/tmp").glob("fill-*.bin"))


def test_timeouts_are_named_per_cell(graded: dict) -> None:
    result = graded["results"]["infinite_loop"]
    report = next(c for c in result.cells if c.cell == "mean_test")
    assert report.status == "timeout" and "3 s per cell" in report.message


def test_config_is_really_fast() -> None:
    """The corpus relies on these limits being small; guard against someone raising them."""
    limits = SandboxConfig(limits=Limits(**FAST)).limits
    assert limits.cell_timeout_s <= 5 and limits.disk_mb <= 64 and limits.memory_mb <= 2048
