"""Run the Triton kernels under Triton's CPU interpreter and report per kernel.

``TRITON_INTERPRET=1`` only takes effect for kernels defined after it is set, so the cases in
``triton_cases.py`` (values and gradients) and ``triton_memory_cases.py`` (memory safety with
strided inputs and canaries, and a few GPT training steps on the kernels) run once in a child
pytest process with that variable set; each test here reports the child's results for one
kernel, naming every failing case and its message.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kernels_testing import run_pytest_in_subprocess

CASES_FILES = [
    str(Path(__file__).with_name(name)) for name in ("triton_cases.py", "triton_memory_cases.py")
]
GROUPS = {
    "attention": ("test_attention_",),
    "cross_entropy": ("test_cross_entropy_",),
    "norms": ("test_layer_norm_", "test_rms_norm_", "test_norms_"),
    "lstm_cell": ("test_lstm_cell_",),
    "rope": ("test_rope_",),
    "dispatch": ("test_public_", "test_auto_", "test_forced_"),
    "gpt_training": ("test_gpt_",),
}


@pytest.fixture(scope="module")
def interpreter_results(tmp_path_factory):
    junit = tmp_path_factory.mktemp("interpreter") / "junit.xml"
    return run_pytest_in_subprocess(
        CASES_FILES,
        {"TRITON_INTERPRET": "1", "LLMCOURSE_KERNELS": None},
        timeout_s=900,
        junit_xml=str(junit),
    )


def test_interpreter_session_ran_every_case(interpreter_results):
    results, output, returncode = interpreter_results
    assert returncode in (0, 1) and results, f"the interpreter session did not run:\n{output}"
    ungrouped = [n for n in results if not n.startswith(sum(GROUPS.values(), ()))]
    assert not ungrouped, f"cases outside every group (add them to GROUPS): {ungrouped}"
    skipped = [n for n, (outcome, _) in results.items() if outcome == "skipped"]
    assert not skipped, f"skipped interpreter cases: {skipped}"


@pytest.mark.parametrize("group", list(GROUPS))
def test_kernel_under_interpreter(interpreter_results, group):
    results, output, _ = interpreter_results
    mine = {n: r for n, r in results.items() if n.startswith(GROUPS[group])}
    assert mine, f"no interpreter cases ran for {group}:\n{output}"
    failed = {n: msg for n, (outcome, msg) in mine.items() if outcome in ("failed", "error")}
    report = "\n\n".join(f"{name}:\n{msg.strip()}" for name, msg in failed.items())
    assert not failed, f"{len(failed)} of {len(mine)} {group} cases failed:\n{report}"
