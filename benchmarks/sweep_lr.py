"""Choose the peak learning rate for a training config without looking at its validation split.

The last stretch of the training tokens (as many tokens as the validation split holds) is set
aside as a *dev* split. Each learning rate in the grid trains on the rest, for the config's full
number of steps and with ``min_lr = lr * --min-lr-ratio``, once per seed, and is scored by its
mean loss on fixed dev batches (``--dev-batches``, 200 by default). The validation split is
never read, so the loss that ``bench_train_gpt.py`` later reports on it is an unbiased estimate
for the chosen rate.

This is how ``configs/nanogpt_cpu_bench_tuned.toml`` got its learning rate:

    python benchmarks/sweep_lr.py                     # grid 1e-3 .. 6e-3, seeds 101 and 102
    python benchmarks/sweep_lr.py --lrs 2e-3,4e-3 --seeds 7 --iters 500   # a quick look

Each run of nanoGPT's CPU configuration takes 70-100 s on a 2-core machine (12 runs: 15-20 min).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

from bench_train_gpt import fixed_val_loss

from llmcourse.data import RandomBatches
from llmcourse.train.run import build_run, load_run_config

ROOT = Path(__file__).resolve().parents[1]


def dev_loss(
    cfg, lr: float, min_lr_ratio: float, seed: int, iters: int, dev_batches: int = 200
) -> float:
    """Train ``cfg`` at peak ``lr`` on the training tokens minus the dev tail; return dev loss."""
    o, t, d = cfg.optim, cfg.train, cfg.data
    cfg = dataclasses.replace(
        cfg,
        seed=seed,
        optim=dataclasses.replace(o, lr=lr, min_lr=lr * min_lr_ratio),
        train=dataclasses.replace(
            t, max_steps=iters, progress=False, log=False, checkpoint_dir=None
        ),
    )
    run = build_run(cfg)
    n_dev = len(run.val_tokens)
    if n_dev * 2 >= len(run.train_tokens):
        raise ValueError(
            f"the training split ({len(run.train_tokens)} tokens) is too small to set aside a "
            f"dev split of {n_dev} tokens; lower the config's val_fraction"
        )
    train, dev = run.train_tokens[:-n_dev], run.train_tokens[-n_dev:]
    trainer = run.trainer
    trainer.train_batches = RandomBatches(train, d.block_size, d.batch_size, seed=seed + 1)
    trainer.eval_sources = {"dev": RandomBatches(dev, d.block_size, d.batch_size, seed=seed)}
    trainer.fit(max_steps=iters)
    return fixed_val_loss(run.model, dev, d.block_size, d.batch_size, dev_batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "nanogpt_cpu_bench.toml")
    parser.add_argument("--lrs", default="1e-3,2e-3,3e-3,4e-3,5e-3,6e-3", help="comma list")
    parser.add_argument("--seeds", default="101,102", help="comma list (not the reporting seeds)")
    parser.add_argument("--min-lr-ratio", type=float, default=0.1, help="min_lr = lr * this")
    parser.add_argument("--iters", type=int, help="training steps (default: the config's)")
    parser.add_argument("--dev-batches", type=int, default=200, help="batches for the dev loss")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()

    cfg = load_run_config(args.config)
    lrs = [float(x) for x in args.lrs.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    iters = args.iters or cfg.train.max_steps
    print(f"{args.config.name}: {iters} steps, seeds {seeds}, dev = tail of the training split")
    results: dict[float, list[float]] = {}
    for lr in lrs:
        for seed in seeds:
            t0 = time.perf_counter()
            loss = dev_loss(cfg, lr, args.min_lr_ratio, seed, iters, args.dev_batches)
            results.setdefault(lr, []).append(loss)
            print(
                f"  lr {lr:g} seed {seed}: dev loss {loss:.4f} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    means = {lr: statistics.fmean(losses) for lr, losses in results.items()}
    print(f"\n{'lr':>8s} {'mean dev loss':>14s}")
    for lr, mean in means.items():
        print(f"{lr:8g} {mean:14.4f}")
    best = min(means, key=means.get)
    print(f"selected lr {best:g} (min_lr {best * args.min_lr_ratio:g})")
    if args.json:
        args.json.write_text(
            json.dumps({"config": str(args.config), "iters": iters, "dev_loss": results}, indent=2)
        )


if __name__ == "__main__":
    main()
