"""Grade one submission: run its plan (:mod:`.plan`) in a sandbox and score what happened.

Execution rules:

* each cell has a wall-clock limit; on expiry the runner is interrupted (SIGINT), and if it does
  not answer within a grace period it is killed. The whole notebook has a limit too;
* when the runner dies (a crash, ``os._exit``, a limit, a kill), a new one is started and the
  cells that had run successfully before (except tests) are replayed, then grading continues;
* results come only from the runner's answers over the channel: nothing printed is parsed, and
  outputs saved in the notebook are ignored;
* after every cell the grader looks for processes the cell left behind (forks) and kills them.

Scoring: a test earns its points when its cell ran without an exception and no ``tamper`` flag
names it.
"""

from __future__ import annotations

import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import results as R
from .plan import BUILTIN_NAMES, GUARDED_PREFIXES, Assignment, Plan, WrongChapter, build_plan
from .protocol import ChannelClosed, ChannelError, ChannelTimeout, ForgedMessage
from .results import CellReport, Flag, SubmissionResult, TestResult
from .sandbox import Sandbox, SandboxConfig, SandboxError
from .submission import SubmissionError, read_submission

INTERRUPT_GRACE_S = 3.0
SNAPSHOT_TIMEOUT_S = 180.0
START_TIMEOUT_S = 60.0
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


def _describe_exit(code: int | None) -> tuple[str, bool]:
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


class Execution:
    """Runs one plan; :meth:`run` returns an outcome per step and runtime flags."""

    def __init__(
        self, plan: Plan, assignment: Assignment, config: SandboxConfig, slot: int = 0
    ) -> None:
        self.plan = plan
        self.assignment = assignment
        self.config = config
        self.limits = config.limits
        self.slot = slot
        self.sandbox: Sandbox | None = None
        self.snapshot_taken = False
        self.seq = 0
        self.history: list[int] = []  # steps that ran cleanly (replayed after a restart)
        self.outcomes: dict[int, Outcome] = {}
        self.flags: list[Flag] = []
        self.deadline = 0.0
        self.level = ""

    # -- sandbox management -----------------------------------------------------------------
    def _start(self) -> None:
        self.sandbox = Sandbox(self.config, self.slot)
        self.level = self.sandbox.level
        self.sandbox.start(START_TIMEOUT_S)
        self.snapshot_taken = False

    def _stop(self) -> None:
        if self.sandbox is not None:
            self.sandbox.kill()
            self.sandbox = None

    def _snapshot(self) -> None:
        assert self.sandbox is not None and self.sandbox.channel is not None
        self.seq += 1
        self.sandbox.channel.send(
            {
                "op": "snapshot",
                "seq": self.seq,
                "prefixes": list(GUARDED_PREFIXES),
                "preimport": self.assignment.preimport,
            }
        )
        while True:
            reply = self.sandbox.channel.recv(SNAPSHOT_TIMEOUT_S)
            if reply.get("op") == "snapshot" and reply.get("seq") == self.seq:
                break
        self.snapshot_taken = True

    # -- one step ---------------------------------------------------------------------------
    def _exec(self, index: int) -> Outcome:
        """Run step ``index`` in the current sandbox; restarts are left to the caller."""
        step = self.plan.steps[index]
        assert self.sandbox is not None and self.sandbox.channel is not None
        channel = self.sandbox.channel
        if step.kind != "instructor" and not self.snapshot_taken:
            self._snapshot()
        self.seq += 1
        seq = self.seq
        start = time.monotonic()
        cell_deadline = min(start + self.limits.cell_timeout_s, self.deadline)
        channel.send(
            {
                "op": "exec",
                "seq": seq,
                "kind": step.kind,
                "parts": [list(p) for p in step.parts],
                "check": step.kind == "test",
            }
        )
        audits: list[dict] = []
        interrupted = False
        while True:
            now = time.monotonic()
            try:
                reply = channel.recv(max(cell_deadline - now, 0.0))
            except ChannelTimeout:
                if interrupted:
                    return self._timeout(step, start, audits, killed=True)
                self.sandbox.interrupt()
                interrupted = True
                cell_deadline = time.monotonic() + INTERRUPT_GRACE_S
                continue
            except ChannelClosed:
                code = self.sandbox.exit_status()
                text, _ = _describe_exit(code)
                return Outcome(
                    "died", time.monotonic() - start, message=text, audits=audits, exit_status=code
                )
            except ForgedMessage as exc:
                return Outcome("forged", time.monotonic() - start, message=str(exc), audits=audits)
            op = reply.get("op")
            if op == "audit":
                audits.append(reply)
                continue
            if op == "result" and reply.get("seq") == seq:
                break
            return Outcome(
                "forged",
                time.monotonic() - start,
                audits=audits,
                message=f"an unexpected message ({op!r} for step {reply.get('seq')!r}) arrived "
                "while a cell ran: something other than the grader's runner answered",
            )
        seconds = time.monotonic() - start
        if interrupted or reply.get("interrupted"):
            return self._timeout(step, start, audits, killed=False)
        status = "ok" if reply.get("status") == "ok" else "error"
        outcome = Outcome(
            status, seconds, reply.get("error"), reply.get("part"), reply=reply, audits=audits
        )
        outcome.leftovers = len(self.sandbox.extra_processes())
        return outcome

    def _timeout(self, step, start: float, audits: list[dict], killed: bool) -> Outcome:
        over_notebook = time.monotonic() >= self.deadline - 1e-3
        limit = (
            f"the notebook time limit of {self.limits.notebook_timeout_s:g} s"
            if over_notebook
            else f"the time limit of {self.limits.cell_timeout_s:g} s per cell"
        )
        outcome = Outcome(
            "timeout",
            time.monotonic() - start,
            audits=audits,
            message=f"cell '{step.cell}' was stopped: it reached {limit}",
        )
        outcome.reply = {"killed": killed}
        return outcome

    # -- the whole plan -----------------------------------------------------------------------
    def run(self) -> tuple[dict[int, Outcome], list[Flag]]:
        self.deadline = time.monotonic() + self.limits.notebook_timeout_s
        try:
            index = 0
            steps = self.plan.steps
            while index < len(steps):
                if time.monotonic() >= self.deadline:
                    self._not_run(
                        index,
                        f"not run: the notebook time limit of {self.limits.notebook_timeout_s:g} s "
                        "was reached before this cell",
                    )
                    break
                if self.sandbox is None:
                    self._start()
                    failure = self._replay()
                    if failure:
                        self._not_run(index, failure)
                        break
                outcome = self._exec(index)
                self.outcomes[index] = outcome
                restart = outcome.status in ("died", "forged") or (
                    outcome.status == "timeout" and outcome.reply.get("killed")
                )
                if outcome.leftovers:
                    restart = True
                if outcome.status == "ok" and not outcome.leftovers and steps[index].kind != "test":
                    self.history.append(index)
                if restart:
                    self._stop()
                index += 1
            if self.sandbox is not None:
                self._final_check()
        finally:
            self._stop()
        return self.outcomes, self.flags

    def _replay(self) -> str | None:
        """Re-run the clean history in a fresh runner; a message if that fails."""
        for index in self.history:
            outcome = self._exec(index)
            if outcome.status in ("died", "forged", "timeout") or outcome.leftovers:
                self._stop()
                return (
                    f"not run: after a crash the notebook could not be restored (re-running cell "
                    f"'{self.plan.steps[index].cell}' failed: {outcome.message or outcome.status})"
                )
        return None

    def _not_run(self, start: int, message: str) -> None:
        for index in range(start, len(self.plan.steps)):
            self.outcomes.setdefault(index, Outcome("not run", message=message))

    def _final_check(self) -> None:
        """A last round trip: any stray answer still queued means something forged results."""
        assert self.sandbox is not None and self.sandbox.channel is not None
        self.seq += 1
        try:
            self.sandbox.channel.send({"op": "ping", "seq": self.seq})
            while True:
                reply = self.sandbox.channel.recv(10.0)
                if reply.get("op") == "pong" and reply.get("seq") == self.seq:
                    return
                if reply.get("op") == "audit":
                    continue
                self.flags.append(
                    Flag(
                        "forged-result",
                        R.TAMPER,
                        "An extra result message arrived after the last cell: something other "
                        "than the grader tried to report results.",
                        tests=[t.grade_id for t in self.assignment.tests],
                    )
                )
                return
        except ForgedMessage as exc:
            self.flags.append(
                Flag(
                    "forged-result",
                    R.TAMPER,
                    str(exc),
                    tests=[t.grade_id for t in self.assignment.tests],
                )
            )
        except ChannelError:
            pass


