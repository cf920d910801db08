"""Small helpers shared by every part of the library: devices, seeding, input checks."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["resolve_device", "set_seed", "check_shape", "check_dtype", "ShapeError"]


class ShapeError(ValueError):
    """Raised when a tensor has the wrong shape; the message names expected and actual shapes."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"`` into ``cuda`` when a GPU is visible, else ``cpu``.

    ``LLMCOURSE_DEVICE`` overrides ``"auto"`` (e.g. ``LLMCOURSE_DEVICE=cpu`` on a GPU box).
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        device = os.environ.get("LLMCOURSE_DEVICE", "auto")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices) for reproducible runs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def check_shape(tensor: torch.Tensor, expected: Sequence[int | str | None], name: str) -> None:
    """Check ``tensor.shape`` against ``expected``.

    ``expected`` holds ints (must match), strings (named dims: equal names must have equal
    sizes) or ``None`` (anything). Raises :class:`ShapeError` naming both shapes, e.g.
    ``q: expected (B, T, 64), got (2, 5, 32)``.
    """
    shape = tuple(tensor.shape)
    pretty = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
    if len(shape) != len(expected):
        raise ShapeError(f"{name}: expected {len(expected)} dims {pretty}, got shape {shape}")
    named: dict[str, int] = {}
    for size, want in zip(shape, expected, strict=True):
        if want is None:
            continue
        if isinstance(want, str):
            if named.setdefault(want, size) != size:
                raise ShapeError(
                    f"{name}: expected {pretty} with equal sizes for '{want}', got shape {shape}"
                )
        elif size != want:
            raise ShapeError(f"{name}: expected {pretty}, got shape {shape}")


def check_dtype(tensor: torch.Tensor, allowed: Sequence[torch.dtype], name: str) -> None:
    """Raise ``TypeError`` listing the allowed dtypes when ``tensor.dtype`` is not one of them."""
    if tensor.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name}: dtype {str(tensor.dtype).replace('torch.', '')} is not supported; use one of: {names}")
