"""The instructor's workflow through the ``course`` command: release, collect, autograde,
feedback, export; re-release; and a killed autograde resumed with the same grades."""

from __future__ import annotations

import csv
import io
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from sqlalchemy import create_engine, func, select

from coursegrader.cli import main
from coursegrader.grading import gradebook as gb
from coursegrader.grading.autograde import autograde
from coursegrader.grading.collect import collect
from coursegrader.grading.course import CourseDir

from .corpus import SOLVED, solved, stub
from .helpers import FAST, TOY, editions, released_course

pytestmark = pytest.mark.slow
LIMIT_FLAGS = ["--cell-timeout", str(FAST["cell_timeout_s"]), "--memory-mb", str(FAST["memory_mb"])]


@pytest.fixture
def repo_root(tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A course repository holding only the toy chapter (``course release`` reads solutions/)."""
    fake = tmp_path / "repo"
    (fake / "solutions").mkdir(parents=True)
    shutil.copy(root / "_config.yml", fake / "_config.yml")
    shutil.copy(TOY, fake / "solutions" / TOY.name)
    monkeypatch.setenv("COURSE_ROOT", str(fake))
    return fake


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'grades.db'}"
    url = os.environ.get("LLMCOURSE_TEST_POSTGRES_URL")
    if not url:
        pytest.fail(
            "LLMCOURSE_TEST_POSTGRES_URL is not set: start a server with `scripts/start_postgres.sh` "
            "and export the URL it prints, or deselect with -m 'not postgres'"
        )
    engine = create_engine(url)
    gb.metadata.drop_all(engine)
    engine.dispose()
    return url


def write(nb: nbformat.NotebookNode, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_release_collect_autograde_feedback_export(
    repo_root: Path, tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture
) -> None:
    course_dir, inbox = tmp_path / "course", tmp_path / "inbox"
    common = ["--course", str(course_dir), "--db", db_url]
    assert main(["release", "90", *common]) == 0
    assert "90_toy: released, 3 graded test cells, 5 points" in capsys.readouterr().out
    assert oct(course_dir.stat().st_mode & 0o777) == "0o700"

    released = nbformat.read(course_dir / "release" / "90_toy.ipynb", as_version=4)
    assert "SECRET-ADD-CHECK" not in nbformat.writes(released)
    write(solved(released), inbox / "ann" / "90_toy.ipynb")
    write(stub(released), inbox / "ben" / "90_toy.ipynb")
    partial = stub(released)
    next(c for c in partial.cells if c.get("id") == "add").source = SOLVED["add"]
    write(partial, inbox / "cat" / "90_toy.ipynb")
    (inbox / "cat" / "notes.txt").write_text("not a notebook")
    (inbox / "zed").mkdir()
    (inbox / "zed" / "90_toy.ipynb").symlink_to(inbox / "ann" / "90_toy.ipynb")
    (inbox / "bad name!").mkdir()

    assert main(["collect", str(inbox), *common]) == 0
    out = capsys.readouterr().out
    assert "3 new" in out and "3 skipped" in out
    assert "links are not followed" in out and "not a released chapter" in out
    assert main(["collect", str(inbox), *common]) == 0
    assert "3 unchanged" in capsys.readouterr().out

    assert main(["autograde", *common, "--workers", "2", "--no-progress", *LIMIT_FLAGS]) == 0
    assert "graded 3, invalid 0, grader errors 0" in capsys.readouterr().out
    assert main(["autograde", *common, "--no-progress"]) == 0
    assert "graded 0, invalid 0, grader errors 0, already up to date 3" in capsys.readouterr().out

    # Ann resubmits a worse version: a new attempt, graded on its own; nothing is overwritten.
    write(solved(released, mean="def mean(xs):\n    return 2.0"), inbox / "ann" / "90_toy.ipynb")
    assert main(["collect", str(inbox), *common]) == 0
    assert "attempt 2" in capsys.readouterr().out
    assert len(list((course_dir / "submitted" / "ann" / "90_toy").glob("attempt-*.ipynb"))) == 2
    assert main(["autograde", *common, "--no-progress", *LIMIT_FLAGS]) == 0
    assert "graded 1," in capsys.readouterr().out

    assert main(["feedback", *common]) == 0
    assert "wrote 3 feedback page(s)" in capsys.readouterr().out
    page = (course_dir / "feedback" / "ann" / "90_toy.html").read_text()
    assert "3 / 5" in page and "mean_test" in page and "hidden test failed" in page
    assert "SECRET" not in page and "close_enough(add(0.25" not in page

    output = tmp_path / "grades.csv"
    assert main(["export", *common, "--output", str(output)]) == 0
    assert "(3 rows)" in capsys.readouterr().out
    rows = {r["student"]: r for r in csv.DictReader(output.open())}
    assert {s: (float(r["score"]), r["attempt"], r["status"]) for s, r in rows.items()} == {
        "ann": (3.0, "2", "graded"),
        "ben": (0.0, "1", "graded"),
        "cat": (1.0, "1", "graded"),
    }
    assert main(["export", *common, "--by-test"]) == 0
    by_test = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(by_test) == 9 and {r["grade_id"] for r in by_test} == {
        "add_test",
        "mean_test",
        "scale_test",
    }


def test_rerelease_needs_force_and_regrades(
    repo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    common = ["--course", str(tmp_path / "course")]
    assert main(["release", "90_toy", *common]) == 0
    source = repo_root / "solutions" / TOY.name
    source.write_text(source.read_text().replace('"points": 1,', '"points": 3,'))
    assert main(["release", "90_toy", *common]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["release", "90_toy", "--force", *common]) == 0
    assert "7 points" in capsys.readouterr().out
    assert main(["release", "99", *common]) == 2


def _sandbox_processes() -> list[int]:
    uids = {p.pw_uid for p in pwd.getpwall() if p.pw_name.startswith("coursegrader-sandbox")}
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid in uids:
                    found.append(int(entry.name))
            except FileNotFoundError:
                pass
    return found


def _recorded(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        results = conn.execute(select(func.count()).select_from(gb.results)).scalar()
        tests = conn.execute(select(func.count()).select_from(gb.test_results)).scalar()
    engine.dispose()
    return results, tests


def test_killed_autograde_resumes_with_identical_grades(tmp_path: Path) -> None:
    instructor, student = editions(TOY)
    variants = {
        "s1": solved(student),
        "s2": stub(student),
        "s3": solved(student, mean="def mean(xs):\n    return 0.0"),
        "s4": solved(
            student, add="def add(a, b):\n    import ctypes\n    return ctypes.string_at(0)"
        ),
        "s5": solved(
            student,
            scale="import numpy as np\nnp.testing.assert_allclose = lambda *a, **k: None\n"
            "def scale(v, k):\n    return v",
        ),
        "s6": solved(student),
    }
    for name, nb in variants.items():
        write(nb, tmp_path / "inbox" / name / "90_toy.ipynb")
    interrupted = released_course(tmp_path / "interrupted")
    clean = released_course(tmp_path / "clean")
    for course in (interrupted, clean):
        collect(course, tmp_path / "inbox")

    cmd = [
        sys.executable,
        "-m",
        "coursegrader.cli",
        "autograde",
        "--course",
        str(interrupted.path),
        "--workers",
        "1",
        "--no-progress",
        *LIMIT_FLAGS,
    ]
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while (
        _recorded(interrupted.db_url)[0] < 2 and time.monotonic() < deadline and proc.poll() is None
    ):
        time.sleep(0.2)
    assert proc.poll() is None, "autograde finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    results, tests = _recorded(interrupted.db_url)
    assert 2 <= results < len(variants)
    assert tests == 3 * results  # never half-written: every result has all its test rows
    deadline = time.monotonic() + 15
    while _sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _sandbox_processes() == []  # the workers' sandboxes died with autograde

    again = autograde(
        CourseDir(interrupted.path),
        workers=2,
        progress=False,
        config=interrupted.sandbox_config(**FAST),
    )
    assert again.graded == len(variants) - results and again.skipped == results
    autograde(clean, workers=2, progress=False, config=clean.sandbox_config(**FAST))

    def snapshot(course: CourseDir) -> dict:
        return {
            g.student: (
                g.result.score,
                [(t.grade_id, t.status) for t in g.result.tests],
                g.result.flag_codes(("tamper",)),
            )
            for g in course.gradebook().grades()
        }

    assert snapshot(interrupted) == snapshot(clean)
    assert snapshot(clean)["s1"][0] == 5.0 and snapshot(clean)["s5"][0] == 3.0
