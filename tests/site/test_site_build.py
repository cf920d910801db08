"""The built website: every chapter page, outputs shown, no solution code or hidden tests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from coursegrader import source
from coursegrader.generate import instructor_notebook
from coursegrader.project import repository

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = source.chapter_sources(ROOT)

pytestmark = [pytest.mark.slow]


def _secret_lines(path: Path) -> list[str]:
    """Distinctive lines of every solution block and hidden-test block of a chapter."""
    nb = instructor_notebook(path, repository(ROOT))
    lines: list[str] = []
    for cell in nb.cells:
        inside = False
        for line in cell.source.splitlines():
            stripped = line.strip()
            if stripped in (source.BEGIN_SOLUTION, source.BEGIN_HIDDEN):
                inside = True
            elif stripped in (source.END_SOLUTION, source.END_HIDDEN):
                inside = False
            elif inside and len(stripped) >= 16 and not stripped.startswith("#"):
                lines.append(stripped)
    return lines


def _html_text(html: str) -> str:
    """Visible text of a page, with tags removed and entities decoded (as a reader sees code)."""
    import html as html_lib

    return html_lib.unescape(re.sub(r"<[^>]+>", "", html))


def test_every_chapter_page_is_built(built_site: Path):
    for path in CHAPTERS:
        assert (built_site / "chapters" / f"{path.stem}.html").is_file()
    assert (built_site / "index.html").is_file()


def test_no_solution_code_or_hidden_tests_in_any_page(built_site: Path):
    pages = {p: _html_text(p.read_text(encoding="utf-8")) for p in built_site.rglob("*.html")}
    pages.update({p: p.read_text(encoding="utf-8") for p in built_site.rglob("*.ipynb")})
    for path in CHAPTERS:
        for secret in _secret_lines(path):
            leaks = [str(p.relative_to(built_site)) for p, text in pages.items() if secret in text]
            assert not leaks, f"{path.stem}: solution/hidden-test line {secret!r} appears in {leaks}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_links_to_its_notebook_in_colab(built_site: Path, path: Path):
    html = (built_site / "chapters" / f"{path.stem}.html").read_text(encoding="utf-8")
    expected = repository(ROOT).colab_url(f"chapters/{path.stem}.ipynb")
    assert expected in html, f"no Colab link {expected} on the {path.stem} page"
    assert (ROOT / "chapters" / f"{path.stem}.ipynb").is_file()


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_page_shows_demo_outputs(built_site: Path, path: Path):
    html = (built_site / "chapters" / f"{path.stem}.html").read_text(encoding="utf-8")
    images = re.findall(r'<img[^>]+src="([^"]+)"', html)
    assert images, f"{path.stem}: no figure on the page (demo outputs missing?)"
    for src in images:
        if not src.startswith(("http:", "https:", "data:")):
            assert (built_site / "chapters" / src).resolve().is_file(), f"{path.stem}: broken image {src}"
    assert "raise NotImplementedError()" in _html_text(html), "exercise stubs should be shown"
    assert "Traceback" not in html, f"{path.stem}: an error traceback is shown on the page"
