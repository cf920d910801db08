"""Shared helpers for the kernel tests (the tolerance table lives in llmcourse.kernels.testing)."""

from __future__ import annotations

import torch

from llmcourse.kernels.testing import (  # noqa: F401 - re-exported for the test files
    TOLERANCES,
    assert_close,
    compare_with_reference,
    leaf,
    upcast_leaf,
)


def random_key_mask(batch: int, seq_k: int, generator: torch.Generator) -> torch.Tensor:
    """(B, Tk) bool key mask: random padding, one row fully padded, one row with no padding."""
    mask = torch.rand(batch, seq_k, generator=generator) > 0.3
    mask[0] = True
    if batch > 1:
        mask[-1] = False  # every key padded: those queries must output 0, not NaN
    return mask


def run_pytest_in_subprocess(
    cases_file: str | list[str],
    env_updates: dict[str, str | None],
    timeout_s: float,
    junit_xml: str,
) -> tuple[dict[str, tuple[str, str]], str, int]:
    """Run ``python -m pytest cases_file...`` in a fresh process and read its JUnit report.

    ``env_updates`` sets (str) or removes (None) environment variables for the child; this is
    how Triton's interpreter gets switched on before Triton is imported. Returns
    ({test name: (outcome, message)}, tail of the child's output, its exit code); outcome is
    one of "passed", "failed", "error", "skipped".
    """
    import os
    import subprocess
    import sys
    import xml.etree.ElementTree as ET
    from pathlib import Path

    repo_root = Path(__file__).resolve().parents[2]
    env = os.environ.copy()
    for key, value in env_updates.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    files = [cases_file] if isinstance(cases_file, str) else list(cases_file)
    command = [
        sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider",
        f"--junitxml={junit_xml}",
    ]  # fmt: skip
    proc = subprocess.run(
        command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    output_tail = (proc.stdout + proc.stderr)[-6000:]
    results: dict[str, tuple[str, str]] = {}
    if Path(junit_xml).exists():
        for case in ET.parse(junit_xml).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    outcome = {"failure": "failed"}.get(tag, tag)
                    message = (node.get("message") or "") + "\n" + (node.text or "")[-3000:]
            results[case.get("name", "?")] = (outcome, message)
    return results, output_tail, proc.returncode
