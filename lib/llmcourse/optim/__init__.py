"""Optimizers, learning-rate schedules and gradient clipping, written out from the equations."""

from llmcourse.optim.clipping import clip_grad_norm, global_grad_norm
from llmcourse.optim.groups import weight_decay_groups
from llmcourse.optim.optimizers import SGD, Adam, AdamW, RMSProp
from llmcourse.optim.schedules import WarmupCosine, lr_at, warmup_cosine_scheduler

__all__ = [
    "SGD",
    "RMSProp",
    "Adam",
    "AdamW",
    "lr_at",
    "WarmupCosine",
    "warmup_cosine_scheduler",
    "clip_grad_norm",
    "global_grad_norm",
    "weight_decay_groups",
]
