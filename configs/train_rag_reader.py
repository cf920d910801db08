"""Fine-tune the course's character GPT into the *reader* of chapter 10 (retrieval-augmented generation).

The reader answers questions about invented creatures (``llmcourse.datasets.fact_cards``) by
reading the fact cards placed in its prompt::

    The zorblat eats figs. The zorblat is teal.
    Q: What colour is the zorblat?
    A: teal

Starting from ``gpt-shakespeare-char`` (chapter 07), it is fine-tuned with the course library:
prompt-masked SFT batches (``llmcourse.finetune.tokenize_prompt_response`` / ``collate_sft``:
only the answer is supervised), optionally LoRA adapters merged back into the weights
(``apply_lora`` / ``unload_lora``), and the course ``Trainer`` (AdamW, warm-up + cosine,
clipping, NaN checks). Most training prompts hold the answering card plus a distractor card
(usually another fact about the same creature) and a tenth hold no card, so the model learns to
pick the card that matches the question; the creatures of the training world never appear in
the chapter's test world.

Reproduce the published checkpoint (1,200 steps of 32 examples, learning rate 1e-3, from the
final ``gpt-shakespeare-char``: about 2.5 minutes on an idle 2-core CPU; 2e-3 overshoots and
ends at a validation loss of 1.02 instead of 0.16) and record it::

    python configs/train_rag_reader.py --out checkpoints/gpt-shakespeare-char-reader
    llmcourse publish --checkpoint checkpoints/gpt-shakespeare-char-reader

The chapter loads it with ``llmcourse.hub.load_pretrained("gpt-shakespeare-char-reader")``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from llmcourse.datasets import (
    fact_cards,
    fact_questions,
    reader_example,
    reader_prompt,
    reader_worlds,
)
from llmcourse.finetune import apply_lora, collate_sft, tokenize_prompt_response, unload_lora
from llmcourse.generation import generate
from llmcourse.hub import load_from_directory, load_pretrained
from llmcourse.optim import AdamW, WarmupCosine
from llmcourse.train import Trainer, TrainerConfig
from llmcourse.train.checkpoint import save_checkpoint
from llmcourse.utils import set_seed


class ReaderBatches:
    """Fresh SFT batches ``(input_ids, targets)`` of reader examples; ``state_dict`` rewinds."""

    def __init__(self, creatures: Sequence, tokenizer, batch_size: int, seed: int) -> None:
        self.creatures, self.tokenizer, self.batch_size = list(creatures), tokenizer, batch_size
        self.seed, self.drawn = seed, 0
        self.rng = random.Random(seed)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        examples = [
            tokenize_prompt_response(*reader_example(self.creatures, self.rng), self.tokenizer)
            for _ in range(self.batch_size)
        ]
        self.drawn += 1
        batch = collate_sft(examples)
        return batch.input_ids, batch.targets

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "drawn": self.drawn}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.drawn = state["seed"], 0
        self.rng = random.Random(self.seed)
        for _ in range(state["drawn"]):
            self()


@torch.no_grad()
def answer(model: torch.nn.Module, tokenizer, prompt: str, max_new_tokens: int = 12) -> str:
    """The model's greedy answer to ``prompt`` (up to the first newline)."""
    device = next(model.parameters()).device
    ids = torch.tensor([tokenizer.encode(prompt)], device=device)
    stop = tokenizer.encode("\n")
    out = generate(model, ids, max_new_tokens, temperature=0.0, stop_sequences=[stop])
    return tokenizer.decode(out[0, ids.shape[1] :].tolist()).split("\n")[0]


def reader_accuracy(model: torch.nn.Module, tokenizer, creatures: Sequence, seed: int = 0) -> dict:
    """Exact-match accuracy on every question about ``creatures``: no card, the answering card,
    and the answering card with another card of the same creature (shuffled)."""
    rng = random.Random(seed)
    cards = fact_cards(creatures)
    by_key = {(c.creature, c.relation): c.text for c in cards}
    hits = {"closed_book": 0, "oracle": 0, "oracle_plus_distractor": 0}
    qs = fact_questions(creatures)
    for q in qs:
        gold = by_key[(q.creature, q.relation)]
        other = rng.choice(
            [t for (i, r), t in by_key.items() if i == q.creature and r != q.relation]
        )
        pair = [gold, other]
        rng.shuffle(pair)
        for name, context in (
            ("closed_book", []),
            ("oracle", [gold]),
            ("oracle_plus_distractor", pair),
        ):
            hits[name] += answer(model, tokenizer, reader_prompt(context, q.question)) == q.answer
    return {name: h / len(qs) for name, h in hits.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument(
        "--base", default="gpt-shakespeare-char", help="pretrained name or directory"
    )
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lora-rank", type=int, default=0, help="0: full fine-tuning")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    set_seed(args.seed)
    base = Path(args.base)
    if base.is_dir():
        model, tokenizer = load_from_directory(base, device=args.device)
    else:
        model, tokenizer = load_pretrained(args.base, device=args.device)
    model.train()
    train_world, val_world, test_world = reader_worlds()
    if args.lora_rank:
        apply_lora(
            model, ["qkv", "out", "fc1", "fc2"], r=args.lora_rank, alpha=2.0 * args.lora_rank
        )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    schedule = WarmupCosine(
        max_lr=args.lr, decay_steps=args.steps, warmup_steps=50, min_lr=0.1 * args.lr
    )
    config = TrainerConfig(
        max_steps=args.steps,
        grad_clip=1.0,
        eval_interval=max(1, args.steps // 10),
        eval_batches=4,
        device=args.device,
        progress=sys.stderr.isatty(),
    )
    trainer = Trainer(
        model,
        optimizer,
        ReaderBatches(train_world, tokenizer, args.batch_size, args.seed),
        ReaderBatches(val_world, tokenizer, args.batch_size, args.seed + 1),
        config=config,
        schedule=schedule,
        tokenizer=tokenizer,
    )
    start = time.time()
    history = trainer.fit()
    minutes = (time.time() - start) / 60
    if args.lora_rank:
        unload_lora(model)  # fold B @ A into the weights: a plain GPT again
    model.eval()
    accuracy = reader_accuracy(model, tokenizer, test_world)
    print(json.dumps({"minutes": round(minutes, 1), **accuracy}))
    command = "python configs/train_rag_reader.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    save_checkpoint(
        args.out,
        model,
        None,
        step=trainer.step,
        tokenizer=tokenizer,
        config={
            "command": command,
            "base": args.base,
            **{k: v for k, v in vars(args).items() if k not in ("out", "base")},
        },
        metrics={**trainer.metrics, **{f"test_accuracy_{k}": v for k, v in accuracy.items()}},
        extra={"history": history.to_dict(), "train_minutes": minutes},
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
