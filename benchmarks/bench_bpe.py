"""Benchmark byte-level BPE: training time and encode throughput against reference tokenizers.

Run from the repository root::

    python benchmarks/bench_bpe.py            # about 30 s on one core
    python benchmarks/bench_bpe.py --repeat 5 --json bpe.json

What it measures (same machine, same process, so compare the ratios):

1. Training a 1,000-token byte-level BPE on Tiny Shakespeare (1.1 MB): ``ByteLevelBPE.train``
   against Hugging Face ``tokenizers``' ``BpeTrainer`` (Rust) with the same pre-tokenizer.
   Both learn the same merges (checked).
2. Encoding all of Tiny Shakespeare with GPT-2's vocabulary, in MB/s of UTF-8 input:
   ``ByteLevelBPE`` with a cold cache (first pass) and a warm one (the per-pre-token cache is
   filled), its streaming file encoder, ``transformers.GPT2Tokenizer`` and ``tiktoken``.
   Every tokenizer must produce the same 338,025 ids (checked).

``transformers`` 5 no longer ships a pure-Python GPT-2 tokenizer: ``GPT2Tokenizer`` and
``GPT2TokenizerFast`` are the same Rust-backed class, so there is one ``transformers`` row.
Torch and tokenizer thread pools are pinned to ``--threads`` (default 1) for fair numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Best wall time of ``repeat`` runs (seconds) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


ROOT = Path(__file__).resolve().parents[1]


def data_file(name: str, filename: str) -> Path:
    """A data file through ``llmcourse.data.fetch`` (mirror, cache, then download).

    Without ``LLMCOURSE_DATA_MIRROR``, the development mirror ``../shared/data`` next to the
    repository is used when it exists (as the test suite does).
    """
    mirror = ROOT.parent / "shared" / "data"
    if "LLMCOURSE_DATA_MIRROR" not in os.environ and mirror.is_dir():
        os.environ["LLMCOURSE_DATA_MIRROR"] = str(mirror)
    try:
        from llmcourse.data import fetch
    except ImportError:  # checkouts without llmcourse.data: read the mirror folder directly
        return Path(os.environ.get("LLMCOURSE_DATA_MIRROR", str(mirror))) / filename
    return fetch(name)


def hf_gpt2(encoder_json: Path, vocab_bpe: Path):
    from transformers import GPT2Tokenizer

    vocab = json.loads(encoder_json.read_text(encoding="utf-8"))
    lines = vocab_bpe.read_text(encoding="utf-8").split("\n")[1:]
    return GPT2Tokenizer(vocab=vocab, merges=[tuple(line.split(" ")) for line in lines if line])


def tiktoken_gpt2(encoder_json: Path, vocab_bpe: Path, cache: Path):
    """tiktoken's gpt2 encoding offline (cache files are named by the sha1 of their URL)."""
    import tiktoken

    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    for src, name in ((encoder_json, "encoder.json"), (vocab_bpe, "vocab.bpe")):
        shutil.copy(src, cache / hashlib.sha1((base + name).encode()).hexdigest())
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    return tiktoken.get_encoding("gpt2")


def bench_training(text: str, path: Path, repeat: int) -> dict[str, Any]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from llmcourse.tokenizers import ByteLevelBPE
    from llmcourse.tokenizers.byte_level import token_bytes_to_str

    def ours():
        return ByteLevelBPE.train(path, 1000)

    def reference():
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=1000,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator([text], trainer)
        return tok

    t_ours, bpe = timed(ours, repeat)
    t_ref, hf = timed(reference, repeat)
    ref_merges = [
        tuple(m) if isinstance(m, list) else tuple(m.split(" "))
        for m in json.loads(hf.to_str())["model"]["merges"]
    ]
    our_merges = [(token_bytes_to_str(a), token_bytes_to_str(b)) for a, b in bpe.merges]
    return {
        "ours_s": t_ours,
        "hf_tokenizers_s": t_ref,
        "same_merges": our_merges == ref_merges,
        "merges": len(our_merges),
    }


def bench_encode(text: str, files: tuple[Path, Path], path: Path, repeat: int) -> dict[str, Any]:
    from llmcourse.tokenizers import ByteLevelBPE

    mb = len(text.encode("utf-8")) / 1e6
    rows: dict[str, dict[str, Any]] = {}

    def add(name: str, seconds: float, ids: list[int]) -> None:
        rows[name] = {"seconds": seconds, "MB_per_s": mb / seconds, "tokens": len(ids)}

    ours = ByteLevelBPE.from_gpt2_files(*files)
    t, ids = timed(lambda: ours.encode(text), 1)  # first pass: the cache starts empty
    add("llmcourse ByteLevelBPE (cold cache)", t, ids)
    reference_ids = ids
    t, ids = timed(lambda: ours.encode(text), repeat)
    add("llmcourse ByteLevelBPE (warm cache)", t, ids)
    fresh = ByteLevelBPE.from_gpt2_files(*files)
    t, ids = timed(
        lambda: [i for chunk in fresh.iter_encode_file(path, chunk_chars=1 << 16) for i in chunk], 1
    )
    add("llmcourse iter_encode_file (cold, 64k chunks)", t, ids)

    hf = hf_gpt2(*files)
    hf.encode("warm up")
    t, ids = timed(lambda: hf.encode(text), repeat)
    add("transformers GPT2Tokenizer (Rust backend)", t, ids)

    with tempfile.TemporaryDirectory() as cache:
        enc = tiktoken_gpt2(*files, Path(cache))
        t, ids = timed(lambda: enc.encode(text, allowed_special="all"), repeat)
        add("tiktoken gpt2", t, ids)

    agree = all(r["tokens"] == len(reference_ids) for r in rows.values())
    return {"input_MB": mb, "rows": rows, "same_token_counts": agree}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="best of N timings")
    parser.add_argument("--threads", type=int, default=1, help="thread count for Rust/torch pools")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "false" if args.threads == 1 else "true"

    path = data_file("tinyshakespeare", "tinyshakespeare.txt")
    files = (
        data_file("gpt2_encoder", "gpt2_encoder.json"),
        data_file("gpt2_vocab", "gpt2_vocab.bpe"),
    )
    text = path.read_text(encoding="utf-8")

    train = bench_training(text, path, args.repeat)
    encode = bench_encode(text, files, path, args.repeat)

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, threads={args.threads}"
    )
    print(
        f"\nTraining a 1,000-token BPE on Tiny Shakespeare ({encode['input_MB']:.2f} MB), best of {args.repeat}:"
    )
    print(f"  llmcourse ByteLevelBPE.train      {train['ours_s']:7.2f} s")
    print(f"  HF tokenizers BpeTrainer (Rust)   {train['hf_tokenizers_s']:7.2f} s")
    print(f"  same {train['merges']} merges in the same order: {train['same_merges']}")
    print("\nEncoding Tiny Shakespeare with GPT-2's vocabulary:")
    for name, row in encode["rows"].items():
        print(
            f"  {name:48s} {row['MB_per_s']:7.2f} MB/s  ({row['seconds']:.3f} s, {row['tokens']:,} tokens)"
        )
    print(f"  identical token counts: {encode['same_token_counts']}")
    if args.json:
        args.json.write_text(json.dumps({"train": train, "encode": encode}, indent=2))


if __name__ == "__main__":
    main()
