"""CPU fast paths of `functional` (Numba, parallel over images or rows): one pass over the pixels per op, each
registered in `registry` for device type "cpu" (this module is imported on the first CPU lookup).

The torch kernels in `functional` run on any device; on a CPU a batch of large images makes each of their
passes (float copies, 64-bit gather indices) leave the cache, so these kernels do the same arithmetic per pixel:

* `apply_lut`, `histograms`: integer work only; `mean_gray`: torchvision's float32 luma, floored, summed exactly.
* `warp_nearest`: computes torchvision's float32 sampling grid per pixel, operation for operation as the float32
  GEMM that builds it: (x·t0 + y·t1) + t2, each step rounded to float32, or with y·t1 fused into the sum where
  the BLAS uses FMA (`grid_rule` finds which on first use by comparing with torch's own grid; when neither
  matches the fast path does not apply), then rounds it as ATen's CPU ``grid_sample`` does
  (``(g + 1) · size/2 − 0.5`` in float32, half to even), so nearest-neighbour ties at half-integer source
  coordinates fall the same way.
* `saturate`, `sharpen`: torchvision's float32 operations; each fused multiply-add is evaluated in float64, where
  its product and sum are exact for these operands (8-bit integers times float32 factors), then rounded once
  to float32 — the value a hardware FMA gives.

Every kernel processes the images `indices` of a batch (parameters given per selected image) and writes them
into the same images of `out`, so a policy runs each op on its images without gathering them.
The tests compare both paths with torchvision.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Tuple

import numba
import numpy as np
import torch
from numba import njit, prange

from . import functional as F
from .registry import register_kernel

@njit(parallel=True, cache=True)
def _apply_lut(images, indices, luts, out):
    channels = images.shape[1]
    for task in prange(indices.shape[0] * channels):
        k, c = task // channels, task % channels
        lut, src, dst = luts[k, c], images[indices[k], c], out[indices[k], c]
        for i in range(src.shape[0]):
            dst[i] = lut[src[i]]


@njit(parallel=True, cache=True)
def _histograms(images, indices, out):
    channels = images.shape[1]
    for task in prange(indices.shape[0] * channels):
        k, c = task // channels, task % channels
        src, hist = images[indices[k], c], out[k, c]
        for i in range(src.shape[0]):
            hist[src[i]] += 1


@njit(inline="always")
def _grid_value(x, y, t0, t1, t2, fused):
    """One float32 grid coordinate [x, y, 1] · [t0, t1, t2] in the GEMM's order: (x·t0 + y·t1) + t2."""
    if fused:
        return np.float32(np.float64(y) * np.float64(t1) + np.float64(x * t0)) + t2
    return (x * t0 + y * t1) + t2


@njit(parallel=True, cache=True)
def _warp_nearest(images, indices, thetas, base_x, base_y, outside, fused, out):
    _, channels, height, width = images.shape
    one, half, zero = np.float32(1.0), np.float32(0.5), np.float32(0.0)
    scale_x, scale_y = np.float32(width / 2), np.float32(height / 2)
    float_w, float_h = np.float32(width), np.float32(height)
    for task in prange(indices.shape[0] * height):
        k, y = task // height, task % height
        i, t = indices[k], thetas[k]
        row = base_y[y]
        source = np.empty(width, np.int32)
        for x in range(width):
            grid_x = _grid_value(base_x[x], row, t[0, 0], t[1, 0], t[2, 0], fused)
            grid_y = _grid_value(base_x[x], row, t[0, 1], t[1, 1], t[2, 1], fused)
            # grid_sample's nearest source pixel (align_corners=False), rounded half to even
            sx = np.rint((grid_x + one) * scale_x - half)
            sy = np.rint((grid_y + one) * scale_y - half)
            inside = (sx >= zero) & (sx < float_w) & (sy >= zero) & (sy < float_h)
            source[x] = np.int32(sy * float_w + sx) if inside else np.int32(-1)
        for c in range(channels):
            plane, target, fill = images[i, c].reshape(height * width), out[i, c, y], outside[c]
            for x in range(width):
                s = source[x]
                target[x] = plane[s] if s >= 0 else fill


@njit(inline="always")
def _fma32(a, b, c):
    """float32(a·b + c), rounded once (exact in float64 for the operands used here)."""
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


@njit(inline="always")
def _to_uint8(value):
    return np.uint8(min(max(value, np.float32(0.0)), np.float32(255.0)))


