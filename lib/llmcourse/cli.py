"""The ``llmcourse`` command: train a model from a config file, sample from a checkpoint.

    llmcourse train --config configs/gpt_shakespeare_char.toml [--out DIR] [--max-iters N] [--resume]
    llmcourse sample --checkpoint DIR_OR_NAME --prompt "ROMEO:" --max-new-tokens 200 \\
        --temperature 0.8 --top-k 40
    llmcourse publish --checkpoint checkpoints/gpt-shakespeare-char   # update the manifest

Data-parallel training: ``torchrun --nproc_per_node 2 -m llmcourse.cli train --config ...``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``llmcourse`` command."""
    parser = argparse.ArgumentParser(prog="llmcourse", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a GPT from a TOML config file")
    t.add_argument("--config", required=True, type=Path, help="TOML run file (see configs/)")
    t.add_argument("--out", type=Path, help="checkpoint directory (default: the config's out_dir)")
    t.add_argument("--max-iters", type=int, help="override [train] max_steps")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    t.add_argument("--device", help="override [train] device (auto, cpu, cuda)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")

    s = sub.add_parser("sample", help="generate text from a checkpoint")
    s.add_argument("--checkpoint", required=True, help="checkpoint directory or a pretrained name")
    s.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    s.add_argument("--max-new-tokens", type=int, default=200)
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--num-samples", type=int, default=1)
    s.add_argument("--seed", type=int, default=1337)
    s.add_argument("--device", default="cpu")

    p = sub.add_parser("publish", help="record a checkpoint in checkpoints/manifest.json")
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory")
    p.add_argument("--name", help="manifest name (default: the directory name)")
    p.add_argument("--manifest", type=Path, help="manifest file (default: next to the checkpoint)")
    return parser


def _out_dir(args: argparse.Namespace, config_path: Path) -> Path:
    if args.out is not None:
        return args.out
    return Path("runs") / config_path.stem


def _train(args: argparse.Namespace) -> int:
    import dataclasses

    from llmcourse.train.checkpoint import read_checkpoint_meta
    from llmcourse.train.distributed import cleanup_distributed, init_distributed
    from llmcourse.train.run import build_run, load_run_config

    cfg = load_run_config(args.config)
    overrides = {}
    if args.max_iters is not None:
        overrides["max_steps"] = args.max_iters
    if args.device is not None:
        overrides["device"] = args.device
    if args.no_progress:
        overrides["progress"] = False
    out = _out_dir(args, args.config)
    overrides["checkpoint_dir"] = str(out)
    cfg.train = dataclasses.replace(cfg.train, **overrides)

    has_checkpoint = (out / "checkpoint.json").is_file()
    if args.resume and not has_checkpoint:
        print(f"llmcourse train: --resume given but {out} holds no checkpoint", file=sys.stderr)
        return 2
    if has_checkpoint and not args.resume:
        step = read_checkpoint_meta(out)["step"]
        print(
            f"llmcourse train: {out} already holds a checkpoint (step {step}); pass --resume to "
            "continue it, or choose another --out",
            file=sys.stderr,
        )
        return 2

    info = init_distributed(cfg.train.device)
    try:
        command = "llmcourse " + " ".join(shlex.quote(a) for a in args.argv)
        run = build_run(
            cfg, dist=info, extra_config={"command": command, "world_size": info.world_size}
        )
        trainer = run.trainer
        if args.resume:
            trainer.resume(out)
        if info.is_main:
            n = run.model.num_parameters() if hasattr(run.model, "num_parameters") else None
            print(
                f"training {n:,} parameters on {trainer.device} x{info.world_size}, "
                f"steps {trainer.step} -> {cfg.train.max_steps}, checkpoints in {out}",
                flush=True,
            )
        trainer.fit()
        if info.is_main:
            print(json.dumps({"step": trainer.step, **trainer.metrics}), flush=True)
    finally:
        cleanup_distributed()
    return 0


def _sample(args: argparse.Namespace) -> int:
    import torch

    from llmcourse.generation import generate
    from llmcourse.hub import load_from_directory, load_pretrained

    path = Path(args.checkpoint)
    if path.is_dir():
        model, tokenizer = load_from_directory(path, device=args.device)
    else:
        model, tokenizer = load_pretrained(args.checkpoint, device=args.device)
    if tokenizer is None:
        print(f"llmcourse sample: {args.checkpoint} has no tokenizer", file=sys.stderr)
        return 2
    prompt_ids = tokenizer.encode(args.prompt)
    if not prompt_ids:
        print("llmcourse sample: the prompt encodes to no tokens", file=sys.stderr)
        return 2
    device = next(model.parameters()).device
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    for i in range(args.num_samples):
        out = generate(
            model,
            idx,
            args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            generator=gen,
        )
        if i:
            print("-" * 40)
        print(tokenizer.decode(out[0].tolist()), flush=True)
    return 0


def _publish(args: argparse.Namespace) -> int:
    from llmcourse.train.checkpoint import (
        META_FILE,
        MODEL_FILE,
        TOKENIZER_FILE,
        read_checkpoint_meta,
    )

    directory = args.checkpoint
    meta = read_checkpoint_meta(directory)
    name = args.name or directory.name
    manifest_path = args.manifest or directory.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    from llmcourse.data.download import sha256_file

    files = {}
    for fname in (MODEL_FILE, META_FILE, TOKENIZER_FILE):
        path = directory / fname
        if path.is_file():
            files[fname] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    if MODEL_FILE not in files:
        print(f"llmcourse publish: {directory} has no {MODEL_FILE}", file=sys.stderr)
        return 2
    history = meta.get("extra", {}).get("history", {})
    evals = history.get("eval_loss", {})
    manifest[name] = {
        "path": directory.name,
        "files": files,
        "step": meta["step"],
        "model_class": meta["model_class"],
        "model_config": meta["model_config"],
        "config": {k: v for k, v in meta["config"].items() if k != "command"},
        "command": meta["config"].get("command"),
        "final_train_loss": evals.get("train", [None])[-1],
        "final_val_loss": evals.get("val", [None])[-1],
        "torch_version": meta.get("torch_version"),
        "created": meta.get("created"),
    }
    manifest_path.write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    print(f"recorded {name} in {manifest_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmcourse`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    handlers = {"train": _train, "sample": _sample, "publish": _publish}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
