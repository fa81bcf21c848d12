"""Batched augmentation kernels: pure functions on uint8 (N, C, H, W) batches with one parameter per image.

Each kernel gives, image by image, what ``torchvision.transforms.v2.functional`` gives for that image and its
parameter (C = 1 or 3, on CPU or CUDA, no Python loop over images):

* colour kernels are bit-exact on uint8: they run torchvision's float32 operations, either on the 256 levels to
  build per-image lookup tables (point ops) or on the pixels (saturation, sharpness). torchvision blends with
  ``a.mul(r).add_(b, alpha=1 - r)``, a fused multiply-add where the CPU has FMA (and on CUDA); with one ratio per
  image we use ``torch.addcmul``, which fuses the same way (checked against torchvision by the tests).
* geometric kernels build torchvision's inverse affine matrix (float64) and its float32 sampling grid, and run
  ``grid_sample``: the same grid and the same sampler, so the same pixels. The CPU kernel recomputes that grid
  per pixel in the GEMM's float32 order and rounds it as ``grid_sample`` does, ties included (bit-exact; where
  it cannot reproduce the machine's torch grid, the torch kernels run instead).

Parameters are 1-D tensors (or sequences) of length N, on any device; they are moved to the images' device.
The pixel kernels (`apply_lut`, `warp_affine`, `adjust_saturation`, `adjust_sharpness`, `channel_histograms`) also
take ``indices=``: they then process only ``images[indices]`` (one parameter per selected image) and write the
results into ``out[indices]`` (`out` defaults to a copy of `images`) — how a policy runs each op on its images.
These and `mean_gray` run through the kernel `registry`: the torch kernels here are the reference on every
device; on the CPU the Numba kernels of `_cpu` replace them, doing the same arithmetic in one pass
(``registry.use_reference_kernels()`` runs the torch kernels there too; the tests check both against torchvision).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as nnf

from .registry import dispatch, register_kernel

Fill = Optional[Union[float, Sequence[float]]]
Params = Union[torch.Tensor, Sequence[float], float]

_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
_DEG_TO_RAD = math.pi / 180.0


def _place(images: torch.Tensor, indices: Optional[torch.Tensor], out: Optional[torch.Tensor],
           compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Run a torch kernel `compute` on the selected images and place its result by the indices/out protocol."""
    if indices is None:
        result = compute(images)
        return result if out is None else out.copy_(result)
    result = compute(images.index_select(0, indices))
    return (images.clone() if out is None else out).index_copy_(0, indices, result)


