"""Evaluation: logits over a whole (deterministic) loader, with bf16 autocast on CUDA, sharded over ranks.

Under torchrun every rank evaluates whole batches of the single-process batching (batches rank, rank + world
size, ...), and the per-batch results are gathered to the main process in that batching's order: each logit is
computed in exactly the batch one process would have used, so the metrics equal the single-process evaluation.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Iterable, Optional

import torch
import torch.nn as nn

from .distributed import SINGLE_PROCESS, DistInfo, gather_to_main


def autocast_for(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (when enabled); nothing on CPU."""
    device = torch.device(device)
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def batch_shard(size: int, batch_size: int, dist: DistInfo) -> torch.Tensor:
    """Sample positions of this rank's share of an evaluation set of `size`: its whole batches, in order."""
    batches = torch.arange(size).split(batch_size)
    mine = batches[dist.rank::dist.world_size]
    return torch.cat(mine) if mine else torch.zeros(0, dtype=torch.long)


def gather_batches(local: list, dist: DistInfo) -> Optional[list]:
    """Every rank's per-batch results (from a `batch_shard` loader) in the single-process batch order, on the
    main process; None on the others."""
    per_rank = gather_to_main(local, dist)
    if per_rank is None:
        return None
    count = sum(len(results) for results in per_rank)
    return [per_rank[b % dist.world_size][b // dist.world_size] for b in range(count)]


@torch.no_grad()
def batch_logits(model: nn.Module, loader: Iterable, device: torch.device, amp: bool = True) -> list:
    """[(logits (B, C) float32 on CPU, labels (B,))] for every batch of `loader`, model in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    for images, targets in loader:
        with autocast_for(device, amp):
            out.append((model(images).float().cpu(), targets.cpu()))
    model.train(was_training)
    return out


def predict_logits(model: nn.Module, loader: Iterable, device: torch.device, amp: bool = True,
                   dist: DistInfo = SINGLE_PROCESS) -> Optional[tuple]:
    """(logits (N, C), labels (N,)) of the whole evaluation set on the main process (None on the others);
    under torchrun `loader` is this rank's `batch_shard` of it."""
    batches = gather_batches(batch_logits(model, loader, device, amp), dist)
    if batches is None:
        return None
    if not batches:
        raise ValueError("predict_logits: the evaluation set is empty")
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
