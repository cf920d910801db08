"""The model interface that prompting and agent code talks to.

A :class:`ChatModel` has one method, ``complete(prompt, stop=None) -> str``: the text the
model writes after ``prompt``, cut before the first stop sequence. Two implementations:

* :class:`CallableChatModel` wraps any function ``str -> str`` (a scripted fake for tests,
  an HTTP client, a Hugging Face pipeline); :func:`as_chat_model` does the wrapping.
* :class:`GPTChatModel` runs the course's own GPT (:mod:`llmcourse.models.gpt`) with
  :func:`llmcourse.generation.generate` and a course tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["ChatModel", "CallableChatModel", "GPTChatModel", "as_chat_model", "truncate_at_stop"]


@runtime_checkable
class ChatModel(Protocol):
    """A text-completion model: ``complete(prompt, stop=None) -> continuation``."""

    def complete(self, prompt: str, *, stop: Sequence[str] | None = None) -> str: ...


def truncate_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop sequence."""
    if not stop:
        return text
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]


class CallableChatModel:
    """Wrap ``fn(prompt) -> str`` as a :class:`ChatModel`; stop sequences are applied to its output.

    Also counts calls (``n_calls``), handy for measuring how many model calls an agent made.
    """

    def __init__(self, fn: Callable[[str], str]) -> None:
        if not callable(fn):
            raise TypeError(f"expected a callable str -> str, got {type(fn).__name__}")
        self.fn = fn
        self.n_calls = 0

    def complete(self, prompt: str, *, stop: Sequence[str] | None = None) -> str:
        self.n_calls += 1
        out = self.fn(prompt)
        if not isinstance(out, str):
            raise TypeError(f"the wrapped model returned {type(out).__name__}, expected str")
        return truncate_at_stop(out, stop)


def as_chat_model(model: ChatModel | Callable[[str], str]) -> ChatModel:
    """Return ``model`` if it already has ``complete``, else wrap a callable."""
    if isinstance(model, ChatModel):
        return model
    if callable(model):
        return CallableChatModel(model)
    raise TypeError(f"expected a ChatModel or a callable str -> str, got {type(model).__name__}")


class GPTChatModel:
    """The course GPT as a :class:`ChatModel`.

    Args:
        model: a ``llmcourse.models.gpt.GPT`` (any module accepted by ``generate``).
        tokenizer: with ``encode(str) -> list[int]`` and ``decode(list[int]) -> str``.
        max_new_tokens: most tokens written per call.
        temperature, top_k, top_p: sampling settings passed to ``generate``
            (``temperature=0``: greedy decoding).
        seed: seeds a private ``torch.Generator`` so sampled runs are reproducible.
        prompt_format: optional function applied to the prompt first (e.g. a chat template).
        check_every: generation runs in pieces of this many tokens, stopping early once a
            stop sequence appears in the decoded text (robust for any tokenizer, unlike
            token-level stop ids; each piece re-reads the prompt, a small cost for short outputs).
        generate_fn: the decoding function (default :func:`llmcourse.generation.generate`).

    Prompts longer than the context window keep their last ``block_size - max_new_tokens``
    tokens.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        prompt_format: Callable[[str], str] | None = None,
        check_every: int = 32,
        generate_fn: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        if generate_fn is None:
            try:
                from ..generation import generate as generate_fn
            except ImportError as err:  # pragma: no cover - depends on the generation module
                raise ImportError(
                    f"GPTChatModel needs llmcourse.generation.generate, which could not be imported: {err}"
                ) from err
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.model, self.tokenizer, self.generate = model, tokenizer, generate_fn
        self.max_new_tokens, self.temperature = int(max_new_tokens), float(temperature)
        self.top_k, self.top_p = top_k, top_p
        self.prompt_format, self.check_every = prompt_format, max(1, int(check_every))
        config = getattr(model, "config", None)
        self.block_size: int | None = getattr(config, "block_size", None)
        if self.block_size is not None and self.max_new_tokens >= self.block_size:
            raise ValueError(
                f"max_new_tokens ({self.max_new_tokens}) must be smaller than the model's block_size ({self.block_size})"
            )
        self.generator: torch.Generator | None = None
        self.device = next(model.parameters()).device
        if seed is not None:
            self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def _sampling_kwargs(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "generator": self.generator,
        }

    @torch.no_grad()
    def complete(self, prompt: str, *, stop: Sequence[str] | None = None) -> str:
        text = self.prompt_format(prompt) if self.prompt_format else prompt
        ids = list(self.tokenizer.encode(text))
        if not ids:
            raise ValueError("the prompt encodes to zero tokens; the model needs at least one")
        if self.block_size is not None:
            ids = ids[-(self.block_size - self.max_new_tokens) :]
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)  # (1, T)
        was_training = self.model.training
        self.model.eval()
        new: list[int] = []
        try:
            while len(new) < self.max_new_tokens:
                step = min(self.check_every, self.max_new_tokens - len(new))
                out = self.generate(
                    self.model, idx, step, **self._sampling_kwargs()
                )  # (1, T + step)
                fresh = out[0, idx.shape[1] :].tolist()
                if not fresh:  # the generator stopped by itself (e.g. an end-of-text token)
                    break
                new.extend(fresh)
                idx = out
                if stop and truncate_at_stop(
                    self.tokenizer.decode(new), stop
                ) != self.tokenizer.decode(new):
                    break
        finally:
            self.model.train(was_training)
        return truncate_at_stop(self.tokenizer.decode(new), stop)
