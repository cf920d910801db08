"""Grade one submission: run its plan (:mod:`.plan`) in a sandbox and score what happened.

Execution rules:

* each cell has a wall-clock limit; on expiry the runner is interrupted (SIGINT), and if it does
  not answer within a grace period it is killed. The whole notebook has a limit too;
* when the runner dies (a crash, ``os._exit``, a limit, a kill), a new one is started and the
  cells that had run successfully before (except tests) are replayed, then grading continues;
* results come only from the runner's answers over the channel: nothing printed is parsed, and
  outputs saved in the notebook are ignored;
* after every cell the grader looks for processes the cell left behind (forks) and kills them.

Scoring is :mod:`.scoring`'s job.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import results as R
from .plan import GUARDED_PREFIXES, Assignment, Plan, WrongChapter, build_plan
from .protocol import ChannelClosed, ChannelError, ChannelTimeout, ForgedMessage
from .results import Flag, SubmissionResult, TestResult
from .sandbox import Sandbox, SandboxConfig, SandboxError
from .scoring import Outcome, describe_exit, score
from .submission import SubmissionError, read_submission

INTERRUPT_GRACE_S = 3.0
SNAPSHOT_TIMEOUT_S = 180.0
START_TIMEOUT_S = 60.0


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
                text, _ = describe_exit(code)
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
