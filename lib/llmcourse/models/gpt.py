"""GPT: a decoder-only, pre-norm Transformer language model.

Covers GPT-2 (learned positions, LayerNorm, GELU, weight tying; loads the real GPT-2 weights
with :meth:`GPT.from_hf_gpt2`) and LLaMA-style variants (RoPE, RMSNorm, SwiGLU) through
:class:`GPTConfig`. There is no cross-attention: each block is masked self-attention and an
MLP, each wrapped as ``x + sublayer(norm(x))``.

State-dict names (``N`` = block index)::

    tok_emb.weight                       (vocab_size, n_embd)
    pos_emb.weight                       (block_size, n_embd)       learned positions only
    blocks.N.norm1.weight / .bias        (n_embd,)                  bias: LayerNorm with bias=True
    blocks.N.attn.qkv.weight / .bias     (3*n_embd, n_embd)         rows [W_q; W_k; W_v]
    blocks.N.attn.out.weight / .bias     (n_embd, n_embd)
    blocks.N.norm2.weight / .bias        (n_embd,)
    blocks.N.mlp.fc1.weight / .bias      (4*n_embd, n_embd)         SwiGLU: (2*hidden, n_embd), [gate; up]
    blocks.N.mlp.fc2.weight / .bias      (n_embd, 4*n_embd)         SwiGLU: (n_embd, hidden)
    norm_f.weight / .bias                (n_embd,)
    lm_head.weight                       (vocab_size, n_embd)       only when tie_weights=False

With ``tie_weights=True`` the output layer reuses ``tok_emb.weight`` and has no entry of its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from llmcourse import kernels
from llmcourse.nn import (
    Dropout,
    Embedding,
    FeedForward,
    KVCache,
    LayerKVCache,
    LayerNorm,
    LearnedPositions,
    Linear,
    MultiHeadAttention,
    RMSNorm,
    RotaryEmbedding,
)
from llmcourse.utils import ShapeError

__all__ = ["GPTConfig", "GPT", "LMOutput", "Block", "swiglu_hidden", "lm_loss", "check_token_ids"]

_POSITIONS = ("learned", "rope")
_NORMS = ("layernorm", "rmsnorm")
_MLPS = ("gelu", "gelu_exact", "swiglu")
_INDEX_DTYPES = (torch.int64, torch.int32)


@dataclass
class GPTConfig:
    """Hyperparameters of :class:`GPT`.

    ``positions``: "learned" (GPT-2) or "rope" (LLaMA). ``norm``: "layernorm" or "rmsnorm".
    ``mlp``: "gelu" (4*n_embd hidden units, GPT-2's tanh-approximated GELU), "gelu_exact"
    (the same with the erf GELU, as nanoGPT and BERT; about twice as fast on CPU) or "swiglu"
    (:func:`swiglu_hidden` units, about the same parameter count). ``bias``: biases in the
    linear layers and LayerNorms. ``tie_weights``: the output layer shares the token embedding.
    """

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = True
    positions: str = "learned"
    norm: str = "layernorm"
    mlp: str = "gelu"
    tie_weights: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig: n_embd={self.n_embd} must be divisible by n_head={self.n_head}"
            )
        for name, allowed in (("positions", _POSITIONS), ("norm", _NORMS), ("mlp", _MLPS)):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"GPTConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        if self.positions == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(
                f"GPTConfig: RoPE needs an even head size, got n_embd/n_head = {self.n_embd // self.n_head}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        """Plain dict of every field (JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> GPTConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"GPTConfig.from_dict: unknown keys {unknown}; expected a subset of {sorted(known)}"
            )
        return cls(**dict(d))


@dataclass
class LMOutput:
    """What a language model's forward returns.

    logits: (B, T, V); loss: scalar tensor, or None without targets; hidden: (B, T, C), the
    final norm's output (the input of the output layer).
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    hidden: torch.Tensor | None = None


def swiglu_hidden(n_embd: int) -> int:
    """Hidden width of a SwiGLU MLP: 8/3 * n_embd rounded up to a multiple of 8.

    Three matrices of this width hold about as many parameters as GPT-2's two of 4 * n_embd.
    """
    return 8 * math.ceil(8 * n_embd / 3 / 8)


def _is_compiling() -> bool:
    """True while torch.compile traces (data-dependent checks would break the graph)."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return bool(is_compiling and is_compiling())


def check_token_ids(idx: torch.Tensor, name: str, vocab_size: int | None = None) -> None:
    """Raise a clear error unless ``idx`` is a (B, T) integer tensor of ids < vocab_size."""
    if idx.dtype not in _INDEX_DTYPES:
        raise TypeError(
            f"{name} must hold integer token ids (torch.long), got dtype "
            f"{str(idx.dtype).replace('torch.', '')}; convert with {name}.long()"
        )
    if idx.dim() != 2:
        raise ShapeError(f"{name} must have shape (B, T), got {tuple(idx.shape)}")
    if vocab_size is not None and idx.numel() and not _is_compiling():
        lo, hi = torch.aminmax(idx)
        if int(lo) < 0 or int(hi) >= vocab_size:
            raise IndexError(
                f"{name} holds token ids in [{int(lo)}, {int(hi)}], but the vocabulary has "
                f"{vocab_size} tokens (ids 0..{vocab_size - 1})"
            )


def lm_loss(
    logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions that count.

    logits: (B, T, V); targets: (B, T) long, -100 = ignore; loss_mask: (B, T) bool or float
    weights (SFT: 1 on response tokens, 0 on the prompt). Without a mask this is the mean over
    all non-ignored positions; with one, sum(loss * mask) / sum(mask) over non-ignored
    positions (NaN when nothing counts, as in ``torch.nn.functional.cross_entropy``).
    """
    flat_logits = logits.reshape(-1, logits.shape[-1])  # (B*T, V)
    flat_targets = targets.reshape(-1)  # (B*T,)
    if loss_mask is None:
        return kernels.cross_entropy(flat_logits, flat_targets)
    losses = kernels.cross_entropy(flat_logits, flat_targets, reduction="none")  # (B*T,)
    weights = loss_mask.reshape(-1).to(losses.dtype) * (flat_targets != -100)
    return (losses * weights).sum() / weights.sum()


def _make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd)
    return LayerNorm(config.n_embd, bias=config.bias)


class Block(nn.Module):
    """One pre-norm decoder block: x + attn(norm1(x)), then x + mlp(norm2(x)). (B, T, C) -> same."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.norm1 = _make_norm(config)
        self.attn = MultiHeadAttention(
            config.n_embd, config.n_head, bias=config.bias, causal=True, dropout=config.dropout
        )
        self.norm2 = _make_norm(config)
        if config.mlp == "swiglu":
            self.mlp = FeedForward(
                config.n_embd,
                swiglu_hidden(config.n_embd),
                "swiglu",
                bias=config.bias,
                dropout=config.dropout,
            )
        else:
            self.mlp = FeedForward(
                config.n_embd,
                4 * config.n_embd,
                "gelu_tanh" if config.mlp == "gelu" else "gelu",
                bias=config.bias,
                dropout=config.dropout,
            )

    def forward(
        self,
        x: torch.Tensor,
        kv_cache: LayerKVCache | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), kv_cache=kv_cache, rope=rope)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """Decoder-only Transformer LM. forward(idx (B, T)) -> :class:`LMOutput` with logits (B, T, V).

    Initialised as GPT-2: weights N(0, 0.02), biases 0, and the two projections that write into
    the residual stream (``attn.out``, ``mlp.fc2``) N(0, 0.02 / sqrt(2 * n_layer)).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = Embedding(config.vocab_size, config.n_embd)
        if config.positions == "learned":
            self.pos_emb = LearnedPositions(config.block_size, config.n_embd)
        else:
            self.rope = RotaryEmbedding(config.head_dim, max_positions=config.block_size)
        self.drop = Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = _make_norm(config)
        if not config.tie_weights:
            self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation (see the class docstring)."""
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, Linear):
                std = residual_std if name.endswith(("attn.out", "mlp.fc2")) else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (Embedding, LearnedPositions)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, (LayerNorm, RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    @property
    def output_weight(self) -> torch.Tensor:
        """The (vocab_size, n_embd) matrix that maps hidden states to logits."""
        return self.tok_emb.weight if self.config.tie_weights else self.lm_head.weight

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Number of parameters (tied weights counted once).

        ``non_embedding=True`` leaves out the token and position embeddings (N in the scaling
        laws of Kaplan et al. 2020); an untied output layer still counts.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            if self.config.positions == "learned":
                n -= self.pos_emb.weight.numel()
        return n

    def new_kv_cache(self, batch_size: int) -> KVCache:
        """An empty cache for decoding ``batch_size`` sequences of up to block_size tokens."""
        return KVCache(self.config.n_layer, self.config.block_size, batch_size)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        loss_mask: torch.Tensor | None = None,
    ) -> LMOutput:
        """idx: (B, T) token ids; targets: (B, T) next-token ids (-100 = ignore) or None.

        kv_cache: decode incrementally; idx then holds only the new tokens, which take the
        positions after the cached ones. loss_mask: (B, T), see :func:`lm_loss`.
        """
        cfg = self.config
        check_token_ids(idx, "idx", cfg.vocab_size)
        b, t = idx.shape
        start = 0
        if kv_cache is not None:
            kv_cache.check_batch(b)
            start = kv_cache.length
        if start + t > cfg.block_size:
            where = f" after {start} cached positions" if start else ""
            raise ShapeError(
                f"idx: sequence of length {t}{where} exceeds block_size={cfg.block_size}; "
                f"crop the input to its last {cfg.block_size - start} tokens"
            )
        if t == 0:
            raise ShapeError("idx: expected at least one token, got shape (B, 0)")

        x = self.tok_emb(idx)  # (B, T, C)
        rope = None
        if cfg.positions == "learned":
            x = x + self.pos_emb.span(start, t)
        else:
            rope = self.rope.span(start, t)  # cos, sin: (T, head_dim/2)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, None if kv_cache is None else kv_cache[i], rope)
        hidden = self.norm_f(x)  # (B, T, C)
        if self.config.tie_weights:
            logits = F.linear(hidden, self.tok_emb.weight)  # (B, T, V)
        else:
            logits = self.lm_head(hidden)  # a module call, so wrappers (LoRA, int8) apply

        loss = None
        if targets is not None:
            if targets.shape != idx.shape:
                raise ShapeError(
                    f"targets: expected shape {tuple(idx.shape)} (as idx), got {tuple(targets.shape)}"
                )
            check_token_ids(targets, "targets")
            if loss_mask is not None and loss_mask.shape != idx.shape:
                raise ShapeError(
                    f"loss_mask: expected shape {tuple(idx.shape)} (as idx), got {tuple(loss_mask.shape)}"
                )
            loss = lm_loss(logits, targets, loss_mask)
        elif loss_mask is not None:
            raise ValueError("loss_mask given without targets")
        return LMOutput(logits=logits, loss=loss, hidden=hidden)

    # ------------------------------------------------------------------ GPT-2 weights
    @classmethod
    def from_hf_gpt2(
        cls,
        hf_model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
        config: GPTConfig | None = None,
    ) -> GPT:
        """Build a GPT holding the weights of a Hugging Face ``GPT2LMHeadModel`` / ``GPT2Model``.

        ``hf_model_or_state_dict``: the model or its ``state_dict()`` (keys with or without the
        ``transformer.`` prefix). ``config`` may be omitted when a model is passed (it is read
        from ``model.config``). GPT-2's ``Conv1D`` stores weights as (in, out); they are
        transposed into this library's (out, in) layout.
        """
        if isinstance(hf_model_or_state_dict, nn.Module):
            if config is None:
                config = gpt_config_from_hf(hf_model_or_state_dict.config)
            state = hf_model_or_state_dict.state_dict()
        else:
            state = dict(hf_model_or_state_dict)
        if config is None:
            raise ValueError(
                "from_hf_gpt2: pass config=GPTConfig(...) when loading a bare state dict"
            )
        if (config.positions, config.norm, config.mlp, config.bias) != (
            "learned",
            "layernorm",
            "gelu",
            True,
        ):
            raise ValueError(
                "from_hf_gpt2: GPT-2 needs positions='learned', norm='layernorm', mlp='gelu', "
                f"bias=True; got {config.positions!r}, {config.norm!r}, {config.mlp!r}, bias={config.bias}"
            )
        model = cls(config)
        mapped = _map_hf_gpt2_state(state, config)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(mapped))
        if missing:
            raise KeyError(f"from_hf_gpt2: the GPT-2 state dict lacks weights for {missing[:6]}")
        for key, tensor in mapped.items():
            if tensor.shape != expected[key].shape:
                raise ShapeError(
                    f"from_hf_gpt2: {key} has shape {tuple(tensor.shape)} in the checkpoint, the config "
                    f"expects {tuple(expected[key].shape)}; does the GPTConfig match the checkpoint?"
                )
        model.load_state_dict(mapped, strict=True)
        return model


