"""The paper's attention-IoU procedure for one batch (zisci2/RethinkKD, IoU/calculate-IoU*.py), re-implemented.

Each model's CAMs are upsampled as one batch with `F.interpolate` (bilinear, align_corners=False), min-max
normalized one image at a time as (v - min) / (max - min + 1e-8), binarized with `> t`, and the IoU of the batch
is pooled: sum of intersections / sum of unions over its images (likewise for all models at once). A union of zero
gives NaN, as 0/0 there. The paper's dataset figure is the mean of these batch IoUs weighted by batch size.

`strict=False, epsilon=0` give rkd's binarization (`>= t`, no epsilon) in the same loop: the baseline that the
kernels' pooled IoU is checked and timed against.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence, Tuple

import torch
import torch.nn.functional as F

PAPER_EPSILON = 1e-8


class PaperIoU(NamedTuple):
    pooled: torch.Tensor              # float64 (K, T, T)
    all_models_pooled: torch.Tensor   # float64 (K,)


def _normalized(cams: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Per-image min-max normalization of (B, H, W), one image at a time as the paper's loop."""
    out = torch.zeros_like(cams)
    for i in range(cams.shape[0]):
        low, high = cams[i].min(), cams[i].max()
        out[i] = (cams[i] - low) / (high - low + epsilon)
    return out


def paper_attention_iou(maps: torch.Tensor, out_size: Tuple[int, int], thresholds: Sequence[float], *,
                        strict: bool = True, epsilon: float = PAPER_EPSILON) -> PaperIoU:
    """Batch-pooled pairwise and all-models IoU of maps (T, B, h, w) by the paper's procedure."""
    n_maps = maps.shape[0]
    normalized = [_normalized(F.interpolate(maps[m].float().unsqueeze(0), size=tuple(out_size), mode="bilinear",
                                            align_corners=False).squeeze(0), epsilon) for m in range(n_maps)]
    k = len(thresholds)
    pooled = torch.empty(k, n_maps, n_maps, dtype=torch.float64)
    all_models = torch.empty(k, dtype=torch.float64)
    for t, threshold in enumerate(thresholds):
        masks = [(cam > threshold) if strict else (cam >= threshold) for cam in normalized]
        for i in range(n_maps):
            for j in range(n_maps):
                pooled[t, i, j] = _pooled(masks[i] & masks[j], masks[i] | masks[j])
        all_models[t] = _pooled(torch.stack(masks).all(0), torch.stack(masks).any(0))
    return PaperIoU(pooled, all_models)


def _pooled(intersection: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    return intersection.sum().double() / union.sum().double()
