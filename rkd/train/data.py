"""From command-line data options to loaders: training on the chosen backend, evaluation deterministic."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch

import pipelines
from pipelines.errors import ConfigError, EmptyEpochError
from pipelines.sources import detect_format, open_source, resolve_path, take

from .distributed import SINGLE_PROCESS, DistInfo
from .evaluate import batch_shard
from ..errors import RkdError


@dataclass(frozen=True)
class DataOptions:
    """Which data, through which loader backend, with which augmentation."""

    data: str = "fashion-mnist"
    loader: str = "torch"
    batch_size: int = 128
    image_size: Optional[int] = None
    augment: pipelines.AugmentSpec = pipelines.AugmentSpec()
    workers: Optional[int] = None
    train_eval_size: int = 10000
    train_images: Optional[int] = None
    on_bad_file: str = "error"  # a class-folder tree's undecodable files: refuse the tree, or skip them
    decode_device: Optional[str] = None

    def __post_init__(self) -> None:
        if self.decode_device is not None and self.loader != "torch":
            raise ConfigError(f"--decode-device applies to --loader torch, not --loader {self.loader}")
        if self.decode_device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--decode-device cuda needs a CUDA device and this machine has none: use cpu or omit it")

    def to_dict(self) -> dict:
        return {**asdict(self), "augment": self.augment.to_dict()}


@dataclass(frozen=True)
class DatasetFacts:
    """What models need to know about the data."""

    kind: str
    num_classes: int
    in_chans: int
    image_size: int


def evaluation_data(options: DataOptions) -> str:
    """The dataset evaluation reads: `options.data`, or for a .beton file the source it was converted from."""
    path = resolve_path(options.data)
    if detect_format(path) != "beton":
        return options.data
    if options.loader != "ffcv":
        raise ConfigError(f"--data: {path} is a .beton file, which only the ffcv loader reads (use --loader ffcv)")
    from pipelines.ffcv.beton import read_beton, recorded_source

    return recorded_source(read_beton(path))


def dataset_facts(options: DataOptions) -> DatasetFacts:
    """Class count, channels, image size and dataset kind of the data (reads the evaluation test split)."""
    data = evaluation_data(options)
    fmt = detect_format(resolve_path(data))
    source = open_source(data, "test", options.on_bad_file)
    kind = source.name if fmt in ("idx", "cifar10", "cifar100") else "imagefolder"
    image_size = options.image_size or source.native_size or 224
    return DatasetFacts(kind, source.num_classes, source.channels, image_size)


def training_source(options: DataOptions):
    """The training data: the whole train split, or `train_images` of it (a fixed random subset), as a Source."""
    if options.train_images is None:
        return options.data
    source = open_source(options.data, "train", options.on_bad_file)
    if options.train_images >= len(source):
        return options.data
    chosen = torch.randperm(len(source), generator=torch.Generator().manual_seed(1))[:options.train_images]
    return take(source, chosen.sort().values)


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
                                      on_bad_file=options.on_bad_file, **decode)
    except EmptyEpochError:
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
            source = take(source, mine)
        return pipelines.build_loader("torch", source, split="test", batch_size=batch_size,
                                      image_size=facts.image_size, device=device, num_workers=options.workers)

    data = evaluation_data(options)
    train = open_source(data if options.train_images is None else training_source(options), "train",
                        options.on_bad_file)
    if len(train) > options.train_eval_size:
        chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:options.train_eval_size]
        train = take(train, chosen.sort().values)
    return loader(open_source(data, "test", options.on_bad_file)), loader(train)
