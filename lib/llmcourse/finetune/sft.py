"""Supervised fine-tuning (instruction tuning) data: a chat template and prompt-masked batches.

Chat template
-------------
Every message becomes one *turn*::

    <|{role}|>\\n{content}<|end|>\\n

with ``role`` in ``system``, ``user``, ``assistant``. A conversation is its turns joined,
and a generation prompt ends with the assistant header ``<|assistant|>\\n``; the model then
writes the answer and ``<|end|>`` (use it as the stop sequence). Example::

    <|user|>
    What is 2+2?<|end|>
    <|assistant|>
    4<|end|>

Only printable ASCII markers are used, so the template works with a character-level ASCII
tokenizer as well as with BPE (where the markers are just a few ordinary tokens).

Loss masking
------------
The model should learn to *answer*, not to reproduce prompts. Tokens of the assistant's
content and its ``<|end|>\\n`` are *supervised*; all other tokens (system and user turns, the
assistant header) and the padding get target ``-100`` (:data:`IGNORE_INDEX`), which the
cross-entropy skips. Batches follow the next-token convention of
:class:`llmcourse.models.gpt.GPT`: ``input_ids = tokens[:-1]``, ``targets = tokens[1:]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

__all__ = [
    "IGNORE_INDEX",
    "ROLES",
    "END",
    "role_header",
    "render_turn",
    "render_chat",
    "format_example",
    "SFTExample",
    "tokenize_chat",
    "tokenize_prompt_response",
    "SFTBatch",
    "collate_sft",
    "build_sft_batch",
]

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")
END = "<|end|>"
Message = Mapping[str, str]  # {"role": ..., "content": ...}


class TextEncoder(Protocol):
    """Anything with ``encode(text) -> list[int]`` (the course's tokenizer protocol)."""

    def encode(self, text: str) -> list[int]: ...


def role_header(role: str) -> str:
    """``"<|role|>\\n"``; raises for roles outside :data:`ROLES`."""
    if role not in ROLES:
        raise ValueError(f"unknown chat role {role!r}; expected one of {ROLES}")
    return f"<|{role}|>\n"


def _check_content(content: str, role: str) -> None:
    if not isinstance(content, str):
        raise TypeError(f"{role} content must be a str, got {type(content).__name__}")
    for marker in (END, *(f"<|{r}|>" for r in ROLES)):
        if marker in content:
            raise ValueError(
                f"{role} content contains the template marker {marker!r}; remove it (a marker "
                "inside content would let text pose as another turn)"
            )


def render_turn(role: str, content: str) -> str:
    """One turn: ``<|role|>\\n{content}<|end|>\\n``."""
    _check_content(content, role)
    return f"{role_header(role)}{content}{END}\n"


def _segments(messages: Sequence[Message]) -> list[tuple[str, bool]]:
    """Split a conversation into (text, supervised) pieces; their concatenation is the chat."""
    if not messages:
        raise ValueError("a conversation needs at least one message")
    pieces: list[tuple[str, bool]] = []
    for i, msg in enumerate(messages):
        if set(msg) != {"role", "content"}:
            raise ValueError(f"message {i}: expected keys {{'role', 'content'}}, got {sorted(msg)}")
        role, content = msg["role"], msg["content"]
        if role == "system" and i != 0:
            raise ValueError(f"message {i}: a system message may only come first")
        turn = render_turn(role, content)
        if role == "assistant":
            header = role_header(role)
            pieces += [(header, False), (turn[len(header) :], True)]
        else:
            pieces.append((turn, False))
    return pieces


def render_chat(messages: Sequence[Message], *, add_generation_prompt: bool = False) -> str:
    """The whole conversation as text; ``add_generation_prompt`` appends ``<|assistant|>\\n``."""
    text = "".join(t for t, _ in _segments(messages))
    return text + role_header("assistant") if add_generation_prompt else text


def format_example(prompt: str, response: str, system: str | None = None) -> tuple[str, str]:
    """A single-turn instruction example as ``(prompt_text, response_text)``.

    ``prompt_text`` ends with the assistant header, ``response_text`` is the answer plus
    ``<|end|>\\n``; their concatenation equals ``render_chat`` of the same messages.
    """
    msgs = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": prompt}
    ]
    _check_content(response, "assistant")
    return render_chat(msgs, add_generation_prompt=True), f"{response}{END}\n"


