"""Benchmark: GPT training with llmcourse's Trainer against a plain PyTorch loop.

Runs nanoGPT's published CPU configuration (``configs/nanogpt_cpu_bench.toml``: character-level
Tiny Shakespeare, 4 layers, 4 heads, 128 dims, block 64, batch 12, 2,000 iterations) twice in
one process, from the same initial weights and the same data:

* ``baseline``: a plain loop in the style of nanoGPT's ``train.py`` (``torch.optim.AdamW``,
  per-row memmap slicing for batches, ``clip_grad_norm_``, evaluation every 250 steps);
* ``trainer`` variants: :class:`llmcourse.train.Trainer` with the library's AdamW, in eager
  mode, with ``torch.compile`` and/or bfloat16 autocast (``--variants``).

``configs/nanogpt_cpu_bench_tuned.toml`` is the same run at the peak learning rate that
``benchmarks/sweep_lr.py`` picks on a dev split (3e-3 instead of nanoGPT's 1e-3): nanoGPT's own
hyperparameters give a validation loss of about 1.89 here, the tuned rate about 1.77.

The runs are interleaved in chunks of 25 iterations, so that a machine whose load varies (a
shared CI runner, a laptop) slows them alike. For each run it prints the median ms/iteration
and the tokens/s it implies (evaluation time and warm-up iterations excluded; the mean is in
the JSON output), the peak resident memory during the run, the final validation loss on
the same 200 validation batches, and the share of the machine's measured fp32 matmul FLOP/s
the training reaches (model FLOPs per token = 6 N + 12 L d T, as in nanoGPT's MFU estimate).

    python benchmarks/bench_train_gpt.py                       # full 2,000 iterations
    python benchmarks/bench_train_gpt.py --config configs/nanogpt_cpu_bench_tuned.toml
    python benchmarks/bench_train_gpt.py --iters 200 --variants eager,compile
    taskset -c 0,1 python benchmarks/bench_train_gpt.py --threads 2   # emulate a 2-core box
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch

from llmcourse.models.gpt import GPT, GPTConfig
from llmcourse.optim import lr_at, weight_decay_groups
from llmcourse.train.run import build_run, load_run_config
from llmcourse.utils import set_seed

ROOT = Path(__file__).resolve().parents[1]
NANOGPT_TOKENS_PER_S = 15_000  # nanoGPT's loop on a 2-core machine (46-57 ms/iter, 768 tokens)
TARGET_SPEEDUP = 1.3
TARGET_VAL_LOSS = 1.88


# ------------------------------------------------------------------------------ measurement


class PeakRSS:
    """Peak resident set size of this process while the context is active (Linux: sampled)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    @staticmethod
    def current() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # not Linux: the lifetime peak is the best available
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self.current()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def matmul_flops(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Best-of-``repeats`` FLOP/s of an (n x n) @ (n x n) matmul on this machine's CPU."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def flops_per_token(config: GPTConfig, model: GPT) -> float:
    """Training FLOPs per token: 6 N (N = every matmul weight, the tied output layer included)
    plus 12 L d T for the attention scores and their weighted sums (forward + backward)."""
    n = model.num_parameters() - (
        model.pos_emb.weight.numel() if config.positions == "learned" else 0
    )
    return 6 * n + 12 * config.n_layer * config.n_embd * config.block_size


@torch.no_grad()
def fixed_val_loss(
    model: torch.nn.Module, val: np.ndarray, block: int, batch: int, batches: int
) -> float:
    """Mean loss over ``batches`` validation batches drawn with a fixed seed (same for all runs)."""
    from llmcourse.data import get_batch

    was = model.training
    model.eval()
    g = torch.Generator().manual_seed(0)
    total = 0.0
    for _ in range(batches):
        x, y = get_batch(val, block, batch, g)
        total += model(x, targets=y).loss.item()
    model.train(was)
    return total / batches


@dataclasses.dataclass
class Result:
    name: str
    step_times: list[float]
    eval_time: float
    wall_time: float
    first_step_time: float
    peak_rss: int
    val_loss: float
    val_loss_logged: float
    final_train_loss: float

    def summary(self, tokens_per_iter: int, warmup: int, fpt: float, peak_flops: float) -> dict:
        steady = self.step_times[warmup:] or self.step_times
        mean, median = statistics.fmean(steady), statistics.median(steady)
        # throughput from the median step, like ms/iter: a busy machine's stalls (another
        # process taking the cores for seconds) would otherwise dominate the mean
        tps = tokens_per_iter / median
        return {
            "name": self.name,
            "iters": len(self.step_times),
            "ms_per_iter_median": 1000 * median,
            "ms_per_iter_mean": 1000 * mean,
            "tokens_per_s": tps,
            "first_step_s": self.first_step_time,
            "train_time_s": sum(self.step_times),
            "eval_time_s": self.eval_time,
            "wall_time_s": self.wall_time,
            "peak_rss_mb": self.peak_rss / 2**20,
            "achieved_gflops": fpt * tps / 1e9,
            "matmul_share": fpt * tps / peak_flops,
            "final_train_loss": self.final_train_loss,
            "val_loss_200_batches": self.val_loss,
            "val_loss_logged": self.val_loss_logged,
        }


# ------------------------------------------------------------------------------ the two loops


class Runner:
    """One training run that can be advanced in chunks (to interleave runs on a noisy machine)."""

    name = ""

    def __init__(self) -> None:
        self.step_times: list[float] = []
        self.eval_time = 0.0
        self.wall_time = 0.0
        self.peak_rss = 0

    def advance(self, target: int) -> None:
        """Train until ``target`` iterations are done."""
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            self._advance(target)
        self.wall_time += time.perf_counter() - t0
        self.peak_rss = max(self.peak_rss, mem.peak)

    def _advance(self, target: int) -> None:
        raise NotImplementedError

    def result(self, val_batches: int) -> Result:
        raise NotImplementedError


class Baseline(Runner):
    """A plain PyTorch loop in the style of nanoGPT's train.py, on the same model and data."""

    name = "baseline (plain loop, torch.optim.AdamW)"

    def __init__(self, cfg, run, iters: int) -> None:
        super().__init__()
        d, o = cfg.data, cfg.optim
        self.cfg, self.iters = cfg, iters
        set_seed(cfg.seed)
        self.model = GPT(
            GPTConfig(vocab_size=run.tokenizer.vocab_size, block_size=d.block_size, **cfg.model)
        )
        same = zip(self.model.parameters(), run.model.parameters(), strict=True)
        assert all(torch.equal(a, b) for a, b in same), (
            "baseline and Trainer must start from the same weights"
        )
        groups = weight_decay_groups(self.model, o.weight_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps)
        self.train, self.val = run.train_tokens, run.val_tokens
        self.rng = torch.Generator().manual_seed(cfg.seed + 1)  # nanoGPT uses the global RNG
        self.it, self.logged_val, self.last_loss = 0, float("nan"), float("nan")

    def get_batch(self, data: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.cfg.data
        ix = torch.randint(len(data) - d.block_size, (d.batch_size,), generator=self.rng)
        x = torch.stack([torch.from_numpy(data[i : i + d.block_size].astype(np.int64)) for i in ix])
        y = torch.stack(
            [torch.from_numpy(data[i + 1 : i + 1 + d.block_size].astype(np.int64)) for i in ix]
        )
        return x, y

    @torch.no_grad()
    def estimate_loss(self) -> dict[str, float]:
        """nanoGPT's estimate_loss: mean over eval_batches random batches of each split."""
        self.model.eval()
        out = {}
        for split, data in (("train", self.train), ("val", self.val)):
            losses = []
            for _ in range(self.cfg.train.eval_batches):
                x, y = self.get_batch(data)
                losses.append(self.model(x, targets=y).loss.item())
            out[split] = float(np.mean(losses))
        self.model.train()
        return out

    def _advance(self, target: int) -> None:
        o, t = self.cfg.optim, self.cfg.train
        model, optimizer = self.model, self.optimizer
        while self.it < target:
            t0 = time.perf_counter()
            lr = lr_at(
                self.it,
                max_lr=o.lr,
                min_lr=o.min_lr,
                warmup_steps=o.warmup_steps,
                decay_steps=o.decay_steps,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = self.get_batch(self.train)
            loss = model(x, targets=y).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            self.last_loss = loss.item()
            self.step_times.append(time.perf_counter() - t0)
            self.it += 1
            if self.it % t.eval_interval == 0 or self.it == self.iters:
                e0 = time.perf_counter()
                self.logged_val = self.estimate_loss()["val"]
                self.eval_time += time.perf_counter() - e0

    def result(self, val_batches: int) -> Result:
        d = self.cfg.data
        val = fixed_val_loss(self.model, self.val, d.block_size, d.batch_size, val_batches)
        return Result(
            self.name,
            self.step_times,
            self.eval_time,
            self.wall_time,
            self.step_times[0],
            self.peak_rss,
            val,
            self.logged_val,
            self.last_loss,
        )


class TrainerRun(Runner):
    """llmcourse's Trainer (library AdamW, RandomBatches) built from the same config."""

    def __init__(self, cfg, variant: str, iters: int) -> None:
        super().__init__()
        train_cfg = dataclasses.replace(
            cfg.train,
            max_steps=iters,
            compile="compile" in variant,
            precision="bfloat16" if "bf16" in variant else "float32",
            progress=False,
            log=False,
            checkpoint_dir=None,
        )
        self.cfg = dataclasses.replace(cfg, train=train_cfg)
        self.name = f"llmcourse Trainer ({variant})"
        self.run = build_run(self.cfg)
        trainer = self.run.trainer
        real_step, real_eval = trainer.train_step, trainer.evaluate

        def timed_step() -> float:
            t0 = time.perf_counter()
            value = real_step()
            self.step_times.append(time.perf_counter() - t0)
            return value

        def timed_eval(*args, **kwargs):
            t0 = time.perf_counter()
            out = real_eval(*args, **kwargs)
            self.eval_time += time.perf_counter() - t0
            return out

        trainer.train_step, trainer.evaluate = timed_step, timed_eval

    def _advance(self, target: int) -> None:
        trainer = self.run.trainer
        trainer.fit(max_steps=target, finish=target == trainer.config.max_steps)

    def result(self, val_batches: int) -> Result:
        d, h = self.cfg.data, self.run.trainer.history
        val = fixed_val_loss(
            self.run.model, self.run.val_tokens, d.block_size, d.batch_size, val_batches
        )
        return Result(
            self.name,
            self.step_times,
            self.eval_time,
            self.wall_time,
            self.step_times[0],
            self.peak_rss,
            val,
            h.eval_loss["val"][-1],
            h.loss[-1],
        )


# ------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "nanogpt_cpu_bench.toml")
    parser.add_argument(
        "--iters", type=int, help="training iterations (default: the config's max_steps)"
    )
    parser.add_argument(
        "--variants", default="eager", help="comma list of eager, compile, bf16, compile-bf16"
    )
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--threads", type=int, help="torch.set_num_threads (default: torch's choice)"
    )
    parser.add_argument(
        "--warmup", type=int, default=10, help="iterations left out of the throughput"
    )
    parser.add_argument(
        "--val-batches", type=int, default=200, help="batches for the final validation loss"
    )
    parser.add_argument(
        "--chunk", type=int, default=25, help="interleave the runs every N iterations"
    )
    parser.add_argument("--seed", type=int, help="override the config's seed (for a seed sweep)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = load_run_config(args.config)
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    iters = args.iters or cfg.train.max_steps
    d = cfg.data
    tokens_per_iter = d.batch_size * d.block_size * cfg.train.grad_accum_steps
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    peak = matmul_flops()
    print(f"measured fp32 matmul (2048^3): {peak / 1e9:.1f} GFLOP/s")

    run0 = build_run(
        dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, progress=False, max_steps=iters)
        )
    )
    fpt = flops_per_token(run0.model.config, run0.model)
    print(
        f"model: {run0.model.num_parameters():,} parameters, {fpt / 1e6:.2f} MFLOP per training token, {tokens_per_iter} tokens/iter, {iters} iters"
    )

    runners: list[Runner] = [] if args.skip_baseline else [Baseline(cfg, run0, iters)]
    del run0
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        runners.append(TrainerRun(cfg, variant, iters))
    # Interleave the runs in short chunks, so that a machine whose load changes over time
    # (shared CI runners, laptops) slows them all alike.
    chunk = args.chunk
    for target in range(chunk, iters + chunk, chunk):
        for r in runners:
            r.advance(min(target, iters))
        done = min(target, iters)
        if done % 250 and done < iters:
            continue
        print(
            f"  {done}/{iters} iterations: "
            + ", ".join(
                f"{r.name} {1000 * statistics.median(r.step_times[-250:]):.1f} ms/iter"
                for r in runners
            ),
            flush=True,
        )
    results = [r.result(args.val_batches) for r in runners]
    rows = [r.summary(tokens_per_iter, args.warmup, fpt, peak) for r in results]
    print()
    print(
        f"{'run':44s} {'ms/iter':>8s} {'tokens/s':>9s} {'peak RSS':>9s} {'val loss':>9s} {'matmul%':>8s} {'1st step':>9s}"
    )
    for r in rows:
        print(
            f"{r['name']:44s} {r['ms_per_iter_median']:8.1f} {r['tokens_per_s']:9.0f} {r['peak_rss_mb']:7.0f}MB "
            f"{r['val_loss_200_batches']:9.4f} {100 * r['matmul_share']:7.1f}% {r['first_step_s']:8.1f}s"
        )
    if rows and not args.skip_baseline:
        base = rows[0]["tokens_per_s"]
        for r in rows[1:]:
            print(
                f"{r['name']}: {r['tokens_per_s'] / base:.2f}x the plain loop, {r['tokens_per_s'] / NANOGPT_TOKENS_PER_S:.2f}x nanoGPT's published ~{NANOGPT_TOKENS_PER_S:,} tokens/s"
            )
    full = iters == 2000
    print(
        f"targets: val loss <= {TARGET_VAL_LOSS} at 2,000 iters; >= {TARGET_SPEEDUP}x nanoGPT's loop throughput"
        + ("" if full else f" (not judged: this run has {iters} iterations)")
    )
    if full:
        for r in rows:
            loss_ok = r["val_loss_200_batches"] <= TARGET_VAL_LOSS
            speed_ok = r["tokens_per_s"] >= TARGET_SPEEDUP * NANOGPT_TOKENS_PER_S
            print(
                f"  {r['name']}: loss {'met' if loss_ok else 'NOT met'}, "
                f"throughput {'met' if speed_ok else 'NOT met'}"
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "matmul_flops": peak,
                    "flops_per_token": fpt,
                    "tokens_per_iter": tokens_per_iter,
                    "threads": torch.get_num_threads(),
                    "results": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
