"""torchvision v2's augmentation space as a DALI auto_aug suite, and the policies (RandAugment, AutoAugment,
TrivialAugment, jittered RandAugment, cutout) applied over it inside a DALI graph."""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import numpy as np
import torch
from nvidia.dali import fn, types
import nvidia.dali.math as dmath
from nvidia.dali.auto_aug.auto_augment import apply_auto_augment
from nvidia.dali.auto_aug.core import Policy, augmentation, select, signed_bin
from nvidia.dali.auto_aug.rand_augment import apply_rand_augment
from nvidia.dali.auto_aug.trivial_augment import apply_trivial_augment
from torchvision.transforms import v2

from ..spec import AugmentSpec

# ---------------------------------------------------------------- torchvision v2's augmentation space
RANDAUGMENT_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
                   "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
AUTOAUGMENT_BINS = 10  # torchvision's AutoAugment indexes magnitudes_fn(10, h, w)
SIGNED_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
              "Sharpness")
_LINEAR_MAX = {  # op: (maximum of linspace(0, max) for RandAugment/AutoAugment, for TrivialAugmentWide)
    "ShearX": (0.3, 0.99), "ShearY": (0.3, 0.99), "Rotate": (30.0, 135.0), "Brightness": (0.9, 0.99),
    "Color": (0.9, 0.99), "Contrast": (0.9, 0.99), "Sharpness": (0.9, 0.99)}


def magnitude_table(op: str, num_bins: int, height: int, width: int, wide: bool) -> Optional[np.ndarray]:
    """torchvision v2's magnitudes of `op` per bin (unsigned), computed as torchvision computes them."""
    if op in _LINEAR_MAX:
        values = torch.linspace(0.0, _LINEAR_MAX[op][wide], num_bins)
    elif op in ("TranslateX", "TranslateY"):
        side = width if op == "TranslateX" else height
        values = torch.linspace(0.0, 32.0 if wide else 150.0 / 331.0 * side, num_bins)
    elif op == "Posterize":
        values = (8 - (torch.arange(num_bins) / ((num_bins - 1) / (6 if wide else 4)))).round().int()
    elif op == "Solarize":
        values = torch.linspace(1.0, 0.0, num_bins)
    else:
        return None
    return values.numpy()


# ---------------------------------------------------------------- torchvision's ops as DALI kernels (HWC uint8)
def _affine_params(kind: str, height: int, width: int) -> Callable[[float], np.ndarray]:
    """Maps a signed magnitude to the 2x3 inverse matrix (output -> input pixel-edge coordinates) that torchvision's
    F.affine / F.rotate sample with; torchvision's matrices live in centre-origin coordinates."""
    def to_edges(inverse: np.ndarray) -> np.ndarray:
        shift = np.array([[1, 0, width / 2], [0, 1, height / 2], [0, 0, 1]])
        unshift = np.array([[1, 0, -width / 2], [0, 1, -height / 2], [0, 0, 1]])
        return (shift @ np.vstack([inverse, [0, 0, 1]]) @ unshift)[:2].astype(np.float32)

    def params(magnitude: float) -> np.ndarray:
        magnitude = float(magnitude)
        if kind == "TranslateX":
            return to_edges(np.array([[1, 0, -int(magnitude)], [0, 1, 0]]))
        if kind == "TranslateY":
            return to_edges(np.array([[1, 0, 0], [0, 1, -int(magnitude)]]))
        if kind in ("ShearX", "ShearY"):  # shear angle atan(m) about the top-left corner
            t = math.tan(math.radians(math.degrees(math.atan(magnitude))))
            return (np.array([[1, t, 0], [0, 1, 0]]) if kind == "ShearX"
                    else np.array([[1, 0, 0], [t, 1, 0]])).astype(np.float32)
        angle = math.radians(magnitude % 360)  # Rotate: counter-clockwise about the centre
        return to_edges(np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0]]))
    return params


