"""Autograde many submissions of one chapter in parallel sandboxes; report throughput and memory.

    python benchmarks/bench_autograde.py                    # 200 submissions of the toy chapter
    python benchmarks/bench_autograde.py --chapter 00 -n 200 --workers 2

Submissions are a mix: fully solved, untouched, partly solved, and a few hostile ones (a
monkeypatch, an infinite loop, a crash). Peak memory is the largest total resident memory of
this process and all its descendants (workers, sandboxes, runners), sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

import nbformat

from coursegrader.grading.autograde import autograde
from coursegrader.grading.collect import collect
from coursegrader.grading.course import CourseDir
from coursegrader.grading.release import release, resolve_sources
from coursegrader.grading.sandbox import detect_level
from coursegrader.project import find_root, repository

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "tests" / "grader" / "fixtures" / "solutions" / "90_toy.py"
HOSTILE = {
    "patch": "import numpy as np\nnp.allclose = lambda *a, **k: True\n",
    "loop": "def _spin():\n    while True:\n        pass\n_spin()\n",
    "crash": "import ctypes\nctypes.string_at(0)\n",
}


def tree_rss_mb() -> float:
    """Resident memory (MiB) of this process and all its descendants."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(fields.get("PPid", "0"))
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0])
    total, frontier = rss.get(os.getpid(), 0), [os.getpid()]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent:
                total += rss.get(pid, 0)
                frontier.append(pid)
    return total / 1024


class PeakSampler(threading.Thread):
    def __init__(self, period: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.period, self.peak, self._done = period, 0.0, threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, tree_rss_mb())
            self._done.wait(self.period)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak


def submissions(course: CourseDir, chapter: str, count: int) -> dict[str, nbformat.NotebookNode]:
    """``count`` notebooks: 40% solved, 25% untouched, 25% partly solved, 10% hostile."""
    instructor = nbformat.read(course.source_dir / f"{chapter}.ipynb", as_version=4)
    student = nbformat.read(course.release_dir / f"{chapter}.ipynb", as_version=4)
    solutions = [
        c.get("id")
        for c in instructor.cells
        if c.get("metadata", {}).get("nbgrader", {}).get("solution")
    ]
    code = {c.get("id"): c.source for c in instructor.cells}
    out = {}
    for i in range(count):
        nb = copy.deepcopy(student)
        kind = i % 20
        solve = (
            solutions
            if kind < 8
            else []
            if kind < 13
            else solutions[: len(solutions) // 2]
            if kind < 18
            else solutions
        )
        for cell in nb.cells:
            if cell.get("id") in solve:
                cell.source = code[cell.get("id")]
        if kind >= 18:
            hostile = list(HOSTILE.values())[i % len(HOSTILE)]
            target = next(c for c in nb.cells if c.get("id") == solutions[-1])
            target.source += "\n" + hostile
        out[f"student{i:04d}"] = nb
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--chapter", default="toy", help="'toy' (tests' synthetic chapter) or a chapter number"
    )
    parser.add_argument("-n", "--count", type=int, default=200)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--cell-timeout", type=float, default=5.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-autograde-") as tmp:
        course = CourseDir(Path(tmp) / "course")
        if args.chapter == "toy":
            sources, repo = [TOY], repository(ROOT)
        else:
            root = find_root(ROOT)
            sources, repo = resolve_sources(root, [args.chapter]), repository(root)
        (released,) = release(course, sources, repo=repo)
        inbox = Path(tmp) / "inbox"
        for name, nb in submissions(course, released.chapter, args.count).items():
            (inbox / name).mkdir(parents=True)
            nbformat.write(nb, inbox / name / f"{released.chapter}.ipynb")
        collect(course, inbox)
        config = course.sandbox_config(cell_timeout_s=args.cell_timeout)
        sampler = PeakSampler()
        sampler.start()
        start = time.perf_counter()
        summary = autograde(course, workers=args.workers, progress=True, config=config)
        seconds = time.perf_counter() - start
        peak = sampler.stop()
        largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        scores = [g.result.score for g in course.gradebook().grades() if g.result]
    print(
        f"chapter {released.chapter}: {args.count} submissions, {args.workers} workers, sandbox {detect_level()}"
    )
    print(
        f"graded {summary.graded}, invalid {summary.invalid}, grader errors {summary.grader_errors}, "
        f"flagged {len(summary.flagged)}; mean score {sum(scores) / max(len(scores), 1):.2f} / {released.max_score:g}"
    )
    print(
        f"wall time {seconds:.1f} s, throughput {args.count / seconds:.2f} submissions/s "
        f"({seconds / args.count:.2f} s each)"
    )
    print(
        f"peak memory: {peak:.0f} MiB for the whole process tree; largest single process {largest:.0f} MiB"
    )


if __name__ == "__main__":
    main()
