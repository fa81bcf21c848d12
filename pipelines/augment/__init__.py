"""Batched per-image augmentation on uint8 NCHW batches, CPU or CUDA: RandAugment, AutoAugment, TrivialAugmentWide,
Cutout, and the plain train transforms — every image with its own ops, magnitudes and signs.

Layers, as torchvision v2: `functional` (kernels taking per-image parameters), `ops` (op names, magnitude ranges,
grouped application), `policies` (samplers), `train_transforms` (crop boxes, flip, erasing). Entry point:

    augment = build_policy(AugmentSpec("randaugment", magnitude=9, cutout=16))
    images = augment(images_uint8_nchw, torch.Generator(device=images.device).manual_seed(0))
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..spec import AugmentSpec
from . import functional
from .ops import OPS, apply_op, apply_slot
from .policies import AutoAugment, BatchPolicy, OpSlot, RandAugment, TrivialAugmentWide, check_inputs
from .train_transforms import (cutout, cutout_boxes, erase, horizontal_flip, random_erasing, random_erasing_boxes,
                               random_horizontal_flip, random_resized_crop_boxes, resized_crop)

__all__ = ["OPS", "AugmentSpec", "AutoAugment", "BatchAugment", "BatchPolicy", "OpSlot", "RandAugment",
           "TrivialAugmentWide", "apply_op", "apply_slot", "build_policy", "cutout", "cutout_boxes", "erase",
           "functional", "horizontal_flip", "make_policy", "random_erasing", "random_erasing_boxes",
           "random_horizontal_flip", "random_resized_crop_boxes", "resized_crop"]


def make_policy(spec: AugmentSpec) -> Optional[BatchPolicy]:
    """The policy sampler a spec names (None for "none")."""
    builders = {
        "none": lambda: None,
        "randaugment": lambda: RandAugment(spec.num_ops, spec.magnitude, spec.num_magnitude_bins, spec.magnitude_std),
        "autoaugment": lambda: AutoAugment(spec.autoaugment_policy),
        "trivialaugment": lambda: TrivialAugmentWide(spec.num_magnitude_bins),
    }
    return builders[spec.policy]()


class BatchAugment:
    """A spec's augmentation: the policy (if any), then Cutout (if ``spec.cutout > 0``), per image."""

    def __init__(self, spec: AugmentSpec) -> None:
        if not isinstance(spec, AugmentSpec):
            raise TypeError(f"build_policy expects an AugmentSpec, got {type(spec).__name__}")
        self.spec = spec
        self.policy = make_policy(spec)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        check_inputs(images, generator)
        if self.policy is not None:
            images = self.policy(images, generator)
        if self.spec.cutout > 0:
            images = cutout(images, self.spec.cutout, generator)
        return images


def build_policy(spec: AugmentSpec) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """``augment(images, generator)`` for `spec`: uint8 (N, C, H, W) in (C = 1 or 3, contiguous, CPU or CUDA),
    a uint8 batch of the same shape out; randomness comes from `generator` alone (on the images' device)."""
    return BatchAugment(spec)
