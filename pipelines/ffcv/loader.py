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
input (missing or truncated .beton, other fields, corrupt JPEGs) is refused before the first batch. The loader
applies the fixes to FFCV 1.0.2 of `pipelines.ffcv.fixes` when it is built (never when this module is imported).
Resuming mid-epoch starts FFCV's epoch iterator at the first remaining batch, with that batch's seed.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import numpy as np
import torch
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import SimpleRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.loader.epoch_iterator import EpochIterator
from ffcv.pipeline.compiler import Compiler
from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage
from ffcv.traversal_order.base import TraversalOrder
from numba import njit

from .beton import IMAGE_FIELD, LABEL_FIELD, BetonInfo, cached_beton, read_beton
from .decoder import CropFlipDecoder
from .fixes import ReportingEpochIterator, ReproducibleQuasiRandom, apply_ffcv_fixes
from ..errors import ConfigError
from ..loader import LoaderCore
from ..sampling import derive_seed, shard_indices
from ..sources import Source, open_source, resolve_path
from ..spec import AugmentSpec
from ..torch_backend import array_batch_transform

ORDERS = ("random", "quasi_random")


@njit
def _seed_thread_rng(seed: int) -> None:
    np.random.seed(seed)


class _ShardOrder(TraversalOrder):
    """FFCV traversal order given by a function of the epoch (here: this rank's shard_indices)."""

    def __init__(self, loader: Loader, order_of_epoch: Callable[[int], np.ndarray]) -> None:
        super().__init__(loader)
        self.order_of_epoch = order_of_epoch

    def sample_order(self, epoch: int) -> np.ndarray:
        return self.order_of_epoch(epoch)


class _SeededEpochIterator(ReportingEpochIterator):
    """FFCV's epoch iterator, seeding its thread's numba RNG before each batch's pipeline runs."""

    def __init__(self, loader: Loader, order: np.ndarray, batch_seeds: list) -> None:
        self.batch_seeds = batch_seeds
        super().__init__(loader, order)

    def run_pipeline(self, b_ix, batch_indices, batch_slot, cuda_event):
        _seed_thread_rng(self.batch_seeds[b_ix])
        return super().run_pipeline(b_ix, batch_indices, batch_slot, cuda_event)


class _SeededLoader(Loader):
    """FFCV's Loader with our traversal order and per-batch seeds derived from (seed, epoch, rank)."""

    def __init__(self, *args, seed_key: tuple, traversal: Callable[[Loader], TraversalOrder], **kwargs) -> None:
        super().__init__(*args, order=OrderOption.SEQUENTIAL, **kwargs)
        self.seed_key = seed_key
        self.traversal_order = traversal(self)
        self.first_traversal_order = self.next_traversal_order()

    def epoch_iterator(self, epoch: int, start: int = 0) -> EpochIterator:
        """FFCV's iterator over batches `start`.. of `epoch`, each seeded as in the uninterrupted epoch."""
        Compiler.set_num_threads(self.num_workers)
        order = self.traversal_order.sample_order(epoch)[:len(self) * self.batch_size]
        if self.code is None:
            self.generate_code()
        seeds = [derive_seed(*self.seed_key, epoch, b, 0xFF) & 0xFFFFFFFF for b in range(len(self))]
        return _SeededEpochIterator(self, order[start * self.batch_size:], seeds[start:])


def open_beton(source: Union[str, Path, Source], split: str,
               **conversion) -> tuple[BetonInfo, Union[Source, BetonInfo]]:
    """(BetonInfo, Source or BetonInfo): a .beton path as is, anything else converted once into the cache."""
    if isinstance(source, (str, Path)) and (path := resolve_path(source)).suffix == ".beton":
        info = read_beton(path)
        return info, info
    opened = open_source(source, split)
    return cached_beton(opened, split, **conversion), opened


class FFCVLoader(LoaderCore):
    """The loader contract (`pipelines.loader.LoaderCore`) on FFCV (see the module docstring).

    Options: `order` ("random" | "quasi_random"), `os_cache`, `batches_ahead`, and for sources that are
    converted into the cache `write_mode`, `max_resolution`, `jpeg_quality`, `cache_dir`.
    `num_workers` is FFCV's thread count (default: all cores); note that FFCV also sets torch's thread count.
    """

    backend = "ffcv"

    def __init__(self, source: Union[str, Path, Source], *, split: str, batch_size: int,
                 image_size: Optional[int] = None, augment: AugmentSpec = AugmentSpec(), device="cpu",
                 seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: Optional[bool] = None,
                 num_workers: Optional[int] = None, order: str = "random", os_cache: bool = True,
                 batches_ahead: int = 3, write_mode: Optional[str] = None, max_resolution: Optional[int] = None,
                 jpeg_quality: int = 90, cache_dir: Optional[Union[str, Path]] = None) -> None:
        if order not in ORDERS:
            raise ConfigError(f"FFCVLoader: unknown order {order!r}: choose one of {', '.join(ORDERS)}")
        self.info, opened = open_beton(source, split, write_mode=write_mode, max_resolution=max_resolution,
                                       jpeg_quality=jpeg_quality, cache_dir=cache_dir)
        if split == "train" and self.info.split == "test":
            raise ConfigError(f"source: {self.info.path} holds the test split of {self.info.source or self.info.name}, "
                              "which must not be trained on: convert the train split instead")
        super().__init__(opened, split=split, batch_size=batch_size, image_size=image_size, augment=augment,
                         device=device, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last,
                         stage_augment=augment)
        self.array_crop_scale = augment.array_crop_scale
        self.num_workers = num_workers if num_workers and num_workers > 0 else len(os.sched_getaffinity(0))
        apply_ffcv_fixes()
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
                                 traversal=ReproducibleQuasiRandom, **common)
        by_epoch = partial(shard, drop_last=self.drop_last)
        return _SeededLoader(path, traversal=lambda loader: _ShardOrder(loader, lambda e: by_epoch(epoch=e)), **common)

    def epoch_indices(self, epoch: Optional[int] = None) -> np.ndarray:
        """The sample indices this rank reads in `epoch` (default: the current one), in order."""
        order = self._loader.traversal_order.sample_order(self.epoch if epoch is None else epoch)
        return np.asarray(order)[:len(self) * self.batch_size]

    def __len__(self) -> int:
        return len(self._loader)

    def _array_batch(self, images: torch.Tensor, epoch: int, batch_index: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, self.rank, batch_index))
        return array_batch_transform(images[:, :self.info.channels], self.image_size, self.train, generator,
                                     self.array_crop_scale)

    def _produce(self, epoch: int, start: int) -> Iterator:
        batches = self._loader.epoch_iterator(epoch, start)
        try:
            for batch_index, (images, labels) in enumerate(batches, start):
                if self.info.kind == "array":
                    images = self._array_batch(images, epoch, batch_index)
                # FFCV reuses its output buffers a few batches later: the stage makes new images, labels are copied
                yield batch_index, images, labels.clone()
        finally:
            batches.close()
