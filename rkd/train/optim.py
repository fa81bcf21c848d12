"""SGD with linear warm-up and a cosine or step schedule, updated every step (timm's schedulers)."""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler

from ..config import OptimConfig


def make_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.SGD:
    """SGD with Nesterov momentum; no weight decay on biases and normalization parameters."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)


def make_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, steps_per_epoch: int):
    """A per-step schedule: call `.step_update(num_updates=global_step)` after each optimizer step."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    common = dict(warmup_t=warmup, warmup_lr_init=config.lr * 0.01, t_in_epochs=False)
    if config.schedule == "cosine":
        return CosineLRScheduler(optimizer, t_initial=total, lr_min=config.lr * 1e-3, **common)
    return MultiStepLRScheduler(optimizer, decay_t=[int(m * total) for m in config.milestones], decay_rate=0.1,
                                warmup_prefix=False, **common)
