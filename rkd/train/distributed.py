"""torch.distributed set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE_PROCESS = DistInfo(0, 1, 0)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' → this rank's CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def init_distributed(device_name: str) -> tuple:
    """Join the process group when launched by torchrun; returns (DistInfo, device)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return SINGLE_PROCESS, resolve_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank), device


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def gather_to_main(value, info: DistInfo) -> Optional[list]:
    """Every rank's (picklable) `value` in rank order on the main process, None on the others; [value] alone."""
    if info.world_size == 1:
        return [value]
    gathered = [None] * info.world_size if info.is_main else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def log(message: str) -> None:
    """Print on the main process only (torchrun sets RANK; a single process is rank 0)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(message, flush=True)


def broadcast_from_main(value, info: DistInfo):
    """The main process's (picklable) `value` on every rank; `value` itself in a single process."""
    if info.world_size == 1:
        return value
    box = [value if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
