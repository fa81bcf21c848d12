"""Applying the augmentation ops of `space` by name, one op per image of a batch, and the spaces as tensors.

The magnitude → kernel-argument mapping follows torchvision v2's ``_apply_image_or_video_transform``.
`apply_slot` runs one op per image: it groups the images by op (one sort, one host sync) and runs each family
once on its images — the five geometric ops as one affine resampling, the seven point ops as one lookup-table
pass, Color and Sharpness once each.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Dict

import torch

from . import functional as F
from .space import OPS, MagnitudeRange

OP_INDEX = {name: index for index, name in enumerate(OPS)}
GEOMETRIC = OPS[1:6]  # each family has consecutive indices: after sorting by op, its images form one run
_RAD_TO_DEG = 180.0 / math.pi


@dataclass(frozen=True)
class SpaceTable:
    """An augmentation space as tensors: op ids (K,), magnitudes (K, bins) float64, signed (K,), integer (K,)."""

    op_ids: torch.Tensor
    values: torch.Tensor
    signed: torch.Tensor
    integer: torch.Tensor

    def magnitudes(self, ops: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
        """Unsigned magnitude of local op `ops` at `bins`: the table values at integer bins (an integer tensor);
        at fractional (float) bins, linear interpolation between bins, the nearest bin for integer-valued ops
        (Posterize)."""
        if not bins.is_floating_point():
            return self.values[ops, bins]
        last = self.values.shape[1] - 1
        low = bins.floor().long().clamp_(0, last)
        high = (low + 1).clamp_(max=last)
        fraction = bins - low
        low_values = self.values[ops, low]
        interpolated = low_values + fraction * (self.values[ops, high] - low_values)
        nearest = self.values[ops, bins.round().long().clamp_(0, last)]
        return torch.where(self.integer[ops], nearest, interpolated)


def space_table(space: Dict[str, MagnitudeRange], num_bins: int, height: int, width: int,
                device: torch.device) -> SpaceTable:
    """`space` (one of `space.POLICY_SPACES`) as a `SpaceTable` on `device` (cached per size and device)."""
    return _space_table(tuple(space.items()), num_bins, height, width, str(device))


@functools.lru_cache(maxsize=64)
def _space_table(items: tuple, num_bins: int, height: int, width: int, device: str) -> SpaceTable:
    return SpaceTable(
        op_ids=torch.tensor([OP_INDEX[name] for name, _ in items], device=device),
        values=torch.stack([r.values(num_bins, height, width) for _, r in items]).to(device),
        signed=torch.tensor([r.signed for _, r in items], device=device),
        integer=torch.tensor([r.kind == "bits" for _, r in items], device=device),
    )


# ----------------------------------------------------------------------------------------------------------------
# magnitude → kernel, as torchvision's _apply_image_or_video_transform


def geometric_matrices(op_ids: torch.Tensor, magnitudes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse affine matrices (n, 2, 3) of geometric ops `OPS[op_ids]` at per-image magnitudes (one batched
    computation for the five ops).

    ShearX/Y: shear angle atan(m) in degrees about the top-left corner; TranslateX/Y: the magnitude truncated to
    whole pixels; Rotate: the magnitude in degrees, counter-clockwise about the centre (``F.rotate`` takes it
    modulo 360 and hands −angle to the affine matrix).
    """
    is_op = {op: op_ids == OP_INDEX[op] for op in GEOMETRIC}  # any other op gets the identity
    zeros = torch.zeros_like(magnitudes)
    shear_degrees = torch.atan(magnitudes) * _RAD_TO_DEG
    shears = torch.stack([torch.where(is_op["ShearX"], shear_degrees, zeros),
                          torch.where(is_op["ShearY"], shear_degrees, zeros)], dim=1)
    is_shear = (is_op["ShearX"] | is_op["ShearY"]).unsqueeze(1)
    centers = torch.where(is_shear, magnitudes.new_tensor([-width * 0.5, -height * 0.5]), 0.0)
    pixels = magnitudes.trunc()
    translations = torch.stack([torch.where(is_op["TranslateX"], pixels, zeros),
                                torch.where(is_op["TranslateY"], pixels, zeros)], dim=1)
    angles = torch.where(is_op["Rotate"], -torch.remainder(magnitudes, 360.0), zeros)
    return F.inverse_affine_matrices(angles, translations, torch.ones_like(magnitudes), shears, centers)


