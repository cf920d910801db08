"""``course feedback``: one self-contained HTML page per student and chapter.

A page lists every test with its result, points and (for visible tests) the failure message,
the cells that timed out or crashed (each named, with the limit), and the flags. It never
contains hidden-test source: messages of hidden tests are not shown, every text is passed
through the redaction filter, and the finished page is checked against every hidden-test line
before it is written.
"""

from __future__ import annotations

import html
from pathlib import Path

from . import results as R
from .course import CourseDir
from .gradebook import Grade
from .scoring import redact

STYLE = """
body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;width:100%;margin:1em 0}th,td{border:1px solid #ccc;padding:.4em;text-align:left;
vertical-align:top}th{background:#f3f3f3}.passed{color:#176117}.failed,.timeout,.crashed,.tampered{color:#a11}
.score{font-size:1.4em}pre{white-space:pre-wrap;margin:0;font-size:.9em}.tamper{background:#fde8e8}
.error{background:#fff4e0}.info{background:#eef4fb}small{color:#666}
"""
SEVERITY_TITLE = {
    R.TAMPER: "Tampering (these tests earn no points)",
    R.ERROR: "Problems while running your code",
    R.INFO: "Notes",
}


class FeedbackLeak(RuntimeError):
    """A feedback page would have contained hidden-test code (a bug: nothing is written)."""


def render(grade: Grade, hidden_lines: list[str], redactions: list[str] | None = None) -> str:
    """The HTML page for one student's grade of one chapter.

    Every text from the gradebook is redacted (``redactions``, default ``hidden_lines``: hidden
    lines and string literals); the finished page is then checked against ``hidden_lines``."""
    check_lines, hidden_lines = hidden_lines, redactions if redactions is not None else hidden_lines
    e = html.escape
    result = grade.result
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(grade.chapter)}: {e(grade.student)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{e(grade.chapter)}</h1><p>Student <b>{e(grade.student)}</b>, attempt {grade.attempt}, "
        f"collected {e(str(grade.collected_at))}</p>",
    ]
    if result is None:
        parts.append("<p>Not graded yet.</p></body></html>")
        return "".join(parts)
    parts.append(f"<p class='score'>Score: <b>{result.score:g} / {result.max_score:g}</b></p>")
    if result.status != R.GRADED:
        parts.append(
            f"<p class='failed'><b>Your notebook could not be graded:</b> {e(redact(result.error or '', hidden_lines))}</p>"
        )
    parts.append(
        "<h2>Tests</h2><table><tr><th>test</th><th>result</th><th>points</th><th>details</th></tr>"
    )
    for test in result.tests:
        kind = " <small>(has hidden tests)</small>" if test.hidden else ""
        message = redact(test.message, hidden_lines)
        parts.append(
            f"<tr><td>{e(test.grade_id)}{kind}</td><td class='{e(test.status.replace(' ', '-'))}'>"
            f"{e(test.status)}</td><td>{test.points:g} / {test.max_points:g}</td>"
            f"<td><pre>{e(message)}</pre></td></tr>"
        )
    parts.append("</table>")
    if result.cells:
        parts.append(
            "<h2>Cells that did not finish</h2><table><tr><th>cell</th><th>kind</th><th>what happened</th>"
            "<th>seconds</th></tr>"
        )
        for cell in result.cells:
            parts.append(
                f"<tr><td>{e(cell.cell)}</td><td>{e(cell.kind)}</td><td><pre>{e(cell.status)}: "
                f"{e(redact(cell.message, hidden_lines))}</pre></td><td>{cell.seconds:.1f}</td></tr>"
            )
        parts.append("</table>")
    for severity in (R.TAMPER, R.ERROR, R.INFO):
        flags = [f for f in result.flags if f.severity == severity]
        if flags:
            parts.append(f"<h2>{e(SEVERITY_TITLE[severity])}</h2><ul class='{severity}'>")
            parts += [f"<li>{e(redact(f.message, hidden_lines))}</li>" for f in flags]
            parts.append("</ul>")
    parts.append(
        "<p><small>Hidden tests are run at grading time and their code is not shown. Outputs saved in "
        "your notebook are ignored: the grader runs your code.</small></p></body></html>"
    )
    page = "".join(parts)
    check_no_hidden(page, check_lines)
    return page


def check_no_hidden(page: str, hidden_lines: list[str]) -> None:
    """Raise :class:`FeedbackLeak` if ``page`` holds any hidden-test line (raw or HTML-escaped)."""
    for line in hidden_lines:
        if line in page or html.escape(line) in page:
            raise FeedbackLeak(f"feedback would contain hidden-test code: {line[:40]}...")


def write_feedback(
    course: CourseDir, chapters: list[str] | None = None, students: list[str] | None = None
) -> list[Path]:
    """Write ``feedback/STUDENT/CHAPTER.html`` for every graded latest submission."""
    gradebook = course.gradebook()
    hidden: dict[str, tuple[list[str], list[str]]] = {}
    written = []
    for grade in gradebook.grades(chapters, students):
        if grade.result is None:
            continue
        if grade.chapter not in hidden:
            assignment = course.assignment(grade.chapter)
            hidden[grade.chapter] = (assignment.hidden_lines, assignment.redactions)
        page = render(grade, *hidden[grade.chapter])
        target = course.feedback_dir / grade.student / f"{grade.chapter}.html"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(page, encoding="utf-8")
        written.append(target)
    return written
