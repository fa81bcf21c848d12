"""Evaluation: logits over a whole (deterministic) loader, with bf16 autocast on CUDA."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Iterable

import torch
import torch.nn as nn


def autocast_for(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (when enabled); nothing on CPU."""
    device = torch.device(device)
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def predict_logits(model: nn.Module, loader: Iterable, device: torch.device, amp: bool = True) -> tuple:
    """(logits (N, C) float32 on CPU, labels (N,)) for every batch of `loader`, model in eval mode."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for images, targets in loader:
        with autocast_for(device, amp):
            logits.append(model(images).float().cpu())
        labels.append(targets.cpu())
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)
