"""AugmentSpec: what augmentation a loader applies, the same for every backend."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from .errors import ConfigError

POLICIES = ("none", "randaugment", "autoaugment", "trivialaugment")
AUTOAUGMENT_POLICIES = ("imagenet", "cifar10", "svhn")


@dataclass(frozen=True)
class AugmentSpec:
    """Augmentation policy at a parameterized magnitude.

    `magnitude` is a bin in ``0..num_magnitude_bins-1`` with torchvision's meaning, so
    ``AugmentSpec("randaugment", magnitude=9)`` is ``RandAugment(num_ops=2, magnitude=9)``.
    `magnitude_std` > 0 draws a per-image magnitude from N(magnitude, std) as timm does.
    `cutout` is the side of a square hole (pixels, 0 = off) applied after the policy.
    `array_crop_scale` (array sources only) trains on RandomResizedCrop(scale=(array_crop_scale, 1)) of the native
    image, resized to the loader's image size, instead of the 4-px zero-padded crop: the paper's CIFAR at 224 px.
    """

    policy: str = "none"
    magnitude: int = 9
    num_ops: int = 2
    num_magnitude_bins: int = 31
    magnitude_std: float = 0.0
    autoaugment_policy: str = "imagenet"
    cutout: int = 0
    array_crop_scale: Optional[float] = None

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"unknown augmentation policy {self.policy!r}: choose one of {', '.join(POLICIES)}")
        if self.num_magnitude_bins < 2:
            raise ConfigError(f"num_magnitude_bins must be at least 2, got {self.num_magnitude_bins}")
        if not 0 <= self.magnitude < self.num_magnitude_bins:
            raise ConfigError(
                f"magnitude {self.magnitude} is outside 0..{self.num_magnitude_bins - 1} "
                f"(a bin of {self.num_magnitude_bins}, as torchvision's RandAugment)")
        if self.num_ops < 1:
            raise ConfigError(f"num_ops must be at least 1, got {self.num_ops}")
        if self.magnitude_std < 0:
            raise ConfigError(f"magnitude_std must be >= 0, got {self.magnitude_std}")
        if self.magnitude_std > 0 and self.policy != "randaugment":
            raise ConfigError(f"magnitude_std applies to randaugment only, not {self.policy!r}: set it to 0")
        if self.autoaugment_policy not in AUTOAUGMENT_POLICIES:
            raise ConfigError(f"unknown AutoAugment policy {self.autoaugment_policy!r}: "
                              f"choose one of {', '.join(AUTOAUGMENT_POLICIES)}")
        if self.cutout < 0:
            raise ConfigError(f"cutout must be >= 0 pixels, got {self.cutout}")
        if self.array_crop_scale is not None and not 0 < self.array_crop_scale <= 1:
            raise ConfigError(f"array_crop_scale must be in (0, 1], got {self.array_crop_scale}")

    @property
    def enabled(self) -> bool:
        """True when the spec changes images at all."""
        return self.policy != "none" or self.cutout > 0

    def to_dict(self) -> dict:
        return asdict(self)
