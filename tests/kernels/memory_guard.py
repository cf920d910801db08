"""Memory checks for the Triton kernel tests: out-of-bounds accesses, unwritten outputs and
writes into inputs, the bugs that pass a value test on one shape and corrupt memory on another.

* :func:`bounds_checked_interpreter` (Triton's CPU interpreter only): every masked-in load and
  store of an interpreted kernel must fall inside the storage of one tensor passed to that
  launch, else :class:`OutOfBoundsAccess` is raised *before* the access, naming the kernel and
  the nearest argument. On a GPU the same bug silently overwrites a neighbouring allocation and
  surfaces much later (NaN weights, "illegal instruction", CUBLAS_STATUS_EXECUTION_FAILED); on
  the CPU it corrupts the heap ("munmap_chunk(): invalid pointer").
* :func:`poisoned_empty`: ``torch.empty`` / ``empty_like`` / ``empty_strided`` return floating
  tensors filled with NaN, so an output element that a kernel forgets to write shows up as NaN
  (the test-suite version of compute-sanitizer's initcheck).
* :func:`storage_bytes` / :func:`assert_storages_unchanged`: bit-exact snapshots of the whole
  storage behind each input (a view's neighbours included), to prove a kernel left it alone.

The cases files import the autouse fixture :func:`memory_checks`, so every case runs with the
first two switched on.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
import torch

__all__ = [
    "OutOfBoundsAccess",
    "bounds_checked_interpreter",
    "poisoned_empty",
    "storage_bytes",
    "assert_storages_unchanged",
    "memory_checks",
]


class OutOfBoundsAccess(AssertionError):
    """An interpreted kernel loaded or stored outside every tensor passed to its launch."""


Region = tuple[str, int, int]  # (argument name, first byte address, size in bytes)


def _regions(arg_names: Sequence[str], args: tuple, kwargs: dict) -> list[Region] | None:
    """Byte ranges of the storages of the launch's tensor arguments; None if any is off-CPU."""
    named = dict(zip(arg_names, args, strict=False)) | kwargs
    regions = []
    for name, value in named.items():
        if isinstance(value, torch.Tensor):
            if value.device.type != "cpu":  # the interpreter copies those: addresses differ
                return None
            storage = value.untyped_storage()
            regions.append((name, storage.data_ptr(), storage.nbytes()))
    return regions


def _describe(address: int, size: int, target: Region, regions: list[Region]) -> str:
    """Where ``address`` lies relative to the tensor the access targets, for the message."""
    name, start, nbytes = target
    if address < start:
        where = f"{start - address} bytes before the start of {name}"
    else:
        where = f"{address + size - (start + nbytes)} bytes past the end of {name}"
    hit = [n for n, lo, count in regions if lo <= address and address + size <= lo + count]
    inside = f", inside argument {hit[0]}" if hit else ", outside every argument"
    return f"address {address:#x} is {where} ({nbytes} bytes){inside}"


