"""Data sources: where images and labels come from, before any loader backend touches them.

Two kinds: `ArraySource` (decoded uint8 images in memory: Fashion-MNIST IDX, CIFAR pickles) and
`FileSource` (an ImageNet-style class-folder tree of encoded images read one file at a time).
"""
from __future__ import annotations

import gzip
import importlib
import pickle
import struct
import warnings
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import torch

from .errors import ConfigError
from .validate import check_policy, usable_indices
from .tree import IMAGE_EXTENSIONS, FileList, as_file_list, list_split  # noqa: F401 - IMAGE_EXTENSIONS re-exported

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SOURCE_ALIASES = {"fashion-mnist": FASHION_MNIST_DIR}
SPLITS = ("train", "test")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)


@dataclass
class ArraySource:
    """Decoded images held in memory as uint8 (N, C, H, W) with int64 labels."""

    name: str
    path: Path
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple
    std: tuple
    kind: str = field(default="array", init=False)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def native_size(self) -> int:
        return self.images.shape[-1]


@dataclass
class FileSource:
    """An ImageNet-style tree: ``root/<class>/<image>.jpg``, class indices from sorted folder names.

    `files` is a sequence of path strings, kept as a `pipelines.tree.FileList` (compact, no object per file;
    a list given here is converted).
    """

    name: str
    path: Path
    split: str
    files: FileList
    labels: torch.Tensor
    classes: list
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    checked: bool = False  # every file passed pipelines.validate's up-front check
    kind: str = field(default="files", init=False)

    def __post_init__(self) -> None:
        self.files = as_file_list(self.files)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return 3

    @property
    def native_size(self) -> None:
        return None


Source = Union[ArraySource, FileSource]


def resolve_path(spec: Union[str, Path]) -> Path:
    """Map a source alias (``fashion-mnist``) or a path to a filesystem path."""
    return SOURCE_ALIASES.get(str(spec), Path(spec)).expanduser()


def detect_format(path: Path) -> str:
    """Name the on-disk format of a source directory: idx, cifar10, cifar100, imagefolder or beton."""
    if path.is_file() and path.suffix == ".beton":
        return "beton"
    if not path.exists():
        hint = " (install it with `make setup`)" if path == FASHION_MNIST_DIR else ""
        raise ConfigError(f"source: {path} does not exist{hint}")
    if not path.is_dir():
        raise ConfigError(f"source: {path} is a file; expected a dataset directory or a .beton file")
    names = {p.name for p in path.iterdir()}
    if {"train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"} & names:
        return "idx"
    if "data_batch_1" in names and "test_batch" in names:
        return "cifar10"
    if {"train", "test", "meta"} <= names and (path / "train").is_file():
        return "cifar100"
    if (path / "train").is_dir():
        return "imagefolder"
    raise ConfigError(
        f"source: {path} is not a dataset this project reads: expected Fashion-MNIST/MNIST IDX files, "
        "a CIFAR-10/100 python-pickle folder, or an ImageNet-style folder with train/ and val/")


def open_source(spec: Union[str, Path, Source], split: str, on_bad_file: str = "error") -> Source:
    """Open a data source by alias or path for one split ('train' or 'test'; 'val' is an alias of 'test').

    A class-folder tree's files are all checked first (`pipelines.validate`): a file that some backend cannot
    decode is an error naming it (`on_bad_file="error"`) or is left out with a count (`"skip"`).
    """
    check_policy(on_bad_file)
    if isinstance(spec, (ArraySource, FileSource)):
        return checked(spec, on_bad_file)
    split = "test" if split == "val" else split
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}: choose train or test")
    path = resolve_path(spec)
    fmt = detect_format(path)
    if fmt == "idx":
        return _read_idx_source(path, split)
    if fmt == "cifar10":
        return _read_cifar_source(path, split, fine=False)
    if fmt == "cifar100":
        return _read_cifar_source(path, split, fine=True)
    if fmt == "imagefolder":
        return checked(_read_image_folder(path, split), on_bad_file)
    raise ConfigError(f"source: {path} is a .beton file, which only the ffcv backend reads (use backend='ffcv')")


