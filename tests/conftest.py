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


class _LazyExecutions(dict):
    """Executes a chapter (or takes it from the shared cache) the first time it is asked for,
    so ``pytest -k 03_lstm`` runs one chapter, not all of them."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, chapter: str):
        from coursegrader import source
        from coursegrader.execute import execute_all

        path = next(p for p in source.chapter_sources(self.root) if p.stem == chapter)
        self[chapter] = execute_all([path], self.root)[0]
        return self[chapter]


@pytest.fixture(scope="session")
def executed_chapters(root: Path) -> _LazyExecutions:
    """Every chapter's instructor edition, executed once (or taken from the shared cache)."""
    return _LazyExecutions(root)


@pytest.fixture(scope="session")
def built_site(root: Path, executed_chapters: dict) -> Path:
    """The website, built once per session from the cached executions."""
    from coursegrader.site import build

    return build(root)
