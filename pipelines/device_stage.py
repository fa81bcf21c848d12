"""The last stage of every backend, on the training device: augmentation policy, normalization, channels_last."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .sampling import derive_seed
from .spec import AugmentSpec

BatchPolicy = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class DeviceStage:
    """Turns a uint8 NCHW batch (any device) into normalized float channels_last images on `device`.

    When `augment` is enabled, `pipelines.augment` applies it to the whole batch on the device, each image with
    its own ops and magnitudes, seeded by (seed, epoch, rank, batch index): the same batch is augmented the same
    way whatever the number of workers.
    """

    def __init__(self, mean: tuple, std: tuple, device: torch.device, augment: Optional[AugmentSpec] = None,
                 seed: int = 0, rank: int = 0) -> None:
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) * 255.0)
        self.policy: Optional[BatchPolicy] = None
        if augment is not None and augment.enabled:
            from .augment import BatchAugment
            self.policy = BatchAugment(augment)
        self.seed, self.rank = seed, rank

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, batch_index: int):
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.policy is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(derive_seed(self.seed, epoch, self.rank, batch_index, 0xA0))
            images = self.policy(images.contiguous(), generator)
        images = (images.float() - self.mean) * self.inv_std
        return images.contiguous(memory_format=torch.channels_last), labels
