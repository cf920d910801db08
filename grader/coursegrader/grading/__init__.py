"""Grading for the course, on nbgrader's notebook format: release, collect, autograde (in a
sandbox, tamper-resistant), feedback, export, and the students' self-check.

Modules (each has one job): :mod:`.course` (the course folder and settings), :mod:`.gradebook`
(SQLAlchemy schema), :mod:`.release`, :mod:`.collect`, :mod:`.submission` (reading files
defensively), :mod:`.plan` (what a grading run executes; static tamper checks), :mod:`.engine`
(running a plan and scoring), :mod:`.sandbox` (namespaces, users, limits), :mod:`.runner` (the
program inside the sandbox), :mod:`.protocol` (the channel between them), :mod:`.autograde`
(parallel batches), :mod:`.feedback`, :mod:`.export`, :mod:`.selfcheck`, :mod:`.cli`.

This package imports nothing heavy at import time: the runner imports it inside the sandbox.
"""

from __future__ import annotations


def __getattr__(name: str):
    if name in ("self_check", "check"):
        from .selfcheck import self_check

        return self_check
    raise AttributeError(name)
