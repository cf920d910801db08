"""Shared fixtures: the repository root, executed chapters (shared cache) and the built site."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("COURSE_ROOT", str(ROOT))
_mirror = ROOT.parent / "shared" / "data"
if "LLMCOURSE_DATA_MIRROR" not in os.environ and _mirror.is_dir():
    os.environ["LLMCOURSE_DATA_MIRROR"] = str(_mirror)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def executed_chapters(root: Path) -> dict:
    """Every chapter's instructor edition, executed once (or taken from the shared cache)."""
    from coursegrader import source
    from coursegrader.execute import execute_all

    results = execute_all(source.chapter_sources(root), root)
    return {r.chapter: r for r in results}


@pytest.fixture(scope="session")
def built_site(root: Path, executed_chapters: dict) -> Path:
    """The website, built once per session from the cached executions."""
    from coursegrader.site import build

    return build(root)
