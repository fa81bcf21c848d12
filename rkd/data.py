"""From command-line data options to loaders: training on the chosen backend, evaluation deterministic."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch

import pipelines
from pipelines.sources import detect_format, open_source, resolve_path, take

from .distributed import DistInfo


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

    def to_dict(self) -> dict:
        return {**asdict(self), "augment": self.augment.to_dict()}


@dataclass(frozen=True)
class DatasetFacts:
    """What models need to know about the data."""

    kind: str
    num_classes: int
    in_chans: int
    image_size: int


def dataset_facts(options: DataOptions) -> DatasetFacts:
    """Class count, channels, image size and dataset kind of `options.data` (reads its test split)."""
    fmt = detect_format(resolve_path(options.data))
    source = open_source(options.data, "test")
    kind = source.name if fmt in ("idx", "cifar10", "cifar100") else "imagefolder"
    image_size = options.image_size or source.native_size or 224
    return DatasetFacts(kind, source.num_classes, source.channels, image_size)


def train_loader(options: DataOptions, facts: DatasetFacts, device: torch.device, seed: int, dist: DistInfo):
    """The training loader on the requested backend, sharded over ranks, augmented on the device."""
    return pipelines.build_loader(options.loader, options.data, split="train", batch_size=options.batch_size,
                                  image_size=facts.image_size, augment=options.augment, device=device, seed=seed,
                                  rank=dist.rank, world_size=dist.world_size, num_workers=options.workers)


def eval_loaders(options: DataOptions, facts: DatasetFacts, device: torch.device) -> tuple:
    """(test loader, train-subset loader): un-augmented, unshuffled, on the torch backend, whole sets per rank.

    Evaluation is the same whatever the training backend, so backends are compared on equal terms.
    The train subset (`train_eval_size` samples, fixed) measures train accuracy for the overfitting gap.
    """
    def loader(source):
        return pipelines.build_loader("torch", source, split="test", batch_size=max(256, options.batch_size),
                                      image_size=facts.image_size, device=device, num_workers=options.workers)

    train = open_source(options.data, "train")
    if len(train) > options.train_eval_size:
        chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:options.train_eval_size]
        train = take(train, chosen.sort().values)
    return loader(open_source(options.data, "test")), loader(train)
