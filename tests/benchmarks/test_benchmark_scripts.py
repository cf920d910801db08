"""Smoke tests: every benchmark script runs end to end at a tiny size and prints its table.

The numbers are not checked (performance is measured by running the scripts, never asserted
in tests); what is checked is that the scripts still work with the library as it is, and that
their built-in correctness checks (same tokens with and without the KV cache, same ids as the
reference tokenizers, same weights at the start of both training loops) pass.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CASES = {
    "train_gpt": (
        ["bench_train_gpt.py", "--iters", "6", "--chunk", "3", "--warmup", "1"]
        + ["--val-batches", "2", "--variants", "eager,bf16", "--threads", "1"],
        ["llmcourse Trainer (eager)", "x the plain loop", "matmul%"],
    ),
    "train_gpt_tuned_config": (
        ["bench_train_gpt.py", "--config", "configs/nanogpt_cpu_bench_tuned.toml"]
        + ["--iters", "4", "--chunk", "2", "--warmup", "1", "--val-batches", "1", "--threads", "1"],
        ["baseline (plain loop", "llmcourse Trainer (eager)"],
    ),
    "sweep_lr": (
        ["sweep_lr.py", "--lrs", "1e-3,3e-3", "--seeds", "5", "--iters", "4"]
        + ["--dev-batches", "2"],
        ["mean dev loss", "selected lr"],
    ),
    "generation": (
        ["bench_generation.py", "--new-tokens", "12", "--repeats", "1", "--threads", "1"],
        ["speed-up", "identical tokens: True"],
    ),
    "bpe": (["bench_bpe.py", "--repeat", "1"], ["same 744 merges", "identical token counts: True"]),
    "retrieval": (
        ["bench_retrieval.py", "--n", "2000", "--queries", "20", "--bm25-queries", "5"]
        + ["--topics", "20", "--nprobe", "1", "4"],
        ["recall@10"],
    ),
    "kernels": (["bench_kernels.py", "--check-only"], ["Correctness check passed."]),
    "autograde": (
        ["bench_autograde.py", "-n", "20", "--workers", "2", "--cell-timeout", "2"],
        ["graded 20, invalid 0, grader errors 0", "submissions/s"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_benchmark_script_runs(case: str) -> None:
    argv, expected = CASES[case]
    script, *args = argv
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{script} failed:\n{output[-4000:]}"
    for text in expected:
        assert text in output, f"{script} did not print {text!r}:\n{output[-4000:]}"