def _warp(data, matrix):
    return fn.warp_affine(data, matrix=matrix, inverse_map=True, fill_value=0, interp_type=types.INTERP_NN)


def _to_uint8(values):
    """Clamp to 0..255 and truncate, as torchvision's float -> uint8 cast does (DALI's cast rounds)."""
    return fn.cast(dmath.floor(dmath.clamp(values, 0.0, 255.0)), dtype=types.UINT8)


def _grey(data):
    """torchvision's uint8 greyscale before blending: floor(0.2989 R + 0.587 G + 0.114 B), kept as float."""
    return dmath.floor(data[:, :, 0:1] * 0.2989 + data[:, :, 1:2] * 0.587 + data[:, :, 2:3] * 0.114)


def _blend_params(magnitude: float) -> np.ndarray:
    factor = 1.0 + float(magnitude)
    return np.array([factor, 1.0 - factor], dtype=np.float32)


def _fused_add(base, alpha, other):
    """float32(base + alpha * other) with one rounding, as torchvision's ``add_(other, alpha=...)`` (a fused
    multiply-add) gives it: in float64 the product and the sum of these 8-bit-scale operands are exact."""
    exact = fn.cast(base, dtype=types.FLOAT64) + fn.cast(alpha, dtype=types.FLOAT64) * fn.cast(
        other, dtype=types.FLOAT64)
    return fn.cast(exact, dtype=types.FLOAT)


def _blend(data, other, weights):
    """torchvision's ``_blend(data, other, ratio)`` with weights = (ratio, 1 - ratio)."""
    return _to_uint8(_fused_add(data * weights[0], weights[1], other))


def _identity(data, _):
    return data


def _brightness(data, factor):
    return _to_uint8(data * factor)


def _color(data, weights):
    return _blend(data, _grey(data), weights)


def _contrast_op(channels: int):
    def contrast(data, weights):
        grey = _grey(data) if channels == 3 else fn.cast(data, dtype=types.FLOAT)
        return _blend(data, fn.reductions.mean(grey, axis_names="HWC", keep_dims=True), weights)
    return contrast


_BLUR = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13


def _sharpness_op(height: int, width: int):
    interior = np.zeros((height, width, 1), dtype=np.float32)
    interior[1:-1, 1:-1] = 1.0  # torchvision keeps the 1-px border

    def sharpness(data, alpha):
        blurred = dmath.floor(fn.filter(data, types.Constant(_BLUR, device=data.device), dtype=types.FLOAT) + 0.5)
        mask = types.Constant(interior, device=data.device)
        return _to_uint8(_fused_add(data, mask * alpha, blurred - data))
    return sharpness


def _posterize_mask(bits) -> np.ndarray:
    bits = int(bits)
    return np.uint8(255 if bits >= 8 else (((1 << bits) - 1) << (8 - bits)) & 0xFF)


def _posterize(data, mask):
    return data & mask


def _solarize(data, threshold):
    keep = data < threshold
    return keep * data + (keep ^ True) * (types.Constant(255, dtype=types.UINT8) - data)


def _autocontrast(data, _):
    low = fn.cast(fn.reductions.min(data, axis_names="HW", keep_dims=True), dtype=types.FLOAT)
    high = fn.cast(fn.reductions.max(data, axis_names="HW", keep_dims=True), dtype=types.FLOAT)
    flat = high == low  # torchvision leaves constant channels as they are
    inv_scale = (high - low) * np.float32(1.0 / 255.0) + flat
    return _to_uint8((data - low * (flat ^ True)) / inv_scale)


def _equalize(data, _):
    return fn.equalize(data)


def _invert(data, _):
    return types.Constant(255, dtype=types.UINT8) - data


