"""The `dali` backend: a DALI graph decodes, crops, flips and (by default) augments; the shared device stage
normalizes.

Reading. JPEG trees go through ``fn.readers.file`` and ``fn.decoders.image`` ("mixed" = nvJPEG / hardware JPEG
decoder when the device is CUDA, "cpu" otherwise): RandomResizedCrop (``decoders.image_random_crop``, scale
0.08-1, ratio 3/4-4/3) + flip for training; for evaluation torchvision's Resize(S/0.875) + CenterCrop(S), computed
in integers in the graph (longer side truncated, centre offset rounded half-to-even). Array sources
(Fashion-MNIST, CIFAR) go through ``fn.external_source``; training crops them with 4 px of zero padding and flips,
as the torch backend does. DALI's image ops take HWC uint8 with 1 or 3 channels, so 1-channel Fashion-MNIST runs
through the same graph as RGB data (every op used here is tested on 1 channel).

What is exact. Each epoch's order is `pipelines.sampling.shard_indices`, the torch backend's: the reader gets
this rank's epoch order as its file list (its own ``random_shuffle`` is a buffered shuffle seeded once per build,
and its ``shard_id``/``num_shards`` pad shards differently) and its ``pad_last_batch`` padding is cut off. The
graph is rebuilt every epoch with seed ``derive_seed(seed, epoch, rank)``, so (seed, epoch) fixes every crop,
flip and augmentation whatever the number of threads; declaring a graph with auto_aug costs ~1-4 s of Python
(DALI traces it), hidden by `declare_ahead` on CUDA. Evaluation batches equal the torch backend's exactly for
arrays at native size, and within one grey level for JPEG trees on the CPU (both decode with libjpeg-turbo; the
resamplers round differently; nvJPEG decodes slightly differently). Training draws are DALI's own: distributed
like the torch backend's, not the same. Batches are copied out of DALI's buffers (``feed_ndarray``) into fresh
torch tensors, so a batch stays valid after DALI produces the next.

Augmentation. ``augment_backend="dali"`` (default: in the graph, on the GPU with CUDA) applies the policy with
``nvidia.dali.auto_aug`` (``apply_rand_augment``, ``apply_auto_augment``, ``apply_trivial_augment``) over
`torchvision_suite`, declared with ``@augmentation`` so that op set, bins, ranges, signs and pixels are
torchvision v2's, which `pipelines.augment` implements. ``augment_backend="rkd"`` hands DALI's uint8 NCHW batch
to `pipelines.augment` through the device stage instead.

DALI's own suites differ from torchvision v2 as follows; `torchvision_suite` aligns all but the last point.
- Translate: DALI's RandAugment shifts up to 100 px (or 100/224 of the size), its AutoAugment 250 px (or the whole
  size); torchvision up to 150/331 of the size, truncated to whole pixels (TrivialAugment: 32 px in both).
- Solarize: DALI's thresholds are linspace(256, 0), torchvision's 255 * linspace(1, 0): bin 0 inverts pixels of
  value 255 in torchvision, none in DALI.
- TrivialAugment's enhance ops: DALI's range is 0.01-0.99, torchvision's 0-0.99 (bin 0 is the identity only there).
- AutoAugment: DALI's "image_net" is TensorFlow's policy; torchvision's IMAGENET is DALI's "reduced_image_net"
  (CIFAR10 = "reduced_cifar10"). DALI uses 11 bins and AutoAugment's non-monotonic ranges (enhance factor 0.1-1.9
  unsigned, posterize keeping 0-4 bits, solarize 0-256); torchvision 10 bins and its RandAugment ranges (signed
  0-0.9, 8-4 bits, 255-0). Here torchvision's own sub-policy table is used.
- Shear: DALI shears x' = x + m y, torchvision x' = x - m y (same distribution, opposite sign per bin).
- Geometric ops: DALI defaults to bilinear sampling and fill 128, torchvision's policies to nearest and fill 0;
  the suite samples with torchvision's inverse matrices (rotation about the centre, shear about the corner).
- Brightness, Contrast, Color, Sharpness, AutoContrast: DALI's ops round (``fn.saturation`` works in HSV, its
  contrast centre uses PIL's weights, its sharpness filters the 1-px border); torchvision blends with its grey
  weights in one fused multiply-add, truncates to uint8 and keeps the border. The suite does the same
  (bit-exact in the tests). On 1 channel, Color is the identity, as in torchvision.
- ``magnitude_std`` (timm's mstd, RandAugment only): DALI's ``rand_augment`` has one fixed bin; here each image
  and op draws its bin from clip(N(magnitude, std), 0, bins - 1), as `pipelines.augment` does.
- Cutout (not in auto_aug): ``fn.erase`` zeroes a ``cutout``-pixel square centred on a uniformly drawn pixel,
  clipped at the border, as `pipelines.augment.cutout`.
- Not aligned: (1) Equalize is DALI's ``fn.equalize``: OpenCV's lookup table round(255 (cdf(v) - cdf(min)) /
  (n - cdf(min))) on the inclusive cumulative histogram, where torchvision (PIL) uses the exclusive one: a grey
  level holding a share s of the pixels comes out about 255 s brighter (4-12 grey levels on average on the test
  photos). DALI has no histogram or per-image lookup-table op to build PIL's. (2) The jittered bin is rounded to
  the nearest bin (DALI tabulates op parameters per bin, and finer tables make its Python graph tracing far
  slower); `pipelines.augment` interpolates between bins. (3) Nearest-neighbour ties (source points exactly
  between pixels) round up in DALI and half-to-even in torchvision: up to ~9% of pixels at some shear bins.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterator, List, Optional, Union

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
import nvidia.dali.math as dmath
from nvidia.dali.auto_aug.auto_augment import apply_auto_augment
from nvidia.dali.auto_aug.core import Policy, augmentation, select, signed_bin
from nvidia.dali.auto_aug.rand_augment import apply_rand_augment
from nvidia.dali.auto_aug.trivial_augment import apply_trivial_augment
from nvidia.dali.plugin.pytorch import feed_ndarray
from torchvision.transforms import v2

from ..device_stage import DeviceStage
from ..errors import ConfigError
from ..sampling import derive_seed, epoch_batches, shard_indices, split_batches
from ..sources import ArraySource, FileSource, Source, open_source
from ..spec import AugmentSpec
from ..torch_backend import ARRAY_CROP_PADDING, EVAL_CROP_FRACTION
from ..validate import inspect_file

AUGMENT_BACKENDS = ("dali", "rkd")

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


# ---------------------------------------------------------------- the graph
def _decode_files(files: list, train: bool, size: int, decode_device: str):
    encoded, _ = fn.readers.file(files=files, random_shuffle=False, pad_last_batch=True, name="reader")
    if train:
        images = fn.decoders.image_random_crop(encoded, device=decode_device, output_type=types.RGB,
                                               random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3],
                                               num_attempts=10)
        return fn.resize(images, size=[size, size], antialias=True, interp_type=types.INTERP_LINEAR)
    resized, anchor = _eval_geometry(encoded, size)
    images = fn.decoders.image(encoded, device=decode_device, output_type=types.RGB)
    images = fn.resize(images, size=resized, antialias=True, interp_type=types.INTERP_LINEAR)
    return fn.slice(images, start=anchor, shape=[size, size], axis_names="HW")


def _eval_geometry(encoded, size: int):
    """torchvision's Resize(round(size / 0.875)) + CenterCrop(size) in integers: the resized (H, W) and the crop's
    top-left corner of each image (the shorter side scaled, the longer truncated; the offset rounded half-even)."""
    shape = fn.peek_image_shape(encoded, dtype=types.INT32)
    height, width = shape[0], shape[1]
    target = round(size / EVAL_CROP_FRACTION)
    portrait = width <= height
    longer = (target * dmath.max(height, width)) // dmath.min(height, width)
    new_height = portrait * longer + (portrait ^ True) * target
    new_width = portrait * target + (portrait ^ True) * longer

    def centre_offset(extent):
        excess = extent - size
        return excess // 2 + (excess - 4 * (excess // 4) == 3)  # round(excess / 2), ties to even

    resized = fn.cast(fn.stack(new_height, new_width), dtype=types.FLOAT)
    return resized, fn.stack(centre_offset(new_height), centre_offset(new_width))


def _array_images(batches: Iterator, train: bool, size: int, native: int, cuda: bool,
                  crop_scale: Optional[float] = None):
    images = fn.external_source(source=batches, batch=True, layout="HWC", device="cpu")
    if cuda:
        images = images.gpu()
    if train and crop_scale is not None:  # DALI's own RandomResizedCrop sampling, torchvision's area and ratio ranges
        return fn.random_resized_crop(images, size=[size, size], random_area=[crop_scale, 1.0],
                                      random_aspect_ratio=[3 / 4, 4 / 3], antialias=True)
    if size != native:
        images = fn.resize(images, size=[size, size], antialias=True, interp_type=types.INTERP_LINEAR)
    if train:  # the zero-padded random crop of the torch backend, as one out-of-bounds slice
        offset = fn.random.uniform(values=list(range(-ARRAY_CROP_PADDING, ARRAY_CROP_PADDING + 1)), shape=(2,),
                                   dtype=types.INT32)
        images = fn.slice(images, start=offset, shape=[size, size], axis_names="HW", out_of_bounds_policy="pad",
                          fill_values=0)
    return images


def _graph(reader: Callable, train: bool, augment: Optional[AugmentSpec], channels: int, size: int):
    images = reader()
    if train:
        images = fn.flip(images, horizontal=fn.random.coin_flip(dtype=types.INT32))
    if augment is not None:
        images = apply_policy(images, augment, torchvision_suite(augment, size, size, channels))
        if augment.cutout:
            images = cutout(images, augment.cutout, size)
    return images


# ---------------------------------------------------------------- the loader
class DALILoader:
    """The loader contract of DESIGN.md on a DALI graph rebuilt, with its own seed, for every epoch.

    Extra keyword arguments: `augment_backend` ("dali": auto_aug in the graph; "rkd": `pipelines.augment` on
    DALI's output), `prefetch_queue_depth` (DALI's), `decode_device` ("mixed" or "cpu"; default "mixed" on CUDA),
    `declare_ahead` (declare the next epoch's graph in a background thread during this epoch; default: when
    training on CUDA with auto_aug in the graph, whose declaration -- DALI traces it in Python -- takes seconds).
    `num_workers` is DALI's number of CPU threads.
    """

    def __init__(self, source: Union[str, os.PathLike, Source], *, split: str, batch_size: int,
                 image_size: Optional[int] = None, augment: AugmentSpec = AugmentSpec(), device="cpu",
                 seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: Optional[bool] = None,
                 num_workers: Optional[int] = None, augment_backend: str = "dali", prefetch_queue_depth: int = 2,
                 decode_device: Optional[str] = None, declare_ahead: Optional[bool] = None) -> None:
        if augment_backend not in AUGMENT_BACKENDS:
            raise ConfigError(f"unknown augment_backend {augment_backend!r}: choose one of "
                              f"{', '.join(AUGMENT_BACKENDS)}")
        self.source = open_source(source, split)
        self.train = split == "train"
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.drop_last = self.train if drop_last is None else drop_last
        self.image_size = image_size or self.source.native_size
        if self.image_size is None:
            raise ConfigError("--image-size is required for a JPEG tree (e.g. 224)")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available here; use --device cpu")
        if self.device.type not in ("cpu", "cuda"):
            raise ConfigError(f"--device {device}: the dali loader runs on cpu or cuda")
        self.decode_device = decode_device or ("mixed" if self.device.type == "cuda" else "cpu")
        if self.decode_device not in ("mixed", "cpu") or (self.decode_device == "mixed" and self.device.type != "cuda"):
            raise ConfigError(f"decode_device {self.decode_device!r}: use 'cpu', or 'mixed' with a CUDA device")
        self.num_threads = num_workers or min(8, os.cpu_count() or 1)
        self.prefetch_queue_depth = prefetch_queue_depth
        self.epoch = 0
        self._declarer: Optional[ThreadPoolExecutor] = None
        self._ahead: Optional[tuple] = None  # (epoch, future pipeline) declared in the background
        self.array_crop_scale = augment.array_crop_scale
        augment = augment if self.train else AugmentSpec()
        self.graph_augment = augment if augment.enabled and augment_backend == "dali" else None
        slow_graph = self.graph_augment is not None
        self.declare_ahead = slow_graph and self.device.type == "cuda" if declare_ahead is None else declare_ahead
        self.stage = DeviceStage(self.source.mean, self.source.std, self.device,
                                 augment if augment_backend == "rkd" else None, seed, rank)
        if isinstance(self.source, ArraySource):
            self.arrays = self.source.images.permute(0, 2, 3, 1).contiguous().numpy()  # NHWC, as DALI reads

    def _batches(self, epoch: Optional[int] = None) -> List[np.ndarray]:
        indices = shard_indices(len(self.source), seed=self.seed, epoch=self.epoch if epoch is None else epoch,
                                rank=self.rank, world_size=self.world_size, shuffle=self.train,
                                drop_last=self.drop_last)
        return split_batches(indices, self.batch_size, self.drop_last)

    def __len__(self) -> int:
        return epoch_batches(len(self.source), self.world_size, self.batch_size, self.drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle and reseed (crops, flips, augmentation) for `epoch`."""
        self.epoch = epoch

    def _pipeline_for_this_epoch(self, batches: List[np.ndarray]):
        """This epoch's pipeline: the one declared in the background during the last epoch if it is for this
        epoch, else a new one; with `declare_ahead`, the next epoch's is declared while this epoch runs."""
        ahead, self._ahead = self._ahead, None
        pipe = ahead[1].result() if ahead is not None and ahead[0] == self.epoch else self._pipeline(batches,
                                                                                                    self.epoch)
        if self.declare_ahead:
            if self._declarer is None:
                self._declarer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dali-graph")
            following = self.epoch + 1
            self._ahead = (following, self._declarer.submit(self._pipeline, self._batches(following), following))
        return pipe

    def _pipeline(self, batches: List[np.ndarray], epoch: int):
        cuda = self.device.type == "cuda"
        if isinstance(self.source, FileSource):
            files = self.source.files.paths(np.concatenate(batches)) if batches else []
            reader = lambda: _decode_files(files, self.train, self.image_size, self.decode_device)  # noqa: E731
        else:
            arrays = (self.arrays[batch] for batch in batches)
            reader = lambda: _array_images(arrays, self.train, self.image_size,  # noqa: E731
                                           self.source.native_size, cuda, self.array_crop_scale)
        graph = pipeline_def(_graph, enable_conditionals=self.graph_augment is not None)
        pipe = graph(reader=reader, train=self.train, augment=self.graph_augment, channels=self.source.channels,
                     size=self.image_size, batch_size=self.batch_size, num_threads=self.num_threads,
                     device_id=self._device_id() if cuda else None,
                     seed=derive_seed(self.seed, epoch, self.rank) % (1 << 31),
                     prefetch_queue_depth=self.prefetch_queue_depth)
        pipe.build()
        return pipe

    def _device_id(self) -> int:
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    def _run(self, pipe, count: int) -> torch.Tensor:
        """The next batch as a fresh uint8 NCHW (channels_last) torch tensor on the device, `count` images."""
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        (images,) = pipe.run(stream)
        images = images.as_tensor()
        out = torch.empty(images.shape(), dtype=torch.uint8, device=self.device)
        feed_ndarray(images, out, cuda_stream=stream)
        return out[:count].permute(0, 3, 1, 2)

    def _read_error(self, err: RuntimeError, pending: List[np.ndarray]) -> ConfigError:
        """A one-line error for a failed batch, naming the file if one of the `pending` batches holds it (a file
        that changed after `open_source` checked it)."""
        if isinstance(self.source, FileSource):
            for index in np.concatenate(pending):
                path = self.source.files[index]
                reason, _ = inspect_file(path)
                if reason:
                    return ConfigError(f"source: DALI cannot decode {path} ({reason}); remove or replace the file")
        return ConfigError(f"source: DALI failed on {self.source.path} ({_dali_cause(err)})")

    def __iter__(self) -> Iterator:
        batches = self._batches()
        if not batches:
            return
        pipe = self._pipeline_for_this_epoch(batches)
        try:
            for index, batch in enumerate(batches):
                try:
                    images = self._run(pipe, len(batch))
                except RuntimeError as err:  # DALI reports the batch it failed on a few batches early
                    raise self._read_error(err, batches[index:index + self.prefetch_queue_depth + 1]) from None
                yield self.stage(images, self.source.labels[torch.as_tensor(batch)], self.epoch, index)
        finally:
            del pipe


_DALI_NOISE = ("pipeline", "nvImageCodec failure", "Current pipeline object")


def _dali_cause(err: Exception) -> str:
    """The line of a DALI error that names the cause (DALI errors carry the whole pipeline traceback)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = [line for line in lines if not any(noise in line for noise in _DALI_NOISE)
             and not line.startswith(("File ", "Error in")) and ".cc:" not in line and ".h:" not in line]
    return lines[-1] if lines else "its decoder failed"
