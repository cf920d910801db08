"""Assertions for the chapters' graded tests: a failure says what was expected, what came back,
and, when it recognises a common mistake, names it.

Example::

    check_close(adam_step(...), expected, "theta after 3 Adam steps",
                hints={"Adam without bias correction": value_without_correction})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["check_close", "check_shape", "check_equal", "check_raises", "ExerciseFailure"]


class ExerciseFailure(AssertionError):
    """A graded test failed; the message is written for the student."""


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def _fmt(value: Any) -> str:
    arr = _as_array(value)
    if arr.size > 12:
        return f"array of shape {arr.shape} (first values {np.array2string(arr.ravel()[:6], precision=5)} ...)"
    return np.array2string(arr, precision=6, suppress_small=True)


def check_shape(actual: Any, expected: Sequence[int], what: str) -> None:
    """Fail unless ``actual`` (tensor or array) has shape ``expected``."""
    shape = tuple(getattr(actual, "shape", np.shape(actual)))
    if shape != tuple(expected):
        raise ExerciseFailure(f"{what}: expected shape {tuple(expected)}, got {shape}")


def check_close(
    actual: Any,
    expected: Any,
    what: str,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    hints: Mapping[str, Callable[[np.ndarray], bool] | Any] | None = None,
) -> None:
    """Fail unless ``actual`` matches ``expected`` within tolerance.

    ``hints`` maps a mistake's name to either a value that mistake produces or a predicate on
    the student's result; when it matches, the message names the mistake.
    """
    if actual is None:
        raise ExerciseFailure(f"{what}: your code returned None (did you forget `return`?)")
    got, want = _as_array(actual), _as_array(expected)
    if got.shape != want.shape:
        raise ExerciseFailure(f"{what}: expected shape {want.shape}, got {got.shape}")
    if not np.all(np.isfinite(got)) and np.all(np.isfinite(want)):
        raise ExerciseFailure(f"{what}: your result contains NaN or inf: {_fmt(got)}")
    if np.allclose(got, want, atol=atol, rtol=rtol):
        return
    message = f"{what}: expected {_fmt(want)}, got {_fmt(got)}"
    for mistake, probe in (hints or {}).items():
        matched = probe(got) if callable(probe) else (
            _as_array(probe).shape == got.shape and np.allclose(got, _as_array(probe), atol=atol, rtol=rtol)
        )
        if matched:
            message += f"\n  This looks like a common mistake: {mistake}."
            break
    raise ExerciseFailure(message)


def check_equal(actual: Any, expected: Any, what: str) -> None:
    """Fail unless ``actual == expected`` (for ints, strings, lists...)."""
    if actual != expected:
        raise ExerciseFailure(f"{what}: expected {expected!r}, got {actual!r}")


def check_raises(fn: Callable[[], Any], error: type[BaseException], what: str) -> None:
    """Fail unless calling ``fn()`` raises ``error``."""
    try:
        fn()
    except error:
        return
    except NotImplementedError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported to the student
        raise ExerciseFailure(f"{what}: expected {error.__name__}, got {type(exc).__name__}: {exc}") from exc
    raise ExerciseFailure(f"{what}: expected {error.__name__} to be raised, but nothing was raised")
