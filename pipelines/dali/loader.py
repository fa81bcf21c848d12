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

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, List, Optional, Union

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
import nvidia.dali.math as dmath
from nvidia.dali.plugin.pytorch import feed_ndarray

from ..errors import ConfigError
from ..loader import LoaderCore
from ..sampling import derive_seed
from ..sources import ArraySource, FileSource, Source, open_source
from ..spec import ARRAY_CROP_PADDING, EVAL_CROP_FRACTION, RRC_RATIO, RRC_SCALE, AugmentSpec
from ..validate import inspect_file
from .suite import apply_policy, cutout, torchvision_suite

AUGMENT_BACKENDS = ("dali", "rkd")

# ---------------------------------------------------------------- the graph
def _decode_files(files: list, train: bool, size: int, decode_device: str):
    encoded, _ = fn.readers.file(files=files, random_shuffle=False, pad_last_batch=True, name="reader")
    if train:
        images = fn.decoders.image_random_crop(encoded, device=decode_device, output_type=types.RGB,
                                               random_area=list(RRC_SCALE), random_aspect_ratio=list(RRC_RATIO),
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
                                      random_aspect_ratio=list(RRC_RATIO), antialias=True)
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
class DALILoader(LoaderCore):
    """The loader contract (`pipelines.loader.LoaderCore`) on a DALI graph rebuilt, with its own seed, for every
    epoch.

    Options: `augment_backend` ("dali": auto_aug in the graph; "rkd": `pipelines.augment` on DALI's output),
    `prefetch_queue_depth` (DALI's), `decode_device` ("mixed" or "cpu"; default "mixed" on CUDA),
    `declare_ahead` (declare the next epoch's graph in a background thread during this epoch; default: when
    training on CUDA with auto_aug in the graph, whose declaration -- DALI traces it in Python -- takes seconds).
    `num_workers` is DALI's number of CPU threads. DALI draws its random numbers batch after batch, so resuming
    in the middle of an epoch (`load_state_dict`) runs the epoch's first batches through the graph again.
    """

    backend = "dali"

    def __init__(self, source: Union[str, os.PathLike, Source], *, split: str, batch_size: int,
                 image_size: Optional[int] = None, augment: AugmentSpec = AugmentSpec(), device="cpu",
                 seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: Optional[bool] = None,
                 num_workers: Optional[int] = None, augment_backend: str = "dali", prefetch_queue_depth: int = 2,
                 decode_device: Optional[str] = None, declare_ahead: Optional[bool] = None) -> None:
        if augment_backend not in AUGMENT_BACKENDS:
            raise ConfigError(f"DALILoader: unknown augment_backend {augment_backend!r}: choose one of "
                              f"{', '.join(AUGMENT_BACKENDS)}")
        if torch.device(device).type not in ("cpu", "cuda"):
            raise ConfigError(f"DALILoader: device {device!r}: the dali backend runs on 'cpu' or 'cuda'")
        super().__init__(open_source(source, split), split=split, batch_size=batch_size, image_size=image_size,
                         augment=augment, device=device, seed=seed, rank=rank, world_size=world_size,
                         drop_last=drop_last, stage_augment=augment if augment_backend == "rkd" else None)
        self.decode_device = decode_device or ("mixed" if self.device.type == "cuda" else "cpu")
        if self.decode_device not in ("mixed", "cpu") or (self.decode_device == "mixed" and self.device.type != "cuda"):
            raise ConfigError(f"DALILoader: decode_device {self.decode_device!r}: use 'cpu', or 'mixed' with a "
                              "CUDA device")
        self.num_threads = num_workers or min(8, os.cpu_count() or 1)
        self.prefetch_queue_depth = prefetch_queue_depth
        self._declarer: Optional[ThreadPoolExecutor] = None
        self._ahead: Optional[tuple] = None  # (epoch, future pipeline) declared in the background
        self.array_crop_scale = augment.array_crop_scale
        self.graph_augment = augment if augment.enabled and augment_backend == "dali" else None
        slow_graph = self.graph_augment is not None
        self.declare_ahead = slow_graph and self.device.type == "cuda" if declare_ahead is None else declare_ahead
        if isinstance(self.source, ArraySource):
            self.arrays = self.source.images.permute(0, 2, 3, 1).contiguous().numpy()  # NHWC, as DALI reads

    def _pipeline_for_epoch(self, epoch: int, batches: List[np.ndarray]):
        """This epoch's pipeline: the one declared in the background during the last epoch if it is for this
        epoch, else a new one; with `declare_ahead`, the next epoch's is declared while this epoch runs."""
        ahead, self._ahead = self._ahead, None
        pipe = ahead[1].result() if ahead is not None and ahead[0] == epoch else self._pipeline(batches, epoch)
        if self.declare_ahead:
            if self._declarer is None:
                self._declarer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dali-graph")
            following = epoch + 1
            self._ahead = (following, self._declarer.submit(self._pipeline, self.epoch_batches(following), following))
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

    def _produce(self, epoch: int, start: int) -> Iterator:
        batches = self.epoch_batches(epoch)
        pipe = self._pipeline_for_epoch(epoch, batches)
        try:
            for index, batch in enumerate(batches):
                try:
                    images = self._run(pipe, len(batch))
                except RuntimeError as err:  # DALI reports the batch it failed on a few batches early
                    raise self._read_error(err, batches[index:index + self.prefetch_queue_depth + 1]) from None
                if index >= start:  # earlier batches only replay DALI's random draws
                    yield index, images, self.source.labels[torch.as_tensor(batch)]
        finally:
            del pipe


_DALI_NOISE = ("pipeline", "nvImageCodec failure", "Current pipeline object")


def _dali_cause(err: Exception) -> str:
    """The line of a DALI error that names the cause (DALI errors carry the whole pipeline traceback)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = [line for line in lines if not any(noise in line for noise in _DALI_NOISE)
             and not line.startswith(("File ", "Error in")) and ".cc:" not in line and ".h:" not in line]
    return lines[-1] if lines else "its decoder failed"
