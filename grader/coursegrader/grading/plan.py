"""What a grading run executes, decided before any code runs.

The run follows the **instructor edition** cell by cell (cells tagged ``demo`` are skipped):

* instructor cells run from the instructor source (the student's edits to them are ignored);
* each solution cell runs the student's code, matched by grade id (then cell id);
* each test cell runs from the instructor source, hidden tests included, restored by grade id;
* cells the student added run where they are, after the release cell they follow.

Static tamper checks happen here too: a test cell that was deleted or edited, a grade id or
point value that was changed, each earns a ``tamper`` flag that zeroes that test.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import re
import symtable
from dataclasses import dataclass, field

import nbformat

from .. import source as chapter_source
from .results import ERROR, INFO, TAMPER, Flag

DEMO_TAG = "demo"
#: modules whose functions the tests trust; their identities are snapshotted before student code
GUARDED_PREFIXES = (
    "builtins",
    "math",
    "cmath",
    "operator",
    "functools",
    "itertools",
    "statistics",
    "random",
    "numpy",
    "torch",
    "llmcourse",
    "unittest",
)
#: imported before the snapshot when the chapter uses their root module
COMPARISON_MODULES = {"numpy": ["numpy", "numpy.testing"], "torch": ["torch", "torch.testing"]}
BUILTIN_NAMES = frozenset(dir(builtins))
_MAGIC = re.compile(r"^(\s*)([%!].*)$")


class WrongChapter(ValueError):
    """The submission holds none of the chapter's exercises (probably another chapter)."""


@dataclass
class TestSpec:
    __test__ = False  # not a pytest test class

    grade_id: str
    points: float
    exercise: str | None  # grade id of the solution cell it tests (the nearest one above)
    hidden: bool  # has a hidden part


@dataclass
class Assignment:
    """A released chapter: the frozen instructor edition and the student edition handed out."""

    chapter: str
    instructor: nbformat.NotebookNode
    release: nbformat.NotebookNode
    source_sha: str
    tests: list[TestSpec]
    solutions: list[str]
    solution_names: set[
        str
    ]  # names the instructor's solution cells define (students may define them)
    preimport: list[str]
    hidden_lines: list[str]  # every non-trivial hidden-test line (never shown to students)
    hidden_literals: list[str] = field(
        default_factory=list
    )  # string literals of hidden tests (redacted too)

    @property
    def redactions(self) -> list[str]:
        return self.hidden_lines + self.hidden_literals

    @property
    def max_score(self) -> float:
        return float(sum(t.points for t in self.tests))


@dataclass
class Step:
    cell: str  # cell id (grade id for nbgrader cells)
    kind: str  # instructor | solution | student | test
    parts: list[tuple[str, str, str]]  # (label, filename, code)
    grade_id: str | None = None
    reads: set[str] = field(default_factory=set)  # (tests) global names the cell reads
    stores: set[str] = field(default_factory=set)  # module-level names the cell binds


@dataclass
class Plan:
    steps: list[Step]
    flags: list[Flag]
    missing_solutions: dict[str, str]  # solution grade id -> message for its tests

    def affected_tests(self, index: int) -> list[str]:
        """Tests that depend on step ``index``: itself (a test) or those up to the next exercise."""
        step = self.steps[index]
        if step.kind == "test":
            return [step.grade_id] if step.grade_id else []
        found = []
        for later in self.steps[index + 1 :]:
            if later.kind == "solution":
                break
            if later.kind == "test" and later.grade_id:
                found.append(later.grade_id)
        return found


def is_demo(cell: nbformat.NotebookNode) -> bool:
    return DEMO_TAG in (cell.get("metadata", {}).get("tags") or [])


def split_test(source: str) -> list[tuple[str, str]]:
    """A test cell's source as ordered (``visible`` | ``hidden``, code) parts."""
    parts: list[tuple[str, list[str]]] = [("visible", [])]
    for line in source.splitlines():
        marker = line.strip()
        if marker == chapter_source.BEGIN_HIDDEN:
            parts.append(("hidden", []))
        elif marker == chapter_source.END_HIDDEN:
            parts.append(("visible", []))
        else:
            parts[-1][1].append(line)
    return [
        (label, "\n".join(lines)) for label, lines in parts if any(line.strip() for line in lines)
    ]


