"""The plain train transforms in batched, per-image form: random-resized-crop, horizontal flip, Cutout.

Box samplers return int64 (N, 4) boxes ``(top, left, height, width)`` drawn with the given generator, by the same
rules as torchvision's ``RandomResizedCrop.get_params`` (all attempts are drawn at once and the first valid one is
kept) and the Cutout paper's. Kernels take the boxes, so the random part can be tested alone.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

import torch

from . import functional as F
from ..spec import RRC_RATIO, RRC_SCALE

__all__ = ["random_resized_crop_boxes", "resized_crop", "horizontal_flip", "random_horizontal_flip",
           "erase", "cutout_boxes", "cutout"]

Box = Tuple[float, float]
CANVAS_BYTES = 512 * 2**20   # resized_crop works on groups of crops whose float canvas stays under this


def _uniform(shape: tuple, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.empty(shape, dtype=torch.float64, device=generator.device).uniform_(low, high, generator=generator)


def _random_offsets(limits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A uniform integer in 0..limit for every element of `limits` (int64, ≥ 0)."""
    draws = torch.rand(limits.shape, dtype=torch.float64, device=limits.device, generator=generator)
    return (draws * (limits + 1)).long().clamp_(max=limits)


def _first_valid(valid: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per row: whether any attempt is valid, and the index of the first valid one (0 when none)."""
    return valid.any(dim=1), valid.int().argmax(dim=1)


def random_resized_crop_boxes(n: int, height: int, width: int, generator: torch.Generator,
                              scale: Box = RRC_SCALE, ratio: Box = RRC_RATIO,
                              attempts: int = 10) -> torch.Tensor:
    """Crop boxes of RandomResizedCrop: area fraction ~ U(scale), log aspect ratio ~ U(log ratio), up to
    `attempts` tries per image, else the central crop with the aspect ratio clamped to `ratio`."""
    area = height * width
    targets = area * _uniform((n, attempts), scale[0], scale[1], generator)
    aspects = torch.exp(_uniform((n, attempts), math.log(ratio[0]), math.log(ratio[1]), generator))
    widths = torch.sqrt(targets * aspects).round().long()
    heights = torch.sqrt(targets / aspects).round().long()
    found, first = _first_valid((widths > 0) & (widths <= width) & (heights > 0) & (heights <= height))
    box_w = widths.gather(1, first[:, None]).squeeze(1)
    box_h = heights.gather(1, first[:, None]).squeeze(1)
    in_ratio = width / height
    if in_ratio < min(ratio):
        fallback_w, fallback_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fallback_w, fallback_h = int(round(height * max(ratio))), height
    else:
        fallback_w, fallback_h = width, height
    box_w = torch.where(found, box_w, fallback_w)
    box_h = torch.where(found, box_h, fallback_h)
    top = torch.where(found, _random_offsets(height - box_h, generator), (height - box_h) // 2)
    left = torch.where(found, _random_offsets(width - box_w, generator), (width - box_w) // 2)
    return torch.stack([top, left, box_h, box_w], dim=1)


def _resize_weights(starts: torch.Tensor, lengths: torch.Tensor, out: int, span: int,
                    antialias: bool) -> torch.Tensor:
    """(n, out, span) float32 rows that resample each line's pixels starts[i] .. starts[i] + lengths[i] − 1 to
    `out` samples: the triangle filter of ``F.interpolate(mode="bilinear", align_corners=False)``, widened by the
    downscale factor when `antialias` (its antialias=True weights), normalized over those pixels (zero elsewhere)."""
    starts = starts.to(torch.float64)[:, None, None]
    lengths = lengths.to(torch.float64)[:, None, None]
    scale = lengths / out
    support = scale.clamp(min=1.0) if antialias else torch.ones_like(scale)
    centres = (torch.arange(out, dtype=torch.float64, device=lengths.device)[None, :, None] + 0.5) * scale
    taps = torch.arange(span, dtype=torch.float64, device=lengths.device)[None, None, :] - starts
    weights = (1 - ((taps + 0.5 - centres) / support).abs()).clamp_(min=0) * ((taps >= 0) & (taps < lengths))
    return (weights / weights.sum(dim=2, keepdim=True)).float()


def _canvas_groups(boxes: torch.Tensor, channels: int) -> list:
    """Consecutive index ranges whose crops, padded to one float canvas, fit in CANVAS_BYTES (at least one each)."""
    groups, first, tallest, widest = [], 0, 0, 0
    for i, (box_h, box_w) in enumerate(boxes[:, 2:].tolist()):
        tallest, widest = max(tallest, box_h), max(widest, box_w)
        if i > first and (i + 1 - first) * channels * tallest * widest * 4 > CANVAS_BYTES:
            groups.append(range(first, i))
            first, tallest, widest = i, box_h, box_w
    return groups + [range(first, len(boxes))]


def _resample(canvas: torch.Tensor, boxes: torch.Tensor, size: Tuple[int, int], antialias: bool) -> torch.Tensor:
    """Each float (C, H, W) canvas of the batch resampled from its box to `size`: two batched matrix products."""
    boxes = boxes.to(canvas.device)
    rows = _resize_weights(boxes[:, 0], boxes[:, 2], size[0], canvas.shape[2], antialias)
    cols = _resize_weights(boxes[:, 1], boxes[:, 3], size[1], canvas.shape[3], antialias)
    resized = rows[:, None] @ canvas @ cols[:, None].transpose(-1, -2)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def resized_crop(images: Union[torch.Tensor, Sequence[torch.Tensor]], boxes: torch.Tensor, size: Tuple[int, int],
                 antialias: bool = False) -> torch.Tensor:
    """Crop each uint8 image to its box (top, left, height, width) and resize it to `size` (h, w): a uint8
    (N, C, h, w) batch from an (N, C, H, W) batch or from a ragged list of (C, H_i, W_i) images (e.g. decoded).

    Separable per-image weights, applied by batched matrix products: with `antialias` torchvision's
    ``F.resized_crop(..., antialias=True)`` weights (bilinear widened when downscaling), else plain bilinear
    (``antialias=False``, which aliases when strongly downscaling). Results agree with torchvision's uint8 kernels
    to within one grey level (float here, fixed point there). A ragged list is cropped into float canvases of at
    most CANVAS_BYTES each."""
    if len(images) != len(boxes):
        raise ValueError(f"resized_crop: {len(images)} images but {len(boxes)} boxes")
    boxes = boxes.to(torch.int64).cpu()
    if isinstance(images, torch.Tensor):
        F.check_images(images)
        return _resample(images.float(), boxes, size, antialias)
    results = []
    for group in _canvas_groups(boxes, images[0].shape[0]):
        tallest, widest = int(boxes[group, 2].max()), int(boxes[group, 3].max())
        canvas = torch.zeros((len(group), images[0].shape[0], tallest, widest), dtype=torch.float32,
                             device=images[0].device)
        for slot, i in enumerate(group):
            top, left, box_h, box_w = boxes[i].tolist()
            canvas[slot, :, :box_h, :box_w] = images[i][:, top:top + box_h, left:left + box_w]
        crops = boxes[group].clone()
        crops[:, :2] = 0
        results.append(_resample(canvas, crops, size, antialias))
    return torch.cat(results)


def horizontal_flip(images: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """Mirror the images whose flag is True."""
    flags = flags.to(device=images.device, dtype=torch.bool).view(-1, 1, 1, 1)
    return torch.where(flags, images.flip(-1), images)


def random_horizontal_flip(images: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image with probability `p`."""
    return horizontal_flip(images, torch.rand(images.shape[0], generator=generator, device=generator.device) < p)


def erase(images: torch.Tensor, boxes: torch.Tensor, value: F.Fill = 0) -> torch.Tensor:
    """Set each image's box (top, left, height, width; empty boxes allowed) to `value` (one or one per channel)."""
    n, channels, height, width = images.shape
    boxes = boxes.to(images.device)
    top, left, box_h, box_w = (b[:, None] for b in boxes.unbind(1))
    rows = torch.arange(height, device=images.device)
    cols = torch.arange(width, device=images.device)
    inside = (((rows >= top) & (rows < top + box_h))[:, :, None]
              & ((cols >= left) & (cols < left + box_w))[:, None, :]).unsqueeze(1)
    fill = torch.as_tensor(value, dtype=torch.uint8, device=images.device).reshape(1, -1, 1, 1)
    if fill.shape[1] not in (1, channels):
        raise ValueError(f"erase value has {fill.shape[1]} values for {channels}-channel images")
    return torch.where(inside, fill, images)


def cutout_boxes(n: int, height: int, width: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): a size × size square centred on a uniformly drawn pixel, clipped to the
    image (rows centre − size//2 .. centre − size//2 + size − 1; for odd sizes the original code's hole is one
    pixel smaller)."""
    centre_y = torch.randint(height, (n,), generator=generator, device=generator.device)
    centre_x = torch.randint(width, (n,), generator=generator, device=generator.device)
    top, left = centre_y - size // 2, centre_x - size // 2
    bottom, right = (top + size).clamp(max=height), (left + size).clamp(max=width)
    top, left = top.clamp(min=0), left.clamp(min=0)
    return torch.stack([top, left, bottom - top, right - left], dim=1)


def cutout(images: torch.Tensor, size: int, generator: torch.Generator, value: F.Fill = 0) -> torch.Tensor:
    """Cutout with a `size`-pixel square hole per image, filled with `value` (0: black, on uint8 pixels; the
    original applied it after normalization, i.e. filled with the dataset mean)."""
    n, _, height, width = images.shape
    return erase(images, cutout_boxes(n, height, width, size, generator), value)
