"""The paper's attention-IoU procedure, re-implemented as the baseline: a Python loop over maps and images.

Each CAM is upsampled with `F.interpolate`, min-max normalized on its own, binarized with `>= t`, and the IoU of
two models is pooled over the batch: sum of intersections / sum of unions (likewise for all models at once).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence, Tuple

import torch
import torch.nn.functional as F


class PaperIoU(NamedTuple):
    pooled: torch.Tensor              # float64 (K, T, T)
    all_models_pooled: torch.Tensor   # float64 (K,)


def paper_attention_iou(maps: torch.Tensor, out_size: Tuple[int, int], thresholds: Sequence[float]) -> PaperIoU:
    """Batch-pooled pairwise and all-models IoU of maps (T, B, h, w), one image at a time."""
    n_maps, batch = maps.shape[:2]
    k = len(thresholds)
    inter = torch.zeros(k, n_maps, n_maps, dtype=torch.float64)
    union = torch.zeros(k, n_maps, n_maps, dtype=torch.float64)
    all_inter = torch.zeros(k, dtype=torch.float64)
    any_union = torch.zeros(k, dtype=torch.float64)
    for b in range(batch):
        cams = []
        for m in range(n_maps):
            cam = F.interpolate(maps[m, b][None, None].float(), size=tuple(out_size), mode="bilinear",
                                align_corners=False)[0, 0]
            cams.append((cam - cam.min()) / (cam.max() - cam.min()))
        for t, threshold in enumerate(thresholds):
            masks = [cam >= threshold for cam in cams]
            for i in range(n_maps):
                for j in range(i, n_maps):
                    inter[t, i, j] += (masks[i] & masks[j]).sum().item()
                    union[t, i, j] += (masks[i] | masks[j]).sum().item()
            every, some = masks[0], masks[0]
            for mask in masks[1:]:
                every, some = every & mask, some | mask
            all_inter[t] += every.sum().item()
            any_union[t] += some.sum().item()
    upper = torch.triu(torch.ones(n_maps, n_maps, dtype=torch.bool))
    inter, union = torch.where(upper, inter, inter.transpose(1, 2)), torch.where(upper, union, union.transpose(1, 2))
    return PaperIoU(inter / union, all_inter / any_union)
