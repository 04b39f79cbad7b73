"""torchrun support: DDP on gloo (CPU) or nccl (CUDA); a no-op in a single process."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun set up (WORLD_SIZE > 1), else return a single-process info."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def broadcast_object(info: DistInfo, obj):
    """Rank 0's `obj` on every rank."""
    if info.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_over_ranks(info: DistInfo, values: list[float]) -> list[float]:
    """Element-wise sum of `values` over the ranks (the values themselves with one process)."""
    if info.world == 1:
        return values
    box = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(box)
    return box.tolist()


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