def gpt_config_from_hf(hf_config) -> GPTConfig:
    """GPTConfig equivalent to a ``transformers.GPT2Config`` (GPT-2 uses the tanh GELU)."""
    act = getattr(hf_config, "activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        raise ValueError(f"from_hf_gpt2: activation {act!r} is not GPT-2's tanh GELU")
    if abs(getattr(hf_config, "layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        raise ValueError("from_hf_gpt2: only layer_norm_epsilon=1e-5 is supported")
    if getattr(hf_config, "scale_attn_by_inverse_layer_idx", False) or getattr(
        hf_config, "reorder_and_upcast_attn", False
    ):
        raise ValueError(
            "from_hf_gpt2: scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported"
        )
    return GPTConfig(
        vocab_size=hf_config.vocab_size,
        block_size=hf_config.n_positions,
        n_layer=hf_config.n_layer,
        n_head=hf_config.n_head,
        n_embd=hf_config.n_embd,
        dropout=0.0,
        tie_weights=bool(getattr(hf_config, "tie_word_embeddings", True)),
    )


def _map_hf_gpt2_state(
    state: Mapping[str, torch.Tensor], config: GPTConfig
) -> dict[str, torch.Tensor]:
    """Rename (and transpose Conv1D weights of) a GPT-2 state dict into GPT's names."""
    renames = {
        "ln_1": "norm1",
        "ln_2": "norm2",
        "attn.c_attn": "attn.qkv",
        "attn.c_proj": "attn.out",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        key = key.removeprefix("transformer.")
        if key.endswith((".attn.bias", ".attn.masked_bias")):  # old causal-mask buffers
            continue
        if key == "lm_head.weight":
            if not config.tie_weights:
                out["lm_head.weight"] = tensor
            continue
        if key in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"):
            new = {"wte": "tok_emb", "wpe": "pos_emb", "ln_f": "norm_f"}[key.split(".")[0]]
            out[f"{new}.{key.split('.')[1]}"] = tensor
            continue
        if not key.startswith("h."):
            raise KeyError(f"from_hf_gpt2: unexpected key {key!r} in the GPT-2 state dict")
        _, layer, rest = key.split(".", 2)
        if rest.endswith(conv1d):
            tensor = tensor.t()
        for old, new in renames.items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old) :]
                break
        else:
            raise KeyError(f"from_hf_gpt2: unexpected key {key!r} in the GPT-2 state dict")
        out[f"blocks.{layer}.{rest}"] = tensor.contiguous()
    return out
