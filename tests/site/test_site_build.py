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


_LIBRARY_LINES = {
    line.strip() for f in (ROOT / "lib").rglob("*.py") for line in f.read_text(encoding="utf-8").splitlines()
}


def _secret_lines(path: Path) -> list[str]:
    """Distinctive lines of every solution block and hidden-test block of a chapter, leaving out
    lines that the student edition shows anyway (e.g. the same line in a demonstration)."""
    import nbformat

    nb = instructor_notebook(path, repository(ROOT))
    public = {
        line.strip()
        for student in (ROOT / "chapters").glob("*.ipynb")
        for cell in nbformat.read(student, as_version=4).cells
        for line in cell.source.splitlines()
    }
    public |= _LIBRARY_LINES  # the library is public; chapters print parts of it on purpose
    lines: list[str] = []
    for cell in nb.cells:
        inside = False
        for line in cell.source.splitlines():
            stripped = line.strip()
            if stripped in (source.BEGIN_SOLUTION, source.BEGIN_HIDDEN):
                inside = True
            elif stripped in (source.END_SOLUTION, source.END_HIDDEN):
                inside = False
            elif (inside and len(stripped) >= 16 and not stripped.startswith("#")
                  and re.search(r"[A-Za-z_]{3,}", stripped) and stripped not in public):
                lines.append(stripped)  # code, not a bare row of numbers
    return lines


def _notebook_text(path: Path) -> str:
    """Cell sources and text outputs of a notebook, one line per line."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    parts = [cell.source for cell in nb.cells]
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", "") or str(output.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def _html_text(html: str) -> str:
    """Visible text of a page, with tags removed and entities decoded (as a reader sees code)."""
    import html as html_lib

    return html_lib.unescape(re.sub(r"<[^>]+>", "", html))


def test_every_chapter_page_is_built(built_site: Path):
    for path in CHAPTERS:
        assert (built_site / "chapters" / f"{path.stem}.html").is_file()
    assert (built_site / "index.html").is_file()


def test_no_solution_code_or_hidden_tests_in_any_page(built_site: Path):
    texts = {p: _html_text(p.read_text(encoding="utf-8")) for p in built_site.rglob("*.html")}
    texts.update({p: _notebook_text(p) for p in built_site.rglob("*.ipynb")})
    pages = {p: {line.strip() for line in text.splitlines()} for p, text in texts.items()}
    for path in CHAPTERS:
        for secret in _secret_lines(path):
            leaks = [str(p.relative_to(built_site)) for p, lines in pages.items() if secret in lines]
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
