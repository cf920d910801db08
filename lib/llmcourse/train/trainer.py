"""A compact, complete training loop: the Trainer behind the course's GPT and fine-tuning runs.

One optimisation step (:meth:`Trainer.train_step`):

1. set every group's lr to ``initial_lr * schedule(step)``;
2. for each of ``grad_accum_steps`` micro-batches: forward (optionally under bfloat16
   autocast), ``(loss / grad_accum_steps).backward()`` (DDP synchronises gradients only on
   the last micro-batch);
3. check the loss: NaN or inf stops training with :class:`NonFiniteLossError` naming the step,
   *before* the bad gradients touch the weights;
4. clip the global gradient norm, ``optimizer.step()``, ``zero_grad``.

:meth:`Trainer.fit` repeats this with a tqdm progress bar, evaluates every ``eval_interval``
steps and at the end, records a :class:`TrainHistory`, and writes checkpoints that resume
exactly (weights, optimizer, step, history, global RNGs and the batch sources' RNGs).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from llmcourse.optim.clipping import clip_grad_norm
from llmcourse.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)
from llmcourse.train.distributed import all_reduce_mean, barrier, dist_info, gather_objects
from llmcourse.train.state import capture_rng_state, restore_rng_state
from llmcourse.utils import resolve_device

__all__ = [
    "Trainer",
    "TrainerConfig",
    "TrainHistory",
    "NonFiniteLossError",
    "BatchSource",
    "default_loss",
]

BatchSource = Callable[[], Any]
"""Anything that returns the next batch when called, e.g. :class:`llmcourse.data.RandomBatches`.
Sources with ``state_dict()`` / ``load_state_dict()`` are checkpointed and resume exactly."""

_PRECISIONS = ("float32", "bfloat16")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step."""


