"""Batched per-image augmentation on uint8 NCHW batches, CPU or CUDA: RandAugment, AutoAugment, TrivialAugmentWide,
Cutout, and the plain train transforms — every image with its own ops, magnitudes and signs.

Layers, as torchvision v2: `space` (op set, ranges, signs, AutoAugment tables), `functional` (kernels taking
per-image parameters, dispatched per device through `registry`), `ops` (applying ops by name, grouped),
`policies` (samplers), `train_transforms` (crops, flip, Cutout). The entry point, one per spec:

    augment = BatchAugment(AugmentSpec("randaugment", magnitude=9, cutout=16))
    images = augment(images_uint8_nchw, torch.Generator(device=images.device).manual_seed(0))
"""
from __future__ import annotations

from ..spec import AugmentSpec
from . import functional, space
from .ops import apply_op, apply_slot
from .policies import AutoAugment, BatchAugment, BatchPolicy, OpSlot, RandAugment, TrivialAugmentWide
from .space import OPS
from .train_transforms import (cutout, cutout_boxes, erase, horizontal_flip, random_horizontal_flip,
                               random_resized_crop_boxes, resized_crop)

__all__ = ["OPS", "AugmentSpec", "AutoAugment", "BatchAugment", "BatchPolicy", "OpSlot", "RandAugment",
           "TrivialAugmentWide", "apply_op", "apply_slot", "cutout", "cutout_boxes", "erase", "functional",
           "horizontal_flip", "random_horizontal_flip", "random_resized_crop_boxes", "resized_crop", "space"]
