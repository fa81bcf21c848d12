"""AugmentSpec: what augmentation a loader applies, the same for every backend."""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Optional

from .errors import ConfigError

POLICIES = ("none", "randaugment", "autoaugment", "trivialaugment")
AUTOAUGMENT_POLICIES = ("imagenet", "cifar10", "svhn")

# The plain transforms every backend shares (torchvision's ImageNet recipe and the CIFAR padded crop).
EVAL_CROP_FRACTION = 0.875          # evaluation: Resize(round(S / 0.875)) then CenterCrop(S)
ARRAY_CROP_PADDING = 4              # array sources train on a crop of the image zero-padded by 4 px
RRC_SCALE = (0.08, 1.0)             # RandomResizedCrop's area fraction range
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's aspect-ratio range


def is_whole(value) -> bool:
    """True for an integer (Python or numpy), False for bools, floats (even 9.0), NaN and anything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def whole_number(api: str, name: str, value, minimum: int, unit: str = "") -> int:
    """`value` when it is an integer >= `minimum`; else a one-line ConfigError naming `api`'s parameter `name`."""
    if not is_whole(value) or value < minimum:
        raise ConfigError(f"{api}: {name} must be an integer >= {minimum}{unit}, got {value!r}")
    return int(value)


def optional_whole_number(api: str, name: str, value: Optional[int], minimum: int) -> Optional[int]:
    """`whole_number` that lets None through (the parameter's default)."""
    return None if value is None else whole_number(api, name, value, minimum)


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
            raise ConfigError(f"AugmentSpec: unknown policy {self.policy!r}: choose one of {', '.join(POLICIES)}")
        whole_number("AugmentSpec", "num_magnitude_bins", self.num_magnitude_bins, minimum=2)
        last = self.num_magnitude_bins - 1
        if not is_whole(self.magnitude):
            raise ConfigError(f"AugmentSpec: magnitude must be an integer bin in 0..{last}, got {self.magnitude!r}")
        if not 0 <= self.magnitude <= last:
            raise ConfigError(f"AugmentSpec: magnitude {self.magnitude} is outside 0..{last} "
                              f"(a bin of {self.num_magnitude_bins}, as torchvision's RandAugment)")
        whole_number("AugmentSpec", "num_ops", self.num_ops, minimum=1)
        if not (isinstance(self.magnitude_std, numbers.Real) and not isinstance(self.magnitude_std, bool)
                and math.isfinite(self.magnitude_std) and self.magnitude_std >= 0):
            raise ConfigError(f"AugmentSpec: magnitude_std must be a finite number >= 0, got {self.magnitude_std!r}")
        if self.magnitude_std > 0 and self.policy != "randaugment":
            raise ConfigError(f"AugmentSpec: magnitude_std applies to randaugment only, not {self.policy!r}: "
                              "set it to 0")
        if self.autoaugment_policy not in AUTOAUGMENT_POLICIES:
            raise ConfigError(f"AugmentSpec: unknown autoaugment_policy {self.autoaugment_policy!r}: "
                              f"choose one of {', '.join(AUTOAUGMENT_POLICIES)}")
        whole_number("AugmentSpec", "cutout", self.cutout, minimum=0, unit=" pixels")
        if self.array_crop_scale is not None and not (isinstance(self.array_crop_scale, numbers.Real)
                                                      and 0 < self.array_crop_scale <= 1):
            raise ConfigError(f"AugmentSpec: array_crop_scale must be in (0, 1], got {self.array_crop_scale!r}")

    @property
    def enabled(self) -> bool:
        """True when the spec changes images at all."""
        return self.policy != "none" or self.cutout > 0

    def to_dict(self) -> dict:
        return asdict(self)
