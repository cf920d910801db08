"""Turn nested training state into safetensors tensors + JSON, and back, without pickle.

Optimizer ``state_dict()``s, RNG states and sampler states are nested dicts/lists of tensors,
numbers, strings, tuples and ``None``. :func:`pack` moves every tensor into a flat
``{key: tensor}`` mapping (saved with safetensors) and returns a JSON skeleton that refers to
them; :func:`unpack` reverses it exactly (int dict keys and tuples included).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["pack", "unpack", "capture_rng_state", "restore_rng_state"]

_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


def pack(obj: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """JSON-able skeleton of ``obj``; its tensors go to ``tensors`` under keys ``prefix/...``."""
    if isinstance(obj, Tensor):
        key = prefix
        if key in tensors:
            raise ValueError(f"duplicate tensor key {key!r} while packing state")
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not ({_TENSOR, _TUPLE, _ITEMS} & set(obj)):
            return {k: pack(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(
                    f"cannot save dict key {k!r} of type {type(k).__name__} in {prefix}"
                )
            items.append([k, pack(v, f"{prefix}/{k}", tensors)])
        return {_ITEMS: items}
    if isinstance(obj, tuple):
        return {_TUPLE: [pack(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [pack(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(
        f"cannot save {prefix!r} of type {type(obj).__name__}: only tensors, numbers, strings, "
        "None and (nested) lists, tuples and dicts are stored in checkpoints"
    )


def unpack(skeleton: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of :func:`pack`."""
    if isinstance(skeleton, dict):
        if _TENSOR in skeleton:
            key = skeleton[_TENSOR]
            if key not in tensors:
                raise KeyError(f"tensor {key!r} is missing from the checkpoint's tensor file")
            return tensors[key]
        if _TUPLE in skeleton:
            return tuple(unpack(v, tensors) for v in skeleton[_TUPLE])
        if _ITEMS in skeleton:
            return {k: unpack(v, tensors) for k, v in skeleton[_ITEMS]}
        return {k: unpack(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unpack(v, tensors) for v in skeleton]
    return skeleton


def capture_rng_state() -> dict[str, Any]:
    """The state of Python's, NumPy's and PyTorch's (CPU and CUDA) global generators."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators captured by :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
