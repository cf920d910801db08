"""Which implementation runs: the Triton kernels or the plain-PyTorch references.

The environment variable ``LLMCOURSE_KERNELS`` selects, and is read at every call:

* ``auto`` (default): Triton for CUDA tensors when Triton is installed and the kernel supports
  the input (dtype, sizes); the reference otherwise (CPU tensors, float64, ...).
* ``triton``: always Triton. Raises a clear error when that cannot work (no Triton, a CPU
  tensor without the interpreter, an unsupported input).
* ``reference``: always the plain-PyTorch reference.

Triton kernels can also run on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``
set before ``triton`` is imported); the tests use this. ``auto`` never picks that slow path.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

__all__ = [
    "BACKEND_ENV_VAR",
    "BACKENDS",
    "requested_backend",
    "triton_available",
    "interpreter_enabled",
    "choose_backend",
]

BACKEND_ENV_VAR = "LLMCOURSE_KERNELS"
BACKENDS = ("auto", "triton", "reference")


def requested_backend() -> str:
    """The backend asked for by ``LLMCOURSE_KERNELS`` (``"auto"`` when unset)."""
    value = os.environ.get(BACKEND_ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(
            f"{BACKEND_ENV_VAR}={value!r} is not a kernel backend; use one of: {', '.join(BACKENDS)}"
        )
    return value


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when ``import triton`` works (Linux wheels only)."""
    try:
        importlib.import_module("triton")
    except Exception:  # ImportError, or a broken install raising something else
        return False
    return True


def interpreter_enabled() -> bool:
    """True when Triton's CPU interpreter is switched on (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def choose_backend(kernel: str, device: torch.device, unsupported: str | None) -> str:
    """Return ``"triton"`` or ``"reference"`` for one call of ``kernel``.

    ``unsupported`` is ``None`` when the Triton kernel handles this input, else a sentence
    saying why not and what is supported; a forced ``triton`` backend raises it.
    """
    wanted = requested_backend()
    if wanted == "reference":
        return "reference"
    if wanted == "auto":
        use_triton = device.type == "cuda" and unsupported is None and triton_available()
        return "triton" if use_triton else "reference"
    # Forced Triton: fail loudly instead of quietly running something else.
    fix = f"set {BACKEND_ENV_VAR}=auto or {BACKEND_ENV_VAR}=reference"
    if not triton_available():
        raise RuntimeError(
            f"{kernel}: {BACKEND_ENV_VAR}=triton but Triton is not installed "
            f"(pip install triton, Linux only); or {fix}"
        )
    if device.type != "cuda" and not interpreter_enabled():
        raise RuntimeError(
            f"{kernel}: {BACKEND_ENV_VAR}=triton needs CUDA tensors, got device '{device}'. "
            f"Move the inputs to the GPU, run with TRITON_INTERPRET=1 (slow CPU interpreter, "
            f"for tests), or {fix}"
        )
    if unsupported is not None:
        raise ValueError(f"{kernel}: the Triton kernel does not support this input: {unsupported}")
    return "triton"