def torchvision_suite(spec: AugmentSpec, height: int, width: int, channels: int) -> Dict[str, object]:
    """torchvision v2's ops as DALI auto_aug augmentations for `spec`'s policy on HxWxC images, keyed by name."""
    wide = spec.policy == "trivialaugment"
    bins = AUTOAUGMENT_BINS if spec.policy == "autoaugment" else spec.num_magnitude_bins
    degenerate = height <= 2 or width <= 2
    kernels = {"Identity": (_identity, None), "Brightness": (_brightness, lambda m: np.float32(1.0 + float(m))),
               "Color": ((_color if channels == 3 else _identity), _blend_params),
               "Contrast": (_contrast_op(channels), _blend_params),
               "Sharpness": ((_identity if degenerate else _sharpness_op(height, width)),
                             lambda m: np.float32(1.0 - (1.0 + float(m)))),
               "Posterize": (_posterize, _posterize_mask),
               "Solarize": (_solarize, lambda m: np.float32(255 * float(m))),
               "AutoContrast": (_autocontrast, None), "Equalize": (_equalize, None), "Invert": (_invert, None)}
    for op in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        kernels[op] = (_warp, _affine_params(op, height, width))
    suite = {}
    for name, (kernel, to_param) in kernels.items():
        table = magnitude_table(name, bins, height, width, wide)
        suite[name] = augmentation(kernel, mag_range=table, randomly_negate=name in SIGNED_OPS,
                                   mag_to_param=to_param, name=name,
                                   param_device="cpu" if kernel is _warp else "auto")
    return suite


# ---------------------------------------------------------------- policies over a suite
def torchvision_autoaugment_policy(name: str, suite: Dict[str, object]) -> Policy:
    """torchvision's AutoAugment sub-policies (its own table) over `suite`; never-applied (p=0) steps dropped."""
    table = v2.AutoAugment(v2.AutoAugmentPolicy(name))._policies
    sub_policies = [[(suite[op], p, bin_) for op, p, bin_ in steps if p > 0] for steps in table]
    return Policy(f"torchvision-{name}", AUTOAUGMENT_BINS, sub_policies)


def apply_policy(images, spec: AugmentSpec, suite: Dict[str, object]):
    """`spec`'s policy over `suite` (torchvision_suite, or any suite with the same names) on a HWC uint8 batch."""
    if spec.policy == "randaugment":
        ops = [suite[name] for name in RANDAUGMENT_OPS]
        if spec.magnitude_std == 0:
            return apply_rand_augment(ops, images, spec.num_ops, spec.magnitude,
                                      num_magnitude_bins=spec.num_magnitude_bins)
        return _rand_augment_jittered(ops, images, spec)
    if spec.policy == "trivialaugment":
        return apply_trivial_augment([suite[name] for name in RANDAUGMENT_OPS], images,
                                     num_magnitude_bins=spec.num_magnitude_bins)
    if spec.policy == "autoaugment":
        return apply_auto_augment(torchvision_autoaugment_policy(spec.autoaugment_policy, suite), images)
    return images


def _rand_augment_jittered(ops: list, images, spec: AugmentSpec):
    """RandAugment with a per-image, per-op magnitude bin round(clip(N(magnitude, magnitude_std), 0, bins - 1))."""
    shape = (spec.num_ops,)
    op_index = fn.random.uniform(values=list(range(len(ops))), shape=shape, dtype=types.INT32)
    drawn = dmath.clamp(fn.random.normal(shape=shape) * spec.magnitude_std + spec.magnitude, 0.0,
                        spec.num_magnitude_bins - 1.0)
    signed = signed_bin(fn.cast(dmath.floor(drawn + 0.5), dtype=types.INT32), shape=shape)
    for level in range(spec.num_ops):
        images = select(ops, op_index[level], data=images, magnitude_bin=signed[level],
                        num_magnitude_bins=spec.num_magnitude_bins)
    return images


def cutout(images, side: int, size: int):
    """Zero a side x side square centred on a uniformly drawn pixel of each (size x size) image, clipped."""
    centre = fn.random.uniform(values=list(range(size)), shape=(2,), dtype=types.INT32)
    anchor = fn.cast(centre - side // 2, dtype=types.FLOAT)
    return fn.erase(images, anchor=anchor, shape=[float(side), float(side)], axis_names="HW", fill_value=0)