@njit(parallel=True, cache=True)
def _saturate(images, indices, ratios, alphas, out):
    height, width = images.shape[2], images.shape[3]
    w0, w1, w2 = np.float32(0.2989), np.float32(0.587), np.float32(0.114)  # torchvision's luma weights
    for task in prange(indices.shape[0] * height):
        k, y = task // height, task % height
        i, ratio, alpha = indices[k], ratios[k], alphas[k]
        for x in range(width):
            r, g, b = np.float32(images[i, 0, y, x]), np.float32(images[i, 1, y, x]), np.float32(images[i, 2, y, x])
            gray = np.floor(_fma32(b, w2, _fma32(g, w1, r * w0)))
            out[i, 0, y, x] = _to_uint8(_fma32(gray, alpha, r * ratio))
            out[i, 1, y, x] = _to_uint8(_fma32(gray, alpha, g * ratio))
            out[i, 2, y, x] = _to_uint8(_fma32(gray, alpha, b * ratio))


@njit(parallel=True, cache=True)
def _gray_sums(images, indices, out):
    channels, height, width = images.shape[1], images.shape[2], images.shape[3]
    w0, w1, w2 = np.float32(0.2989), np.float32(0.587), np.float32(0.114)
    for k in prange(indices.shape[0]):
        i, total = indices[k], np.int64(0)
        for y in range(height):
            for x in range(width):
                if channels == 1:
                    total += np.int64(images[i, 0, y, x])
                else:
                    r, g = np.float32(images[i, 0, y, x]), np.float32(images[i, 1, y, x])
                    gray = _fma32(np.float32(images[i, 2, y, x]), w2, _fma32(g, w1, r * w0))
                    total += np.int64(np.floor(gray))
        out[k] = total


@njit(parallel=True, cache=True)
def _sharpen(images, indices, alphas, out):
    _, channels, height, width = images.shape
    for task in prange(indices.shape[0] * channels):
        k, c = task // channels, task % channels
        src, dst, alpha = images[indices[k], c], out[indices[k], c], alphas[k]
        dst[0, :] = src[0, :]
        dst[height - 1, :] = src[height - 1, :]
        for y in range(1, height - 1):
            dst[y, 0] = src[y, 0]
            dst[y, width - 1] = src[y, width - 1]
            for x in range(1, width - 1):
                centre = np.int32(src[y, x])
                total = np.int32(4) * centre
                for dy in range(-1, 2):
                    for dx in range(-1, 2):
                        total += np.int32(src[y + dy, x + dx])
                smoothed = (2 * total + 13) // 26  # round(total / 13); no ties with 13 in the denominator
                dst[y, x] = _to_uint8(_fma32(np.float32(smoothed - centre), alpha, np.float32(centre)))


def _run(kernel, *args) -> None:
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    kernel(*(a.numpy() if isinstance(a, torch.Tensor) else a for a in args))


def _planes(images: torch.Tensor) -> torch.Tensor:
    return images.view(images.shape[0], images.shape[1], -1)


