"""Compile every Triton kernel for sm_80 and sm_75 without a GPU (see compile_cases.py).

Runs in a child process with ``TRITON_INTERPRET`` removed, so it works whatever the parent's
environment, and reports each failing case with the compiler's message.
"""

from __future__ import annotations

from pathlib import Path

from kernels_testing import run_pytest_in_subprocess

CASES_FILE = Path(__file__).with_name("compile_cases.py")


def test_every_kernel_compiles_for_nvidia_gpus(tmp_path):
    results, output, returncode = run_pytest_in_subprocess(
        str(CASES_FILE),
        {"TRITON_INTERPRET": None, "TRITON_DEFAULT_FP_FUSION": "1"},
        timeout_s=600,
        junit_xml=str(tmp_path / "junit.xml"),
    )
    assert returncode in (0, 1) and results, f"the compile session did not run:\n{output}"
    bad = {n: msg for n, (outcome, msg) in results.items() if outcome != "passed"}
    report = "\n\n".join(f"{name}:\n{msg.strip()}" for name, msg in bad.items())
    assert not bad, f"{len(bad)} of {len(results)} kernels failed to compile:\n{report}"
