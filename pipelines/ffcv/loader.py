"""The `ffcv` backend: a .beton read by FFCV's JIT-compiled loader, then the shared device stage.

JPEG trees: FFCV decodes, crops (RandomResizedCrop for training; for evaluation the box that the torch
backend's Resize + CenterCrop keeps), resizes (OpenCV INTER_AREA), flips, and moves the uint8 batch to the device
(`ToDevice`, non-blocking). Crops and flips are drawn in batch order from numba's RNG of the loader thread,
seeded per batch from (seed, epoch, rank, batch index): the same seed gives the same batches.
Arrays (Fashion-MNIST, CIFAR): FFCV reads the stored pixels, and the torch backend's own pad-crop + flip runs on
the batch with the torch backend's seeds, so with equal seeds both backends yield the same training batches.
Order: "random" is the torch backend's order (pipelines.sampling.shard_indices: per-epoch shuffle, rank shards,
no process group needed); "quasi_random" is FFCV's page-local order on a fixed shard of this rank.
The FFCV Loader is built once and compiled on the first epoch (seconds); later epochs reuse the code.

Sources that are not .beton files are converted once into the cache (`pipelines.ffcv.beton.cached_beton`), so bad
input (missing or truncated .beton, other fields, corrupt JPEGs) is refused before the first batch. Two fixes to
FFCV 1.0.2 live here: an exception in FFCV's loader thread reaches the consumer instead of leaving it waiting,
and OSCacheManager no longer edits numba's interned array type in place (see `_os_cache_state_type`).
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from queue import Full
from typing import Callable, Iterator, Optional, Union

import numba as nb
import numpy as np
import torch
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder, SimpleRGBImageDecoder, get_random_crop
from ffcv.libffcv import ctypes_imdecode, ctypes_resize
from ffcv.loader import Loader, OrderOption
from ffcv.loader.epoch_iterator import IS_CUDA, EpochIterator
from ffcv.memory_managers import OSCacheManager
from ffcv.pipeline.compiler import Compiler
from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage
from ffcv.traversal_order import QuasiRandom
from ffcv.traversal_order.base import TraversalOrder
from numba import njit

from ..crops import eval_crop_box
from .beton import IMAGE_FIELD, LABEL_FIELD, BetonInfo, cached_beton, read_beton
from ..device_stage import DeviceStage
from ..errors import ConfigError
from ..sampling import derive_seed, shard_indices
from ..sources import Source, open_source, resolve_path
from ..spec import EVAL_CROP_FRACTION, RRC_RATIO, RRC_SCALE, AugmentSpec
from ..torch_backend import array_batch_transform

ORDERS = ("random", "quasi_random")

_READONLY_BYTES = nb.types.Array(nb.uint8, 1, "C", readonly=True)


def _os_cache_state_type(self) -> nb.types.Tuple:
    """OSCacheManager's state type, declared without FFCV 1.0.2's in-place `mutable = False` on numba's
    interned ``uint8[::1]`` type: that edit changes the hash of a type numba has already stored in dictionaries,
    and later compilations of any function taking 1-d uint8 arrays fail with a KeyError."""
    pointers = nb.types.Array(nb.uint64, 1, "C")
    return nb.types.Tuple([_READONLY_BYTES, pointers, pointers])


def _os_cache_compile_reader(self) -> Callable:
    """OSCacheManager's reader (a slice of the memory-mapped file), typed with `_os_cache_state_type`."""
    def read(address, mem_state):
        size = mem_state[2][np.searchsorted(mem_state[1], address)]
        return mem_state[0][address:address + size]

    return Compiler.compile(read, _READONLY_BYTES(nb.uint64, self.state_type))


OSCacheManager.state_type = property(_os_cache_state_type)
OSCacheManager.compile_reader = _os_cache_compile_reader


@njit
def _seed_thread_rng(seed: int) -> None:
    np.random.seed(seed)


@njit(nogil=True)
def _decode_jpeg(data, out, height, width):
    """Decode the JPEG bytes `data` (height × width) into the flat buffer `out` as HWC RGB."""
    ctypes_imdecode(data.ctypes.data, data.size, height, width, out.ctypes.data, height, width, 0, 0, 1, 1,
                    False, False)