def _check_access(launch, kind: str, ptrs, mask) -> None:
    if launch is None or launch[1] is None:
        return
    kernel, regions = launch
    addresses = np.asarray(ptrs.data).astype(np.uint64)
    active = addresses[np.broadcast_to(np.asarray(mask.data, dtype=bool), addresses.shape)]
    if active.size == 0:
        return
    size = np.uint64(max(1, ptrs.get_element_ty().primitive_bitwidth // 8))
    # One load/store reads or writes one tensor, so all its addresses must lie in ONE
    # argument's storage; spilling into a neighbouring argument counts as out of bounds.
    best_inside, best_region = None, regions[0] if regions else ("(no tensor arguments)", 0, 0)
    for region in regions:
        _, start, nbytes = region
        inside = (active >= np.uint64(start)) & (active + size <= np.uint64(start + nbytes))
        if inside.all():
            return
        if best_inside is None or inside.sum() > best_inside.sum():
            best_inside, best_region = inside, region
    bad = active if best_inside is None else active[~best_inside]
    raise OutOfBoundsAccess(
        f"{kernel}: out-of-bounds {kind}: {bad.size} of {active.size} elements fall outside "
        f"argument {best_region[0]}; e.g. {_describe(int(bad[0]), int(size), best_region, regions)}. "
        f"Each access must stay inside one tensor passed to the kernel: check the grid, the "
        f"masks and the strides (an output indexed with an input's strides does this)."
    )


@contextlib.contextmanager
def bounds_checked_interpreter() -> Iterator[None]:
    """Within the block, interpreted kernel launches raise :class:`OutOfBoundsAccess` on any
    load or store outside the storages of their tensor arguments (plain load/store only: the
    course's kernels use no atomics or block pointers). Needs ``TRITON_INTERPRET=1``."""
    from triton.runtime import interpreter

    executor, builder = interpreter.GridExecutor, interpreter.InterpreterBuilder
    originals = (executor.__call__, builder.create_masked_load, builder.create_masked_store)
    current: list = [None]  # (kernel name, regions) of the launch being interpreted

    @functools.wraps(originals[0])
    def call(self, *args, **kwargs):
        previous = current[0]
        current[0] = (self.fn.__name__, _regions(self.arg_names, args, kwargs))
        try:
            return originals[0](self, *args, **kwargs)
        finally:
            current[0] = previous

    @functools.wraps(originals[1])
    def load(self, ptrs, mask, other, cache_policy, is_volatile):
        _check_access(current[0], "load", ptrs, mask)
        return originals[1](self, ptrs, mask, other, cache_policy, is_volatile)

    @functools.wraps(originals[2])
    def store(self, ptrs, value, mask, cache_policy):
        _check_access(current[0], "store", ptrs, mask)
        return originals[2](self, ptrs, value, mask, cache_policy)

    executor.__call__, builder.create_masked_load, builder.create_masked_store = call, load, store
    try:
        yield
    finally:
        executor.__call__, builder.create_masked_load, builder.create_masked_store = originals


@contextlib.contextmanager
def poisoned_empty(fill: float = float("nan")) -> Iterator[None]:
    """Within the block, new floating tensors from ``torch.empty*`` are filled with ``fill``."""
    names = ("empty", "empty_like", "empty_strided")
    originals = {name: getattr(torch, name) for name in names}

    def poison(allocate):
        @functools.wraps(allocate)
        def allocate_poisoned(*args, **kwargs):
            tensor = allocate(*args, **kwargs)
            if tensor.is_floating_point():
                with torch.no_grad():
                    tensor.fill_(fill)
            return tensor

        return allocate_poisoned

    for name in names:
        setattr(torch, name, poison(originals[name]))
    try:
        yield
    finally:
        for name in names:
            setattr(torch, name, originals[name])


def storage_bytes(t: torch.Tensor) -> torch.Tensor:
    """A copy of every byte of ``t``'s storage (the whole buffer when ``t`` is a view)."""
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage()).clone()


def assert_storages_unchanged(
    tensors: dict[str, torch.Tensor], before: dict[str, torch.Tensor], what: str
) -> None:
    """Each tensor's storage must be bit-identical to its :func:`storage_bytes` snapshot."""
    for name, t in tensors.items():
        now = storage_bytes(t)
        changed = int((now != before[name]).sum())
        assert changed == 0, (
            f"{what}: {changed} bytes of the storage behind {name} changed; a kernel wrote "
            f"into an input (or past the end of another tensor)"
        )


@pytest.fixture(autouse=True)
def memory_checks() -> Iterator[None]:
    """Autouse in the cases files: NaN-poisoned ``torch.empty*`` always, and bounds-checked
    loads/stores when the kernels run in the interpreter (``TRITON_INTERPRET=1``)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(poisoned_empty())
        if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
            stack.enter_context(bounds_checked_interpreter())
        yield
