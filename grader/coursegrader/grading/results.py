"""What grading one submission produces: per-test results, per-cell problems and flags.

Everything here is plain data (dataclasses of str/float/bool/list) so that it crosses process
boundaries, goes into the gradebook as rows and JSON, and renders into feedback.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Flag severities. Only "tamper" flags change scores (the tests they list earn 0).
TAMPER = "tamper"  # evidence of tampering: the listed tests earn no points
ERROR = "error"  # an execution problem the student should fix (timeout, crash, missing cell)
INFO = "info"  # worth knowing, no effect on the score
REVIEW = "review"  # suspicious, for the instructor to look at (not shown to the student)
SEVERITIES = (TAMPER, ERROR, INFO, REVIEW)

# Test statuses.
PASSED = "passed"
FAILED = "failed"
TIMEOUT = "timeout"
CRASHED = "crashed"
NOT_RUN = "not run"
TAMPERED = "tampered"

# Submission statuses.
GRADED = "graded"
INVALID = "invalid"  # unreadable, or not the right chapter: zero, nothing executed
GRADER_ERROR = "grader error"  # the grader itself failed; a rerun retries it


@dataclass
class Flag:
    code: str  # short machine name, e.g. "test-cell-edited"
    severity: str  # one of SEVERITIES
    message: str  # for the student (or the instructor, for "review")
    tests: list[str] = field(
        default_factory=list
    )  # grade ids this flag zeroes (tamper) or concerns
    cell: str | None = None  # the cell it is about, if any


@dataclass
class TestResult:
    __test__ = False  # not a pytest test class

    grade_id: str
    points: float  # earned
    max_points: float
    status: str  # PASSED, FAILED, TIMEOUT, CRASHED, NOT_RUN, TAMPERED
    message: str = ""  # safe to show the student: never hidden-test source
    hidden: bool = False  # the cell has hidden tests
    seconds: float = 0.0


@dataclass
class CellReport:
    """A cell that did not finish normally (timeouts, crashes, errors outside tests)."""

    cell: str
    kind: str  # instructor | solution | student | test
    status: str  # "error", "timeout", "crashed", "not run"
    message: str
    seconds: float = 0.0


@dataclass
class SubmissionResult:
    student: str
    chapter: str
    submission_id: int | None
    status: str  # GRADED, INVALID, GRADER_ERROR
    score: float
    max_score: float
    tests: list[TestResult] = field(default_factory=list)
    cells: list[CellReport] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    error: str | None = None  # submission-level problem (status INVALID / GRADER_ERROR)
    sandbox: str = ""  # sandbox level used
    seconds: float = 0.0
    source_sha: str = ""  # which released instructor edition graded it

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SubmissionResult:
        data = dict(data)
        data["tests"] = [TestResult(**t) for t in data.get("tests", [])]
        data["cells"] = [CellReport(**c) for c in data.get("cells", [])]
        data["flags"] = [Flag(**f) for f in data.get("flags", [])]
        return cls(**data)

    def flag_codes(self, severities: tuple[str, ...] = SEVERITIES) -> list[str]:
        return sorted({f.code for f in self.flags if f.severity in severities})