#: ops computed on the pixels: kernel(images, indices, magnitudes, out) writes out[indices]
PIXEL_KERNELS: dict = {
    "Color": lambda images, idx, m, out: F.adjust_saturation(images, 1.0 + m, indices=idx, out=out, check=False),
    "Sharpness": lambda images, idx, m, out: F.adjust_sharpness(images, 1.0 + m, indices=idx, out=out, check=False),
}
#: point ops as lookup tables: builder(images, indices, magnitudes) → (len(indices), 1 or C, 256)
LUT_BUILDERS: dict = {
    "Brightness": lambda images, idx, m: F.brightness_lut(1.0 + m),
    "Contrast": lambda images, idx, m: F.contrast_lut(F.mean_gray(images, indices=idx), 1.0 + m),
    "Posterize": lambda images, idx, m: F.posterize_lut(m.long()),
    "Solarize": lambda images, idx, m: F.solarize_lut(255.0 * m),
    "AutoContrast": lambda images, idx, m: F.autocontrast_lut(F.channel_histograms(images, indices=idx)),
    "Equalize": lambda images, idx, m: F.equalize_lut(F.channel_histograms(images, indices=idx)),
    "Invert": lambda images, idx, m: F.invert_lut(m.shape[0], m.device),
}


def apply_op(op: str, images: torch.Tensor, magnitudes: torch.Tensor, interpolation: str = "nearest",
             fill: F.Fill = None) -> torch.Tensor:
    """Apply one named op to every image of the batch, each at its own (signed) magnitude."""
    return apply_slot(images, torch.full_like(magnitudes, _op_index(op), dtype=torch.int64), magnitudes,
                      interpolation, fill)


def _op_index(op: str) -> int:
    if op not in OP_INDEX:
        raise ValueError(f"unknown augmentation op {op!r}: choose one of {', '.join(OPS)}")
    return OP_INDEX[op]


def _run(order: torch.Tensor, counts: list, ops: tuple) -> torch.Tensor:
    """The images of a run of consecutive ops in `OPS` (sorted `order`, per-op `counts`)."""
    start = OP_INDEX[ops[0]]
    begin = sum(counts[:start])
    return order[begin:begin + sum(counts[start:start + len(ops)])]


def apply_slot(images: torch.Tensor, op_ids: torch.Tensor, magnitudes: torch.Tensor,
               interpolation: str = "nearest", fill: F.Fill = None) -> torch.Tensor:
    """Apply op `OPS[op_ids[i]]` at `magnitudes[i]` to image i, for every image, grouped by op.

    One host synchronisation (the op counts). Kernels read their images from the batch and write them into the
    output by index: the geometric ops as one affine resampling, the point ops as one lookup-table pass (tables
    built per op), Color and Sharpness once each. Returns `images` itself when every op is Identity.
    """
    counts = torch.bincount(op_ids, minlength=len(OPS)).tolist()
    if counts[OP_INDEX["Identity"]] == images.shape[0]:
        return images
    order = torch.argsort(op_ids, stable=True)
    groups = dict(zip(OPS, order.split(counts)))
    channels, height, width = images.shape[1:]
    output = images.clone()
    geometric = _run(order, counts, GEOMETRIC)
    if geometric.numel():
        matrices = geometric_matrices(op_ids.index_select(0, geometric), magnitudes.index_select(0, geometric),
                                      height, width)
        F.warp_affine(images, matrices, interpolation, fill, indices=geometric, out=output)
    for op, kernel in PIXEL_KERNELS.items():
        if groups[op].numel():
            kernel(images, groups[op], magnitudes.index_select(0, groups[op]), output)
    point = _run(order, counts, tuple(LUT_BUILDERS))
    if point.numel():
        luts = [builder(images, groups[op], magnitudes.index_select(0, groups[op])).expand(-1, channels, 256)
                for op, builder in LUT_BUILDERS.items() if groups[op].numel()]
        F.apply_lut(images, torch.cat(luts), indices=point, out=output)
    return output