def _selection(images: torch.Tensor, indices: Optional[torch.Tensor],
               out: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(indices, out) for a kernel: all images into a new tensor, or the selected ones into (a copy of) `out`."""
    if out is None:
        out = torch.empty_like(images) if indices is None else images.clone()
    return _all_if_none(images, indices), out


def _all_if_none(images: torch.Tensor, indices: Optional[torch.Tensor]) -> torch.Tensor:
    return torch.arange(images.shape[0]) if indices is None else indices


@register_kernel("apply_lut", "cpu")
def apply_lut(images: torch.Tensor, luts: torch.Tensor, indices: Optional[torch.Tensor],
              out: Optional[torch.Tensor]) -> torch.Tensor:
    """out[indices] = luts[k][images[indices[k]]] per channel; `luts` uint8 (S, C, 256)."""
    indices, out = _selection(images, indices, out)
    _run(_apply_lut, _planes(images), indices, luts.contiguous(), _planes(out))
    return out


@register_kernel("channel_histograms", "cpu")
def histograms(images: torch.Tensor, indices: Optional[torch.Tensor]) -> torch.Tensor:
    """int64 (S, C, 256) counts of each value in each channel of images[indices]."""
    indices = _all_if_none(images, indices)
    counts = torch.zeros(indices.shape[0], images.shape[1], 256, dtype=torch.int64)
    _run(_histograms, _planes(images), indices, counts)
    return counts


def _sums_exact_in_float32(images: torch.Tensor, indices: Optional[torch.Tensor]) -> bool:
    """The float32 sum of integer values is exact below 2**24, so torch's mean is then float32(sum) / pixels."""
    return 255 * images.shape[-2] * images.shape[-1] < 2 ** 24


@register_kernel("mean_gray", "cpu", applies=_sums_exact_in_float32)
def mean_gray(images: torch.Tensor, indices: Optional[torch.Tensor]) -> torch.Tensor:
    """float32 (S,): the mean of each selected image's floored luma (RGB) or of its pixels (one channel)."""
    indices = _all_if_none(images, indices)
    sums = torch.empty(indices.shape[0], dtype=torch.int64)
    _run(_gray_sums, images, indices, sums)
    return sums.float() / float(images.shape[-2] * images.shape[-1])


def _emulated_grid(base: np.ndarray, thetas: np.ndarray, fused: bool) -> np.ndarray:
    x, y = base[:, 0][None, :, None], base[:, 1][None, :, None]
    t0, t1, t2 = thetas[:, None, 0, :], thetas[:, None, 1, :], thetas[:, None, 2, :]
    if fused:
        return (y.astype(np.float64) * t1 + (x * t0)).astype(np.float32) + t2
    return (x * t0 + y * t1) + t2


@lru_cache(maxsize=None)
def grid_rule() -> Optional[bool]:
    """How torch's float32 GEMM builds the sampling grid on this machine: False = every step rounded, True = y·t1
    fused into the sum, None = neither (then `warp_nearest` cannot reproduce it and does not apply)."""
    generator = torch.Generator().manual_seed(0)
    base = torch.cat([(torch.rand(4096, 2, generator=generator) - 0.5) * 448, torch.ones(4096, 1)], dim=1)
    thetas = torch.randn(16, 3, 2, generator=generator)
    grid = base.expand(16, -1, -1).bmm(thetas).numpy()
    for fused in (False, True):
        if np.array_equal(_emulated_grid(base.numpy(), thetas.numpy(), fused), grid):
            return fused
    return None


def _nearest_on_reproducible_grid(images: torch.Tensor, inverse_matrices: torch.Tensor, interpolation: str,
                                  *_) -> bool:
    """Nearest-neighbour warps of images under 2**24 pixels (indexed in float32), on a machine whose torch grid
    the kernel reproduces."""
    return interpolation == "nearest" and images.shape[-2] * images.shape[-1] < 2 ** 24 and grid_rule() is not None


@register_kernel("warp_affine", "cpu", applies=_nearest_on_reproducible_grid)
def warp_nearest(images: torch.Tensor, inverse_matrices: torch.Tensor, interpolation: str, fill: F.Fill,
                 indices: Optional[torch.Tensor], out: Optional[torch.Tensor]) -> torch.Tensor:
    """Nearest-neighbour resampling along torchvision's grid of each inverse matrix; pixels from outside the
    image get `fill` (None: 0)."""
    channels, height, width = images.shape[1:]
    indices, out = _selection(images, indices, out)
    outside = torch.zeros(channels) if fill is None else F.fill_values(fill, channels, images.device).view(-1)
    _run(_warp_nearest, images, indices, F.grid_thetas(inverse_matrices, height, width).contiguous(),
         F.pixel_centres(width, "cpu"), F.pixel_centres(height, "cpu"),
         outside.round().expand(channels).to(torch.uint8).contiguous(), grid_rule(), out)
    return out


@register_kernel("adjust_saturation", "cpu")
def saturate(images: torch.Tensor, factors: torch.Tensor, indices: Optional[torch.Tensor],
             out: Optional[torch.Tensor]) -> torch.Tensor:
    """RGB images blended with their floored grayscale: factor·x + (1 − factor)·gray in float32."""
    indices, out = _selection(images, indices, out)
    _run(_saturate, images, indices, factors.float(), (1.0 - factors).float(), out)
    return out


@register_kernel("adjust_sharpness", "cpu")
def sharpen(images: torch.Tensor, alphas: torch.Tensor, indices: Optional[torch.Tensor],
            out: Optional[torch.Tensor]) -> torch.Tensor:
    """Interior pixels blended with their 3×3 smoothed value: x + alpha·(smoothed − x); borders copied."""
    indices, out = _selection(images, indices, out)
    _run(_sharpen, images, indices, alphas, out)
    return out
