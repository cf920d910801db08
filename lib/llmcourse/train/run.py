"""Config-file training runs: a TOML file in, a ready :class:`~llmcourse.train.Trainer` out.

A run file has a top-level ``seed`` and four tables (every key optional, defaults below)::

    seed = 1337
    [data]   dataset, tokenizer ("char-ascii" | "char"), val_fraction, block_size, batch_size
    [model]  GPTConfig fields except vocab_size / block_size (taken from tokenizer and data)
    [optim]  name ("adamw" | "adam" | "sgd"), lr, min_lr, betas, eps, weight_decay, momentum,
             warmup_steps, decay_steps
    [train]  TrainerConfig fields (max_steps, grad_accum_steps, grad_clip, eval_interval, ...)

The command line (``llmcourse train``) and the benchmark both build their runs with
:func:`build_run`, so a config file means the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmcourse.data import (
    DATASETS,
    RandomBatches,
    cache_dir,
    load_text,
    load_tokens,
    prepare_tokens,
)
from llmcourse.optim import SGD, Adam, AdamW, WarmupCosine, weight_decay_groups
from llmcourse.train.distributed import DistInfo
from llmcourse.train.trainer import Trainer, TrainerConfig
from llmcourse.utils import resolve_device, set_seed

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib
    except ImportError:  # pragma: no cover
        tomllib = None

__all__ = [
    "DataSection",
    "OptimSection",
    "RunConfig",
    "Run",
    "load_run_config",
    "build_tokenizer",
    "build_run",
]

TOKENIZERS = ("char-ascii", "char")
OPTIMIZERS = ("adamw", "adam", "sgd")


@dataclass
class DataSection:
    """Corpus, tokenizer and batch shape. Batch size is per rank and per micro-batch."""

    dataset: str = "tinyshakespeare"  # a name in llmcourse.data.DATASETS or a text file path
    tokenizer: str = "char-ascii"  # CharTokenizer.ascii() or "char": the corpus's alphabet
    val_fraction: float = 0.1
    block_size: int = 128
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(
                f"[data] tokenizer must be one of {TOKENIZERS}, got {self.tokenizer!r}"
            )


@dataclass
class OptimSection:
    """Optimizer and warm-up + cosine learning-rate schedule."""

    name: str = "adamw"
    lr: float = 1e-3
    min_lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.1  # applied to matrices and embeddings only
    momentum: float = 0.9  # SGD only
    warmup_steps: int = 100
    decay_steps: int = 5000  # cosine reaches min_lr here and stays there

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"[optim] name must be one of {OPTIMIZERS}, got {self.name!r}")
        self.betas = tuple(self.betas)  # type: ignore[assignment]


@dataclass
class RunConfig:
    """A whole training run (see the module docstring for the file format)."""

    seed: int = 1337
    data: DataSection = field(default_factory=DataSection)
    model: dict[str, Any] = field(default_factory=dict)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainerConfig = field(default_factory=TrainerConfig)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> RunConfig:
        """Build from a parsed TOML dict; unknown keys raise an error naming them."""
        sections = {"data": DataSection, "optim": OptimSection, "train": TrainerConfig}
        unknown = sorted(set(d) - {"seed", "model", *sections})
        if unknown:
            raise ValueError(
                f"{source}: unknown top-level keys {unknown}; expected seed, [data], [model], [optim], [train]"
            )
        kwargs: dict[str, Any] = {
            "seed": int(d.get("seed", 1337)),
            "model": dict(d.get("model", {})),
        }
        for name, section_cls in sections.items():
            values = dict(d.get(name, {}))
            known = {f.name for f in dataclasses.fields(section_cls)}
            bad = sorted(set(values) - known)
            if bad:
                raise ValueError(
                    f"{source}: unknown keys {bad} in [{name}]; allowed: {sorted(known)}"
                )
            kwargs[name] = section_cls(**values)
        for key in ("vocab_size", "block_size"):
            if key in kwargs["model"]:
                raise ValueError(
                    f"{source}: [model] {key} is derived (tokenizer / [data] block_size); remove it"
                )
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["optim"]["betas"] = list(self.optim.betas)
        return d


def load_run_config(path: str | Path) -> RunConfig:
    """Read and validate a TOML run file."""
    path = Path(path)
    if tomllib is None:  # pragma: no cover
        raise RuntimeError(
            "reading TOML on Python 3.10 needs the 'tomli' package: pip install tomli"
        )
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML: {err}") from None
    return RunConfig.from_dict(raw, source=str(path))


def build_tokenizer(kind: str, text: str | None = None):
    """``"char-ascii"``: the fixed CharTokenizer.ascii(); ``"char"``: alphabet of ``text``."""
    from llmcourse.tokenizers import CharTokenizer

    if kind == "char-ascii":
        return CharTokenizer.ascii()
    if kind == "char":
        if text is None:
            raise ValueError("tokenizer 'char' needs the corpus text to build its alphabet")
        return CharTokenizer.from_text(text)
    raise ValueError(f"unknown tokenizer {kind!r}; expected one of {TOKENIZERS}")


def _build_optimizer(model: nn.Module, o: OptimSection) -> torch.optim.Optimizer:
    groups = weight_decay_groups(model, o.weight_decay)
    if o.name == "sgd":
        return SGD(groups, lr=o.lr, momentum=o.momentum)
    cls = AdamW if o.name == "adamw" else Adam
    return cls(groups, lr=o.lr, betas=o.betas, eps=o.eps)


@dataclass
class Run:
    """Everything :func:`build_run` assembled."""

    config: RunConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    trainer: Trainer
    tokenizer: Any
    train_tokens: Any
    val_tokens: Any


def build_run(
    cfg: RunConfig,
    *,
    dist: DistInfo | None = None,
    token_dir: str | Path | None = None,
    extra_config: dict[str, Any] | None = None,
) -> Run:
    """Tokenise the corpus (once), build GPT, optimizer, schedule, batch sources and Trainer.

    Every rank initialises the model from ``cfg.seed`` (DDP broadcasts rank 0's weights
    anyway) and samples batches from its own seed, ``cfg.seed + 1 + rank``.
    """
    from llmcourse.models.gpt import GPT, GPTConfig

    dist = dist or DistInfo()
    d = cfg.data
    text = (
        load_text(d.dataset)
        if d.dataset in DATASETS
        else Path(d.dataset).read_text(encoding="utf-8")
    )
    tokenizer = build_tokenizer(d.tokenizer, text)
    name = d.dataset if d.dataset in DATASETS else Path(d.dataset).stem
    token_dir = Path(token_dir) if token_dir else cache_dir() / "tokens" / f"{name}-{d.tokenizer}"
    splits = prepare_tokens(d.dataset, tokenizer, token_dir, val_fraction=d.val_fraction)
    train_tokens, val_tokens = load_tokens(splits.train), load_tokens(splits.val)

    set_seed(cfg.seed)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=d.block_size, **cfg.model))
    optimizer = _build_optimizer(model, cfg.optim)
    o = cfg.optim
    schedule = WarmupCosine(
        max_lr=o.lr, min_lr=o.min_lr, warmup_steps=o.warmup_steps, decay_steps=o.decay_steps
    )
    train_cfg = (
        dataclasses.replace(cfg.train, device=str(dist.device)) if dist.enabled else cfg.train
    )
    src_device = dist.device if dist.enabled else resolve_device(train_cfg.device)
    train_src = RandomBatches(
        train_tokens, d.block_size, d.batch_size, seed=cfg.seed + 1 + dist.rank, device=src_device
    )
    val_src = RandomBatches(
        val_tokens,
        d.block_size,
        d.batch_size,
        seed=cfg.seed + 10_001 + dist.rank,
        device=src_device,
    )
    trainer = Trainer(
        model,
        optimizer,
        train_src,
        val_src,
        config=train_cfg,
        schedule=schedule,
        run_config={**cfg.to_dict(), **(extra_config or {})},
        tokenizer=tokenizer,
    )
    return Run(cfg, model, optimizer, trainer, tokenizer, train_tokens, val_tokens)
