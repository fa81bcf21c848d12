"""rkd's data pipelines: loaders with per-image, magnitude-parameterized augmentation on the device.

Usable on their own: ``pipelines.build_loader("torch", "fashion-mnist", split="train", batch_size=256)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from .errors import ConfigError
from .sources import ArraySource, FileSource, Source, open_source
from .spec import AUTOAUGMENT_POLICIES, POLICIES, AugmentSpec

BACKENDS = ("torch", "ffcv", "dali")
_INSTALL_HINT = {"ffcv": "pip install 'rkd[ffcv]' (needs libturbojpeg0-dev, libopencv-dev, pkg-config; see `make setup`)",
                 "dali": "pip install 'rkd[dali]'"}

__all__ = ["AugmentSpec", "ArraySource", "BACKENDS", "ConfigError", "FileSource", "POLICIES",
           "AUTOAUGMENT_POLICIES", "Source", "build_loader", "open_source"]


def build_loader(backend: str, source: Union[str, Path, Source], *, split: str, batch_size: int,
                 image_size: Optional[int] = None, augment: AugmentSpec = AugmentSpec(), device="cpu",
                 seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: Optional[bool] = None,
                 num_workers: Optional[int] = None, **backend_options):
    """A loader yielding (images, labels): float normalized channels_last images and int64 labels on `device`.

    `len(loader)` is the number of batches per epoch for this rank; `loader.set_epoch(e)` reshuffles and reseeds.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown --loader {backend!r}: choose one of {', '.join(BACKENDS)}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside 0..{world_size - 1}")
    common = dict(split=split, batch_size=batch_size, image_size=image_size, augment=augment, device=device,
                  seed=seed, rank=rank, world_size=world_size, drop_last=drop_last, num_workers=num_workers,
                  **backend_options)
    if backend == "torch":
        from .torch_backend import TorchLoader
        return TorchLoader(open_source(source, split), **common)
    try:
        if backend == "ffcv":
            from .ffcv_backend import FFCVLoader as loader_class
        else:
            from .dali_backend import DALILoader as loader_class
    except ImportError as err:
        raise ConfigError(f"--loader {backend} needs a package that is missing ({err.name}): "
                          f"{_INSTALL_HINT[backend]}") from None
    return loader_class(source, **common)