def _read_idx_file(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return data.reshape(dims)
    except (OSError, EOFError, ValueError, struct.error) as err:
        raise ConfigError(f"source: {path} is not a valid IDX file ({err}); re-install or re-download it") from None


def _find_idx(path: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (path / name).exists():
            return path / name
    raise ConfigError(f"source: {path} lacks {stem}(.gz)")


def _read_idx_source(path: Path, split: str) -> ArraySource:
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx_file(_find_idx(path, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx_file(_find_idx(path, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ConfigError(f"source: {path} IDX files disagree: images {images.shape}, labels {labels.shape}")
    name = "fashion-mnist" if "fashion" in str(path).lower() else "mnist"
    mean, std = (FASHION_MNIST_MEAN, FASHION_MNIST_STD) if name == "fashion-mnist" else ((0.1307,), (0.3081,))
    return ArraySource(name=name, path=path, split=split, images=torch.from_numpy(images.copy()).unsqueeze(1),
                       labels=torch.from_numpy(labels.astype(np.int64)), num_classes=int(labels.max()) + 1,
                       mean=mean, std=std)


# Everything a CIFAR python pickle holds: containers, numbers, bytes/str, and numpy arrays (as numpy 1 and 2
# spell their reconstruction functions; `_codecs.encode` is how protocol 2 stores bytes).
_CIFAR_GLOBALS = {
    "builtins": {"dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int", "float",
                 "complex", "bool"},
    "_codecs": {"encode"},
    "numpy": {"ndarray", "dtype"},
    "numpy.core.multiarray": {"_reconstruct", "scalar"},
    "numpy._core.multiarray": {"_reconstruct", "scalar"},
    "numpy.core.numeric": {"_frombuffer"},
    "numpy._core.numeric": {"_frombuffer"},
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only what the CIFAR format holds and refuses every other global (no code runs)."""

    def find_class(self, module: str, name: str):
        module = "builtins" if module == "__builtin__" else module
        if name not in _CIFAR_GLOBALS.get(module, ()):
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR pickle never holds")
        if module.startswith("numpy."):  # numpy 2 moved numpy.core to numpy._core; either spelling loads
            available = "numpy._core" if hasattr(np, "_core") else "numpy.core"
            module = available + module[module.index(".", len("numpy.")):]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return getattr(importlib.import_module(module), name)
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise ConfigError(f"source: {path} is missing") from None
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, struct.error) as err:
        raise ConfigError(f"source: {path} is not a CIFAR python pickle ({err}); "
                          "replace it with the file from the CIFAR download") from None
    if not isinstance(entry, dict):
        raise ConfigError(f"source: {path} holds a {type(entry).__name__}, not a CIFAR batch dict; "
                          "replace it with the file from the CIFAR download")
    return entry


def _read_cifar_source(path: Path, split: str, fine: bool) -> ArraySource:
    if fine:
        batches = [path / ("train" if split == "train" else "test")]
        label_key, num_classes, name = b"fine_labels", 100, "cifar100"
        mean, std = CIFAR100_MEAN, CIFAR100_STD
    else:
        batches = [path / f"data_batch_{i}" for i in range(1, 6)] if split == "train" else [path / "test_batch"]
        batches = [b for b in batches if b.exists()] or batches[:1]
        label_key, num_classes, name = b"labels", 10, "cifar10"
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    images, labels = zip(*(_read_cifar_batch(batch, label_key, num_classes) for batch in batches))
    return ArraySource(name=name, path=path, split=split, images=torch.from_numpy(np.concatenate(images)),
                       labels=torch.from_numpy(np.concatenate(labels)), num_classes=num_classes, mean=mean, std=std)


def _read_cifar_batch(batch: Path, label_key: bytes, num_classes: int) -> tuple:
    """(uint8 (N, 3, 32, 32) images, int64 labels) of one CIFAR pickle, checked against the format."""
    entry = _unpickle(batch)
    if b"data" not in entry or label_key not in entry:
        raise ConfigError(f"source: {batch} lacks the 'data' or '{label_key.decode()}' entry of a CIFAR pickle")
    try:
        data = np.asarray(entry[b"data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except (ValueError, TypeError, OverflowError) as err:
        raise ConfigError(f"source: {batch} holds entries that are not CIFAR pixels and labels ({err})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ConfigError(f"source: {batch} 'data' has shape {data.shape}; CIFAR rows are 3072 bytes")
    if labels.shape != (len(data),) or (len(labels) and not 0 <= labels.min() <= labels.max() < num_classes):
        raise ConfigError(f"source: {batch} needs one label in 0..{num_classes - 1} per image; "
                          f"it has {labels.size} labels for {len(data)} images")
    return data.reshape(-1, 3, 32, 32), labels


def _read_image_folder(path: Path, split: str) -> FileSource:
    listing = list_split(path, "train" if split == "train" else "val")
    return FileSource(name=path.name, path=path, split=split, files=listing.files,
                      labels=torch.from_numpy(listing.labels), classes=listing.classes)


def checked(source: Source, on_bad_file: str = "error") -> Source:
    """`source` with every file checked up front (see `open_source`); array sources as they are."""
    if not isinstance(source, FileSource) or source.checked:
        return source
    usable = usable_indices(source.files, str(source.path), on_bad_file)
    kept = take(source, torch.tensor(usable, dtype=torch.int64)) if len(usable) < len(source) else source
    return dataclasses.replace(kept, checked=True)


def take(source: Source, indices: torch.Tensor) -> Source:
    """The samples of `source` at `indices`, as a source of the same kind."""
    indices = torch.as_tensor(indices, dtype=torch.int64)
    if isinstance(source, ArraySource):
        return ArraySource(name=source.name, path=source.path, split=source.split, images=source.images[indices],
                           labels=source.labels[indices], num_classes=source.num_classes, mean=source.mean,
                           std=source.std)
    files = as_file_list(source.files).take(indices.numpy())
    return FileSource(name=source.name, path=source.path, split=source.split, files=files,
                      labels=source.labels[indices], classes=source.classes, mean=source.mean, std=source.std, checked=source.checked)
