"""The PyTorch reference: materialize the upsampled maps, normalize, binarize, count. It defines the numbers.

Per map and image: upsample bilinearly (`kernels.grid`'s float32 formula, i.e. `F.interpolate(mode="bilinear",
align_corners=False)` without fused multiply-adds), min-max normalize `n = (v - min) / (max - min)` in float32
(a constant map normalizes to 0 everywhere), and switch a pixel on at threshold t when `n >= t` (t in float32).
"""
from __future__ import annotations

from typing import Tuple

import torch

from .counts import IoUCounts
from .grid import axis_table

CHUNK_IMAGES = 16   # images per step: bounds the memory of the materialized maps, not the results


def _table_tensors(n_in: int, n_out: int, device: torch.device):
    table = axis_table(n_in, n_out)
    return (torch.from_numpy(table.i0).to(device), torch.from_numpy(table.i1).to(device),
            torch.from_numpy(table.w0).to(device), torch.from_numpy(table.w1).to(device))


def upsample_bilinear(maps: torch.Tensor, out_size: Tuple[int, int]) -> torch.Tensor:
    """Float32 maps (..., h, w) -> (..., H, W), evaluated exactly as `kernels.grid` defines."""
    h, w = maps.shape[-2:]
    yi0, yi1, yw0, yw1 = _table_tensors(h, out_size[0], maps.device)
    xi0, xi1, xw0, xw1 = _table_tensors(w, out_size[1], maps.device)
    rows = maps[..., xi0] * xw0 + maps[..., xi1] * xw1              # (..., h, W): `top`/`bot` of each input row
    return rows[..., yi0, :] * yw0[:, None] + rows[..., yi1, :] * yw1[:, None]


def normalize_min_max(values: torch.Tensor) -> torch.Tensor:
    """Per-map min-max normalization over the last two dimensions; a constant map becomes all zeros."""
    low = values.amin(dim=(-2, -1), keepdim=True)
    span = values.amax(dim=(-2, -1), keepdim=True) - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (values - low) / safe, torch.zeros_like(values))


def torch_counts(maps: torch.Tensor, out_size: Tuple[int, int], thresholds: torch.Tensor) -> IoUCounts:
    """Counts of `kernels.attention_iou` from float32 maps (T, B, h, w), materializing CHUNK_IMAGES at a time."""
    n_maps, batch = maps.shape[:2]
    k = len(thresholds)
    device = maps.device
    intersection = torch.zeros(k, batch, n_maps, n_maps, dtype=torch.int64, device=device)
    all_intersection = torch.zeros(k, batch, dtype=torch.int64, device=device)
    any_union = torch.zeros(k, batch, dtype=torch.int64, device=device)
    soft_min = torch.zeros(batch, n_maps, n_maps, dtype=torch.float64, device=device)
    soft_max = torch.zeros_like(soft_min)
    thresholds = thresholds.to(device=device, dtype=torch.float32)
    for lo in range(0, batch, CHUNK_IMAGES):
        hi = min(lo + CHUNK_IMAGES, batch)
        norm = normalize_min_max(upsample_bilinear(maps[:, lo:hi], out_size))       # (T, b, H, W)
        for i in range(n_maps):
            for j in range(i, n_maps):
                soft_min[lo:hi, i, j] = soft_min[lo:hi, j, i] = torch.minimum(norm[i], norm[j]).sum(
                    (-2, -1), dtype=torch.float64)
                soft_max[lo:hi, i, j] = soft_max[lo:hi, j, i] = torch.maximum(norm[i], norm[j]).sum(
                    (-2, -1), dtype=torch.float64)
        for t in range(k):
            masks = norm >= thresholds[t]                                            # (T, b, H, W)
            for i in range(n_maps):
                intersection[t, lo:hi, i] = (masks[i:i + 1] & masks).sum((-2, -1)).T
            all_intersection[t, lo:hi] = masks.all(0).sum((-2, -1))
            any_union[t, lo:hi] = masks.any(0).sum((-2, -1))
    return IoUCounts(intersection, all_intersection, any_union, soft_min, soft_max)