@dataclass
class TrainerConfig:
    """Settings of :class:`Trainer` (all have defaults; see the field comments)."""

    max_steps: int = 1000  # optimisation steps in total (resumed runs count from their step)
    grad_accum_steps: int = 1  # micro-batches per step; effective batch = this x batch size
    grad_clip: float | None = 1.0  # max global gradient norm; None disables clipping
    eval_interval: int = 0  # evaluate every N steps (and always at the end); 0 = end only
    eval_batches: int = 20  # batches per evaluation and source
    precision: str = "float32"  # "bfloat16": autocast forward passes to bfloat16
    checkpoint_dir: str | None = None  # where fit() writes checkpoints (None: never)
    checkpoint_interval: int = 0  # save every N steps (and always at the end); 0 = end only
    compile: bool = False  # torch.compile the model for training
    progress: bool = True  # tqdm progress bar (rank 0 only)
    log: bool = True  # print one line per evaluation (rank 0 only)
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...

    def __post_init__(self) -> None:
        for name in ("max_steps", "grad_accum_steps", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainerConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_interval", "checkpoint_interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainerConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"TrainerConfig.grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.precision not in _PRECISIONS:
            hint = (
                " (float16 needs loss scaling; use bfloat16)" if self.precision == "float16" else ""
            )
            raise ValueError(
                f"TrainerConfig.precision must be one of {_PRECISIONS}, got {self.precision!r}{hint}"
            )


@dataclass
class TrainHistory:
    """Per-step training loss / lr / gradient norm and per-evaluation losses."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)  # before clipping; NaN if not clipped
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: dict[str, list[float]] = field(default_factory=dict)  # source name -> losses

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainHistory:
        return cls(**{k: (dict(v) if isinstance(v, dict) else list(v)) for k, v in d.items()})


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def default_loss(model: nn.Module, batch: Any) -> Tensor:
    """``model(x, targets=y).loss`` for a batch ``(x, y)`` (a bare tensor output also works)."""
    x, y = batch
    out = model(x, targets=y)
    return getattr(out, "loss", out)


class Trainer:
    """Train ``model`` with ``optimizer`` on batches from ``train_batches``.

    Args:
        model: any ``nn.Module``; moved to ``config.device``. Under ``torchrun`` it is wrapped
            in DistributedDataParallel automatically (batch sizes are per rank).
        optimizer: any ``torch.optim.Optimizer`` over the model's parameters.
        train_batches: callable returning the next training batch (``(x, y)`` by default).
        val_batches: callable returning validation batches (optional).
        config: :class:`TrainerConfig`.
        schedule: ``step -> multiplier`` of each group's initial lr (e.g.
            :class:`llmcourse.optim.WarmupCosine`); ``None`` keeps the lr constant.
        loss_fn: ``(model, batch) -> scalar loss``; default :func:`default_loss`.
        eval_sources: named batch sources to evaluate; default ``{"train": train_batches,
            "val": val_batches}``. A source with ``state_dict()`` is rewound after each
            evaluation, so every evaluation sees the same batches and training is unaffected.
        run_config: JSON-serialisable description of the run, stored in checkpoints.
        tokenizer: saved with checkpoints.
        on_evaluate: ``(step, losses)`` callback after each evaluation (rank 0 only).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_batches: BatchSource,
        val_batches: BatchSource | None = None,
        *,
        config: TrainerConfig | None = None,
        schedule: Callable[[int], float] | None = None,
        loss_fn: Callable[[nn.Module, Any], Tensor] | None = None,
        eval_sources: Mapping[str, BatchSource] | None = None,
        run_config: Mapping[str, Any] | None = None,
        tokenizer: Any | None = None,
        on_evaluate: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        self.config = config or TrainerConfig()
        self.device = resolve_device(self.config.device)
        self.model = model.to(self.device)
        self.optimizer = optimizer
        self.train_batches = train_batches
        self.schedule = schedule
        self.loss_fn = loss_fn or default_loss
        if eval_sources is None:
            eval_sources = {"train": train_batches}
            if val_batches is not None:
                eval_sources["val"] = val_batches
        self.eval_sources = dict(eval_sources)
        self.run_config = dict(run_config or {})
        self.tokenizer = tokenizer
        self.on_evaluate = on_evaluate
        self.dist = dist_info(self.device)
        self._ddp: nn.parallel.DistributedDataParallel | None = None
        net: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device] if self.device.type == "cuda" else None
            net = self._ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if self.config.compile:
            net = torch.compile(net)
        self.net = net
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.step = 0
        self.history = TrainHistory()
        self.metrics: dict[str, float] = {}

    # ------------------------------------------------------------------ one step
    def _autocast(self):
        if self.config.precision == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _loss(self, batch: Any) -> Tensor:
        loss = self.loss_fn(self.net, _to_device(batch, self.device))
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            got = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise TypeError(f"loss_fn must return a scalar tensor (shape ()), got {got}")
        return loss

    def _set_lr(self) -> float:
        factor = 1.0 if self.schedule is None else float(self.schedule(self.step))
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return self.optimizer.param_groups[0]["lr"]

    def train_step(self) -> float:
        """Run one optimisation step (all micro-batches); return the mean training loss."""
        cfg = self.config
        lr = self._set_lr()
        self.net.train()
        micro_losses = []
        for micro in range(cfg.grad_accum_steps):
            last = micro == cfg.grad_accum_steps - 1
            sync = nullcontext() if (self._ddp is None or last) else self._ddp.no_sync()
            with sync:
                with self._autocast():
                    loss = self._loss(self.train_batches())
                (loss / cfg.grad_accum_steps).backward()
            micro_losses.append(loss.detach().float())
        local = torch.stack(micro_losses)
        value = float(all_reduce_mean(local.mean()))
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            bad = [i for i, v in enumerate(local.tolist()) if not math.isfinite(v)]
            where = (
                f" (micro-batch {bad[0] + 1} of {cfg.grad_accum_steps})"
                if bad
                else " (on another rank)"
            )
            last_ok = f"; last finite loss {self.history.loss[-1]:.4f}" if self.history.loss else ""
            raise NonFiniteLossError(
                f"training loss is {value} at step {self.step + 1}{where}, lr {lr:.3g}{last_ok}. "
                "The weights were not updated. Lower the learning rate, enable grad_clip, use "
                "float32, or check the batch for invalid inputs."
            )
        grad_norm = float("nan")
        if cfg.grad_clip is not None:
            grad_norm = float(clip_grad_norm(self.model.parameters(), cfg.grad_clip))
            if not math.isfinite(grad_norm):
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLossError(
                    f"gradient norm is {grad_norm} at step {self.step + 1} (loss {value:.4f}); "
                    "the weights were not updated. Lower the learning rate or use float32."
                )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        h = self.history
        h.steps.append(self.step)
        h.loss.append(value)
        h.lr.append(lr)
        h.grad_norm.append(grad_norm)
        return value

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, num_batches: int | None = None) -> dict[str, float]:
        """Mean loss over ``num_batches`` batches of every evaluation source (all ranks)."""
        n = num_batches or self.config.eval_batches
        was_training = self.net.training
        self.net.eval()
        results: dict[str, float] = {}
        try:
            for name, source in self.eval_sources.items():
                snapshot = source.state_dict() if hasattr(source, "state_dict") else None
                total = torch.zeros((), device=self.device)
                for _ in range(n):
                    with self._autocast():
                        total += self._loss(source()).float()
                results[name] = float(all_reduce_mean(total / n))
                if snapshot is not None:
                    source.load_state_dict(snapshot)
        finally:
            self.net.train(was_training)
        return results

    def _record_eval(self, results: dict[str, float]) -> None:
        self.history.eval_steps.append(self.step)
        for name, value in results.items():
            self.history.eval_loss.setdefault(name, []).append(value)
        self.metrics = {f"{k}_loss": v for k, v in results.items()}
        if self.on_evaluate is not None and self.dist.is_main:
            self.on_evaluate(self.step, results)

    # ------------------------------------------------------------------ the loop
    def fit(self, max_steps: int | None = None, *, finish: bool = True) -> TrainHistory:
        """Train until ``max_steps`` (default ``config.max_steps``) steps are done.

        Evaluates every ``eval_interval`` steps and checkpoints every ``checkpoint_interval``
        steps; with ``finish`` (default) also evaluates and checkpoints when the loop ends.
        ``finish=False`` trains in chunks (``fit(100, finish=False)``, ``fit(200, ...)``)
        exactly as one long call would.
        """
        cfg = self.config
        target = max_steps if max_steps is not None else cfg.max_steps
        bar = tqdm(
            total=target,
            initial=self.step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not (cfg.progress and self.dist.is_main),
        )
        try:
            while self.step < target:
                loss = self.train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.history.lr[-1]:.2e}", refresh=False)
                done = finish and self.step == target
                if done or (cfg.eval_interval and self.step % cfg.eval_interval == 0):
                    results = self.evaluate()
                    self._record_eval(results)
                    if cfg.log and self.dist.is_main:
                        losses = ", ".join(f"{k} loss {v:.4f}" for k, v in results.items())
                        tqdm.write(f"step {self.step}: {losses}")
                if cfg.checkpoint_dir and (
                    done or (cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0)
                ):
                    self.save(cfg.checkpoint_dir)
        finally:
            bar.close()
        return self.history

    # ------------------------------------------------------------------ checkpoints
    def _stateful_sources(self) -> dict[str, Any]:
        sources = {
            "train": self.train_batches,
            **{f"eval:{k}": v for k, v in self.eval_sources.items()},
        }
        seen: set[int] = set()
        out = {}
        for name, src in sources.items():
            if (
                hasattr(src, "state_dict")
                and hasattr(src, "load_state_dict")
                and id(src) not in seen
            ):
                seen.add(id(src))
                out[name] = src
        return out

    def save(self, directory: str | Path | None = None) -> Path:
        """Write a checkpoint (rank 0 writes; every rank contributes its RNG/source states)."""
        directory = Path(directory or self.config.checkpoint_dir or "")
        if not str(directory):
            raise ValueError("Trainer.save: pass a directory or set TrainerConfig.checkpoint_dir")
        local = {
            "rng": capture_rng_state(),
            "sources": {k: s.state_dict() for k, s in self._stateful_sources().items()},
        }
        states = gather_objects(local)
        if self.dist.is_main:
            save_checkpoint(
                directory,
                self.model,
                self.optimizer,
                step=self.step,
                config=self.run_config,
                tokenizer=self.tokenizer,
                metrics=self.metrics,
                extra={"history": self.history.to_dict(), "trainer": asdict(self.config)},
                rank_states=states,
            )
        barrier()
        return directory

    def resume(self, directory: str | Path) -> Checkpoint:
        """Load a checkpoint written by :meth:`save` and continue from its step.

        Restores weights, optimizer, step, history, metrics and, when the number of ranks is
        unchanged, every rank's RNGs and batch-source positions (exact resume).
        """
        sources = self._stateful_sources()
        meta = read_checkpoint_meta(directory)
        ranks = meta.get("ranks", [])
        same_world = len(ranks) == self.dist.world_size
        if same_world:
            saved_sources = set(ranks[self.dist.rank].get("sources", {}))
            if saved_sources != set(sources):
                raise CheckpointError(
                    f"{directory}: checkpoint has batch-source states {sorted(saved_sources)}, "
                    f"this trainer has {sorted(sources)}"
                )
        ckpt = load_checkpoint(directory, self.model, self.optimizer)
        if same_world:
            state = ckpt.rank_states[self.dist.rank]
            restore_rng_state(state["rng"])
            for name, src in sources.items():
                src.load_state_dict(state["sources"][name])
        else:
            warnings.warn(
                f"checkpoint was written by {len(ranks)} rank(s), resuming on "
                f"{self.dist.world_size}: RNG and batch order restart from their seeds",
                stacklevel=2,
            )
        self.step = ckpt.step
        self.history = TrainHistory.from_dict(ckpt.extra.get("history", {}))
        self.metrics = dict(ckpt.metrics)
        return ckpt
