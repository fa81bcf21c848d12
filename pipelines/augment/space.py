"""The augmentation space, defined once: the op set, each policy's magnitude ranges and signs, and AutoAugment's
learned sub-policies.

Everything here follows torchvision v2 (``RandAugment``/``AutoAugment``/``TrivialAugmentWide``'s
``_AUGMENTATION_SPACE`` and ``AutoAugment``'s policy tables; the tests compare them). Both appliers are built from
it: `ops`/`policies` (batched torch kernels) and `pipelines.dali.suite` (a DALI auto_aug suite).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from ..errors import ConfigError

#: every op of the three policies, grouped by kernel family (`ops` applies each family's run of indices at once):
#: Identity, the five geometric ops, the two pixel blends, the seven lookup-table ops.
OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Color", "Sharpness", "Brightness",
       "Contrast", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert")


@dataclass(frozen=True)
class MagnitudeRange:
    """How bin b of `num_bins` maps to an op's magnitude (a row of torchvision's augmentation space).

    kind "linear": linspace(start, end); "width"/"height": linspace(start, end · image width/height);
    "bits": round(start − b / ((num_bins − 1) / end)) (Posterize); "none": the op takes no magnitude.
    Signed ops are negated with probability 1/2.
    """

    kind: str = "none"
    start: float = 0.0
    end: float = 0.0
    signed: bool = False

    @property
    def has_magnitude(self) -> bool:
        """Whether the op takes a magnitude at all."""
        return self.kind != "none"

    def values(self, num_bins: int, height: int, width: int) -> torch.Tensor:
        """The magnitude of every bin, as torchvision computes it (float32 or int32 table), in float64."""
        if self.kind == "none":
            return torch.zeros(num_bins, dtype=torch.float64)
        if self.kind == "bits":
            return (self.start - torch.arange(num_bins) / ((num_bins - 1) / self.end)).round().int().double()
        end = self.end * {"linear": 1, "width": width, "height": height}[self.kind]
        return torch.linspace(self.start, end, num_bins, dtype=torch.float32).double()


def _signed(kind: str, end: float) -> MagnitudeRange:
    return MagnitudeRange(kind, 0.0, end, signed=True)


_NONE = MagnitudeRange()
_SOLARIZE = MagnitudeRange("linear", 1.0, 0.0)
_TRANSLATE_FRACTION = 150.0 / 331.0

#: torchvision's RandAugment space (also AutoAugment's, which drops Identity and adds Invert).
RANDAUGMENT_SPACE: Dict[str, MagnitudeRange] = {
    "Identity": _NONE, "ShearX": _signed("linear", 0.3), "ShearY": _signed("linear", 0.3),
    "TranslateX": _signed("width", _TRANSLATE_FRACTION), "TranslateY": _signed("height", _TRANSLATE_FRACTION),
    "Rotate": _signed("linear", 30.0), "Brightness": _signed("linear", 0.9), "Color": _signed("linear", 0.9),
    "Contrast": _signed("linear", 0.9), "Sharpness": _signed("linear", 0.9),
    "Posterize": MagnitudeRange("bits", 8.0, 4.0), "Solarize": _SOLARIZE, "AutoContrast": _NONE, "Equalize": _NONE,
}
AUTOAUGMENT_SPACE: Dict[str, MagnitudeRange] = {
    **{op: r for op, r in RANDAUGMENT_SPACE.items() if op != "Identity"}, "Invert": _NONE}
#: torchvision's TrivialAugmentWide space: the RandAugment ops over wider ranges.
TRIVIALAUGMENT_SPACE: Dict[str, MagnitudeRange] = {
    "Identity": _NONE, "ShearX": _signed("linear", 0.99), "ShearY": _signed("linear", 0.99),
    "TranslateX": _signed("linear", 32.0), "TranslateY": _signed("linear", 32.0), "Rotate": _signed("linear", 135.0),
    "Brightness": _signed("linear", 0.99), "Color": _signed("linear", 0.99), "Contrast": _signed("linear", 0.99),
    "Sharpness": _signed("linear", 0.99), "Posterize": MagnitudeRange("bits", 8.0, 6.0), "Solarize": _SOLARIZE,
    "AutoContrast": _NONE, "Equalize": _NONE,
}
POLICY_SPACES: Dict[str, Dict[str, MagnitudeRange]] = {
    "randaugment": RANDAUGMENT_SPACE, "autoaugment": AUTOAUGMENT_SPACE, "trivialaugment": TRIVIALAUGMENT_SPACE}

#: AutoAugment's steps index magnitudes at bin b of 10 (torchvision's ``_AUGMENTATION_SPACE`` at num_bins=10).
AUTOAUGMENT_BINS = 10

# AutoAugment's learned sub-policies (Cubuk et al. 2019; the tables torchvision ships): two (op, probability,
# magnitude bin of 10) steps each; "-" marks an op without magnitude.
_AUTOAUGMENT_TABLES = {
    "imagenet": """
        Posterize .4 8 Rotate .6 9 | Solarize .6 5 AutoContrast .6 - | Equalize .8 - Equalize .6 - |
        Posterize .6 7 Posterize .6 6 | Equalize .4 - Solarize .2 4 | Equalize .4 - Rotate .8 8 |
        Solarize .6 3 Equalize .6 - | Posterize .8 5 Equalize 1 - | Rotate .2 3 Solarize .6 8 |
        Equalize .6 - Posterize .4 6 | Rotate .8 8 Color .4 0 | Rotate .4 9 Equalize .6 - |
        Equalize 0 - Equalize .8 - | Invert .6 - Equalize 1 - | Color .6 4 Contrast 1 8 |
        Rotate .8 8 Color 1 2 | Color .8 8 Solarize .8 7 | Sharpness .4 7 Invert .6 - |
        ShearX .6 5 Equalize 1 - | Color .4 0 Equalize .6 - | Equalize .4 - Solarize .2 4 |
        Solarize .6 5 AutoContrast .6 - | Invert .6 - Equalize 1 - | Color .6 4 Contrast 1 8 |
        Equalize .8 - Equalize .6 -""",
    "cifar10": """
        Invert .1 - Contrast .2 6 | Rotate .7 2 TranslateX .3 9 | Sharpness .8 1 Sharpness .9 3 |
        ShearY .5 8 TranslateY .7 9 | AutoContrast .5 - Equalize .9 - | ShearY .2 7 Posterize .3 7 |
        Color .4 3 Brightness .6 7 | Sharpness .3 9 Brightness .7 9 | Equalize .6 - Equalize .5 - |
        Contrast .6 7 Sharpness .6 5 | Color .7 7 TranslateX .5 8 | Equalize .3 - AutoContrast .4 - |
        TranslateY .4 3 Sharpness .2 6 | Brightness .9 6 Color .2 8 | Solarize .5 2 Invert 0 - |
        Equalize .2 - AutoContrast .6 - | Equalize .2 - Equalize .6 - | Color .9 9 Equalize .6 - |
        AutoContrast .8 - Solarize .2 8 | Brightness .1 3 Color .7 0 | Solarize .4 5 AutoContrast .9 - |
        TranslateY .9 9 TranslateY .7 9 | AutoContrast .9 - Solarize .8 3 | Equalize .8 - Invert .1 - |
        TranslateY .7 9 AutoContrast .9 -""",
    "svhn": """
        ShearX .9 4 Invert .2 - | ShearY .9 8 Invert .7 - | Equalize .6 - Solarize .6 6 |
        Invert .9 - Equalize .6 - | Equalize .6 - Rotate .9 3 | ShearX .9 4 AutoContrast .8 - |
        ShearY .9 8 Invert .4 - | ShearY .9 5 Solarize .2 6 | Invert .9 - AutoContrast .8 - |
        Equalize .6 - Rotate .9 3 | ShearX .9 4 Solarize .3 3 | ShearY .8 8 Invert .7 - |
        Equalize .9 - TranslateY .6 6 | Invert .9 - Equalize .6 - | Contrast .3 3 Rotate .8 4 |
        Invert .8 - TranslateY 0 2 | ShearY .7 6 Solarize .4 8 | Invert .6 - Rotate .8 4 |
        ShearY .3 7 TranslateX .9 3 | ShearX .1 6 Invert .6 - | Solarize .7 2 TranslateY .6 7 |
        ShearY .8 4 Invert .8 - | ShearX .7 9 TranslateY .8 3 | ShearY .8 5 AutoContrast .7 - |
        ShearX .7 2 Invert .1 -""",
}
AUTOAUGMENT_POLICIES = tuple(_AUTOAUGMENT_TABLES)

Step = Tuple[str, float, Optional[int]]


def autoaugment_subpolicies(policy: str) -> List[Tuple[Step, Step]]:
    """The 25 sub-policies of `policy` as [((op, probability, bin or None), (op, probability, bin or None))]."""
    if policy not in _AUTOAUGMENT_TABLES:
        raise ConfigError(f"unknown AutoAugment policy {policy!r}: choose one of {', '.join(AUTOAUGMENT_POLICIES)}")
    subpolicies = []
    for text in _AUTOAUGMENT_TABLES[policy].split("|"):
        words = text.split()
        steps = tuple((words[i], float(words[i + 1]), None if words[i + 2] == "-" else int(words[i + 2]))
                      for i in (0, 3))
        subpolicies.append(steps)
    return subpolicies


def magnitude_bins(policy: str, num_magnitude_bins: int) -> int:
    """How many magnitude bins `policy` indexes: AutoAugment's tables use 10, the others `num_magnitude_bins`."""
    return AUTOAUGMENT_BINS if policy == "autoaugment" else num_magnitude_bins
