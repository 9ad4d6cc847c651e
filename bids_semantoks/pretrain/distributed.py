"""Process-group set-up for ``torchrun`` (single- or multi-node) and small helpers.

The same command runs on one process or under ``torchrun --nproc-per-node N
[--nnodes M ...]``: torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``, and
:func:`init_distributed` then joins the process group (NCCL on GPUs, gloo on CPU) and
binds the process to ``cuda:LOCAL_RANK``. A process group created by the caller (tests)
is used as is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "resolve_device", "barrier", "all_mean"]


@dataclass(frozen=True)
class DistInfo:
    """Rank, world size and device of this process."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``'auto'`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if there is one; return this process's place in it."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device, local_rank)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)
    return DistInfo(0, 1, 0, dev)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``t`` over the processes (``t`` itself on one process)."""
    if info.distributed:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= info.world_size
    return t
