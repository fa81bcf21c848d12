"""Listing an ImageNet-style class-folder tree (``root/<split>/<class>/<image>``) once, compactly, saying what it left.

Classes are the sorted folder names of ``train/``; another split's folders must be among them. A class folder's
images are its regular files (symlinks followed) whose extension is in `IMAGE_EXTENSIONS`, in any case, in its
subfolders too (as torchvision's ImageFolder), sorted by name folder by folder. Everything else in the tree —
other extensions, hidden entries (``.DS_Store``, ``._x.jpg``), files beside the class folders —
is counted and the first few named in one logged line; class folders without images are named in another.

Built to cost the same per file at a thousand files and at ImageNet's 1.28 million (`python -m bench scale`
measures it): one ``os.scandir`` per folder (no stat call for plain files, no Path object per file), one sort per
folder, and storage without a Python object per file (`FileList`), which also keeps forked DataLoader workers from
copying it page by page.
"""
from __future__ import annotations

import logging
import operator
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Tuple, Union

import numpy as np

from .errors import ConfigError

# What every backend decodes: torchvision.io.decode_image (the torch backend, evaluation, FFCV conversion) reads
# JPEG, PNG and WebP; DALI reads those and more. torchvision's ImageFolder also takes .bmp .ppm .pgm .tif .tiff,
# which torchvision.io cannot decode: such files are listed as not taken (convert them to PNG).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".webp")
_TAKEN = frozenset(ext[1:].encode() for ext in IMAGE_EXTENSIONS)
EXAMPLES = 3
_CHUNK = 1 << 16
_ENCODING, _ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()  # as os.fsdecode

log = logging.getLogger(__name__)
_reported: set = set()