# -- scoring ------------------------------------------------------------------------------------
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
            text, crash = _describe_exit(outcome.exit_status)
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


def grade_notebook(
    submission,
    assignment: Assignment,
    config: SandboxConfig,
    *,
    student: str = "",
    submission_id: int | None = None,
    slot: int = 0,
    file_flags: list[Flag] | None = None,
) -> SubmissionResult:
    """Grade an already-read submission notebook."""
    start = time.monotonic()
    result = SubmissionResult(
        student,
        assignment.chapter,
        submission_id,
        R.GRADED,
        0.0,
        assignment.max_score,
        source_sha=assignment.source_sha,
    )
    try:
        plan = build_plan(submission, assignment)
    except WrongChapter as exc:
        result.status, result.error = R.INVALID, str(exc)
        result.tests = [
            TestResult(t.grade_id, 0.0, t.points, R.NOT_RUN, "not graded: " + str(exc), t.hidden)
            for t in assignment.tests
        ]
        return result
    execution = Execution(plan, assignment, config, slot)
    try:
        outcomes, runtime_flags = execution.run()
    except SandboxError as exc:
        result.status, result.error = R.GRADER_ERROR, f"the sandbox failed: {exc}"
        return result
    result.sandbox = execution.level
    result.tests, result.cells, result.flags = score(
        plan, assignment, outcomes, runtime_flags, submission, config.limits.memory_mb
    )
    result.flags = (file_flags or []) + result.flags
    result.score = float(sum(t.points for t in result.tests))
    result.seconds = round(time.monotonic() - start, 3)
    return result


def grade_file(
    path: Path,
    assignment: Assignment,
    config: SandboxConfig,
    *,
    student: str = "",
    submission_id: int | None = None,
    slot: int = 0,
    max_mb: float = 256,
) -> SubmissionResult:
    """Read and grade one submitted file; unreadable files give an INVALID result with the reason."""
    start = time.monotonic()
    try:
        notebook, file_flags = read_submission(path, max_mb)
    except SubmissionError as exc:
        result = SubmissionResult(
            student,
            assignment.chapter,
            submission_id,
            R.INVALID,
            0.0,
            assignment.max_score,
            error=str(exc),
            source_sha=assignment.source_sha,
        )
        result.tests = [
            TestResult(
                t.grade_id,
                0.0,
                t.points,
                R.NOT_RUN,
                "not graded: the file could not be read",
                t.hidden,
            )
            for t in assignment.tests
        ]
        result.seconds = round(time.monotonic() - start, 3)
        return result
    return grade_notebook(
        notebook,
        assignment,
        config,
        student=student,
        submission_id=submission_id,
        slot=slot,
        file_flags=file_flags,
    )