def neutralize_magics(code: str) -> tuple[str, int]:
    """If ``code`` is not valid Python because of IPython magics or shell escapes (lines starting
    with ``%`` or ``!``), replace those lines by ``pass`` (same indentation); count them."""
    try:
        compile(code, "<cell>", "exec", dont_inherit=True)
        return code, 0
    except (SyntaxError, ValueError):
        pass
    count = 0
    out = []
    for line in code.splitlines():
        match = _MAGIC.match(line)
        if match:
            out.append(f"{match.group(1)}pass  # ignored by the grader: {match.group(2)[:60]}")
            count += 1
        else:
            out.append(line)
    return "\n".join(out), count


def _symbols(code: str) -> tuple[set[str], set[str]]:
    """(global names read, module-level names bound) of a cell; empty sets if it does not parse."""
    try:
        table = symtable.symtable(code, "<cell>", "exec")
    except (SyntaxError, ValueError):
        return set(), set()
    stores = {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}
    reads = {s.get_name() for s in table.get_symbols() if s.is_referenced()}
    stack = list(table.get_children())
    while stack:
        scope = stack.pop()
        reads |= {s.get_name() for s in scope.get_symbols() if s.is_referenced() and s.is_global()}
        stores |= {
            s.get_name() for s in scope.get_symbols() if s.is_declared_global() and s.is_assigned()
        }
        stack.extend(scope.get_children())
    return reads - stores, stores


