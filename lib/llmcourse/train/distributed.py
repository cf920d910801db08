"""Data-parallel helpers around ``torch.distributed`` (DDP): start-up, reductions, gathers.

Launch a script with ``torchrun --nproc_per_node N ...``; torchrun sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE`` and the rendezvous address, and :func:`init_distributed` joins
the process group (``gloo`` on CPU, ``nccl`` on CUDA). Every rank holds a full copy of the
model; DDP averages the gradients across ranks during ``backward``, so N ranks with batch B
each take the same step as one process with batch N * B.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from llmcourse.utils import resolve_device

__all__ = [
    "DistInfo",
    "init_distributed",
    "cleanup_distributed",
    "dist_info",
    "all_reduce_mean",
    "gather_objects",
    "barrier",
]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the rank that logs and writes checkpoints)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_distributed(device: str | torch.device = "auto", backend: str | None = None) -> DistInfo:
    """Join the process group if launched by torchrun; otherwise describe a single process.

    On CUDA each rank uses ``cuda:LOCAL_RANK``. Safe to call twice.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(device=resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if dev.type == "cuda" else "gloo"))
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def cleanup_distributed() -> None:
    """Leave the process group (no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def dist_info(device: torch.device | None = None) -> DistInfo:
    """Rank and world size of an already initialised group (rank 0 of 1 otherwise)."""
    dev = device or torch.device("cpu")
    if not _active():
        return DistInfo(device=dev)
    return DistInfo(
        rank=dist.get_rank(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=dist.get_world_size(),
        device=dev,
    )


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over all ranks (a copy; ``value`` itself when running alone)."""
    if not _active():
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` when running alone).

    The objects travel between this job's own processes; nothing is read from disk.
    """
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (no-op when running alone)."""
    if _active():
        dist.barrier()
