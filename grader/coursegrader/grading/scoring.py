"""Turn what happened during a grading run into test results, cell reports and flags.

Inputs are the plan (:mod:`.plan`), one :class:`Outcome` per executed step (from
:mod:`.engine`) and the runner's reports inside them (integrity checks, audit events, changed
names). Every text that may reach a student passes through :func:`redact`.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field

from . import results as R
from .plan import BUILTIN_NAMES, Assignment, Plan
from .results import CellReport, Flag, TestResult

PASS_TEXT = re.compile(
    r"(?i)(\ball\s+tests?\s+pass|\btests?\s+passed\b|\bpassed\b|[\u2713\u2714\u2705])"
)
MESSAGE_LIMIT = 1500


@dataclass
class Outcome:
    """What happened when a step ran (or why it did not)."""

    status: str  # ok | error | timeout | died | forged | not run
    seconds: float = 0.0
    error: dict | None = None  # the runner's description of the exception
    part: int | None = None  # index of the failing part
    message: str = ""  # for timeouts, deaths, forgeries, not run
    reply: dict = field(default_factory=dict)
    audits: list[dict] = field(default_factory=list)
    leftovers: int = 0  # processes left running after the cell
    exit_status: int | None = None


def describe_exit(code: int | None) -> tuple[str, bool]:
    """(text, is_crash) for a runner's exit status."""
    if code is None:
        return "the grading process stopped responding", True
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        reasons = {
            "SIGSEGV": "a crash (segmentation fault)",
            "SIGKILL": "killed (memory or CPU limit)",
            "SIGXCPU": "the CPU time limit",
            "SIGABRT": "an abort (fatal error in a library)",
            "SIGBUS": "a crash (bus error)",
            "SIGFPE": "a crash (arithmetic fault)",
        }
        return f"the grading process ended with {name}: {reasons.get(name, 'a fatal signal')}", True
    return f"the grading process exited with status {code} (os._exit or a fatal error)", False


def redact(text: str, hidden_lines: list[str]) -> str:
    """Remove any hidden-test line from a message and cap its length."""
    for line in hidden_lines:
        if line in text:
            text = text.replace(line, "[hidden test code removed]")
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 20] + " ... (truncated)"


def _error_text(error: dict | None) -> str:
    if not error:
        return "failed"
    text = f"{error.get('type', 'Error')}: {error.get('message', '')}".rstrip(": ")
    if not error.get("message") and error.get("source"):
        text += f" (line {error.get('line')}: {error['source']})"
    return text


