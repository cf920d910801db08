"""Launching a Triton kernel with the first tile configuration the GPU can hold.

GPUs differ in shared memory per block (T4: 64 KiB, L4 and consumer cards: about 100 KiB,
A100: 164 KiB, H100: 228 KiB). Big tiles are faster but may not fit; Triton reports that at
launch time with ``OutOfResources``, before the kernel runs. :func:`launch_first_fitting` tries
the configurations in order (fastest first), remembers which one worked for this kernel, input
kind and GPU, and goes straight to it next time. A lightweight version of ``triton.autotune``
that picks for fit, not speed, and needs no timing runs.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

from triton.runtime.errors import OutOfResources

__all__ = ["launch_first_fitting"]

_FITTING: dict[Hashable, int] = {}  # cache key -> index of the first configuration that fits


def launch_first_fitting(
    kernel: Any,
    grid: Callable[[dict[str, int]], tuple[int, ...]],
    args: Sequence[Any],
    constexprs: dict[str, Any],
    configs: Sequence[dict[str, int]],
    cache_key: Hashable,
) -> dict[str, int]:
    """Launch ``kernel[grid(config)](*args, **constexprs, **config)`` for the first config that fits.

    ``config`` holds tile sizes and the launch options ``num_warps`` / ``num_stages``.
    Returns the configuration used.
    """
    first = _FITTING.get(cache_key, 0)
    errors = []
    for index in range(first, len(configs)):
        config = configs[index]
        try:
            kernel[grid(config)](*args, **constexprs, **config)
        except OutOfResources as err:  # raised before the launch: nothing was written
            errors.append(f"{config}: {err}")
            continue
        _FITTING[cache_key] = index
        return config
    raise RuntimeError(
        f"no tile configuration of {getattr(kernel, '__name__', kernel)} fits this GPU:\n"
        + "\n".join(errors)
    )
