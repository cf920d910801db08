"""The adversarial and malformed submission corpus, with the expected outcome of each.

Every case is a submission of the toy chapter ``90_toy`` (tests: ``add_test`` 1 point,
``mean_test`` 2, ``scale_test`` 2; 5 in all), built by code from the chapter's editions so that
it stays in step with the chapter. ``CASES`` is the table: name (the purpose), what the
submission does, and what grading must record: the score, the submission status, the status of
named tests and the flags that must (and must not) be raised.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .helpers import OTHER, editions

MAX = 5.0
SOLVED = {
    "add": "def add(a, b):\n    return a + b",
    "mean": "def mean(xs):\n    return float(sum(xs)) / len(xs)",
    "scale": "import numpy as np\n\ndef scale(v, k):\n    return np.asarray(v, dtype=float) * k",
}


@dataclass
class Expect:
    score: float
    status: str = "graded"  # graded | invalid
    tests: dict[str, str] = field(default_factory=dict)  # grade id -> status
    flags: set[str] = field(default_factory=set)  # codes that must be present
    absent: set[str] = field(default_factory=set)  # codes that must not be present
    error: str | None = None  # substring of the submission-level error
    message: dict[str, str] = field(default_factory=dict)  # grade id -> substring of its message
    no_tamper: bool = False  # no tamper flag at all


@dataclass
class Case:
    name: str
    purpose: str
    build: Callable[
        [nbformat.NotebookNode, nbformat.NotebookNode], object
    ]  # -> notebook, bytes or str
    expect: Expect


# -- building blocks ---------------------------------------------------------------------------
def cell(nb: nbformat.NotebookNode, cell_id: str) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.get("id") == cell_id)


def solved(student: nbformat.NotebookNode, **overrides: str) -> nbformat.NotebookNode:
    """The student edition with every exercise solved (``overrides``: other code for some)."""
    nb = copy.deepcopy(student)
    for gid, code in {**SOLVED, **overrides}.items():
        cell(nb, gid).source = code
    return nb


def stub(student: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return copy.deepcopy(student)


def add_after(
    nb: nbformat.NotebookNode, after_id: str, code: str, new_id: str = "student-extra"
) -> nbformat.NotebookNode:
    index = next(i for i, c in enumerate(nb.cells) if c.get("id") == after_id)
    extra = nbformat.v4.new_code_cell(code)
    extra["id"] = new_id
    nb.cells.insert(index + 1, extra)
    return nb


def delete(nb: nbformat.NotebookNode, cell_id: str) -> nbformat.NotebookNode:
    nb.cells = [c for c in nb.cells if c.get("id") != cell_id]
    return nb


def edited_meta(
    nb: nbformat.NotebookNode, cell_id: str, **changes: object
) -> nbformat.NotebookNode:
    cell(nb, cell_id).metadata["nbgrader"].update(changes)
    return nb


def with_outputs(nb: nbformat.NotebookNode, text: str) -> nbformat.NotebookNode:
    for c in nb.cells:
        if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade"):
            c.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
            c.execution_count = 1
    return nb


def huge_output(nb: nbformat.NotebookNode, megabytes: int) -> nbformat.NotebookNode:
    c = cell(nb, "add")
    c.outputs = [nbformat.v4.new_output("stream", name="stdout", text="x" * (megabytes * 2**20))]
    return nb


FORGE = """def mean(xs):
    import os
    pid = os.fork()
    if pid == 0:  # the child writes a fake "passed" result on every descriptor it inherited
        fake = b'\\x01{"6f70": "726573756c74", "737461747573": "6f6b"}'
        for fd in [int(n) for n in os.listdir("/proc/self/fd")]:
            try:
                os.write(fd, fake)
            except OSError:
                pass
        os._exit(0)
    os.waitpid(pid, 0)
    return 0.0
"""

EXFILTRATE_MEAN = """_stash = []

def mean(xs):
    import sys
    _stash.append(repr(sys._getframe(1).f_code.co_consts))
    return float(sum(xs)) / len(xs)
"""
EXFILTRATE_SCALE = """def scale(v, k):
    raise ValueError(" | ".join(_stash))
"""
DISK_FILLER = (
    SOLVED["scale"]
    + """

import errno
for i in range(1000):
    try:
        with open(f"fill-{i}.bin", "wb") as handle:
            for _ in range(64):
                handle.write(b"\\0" * 2**20)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            break
