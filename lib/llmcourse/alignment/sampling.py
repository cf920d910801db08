"""Sample responses to text prompts, cut at a stop string, ready for scoring and training.

Used by best-of-n, rejection sampling and the PPO rollout. Prompts are taken as given (apply
the chat template first, e.g. with :func:`llmcourse.finetune.sft.format_example`). Prompts of
equal token length are generated together in one batch (the course GPT has no padding mask,
so prompts of different lengths cannot share a batch without changing their positions).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from llmcourse.finetune.sft import END, SFTBatch, SFTExample, collate_sft
from llmcourse.generation import generate

__all__ = ["Rollout", "sample_responses", "find_stop"]


@dataclass
class Rollout:
    """Prompts and sampled responses, as tokens and text (one entry per sample).

    ``response_tokens`` include the stop tokens when the stop sequence was produced
    (``finished``); ``responses`` are the decoded responses with the stop string removed.
    """

    prompts: list[str]
    prompt_tokens: list[list[int]]
    response_tokens: list[list[int]]
    responses: list[str]
    finished: list[bool]

    def __len__(self) -> int:
        return len(self.prompts)

    def full_texts(self, tokenizer) -> list[str]:
        """Prompt + response (stop string included) decoded, e.g. for a learned reward model."""
        return [
            tokenizer.decode(p + r)
            for p, r in zip(self.prompt_tokens, self.response_tokens, strict=True)
        ]

    def to_batch(self, pad_id: int = 0) -> SFTBatch:
        """Prompt + response as a right-padded batch whose targets are the response tokens."""
        examples = [
            SFTExample(p + r, [False] * len(p) + [True] * len(r))
            for p, r in zip(self.prompt_tokens, self.response_tokens, strict=True)
        ]
        return collate_sft(examples, pad_id)


def find_stop(tokens: Sequence[int], stop: Sequence[int]) -> int | None:
    """End index (exclusive) of the first occurrence of ``stop`` in ``tokens``, or None."""
    n = len(stop)
    for i in range(len(tokens) - n + 1):
        if list(tokens[i : i + n]) == list(stop):
            return i + n
    return None


@torch.no_grad()
def sample_responses(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    *,
    num_samples: int = 1,
    stop: str | None = END,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Sample ``num_samples`` responses per prompt with :func:`llmcourse.generation.generate`.

    A response ends after the first occurrence of ``stop`` (encoded with ``tokenizer``; the
    default is the chat template's ``<|end|>``) or after ``max_new_tokens`` tokens. Results
    are in prompt order, the samples of one prompt next to each other. ``generator`` must
    live on the model's device.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not prompts:
        raise ValueError("sample_responses: got no prompts")
    stop_ids = list(tokenizer.encode(stop)) if stop else None
    if stop is not None and not stop_ids:
        raise ValueError(f"stop string {stop!r} encodes to no tokens")
    block_size = getattr(getattr(model, "config", None), "block_size", None)
    device = next(model.parameters()).device
    encoded = [list(tokenizer.encode(p)) for p in prompts]
    for p, ids in zip(prompts, encoded, strict=True):
        if not ids:
            raise ValueError(f"prompt {p!r} encodes to no tokens")
        if block_size is not None and len(ids) + max_new_tokens > block_size:
            raise ValueError(
                f"prompt of {len(ids)} tokens + max_new_tokens={max_new_tokens} exceeds the "
                f"model's block_size={block_size}; shorten the prompt or generate fewer tokens"
            )

    by_length: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(encoded):
        by_length[len(ids)].append(i)
    generated: dict[int, list[list[int]]] = {}
    for length, members in by_length.items():
        rows = [encoded[i] for i in members for _ in range(num_samples)]
        idx = torch.tensor(rows, dtype=torch.long, device=device)
        out = generate(
            model,
            idx,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            stop_sequences=[stop_ids] if stop_ids else None,
            generator=generator,
        )[:, length:].tolist()
        for j, i in enumerate(members):
            generated[i] = out[j * num_samples : (j + 1) * num_samples]

    rollout = Rollout([], [], [], [], [])
    for i, prompt in enumerate(prompts):
        for tokens in generated[i]:
            end = find_stop(tokens, stop_ids) if stop_ids else None
            response = tokens if end is None else tokens[:end]
            body = response if end is None else response[: -len(stop_ids)]
            rollout.prompts.append(prompt)
            rollout.prompt_tokens.append(encoded[i])
            rollout.response_tokens.append(response)
            rollout.responses.append(tokenizer.decode(body))
            rollout.finished.append(end is not None)
    return rollout
