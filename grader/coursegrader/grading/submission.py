"""Read a submitted notebook defensively: every way it can be broken becomes a clear message.

Outputs are dropped on reading: grades come from executing the code, never from what the file
claims was printed.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat

from .results import INFO, Flag

DEFAULT_MAX_MB = 256


class SubmissionError(ValueError):
    """The file cannot be graded; the message says why and what the student should do."""


def _source_text(value: object) -> str:
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return value if isinstance(value, str) else ""


def read_submission(
    path: Path, max_mb: float = DEFAULT_MAX_MB
) -> tuple[nbformat.NotebookNode, list[Flag]]:
    """The notebook (nbformat 4, outputs removed) and informational flags about the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SubmissionError(f"{path.name}: cannot be read ({exc.strerror})") from exc
    if size > max_mb * 2**20:
        raise SubmissionError(
            f"{path.name} is {size / 2**20:.0f} MiB, over the {max_mb:.0f} MiB limit for a submission. "
            "Clear the outputs (Edit > Clear All Outputs), save and submit again."
        )
    if size == 0:
        raise SubmissionError(
            f"{path.name} is empty: save the notebook in Jupyter and submit it again."
        )
    raw = path.read_bytes()
    if b"\x00" in raw[:4096]:
        raise SubmissionError(
            f"{path.name} is a binary file, not a notebook (.ipynb is JSON text). Submit the .ipynb file "
            "that Jupyter saved (File > Download as > Notebook)."
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SubmissionError(
            f"{path.name} is not UTF-8 text (byte {exc.start}); it is damaged or not a notebook. "
            "Open it in Jupyter, save it and submit again."
        ) from None
    del raw
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SubmissionError(
            f"{path.name} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); the file is "
            "damaged or was edited outside Jupyter. Open it in Jupyter, save it and submit again."
        ) from None
    except RecursionError:
        raise SubmissionError(
            f"{path.name}: the JSON is nested too deeply to be a notebook"
        ) from None
    del text
    if not isinstance(data, dict) or not isinstance(data.get("cells", []), list):
        raise SubmissionError(f"{path.name} is JSON but not a Jupyter notebook (no list of cells)")
    flags: list[Flag] = []
    major = data.get("nbformat")
    if major == 3 or "worksheets" in data:
        try:
            data = dict(nbformat.reads(json.dumps(data), as_version=4))
        except Exception as exc:  # nbformat raises various errors on malformed v3 files
            raise SubmissionError(
                f"{path.name}: an nbformat 3 notebook that cannot be converted ({exc})"
            ) from None
        flags.append(
            Flag(
                "converted-nbformat-3",
                INFO,
                "Your notebook was in the old format 3; it was converted to 4.",
            )
        )
    elif major != 4:
        raise SubmissionError(
            f"{path.name} declares notebook format {major!r}; the grader reads format 4 (Jupyter 4.x-7.x). "
            "Open it in a current Jupyter and save it."
        )
    if "cells" not in data:
        raise SubmissionError(f"{path.name} is a notebook without cells")
    cells = []
    for index, cell in enumerate(data["cells"]):
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            raise SubmissionError(f"{path.name}: cell {index} is malformed (no valid cell_type)")
        outputs = cell.get("outputs") or []
        clean = {
            "cell_type": cell["cell_type"],
            "id": str(cell.get("id") or ""),
            "metadata": cell.get("metadata") if isinstance(cell.get("metadata"), dict) else {},
            "source": _source_text(cell.get("source", "")),
            "had_outputs": bool(outputs),
            "output_error": any(
                isinstance(o, dict) and o.get("output_type") == "error" for o in outputs
            ),
        }
        cells.append(clean)
    if size > 10 * 2**20:
        flags.append(
            Flag(
                "large-file",
                INFO,
                f"Your notebook file is {size / 2**20:.0f} MiB, mostly outputs; "
                "outputs are ignored (the grader runs your code), so clear them before submitting.",
            )
        )
    nb = nbformat.v4.new_notebook()
    nb.metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    nb.cells = [nbformat.NotebookNode(c) for c in cells]
    return nb, flags
