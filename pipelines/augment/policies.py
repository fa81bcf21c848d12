"""Per-image policy samplers: RandAugment, AutoAugment, TrivialAugmentWide on uint8 NCHW batches, and
`BatchAugment`, an `AugmentSpec`'s policy and Cutout.

A policy first *samples* a plan for the whole batch — for each op slot, one op and one signed magnitude per image
(`OpSlot`) — using only the generator it is given, then *applies* it slot by slot with `ops.apply_slot`. Sampling
is separate so its statistics can be tested without touching pixels.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ..errors import ConfigError
from ..spec import AugmentSpec
from . import functional as F
from .ops import OP_INDEX, SpaceTable, apply_slot, space_table
from .space import (AUTOAUGMENT_BINS, AUTOAUGMENT_SPACE, RANDAUGMENT_SPACE, TRIVIALAUGMENT_SPACE,
                    autoaugment_subpolicies)
from .train_transforms import cutout


class OpSlot(NamedTuple):
    """One op per image: `ops` (N,) int64 indices into `space.OPS`, `magnitudes` (N,) float64 signed values, as
    torchvision passes them to the op (e.g. degrees for Rotate, 0.3 for ShearX at full strength)."""

    ops: torch.Tensor
    magnitudes: torch.Tensor


def _random_signs(table: SpaceTable, local_ops: torch.Tensor, magnitudes: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
    """Negate the magnitudes of signed ops with probability 1/2 (torchvision's ``torch.rand(()) <= 0.5``)."""
    negate = torch.rand(local_ops.shape, generator=generator, device=generator.device) <= 0.5
    return torch.where(negate & table.signed[local_ops], -magnitudes, magnitudes)


class BatchPolicy:
    """Base class: ``policy(images, generator)`` → the augmented uint8 batch, each image with its own sampled
    ops (a new tensor, or `images` itself when every sampled op is Identity)."""

    def __init__(self, interpolation: str = "nearest", fill: F.Fill = None) -> None:
        if interpolation not in ("nearest", "bilinear"):
            raise ConfigError(f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")
        self.interpolation, self.fill = interpolation, fill

    def sample(self, n: int, height: int, width: int, generator: torch.Generator) -> list:
        """The plan for a batch of n images of height × width: a list of `OpSlot`, applied in order."""
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        check_inputs(images, generator)
        n, _, height, width = images.shape
        for slot in self.sample(n, height, width, generator):
            images = apply_slot(images, slot.ops, slot.magnitudes, self.interpolation, self.fill)
        return images


def check_inputs(images: torch.Tensor, generator: torch.Generator) -> None:
    """Validate the batch (see `functional.check_images`) and that `generator` lives on the images' device."""
    F.check_images(images)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"augmentation needs a torch.Generator, got {type(generator).__name__}")
    device = generator.device
    if device.type != images.device.type or (device.index is not None and device.index != images.device.index):
        raise ValueError(f"the generator is on {generator.device} but the images are on {images.device}: "
                         f"create it with torch.Generator(device=images.device)")


class RandAugment(BatchPolicy):
    """RandAugment(num_ops, magnitude): each image gets `num_ops` ops drawn uniformly from the 14 of torchvision's
    RandAugment (Identity … Equalize), all at bin `magnitude` of `num_magnitude_bins`, signs drawn per image.

    `magnitude_std` > 0 (timm's ``mstd``): each image and op draws its bin from N(magnitude, std), clipped to
    [0, num_magnitude_bins − 1] and *not rounded* (as timm keeps it continuous): magnitudes are interpolated
    linearly between bins, which equals torchvision's linspace ranges evaluated at the fractional bin; Posterize,
    whose bits are integers, takes the nearest bin.
    """

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31,
                 magnitude_std: float = 0.0, interpolation: str = "nearest", fill: F.Fill = None) -> None:
        super().__init__(interpolation, fill)
        if num_magnitude_bins < 2:
            raise ConfigError(f"num_magnitude_bins must be at least 2, got {num_magnitude_bins}")
        if not 0 <= magnitude < num_magnitude_bins:
            raise ConfigError(f"magnitude {magnitude} is outside 0..{num_magnitude_bins - 1}")
        if num_ops < 1:
            raise ConfigError(f"num_ops must be at least 1, got {num_ops}")
        if magnitude_std < 0:
            raise ConfigError(f"magnitude_std must be >= 0, got {magnitude_std}")
        self.num_ops, self.magnitude, self.num_magnitude_bins = num_ops, magnitude, num_magnitude_bins
        self.magnitude_std = magnitude_std

    def sample(self, n: int, height: int, width: int, generator: torch.Generator) -> list:
        device = generator.device
        table = space_table(RANDAUGMENT_SPACE, self.num_magnitude_bins, height, width, device)
        slots = []
        for _ in range(self.num_ops):
            local = torch.randint(len(table.op_ids), (n,), generator=generator, device=device)
            if self.magnitude_std > 0:
                noise = torch.randn(n, generator=generator, device=device, dtype=torch.float64)
                bins = (self.magnitude + self.magnitude_std * noise).clamp_(0, self.num_magnitude_bins - 1)
            else:
                bins = torch.full((n,), self.magnitude, dtype=torch.int64, device=device)
            magnitudes = _random_signs(table, local, table.magnitudes(local, bins), generator)
            slots.append(OpSlot(table.op_ids[local], magnitudes))
        return slots


