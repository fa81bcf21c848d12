"""What every attention-IoU backend returns (pixel counts and soft sums), and the IoUs computed from them.

Backends only count; turning counts into ratios happens once, here, so all backends share its conventions:
a ratio whose denominator is zero (two empty masks, or two all-zero normalized maps for the soft IoU) is 1 —
two empty masks are identical.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch


class IoUCounts(NamedTuple):
    """Additive statistics of one batch: sum them over batches to pool over a whole evaluation set."""

    intersection: torch.Tensor   # int64 (K, B, T, T): |M_i ∩ M_j| per threshold and image; diagonal = |M_i|
    all_intersection: torch.Tensor   # int64 (K, B): |M_1 ∩ ... ∩ M_T|
    any_union: torch.Tensor      # int64 (K, B): |M_1 ∪ ... ∪ M_T|
    soft_min: torch.Tensor       # float64 (B, T, T): sum over pixels of min(n_i, n_j)
    soft_max: torch.Tensor       # float64 (B, T, T): sum over pixels of max(n_i, n_j)


class AttentionIoU(NamedTuple):
    """Attention IoU of T maps per image, at K thresholds (see `kernels.attention_iou`)."""

    thresholds: torch.Tensor     # float32 (K,) as used for binarizing
    pairwise: torch.Tensor       # float64 (K, B, T, T) per-image IoU of masks i and j
    pooled: torch.Tensor         # float64 (K, T, T) the paper's: sum_b |M_i ∩ M_j| / sum_b |M_i ∪ M_j|
    soft: torch.Tensor           # float64 (B, T, T) sum min(n_i, n_j) / sum max(n_i, n_j), threshold-free
    all_models: torch.Tensor     # float64 (K, B) |∩ all T masks| / |∪ all T masks| per image
    all_models_pooled: torch.Tensor  # float64 (K,) the same pooled over the batch (the paper's 3-teacher IoU)
    counts: IoUCounts            # the raw counts, to pool over several batches


_THRESHOLD_MAJOR = ("intersection", "all_intersection", "any_union")   # (K, B, ...): the batch is dim 1


def ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator in float64, and 1 where the denominator is 0 (two empty masks are identical)."""
    numerator, denominator = numerator.double(), denominator.double()
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-300), torch.ones_like(numerator))


def unions(intersection: torch.Tensor) -> torch.Tensor:
    """|M_i ∪ M_j| = |M_i| + |M_j| - |M_i ∩ M_j| from the intersection counts (K, B, T, T)."""
    area = intersection.diagonal(dim1=-2, dim2=-1)
    return area.unsqueeze(-1) + area.unsqueeze(-2) - intersection


def concat_counts(parts: Sequence[IoUCounts]) -> IoUCounts:
    """Counts of several batches (same maps and thresholds) as the counts of one batch holding all their images."""
    return IoUCounts(*(torch.cat([getattr(p, name) for p in parts], dim=1 if name in _THRESHOLD_MAJOR else 0)
                       for name in IoUCounts._fields))


def iou_from_counts(counts: IoUCounts, thresholds: torch.Tensor) -> AttentionIoU:
    """All IoU variants from a batch's counts (the pooled ones pool over every image in `counts`)."""
    union = unions(counts.intersection)
    return AttentionIoU(
        thresholds=thresholds,
        pairwise=ratio(counts.intersection, union),
        pooled=ratio(counts.intersection.sum(1), union.sum(1)),
        soft=ratio(counts.soft_min, counts.soft_max),
        all_models=ratio(counts.all_intersection, counts.any_union),
        all_models_pooled=ratio(counts.all_intersection.sum(1), counts.any_union.sum(1)),
        counts=counts,
    )
