"""The website as a student sees it, in headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from coursegrader import source
from coursegrader.project import repository

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = [p.stem for p in source.chapter_sources(ROOT)]
BOOK_PAGES = [
    "book/intro", "book/setup", "book/grading_students", "book/notation", "book/bibliography",
    "book/grading_instructors", "book/kernels_on_gpu", "book/performance",
]

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def _open(browser, url: str, width: int = 1280, height: int = 900):
    page = browser.new_page(viewport={"width": width, "height": height})
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    page.goto(url, wait_until="load")
    page.wait_for_load_state("networkidle")
    return page, problems


def _wait_for_math(page) -> None:
    page.wait_for_function("() => !window.MathJax || (window.MathJax.startup && window.MathJax.startup.promise)", timeout=15000)
    page.evaluate("() => window.MathJax && window.MathJax.startup.promise")


@pytest.mark.parametrize("page_path", BOOK_PAGES + [f"chapters/{c}" for c in CHAPTERS])
def test_page_loads_cleanly_with_math_and_figures(browser, site_url, page_path):
    page, problems = _open(browser, f"{site_url}/{page_path}.html")
    _wait_for_math(page)
    assert not problems, f"{page_path}: " + "; ".join(problems[:5])
    text = page.inner_text("article")
    assert "$$" not in text, f"{page_path}: raw $$ left in the page (math not typeset)"
    if page.locator("div.math, span.math").count():
        assert page.locator("mjx-container").count() > 0, f"{page_path}: math present but not typeset by MathJax"
    broken = page.evaluate(
        "() => Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
    assert not broken, f"{page_path}: broken images {broken}"
    missing_alt = page.evaluate(
        "() => Array.from(document.querySelectorAll('article img')).filter(i => !(i.getAttribute('alt') || '').trim()).map(i => i.src)")
    assert not missing_alt, f"{page_path}: images without alt text {missing_alt}"
    levels = page.evaluate(
        "() => Array.from(document.querySelectorAll('article h1, article h2, article h3, article h4, article h5, article h6')).map(h => +h.tagName[1])")
    assert levels and levels[0] == 1, f"{page_path}: the page must start with one h1, got {levels[:3]}"
    for before, after in zip(levels, levels[1:], strict=False):
        assert after <= before + 1, f"{page_path}: heading levels jump from h{before} to h{after}"
    page.close()


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_has_open_in_colab_link(browser, site_url, chapter):
    page, _ = _open(browser, f"{site_url}/chapters/{chapter}.html")
    expected = repository(ROOT).colab_url(f"chapters/{chapter}.ipynb")
    hrefs = page.evaluate("() => Array.from(document.querySelectorAll('a')).map(a => a.href)")
    assert expected in hrefs, f"{chapter}: no Open-in-Colab link to {expected}"
    assert (ROOT / "chapters" / f"{chapter}.ipynb").is_file()
    page.close()


def test_table_of_contents_lists_every_chapter_in_order(browser, site_url):
    page, _ = _open(browser, f"{site_url}/book/intro.html")
    links = page.evaluate(
        "() => Array.from(document.querySelectorAll('nav.bd-docs-nav a')).map(a => a.getAttribute('href'))")
    found = [m.group(1) for href in links if (m := re.search(r"chapters/(\d\d_[a-z0-9_]+)\.html", href or ""))]
    assert found == CHAPTERS, f"sidebar chapters {found} != {CHAPTERS}"
    page.close()


def test_search_finds_a_term_from_a_chapter(browser, site_url):
    page, _ = _open(browser, f"{site_url}/search.html?q=bias+correction")
    page.wait_for_selector("#search-results li, ul.search li", timeout=20000)
    results = page.inner_text("#search-results")
    assert "Foundations" in results, f"search for 'bias correction' did not find chapter 00: {results[:300]}"
    page.close()


def test_phone_width_chapter_is_readable(browser, site_url, screenshots):
    page, problems = _open(browser, f"{site_url}/chapters/{CHAPTERS[0]}.html", width=390, height=844)
    _wait_for_math(page)
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 2, f"page is {overflow}px wider than a 390px phone screen (horizontal scrolling)"
    font = page.evaluate("() => parseFloat(getComputedStyle(document.querySelector('article p')).fontSize)")
    assert font >= 14, f"body text is {font}px on a phone; too small to read"
    shot = screenshots / f"phone_{CHAPTERS[0]}.png"
    page.screenshot(path=str(shot), full_page=False)
    assert shot.stat().st_size > 10_000
    page.close()


def test_desktop_screenshots_of_every_chapter(browser, site_url, screenshots):
    for chapter in CHAPTERS:
        page, _ = _open(browser, f"{site_url}/chapters/{chapter}.html")
        _wait_for_math(page)
        page.screenshot(path=str(screenshots / f"desktop_{chapter}.png"))
        page.close()
    assert len(list(screenshots.glob("desktop_*.png"))) >= len(CHAPTERS)
