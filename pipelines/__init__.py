"""rkd's data pipelines: loaders with per-image, magnitude-parameterized augmentation on the device.

Usable on their own: ``pipelines.build_loader("torch", "fashion-mnist", split="train", batch_size=256)``.

The loader contract, the same for the three backends ("torch", "ffcv", "dali"; `pipelines.loader.LoaderCore`
implements it once, a backend only produces uint8 NCHW batches and labels for (epoch, batch index, indices)):

- split: "train" trains (shuffled, RandomResizedCrop or the padded crop, horizontal flip, drop_last by default);
  "test"/"val" evaluate (in order, resize + centre crop, no flip, every sample kept by default).
- augment: the AugmentSpec applies on every split when asked (an evaluation split too: rkd analyze measures
  augmented test images); the default AugmentSpec() changes nothing.
- image_size: the output side (default: the native size of an array source; required for a JPEG tree).
- rank / world_size: each rank reads a disjoint strided shard of the epoch's order (DistributedSampler's); without
  drop_last the shards are padded by wrapping around, so every rank has as many batches.
- seed: (seed, epoch) fixes the order and (seed, epoch, rank, batch index) every crop, flip and augmentation, so
  the batches do not depend on num_workers.
- `len(loader)`: batches per epoch for this rank; `loader.set_epoch(e)`: reshuffle and reseed for epoch e.
- output: (images, labels), images float normalized channels_last on `device`, labels int64.
- `loader.state_dict()` (a plain dict, at any point of an epoch) and `loader.load_state_dict(state)` on a loader
  built with the same arguments: the next iteration yields the remaining batches of the state's epoch, identical to
  the uninterrupted loader's; a state of another backend, source, split, batch size, seed, rank or world size is
  refused.
- backend options: `backend_options(backend)` lists what each backend takes besides these arguments; any other
  keyword is refused.
"""
from __future__ import annotations

from importlib import import_module
from importlib.util import find_spec
from pathlib import Path
from typing import Dict, Optional, Union

import torch

from .errors import ConfigError, EmptyEpochError
from .sources import ArraySource, FileSource, Source, open_source, resolve_path
from .spec import AUTOAUGMENT_POLICIES, POLICIES, AugmentSpec, optional_whole_number, whole_number
from .validate import ON_BAD_FILE, check_policy

BACKENDS = ("torch", "ffcv", "dali")
_INSTALL_HINT = {"ffcv": "pip install 'rkd[ffcv]' (needs libturbojpeg0-dev, libopencv-dev, pkg-config; see `make setup`)",
                 "dali": "pip install 'rkd[dali]'"}

_OPTIONS_MODULE = {"torch": ".torch_backend", "ffcv": ".ffcv", "dali": ".dali"}
_PACKAGE = {"torch": "torch", "ffcv": "ffcv", "dali": "nvidia.dali"}

__all__ = ["AugmentSpec", "ArraySource", "BACKENDS", "backend_available", "backend_options", "ConfigError", "EmptyEpochError", "FileSource", "ON_BAD_FILE", "POLICIES",
           "AUTOAUGMENT_POLICIES", "Source", "build_loader", "open_source"]


def backend_available(backend: str) -> bool:
    """True when the package `backend` needs is installed (torch always is)."""
    _check_backend(backend, "backend_available")
    return find_spec(_PACKAGE[backend].split(".")[0]) is not None and find_spec(_PACKAGE[backend]) is not None


def backend_options(backend: str) -> Dict[str, str]:
    """The options `build_loader(backend, ...)` takes besides the common arguments: name -> one-line help."""
    _check_backend(backend, "backend_options")
    return dict(import_module(_OPTIONS_MODULE[backend], __name__).OPTIONS)


def build_loader(backend: str, source: Union[str, Path, Source], *, split: str, batch_size: int,
                 image_size: Optional[int] = None, augment: AugmentSpec = AugmentSpec(), device="cpu",
                 seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: Optional[bool] = None,
                 num_workers: Optional[int] = None, on_bad_file: str = "error", **backend_options):
    """A loader yielding (images, labels): float normalized channels_last images and int64 labels on `device`.

    `len(loader)` is the number of batches per epoch for this rank; `loader.set_epoch(e)` reshuffles and reseeds.
    A class-folder tree is checked file by file first: `on_bad_file` is "error" (refuse a tree with a file that
    cannot be decoded, naming it) or "skip" (leave such files out, with a count on stderr).
    """
    _check_arguments(backend, split, batch_size, image_size, augment, device, seed, rank, world_size, num_workers)
    check_policy(on_bad_file)
    _check_backend_options(backend, backend_options)
    if not (backend == "ffcv" and isinstance(source, (str, Path)) and resolve_path(source).suffix == ".beton"):
        source = open_source(source, split, on_bad_file)
    common = dict(split=split, batch_size=batch_size, image_size=image_size, augment=augment, device=device,
                  seed=seed, rank=rank, world_size=world_size, drop_last=drop_last, num_workers=num_workers,
                  **backend_options)
    if backend == "torch":
        from .torch_backend import TorchLoader as loader_class
    else:
        try:
            if backend == "ffcv":
                from .ffcv.loader import FFCVLoader as loader_class
            else:
                from .dali.loader import DALILoader as loader_class
        except ImportError as err:
            raise ConfigError(f"build_loader: backend {backend!r} needs a package that is missing ({err.name}): "
                              f"{_INSTALL_HINT[backend]}") from None
    loader = loader_class(source, **common)
    if len(loader) == 0:
        raise EmptyEpochError(f"build_loader: batch_size {batch_size} with drop_last leaves no batch of the "
                              f"{split} split for rank {rank} of {world_size}: lower batch_size or pass drop_last=False")
    return loader


def _check_arguments(backend: str, split: str, batch_size: int, image_size: Optional[int], augment: AugmentSpec,
                     device, seed: int, rank: int, world_size: int, num_workers: Optional[int]) -> None:
    """One-line ConfigErrors (ValueErrors) naming build_loader's parameter for out-of-range arguments."""
    _check_backend(backend)
    if split not in ("train", "test", "val"):
        raise ConfigError(f"build_loader: split must be 'train', 'test' or 'val', got {split!r}")
    whole_number("build_loader", "batch_size", batch_size, minimum=1)
    optional_whole_number("build_loader", "image_size", image_size, minimum=1)
    optional_whole_number("build_loader", "num_workers", num_workers, minimum=0)
    whole_number("build_loader", "seed", seed, minimum=0)
    whole_number("build_loader", "world_size", world_size, minimum=1)
    whole_number("build_loader", "rank", rank, minimum=0)
    if rank >= world_size:
        raise ConfigError(f"build_loader: rank {rank} is outside 0..{world_size - 1} (world_size {world_size})")
    if not isinstance(augment, AugmentSpec):
        raise ConfigError(f"build_loader: augment must be an AugmentSpec, got {type(augment).__name__}")
    _check_device(device)


def _check_backend(backend: str, api: str = "build_loader") -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"{api}: unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")


def _check_backend_options(backend: str, given: dict) -> None:
    """Refuse an option the backend does not take, listing the ones it takes."""
    takes = backend_options(backend)
    unknown = [name for name in given if name not in takes]
    if unknown:
        raise ConfigError(f"build_loader: backend {backend!r} takes no option {unknown[0]!r}: "
                          f"it takes {', '.join(takes)}")


def _check_device(device) -> None:
    """A device torch knows, and CUDA only where it is available."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"build_loader: device {device!r} is not a torch device: "
                          "use 'cpu', 'cuda' or 'cuda:N'") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"build_loader: device {device!r}: CUDA is not available here; use device='cpu'")