def check_images(images: torch.Tensor) -> None:
    """Raise TypeError/ValueError unless `images` is a contiguous uint8 (N, C, H, W) tensor with C = 1 or 3."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"augmentation expects a torch.Tensor batch, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"augmentation expects uint8 images (0..255), got dtype {images.dtype}; "
                        f"augment before converting to float")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"augmentation expects an (N, C, H, W) batch with C = 1 or 3, got shape "
                         f"{tuple(images.shape)}")
    if not images.is_contiguous():
        raise ValueError("augmentation expects a contiguous NCHW batch (not channels_last or a strided view); "
                         "call .contiguous() first")


def per_image(values: Params, images: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """`values` as a 1-D tensor with one entry per image of `images` (or per index, when given the indices),
    on their device; a scalar is repeated."""
    tensor = torch.as_tensor(values, dtype=dtype, device=images.device)
    if tensor.dim() == 0:
        tensor = tensor.expand(images.shape[0])
    if tensor.shape != (images.shape[0],):
        raise ValueError(f"expected one parameter per image ({images.shape[0]}), got shape {tuple(tensor.shape)}")
    return tensor


def _rows(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def _to_uint8(values: torch.Tensor) -> torch.Tensor:
    """Clamp to 0..255 and truncate, as torchvision's ``.clamp_(0, 255).to(torch.uint8)``."""
    return values.clamp_(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------------------------------------------
# colour: the point ops are per-image (or per-channel) lookup tables, built with torchvision's float32 arithmetic
# on the 256 levels and then applied to the pixels; blends with a per-pixel partner use torch.addcmul, a fused
# multiply-add like torchvision's ``add_(other, alpha=...)``.


def _levels(device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.arange(256, dtype=dtype, device=device)


def apply_lut(images: torch.Tensor, luts: torch.Tensor, *, indices: Optional[torch.Tensor] = None,
              out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Map every pixel through its image's (N, 1, 256) or its channel's (N, C, 256) uint8 lookup table."""
    return dispatch("apply_lut", images, luts.expand(luts.shape[0], images.shape[1], 256), indices, out)


@register_kernel("apply_lut")
def _apply_lut(images: torch.Tensor, luts: torch.Tensor, indices: Optional[torch.Tensor],
               out: Optional[torch.Tensor]) -> torch.Tensor:
    def gather(selected: torch.Tensor) -> torch.Tensor:
        planes = selected.view(-1, selected.shape[2] * selected.shape[3]).long()
        return luts.reshape(-1, 256).gather(1, planes).view_as(selected)
    return _place(images, indices, out, gather)


def channel_histograms(images: torch.Tensor, *, indices: Optional[torch.Tensor] = None) -> torch.Tensor:
    """int64 (N, C, 256) (or one row per index): how many pixels of each channel have each value."""
    return dispatch("channel_histograms", images, indices)


@register_kernel("channel_histograms")
def _channel_histograms(images: torch.Tensor, indices: Optional[torch.Tensor]) -> torch.Tensor:
    selected = images if indices is None else images.index_select(0, indices)
    planes = selected.view(-1, selected.shape[2] * selected.shape[3])
    offsets = torch.arange(planes.shape[0], device=images.device).mul_(256).view(-1, 1)
    counts = torch.bincount((planes.long() + offsets).view(-1), minlength=planes.shape[0] * 256)
    return counts.view(selected.shape[0], selected.shape[1], 256)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """float32 (N, 1, H, W) luma 0.2989 R + 0.587 G + 0.114 B, with torchvision's operations (not floored)."""
    red, green, blue = images.unbind(1)
    weights = _GRAY_WEIGHTS
    return red.mul(weights[0]).add_(green, alpha=weights[1]).add_(blue, alpha=weights[2]).unsqueeze(1)


def blend(images: torch.Tensor, other: torch.Tensor, ratios: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend``: ratio·image + (1 − ratio)·other, clamped and truncated to uint8.

    `images` integer, `other` float32 broadcastable to them, `ratios` float64 (N,).
    """
    return _to_uint8(torch.addcmul(images.float() * _rows(ratios.float()), other, _rows((1.0 - ratios).float())))


def brightness_lut(factors: torch.Tensor) -> torch.Tensor:
    """(N, 1, 256) tables of ``F.adjust_brightness``: level · factor, clamped, truncated."""
    return _to_uint8(_levels(factors.device) * factors.float().view(-1, 1, 1))


def mean_gray(images: torch.Tensor, *, indices: Optional[torch.Tensor] = None) -> torch.Tensor:
    """float32 (N,) (or one per index): the mean of the floored luma (RGB) or of the pixels (one channel), as
    ``F.adjust_contrast`` computes it."""
    return dispatch("mean_gray", images, indices)


@register_kernel("mean_gray")
def _mean_gray(images: torch.Tensor, indices: Optional[torch.Tensor]) -> torch.Tensor:
    selected = images if indices is None else images.index_select(0, indices)
    gray = grayscale(selected).floor_() if selected.shape[1] == 3 else selected.float()
    return gray.mean(dim=(1, 2, 3))


def contrast_lut(means: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """(N, 1, 256) tables of ``F.adjust_contrast``: blend of each level with the image's mean gray (`mean_gray`)."""
    return blend(_levels(means.device).view(1, 1, 1, 256), _rows(means), factors).view(-1, 1, 256)


def invert_lut(n: int, device: torch.device) -> torch.Tensor:
    """(N, 1, 256) tables of ``F.invert``: 255 − level."""
    return _levels(device, torch.uint8).bitwise_not().expand(n, 1, 256)


def posterize_lut(bits: torch.Tensor) -> torch.Tensor:
    """(N, 1, 256) tables of ``F.posterize``: keep the `bits` (0..8, not checked) most significant bits."""
    masks = ((255 << (8 - bits.long())) & 255).to(torch.uint8)
    return _levels(bits.device, torch.uint8) & masks.view(-1, 1, 1)


def solarize_lut(thresholds: torch.Tensor) -> torch.Tensor:
    """(N, 1, 256) tables of ``F.solarize``: invert the levels ≥ the threshold (compared in float32)."""
    thresholds = thresholds.float()
    levels = _levels(thresholds.device, torch.uint8)
    return torch.where(levels.float() >= thresholds.view(-1, 1, 1), levels.bitwise_not(), levels)


def autocontrast_lut(histograms: torch.Tensor) -> torch.Tensor:
    """(N, C, 256) tables of ``F.autocontrast`` from channel histograms: stretch min..max to 0..255."""
    present = histograms > 0
    levels = _levels(histograms.device)
    low = torch.where(present, levels, 255.0).amin(dim=-1, keepdim=True)
    high = torch.where(present, levels, 0.0).amax(dim=-1, keepdim=True)
    flat = high == low
    inv_scale = (high - low).mul_(1.0 / 255)
    low = low.masked_fill(flat, 0.0)
    inv_scale = inv_scale.masked_fill(flat, 1.0)
    return _to_uint8((levels - low).div_(inv_scale))


def equalize_lut(histograms: torch.Tensor) -> torch.Tensor:
    """(N, C, 256) tables of ``F.equalize`` (PIL's): cumulative counts in steps of (pixels not at the brightest
    level present) // 255, rounded; channels where that step is 0 are left unchanged."""
    levels = _levels(histograms.device, torch.int64)
    brightest = torch.where(histograms > 0, levels, 0).amax(dim=-1, keepdim=True)
    step = (histograms.sum(dim=-1, keepdim=True) - histograms.gather(-1, brightest)) // 255
    below = histograms.cumsum(dim=-1) - histograms  # pixels strictly below each level
    lut = torch.div(below + step // 2, step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    return torch.where(step > 0, lut, levels).to(torch.uint8)


def adjust_brightness(images: torch.Tensor, factors: Params) -> torch.Tensor:
    """Multiply each image by its factor (≥ 0), clamp, truncate: ``F.adjust_brightness``."""
    return apply_lut(images, brightness_lut(_non_negative(per_image(factors, images), "brightness factor")))


def adjust_saturation(images: torch.Tensor, factors: Params, *, indices: Optional[torch.Tensor] = None,
                      out: Optional[torch.Tensor] = None, check: bool = True) -> torch.Tensor:
    """Blend each image with its grayscale version: ``F.adjust_saturation`` (1-channel images are left as is).
    `check=False` skips the factor check (a host sync on CUDA) for trusted, e.g. sampled, factors."""
    factors = per_image(factors, images if indices is None else indices)
    if check:
        _non_negative(factors, "saturation factor")
    if images.shape[1] == 1:
        return _place(images, indices, out, lambda selected: selected)
    return dispatch("adjust_saturation", images, factors, indices, out)


@register_kernel("adjust_saturation")
def _adjust_saturation(images: torch.Tensor, factors: torch.Tensor, indices: Optional[torch.Tensor],
                       out: Optional[torch.Tensor]) -> torch.Tensor:
    """RGB images only; `factors` float64, one per selected image."""
    return _place(images, indices, out, lambda selected: blend(selected, grayscale(selected).floor_(), factors))


def adjust_contrast(images: torch.Tensor, factors: Params) -> torch.Tensor:
    """Blend each image with the mean of its grayscale version: ``F.adjust_contrast``."""
    factors = _non_negative(per_image(factors, images), "contrast factor")
    return apply_lut(images, contrast_lut(mean_gray(images), factors))


def adjust_sharpness(images: torch.Tensor, factors: Params, *, indices: Optional[torch.Tensor] = None,
                     out: Optional[torch.Tensor] = None, check: bool = True) -> torch.Tensor:
    """Blend each image's interior with its 3×3 smoothed version (weights 1, centre 5, /13): ``F.adjust_sharpness``.

    The smoothed value round(Σ/13) is computed from exact integer sums (no tie is possible with a denominator of
    13); the border rows and columns are kept, as torchvision does. `check` as in `adjust_saturation`.
    """
    factors = per_image(factors, images if indices is None else indices)
    if check:
        _non_negative(factors, "sharpness factor")
    height, width = images.shape[-2:]
    if height <= 2 or width <= 2:
        return _place(images, indices, out, lambda selected: selected)
    return dispatch("adjust_sharpness", images, (1.0 - factors).float(), indices, out)


@register_kernel("adjust_sharpness")
def _adjust_sharpness(images: torch.Tensor, alphas: torch.Tensor, indices: Optional[torch.Tensor],
                      out: Optional[torch.Tensor]) -> torch.Tensor:
    """Images larger than 2×2; `alphas` = 1 − factor (float32), one per selected image."""
    def sharpen(selected: torch.Tensor) -> torch.Tensor:
        pixels = selected.float()
        rows = pixels[:, :, :-2] + pixels[:, :, 1:-1] + pixels[:, :, 2:]
        centre = pixels[:, :, 1:-1, 1:-1]
        smoothed = (rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]).add_(centre, alpha=4.0).div_(13.0).round_()
        result = selected.clone()
        result[:, :, 1:-1, 1:-1] = _to_uint8(torch.addcmul(centre, smoothed.sub_(centre), _rows(alphas)))
        return result
    return _place(images, indices, out, sharpen)


def posterize(images: torch.Tensor, bits: Params) -> torch.Tensor:
    """Keep the `bits` (0..8) most significant bits of every pixel: ``F.posterize``."""
    bits = per_image(bits, images, torch.int64)
    if bool(((bits < 0) | (bits > 8)).any()):
        raise ValueError("posterize bits must be in 0..8")
    return apply_lut(images, posterize_lut(bits))


def solarize(images: torch.Tensor, thresholds: Params) -> torch.Tensor:
    """Invert the pixels ≥ the image's threshold (0..255, compared in float32): ``F.solarize``."""
    thresholds = per_image(thresholds, images)
    if bool((thresholds.float() > 255).any()):
        raise ValueError("solarize thresholds must be at most 255 for uint8 images")
    return apply_lut(images, solarize_lut(thresholds))


def autocontrast(images: torch.Tensor) -> torch.Tensor:
    """Stretch each channel to 0..255 from its min and max: ``F.autocontrast``."""
    return apply_lut(images, autocontrast_lut(channel_histograms(images)))


def equalize(images: torch.Tensor) -> torch.Tensor:
    """Histogram-equalize each channel with PIL's lookup table, as ``F.equalize`` does."""
    return apply_lut(images, equalize_lut(channel_histograms(images)))


def invert(images: torch.Tensor) -> torch.Tensor:
    """255 − x: ``F.invert``."""
    return images.bitwise_not()


def _non_negative(factors: torch.Tensor, what: str) -> torch.Tensor:
    if bool((factors < 0).any()):
        raise ValueError(f"{what}s must be non-negative")
    return factors


# ----------------------------------------------------------------------------------------------------------------
# geometry


def inverse_affine_matrices(angles: torch.Tensor, translations: torch.Tensor, scales: torch.Tensor,
                            shears: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Per-image inverse affine matrices (N, 2, 3), float64, in torchvision's convention.

    The forward map is T·C·R(angle)·S(scale)·SHy(shear_y)·SHx(shear_x)·C⁻¹ with angles and shears in degrees
    (clockwise angle, as ``F.affine``); `centers` are relative to the image centre, `translations` in pixels.
    The inverse maps output pixel coordinates (relative to the image centre) to input coordinates.
    """
    rot = angles * _DEG_TO_RAD
    shear_x, shear_y = (shears * _DEG_TO_RAD).unbind(1)
    cx, cy = centers.unbind(1)
    tx, ty = translations.unbind(1)
    cos_sy, tan_sx = torch.cos(shear_y), torch.tan(shear_x)
    a = torch.cos(rot - shear_y) / cos_sy
    b = -(a * tan_sx + torch.sin(rot))
    c = torch.sin(rot - shear_y) / cos_sy
    d = torch.cos(rot) - c * tan_sx
    m0, m1, m3, m4 = d / scales, -b / scales, -c / scales, a / scales
    m2 = cx - m0 * (cx + tx) - m1 * (cy + ty)
    m5 = cy - m3 * (cx + tx) - m4 * (cy + ty)
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1).view(-1, 2, 3)


def pixel_centres(size: int, device: torch.device) -> torch.Tensor:
    """Pixel-centre coordinates relative to the image centre, float32 (torchvision's base grid)."""
    return torch.linspace((1.0 - size) * 0.5, (size - 1.0) * 0.5, size, device=device)


def grid_thetas(inverse_matrices: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """float32 (N, 3, 2): the matrices transposed and divided by the half sizes, as torchvision's _affine_grid."""
    half_sizes = torch.tensor([0.5 * width, 0.5 * height], dtype=torch.float32, device=inverse_matrices.device)
    return inverse_matrices.float().transpose(1, 2) / half_sizes


def affine_grid(inverse_matrices: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The (N, H, W, 2) float32 ``grid_sample`` grid of each matrix, built exactly as torchvision builds it."""
    device = inverse_matrices.device
    base = torch.empty(height, width, 3, dtype=torch.float32, device=device)
    base[..., 0] = pixel_centres(width, device)
    base[..., 1] = pixel_centres(height, device).unsqueeze(-1)
    base[..., 2] = 1.0
    n = inverse_matrices.shape[0]
    thetas = grid_thetas(inverse_matrices, height, width)
    return base.view(1, height * width, 3).expand(n, -1, -1).bmm(thetas).view(n, height, width, 2)


def warp_affine(images: torch.Tensor, inverse_matrices: torch.Tensor, interpolation: str = "nearest",
                fill: Fill = None, *, indices: Optional[torch.Tensor] = None,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Resample each image through its inverse affine matrix (N, 2, 3), torchvision's grid and fill semantics.

    `fill` None leaves zeros outside the source image; a number or one value per channel fills there instead.
    """
    if interpolation not in ("nearest", "bilinear"):
        raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")
    return dispatch("warp_affine", images, inverse_matrices, interpolation, fill, indices, out)


@register_kernel("warp_affine")
def _warp_affine(images: torch.Tensor, inverse_matrices: torch.Tensor, interpolation: str, fill: Fill,
                 indices: Optional[torch.Tensor], out: Optional[torch.Tensor]) -> torch.Tensor:
    channels, height, width = images.shape[1:]

    def resample(selected: torch.Tensor) -> torch.Tensor:
        n = selected.shape[0]
        if n == 0:
            return selected
        pixels = selected.float()
        if fill is not None:  # a ones channel tells where the source image was sampled, as torchvision does
            pixels = torch.cat([pixels, pixels.new_ones(n, 1, height, width)], dim=1)
        grid = affine_grid(inverse_matrices, height, width)
        pixels = nnf.grid_sample(pixels, grid, mode=interpolation, padding_mode="zeros", align_corners=False)
        if fill is not None:
            pixels, inside = pixels[:, :channels], pixels[:, channels:]
            values = fill_values(fill, channels, images.device)
            if interpolation == "nearest":
                pixels = torch.where(inside < 0.5, values.expand_as(pixels), pixels)
            else:
                pixels = (pixels - values) * inside + values
        return pixels.round_().to(torch.uint8)
    return _place(images, indices, out, resample)


def fill_values(fill: Fill, channels: int, device: torch.device) -> torch.Tensor:
    """`fill` as float32 (1, 1 or C, 1, 1)."""
    values = torch.as_tensor(fill, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
    if values.shape[1] not in (1, channels):
        raise ValueError(f"fill has {values.shape[1]} values for {channels}-channel images")
    return values


def affine(images: torch.Tensor, angles: Params, translations: Params, scales: Params, shears: Params,
           centers: Optional[Params] = None, interpolation: str = "nearest", fill: Fill = None) -> torch.Tensor:
    """``F.affine`` with per-image parameters: angles (N,) degrees, translations (N, 2) pixels, scales (N,),
    shears (N, 2) degrees, centers (N, 2) pixel coordinates (None: the image centre)."""
    n, _, height, width = images.shape
    angles = per_image(angles, images)
    scales = per_image(scales, images)
    if bool((scales <= 0).any()):
        raise ValueError("affine scales must be positive")
    translations = _pairs(translations, images)
    shears = _pairs(shears, images)
    half_size = torch.tensor([width * 0.5, height * 0.5], dtype=torch.float64, device=images.device)
    centers = torch.zeros_like(translations) if centers is None else _pairs(centers, images) - half_size
    matrices = inverse_affine_matrices(angles, translations, scales, shears, centers)
    return warp_affine(images, matrices, interpolation, fill)


def rotate(images: torch.Tensor, angles: Params, interpolation: str = "nearest", fill: Fill = None) -> torch.Tensor:
    """Rotate each image counter-clockwise about its centre by its angle in degrees: ``F.rotate`` (no expand)."""
    angles = torch.remainder(per_image(angles, images), 360.0)
    zeros = torch.zeros(images.shape[0], 2, dtype=torch.float64, device=images.device)
    matrices = inverse_affine_matrices(-angles, zeros, torch.ones_like(angles), zeros, zeros)
    return warp_affine(images, matrices, interpolation, fill)


def _pairs(values: Params, images: torch.Tensor) -> torch.Tensor:
    tensor = torch.as_tensor(values, dtype=torch.float64, device=images.device)
    if tensor.dim() == 1 and tensor.shape[0] == 2:
        tensor = tensor.expand(images.shape[0], 2)
    if tensor.shape != (images.shape[0], 2):
        raise ValueError(f"expected an (N, 2) parameter for {images.shape[0]} images, got {tuple(tensor.shape)}")
    return tensor