@dataclass(frozen=True)
class SFTExample:
    """A tokenized conversation: ``tokens`` and, per token, whether it is supervised."""

    tokens: list[int]
    supervised: list[bool]

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.supervised):
            raise ValueError(
                f"SFTExample: {len(self.tokens)} tokens but {len(self.supervised)} mask entries"
            )


def _tokenize_segments(
    segments: Iterable[tuple[str, bool]], tokenizer: TextEncoder, max_length: int | None
) -> SFTExample:
    tokens: list[int] = []
    supervised: list[bool] = []
    for text, sup in segments:
        ids = list(tokenizer.encode(text))
        tokens += ids
        supervised += [sup] * len(ids)
    if max_length is not None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        tokens, supervised = tokens[: max_length + 1], supervised[: max_length + 1]
    if not any(supervised[1:]):
        raise ValueError(
            f"example has no supervised (response) tokens after tokenization/truncation "
            f"({len(tokens)} tokens, max_length={max_length}); raise max_length or shorten the prompt"
        )
    return SFTExample(tokens, supervised)


def tokenize_chat(
    messages: Sequence[Message], tokenizer: TextEncoder, max_length: int | None = None
) -> SFTExample:
    """Tokenize a conversation; assistant contents (with ``<|end|>\\n``) are supervised.

    ``max_length`` bounds the model input length (``len(tokens) - 1``); longer examples are
    cut at the end. Each piece is encoded separately, so with BPE the tokens at a piece
    boundary may differ from encoding the whole text at once (it is exact for characters).
    """
    return _tokenize_segments(_segments(messages), tokenizer, max_length)


def tokenize_prompt_response(
    prompt_text: str, response_text: str, tokenizer: TextEncoder, max_length: int | None = None
) -> SFTExample:
    """Tokenize already formatted text (e.g. from :func:`format_example`); response supervised."""
    return _tokenize_segments([(prompt_text, False), (response_text, True)], tokenizer, max_length)


@dataclass
class SFTBatch:
    """A right-padded batch for next-token training.

    ``input_ids`` (B, T) long; ``targets`` (B, T) long with ``-100`` on prompt tokens and
    padding; ``attention_mask`` (B, T) bool, True on real (non-padding) input tokens.
    """

    input_ids: Tensor
    targets: Tensor
    attention_mask: Tensor

    @property
    def loss_mask(self) -> Tensor:
        """(B, T) bool: positions whose target counts in the loss."""
        return self.targets != IGNORE_INDEX

    def to(self, device: torch.device | str) -> SFTBatch:
        return SFTBatch(
            self.input_ids.to(device), self.targets.to(device), self.attention_mask.to(device)
        )

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def collate_sft(examples: Sequence[SFTExample], pad_id: int = 0) -> SFTBatch:
    """Shift, mask and right-pad examples into an :class:`SFTBatch`.

    ``input_ids[b, t] = tokens[t]``, ``targets[b, t] = tokens[t + 1]`` if that token is
    supervised, else ``-100``. Padding goes on the right, where a causal model's real
    positions never see it.
    """
    if not examples:
        raise ValueError("collate_sft: got an empty list of examples")
    for i, ex in enumerate(examples):
        if len(ex.tokens) < 2:
            raise ValueError(f"example {i} has {len(ex.tokens)} token(s); need at least 2")
    width = max(len(ex.tokens) for ex in examples) - 1
    b = len(examples)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    targets = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.bool)
    for i, ex in enumerate(examples):
        tok = torch.tensor(ex.tokens, dtype=torch.long)
        sup = torch.tensor(ex.supervised, dtype=torch.bool)
        n = tok.numel() - 1
        input_ids[i, :n] = tok[:-1]
        targets[i, :n] = torch.where(sup[1:], tok[1:], torch.full_like(tok[1:], IGNORE_INDEX))
        attention[i, :n] = True
    return SFTBatch(input_ids, targets, attention)


def build_sft_batch(
    pairs: Sequence[tuple[str, str]],
    tokenizer: TextEncoder,
    *,
    system: str | None = None,
    max_length: int | None = None,
    pad_id: int = 0,
) -> SFTBatch:
    """Template, tokenize and collate ``(prompt, response)`` pairs in one call."""
    examples = [
        tokenize_prompt_response(*format_example(p, r, system), tokenizer, max_length)
        for p, r in pairs
    ]
    return collate_sft(examples, pad_id)