def _runtime_flags(
    plan: Plan, assignment: Assignment, outcomes: dict[int, Outcome], memory_mb: int
) -> list[Flag]:
    """Flags that come from running: integrity, audits, forks, exits, rebinding of helpers."""
    flags: list[Flag] = []
    binder: dict[str, tuple[str, str]] = {}  # name -> (who, where)
    instructor_names: set[str] = set()
    for index, step in enumerate(plan.steps):
        outcome = outcomes.get(index)
        if outcome is None or outcome.status == "not run":
            continue
        affected = plan.affected_tests(index)
        where = f"cell '{step.cell}'"
        reply = outcome.reply
        if step.kind == "test":
            found = (reply.get("before") or []) + (reply.get("after") or [])
            bad = list(dict.fromkeys(text for verdict, text in found if verdict == "tamper"))
            odd = list(dict.fromkeys(text for verdict, text in found if verdict != "tamper"))
            if bad:
                flags.append(
                    Flag(
                        "patched-functions",
                        R.TAMPER,
                        f"While test '{step.grade_id}' ran, functions the tests rely on had been "
                        f"changed: {'; '.join(bad[:5])}.",
                        tests=[step.grade_id],
                        cell=step.cell,
                    )
                )
            if odd:
                flags.append(
                    Flag(
                        "library-changed",
                        R.REVIEW,
                        f"During test '{step.grade_id}': {'; '.join(odd[:5])}",
                        cell=step.cell,
                    )
                )
            for name in sorted(step.reads):
                who = binder.get(name)
                if (
                    who
                    and who[0] == "student"
                    and name not in assignment.solution_names
                    and (name in instructor_names or name in BUILTIN_NAMES)
                ):
                    kind = (
                        "a built-in" if name not in instructor_names else "a helper the tests use"
                    )
                    flags.append(
                        Flag(
                            "helper-redefined",
                            R.TAMPER,
                            f"Your code ({who[1]}) redefined '{name}', {kind}; test '{step.grade_id}' "
                            "earns no points.",
                            tests=[step.grade_id],
                            cell=step.cell,
                        )
                    )
        for audit in outcome.audits:
            event = audit.get("event", "")
            if event == "tamper.function_code":
                later = [t.grade_id for t in assignment.tests]
                if step.kind == "test":
                    later = later[later.index(step.grade_id) :] if step.grade_id in later else later
                else:
                    following = {s.grade_id for s in plan.steps[index:] if s.kind == "test"}
                    later = [t for t in later if t in following]
                flags.append(
                    Flag(
                        "changed-course-function",
                        R.TAMPER,
                        f"Code in {where} {audit.get('detail', '')}; the tests from here on earn no points.",
                        tests=later,
                        cell=step.cell,
                    )
                )
            else:
                flags.append(
                    Flag(
                        f"audit:{event}",
                        R.REVIEW,
                        f"{where}: {event} {audit.get('detail', '')}",
                        cell=step.cell,
                    )
                )
        if outcome.leftovers:
            flags.append(
                Flag(
                    "background-process",
                    R.TAMPER,
                    f"{where} left {outcome.leftovers} process(es) running (fork or subprocess); they were "
                    "killed, and the tests that depend on this cell earn no points.",
                    tests=affected,
                    cell=step.cell,
                )
            )
        if outcome.status == "forged":
            flags.append(
                Flag(
                    "forged-result",
                    R.TAMPER,
                    f"During {where}: {outcome.message}",
                    tests=affected,
                    cell=step.cell,
                )
            )
        if outcome.status == "died":
            text, crash = describe_exit(outcome.exit_status)
            if crash:
                flags.append(
                    Flag(
                        "crash",
                        R.ERROR,
                        f"{where}: {text}. Grading restarted after it.",
                        cell=step.cell,
                    )
                )
            elif step.kind != "instructor":
                flags.append(
                    Flag(
                        "process-exit",
                        R.TAMPER,
                        f"{where}: {text}. Exiting the grading process is not allowed; the tests that "
                        "depend on this cell earn no points.",
                        tests=affected,
                        cell=step.cell,
                    )
                )
        if outcome.status == "timeout":
            flags.append(
                Flag(
                    "cell-timeout",
                    R.ERROR,
                    outcome.message[0].upper() + outcome.message[1:] + ".",
                    cell=step.cell,
                )
            )
        error = outcome.error or {}
        if (
            outcome.status == "error"
            and error.get("type") == "SystemExit"
            and step.kind != "instructor"
        ):
            flags.append(
                Flag(
                    "sys-exit",
                    R.TAMPER,
                    f"{where} called sys.exit(); exiting is not allowed during grading, so the tests that "
                    "depend on it earn no points.",
                    tests=affected,
                    cell=step.cell,
                )
            )
        if outcome.status == "error" and error.get("type") == "StdinDisabledError":
            flags.append(
                Flag(
                    "input-called",
                    R.ERROR,
                    f"{where} called input(): keyboard input is disabled during grading.",
                    cell=step.cell,
                )
            )
        if outcome.status == "error" and error.get("type") == "MemoryError":
            flags.append(
                Flag(
                    "memory-limit",
                    R.ERROR,
                    f"{where} ran out of memory (the limit is {memory_mb} MiB).",
                    cell=step.cell,
                )
            )
        printed = reply.get("stdout") or ""
        if step.kind != "instructor" and PASS_TEXT.search(printed):
            flags.append(
                Flag(
                    "printed-pass-text",
                    R.INFO,
                    f"{where} printed text that looks like a test result; grades come only from running "
                    "the tests, never from printed text.",
                    cell=step.cell,
                )
            )
        threads = [t for t in reply.get("threads") or [] if t != "MainThread"]
        if threads and step.kind != "instructor":
            flags.append(
                Flag(
                    "threads-left",
                    R.REVIEW,
                    f"{where} left threads running: {', '.join(threads[:5])}",
                    cell=step.cell,
                )
            )
        for name in reply.get("changed") or []:
            if step.kind == "instructor" or (step.kind == "test" and name in step.stores):
                binder[name] = ("instructor", where)
                instructor_names.add(name)
            elif step.kind == "test":
                binder[name] = ("student", f"code called by test '{step.grade_id}'")
                if (
                    name in step.reads
                    and name not in assignment.solution_names
                    and (name in instructor_names or name in BUILTIN_NAMES)
                ):
                    flags.append(
                        Flag(
                            "helper-redefined",
                            R.TAMPER,
                            f"Code called by test '{step.grade_id}' redefined '{name}', which the test uses.",
                            tests=[step.grade_id],
                            cell=step.cell,
                        )
                    )
            else:
                binder[name] = ("student", where)
    return _dedupe(flags)


