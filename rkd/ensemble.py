"""The teacher ensemble: T frozen models run on the same batch, giving logits (T, B, C) and feature maps."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from .checkpoint import load_model

TEACHER_BN_MODES = ("eval", "train")


class TeacherEnsemble(nn.Module):
    """Frozen teachers. `bn_mode="train"` keeps BatchNorm in train mode, as the paper's code did."""

    def __init__(self, teachers: Sequence[nn.Module], bn_mode: str = "eval") -> None:
        super().__init__()
        if bn_mode not in TEACHER_BN_MODES:
            raise ValueError(f"unknown teacher BatchNorm mode {bn_mode!r}: choose eval or train")
        self.teachers = nn.ModuleList(teachers)
        self.bn_mode = bn_mode
        for param in self.parameters():
            param.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "TeacherEnsemble":
        """Teachers stay in eval mode unless bn_mode is 'train' (then BatchNorm uses batch statistics)."""
        super().train(False)
        if getattr(self, "bn_mode", "eval") == "train":
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.train(True)
        return self

    def __len__(self) -> int:
        return len(self.teachers)

    @torch.no_grad()
    def forward_with_features(self, images: torch.Tensor) -> tuple:
        """(logits (T, B, C), last feature maps (T, B, K, h, w)) in one pass per teacher."""
        features = [teacher.forward_features(images) for teacher in self.teachers]
        logits = [teacher.forward_head(f) for teacher, f in zip(self.teachers, features)]
        return torch.stack(logits), torch.stack(features)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (T, B, C)."""
        return torch.stack([teacher(images) for teacher in self.teachers])


def load_ensemble(paths: Sequence[Path], device: torch.device, *, num_classes: int, in_chans: int,
                  bn_mode: str = "eval") -> tuple:
    """Load teacher checkpoints into a TeacherEnsemble; returns (ensemble, list of (path, arch))."""
    models, described = [], []
    for path in paths:
        model, payload = load_model(path, device, num_classes=num_classes, in_chans=in_chans)
        models.append(model.to(memory_format=torch.channels_last))
        described.append((str(path), payload["arch"]))
    return TeacherEnsemble(models, bn_mode).to(device), described