def _literals(code: str, shortest: int = 6) -> list[str]:
    """String literals of a hidden test (messages often spell out the expected answer)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    found = {
        node.value.strip()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    return sorted((text for text in found if len(text) >= shortest), key=len, reverse=True)


def _normal(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def load_assignment(
    chapter: str, instructor: nbformat.NotebookNode, release: nbformat.NotebookNode
) -> Assignment:
    """Describe a released chapter from its two editions (their cells align one to one by id)."""
    if [c.get("id") for c in instructor.cells] != [c.get("id") for c in release.cells]:
        raise ValueError(
            f"{chapter}: the instructor and student editions do not have the same cells"
        )
    tests, solutions, solution_names, hidden_lines, hidden_literals = [], [], set(), [], []
    exercise = None
    roots = set()
    for cell in instructor.cells:
        if cell.cell_type != "code":
            continue
        if chapter_source.is_solution_cell(cell):
            exercise = chapter_source.grade_id(cell)
            solutions.append(exercise)
            solution_names |= _symbols(cell.source)[1]
        elif chapter_source.is_test_cell(cell):
            parts = split_test(cell.source)
            hidden = [code for label, code in parts if label == "hidden"]
            hidden_lines += [
                ln.strip() for code in hidden for ln in code.splitlines() if len(ln.strip()) >= 8
            ]
            hidden_literals += [text for code in hidden for text in _literals(code)]
            meta = chapter_source.nbgrader_meta(cell)
            tests.append(TestSpec(meta["grade_id"], float(meta["points"]), exercise, bool(hidden)))
        if not chapter_source.is_solution_cell(cell) and not is_demo(cell):
            roots |= {
                m.group(1)
                for m in re.finditer(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", cell.source, re.M)
            }
    preimport = [m for root in sorted(roots) for m in COMPARISON_MODULES.get(root, [])]
    digest = hashlib.sha256(nbformat.writes(instructor).encode()).hexdigest()
    return Assignment(
        chapter,
        instructor,
        release,
        digest,
        tests,
        solutions,
        solution_names,
        preimport,
        hidden_lines,
        sorted(set(hidden_literals), key=len, reverse=True),
    )


def _index_submission(
    nb: nbformat.NotebookNode,
) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    by_grade: dict[str, list[int]] = {}
    by_id: dict[str, list[int]] = {}
    for index, cell in enumerate(nb.cells):
        gid = (
            chapter_source.nbgrader_meta(cell).get("grade_id")
            if isinstance(cell.get("metadata", {}).get("nbgrader"), dict)
            else None
        )
        if gid:
            by_grade.setdefault(str(gid), []).append(index)
        if cell.get("id"):
            by_id.setdefault(cell["id"], []).append(index)
    return by_grade, by_id


def build_plan(submission: nbformat.NotebookNode, assignment: Assignment) -> Plan:
    """The steps to execute for ``submission`` and the flags found without running anything."""
    by_grade, by_id = _index_submission(submission)
    release_ids = {c.get("id") for c in assignment.release.cells}
    flags: list[Flag] = []
    matched: dict[int, int] = {}  # submission index -> release index

    def find(rindex: int) -> int | None:
        """The submission cell of release cell ``rindex``: by grade id, then cell id."""
        rcell = assignment.release.cells[rindex]
        gid = chapter_source.grade_id(rcell)
        candidates = by_grade.get(gid, []) if gid else []
        preferred = [i for i in candidates if submission.cells[i].get("id") == rcell.get("id")]
        for i in preferred + candidates + by_id.get(rcell.get("id"), []):
            if i not in matched:
                return i
        return None

    for rindex, _ in enumerate(assignment.release.cells):
        found = find(rindex)
        if found is not None:
            matched[found] = rindex
    # Cells that lost their ids (old formats, conversions): match ordinary cells by their text.
    unmatched = set(range(len(assignment.release.cells))) - set(matched.values())
    for rindex in sorted(unmatched):
        rcell = assignment.release.cells[rindex]
        if chapter_source.nbgrader_meta(rcell):
            continue
        for i, cell in enumerate(submission.cells):
            if (
                i not in matched
                and cell.get("id") not in release_ids
                and cell.cell_type == rcell.cell_type
                and _normal(cell.source) == _normal(rcell.source)
            ):
                matched[i] = rindex
                break

    graded_ids = {
        chapter_source.grade_id(c)
        for c in assignment.release.cells
        if chapter_source.nbgrader_meta(c)
    }
    matched_graded = {
        chapter_source.grade_id(assignment.release.cells[r]) for r in matched.values()
    } & graded_ids
    if graded_ids and not matched_graded:
        raise WrongChapter(
            f"this notebook contains none of the exercises of {assignment.chapter} "
            f"({', '.join(sorted(graded_ids)[:4])}, ...)"
        )
    order = [matched[i] for i in sorted(matched)]
    if order != sorted(order):
        flags.append(
            Flag(
                "cells-reordered",
                INFO,
                "Some cells were moved; they were run in the original order.",
            )
        )

    # Student-added cells, anchored after the release cell that precedes them.
    added: dict[int, list[int]] = {}
    anchor = -1
    for index, cell in enumerate(submission.cells):
        if index in matched:
            anchor = matched[index]
            continue
        meta = cell.get("metadata", {}).get("nbgrader")
        if isinstance(meta, dict) and meta.get("grade_id"):
            flags.append(
                Flag(
                    "unknown-grade-id",
                    INFO,
                    f"A cell with the unknown grade id '{meta.get('grade_id')}' was ignored "
                    "(grade ids must not be changed).",
                )
            )
            continue
        if cell.cell_type == "code" and cell.source.strip():
            added.setdefault(anchor, []).append(index)

    steps: list[Step] = []
    missing: dict[str, str] = {}
    release_to_sub = {r: s for s, r in matched.items()}
    magic_lines = 0

    def add_student_cells(after: int) -> None:
        nonlocal magic_lines
        for index in added.get(after, []):
            cell = submission.cells[index]
            code, count = neutralize_magics(cell.source)
            magic_lines += count
            name = (
                cell.get("id")
                if cell.get("id") and cell.get("id") not in release_ids
                else f"added-{index}"
            )
            steps.append(Step(str(name), "student", [("code", f"<student {name}>", code)]))

    add_student_cells(-1)
    for rindex, (icell, rcell) in enumerate(
        zip(assignment.instructor.cells, assignment.release.cells, strict=True)
    ):
        sub_index = release_to_sub.get(rindex)
        sub = submission.cells[sub_index] if sub_index is not None else None
        gid = chapter_source.grade_id(icell)
        if icell.cell_type != "code" or is_demo(icell):
            add_student_cells(rindex)
            continue
        if chapter_source.is_solution_cell(icell):
            if sub is None or sub.cell_type != "code":
                missing[gid] = (
                    f"the exercise cell '{gid}' is missing from your notebook, so its tests cannot pass "
                    "(do not delete or retype exercise cells; copy your code into a fresh notebook)"
                )
                flags.append(
                    Flag(
                        "solution-cell-missing",
                        ERROR,
                        f"The exercise cell '{gid}' is missing.",
                        cell=gid,
                    )
                )
            else:
                sub_gid = (
                    (sub.metadata.get("nbgrader") or {}).get("grade_id")
                    if isinstance(sub.metadata.get("nbgrader"), dict)
                    else None
                )
                if sub_gid not in (None, gid):
                    flags.append(
                        Flag(
                            "grade-id-changed",
                            TAMPER,
                            f"The grade id of exercise cell '{gid}' was changed to '{sub_gid}'.",
                            tests=[t.grade_id for t in assignment.tests if t.exercise == gid],
                            cell=gid,
                        )
                    )
                code, count = neutralize_magics(sub.source)
                magic_lines += count
                steps.append(
                    Step(gid, "solution", [("code", f"<solution {gid}>", code)], grade_id=gid)
                )
        elif chapter_source.is_test_cell(icell):
            flags += _check_test_cell(gid, rcell, icell, sub)
            parts = [
                (label, f"<{'test' if label == 'visible' else 'hidden'} {gid}>", code)
                for label, code in split_test(icell.source)
            ]
            reads, stores = _symbols(icell.source)
            steps.append(Step(gid, "test", parts, grade_id=gid, reads=reads, stores=stores))
        else:
            if (
                sub is not None
                and chapter_source.nbgrader_meta(rcell).get("locked")
                and _normal(sub.source) != _normal(rcell.source)
            ):
                flags.append(
                    Flag(
                        "locked-cell-edited",
                        INFO,
                        f"Your edits to the read-only cell '{icell.get('id')}' were ignored.",
                    )
                )
            code, _ = neutralize_magics(icell.source)
            reads, stores = _symbols(code)
            steps.append(
                Step(
                    str(icell.get("id")),
                    "instructor",
                    [("code", f"<cell {icell.get('id')}>", code)],
                    stores=stores,
                )
            )
        add_student_cells(rindex)
    if magic_lines:
        flags.append(
            Flag(
                "magics-ignored",
                INFO,
                f"{magic_lines} IPython magic or shell line(s) (starting with % or !) were skipped.",
            )
        )
    count_added = sum(len(v) for v in added.values())
    if count_added:
        flags.append(
            Flag(
                "cells-added", INFO, f"{count_added} cell(s) you added were run where you put them."
            )
        )
    return Plan(steps, flags, missing)


def _check_test_cell(
    gid: str,
    release_cell: nbformat.NotebookNode,
    instructor_cell: nbformat.NotebookNode,
    sub: nbformat.NotebookNode | None,
) -> list[Flag]:
    """Tamper flags for one test cell of the submission (it is restored either way).

    The submitted cell must equal the student edition's cell, or the instructor's (an instructor
    edition submitted as a reference is not tampering)."""
    if sub is None:
        return [
            Flag(
                "test-cell-deleted",
                TAMPER,
                f"The test cell '{gid}' was deleted. It was restored and run, but earns no points.",
                tests=[gid],
                cell=gid,
            )
        ]
    flags = []
    meta = sub.metadata.get("nbgrader") if isinstance(sub.metadata.get("nbgrader"), dict) else {}
    want = chapter_source.nbgrader_meta(release_cell)
    if sub.cell_type != "code" or _normal(sub.source) not in (
        _normal(release_cell.source),
        _normal(instructor_cell.source),
    ):
        flags.append(
            Flag(
                "test-cell-edited",
                TAMPER,
                f"The test cell '{gid}' was edited. The original was run, but it earns no points.",
                tests=[gid],
                cell=gid,
            )
        )
    if meta.get("grade_id", gid) != gid:
        flags.append(
            Flag(
                "grade-id-changed",
                TAMPER,
                f"The grade id of test cell '{gid}' was changed to '{meta.get('grade_id')}'.",
                tests=[gid],
                cell=gid,
            )
        )
    if "points" in meta and meta.get("points") != want.get("points"):
        flags.append(
            Flag(
                "points-changed",
                TAMPER,
                f"The points of test cell '{gid}' were changed from {want.get('points')} to "
                f"{meta.get('points')!r}.",
                tests=[gid],
                cell=gid,
            )
        )
    if meta and (not meta.get("grade") or meta.get("solution")):
        flags.append(
            Flag(
                "cell-type-changed",
                TAMPER,
                f"The nbgrader settings of test cell '{gid}' were changed.",
                tests=[gid],
                cell=gid,
            )
        )
    return flags