class TrivialAugmentWide(BatchPolicy):
    """TrivialAugmentWide: one op per image drawn uniformly from the 14, at a bin drawn uniformly from
    0..num_magnitude_bins − 1 per image, over torchvision's wide ranges."""

    def __init__(self, num_magnitude_bins: int = 31, interpolation: str = "nearest", fill: F.Fill = None) -> None:
        super().__init__(interpolation, fill)
        if num_magnitude_bins < 2:
            raise ConfigError(f"num_magnitude_bins must be at least 2, got {num_magnitude_bins}")
        self.num_magnitude_bins = num_magnitude_bins

    def sample(self, n: int, height: int, width: int, generator: torch.Generator) -> list:
        device = generator.device
        table = space_table(TRIVIALAUGMENT_SPACE, self.num_magnitude_bins, height, width, device)
        local = torch.randint(len(table.op_ids), (n,), generator=generator, device=device)
        bins = torch.randint(self.num_magnitude_bins, (n,), generator=generator, device=device)
        magnitudes = _random_signs(table, local, table.magnitudes(local, bins), generator)
        return [OpSlot(table.op_ids[local], magnitudes)]


class AutoAugment(BatchPolicy):
    """AutoAugment with the ImageNet, CIFAR10 or SVHN policy: each image draws one of the 25 sub-policies and
    applies each of its two steps with the step's probability, at the step's bin of 10."""

    def __init__(self, policy: str = "imagenet", interpolation: str = "nearest", fill: F.Fill = None) -> None:
        super().__init__(interpolation, fill)
        self.policy = policy
        subpolicies = autoaugment_subpolicies(policy)
        local_index = {name: i for i, name in enumerate(AUTOAUGMENT_SPACE)}
        #: per sub-policy and step: local op index, probability, magnitude bin
        self._steps = (torch.tensor([[local_index[op] for op, _, _ in sub] for sub in subpolicies]),
                       torch.tensor([[p for _, p, _ in sub] for sub in subpolicies], dtype=torch.float64),
                       torch.tensor([[b or 0 for _, _, b in sub] for sub in subpolicies]))
        self._steps_on: dict = {}

    def _steps_on_device(self, device: torch.device) -> tuple:
        if str(device) not in self._steps_on:
            self._steps_on[str(device)] = tuple(t.to(device) for t in self._steps)
        return self._steps_on[str(device)]

    def sample(self, n: int, height: int, width: int, generator: torch.Generator) -> list:
        device = generator.device
        table = space_table(AUTOAUGMENT_SPACE, AUTOAUGMENT_BINS, height, width, device)
        local_ops, probabilities, bins = self._steps_on_device(device)
        chosen = torch.randint(len(local_ops), (n,), generator=generator, device=device)
        slots = []
        for step in range(2):
            local = local_ops[:, step][chosen]
            draws = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
            applied = draws <= probabilities[:, step][chosen]
            magnitudes = table.magnitudes(local, bins[:, step][chosen])
            magnitudes = _random_signs(table, local, magnitudes, generator)
            ops = torch.where(applied, table.op_ids[local], OP_INDEX["Identity"])
            slots.append(OpSlot(ops, torch.where(applied, magnitudes, 0.0)))
        return slots


_POLICIES = {
    "randaugment": lambda spec: RandAugment(spec.num_ops, spec.magnitude, spec.num_magnitude_bins,
                                            spec.magnitude_std),
    "autoaugment": lambda spec: AutoAugment(spec.autoaugment_policy),
    "trivialaugment": lambda spec: TrivialAugmentWide(spec.num_magnitude_bins),
}


class BatchAugment:
    """An `AugmentSpec`'s augmentation: ``BatchAugment(spec)(images, generator)`` runs the spec's policy (if any),
    then Cutout (if ``spec.cutout > 0``), every image with its own draws.

    `images`: uint8 (N, C, H, W), C = 1 or 3, contiguous, CPU or CUDA; returns a uint8 batch of the same shape.
    Randomness comes from `generator` alone, which must live on the images' device.
    """

    def __init__(self, spec: AugmentSpec) -> None:
        if not isinstance(spec, AugmentSpec):
            raise TypeError(f"BatchAugment: spec must be an AugmentSpec, got {type(spec).__name__}")
        self.spec = spec
        self.policy: Optional[BatchPolicy] = _POLICIES[spec.policy](spec) if spec.policy in _POLICIES else None

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        check_inputs(images, generator)
        if self.policy is not None:
            images = self.policy(images, generator)
        if self.spec.cutout > 0:
            images = cutout(images, self.spec.cutout, generator)
        return images

    def __repr__(self) -> str:
        return f"BatchAugment({self.spec!r})"
