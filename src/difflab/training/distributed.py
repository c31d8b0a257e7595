"""PyTorch distributed set-up for torchrun: one process per device, DDP, rank-0-only I/O.

`torchrun --nproc_per_node N -m difflab.cli train ...` sets RANK / WORLD_SIZE / LOCAL_RANK;
this module turns them into a process group (NCCL on GPUs, Gloo on CPUs) and leaves a single
process untouched, so the same trainer runs on a laptop, one GPU or many nodes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from difflab.hardware import pick_device

T = TypeVar("T")


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    local_world_size: int = 1  # processes on this machine, which share its cores

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_rank() -> int:
    """This process's rank as torchrun set it in the environment (0 when not launched by
    torchrun): what the command line reads before any process group exists."""
    return int(os.environ.get("RANK", "0"))


def setup(device: str | None = None) -> DistInfo:
    """Initialise the process group when launched by torchrun; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = launched_rank()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device).device
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return DistInfo(rank, world, local, dev, local_world)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average a tensor over ranks (for logging the global loss)."""
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


def all_reduce_max(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The largest value of a tensor over ranks (e.g. whether any rank was asked to stop)."""
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value


def broadcast_object(obj: T, info: DistInfo) -> T:
    """Rank 0's `obj` on every rank (a choice all ranks must share)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=info.device if info.device.type == "cuda"
                               else None)
    return box[0]


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
