"""Build the website: the student edition of each chapter, shown with the outputs of an
executed instructor edition for every cell that is not an exercise.

The book is assembled in ``_build/book_src`` (a staging folder) and built by Jupyter Book with
execution off: execution already happened once, in the shared cache (:mod:`.execute`).
Exercise cells (solutions and tests) get no outputs, so no solution result leaks; solution code
and hidden tests never reach the staging folder at all.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import yaml

from . import source
from .execute import ExecutionResult, execute_all
from .generate import instructor_notebook, student_notebook
from .project import find_root, read_config, repository

MATHJAX_VERSION = "3.2.2"
MATHJAX_CDN = f"https://cdn.jsdelivr.net/npm/mathjax@{MATHJAX_VERSION}/es5/tex-mml-chtml.js"


def vendor_mathjax(root: Path) -> Path | None:
    """A local copy of MathJax (fetched once from the npm registry with ``npm pack``), so the
    site typesets math offline. Returns its ``es5`` folder, or None when npm is unavailable
    (the site then loads MathJax from a CDN)."""
    folder = root / "_build" / "vendor" / f"mathjax-{MATHJAX_VERSION}"
    es5 = folder / "package" / "es5"
    if (es5 / "tex-mml-chtml.js").is_file():
        return es5
    npm = shutil.which("npm")
    if npm is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    packed = subprocess.run([npm, "pack", f"mathjax@{MATHJAX_VERSION}", "--silent"], cwd=folder,
                            capture_output=True, text=True, timeout=300)
    tarballs = list(folder.glob("mathjax-*.tgz"))
    if packed.returncode != 0 or not tarballs:
        print(f"note: could not fetch MathJax with npm ({packed.stderr.strip()[:200]}); using the CDN")
        return None
    import tarfile

    with tarfile.open(tarballs[0]) as archive:
        try:
            archive.extractall(folder, filter="data")
        except TypeError:  # Python < 3.10.12 has no extraction filters
            archive.extractall(folder)
    return es5 if (es5 / "tex-mml-chtml.js").is_file() else None


def merge_outputs(student: nbformat.NotebookNode, executed: nbformat.NotebookNode) -> None:
    """Copy outputs from ``executed`` (instructor run) into ``student`` for non-exercise cells."""
    by_id = {cell.get("id"): cell for cell in executed.cells}
    for cell in student.cells:
        if cell.cell_type != "code" or source.is_exercise_cell(cell):
            continue
        ran = by_id.get(cell.get("id"))
        if ran is not None:
            cell.outputs = ran.get("outputs", [])
            cell.execution_count = ran.get("execution_count")


def _write_if_changed(path: Path, text: str) -> None:
    """Keep mtimes of unchanged files so Sphinx rebuilds only what changed."""
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def _sync_tree(src: Path, dst: Path) -> None:
    for file in src.rglob("*"):
        if file.is_file():
            target = dst / file.relative_to(src)
            if not target.exists() or target.read_bytes() != file.read_bytes():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target)


def stage(root: Path, results: list[ExecutionResult], staging: Path) -> None:
    """Write the book sources (config, toc, pages, merged chapters) into ``staging``."""
    repo = repository(root)
    config = dict(read_config(root))
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    sphinx_config = config.setdefault("sphinx", {}).setdefault("config", {})
    mathjax = vendor_mathjax(root)
    if mathjax is not None:
        # html_extra_path: copied next to the pages, not injected as <script> tags like _static/*.js
        _sync_tree(mathjax, staging / "_extra" / "mathjax")
        sphinx_config["html_extra_path"] = ["_extra"]
        sphinx_config["mathjax_path"] = "../mathjax/tex-mml-chtml.js"  # relative to _static/
    else:
        sphinx_config["mathjax_path"] = MATHJAX_CDN
    _write_if_changed(staging / "_config.yml", yaml.safe_dump(config, sort_keys=False))
    _write_if_changed(staging / "_toc.yml", (root / "_toc.yml").read_text(encoding="utf-8"))
    _sync_tree(root / "book", staging / "book")
    course_map = staging / "book" / "figures" / "course_map.png"
    script = root / "book" / "figures" / "course_map.py"
    if not course_map.exists() or course_map.stat().st_mtime < script.stat().st_mtime:
        subprocess.run([sys.executable, str(script), str(course_map)], check=True)
    executed = {r.chapter: r for r in results}
    for path in source.chapter_sources(root):
        student = student_notebook(instructor_notebook(path, repo))
        run = executed.get(path.stem)
        if run is not None:
            merge_outputs(student, nbformat.read(run.path, as_version=4))
        _write_if_changed(staging / "chapters" / f"{path.stem}.ipynb", nbformat.writes(student))


def sphinx_build(staging: Path, html: Path) -> None:
    """Jupyter Book's Sphinx configuration, then ``sphinx-build``.

    ``jupyter-book config sphinx`` turns ``_config.yml`` into ``conf.py``; we drop the
    ``sphinx_thebe`` extension (live code cells need a Binder server this course does not use, and
    its script is injected twice, a console error on every page), then build the HTML.
    """
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "jupyter-book"), "config", "sphinx", str(staging)], check=True,
                   stdout=subprocess.DEVNULL)
    conf = staging / "conf.py"
    conf.write_text(conf.read_text(encoding="utf-8")
                    + '\nextensions = [e for e in extensions if e != "sphinx_thebe"]\n', encoding="utf-8")
    cmd = [str(bin_dir / "sphinx-build"), "-b", "html", "-W", "--keep-going", "-n", "-q",
           "-d", str(html.parent / ".doctrees"), str(staging), str(html)]
    proc = subprocess.run(cmd, cwd=staging)
    if proc.returncode != 0:
        raise SystemExit(f"the website build failed (sphinx-build exit {proc.returncode}); see the warnings above")


def build(root: Path | None = None, workers: int = 1) -> Path:
    """Execute (cached), stage and build the website; returns the HTML folder."""
    root = root or find_root()
    start = time.perf_counter()
    results = execute_all(source.chapter_sources(root), root, workers=workers)
    failed = [r for r in results if r.error]
    for r in results:
        state = "cached" if r.cached else "executed"
        print(f"  {r.chapter}: {state}, {r.seconds:.1f} s{'  FAILED' if r.error else ''}", flush=True)
    if failed:
        for r in failed:
            print(f"\n--- {r.chapter} failed ---\n{r.error}", file=sys.stderr)
        raise SystemExit(f"{len(failed)} chapter(s) failed to execute; the website was not built")
    staging = root / "_build" / "book_src"
    stage(root, results, staging)
    out = root / "_build" / "site"
    sphinx_build(staging, out / "_build" / "html")
    html = out / "_build" / "html"
    total = time.perf_counter() - start
    report = {"total_seconds": round(total, 1),
              "chapters": {r.chapter: {"seconds": round(r.seconds, 1), "cached": r.cached} for r in results}}
    (out / "build_report.json").write_text(json.dumps(report, indent=2))
    print(f"\nWebsite built in {time.perf_counter() - start:.0f} s: open {html / 'index.html'}")
    print(f"or serve it: python -m http.server -d {html} 8000  ->  http://localhost:8000")
    return html
