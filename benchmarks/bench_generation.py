"""Benchmark: KV-cache generation against uncached generation (256 new tokens).

Without a cache every new token re-runs the model over the whole context (O(T^2) work for T
tokens in total); with it each step feeds one token and attends to the stored keys and values
(O(T)). Both must produce the same tokens, which this script checks before timing them.

    python benchmarks/bench_generation.py                        # course base model if present
    python benchmarks/bench_generation.py --new-tokens 256 --batch-size 8 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from llmcourse.generation import generate
from llmcourse.utils import resolve_device

ROOT = Path(__file__).resolve().parents[1]


def load_model(name: str, device: torch.device) -> tuple[torch.nn.Module, str]:
    """The trained base model when available, else a randomly initialised one of its shape."""
    from llmcourse.hub import load_from_directory, load_pretrained

    try:
        if Path(name).is_dir():
            return load_from_directory(name, device)[0], f"checkpoint {name}"
        return load_pretrained(name, device=device)[0], f"pretrained {name!r}"
    except Exception as err:  # no checkpoint here: the speed-up does not depend on the weights
        from llmcourse.models.gpt import GPT, GPTConfig
        from llmcourse.train.run import build_tokenizer, load_run_config

        cfg = load_run_config(ROOT / "configs" / "gpt_shakespeare_char.toml")
        vocab = build_tokenizer(cfg.data.tokenizer).vocab_size
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=vocab, block_size=cfg.data.block_size, **cfg.model))
        return model.to(
            device
        ).eval(), f"random weights, base-model shape ({type(err).__name__}: {err})"


def timed(fn, repeats: int, device: torch.device) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="gpt-shakespeare-char", help="pretrained name or checkpoint dir"
    )
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, source = load_model(args.model, device)
    block = model.config.block_size
    print(
        f"model: {source}; {model.num_parameters():,} parameters, block_size {block}, device {device}, {torch.get_num_threads()} threads"
    )
    if args.prompt_len + args.new_tokens - 1 > block:
        print(
            f"note: prompt + new tokens exceed block_size {block}; past it the window slides and the cache is rebuilt every step"
        )
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(
        0, model.config.vocab_size, (args.batch_size, args.prompt_len), generator=g
    ).to(device)

    def run(cache: bool) -> torch.Tensor:
        return generate(model, prompt, args.new_tokens, temperature=0.0, use_kv_cache=cache)

    t_cache, with_cache = timed(lambda: run(True), args.repeats, device)
    t_plain, without = timed(lambda: run(False), args.repeats, device)
    same = torch.equal(with_cache, without)
    n = args.new_tokens * args.batch_size
    print(f"uncached: {t_plain * 1000:8.1f} ms  ({n / t_plain:8.0f} tokens/s)")
    print(f"KV cache: {t_cache * 1000:8.1f} ms  ({n / t_cache:8.0f} tokens/s)")
    print(
        f"speed-up at {args.new_tokens} new tokens (batch {args.batch_size}): {t_plain / t_cache:.2f}x; identical tokens: {same}"
    )
    if not same:
        raise SystemExit("KV-cache and uncached generation disagree")


if __name__ == "__main__":
    main()
