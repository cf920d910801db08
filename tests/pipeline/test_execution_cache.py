"""The execution cache re-executes exactly the chapters whose source (or the library) changed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from coursegrader import source
from coursegrader.execute import execute_all

CHAPTER = '''# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter {n}

# %%
value = {n} * 2
print(value)
'''


@pytest.fixture
def tiny_project(tmp_path: Path, monkeypatch) -> Path:
    (tmp_path / "solutions").mkdir()
    (tmp_path / "chapters").mkdir()
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "mod.py").write_text("X = 1\n")
    (tmp_path / "_config.yml").write_text("repository:\n  url: https://github.com/o/r\n  branch: main\n")
    for n in (1, 2):
        (tmp_path / "solutions" / f"0{n}_tiny.py").write_text(CHAPTER.format(n=n))
    monkeypatch.setenv("COURSE_EXEC_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.slow
def test_editing_one_chapter_reexecutes_only_that_chapter(tiny_project: Path):
    sources = source.chapter_sources(tiny_project)
    first = execute_all(sources, tiny_project)
    assert [r.cached for r in first] == [False, False]
    assert all(r.error is None for r in first)

    again = execute_all(sources, tiny_project)
    assert [r.cached for r in again] == [True, True]

    edited = tiny_project / "solutions" / "02_tiny.py"
    edited.write_text(edited.read_text().replace("value = 2 * 2", "value = 2 * 3"))
    after_edit = execute_all(sources, tiny_project)
    assert [r.cached for r in after_edit] == [True, False]
    assert len(list((tiny_project / "cache").glob("02_tiny.*.ipynb"))) == 1, "stale cache entry kept"

    (tiny_project / "lib" / "mod.py").write_text("X = 2\n")
    after_lib = execute_all(sources, tiny_project)
    assert [r.cached for r in after_lib] == [False, False], "a library change must re-execute every chapter"


@pytest.mark.slow
def test_a_failing_chapter_reports_the_cell(tiny_project: Path):
    broken = tiny_project / "solutions" / "01_tiny.py"
    broken.write_text(broken.read_text() + "\n# %%\nraise RuntimeError('boom in chapter one')\n")
    result = execute_all([broken], tiny_project)[0]
    assert result.error and "boom in chapter one" in result.error
    shutil.rmtree(tiny_project / "cache")