class FileList(Sequence):
    """Paths ``root + name`` with every name in one bytes blob and int64 offsets: about 8 bytes per file
    beyond the name's own bytes, and no Python object per file."""

    def __init__(self, root: Union[str, Path], blob: bytes, offsets: np.ndarray) -> None:
        self.root = os.path.join(str(root), "") if str(root) else ""
        self.blob, self.offsets = blob, offsets

    @classmethod
    def from_paths(cls, paths) -> "FileList":
        """A FileList holding `paths` (strings or Paths) as they are."""
        names = [os.fsencode(str(p)) for p in paths]
        offsets = np.zeros(len(names) + 1, dtype=np.int64)
        np.cumsum([len(n) for n in names], out=offsets[1:])
        return cls("", b"".join(names), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index):
        if not isinstance(index, (int, np.integer)):
            if isinstance(index, slice):
                return self.take(np.arange(*index.indices(len(self))))
            if np.ndim(index):
                return self.take(index)
            index = operator.index(index)  # a 0-d array or tensor
        count = len(self.offsets) - 1
        if not -count <= index < count:
            raise IndexError(f"file index {index} is outside a list of {count}")
        index = int(index) % count
        return self.root + self.blob[self.offsets.item(index):self.offsets.item(index + 1)].decode(_ENCODING, _ERRORS)

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self), _CHUNK):  # a chunk of strings at a time, never the whole list
            yield from self.paths(slice(start, start + _CHUNK))

    def __repr__(self) -> str:
        return f"FileList({len(self)} files under {self.root or '/'})"

    def paths(self, indices) -> List[str]:
        """The path strings at `indices` (an integer array-like or a slice), as a list."""
        indices = (np.arange(*indices.indices(len(self))) if isinstance(indices, slice)
                   else np.asarray(indices, dtype=np.int64))
        blob, root = self.blob, self.root
        return [root + blob[a:b].decode(_ENCODING, _ERRORS)
                for a, b in zip(self.offsets[indices].tolist(), self.offsets[indices + 1].tolist())]

    def take(self, indices) -> "FileList":
        """The files at `indices` (any integer array-like), as a new FileList."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        starts = self.offsets[indices]
        lengths = self.offsets[indices + 1] - starts
        offsets = np.zeros(len(indices) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        positions = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        return FileList(self.root, np.frombuffer(self.blob, dtype=np.uint8)[positions].tobytes(), offsets)


def as_file_list(files) -> FileList:
    """`files` as a FileList (a list of paths is converted; a FileList is returned as it is)."""
    return files if isinstance(files, FileList) else FileList.from_paths(files)


@dataclass(frozen=True)
class TreeListing:
    """One split of a class-folder tree: its images, their class indices, and what was left out."""

    files: FileList
    labels: np.ndarray  # int64, the index into `classes` of each file
    classes: List[str]
    not_taken: int
    not_taken_examples: Tuple[str, ...]  # relative to the split folder
    empty_classes: Tuple[str, ...]


class _Leftovers:
    """Counts entries that are not taken and keeps the first few names."""

    def __init__(self) -> None:
        self.count, self.examples = 0, []

    def add(self, name: bytes, folder: bytes = b"") -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(os.fsdecode(os.path.join(folder, name)) if folder else os.fsdecode(name))


def _hidden(name: bytes) -> bool:
    return name.startswith(b".")


def class_folders(train_dir: Path) -> List[str]:
    """The class names of a tree: the sorted non-hidden folder names (symlinks followed) in ``train/``."""
    try:
        with os.scandir(train_dir) as entries:
            return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())
    except OSError as err:
        raise ConfigError(f"source: cannot list {train_dir} ({err.strerror})") from None


def _image_name(name: bytes) -> bool:
    dot = name.rfind(b".")
    return dot > 0 and name[dot + 1:].lower() in _TAKEN


def _list_class(folder: bytes, prefix: bytes, leftovers: _Leftovers, visited: set) -> List[bytes]:
    """The image names under `folder` (subfolders too), each as `prefix` + its path relative to `folder`."""
    names, subfolders = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if _hidden(name):
                leftovers.add(name, prefix)
            elif _image_name(name) and (entry.is_file() or entry.is_symlink() and not entry.is_dir()):
                names.append(name)  # an image-named link that leads nowhere is taken: the content check names it
            elif entry.is_dir():
                subfolders.append(name)
            else:
                leftovers.add(name, prefix)
    names.sort()
    found = [prefix + name for name in names]
    for name in sorted(subfolders):
        path = os.path.join(folder, name)
        stat = os.stat(path)
        if (stat.st_dev, stat.st_ino) in visited:  # a symlink back up the tree: listed once
            leftovers.add(name + b"/", prefix)
            continue
        visited.add((stat.st_dev, stat.st_ino))
        found += _list_class(path, prefix + name + b"/", leftovers, visited)
    return found


def list_split(root: Path, split_folder: str) -> TreeListing:
    """List ``root/split_folder`` with the classes of ``root/train``; logs what is not taken, once per tree."""
    classes = class_folders(root / "train")
    if not classes:
        raise ConfigError(f"source: {root / 'train'} has no class folders")
    split_dir = root / split_folder
    if not split_dir.is_dir():
        raise ConfigError(f"source: {split_dir} is missing (an ImageNet-style tree needs train/ and val/)")
    present = set(class_folders(split_dir))
    foreign = sorted(present - set(classes))
    if foreign:
        raise ConfigError(f"source: class folder {foreign[0]!r} in {split_dir} is not in {root / 'train'}"
                          f"{f' (nor {len(foreign) - 1} more)' if len(foreign) > 1 else ''}; classes come from "
                          "train/: add it there or remove it")
    leftovers = _Leftovers()
    with os.scandir(split_dir) as entries:
        for entry in entries:
            if entry.name not in present:
                leftovers.add(os.fsencode(entry.name) + (b"/" if entry.is_dir() else b""))
    blobs, lengths, counts = [], [], np.zeros(len(classes), dtype=np.int64)
    for index, cls in enumerate(classes):
        if cls in present:
            folder = os.path.join(os.fsencode(split_dir), os.fsencode(cls))
            stat = os.stat(folder)
            names = _list_class(folder, os.fsencode(cls) + b"/", leftovers, {(stat.st_dev, stat.st_ino)})
            counts[index] = len(names)
            lengths.append(np.fromiter(map(len, names), dtype=np.int64, count=len(names)))
            blobs.append(b"".join(names))
    offsets = np.zeros(int(counts.sum()) + 1, dtype=np.int64)
    if lengths:
        np.cumsum(np.concatenate(lengths), out=offsets[1:])
    listing = TreeListing(files=FileList(split_dir, b"".join(blobs), offsets),
                          labels=np.repeat(np.arange(len(classes), dtype=np.int64), counts), classes=classes,
                          not_taken=leftovers.count, not_taken_examples=tuple(leftovers.examples),
                          empty_classes=tuple(c for c, n in zip(classes, counts.tolist()) if n == 0))
    if not len(listing.files):
        raise ConfigError(f"source: {split_dir} holds no images ({' '.join(IMAGE_EXTENSIONS)}, any case)")
    report(listing, split_dir)
    return listing


def describe_not_taken(listing: TreeListing, split_dir: Path) -> str:
    """One line counting and naming the entries of `split_dir` that are not images of a class ('' if none)."""
    if not listing.not_taken:
        return ""
    more = listing.not_taken - len(listing.not_taken_examples)
    return (f"rkd: {listing.not_taken} entries in {split_dir} are not taken as images: "
            f"{', '.join(listing.not_taken_examples)}{f' and {more} more' if more else ''} (images are regular, "
            f"non-hidden files named *{' *'.join(IMAGE_EXTENSIONS)} in any case, inside class folders)")


def describe_empty(listing: TreeListing, split_dir: Path) -> str:
    """One line naming the classes without images in `split_dir` ('' if none)."""
    empty = listing.empty_classes
    if not empty:
        return ""
    more = len(empty) - EXAMPLES
    return (f"rkd: {len(empty)} of {len(listing.classes)} classes have no images in {split_dir}: "
            f"{', '.join(empty[:EXAMPLES])}{f' and {more} more' if more > 0 else ''}")


def report(listing: TreeListing, split_dir: Path) -> None:
    """Log what `listing` left out, each line once per process (a tree is listed once per split and use)."""
    for line in (describe_not_taken(listing, split_dir), describe_empty(listing, split_dir)):
        if line and line not in _reported:
            _reported.add(line)
            log.warning(line)
