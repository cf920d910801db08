"""Knowledge distillation (Hinton, Vinyals and Dean, 2015).

A student learns from a teacher's *softened* distribution ``softmax(z_t / T)`` as well as from
the hard labels::

    loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

Why ``T^2``: the gradient of the KL term with respect to the student logits is
``(p_s^T - p_t^T) / T``, and for large T the difference of the softened probabilities itself
shrinks like ``1 / T``, so the soft gradients fall off like ``1 / T^2``. Multiplying by
``T^2`` keeps their size roughly independent of T, so ``alpha`` keeps its meaning when you
change the temperature. Leaving the factor out (a common bug) silently turns the soft term off
at high T.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from llmcourse.utils import ShapeError

__all__ = ["soft_target_loss", "distillation_loss"]


def _flatten(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    if student.shape != teacher.shape:
        raise ShapeError(
            f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} "
            "must have the same shape (..., V)"
        )
    v = student.shape[-1]
    return student.reshape(-1, v), teacher.reshape(-1, v).detach()


def soft_target_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 2.0,
    mask: Tensor | None = None,
) -> Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over positions.

    Logits: (..., V), same shape. ``mask`` (...) bool selects the positions that count
    (default all). The teacher is detached: no gradient reaches it. Equals
    ``T**2 * F.kl_div(log_softmax(s / T), log_softmax(t / T), log_target=True,
    reduction="batchmean")`` on the kept rows.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s, t = _flatten(student_logits, teacher_logits)  # (N, V)
    log_p_s = F.log_softmax(s.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(t.float() / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)  # (N,)
    if mask is not None:
        if mask.shape != student_logits.shape[:-1]:
            raise ShapeError(
                f"mask: expected shape {tuple(student_logits.shape[:-1])}, got {tuple(mask.shape)}"
            )
        kl = kl[mask.reshape(-1).bool()]
    if kl.numel() == 0:
        raise ValueError("soft_target_loss: no positions left after masking")
    return temperature**2 * kl.mean()


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
    ignore_index: int = -100,
) -> Tensor:
    """``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)``.

    ``student_logits``, ``teacher_logits``: (..., V); ``labels``: (...) long or ``None``
    (then ``alpha`` must be 1: pure soft-target distillation). Positions whose label is
    ``ignore_index`` are left out of *both* terms (e.g. prompt tokens or padding).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if labels is None:
        if alpha != 1.0:
            raise ValueError("labels=None needs alpha=1.0 (there is no hard-label term)")
        return soft_target_loss(student_logits, teacher_logits, temperature)
    if labels.shape != student_logits.shape[:-1]:
        raise ShapeError(
            f"labels: expected shape {tuple(student_logits.shape[:-1])} (logits without the "
            f"vocabulary dim), got {tuple(labels.shape)}"
        )
    keep = labels != ignore_index
    soft = soft_target_loss(student_logits, teacher_logits, temperature, keep)
    v = student_logits.shape[-1]
    hard = F.cross_entropy(
        student_logits.reshape(-1, v).float(), labels.reshape(-1), ignore_index=ignore_index
    )
    return alpha * soft + (1.0 - alpha) * hard
