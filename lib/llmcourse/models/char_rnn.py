"""Character-level recurrent language model: embedding -> RNN / LSTM / GRU -> linear.

    model = CharRNN(tok.vocab_size, cell="lstm")
    logits, state = model(idx)                      # idx (B, T) -> logits (B, T, V)
    loss, state = model.loss(idx, targets, state)   # carry ``detach_state(state)`` for TBPTT
    text = model.sample(tok, "ROMEO:", 200, temperature=0.8)

``tok`` is any tokenizer with ``encode(str) -> list[int]`` and ``decode(list[int]) -> str``
(e.g. :class:`llmcourse.tokenizers.CharTokenizer`).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from llmcourse import kernels
from llmcourse.recurrent.layers import State, layer_class
from llmcourse.utils import ShapeError, check_dtype

__all__ = ["CharRNN", "TextTokenizer"]


class TextTokenizer(Protocol):
    """What :meth:`CharRNN.sample` needs from a tokenizer."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class CharRNN(nn.Module):
    """Recurrent LM over token ids (one id per character with a char tokenizer).

    Args: vocab_size V, embed_dim E, hidden_size H, num_layers L, cell "rnn" | "gru" | "lstm",
    dropout (on the embeddings, between layers and before the output layer).
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 64,
        hidden_size: int = 256,
        num_layers: int = 2,
        cell: str = "lstm",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
        self.vocab_size = vocab_size
        self.cell = cell
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.rnn = layer_class(cell)(
            embed_dim, hidden_size, num_layers, batch_first=True, dropout=dropout
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, idx: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """idx (B, T) long, state from a previous call or None -> (logits (B, T, V), state)."""
        check_dtype(idx, (torch.int64, torch.int32), "CharRNN idx")
        if idx.dim() != 2:
            raise ShapeError(
                f"CharRNN idx: expected (B, T) token ids, got shape {tuple(idx.shape)}"
            )
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.vocab_size):
            raise ValueError(
                f"CharRNN idx: ids must lie in [0, {self.vocab_size}), got min {int(idx.min())} "
                f"and max {int(idx.max())}; was the model built with the tokenizer's vocab_size?"
            )
        out, state = self.rnn(self.drop(self.embedding(idx)), state)  # (B, T, H)
        return self.head(self.drop(out)), state

    def loss(
        self, idx: Tensor, targets: Tensor, state: State | None = None
    ) -> tuple[Tensor, State]:
        """Mean next-token cross-entropy.  idx, targets (B, T) -> (scalar loss, final state)."""
        if targets.shape != idx.shape:
            raise ShapeError(
                f"CharRNN targets: expected the shape of idx {tuple(idx.shape)}, got "
                f"{tuple(targets.shape)}"
            )
        logits, state = self(idx, state)
        return kernels.cross_entropy(
            logits.reshape(-1, self.vocab_size), targets.reshape(-1)
        ), state

    @torch.no_grad()
    def sample(
        self,
        tokenizer: TextTokenizer,
        start: str,
        length: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> str:
        """Continue ``start`` by ``length`` tokens; returns start + continuation as text.

        ``temperature`` 0 picks the most likely token (greedy); ``top_k`` keeps only the k most
        likely tokens. The prompt is read once, then each new token costs one step.
        """
        if not start:
            raise ValueError("sample needs a non-empty start text to condition on")
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and not 1 <= top_k <= self.vocab_size:
            raise ValueError(f"top_k must be in [1, {self.vocab_size}], got {top_k}")
        prompt = list(tokenizer.encode(start))
        if not prompt:
            raise ValueError(f"the tokenizer encoded {start!r} to no tokens")
        was_training = self.training
        self.eval()
        try:
            device = self.head.weight.device
            logits, state = self(torch.tensor([prompt], dtype=torch.long, device=device))
            last = logits[:, -1]  # (1, V)
            new: list[int] = []
            for _ in range(length):
                nxt = self._pick(last, temperature, top_k, generator)  # (1, 1)
                new.append(int(nxt))
                logits, state = self(nxt, state)
                last = logits[:, -1]
        finally:
            self.train(was_training)
        return tokenizer.decode(prompt + new)

    @staticmethod
    def _pick(
        logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
    ) -> Tensor:
        """Choose the next id from logits (1, V) -> (1, 1)."""
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits.float() / temperature
        if top_k is not None:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if generator is not None and generator.device != probs.device:
            probs = probs.to(generator.device)
        return torch.multinomial(probs, 1, generator=generator).to(logits.device)
