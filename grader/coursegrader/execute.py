"""Execute instructor editions once and cache the result.

The cache is shared by the website build and the notebook tests: an executed chapter is
reused until its source, the library (``lib/``) or the checkpoints manifest change, so editing
one chapter re-executes only that chapter.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from .generate import instructor_notebook
from .project import find_root, repository

CELL_TIMEOUT_S = 600


@dataclass
class ExecutionResult:
    chapter: str
    path: Path  # the executed notebook in the cache
    seconds: float  # time of the run that produced it
    cached: bool  # reused without running
    error: str | None  # the failing cell and traceback, if any


def cache_dir(root: Path) -> Path:
    return Path(os.environ.get("COURSE_EXEC_CACHE", root / "_build" / "exec_cache"))


def _library_digest(root: Path) -> str:
    digest = hashlib.sha256()
    files = sorted((root / "lib").rglob("*.py"))
    manifest = root / "checkpoints" / "manifest.json"
    for path in [*files, manifest] if manifest.exists() else files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cache_key(nb: nbformat.NotebookNode, library_digest: str) -> str:
    digest = hashlib.sha256(library_digest.encode())
    digest.update(nbformat.writes(nb).encode())
    return digest.hexdigest()[:16]


def _run(nb: nbformat.NotebookNode, workdir: Path) -> tuple[float, str | None]:
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
        allow_errors=False,
    )
    start = time.perf_counter()
    try:
        client.execute()
        error = None
    except CellExecutionError as exc:
        error = str(exc)
    return time.perf_counter() - start, error


def execute_chapter(source_path: Path, root: Path, force: bool = False) -> ExecutionResult:
    """Execute one chapter's instructor edition (or reuse the cached run)."""
    nb = instructor_notebook(source_path, repository(root))
    key = cache_key(nb, _library_digest(root))
    folder = cache_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{source_path.stem}.{key}.ipynb"
    if target.exists() and not force:
        meta = nbformat.read(target, as_version=4).metadata.get("course", {})
        return ExecutionResult(source_path.stem, target, meta.get("seconds", 0.0), True, meta.get("error"))
    seconds, error = _run(nb, root / "chapters")
    nb.metadata["course"] = {"seconds": round(seconds, 2), "error": error, "key": key}
    for stale in folder.glob(f"{source_path.stem}.*.ipynb"):
        stale.unlink()
    tmp = target.with_suffix(".tmp")
    nbformat.write(nb, tmp)
    tmp.replace(target)
    return ExecutionResult(source_path.stem, target, seconds, False, error)


def _execute_one(args: tuple[str, str, bool]) -> ExecutionResult:
    source_path, root, force = args
    return execute_chapter(Path(source_path), Path(root), force)


def execute_all(
    sources: list[Path], root: Path | None = None, force: bool = False, workers: int = 1
) -> list[ExecutionResult]:
    """Execute several chapters; ``workers`` > 1 runs them in parallel processes."""
    root = root or find_root()
    jobs = [(str(p), str(root), force) for p in sources]
    if workers <= 1:
        results = [_execute_one(job) for job in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_execute_one, jobs))
    write_timings(root, results)
    return results


def write_timings(root: Path, results: list[ExecutionResult]) -> Path:
    path = cache_dir(root) / "timings.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    for r in results:
        old[r.chapter] = {"seconds": round(r.seconds, 1), "error": bool(r.error)}
    path.write_text(json.dumps(old, indent=2, sort_keys=True))
    return path
