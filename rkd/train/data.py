"""From DataOptions to loaders: the data's facts (read once per command), the training loader on the chosen backend
with its options, deterministic evaluation loaders, and a cheap size summary of the data."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

import pipelines

from ..config import DataOptions
from .distributed import SINGLE_PROCESS, DistInfo
from .evaluate import batch_shard
from ..errors import ConfigError, RkdError


@dataclass(frozen=True)
class DatasetFacts:
    """What models need to know about the data."""

    kind: str
    num_classes: int
    in_chans: int
    image_size: int


def evaluation_data(options: DataOptions) -> str:
    """The dataset evaluation reads: `options.data`, or for a .beton file the source it was converted from."""
    path = pipelines.resolve_path(options.data)
    if pipelines.detect_format(path) != "beton":
        return options.data
    if options.loader != "ffcv":
        raise ConfigError(f"--data: {path} is a .beton file, which only the ffcv loader reads (use --loader ffcv)")
    from pipelines.ffcv import read_beton, recorded_source

    return recorded_source(read_beton(path))


def dataset_facts(options: DataOptions) -> DatasetFacts:
    """Class count, channels, image size and dataset kind of the data (reads the evaluation test split): resolved
    once per command and handed down."""
    data = evaluation_data(options)
    fmt = pipelines.detect_format(pipelines.resolve_path(data))
    source = pipelines.open_source(data, "test", options.on_bad_file)
    kind = source.name if fmt in ("idx", "cifar10", "cifar100") else "imagefolder"
    image_size = options.image_size or source.native_size or 224
    return DatasetFacts(kind, source.num_classes, source.channels, image_size)


def training_source(options: DataOptions):
    """The training data: the whole train split, or `train_images` of it (a fixed random subset), as a Source."""
    if options.train_images is None:
        return options.data
    source = pipelines.open_source(options.data, "train", options.on_bad_file)
    if options.train_images >= len(source):
        return options.data
    chosen = torch.randperm(len(source), generator=torch.Generator().manual_seed(1))[:options.train_images]
    return pipelines.take(source, chosen.sort().values)


def train_loader(options: DataOptions, facts: DatasetFacts, device: torch.device, seed: int, dist: DistInfo):
    """The training loader on the requested backend, sharded over ranks, augmented on the device."""
    on_training_gpu = options.decode_device == "cuda" and torch.device(device).type == "cuda"   # e.g. cuda:1
    decode = {} if options.decode_device is None else {
        "decode_device": str(device) if on_training_gpu else options.decode_device}
    try:
        return pipelines.build_loader(options.loader, training_source(options), split="train",
                                      batch_size=options.batch_size,
                                      image_size=facts.image_size, augment=options.augment, device=device, seed=seed,
                                      rank=dist.rank, world_size=dist.world_size, num_workers=options.workers,
                                      on_bad_file=options.on_bad_file, **dict(options.loader_options), **decode)
    except pipelines.EmptyEpochError:
        raise RkdError(f"--batch-size {options.batch_size} is larger than this process's share of the training "
                       "images, so an epoch would have no batch: use a smaller --batch-size") from None


def eval_loaders(options: DataOptions, facts: DatasetFacts, device: torch.device,
                 dist: DistInfo = SINGLE_PROCESS) -> tuple:
    """(test loader, train-subset loader): un-augmented, unshuffled, on the torch backend; under torchrun each
    rank's loader yields its whole batches of the single-process batching (see rkd.train.evaluate.batch_shard).

    Evaluation is the same whatever the training backend, so backends are compared on equal terms.
    The train subset (`train_eval_size` samples of the training data, fixed) measures train accuracy for the
    overfitting gap.
    """
    batch_size = max(256, options.batch_size)

    def loader(source):
        if dist.world_size > 1:
            mine = batch_shard(len(source), batch_size, dist)
            if not len(mine):
                return []  # fewer batches than ranks: this rank has none
            source = pipelines.take(source, mine)
        return pipelines.build_loader("torch", source, split="test", batch_size=batch_size,
                                      image_size=facts.image_size, device=device, num_workers=options.workers)

    data = evaluation_data(options)
    train = pipelines.open_source(data if options.train_images is None else training_source(options), "train",
                                  options.on_bad_file)
    if len(train) > options.train_eval_size:
        chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:options.train_eval_size]
        train = pipelines.take(train, chosen.sort().values)
    return loader(pipelines.open_source(data, "test", options.on_bad_file)), loader(train)


@functools.lru_cache(maxsize=8)
def _size_of(path: Path) -> tuple:
    """(file count, total bytes) of a file or a folder tree; once per process (a sweep starts many jobs)."""
    files = [path] if path.is_file() else [Path(root) / name for root, _, names in os.walk(path) for name in names]
    return len(files), sum(f.stat().st_size for f in files)


def data_summary(options: DataOptions) -> dict:
    """A cheap fingerprint of the data: its resolved path, file count and total bytes (sizes, not contents)."""
    path = pipelines.resolve_path(options.data).resolve()
    files, size = _size_of(path)
    return {"path": str(path), "files": files, "bytes": size}
