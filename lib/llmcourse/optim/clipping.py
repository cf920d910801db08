"""Global-norm gradient clipping (the same computation as ``torch.nn.utils.clip_grad_norm_``)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["global_grad_norm", "clip_grad_norm"]


def _grads(parameters: Tensor | Iterable[Tensor]) -> list[Tensor]:
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


def global_grad_norm(parameters: Tensor | Iterable[Tensor], norm_type: float = 2.0) -> Tensor:
    """Norm of all gradients viewed as one long vector (0-dim tensor).

    Computed as the ``norm_type``-norm of the per-tensor norms, which equals the norm of the
    concatenation and never materialises it. ``norm_type=inf`` gives the largest ``|g|``.
    """
    grads = _grads(parameters)
    if not grads:
        return torch.tensor(0.0)
    norm_type = float(norm_type)
    device = grads[0].device
    per_tensor = [torch.linalg.vector_norm(g, norm_type).to(device) for g in grads]
    return torch.linalg.vector_norm(torch.stack(per_tensor), norm_type)


def clip_grad_norm(
    parameters: Tensor | Iterable[Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> Tensor:
    """Rescale gradients in place so that their global norm is at most ``max_norm``.

    Every gradient is multiplied by ``min(1, max_norm / (total_norm + 1e-6))``; the direction
    of the full gradient is kept. Returns the total norm *before* clipping (0-dim tensor), which
    is worth logging: spikes in it precede loss spikes.
    """
    if max_norm <= 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    total = global_grad_norm(params, norm_type)
    if error_if_nonfinite and not torch.isfinite(total):
        raise RuntimeError(
            f"the total gradient norm is {total.item()}; gradients contain NaN or inf "
            "(set error_if_nonfinite=False to clip anyway)"
        )
    scale = torch.clamp(float(max_norm) / (total + 1e-6), max=1.0)
    for g in _grads(params):
        g.mul_(scale.to(g.device))
    return total
