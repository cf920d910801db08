"""The students' self-check (``course check NOTEBOOK``): public tests only, stdin disabled."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from coursegrader.cli import main

from .corpus import SOLVED, solved, stub
from .helpers import TOY, editions


@pytest.fixture
def repo(tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository whose chapters/ holds the toy chapter's student edition."""
    fake = tmp_path / "repo"
    (fake / "solutions").mkdir(parents=True)
    (fake / "chapters").mkdir()
    shutil.copy(root / "_config.yml", fake / "_config.yml")
    nbformat.write(editions(TOY)[1], fake / "chapters" / "90_toy.ipynb")
    monkeypatch.setenv("COURSE_ROOT", str(fake))
    return fake


def check(
    nb: nbformat.NotebookNode, folder: Path, capsys: pytest.CaptureFixture
) -> tuple[int, str]:
    path = folder / "work" / "90_toy.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    code = main(["check", str(path), "--cell-timeout", "10"])
    return code, capsys.readouterr().out


def test_reports_public_tests_and_says_hidden_tests_come_later(
    repo: Path, tmp_path: Path, capsys
) -> None:
    student = editions(TOY)[1]
    partial = stub(student)
    next(c for c in partial.cells if c.get("id") == "add").source = SOLVED["add"]
    code, out = check(partial, tmp_path, capsys)
    assert code == 1
    assert out.strip().endswith("public tests 1/3 passed; hidden tests run at grading")
    assert "ok   add_test (1 pt)" in out and "FAIL mean_test (2 pt): not solved yet" in out


def test_passing_the_public_tests_is_not_the_grade(repo: Path, tmp_path: Path, capsys) -> None:
    student = editions(TOY)[1]
    code, out = check(solved(student, mean="def mean(xs):\n    return 2.0"), tmp_path, capsys)
    assert code == 0 and "public tests 3/3 passed; hidden tests run at grading" in out
    assert "SECRET" not in out


def test_stdin_is_disabled_in_the_self_check_too(repo: Path, tmp_path: Path, capsys) -> None:
    student = editions(TOY)[1]
    code, out = check(
        solved(student, mean="def mean(xs):\n    return float(input('n? '))"), tmp_path, capsys
    )
    assert code == 1
    assert "input() and sys.stdin are disabled" in out


def test_edited_public_tests_do_not_help(repo: Path, tmp_path: Path, capsys) -> None:
    nb = stub(editions(TOY)[1])
    next(c for c in nb.cells if c.get("id") == "add_test").source = "pass"
    code, out = check(nb, tmp_path, capsys)
    assert "public tests 0/3 passed" in out and "was edited" in out


def test_without_a_student_edition_it_uses_the_notebooks_own_tests(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COURSE_ROOT", str(tmp_path / "nowhere"))
    code, out = check(solved(editions(TOY)[1]), tmp_path, capsys)
    assert code == 0 and "using its own test cells" in out
    assert "public tests 3/3 passed; hidden tests run at grading" in out