def _dedupe(flags: list[Flag]) -> list[Flag]:
    seen, out = set(), []
    for flag in flags:
        key = (flag.code, flag.message)
        if key not in seen:
            seen.add(key)
            out.append(flag)
    return out


def score(
    plan: Plan,
    assignment: Assignment,
    outcomes: dict[int, Outcome],
    flags: list[Flag],
    submission=None,
    memory_mb: int = 0,
) -> tuple[list[TestResult], list[CellReport], list[Flag]]:
    """Per-test results, per-cell reports and all flags, from what happened."""
    flags = _dedupe(plan.flags + _runtime_flags(plan, assignment, outcomes, memory_mb) + flags)
    tampered: dict[str, list[str]] = {}
    for flag in flags:
        if flag.severity == R.TAMPER:
            for gid in flag.tests:
                tampered.setdefault(gid, []).append(flag.message)
    step_of = {s.grade_id: i for i, s in enumerate(plan.steps) if s.kind == "test"}
    solution_step = {s.grade_id: i for i, s in enumerate(plan.steps) if s.kind == "solution"}
    hidden = assignment.redactions
    tests: list[TestResult] = []
    for spec in assignment.tests:
        index = step_of.get(spec.grade_id)
        outcome = outcomes.get(index) if index is not None else None
        result = TestResult(spec.grade_id, 0.0, spec.points, R.NOT_RUN, "not run", spec.hidden)
        if outcome is not None:
            result.seconds = round(outcome.seconds, 3)
            if outcome.status == "ok":
                result.status, result.points, result.message = R.PASSED, spec.points, ""
            elif outcome.status == "error":
                part = (
                    plan.steps[index].parts[outcome.part or 0]
                    if index is not None
                    else ("visible",)
                )
                if (outcome.error or {}).get("type") == "NotImplementedError":
                    result.message = (
                        f"not solved yet: exercise '{spec.exercise}' still raises NotImplementedError "
                        "(replace the stub with your code)"
                    )
                elif part[0] == "hidden":
                    result.message = "the visible checks passed, but a hidden test failed"
                else:
                    result.message = _error_text(outcome.error)
                result.status = R.FAILED
            elif outcome.status == "timeout":
                result.status, result.message = R.TIMEOUT, outcome.message
            elif outcome.status == "died":
                result.status, result.message = R.CRASHED, outcome.message
            elif outcome.status == "forged":
                result.status, result.message = R.TAMPERED, outcome.message
            else:
                result.message = outcome.message
        if spec.exercise in plan.missing_solutions:
            result.status, result.points = R.FAILED, 0.0
            result.message = plan.missing_solutions[spec.exercise]
        elif result.status != R.PASSED and spec.exercise in solution_step:
            first = outcomes.get(solution_step[spec.exercise])
            if first is not None and first.status not in ("ok", "not run"):
                cause = _error_text(first.error) if first.status == "error" else first.message
                result.message = (
                    f"your exercise cell '{spec.exercise}' failed first ({cause}); {result.message}"
                )
        if spec.grade_id in tampered:
            result.status, result.points = R.TAMPERED, 0.0
            result.message = " ".join(dict.fromkeys(tampered[spec.grade_id]))
        result.message = redact(result.message, hidden)
        tests.append(result)

    cells: list[CellReport] = []
    for index, step in enumerate(plan.steps):
        outcome = outcomes.get(index)
        if (
            outcome is None
            or outcome.status == "ok"
            or step.kind == "test"
            and outcome.status == "error"
        ):
            continue
        if outcome.status == "error":
            message = _error_text(outcome.error)
        else:
            message = outcome.message
        status = {"died": "crashed", "forged": "error"}.get(outcome.status, outcome.status)
        cells.append(
            CellReport(
                step.cell, step.kind, status, redact(message, hidden), round(outcome.seconds, 3)
            )
        )

    if submission is not None:
        saved = {c.get("id"): c for c in submission.cells}
        for result in tests:
            cell = saved.get(result.grade_id)
            if (
                cell is not None
                and cell.get("had_outputs")
                and not cell.get("output_error")
                and result.status != R.PASSED
            ):
                flags.append(
                    Flag(
                        "stale-outputs",
                        R.INFO,
                        f"The output saved in test cell '{result.grade_id}' shows no error, but the test "
                        "does not pass when run; saved outputs are ignored.",
                        cell=result.grade_id,
                    )
                )
    for flag in flags:
        flag.message = redact(flag.message, hidden)
    return tests, cells, flags