@njit(nogil=True)
def _resize_box(image, top, left, height, width, out):
    """Resize the box of HWC `image` into `out` (OpenCV INTER_AREA, as FFCV's decoders)."""
    ctypes_resize(0, image.ctypes.data, image.shape[0], image.shape[1], top, top + height, left, left + width,
                  out.ctypes.data, out.shape[0], out.shape[1])


# Compiled once per process and shared by every decoder: later loaders compile only their own pipeline code.
_RANDOM_CROP, _CENTER_CROP = njit(nogil=True)(get_random_crop), njit(nogil=True)(eval_crop_box)


class CropFlipDecoder(ResizedCropRGBImageDecoder):
    """FFCV decoder for RGBImageField: decode, crop, resize to `size`², flip.

    Training: RandomResizedCrop boxes (torchvision's sampling) and p=0.5 flips; evaluation: `eval_crop_box`.
    The boxes and flips are drawn sequentially in batch order before the parallel decode, from the RNG of the
    calling thread, which `_SeededEpochIterator` seeds per batch.
    """

    def __init__(self, size: int, train: bool) -> None:
        super().__init__((size, size))
        self.train, self.scale, self.ratio = train, RRC_SCALE, RRC_RATIO
        self.resize_to = round(size / EVAL_CROP_FRACTION)

    @property
    def get_crop_generator(self):  # abstract in FFCV's base class; generate_code calls the shared compiled copies
        return get_random_crop if self.train else eval_crop_box

    def generate_code(self) -> Callable:
        mem_read, my_range, jpg = self.memory_read, Compiler.get_iterator(), IMAGE_MODES["jpg"]
        random_crop, center_crop = _RANDOM_CROP, _CENTER_CROP
        train, size, resize_to = self.train, self.output_size[0], self.resize_to
        scale, ratio = np.array(self.scale), np.array(self.ratio)

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            count = len(batch_indices)
            boxes = np.zeros((count, 5), dtype=np.int64)
            for k in range(count):  # sequential: the seeded draws happen in batch order
                field = metadata[batch_indices[k]]
                height, width = np.int64(field["height"]), np.int64(field["width"])
                if train:
                    i, j, h, w = random_crop(height, width, scale, ratio)
                    boxes[k, 4] = np.random.uniform(0.0, 1.0) < 0.5
                else:
                    i, j, h, w = center_crop(height, width, size, resize_to)
                boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3] = i, j, h, w
            for k in my_range(count):
                field = metadata[batch_indices[k]]
                image_data = mem_read(field["data_ptr"], storage_state)
                height, width = np.uint32(field["height"]), np.uint32(field["width"])
                if field["mode"] == jpg:
                    buffer = temp_storage[k]
                    _decode_jpeg(image_data, buffer, height, width)
                    image = buffer.reshape(-1)[:3 * height * width].reshape(height, width, 3)
                else:
                    image = image_data.reshape(height, width, 3)
                i, j, h, w = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
                out = destination[k]
                _resize_box(image, i, j, h, w, out)
                if boxes[k, 4]:
                    last = out.shape[1] - 1
                    for x in range(out.shape[1] // 2):
                        for y in range(out.shape[0]):
                            for c in range(3):
                                out[y, x, c], out[y, last - x, c] = out[y, last - x, c], out[y, x, c]
            return destination[:count]

        decode.is_parallel = True
        return decode


class _ShardOrder(TraversalOrder):
    """FFCV traversal order given by a function of the epoch (here: this rank's shard_indices)."""

    def __init__(self, loader: Loader, order_of_epoch: Callable[[int], np.ndarray]) -> None:
        super().__init__(loader)
        self.order_of_epoch = order_of_epoch

    def sample_order(self, epoch: int) -> np.ndarray:
        return self.order_of_epoch(epoch)


class _ReproducibleQuasiRandom(QuasiRandom):
    """FFCV's QuasiRandom order as a function of (seed, epoch) only: FFCV's shuffles its page table in place,
    so each epoch's order also depended on the epochs sampled before it."""

    def sample_order(self, epoch: int) -> np.ndarray:
        pristine = self.page_to_samples_array
        self.page_to_samples_array = pristine.copy()
        try:
            return super().sample_order(epoch)
        finally:
            self.page_to_samples_array = pristine


class _SeededEpochIterator(EpochIterator):
    """FFCV's epoch iterator, seeding its thread's numba RNG before each batch's pipeline runs."""

    def __init__(self, loader: Loader, order: np.ndarray, batch_seeds: list) -> None:
        self.batch_seeds = batch_seeds
        super().__init__(loader, order)

    def run_pipeline(self, b_ix, batch_indices, batch_slot, cuda_event):
        _seed_thread_rng(self.batch_seeds[b_ix])
        return super().run_pipeline(b_ix, batch_indices, batch_slot, cuda_event)

    def run(self) -> None:
        """FFCV's producer loop; an exception in it reaches the consumer (FFCV's own would leave it waiting)."""
        try:
            super().run()
        except BaseException as err:  # noqa: BLE001 - handed over to __next__, which re-raises it
            while not self.terminate_event.is_set():
                try:
                    self.output_queue.put(err, timeout=0.5)
                    return
                except Full:
                    pass

    def __next__(self):
        item = self.output_queue.get()
        if item is None or isinstance(item, BaseException):
            self.close()
            if item is None:
                raise StopIteration
            raise item
        slot, result = item
        if IS_CUDA:
            self.current_stream.wait_stream(self.cuda_streams[slot])
        return result


class _SeededLoader(Loader):
    """FFCV's Loader with our traversal order and per-batch seeds derived from (seed, epoch, rank)."""

    def __init__(self, *args, seed_key: tuple, traversal: Callable[[Loader], TraversalOrder], **kwargs) -> None:
        super().__init__(*args, order=OrderOption.SEQUENTIAL, **kwargs)
        self.seed_key = seed_key
        self.traversal_order = traversal(self)
        self.first_traversal_order = self.next_traversal_order()

    def __iter__(self) -> EpochIterator:
        Compiler.set_num_threads(self.num_workers)
        epoch = self.next_epoch
        order = self.traversal_order.sample_order(epoch)[:len(self) * self.batch_size]
        self.next_epoch += 1
        if self.code is None:
            self.generate_code()
        seeds = [derive_seed(*self.seed_key, epoch, b, 0xFF) & 0xFFFFFFFF for b in range(len(self))]
        return _SeededEpochIterator(self, order, seeds)


def open_beton(source: Union[str, Path, Source], split: str,
               **conversion) -> tuple[BetonInfo, Union[Source, BetonInfo]]:
    """(BetonInfo, Source or BetonInfo): a .beton path as is, anything else converted once into the cache."""
    if isinstance(source, (str, Path)) and (path := resolve_path(source)).suffix == ".beton":
        info = read_beton(path)
        return info, info
    opened = open_source(source, split)
    return cached_beton(opened, split, **conversion), opened


class FFCVLoader:
    """The loader contract of DESIGN.md on FFCV (see the module docstring).

    Extra options: `order` ("random" | "quasi_random"), `os_cache`, `batches_ahead`, and for sources that are
    converted into the cache `write_mode`, `max_resolution`, `jpeg_quality`, `cache_dir`.
    `num_workers` is FFCV's thread count (default: all cores); note that FFCV also sets torch's thread count.
    """

    def __init__(self, source: Union[str, Path, Source], *, split: str, batch_size: int,
                 image_size: Optional[int] = None, augment: AugmentSpec = AugmentSpec(), device="cpu",
                 seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: Optional[bool] = None,
                 num_workers: Optional[int] = None, order: str = "random", os_cache: bool = True,
                 batches_ahead: int = 3, write_mode: Optional[str] = None, max_resolution: Optional[int] = None,
                 jpeg_quality: int = 90, cache_dir: Optional[Union[str, Path]] = None) -> None:
        if order not in ORDERS:
            raise ConfigError(f"unknown ffcv order {order!r}: choose one of {', '.join(ORDERS)}")
        self.train = split == "train"
        self.array_crop_scale = augment.array_crop_scale
        self.info, self.source = open_beton(source, split, write_mode=write_mode, max_resolution=max_resolution,
                                            jpeg_quality=jpeg_quality, cache_dir=cache_dir)
        if self.train and self.info.split == "test":
            raise ConfigError(f"source: {self.info.path} holds the test split of {self.info.source or self.info.name}, "
                              "which must not be trained on: convert the train split (rkd convert SOURCE OUT "
                              "--split train)")
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.drop_last = self.train if drop_last is None else drop_last
        self.image_size = image_size or self.info.native_size
        if self.image_size is None:
            raise ConfigError("--image-size is required for a JPEG tree (e.g. 224)")
        self.device = torch.device(device)
        self.num_workers = num_workers if num_workers and num_workers > 0 else len(os.sched_getaffinity(0))
        self.epoch = 0
        self.stage = DeviceStage(self.info.mean, self.info.std, self.device, augment if self.train else None,
                                 seed, rank)
        self._loader = self._build_loader(order if self.train else "random", os_cache, batches_ahead)

    def _image_pipeline(self) -> list:
        if self.info.kind == "array":
            return [SimpleRGBImageDecoder(), ToTensor(), ToTorchImage(channels_last=True, convert_back_int16=False)]
        to_device = [ToDevice(self.device, non_blocking=True)] if self.device.type != "cpu" else []
        return [CropFlipDecoder(self.image_size, self.train), ToTensor(), *to_device,
                ToTorchImage(channels_last=True, convert_back_int16=False)]

    def _build_loader(self, order: str, os_cache: bool, batches_ahead: int) -> _SeededLoader:
        shard = partial(shard_indices, len(self.info), seed=self.seed, rank=self.rank, world_size=self.world_size,
                        shuffle=self.train)
        pipelines = {IMAGE_FIELD: self._image_pipeline(), LABEL_FIELD: [IntDecoder(), ToTensor(), Squeeze(1)],
                     **{name: None for name in self.info.extra_fields}}
        common = dict(batch_size=self.batch_size, num_workers=self.num_workers, os_cache=os_cache,
                      seed=self.seed, drop_last=self.drop_last, batches_ahead=batches_ahead, pipelines=pipelines,
                      seed_key=(self.seed, self.rank))
        path = str(self.info.path)
        if order == "quasi_random":  # a fixed shard without wrap-around padding: QuasiRandom needs unique samples
            return _SeededLoader(path, indices=shard(epoch=0, shuffle=False, drop_last=True),
                                 traversal=_ReproducibleQuasiRandom, **common)
        by_epoch = partial(shard, drop_last=self.drop_last)
        return _SeededLoader(path, traversal=lambda loader: _ShardOrder(loader, lambda e: by_epoch(epoch=e)), **common)

    def epoch_indices(self, epoch: Optional[int] = None) -> np.ndarray:
        """The sample indices this rank reads in `epoch` (default: the current one), in order."""
        order = self._loader.traversal_order.sample_order(self.epoch if epoch is None else epoch)
        return np.asarray(order)[:len(self) * self.batch_size]

    def __len__(self) -> int:
        return len(self._loader)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle and reseed crops, flips and augmentation for `epoch`."""
        self.epoch = epoch

    def _array_batch(self, images: torch.Tensor, batch_index: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, self.rank, batch_index))
        return array_batch_transform(images[:, :self.info.channels], self.image_size, self.train, generator,
                                     self.array_crop_scale)

    def __iter__(self) -> Iterator:
        self._loader.next_epoch = self.epoch
        batches = iter(self._loader)
        try:
            for batch_index, (images, labels) in enumerate(batches):
                if self.info.kind == "array":
                    images = self._array_batch(images, batch_index)
                # FFCV reuses its output buffers a few batches later: the stage makes new images, labels are copied
                yield self.stage(images, labels.clone(), self.epoch, batch_index)
        finally:
            batches.close()
