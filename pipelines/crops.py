"""The evaluation crop in source pixels: the box that torchvision's Resize + CenterCrop keeps, and a transform
that crops that box before resizing when resizing the whole image first would be wasteful."""
from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as F

MAX_ASPECT_RESIZED_WHOLE = 8  # beyond this aspect ratio the box is cut out first (2000x1 would resize to 256x512000)


def eval_crop_box(height, width, size, resize_to):
    """The source box (top, left, h, w) that Resize(resize_to) + CenterCrop(size) keeps, rounded to pixels.

    Same arithmetic as torchvision (int() for the long side, round-half-even anchors), so when the image's
    short side already is `resize_to` the box is exactly torchvision's crop.
    """
    short, long = min(height, width), max(height, width)
    new_long = int(resize_to * long / short)
    new_h, new_w = (resize_to, new_long) if height <= width else (new_long, resize_to)
    top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
    scale_y, scale_x = height / new_h, width / new_w
    h = min(height, max(1, round(size * scale_y)))
    w = min(width, max(1, round(size * scale_x)))
    i = min(height - h, max(0, round(top * scale_y)))
    j = min(width - w, max(0, round(left * scale_x)))
    return i, j, h, w


class EvalResizeCrop:
    """Resize(resize_to) + CenterCrop(size) on a CHW image, bounded in memory for extreme aspect ratios.

    Up to `MAX_ASPECT_RESIZED_WHOLE`: torchvision's own two steps. Beyond: the `eval_crop_box` region is cut out
    and resized to size x size (as the ffcv backend does), so a 2000x1 image costs a crop-sized resize instead of
    a 256x512000 one (about 1.4 GB in float).
    """

    def __init__(self, size: int, resize_to: int) -> None:
        self.size, self.resize_to = size, resize_to

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        if max(height, width) <= MAX_ASPECT_RESIZED_WHOLE * min(height, width):
            return F.center_crop(F.resize(image, self.resize_to, antialias=True), [self.size, self.size])
        top, left, box_h, box_w = eval_crop_box(height, width, self.size, self.resize_to)
        return F.resize(F.crop(image, top, left, box_h, box_w), [self.size, self.size], antialias=True)
