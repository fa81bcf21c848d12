"""The `torch` backend: a torch DataLoader that yields uint8 batches, then the shared device stage.

Array sources (Fashion-MNIST, CIFAR) are cropped and flipped batch-at-once from memory; file sources (JPEG
trees) are decoded per image in worker processes with RandomResizedCrop + flip (train) or resize + center crop
(eval), or, with `decode_device` ("cuda": nvJPEG; "cpu": the same code path on the CPU), read in the workers and
decoded batch-at-once on that device, then cropped and flipped there by the batched resized crop
(`pipelines.jpeg_batch`: the same boxes as the per-image path).
Every batch's randomness is seeded by (seed, epoch, rank, batch index), so output does not depend on
the number of workers. The augmentation policy runs on the device (`augment_device=True`, batched, per image)
or, as the per-image baseline, with torchvision's v2 transforms in the workers.
"""
from __future__ import annotations

import os
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import v2

from .crops import EvalResizeCrop
from .augment.train_transforms import random_horizontal_flip, random_resized_crop_boxes, resized_crop
from .errors import ConfigError
from .jpeg_batch import check_decode_device, decode_crop_flip, pack, read_with_crop
from .loader import LoaderCore
from .sampling import derive_seed
from .sources import ArraySource, FileSource, Source
from .spec import ARRAY_CROP_PADDING, EVAL_CROP_FRACTION, AugmentSpec

# The options build_loader("torch", ...) takes besides the common arguments.
OPTIONS = {
    "augment_device": "True (default): the policy runs batched on the device; False: torchvision's per-image "
                      "transforms in the workers",
    "decode_device": "JPEG trees, training split: decode batch-at-once on 'cpu' or 'cuda' (nvJPEG) instead of per "
                     "image in the workers",
}


def torchvision_policy(spec: AugmentSpec) -> Optional[v2.Transform]:
    """torchvision's own per-image transform for `spec`: the reference and the baseline."""
    if spec.cutout:
        raise ConfigError("cutout needs augment_device=True (torchvision has no Cutout transform)")
    if spec.policy == "none":
        return None
    if spec.policy == "randaugment":
        return v2.RandAugment(num_ops=spec.num_ops, magnitude=spec.magnitude, num_magnitude_bins=spec.num_magnitude_bins)
    if spec.policy == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy(spec.autoaugment_policy))
    return v2.TrivialAugmentWide(num_magnitude_bins=spec.num_magnitude_bins)


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 NCHW batch to size×size: antialiased bilinear in float, rounded back to uint8."""
    return F.interpolate(images.float(), size=size, mode="bilinear", antialias=True,
                         align_corners=False).round_().clamp_(0, 255).to(torch.uint8)


def random_pad_crop_flip(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Per-image random crop of the zero-padded batch back to its size, then per-image random horizontal flip."""
    n, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.arange(w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols)  # flipping is reading columns backwards
    rows = dy[:, None] + torch.arange(h)
    cols = dx[:, None] + cols
    batch = torch.arange(n)[:, None, None, None]
    channel = torch.arange(images.shape[1])[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def array_batch_transform(images: torch.Tensor, size: int, train: bool, generator: torch.Generator,
                          crop_scale: Optional[float] = None) -> torch.Tensor:
    """The array sources' plain transform: resize to size×size if needed, then pad-crop + flip when training; or,
    training with `crop_scale`, RandomResizedCrop(size, scale=(crop_scale, 1)) of the native images + flip."""
    if train and crop_scale is not None:
        boxes = random_resized_crop_boxes(len(images), images.shape[-2], images.shape[-1], generator,
                                          scale=(crop_scale, 1.0))
        return random_horizontal_flip(resized_crop(images.contiguous(), boxes, (size, size)), generator)
    if images.shape[-1] != size:
        images = resize_batch(images, size)
    if train:
        images = random_pad_crop_flip(images, ARRAY_CROP_PADDING, generator)
    return images


class _DecodeFailure(str):
    """A worker's decode error, returned as a value so that the main process raises it as one line."""


class _BatchDataset(Dataset):
    """Maps (epoch, batch index, sample indices) to a uint8 (B, C, S, S) batch and its labels."""

    def __init__(self, source: Source, train: bool, image_size: int, worker_policy: Optional[v2.Transform],
                 seed: int, rank: int, batch_decode: bool = False, array_crop_scale: Optional[float] = None) -> None:
        self.source, self.train, self.image_size = source, train, image_size
        self.array_crop_scale = array_crop_scale
        self.worker_policy, self.seed, self.rank, self.batch_decode = worker_policy, seed, rank, batch_decode
        if isinstance(source, FileSource):
            crop = (v2.RandomResizedCrop(image_size, antialias=True) if train
                    else EvalResizeCrop(image_size, round(image_size / EVAL_CROP_FRACTION)))
            steps = [crop, v2.RandomHorizontalFlip()] if train else [crop]
            self.file_transform = v2.Compose(steps + ([worker_policy] if worker_policy else []))

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key):
        epoch, batch_index, indices = key
        indices = torch.as_tensor(indices)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, epoch, self.rank, batch_index))
            try:
                if isinstance(self.source, ArraySource):
                    images = self._array_batch(indices)
                elif self.batch_decode:
                    images = self._encoded_batch(indices)
                else:
                    images = torch.stack([self.file_transform(self._decode(int(i))) for i in indices])
            except ConfigError as err:
                return _DecodeFailure(err), None
        return images, self.source.labels[indices]

    def _array_batch(self, indices: torch.Tensor) -> torch.Tensor:
        images = array_batch_transform(self.source.images[indices], self.image_size, self.train,
                                       torch.default_generator, self.array_crop_scale)
        if self.worker_policy is not None:
            images = torch.stack([self.worker_policy(image) for image in images])
        return images

    def _encoded_batch(self, indices: torch.Tensor) -> tuple:
        """(packed bytes, lengths, crop boxes (B, 4), flips (B,), paths): what the decode device needs."""
        paths = [self.source.files[int(i)] for i in indices]
        data, boxes, flips = zip(*(read_with_crop(path) for path in paths))
        return (*pack(data), torch.tensor(boxes, dtype=torch.int64), torch.tensor(flips), paths)

    def _decode(self, index: int) -> torch.Tensor:
        path = self.source.files[index]
        try:
            return decode_image(read_file(path), mode=ImageReadMode.RGB)
        except RuntimeError as err:
            raise ConfigError(f"source: cannot decode {path} ({err}); remove or replace the file") from None


