"""Benchmark the Triton kernels of ``llmcourse.kernels`` against PyTorch.

    python benchmarks/bench_kernels.py              # full sweep (CUDA GPU)
    python benchmarks/bench_kernels.py --quick      # fewer sizes
    python benchmarks/bench_kernels.py --check-only # correctness only

On a CUDA GPU it first checks every Triton kernel against its plain-PyTorch reference (values
and gradients, tolerances of ``llmcourse.kernels.testing``), then times forward + backward of
each kernel against PyTorch eager (the reference implementations, plus the built-ins
``scaled_dot_product_attention``, ``cross_entropy``, ``layer_norm`` and ``rms_norm``) over a
sweep of sizes, measures peak memory, prints a table and saves a plot.

Without a GPU there is nothing to time: it says so and runs the correctness check on small
sizes, with the Triton kernels executed by Triton's CPU interpreter.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

DEFAULT_PLOT = Path(__file__).resolve().parent / "results" / "kernels.png"


def _prepare_environment(has_cuda: bool) -> bool:
    """Switch on Triton's interpreter on a CPU-only machine (before Triton is imported).

    Returns whether Triton is importable at all.
    """
    has_triton = importlib.util.find_spec("triton") is not None
    if has_triton and not has_cuda:
        os.environ["TRITON_INTERPRET"] = "1"
    return has_triton


# ----------------------------------------------------------------------------- correctness


@dataclass
class CheckCase:
    label: str
    kernel_fn: Callable
    expected_fn: Callable
    inputs: list
    names: list[str]


def _check_cases(device: torch.device, dtype: torch.dtype, small: bool) -> list[CheckCase]:
    """One case per kernel; ``small`` sizes for the (slow) interpreter."""
    from llmcourse.kernels import reference as ref
    from llmcourse.kernels import (
        triton_attention,
        triton_cross_entropy,
        triton_lstm,
        triton_norms,
        triton_rope,
    )

    gen = torch.Generator().manual_seed(0)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(device, dtype)

    b, h, t, d = (2, 2, 37, 32) if small else (2, 4, 300, 64)
    q, k, v = randn(b, h, t, d), randn(b, h, t, d), randn(b, h, t, d)
    key_mask = (torch.rand(b, t, generator=gen) > 0.2).to(device)
    key_mask[:, 0] = True
    n_rows, vocab = (16, 1000) if small else (512, 32000)
    logits = randn(n_rows, vocab, scale=3.0)
    targets = torch.randint(0, vocab, (n_rows,), generator=gen).to(device)
    targets[::5] = -100
    width = 100 if small else 1536
    x, w, bias = randn(n_rows, width, scale=2.0), randn(width), randn(width)
    hidden = 100 if small else 1024
    gates, c_prev = randn(n_rows, 4 * hidden, scale=2.0), randn(n_rows, hidden)
    rope_x = randn(b, h, t, d)
    cos, sin = (c.to(dtype) for c in ref.rope_cos_sin(torch.arange(t, device=device), d))

    return [
        CheckCase(
            "attention (causal, key padding)",
            lambda q, k, v: triton_attention.attention(
                q, k, v, causal=True, key_padding_mask=key_mask
            ),
            lambda q, k, v: ref.attention(q, k, v, causal=True, key_padding_mask=key_mask),
            [q, k, v],
            ["q", "k", "v"],
        ),
        CheckCase(
            "cross_entropy (mean, ignore_index)",
            triton_cross_entropy.cross_entropy,
            F.cross_entropy,
            [logits, targets],
            ["logits"],
        ),
        CheckCase(
            "layer_norm",
            lambda x, w, b: triton_norms.layer_norm(x, w, b),
            lambda x, w, b: F.layer_norm(x, (width,), w, b),
            [x, w, bias],
            ["x", "weight", "bias"],
        ),
        CheckCase(
            "rms_norm",
            lambda x, w: triton_norms.rms_norm(x, w),
            lambda x, w: F.rms_norm(x, (width,), w, 1e-6),
            [x, w],
            ["x", "weight"],
        ),
        CheckCase(
            "lstm_cell", triton_lstm.lstm_cell, ref.lstm_cell, [gates, c_prev], ["gates", "c_prev"]
        ),
        CheckCase(
            "rope",
            lambda x: triton_rope.apply_rope(x, cos, sin),
            lambda x: ref.apply_rope(x, cos.float(), sin.float()),
            [rope_x],
            ["x"],
        ),
    ]


def run_checks(device: torch.device, dtypes: list[torch.dtype], small: bool) -> bool:
    """Print one PASS/FAIL line per kernel and dtype; True when all pass."""
    from llmcourse.kernels.testing import compare_with_reference

    all_ok = True
    for dtype in dtypes:
        for case in _check_cases(device, dtype, small):
            name = str(dtype).replace("torch.", "")
            try:
                compare_with_reference(
                    case.kernel_fn, case.expected_fn, case.inputs, dtype, case.names, case.label
                )
            except AssertionError as err:
                all_ok = False
                print(f"  FAIL {case.label:<36} {name:<9} {str(err).splitlines()[0]}")
            else:
                print(f"  ok   {case.label:<36} {name}")
    return all_ok


# ----------------------------------------------------------------------------- timing


@dataclass
class Row:
    kernel: str
    size: int
    size_label: str
    impl: str
    ms: float  # forward + backward, median; nan when out of memory
    peak_mib: float  # peak extra memory of one forward + backward; nan when out of memory


@dataclass
class Sweep:
    kernel: str
    size_name: str
    sizes: list[int]
    make_inputs: Callable[[int], list[torch.Tensor]]  # leaves that require grad (+ constants)
    impls: dict[str, Callable]


def _sweeps(dtype: torch.dtype, quick: bool) -> list[Sweep]:
    from llmcourse.kernels import reference as ref
    from llmcourse.kernels import (
        triton_attention,
        triton_cross_entropy,
        triton_lstm,
        triton_norms,
        triton_rope,
    )

    dev = torch.device("cuda")

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=dev, dtype=dtype).requires_grad_(True)

    def pick(full: list[int]) -> list[int]:
        return full[::2] if quick else full

    rope_tables: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def rope_inputs(t: int) -> list[torch.Tensor]:
        rope_tables[t] = tuple(
            c.to(dtype) for c in ref.rope_cos_sin(torch.arange(t, device=dev), 128)
        )
        return [randn(4, 16, t, 128), *rope_tables[t]]

    def ce_inputs(vocab: int) -> list[torch.Tensor]:
        return [randn(4096, vocab), torch.randint(0, vocab, (4096,), device=dev)]

    return [
        Sweep(
            "attention (B=4, H=8, D=64, causal)",
            "T",
            pick([512, 1024, 2048, 4096, 8192]),
            lambda t: [randn(4, 8, t, 64), randn(4, 8, t, 64), randn(4, 8, t, 64)],
            {
                "triton": lambda q, k, v: triton_attention.attention(q, k, v, causal=True),
                "eager": lambda q, k, v: ref.attention(q, k, v, causal=True),
                "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
            },
        ),
        Sweep(
            "cross_entropy (N=4096)",
            "V",
            pick([8192, 32768, 50304, 131072]),
            ce_inputs,
            {
                "triton": triton_cross_entropy.cross_entropy,
                "eager": ref.cross_entropy,
                "torch": F.cross_entropy,
            },
        ),
        Sweep(
            "layer_norm (N=16384)",
            "C",
            pick([512, 1024, 2048, 4096, 8192]),
            lambda c: [randn(16384, c), randn(c), randn(c)],
            {
                "triton": triton_norms.layer_norm,
                "eager": ref.layer_norm,
                "torch": lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b),
            },
        ),
        Sweep(
            "rms_norm (N=16384)",
            "C",
            pick([512, 1024, 2048, 4096, 8192]),
            lambda c: [randn(16384, c), randn(c)],
            {
                "triton": triton_norms.rms_norm,
                "eager": ref.rms_norm,
                "torch": lambda x, w: F.rms_norm(x, (x.shape[-1],), w, 1e-6),
            },
        ),
        Sweep(
            "lstm_cell (B=512)",
            "H",
            pick([256, 512, 1024, 2048, 4096]),
            lambda hid: [randn(512, 4 * hid), randn(512, hid)],
            {"triton": triton_lstm.lstm_cell, "eager": ref.lstm_cell},
        ),
        Sweep(
            "rope (B=4, H=16, D=128)",
            "T",
            pick([512, 1024, 2048, 4096, 8192]),
            rope_inputs,
            {"triton": triton_rope.apply_rope, "eager": ref.apply_rope},
        ),
    ]


def _forward_backward(impl: Callable, inputs: list[torch.Tensor]) -> Callable[[], None]:
    leaves = [t for t in inputs if t.requires_grad]

    def step() -> None:
        out = impl(*inputs)
        outputs = out if isinstance(out, tuple) else (out,)
        torch.autograd.backward(outputs, [torch.ones_like(o) for o in outputs])
        for t in leaves:
            t.grad = None

    return step


def _measure(step: Callable[[], None]) -> tuple[float, float]:
    """(median milliseconds, peak extra MiB) of one forward + backward."""
    from triton.testing import do_bench

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()  # also compiles the Triton kernels on first use
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    ms = do_bench(step, warmup=10, rep=50, return_mode="median")
    return float(ms), peak


def run_benchmarks(dtype: torch.dtype, quick: bool) -> list[Row]:
    rows = []
    for sweep in _sweeps(dtype, quick):
        for size in sweep.sizes:
            inputs = sweep.make_inputs(size)
            for impl_name, impl in sweep.impls.items():
                try:
                    ms, peak = _measure(_forward_backward(impl, inputs))
                except torch.cuda.OutOfMemoryError:
                    ms, peak = math.nan, math.nan
                    for t in inputs:
                        t.grad = None  # drop what the failed step left behind
                torch.cuda.empty_cache()
                rows.append(
                    Row(sweep.kernel, size, f"{sweep.size_name}={size}", impl_name, ms, peak)
                )
                shown = "out of memory" if math.isnan(ms) else f"{ms:8.3f} ms {peak:9.1f} MiB"
                print(f"  {sweep.kernel:<36} {sweep.size_name}={size:<7} {impl_name:<7} {shown}")
            del inputs
            torch.cuda.empty_cache()
    return rows


def print_table(rows: list[Row]) -> None:
    """Markdown table: one line per (kernel, size), columns per implementation."""
    impls = list(dict.fromkeys(r.impl for r in rows))
    header = ["kernel", "size"]
    header += [f"{i} ms" for i in impls] + [f"{i} MiB" for i in impls] + ["speed-up vs eager"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    groups: dict[tuple[str, str], dict[str, Row]] = {}
    for r in rows:
        groups.setdefault((r.kernel, r.size_label), {})[r.impl] = r

    def fmt(value: float | None, digits: int) -> str:
        if value is None:
            return ""
        return "OOM" if math.isnan(value) else f"{value:.{digits}f}"

    for (kernel, size), by_impl in groups.items():
        ms = [fmt(by_impl[i].ms, 3) if i in by_impl else "" for i in impls]
        mib = [fmt(by_impl[i].peak_mib, 1) if i in by_impl else "" for i in impls]
        speedup = ""
        if "triton" in by_impl and "eager" in by_impl:
            ratio = by_impl["eager"].ms / by_impl["triton"].ms
            speedup = "eager OOM" if math.isnan(ratio) else f"{ratio:.2f}x"
        print("| " + " | ".join([kernel, size, *ms, *mib, speedup]) + " |")


def save_plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kernels = list(dict.fromkeys(r.kernel for r in rows))
    fig, axes = plt.subplots(2, len(kernels), figsize=(4 * len(kernels), 7), squeeze=False)
    for col, kernel in enumerate(kernels):
        mine = [r for r in rows if r.kernel == kernel]
        for impl in dict.fromkeys(r.impl for r in mine):
            pts = [r for r in mine if r.impl == impl and not math.isnan(r.ms)]
            sizes = [r.size for r in pts]
            axes[0, col].plot(sizes, [r.ms for r in pts], marker="o", label=impl)
            axes[1, col].plot(sizes, [r.peak_mib for r in pts], marker="o", label=impl)
        axes[0, col].set_title(kernel, fontsize=9)
        size_name = mine[0].size_label.split("=")[0]
        for row, ylabel in ((0, "forward + backward (ms)"), (1, "peak extra memory (MiB)")):
            ax = axes[row, col]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(size_name)
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot saved to {path}")


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every other size of each sweep")
    parser.add_argument("--check-only", action="store_true", help="correctness check only")
    parser.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        default=None,
        help="dtype of the timing sweep (default: bfloat16 where supported, else float16)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_PLOT, help="where to save the plot")
    args = parser.parse_args(argv)

    has_cuda = torch.cuda.is_available()
    has_triton = _prepare_environment(has_cuda)
    if not has_triton:
        print("Triton is not installed (it ships for Linux only): nothing to check or time.")
        print("The library runs the plain-PyTorch reference kernels; see book/kernels_on_gpu.md.")
        return 0

    if has_cuda:
        device = torch.device("cuda")
        bf16 = torch.cuda.is_bf16_supported()
        check_dtypes = [torch.float32, torch.float16] + ([torch.bfloat16] if bf16 else [])
        print(f"GPU: {torch.cuda.get_device_name(device)}")
    else:
        device = torch.device("cpu")
        check_dtypes = [torch.float32, torch.float16, torch.bfloat16]
        print(
            "No CUDA GPU found. Timing and memory need an NVIDIA GPU (for example a Colab GPU "
            "runtime, see book/kernels_on_gpu.md).\nRunning the correctness check only, at "
            "small sizes, with the Triton kernels executed by Triton's CPU interpreter."
        )

    print("Correctness (Triton kernel vs reference, values and gradients):")
    if not run_checks(device, check_dtypes, small=not has_cuda):
        print("Correctness check FAILED.")
        return 1
    print("Correctness check passed.")
    if not has_cuda or args.check_only:
        return 0

    name = args.dtype or ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    dtype = getattr(torch, name)
    print(f"Timing forward + backward in {name} (median of repeated runs):")
    rows = run_benchmarks(dtype, args.quick)
    print()
    print_table(rows)
    save_plot(rows, args.out, f"llmcourse kernels, {name}, {torch.cuda.get_device_name()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
