"""Generate the student edition of every chapter from its single source in ``solutions/``.

``course generate`` writes, for each ``solutions/NN_slug.py``:

* ``chapters/NN_slug.ipynb`` and ``chapters/NN_slug.py`` (Jupytext-paired): solutions replaced by
  stubs that raise ``NotImplementedError``, hidden tests removed, outputs cleared, stable ids;
* the first cell of both editions is the Colab setup cell (:func:`setup_cell`).

The stripping is nbgrader's own generate step (its ``ClearSolutions`` and ``ClearHiddenTests``
preprocessors); validation happens first (:mod:`coursegrader.source`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jupytext
import nbformat
from nbgrader.preprocessors import ClearHiddenTests, ClearOutput, ClearSolutions

from . import source
from .project import Repository, find_root, repository

SETUP_CELL_ID = "colab-setup"
STUB = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}


def setup_cell(repo: Repository) -> nbformat.NotebookNode:
    """The first cell of every notebook: installs ``llmcourse`` in Colab, does nothing elsewhere.

    Idempotent: it installs only when the package is missing or older than this notebook needs.
    """
    code = f'''# Setup: in Google Colab this installs the course library; elsewhere it does nothing.
import importlib.util, subprocess, sys
NEEDS = "{_version()}"
if "google.colab" in sys.modules:
    installed = None
    if importlib.util.find_spec("llmcourse"):
        import llmcourse
        installed = llmcourse.__version__
    if installed != NEEDS:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                        "{repo.pip_spec()}"], check=True)
        print("Installed llmcourse", NEEDS, "- no runtime restart needed." if installed is None
              else "- please restart the runtime (Runtime > Restart session) once.")'''
    cell = nbformat.v4.new_code_cell(code)
    cell["id"] = SETUP_CELL_ID
    cell["metadata"] = {"tags": ["remove-cell", "colab-setup"]}
    return cell


def _version() -> str:
    import llmcourse

    return llmcourse.__version__


def instructor_notebook(path: Path, repo: Repository) -> nbformat.NotebookNode:
    """The validated instructor edition with the setup cell in front."""
    nb = source.load_chapter(path)
    nb.cells.insert(0, setup_cell(repo))
    nb.metadata.pop("jupytext", None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def student_notebook(instructor: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Strip solutions, hidden tests and outputs with nbgrader's preprocessors."""
    nb = copy.deepcopy(instructor)
    resources: dict = {}
    ClearSolutions(code_stub=STUB, enforce_metadata=True).preprocess(nb, resources)
    ClearHiddenTests(enforce_metadata=True).preprocess(nb, resources)
    ClearOutput().preprocess(nb, resources)
    for cell in nb.cells:
        cell.metadata.pop("lines_to_next_cell", None)
        if cell.cell_type == "code":
            cell.execution_count = None
    return nb


def render_student(path: Path, repo: Repository) -> tuple[str, str]:
    """(ipynb text, paired py:percent text) of the student edition of one chapter."""
    nb = student_notebook(instructor_notebook(path, repo))
    nb.metadata["jupytext"] = {"formats": "ipynb,py:percent"}
    ipynb = nbformat.writes(nb, version=4) + "\n"
    py = _drop_version_lines(jupytext.writes(nb, fmt="py:percent"))
    return ipynb, py


def _drop_version_lines(text: str) -> str:
    """Remove the Jupytext version stamps so a new Jupytext release does not mark files stale."""
    drop = ("#       format_version:", "#       jupytext_version:")
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(drop))


def generate(root: Path | None = None, check: bool = False) -> list[Path]:
    """Write (or with ``check``, compare) every student edition. Returns stale/written paths."""
    root = root or find_root()
    repo = repository(root)
    out_dir = root / "chapters"
    out_dir.mkdir(exist_ok=True)
    # Render every chapter before writing anything: one bad source leaves all files untouched.
    rendered = {path: render_student(path, repo) for path in source.chapter_sources(root)}
    changed: list[Path] = []
    for path, (ipynb, py) in rendered.items():
        for target, text in ((out_dir / f"{path.stem}.ipynb", ipynb), (out_dir / path.name, py)):
            current = target.read_text(encoding="utf-8") if target.exists() else None
            if current != text:
                changed.append(target)
                if not check:
                    target.write_text(text, encoding="utf-8")
    if not check:
        expected = {p.stem for p in source.chapter_sources(root)}
        for orphan in out_dir.glob("*"):
            if orphan.suffix in {".py", ".ipynb"} and orphan.stem not in expected:
                orphan.unlink()
                changed.append(orphan)
    return changed


def grade_cells(nb: nbformat.NotebookNode) -> list[dict]:
    """Summary of graded test cells: grade_id and points (used by the grader and tests)."""
    return [
        {"grade_id": source.grade_id(c), "points": source.nbgrader_meta(c)["points"]}
        for c in nb.cells
        if source.is_test_cell(c)
    ]


def dumps_summary(root: Path) -> str:
    repo = repository(root)
    out = {p.stem: grade_cells(instructor_notebook(p, repo)) for p in source.chapter_sources(root)}
    return json.dumps(out, indent=2)