class TorchLoader(LoaderCore):
    """The loader contract (`pipelines.loader.LoaderCore`) on a torch DataLoader: batches made in workers.

    Options: `augment_device` (True: the policy runs batched on the device; False: torchvision's per-image
    transforms in the workers), `decode_device` (JPEG trees, training: decode batch-at-once on "cpu" or "cuda").
    """

    backend = "torch"

    def __init__(self, source: Source, *, split: str, batch_size: int, image_size: Optional[int] = None,
                 augment: AugmentSpec = AugmentSpec(), device="cpu", seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: Optional[bool] = None, num_workers: Optional[int] = None,
                 augment_device: bool = True, decode_device: Optional[str] = None) -> None:
        super().__init__(source, split=split, batch_size=batch_size, image_size=image_size, augment=augment,
                         device=device, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last,
                         stage_augment=augment if augment_device else None)
        worker_policy = None if augment_device else torchvision_policy(augment)
        self.decode_device = None if decode_device is None else self._check_batch_decode(decode_device, source,
                                                                                          augment_device)
        self.dataset = _BatchDataset(source, self.train, self.image_size, worker_policy, seed, rank,
                                     batch_decode=self.decode_device is not None,
                                     array_crop_scale=augment.array_crop_scale)
        if num_workers is None:
            files_or_cpu_aug = isinstance(source, FileSource) or worker_policy is not None
            num_workers = min(8, os.cpu_count() or 1) if files_or_cpu_aug else 0
        self.num_workers = num_workers

    def _check_batch_decode(self, decode_device: str, source: Source, augment_device: bool) -> torch.device:
        if not isinstance(source, FileSource):
            raise ConfigError(f"decode_device applies to JPEG trees; {source.name} is an array dataset "
                              "(already decoded): leave decode_device unset")
        if not self.train:
            raise ConfigError("decode_device applies to the training split (RandomResizedCrop + flip); "
                              "evaluation splits decode per image: leave it unset")
        if not augment_device:
            raise ConfigError("decode_device needs augment_device=True (the policy then runs on the device too)")
        return check_decode_device(decode_device)

    def _produce(self, epoch: int, start: int) -> Iterator:
        keys = [(epoch, i, batch) for i, batch in enumerate(self.epoch_batches(epoch))][start:]
        if not keys:
            return
        loader = DataLoader(self.dataset, sampler=keys, batch_size=None, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=False,
                            prefetch_factor=4 if self.num_workers else None)
        for batch_index, (images, labels) in enumerate(loader, start):
            if isinstance(images, _DecodeFailure):
                raise ConfigError(str(images))
            if self.decode_device is not None:
                images = decode_crop_flip(*images, size=self.image_size, device=self.decode_device)
            yield batch_index, images, labels
