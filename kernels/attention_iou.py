"""`attention_iou`: agreement of T models' class activation maps on the same images, one call, three backends.

Definition (the PyTorch reference, `kernels.reference`, is its executable form):
  1. upsample each map (h, w) -> out_size bilinearly, align_corners=False (`kernels.grid` gives the exact
     float32 formula: `F.interpolate`'s, without fused multiply-adds);
  2. min-max normalize each map of each image on its own: n = (v - min) / (max - min) in float32; a constant
     map becomes all zeros;
  3. a pixel is on at threshold t when n >= t (t rounded to float32), so t = 1 keeps the peak and t = 0 keeps
     every pixel;
  4. IoU of masks i, j = |M_i ∩ M_j| / |M_i ∪ M_j| per image; of two empty masks, 1 (only constant maps give
     empty masks: a non-constant map always reaches n = 1). The same convention for every ratio below.
Returned: per-image pairwise IoU, the paper's batch-pooled IoU (sum of intersections / sum of unions), the soft
IoU sum(min(n_i, n_j)) / sum(max(n_i, n_j)) (no threshold), and the IoU of all T masks at once
(|∩| / |∪|, the paper's 3-teacher IoU), per image and pooled; plus the additive counts behind them.

Backends: "torch" (reference, materializes the maps), "numba" (CPU, rows x segments closed form, never holds an
upsampled map), "triton" (CUDA, or the CPU under TRITON_INTERPRET=1); "auto" picks triton for CUDA tensors and
numba otherwise. All three produce bit-identical masks, hence identical counts and IoUs, values exactly at a
threshold included. The soft IoU's sums agree to rounding for torch and triton; numba sums them on the exact
lines, each normalized pixel within 2e-5 of the reference's float32 value (typically 1e-7; measured soft IoU
differences ~1e-8).
"""
from __future__ import annotations

import math
import os
from typing import Callable, Sequence, Tuple, Union

import torch

from .counts import AttentionIoU, IoUCounts, iou_from_counts

BACKENDS = ("auto", "torch", "numba", "triton")
Maps = Union[torch.Tensor, Sequence[torch.Tensor]]


def _as_maps(maps: Maps) -> torch.Tensor:
    if not isinstance(maps, torch.Tensor):
        maps = list(maps)
        shapes = {tuple(m.shape) for m in maps}
        if len(shapes) > 1:
            raise ValueError(f"attention_iou: the maps to stack have different shapes {sorted(shapes)}; "
                             "give every model's maps as (B, h, w) for the same B images at the same h, w")
        if not maps:
            raise ValueError("attention_iou: no maps given; pass a tensor (T, B, h, w) or a list of (B, h, w)")
        maps = torch.stack(maps)
    if maps.dim() != 4:
        raise ValueError(f"attention_iou: maps must be (T models, B images, h, w), got shape {tuple(maps.shape)}")
    if min(maps.shape) == 0:
        raise ValueError(f"attention_iou: maps have an empty dimension, shape {tuple(maps.shape)}")
    if not maps.is_floating_point():
        raise ValueError(f"attention_iou: maps must be floating point, got {maps.dtype}")
    bad = (~torch.isfinite(maps)).sum().item()
    if bad:
        raise ValueError(f"attention_iou: maps contain {bad} NaN or infinite values of {maps.numel()}; "
                         "class activation maps must be finite")
    return maps.detach().float().contiguous()


def _as_out_size(out_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    size = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"attention_iou: out_size must be a positive int or (height, width), got {out_size!r}")
    return size


def _as_thresholds(thresholds: Union[float, Sequence[float], torch.Tensor]) -> torch.Tensor:
    values = torch.as_tensor(thresholds, dtype=torch.float64).reshape(-1).cpu()
    if values.numel() == 0:
        raise ValueError("attention_iou: no thresholds given; pass one or more values in [0, 1], e.g. [0.4]")
    for t in values.tolist():
        if not (math.isfinite(t) and 0.0 <= t <= 1.0):
            raise ValueError(f"attention_iou: threshold {t} is outside [0, 1]; maps are min-max normalized "
                             "to [0, 1] before thresholding")
    return values.float()


def _backend(name: str, device: torch.device) -> Callable[..., IoUCounts]:
    if name not in BACKENDS:
        raise ValueError(f"attention_iou: unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        name = "triton" if device.type == "cuda" else "numba"
    if name == "torch":
        from .reference import torch_counts
        return torch_counts
    if name == "numba":
        from .numba_backend import numba_counts
        return numba_counts
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("attention_iou: backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1, set before "
                         "triton is imported, to run Triton's interpreter on the CPU)")
    try:
        from .triton_backend import triton_counts
    except ImportError as error:
        raise ValueError(f"attention_iou: backend 'triton' needs the triton package ({error}); "
                         "install it with `pip install triton`") from error
    return triton_counts


def attention_iou(maps: Maps, out_size: Union[int, Sequence[int]],
                  thresholds: Union[float, Sequence[float], torch.Tensor], *,
                  backend: str = "auto") -> AttentionIoU:
    """Attention IoU of maps (T, B, h, w) (or a list of T tensors (B, h, w)) upsampled to `out_size`.

    Returns `AttentionIoU` with pairwise (K, B, T, T), pooled (K, T, T), soft (B, T, T), all_models (K, B),
    all_models_pooled (K,) and the raw counts, on the maps' device (see the module docstring for definitions).
    """
    maps = _as_maps(maps)
    size = _as_out_size(out_size)
    thr = _as_thresholds(thresholds)
    counts = _backend(backend, maps.device)(maps, size, thr)
    counts = IoUCounts(*(c.to(maps.device) for c in counts))
    return iou_from_counts(counts, thr.to(maps.device))
