"""The loader core: the contract every backend shares, so that a backend only produces uint8 batches.

`LoaderCore` owns the split (training or evaluation), the drop_last rule, the image size, the seeds, the
rank/world_size shard, the epoch, `len`, `set_epoch`, the device stage and `state_dict`/`load_state_dict`.
A backend subclass implements `_produce(epoch, start)`: the (batch index, uint8 NCHW images, labels) of the
epoch's batches from batch `start` on, batch b holding `self.epoch_batches(epoch)[b]`.
"""
from __future__ import annotations

import zlib
from typing import Iterator, List, Optional

import numpy as np
import torch

from .device_stage import DeviceStage
from .errors import ConfigError
from .sampling import epoch_batches, shard_indices, split_batches
from .spec import AugmentSpec, is_whole

STATE_VERSION = 1
# What a state must agree on with the loader that loads it (each is a build_loader argument, or its data).
_IDENTITY = ("backend", "split", "source", "batch_size", "drop_last", "seed", "world_size", "rank")
_POSITION = ("epoch", "batches_yielded")


def source_fingerprint(source) -> str:
    """A short string naming the data of `source`: its name, sample count and a checksum of its labels."""
    labels = getattr(source, "labels", None)
    if labels is not None:
        digest = zlib.crc32(np.ascontiguousarray(torch.as_tensor(labels).numpy()).tobytes())
    else:  # a .beton read as is: its sidecar's key of the data it was converted from
        digest = zlib.crc32(str(getattr(source, "source_key", "") or source.path.name).encode())
    return f"{source.name}:{len(source)}:{digest:08x}"


class LoaderCore:
    """The loader contract on top of a backend's batch producer (see the `pipelines` docstring).

    Iterating yields (images, labels): float normalized channels_last images and int64 labels on `device`.
    Batch b of epoch e holds `epoch_batches(e)[b]` and all its randomness is seeded by (seed, e, rank, b).
    """

    backend = ""

    def __init__(self, source, *, split: str, batch_size: int, image_size: Optional[int], augment: AugmentSpec,
                 device, seed: int, rank: int, world_size: int, drop_last: Optional[bool],
                 stage_augment: Optional[AugmentSpec]) -> None:
        self.source, self.split, self.train = source, split, split == "train"
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.image_size = image_size or source.native_size
        if self.image_size is None:
            raise ConfigError("build_loader: image_size is required for a JPEG tree: pass e.g. image_size=224")
        self.augment, self.device = augment, torch.device(device)
        self.stage = DeviceStage(source.mean, source.std, self.device, stage_augment, seed, rank)
        self.epoch = 0
        self._position = 0       # batches of this epoch already yielded
        self._resuming = False   # the next iter() starts at _position (set by load_state_dict)

    # ------------------------------------------------------------ the epoch's batches
    def epoch_indices(self, epoch: Optional[int] = None) -> np.ndarray:
        """The sample indices this rank reads in `epoch` (default: the current one), in order."""
        return shard_indices(len(self.source), seed=self.seed, epoch=self.epoch if epoch is None else epoch,
                             rank=self.rank, world_size=self.world_size, shuffle=self.train,
                             drop_last=self.drop_last)

    def epoch_batches(self, epoch: Optional[int] = None) -> List[np.ndarray]:
        """The sample indices of each batch of `epoch` (default: the current one)."""
        return split_batches(self.epoch_indices(epoch), self.batch_size, self.drop_last)

    def __len__(self) -> int:
        return epoch_batches(len(self.source), self.world_size, self.batch_size, self.drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle and reseed (crops, flips, augmentation) for `epoch`; a resumed epoch keeps its position."""
        if epoch != self.epoch:
            self._position, self._resuming = 0, False
        self.epoch = epoch

    # ------------------------------------------------------------ iterating
    def __iter__(self) -> Iterator:
        start = self._position if self._resuming else 0
        self._position, self._resuming = start, False
        return self._iterate(self.epoch, start)

    def _iterate(self, epoch: int, start: int) -> Iterator:
        if start >= len(self):
            return
        for batch_index, images, labels in self._produce(epoch, start):
            batch = self.stage(images, labels, epoch, batch_index)
            self._position = batch_index + 1
            yield batch

    def _produce(self, epoch: int, start: int) -> Iterator:
        """(batch index, uint8 NCHW images, int64 labels) for batches `start`.. of `epoch` (the backend's job)."""
        raise NotImplementedError

    # ------------------------------------------------------------ resuming
    def state_dict(self) -> dict:
        """Where this loader is: its identity and (epoch, batches of that epoch already yielded), plain values."""
        return {"version": STATE_VERSION, "backend": self.backend, "source": source_fingerprint(self.source),
                "split": self.split, "batch_size": self.batch_size, "drop_last": int(self.drop_last),
                "seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                "epoch": self.epoch, "batches_yielded": self._position}

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` (from `state_dict` of a loader built with the same arguments) left off: the next
        iteration yields the remaining batches of its epoch, then `set_epoch(epoch + 1)` goes on as usual."""
        if not isinstance(state, dict):
            raise ConfigError(f"load_state_dict: state must be the dict of a loader's state_dict(), "
                              f"got {type(state).__name__}")
        missing = [key for key in ("version", *_IDENTITY, *_POSITION) if key not in state]
        if missing:
            raise ConfigError(f"load_state_dict: state lacks {', '.join(missing)}: pass a loader's state_dict()")
        if state["version"] != STATE_VERSION:
            raise ConfigError(f"load_state_dict: state has version {state['version']!r}, this loader reads "
                              f"version {STATE_VERSION}: pass a state saved by this version of pipelines")
        mine = self.state_dict()
        for key in _IDENTITY:
            if state[key] != mine[key]:
                raise ConfigError(f"load_state_dict: state was saved with {key} {state[key]!r}, this loader has "
                                  f"{key} {mine[key]!r}: build the loader with the state's {key}")
        epoch, position = state["epoch"], state["batches_yielded"]
        if not (is_whole(epoch) and epoch >= 0 and is_whole(position) and 0 <= position <= len(self)):
            raise ConfigError(f"load_state_dict: state's epoch {epoch!r} / batches_yielded {position!r} are not "
                              f"an epoch >= 0 and a batch count in 0..{len(self)}: pass a loader's state_dict()")
        self.epoch, self._position, self._resuming = int(epoch), int(position), True
