"""The generate step refuses malformed chapter sources with file, cell and reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coursegrader.source import ChapterSourceError, load_chapter

HEADER = "# ---\n# jupyter:\n#   kernelspec:\n#     display_name: Python 3\n#     language: python\n#     name: python3\n# ---\n\n"


def meta(**fields) -> str:
    base = {"grade": False, "locked": False, "schema_version": 3, "solution": False, "task": False}
    base.update(fields)
    return "nbgrader=" + json.dumps(base)


def solution(gid: str, body: str = "    return 1") -> str:
    return (f"# %% {meta(grade_id=gid, solution=True)}\ndef f():\n    ### BEGIN SOLUTION\n"
            f"{body}\n    ### END SOLUTION\n\n")


def graded_cell(gid: str, points: int | None = 1) -> str:
    fields = {"grade_id": gid, "grade": True, "locked": True}
    if points is not None:
        fields["points"] = points
    return f"# %% {meta(**fields)}\nassert f() == 1\n\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "99_bad.py"
    path.write_text(HEADER + "# %% [markdown]\n# # Title\n\n" + text)
    return path


def test_valid_source_loads_with_stable_ids(tmp_path):
    nb = load_chapter(write(tmp_path, solution("ex") + graded_cell("ex_test")))
    assert [c["id"] for c in nb.cells] == ["cell-000", "ex", "ex_test"]


@pytest.mark.parametrize(
    ("body", "reason", "grade_id"),
    [
        (f"# %% {meta(grade_id='ex', solution=True)}\ndef f():\n    ### BEGIN SOLUTION\n    return 1\n\n"
         + graded_cell("ex_test"), "unclosed '### BEGIN SOLUTION'", "ex"),
        (solution("ex") + graded_cell("ex"), "duplicate grade_id", "ex"),
        (solution("ex") + graded_cell("ex_test", points=None), "graded cell without points", "ex_test"),
        (solution("ex") + graded_cell("ex_test", points=0), "graded cell without points", "ex_test"),
        (solution("a") + solution("b") + graded_cell("b_test"), "exercise with no test", "a"),
        (graded_cell("t0") + solution("a"), "exercise with no test", "a"),
        (solution("ex") + graded_cell("ex_test") + "# %%\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n",
         "solution markers in a cell that is not a solution cell", None),
        (f"# %% {meta(grade_id='ex', solution=True)}\ndef f():\n    return 1\n\n" + graded_cell("ex_test"),
         "solution cell without", "ex"),
        (solution("ex") + f"# %% {meta(grade_id='t', grade=True, locked=True, points=1)}\n"
         "### BEGIN HIDDEN TESTS\nassert True\n", "unclosed '### BEGIN HIDDEN TESTS'", "t"),
    ],
    ids=["unclosed-solution", "duplicate-id", "no-points", "zero-points", "exercise-without-test",
         "trailing-exercise", "markers-outside-solution", "solution-without-block", "unclosed-hidden"],
)
def test_malformed_sources_are_refused_with_file_cell_and_reason(tmp_path, body, reason, grade_id):
    path = write(tmp_path, body)
    with pytest.raises(ChapterSourceError) as info:
        load_chapter(path)
    message = str(info.value)
    assert str(path) in message
    assert "cell " in message and ", line " in message
    assert reason in message
    if grade_id:
        assert f"grade_id '{grade_id}'" in message


def test_line_number_points_at_the_cell_marker(tmp_path):
    path = write(tmp_path, solution("ex") + graded_cell("ex_test", points=None))
    with pytest.raises(ChapterSourceError) as info:
        load_chapter(path)
    line = int(str(info.value).split(", line ")[1].split()[0])
    assert path.read_text().splitlines()[line - 1].startswith("# %%")
    assert "ex_test" in path.read_text().splitlines()[line - 1]


def test_wrong_file_name_is_refused(tmp_path):
    path = tmp_path / "foundations.py"
    path.write_text(HEADER)
    with pytest.raises(ChapterSourceError, match="NN_slug.py"):
        load_chapter(path)


def test_cli_reports_error_and_exit_code(tmp_path, monkeypatch, capsys):
    from coursegrader.cli import main

    (tmp_path / "solutions").mkdir()
    (tmp_path / "_config.yml").write_text("repository:\n  url: https://github.com/o/r\n  branch: main\n")
    bad = tmp_path / "solutions" / "01_bad.py"
    bad.write_text(HEADER + solution("ex") + graded_cell("ex_test", points=None))
    monkeypatch.setenv("COURSE_ROOT", str(tmp_path))
    assert main(["generate"]) == 2
    err = capsys.readouterr().err
    assert "01_bad.py" in err and "graded cell without points" in err
    assert not (tmp_path / "chapters" / "01_bad.ipynb").exists()