"""
)
LOOP_IGNORING_INTERRUPT = """def mean(xs):
    import time
    while True:
        try:
            time.sleep(0.05)
        except BaseException:
            pass
"""


def _other_chapter(instructor, student):
    return editions(OTHER)[1]


CASES: list[Case] = [
    Case(
        "reference_instructor_edition",
        "the instructor edition itself (hidden tests in its test cells)",
        lambda i, s: copy.deepcopy(i),
        Expect(MAX, no_tamper=True),
    ),
    Case(
        "untouched_student_edition",
        "the student edition as handed out: every stub raises",
        lambda i, s: stub(s),
        Expect(
            0, tests={"add_test": "failed"}, message={"add_test": "not solved yet"}, no_tamper=True
        ),
    ),
    Case(
        "partly_solved",
        "only the first exercise solved",
        lambda i, s: _partial(s),
        Expect(1, no_tamper=True),
    ),
    Case(
        "solved_in_student_edition",
        "every exercise solved in the student edition",
        lambda i, s: solved(s),
        Expect(MAX, no_tamper=True),
    ),
    Case(
        "test_cell_deleted",
        "a locked test cell deleted (restored, but earns nothing)",
        lambda i, s: delete(solved(s), "add_test"),
        Expect(4, tests={"add_test": "tampered"}, flags={"test-cell-deleted"}),
    ),
    Case(
        "test_cell_edited",
        "a test cell replaced by `pass` to hide a wrong answer",
        lambda i, s: _set(solved(s, mean="def mean(xs):\n    return 0.0"), "mean_test", "pass"),
        Expect(3, tests={"mean_test": "tampered"}, flags={"test-cell-edited"}),
    ),
    Case(
        "grade_id_changed",
        "a test cell's grade id renamed in its metadata",
        lambda i, s: edited_meta(solved(s), "scale_test", grade_id="scale_test_mine"),
        Expect(3, tests={"scale_test": "tampered"}, flags={"grade-id-changed"}),
    ),
    Case(
        "points_inflated",
        "a test cell's points raised from 1 to 100",
        lambda i, s: edited_meta(solved(s), "add_test", points=100),
        Expect(4, tests={"add_test": "tampered"}, flags={"points-changed"}),
    ),
    Case(
        "assertion_helper_redefined",
        "the chapter's assertion helper redefined to do nothing",
        lambda i, s: add_after(
            solved(s, mean="def mean(xs):\n    return 0.0"),
            "mean",
            "def close_enough(*args, **kwargs):\n    return None",
        ),
        Expect(
            3,
            tests={"mean_test": "tampered", "add_test": "passed", "scale_test": "passed"},
            flags={"helper-redefined"},
        ),
    ),
    Case(
        "numpy_allclose_patched",
        "np.allclose monkeypatched to always return True",
        lambda i, s: solved(
            s,
            mean="import numpy as np\nnp.allclose = lambda *a, **k: True\n\n"
            "def mean(xs):\n    return 0.0",
        ),
        Expect(
            1,
            tests={"add_test": "passed", "mean_test": "tampered", "scale_test": "tampered"},
            flags={"patched-functions"},
        ),
    ),
    Case(
        "testing_code_swapped",
        "np.testing.assert_allclose given a do-nothing __code__ in place",
        lambda i, s: solved(
            s,
            scale="import numpy as np\nnp.testing.assert_allclose.__code__ = "
            "(lambda *a, **k: None).__code__\n\ndef scale(v, k):\n    return v",
        ),
        Expect(3, tests={"scale_test": "tampered"}, flags={"patched-functions"}),
    ),
    Case(
        "chapter_helper_code_swapped",
        "the chapter's assertion helper given a do-nothing __code__ (same object, new code)",
        lambda i, s: solved(
            s,
            mean="close_enough.__code__ = (lambda *a, **k: None).__code__\n\n"
            "def mean(xs):\n    return 2.0",
        ),
        Expect(
            1,
            tests={"add_test": "passed", "mean_test": "tampered", "scale_test": "tampered"},
            flags={"changed-course-function"},
        ),
    ),
    Case(
        "builtin_replaced",
        "a builtin (len) replaced in the builtins module",
        lambda i, s: solved(
            s, scale=SOLVED["scale"] + "\nimport builtins\nbuiltins.len = lambda obj: 3"
        ),
        Expect(
            3, tests={"scale_test": "tampered", "mean_test": "passed"}, flags={"patched-functions"}
        ),
    ),
    Case(
        "sys_exit_in_solution",
        "sys.exit() at the end of an exercise cell",
        lambda i, s: solved(s, mean=SOLVED["mean"] + "\nimport sys\nsys.exit('bye')"),
        Expect(3, tests={"mean_test": "tampered", "scale_test": "passed"}, flags={"sys-exit"}),
    ),
    Case(
        "os_exit_during_test",
        "os._exit() called from the student's function during a test",
        lambda i, s: solved(s, mean="def mean(xs):\n    import os\n    os._exit(3)"),
        Expect(3, tests={"mean_test": "tampered", "scale_test": "passed"}, flags={"process-exit"}),
    ),
    Case(
        "fork_left_running",
        "an exercise cell forks a child that keeps running",
        lambda i, s: solved(
            s,
            add=SOLVED["add"] + "\nimport os, time\nif os.fork() == 0:\n    time.sleep(60)\n"
            "    os._exit(0)",
        ),
        Expect(
            4, tests={"add_test": "tampered", "mean_test": "passed"}, flags={"background-process"}
        ),
    ),
    Case(
        "forged_result_from_child",
        "a forked child writes a fake 'ok' result on the grading channel",
        lambda i, s: solved(s, mean=FORGE),
        Expect(3, tests={"mean_test": "tampered", "scale_test": "passed"}, flags={"forged-result"}),
    ),
    Case(
        "prints_fake_pass",
        "unsolved, but prints 'All tests passed' from an added cell",
        lambda i, s: add_after(stub(s), "scale_test", "print('All tests passed! \\u2713 5/5')"),
        Expect(0, flags={"printed-pass-text"}, no_tamper=True),
    ),
    Case(
        "fake_outputs",
        "unsolved, with fake 'passed' outputs saved in the test cells",
        lambda i, s: with_outputs(stub(s), "passed\n"),
        Expect(0, flags={"stale-outputs"}, no_tamper=True),
    ),
    Case(
        "infinite_loop",
        "an infinite loop in the student's function (interrupted at the cell limit)",
        lambda i, s: solved(s, mean="def mean(xs):\n    while True:\n        pass"),
        Expect(
            3,
            tests={"mean_test": "timeout", "scale_test": "passed"},
            flags={"cell-timeout"},
            message={"mean_test": "time limit"},
        ),
    ),
    Case(
        "infinite_loop_ignoring_interrupt",
        "an infinite loop that swallows KeyboardInterrupt (killed)",
        lambda i, s: solved(s, mean=LOOP_IGNORING_INTERRUPT),
        Expect(3, tests={"mean_test": "timeout", "scale_test": "passed"}, flags={"cell-timeout"}),
    ),
    Case(
        "segfault",
        "the student's function crashes the interpreter (ctypes null read)",
        lambda i, s: solved(
            s, add="def add(a, b):\n    import ctypes\n    return ctypes.string_at(0)"
        ),
        Expect(
            4, tests={"add_test": "crashed", "mean_test": "passed"}, flags={"crash"}, no_tamper=True
        ),
    ),
    Case(
        "memory_exhaustion",
        "the student's function allocates 8 GiB",
        lambda i, s: solved(
            s, mean="def mean(xs):\n    hog = bytearray(8 * 1024**3)\n    return 0.0"
        ),
        Expect(3, tests={"mean_test": "failed"}, flags={"memory-limit"}, no_tamper=True),
    ),
    Case(
        "disk_filler",
        "an exercise cell writes files until the disk is full",
        lambda i, s: solved(s, scale=DISK_FILLER),
        Expect(MAX, no_tamper=True),
    ),
    Case(
        "input_called",
        "the student's function asks for keyboard input",
        lambda i, s: solved(s, mean="def mean(xs):\n    return float(input('n? '))"),
        Expect(
            3,
            tests={"mean_test": "failed"},
            flags={"input-called"},
            message={"mean_test": "input()"},
        ),
    ),
    Case(
        "invalid_json",
        "a damaged file that is not JSON",
        lambda i, s: '{"cells": [ this is not json',
        Expect(0, status="invalid", error="not valid JSON"),
    ),
    Case(
        "binary_garbage",
        "random bytes instead of a notebook",
        lambda i, s: b"\x00\x01PK\x03\x04" + os.urandom(4096),
        Expect(0, status="invalid", error="binary file"),
    ),
    Case(
        "future_nbformat",
        "a notebook declaring format 5",
        lambda i, s: json.dumps({"nbformat": 5, "nbformat_minor": 0, "metadata": {}, "cells": []}),
        Expect(0, status="invalid", error="format 5"),
    ),
    Case(
        "nbformat3_converted",
        "a solved notebook saved in the old format 3 (no cell ids)",
        lambda i, s: nbformat.writes(nbformat.convert(solved(s), 3)),
        Expect(
            MAX,
            flags={"converted-nbformat-3"},
            absent={"cell-timeout", "cells-added"},
            no_tamper=True,
        ),
    ),
    Case(
        "json_nesting_bomb",
        "JSON nested 100 000 levels deep",
        lambda i, s: "[" * 100_000 + "]" * 100_000,
        Expect(0, status="invalid", error="nested too deeply"),
    ),
    Case(
        "missing_solution_cell",
        "an exercise cell deleted: its tests earn zero, the rest grade normally",
        lambda i, s: delete(solved(s), "mean"),
        Expect(
            3,
            tests={"mean_test": "failed", "scale_test": "passed"},
            flags={"solution-cell-missing"},
            message={"mean_test": "missing"},
            no_tamper=True,
        ),
    ),
    Case(
        "cells_reordered",
        "every cell in reverse order",
        lambda i, s: _reversed(solved(s)),
        Expect(MAX, flags={"cells-reordered"}, no_tamper=True),
    ),
    Case(
        "other_chapter",
        "the notebook of another chapter submitted under this chapter's name",
        _other_chapter,
        Expect(0, status="invalid", error="none of the exercises"),
    ),
    Case(
        "huge_outputs",
        "a solved notebook carrying 101 MiB of outputs",
        lambda i, s: huge_output(solved(s), 101),
        Expect(MAX, flags={"large-file"}, no_tamper=True),
    ),
    Case(
        "hidden_test_exfiltration",
        "tries to leak hidden-test constants through a visible failure message",
        lambda i, s: solved(s, mean=EXFILTRATE_MEAN, scale=EXFILTRATE_SCALE),
        Expect(3, tests={"mean_test": "passed", "scale_test": "failed"}),
    ),
    Case(
        "added_helper_cell",
        "a legitimate helper cell added by the student",
        lambda i, s: _helper_before_mean(s),
        Expect(MAX, flags={"cells-added"}, no_tamper=True),
    ),
    Case(
        "introspection_review",
        "walks the garbage collector (reported for review, no penalty)",
        lambda i, s: solved(s, add=SOLVED["add"] + "\nimport gc\n_objects = len(gc.get_objects())"),
        Expect(MAX, flags={"audit:gc.get_objects"}, no_tamper=True),
    ),
    Case(
        "network_attempt",
        "tries to open a network connection",
        lambda i, s: solved(
            s,
            add=SOLVED["add"] + "\nimport socket\ntry:\n    socket.create_connection("
            "('1.1.1.1', 80), timeout=2)\nexcept OSError as exc:\n"
            "    NET_ERROR = str(exc)",
        ),
        Expect(MAX, flags={"audit:socket.__new__"}, no_tamper=True),
    ),
    Case(
        "instructor_cell_edited",
        "edits the chapter's helper cell to accept anything (edit ignored)",
        lambda i, s: _set(
            solved(s, mean="def mean(xs):\n    return 0.0"),
            "cell-001",
            "import numpy as np\n\ndef close_enough(*a, **k):\n    pass",
        ),
        Expect(3, tests={"mean_test": "failed"}, no_tamper=True),
    ),
]


def _set(nb: nbformat.NotebookNode, cell_id: str, source: str) -> nbformat.NotebookNode:
    cell(nb, cell_id).source = source
    return nb


def _partial(student: nbformat.NotebookNode) -> nbformat.NotebookNode:
    nb = stub(student)
    cell(nb, "add").source = SOLVED["add"]
    return nb


def _reversed(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    nb.cells = list(reversed(nb.cells))
    return nb


def _helper_before_mean(student: nbformat.NotebookNode) -> nbformat.NotebookNode:
    nb = solved(student, mean="def mean(xs):\n    return _total(xs) / len(xs)")
    return add_after(nb, "add_test", "def _total(xs):\n    return float(sum(xs))", new_id="helper")


def write_case(
    case: Case, instructor: nbformat.NotebookNode, student: nbformat.NotebookNode, path: Path
) -> Path:
    """Write the case's submission to ``path``."""
    built = case.build(instructor, student)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(built, bytes):
        path.write_bytes(built)
    elif isinstance(built, str):
        path.write_text(built, encoding="utf-8")
    else:
        nbformat.write(built, path)
    return path
