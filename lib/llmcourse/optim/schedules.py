"""Learning-rate schedules: linear warm-up followed by cosine decay to a floor.

The schedule over optimisation steps ``t = 0, 1, 2, ...``::

    t <  warmup_steps:                lr = max_lr * (t + 1) / warmup_steps
    warmup_steps <= t <= decay_steps: lr = min_lr + 0.5 * (1 + cos(pi * r)) * (max_lr - min_lr),
                                      r = (t - warmup_steps) / (decay_steps - warmup_steps)
    t >  decay_steps:                 lr = min_lr

It is available as a plain function (:func:`lr_at`), as a callable object whose ``__call__``
returns the *multiplier* ``lr / max_lr`` (the ``lr_lambda`` convention of
:class:`torch.optim.lr_scheduler.LambdaLR`), and as a ready-made ``LambdaLR``
(:func:`warmup_cosine_scheduler`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["lr_at", "WarmupCosine", "warmup_cosine_scheduler"]


def lr_at(
    step: int, *, max_lr: float, min_lr: float = 0.0, warmup_steps: int = 0, decay_steps: int
) -> float:
    """Learning rate at optimisation step ``step`` (0-based) under warm-up + cosine decay."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps < 0 or decay_steps < warmup_steps:
        raise ValueError(
            f"need 0 <= warmup_steps <= decay_steps, got warmup_steps={warmup_steps}, "
            f"decay_steps={decay_steps}"
        )
    if not 0.0 <= min_lr <= max_lr:
        raise ValueError(f"need 0 <= min_lr <= max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= decay_steps:
        return min_lr
    progress = (step - warmup_steps) / (decay_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


@dataclass(frozen=True)
class WarmupCosine:
    """Warm-up + cosine schedule as an object.

    ``schedule.lr(t)`` gives the learning rate; ``schedule(t)`` gives the multiplier
    ``lr(t) / max_lr``, so the object can be passed as ``lr_lambda`` to ``LambdaLR`` or as the
    ``schedule`` of :class:`llmcourse.train.Trainer` (which scales each group's initial lr).
    """

    max_lr: float
    decay_steps: int
    warmup_steps: int = 0
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.max_lr <= 0:
            raise ValueError(f"max_lr must be > 0, got {self.max_lr}")
        lr_at(0, **self._kwargs())  # validates the remaining arguments

    def _kwargs(self) -> dict[str, float]:
        return dict(
            max_lr=self.max_lr,
            min_lr=self.min_lr,
            warmup_steps=self.warmup_steps,
            decay_steps=self.decay_steps,
        )

    def lr(self, step: int) -> float:
        """Learning rate at ``step``."""
        return lr_at(step, **self._kwargs())

    def __call__(self, step: int) -> float:
        """Multiplier ``lr(step) / max_lr`` (LambdaLR convention)."""
        return self.lr(step) / self.max_lr


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    decay_steps: int,
    warmup_steps: int = 0,
    min_lr: float | None = None,
    min_lr_ratio: float = 0.1,
) -> LambdaLR:
    """A ``LambdaLR`` applying warm-up + cosine decay to every group of ``optimizer``.

    The peak of each group is its current ``lr``. The floor is ``min_lr`` when given (as an
    absolute lr, relative to the first group's peak), otherwise ``min_lr_ratio * peak``.
    Call ``scheduler.step()`` once after every ``optimizer.step()``.
    """
    peak = optimizer.param_groups[0]["lr"]
    if peak <= 0:
        raise ValueError(f"the optimizer's lr must be > 0 to define a schedule, got {peak}")
    floor = min_lr if min_lr is not None else min_lr_ratio * peak
    schedule = WarmupCosine(
        max_lr=peak, min_lr=floor, warmup_steps=warmup_steps, decay_steps=decay_steps
    )
    return LambdaLR(optimizer, lr_lambda=schedule)
