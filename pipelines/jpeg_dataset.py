"""Write an array dataset (Fashion-MNIST, MNIST, CIFAR) as an ImageNet-style JPEG class-folder tree.

``out/train/<NN_class>/*.jpg`` from the train split and ``out/val/<NN_class>/*.jpg`` from the test split, RGB at a
chosen size (bicubic resize), optionally a class-balanced subset. Folder names start with the class index so that
sorted folder names (how `FileSource` numbers classes) keep the source's label order. Unlike `photo_tree`, the
labels mean something: a model learns them, so the JPEG path can be measured on accuracy on a CPU.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import torch
from PIL import Image

from .errors import ConfigError
from .sources import ArraySource, open_source

FASHION_MNIST_CLASSES = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle_boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CLASS_NAMES = {"fashion-mnist": FASHION_MNIST_CLASSES, "cifar10": CIFAR10_CLASSES}


def class_folder_names(source: ArraySource) -> list:
    """'NN_name' per class (names where the dataset has them, else the index alone)."""
    names = CLASS_NAMES.get(source.name)
    width = len(str(source.num_classes - 1))
    return [f"{c:0{width}d}" + (f"_{names[c]}" if names else "") for c in range(source.num_classes)]


def balanced_subset(labels: torch.Tensor, per_class: Optional[int], seed: int) -> torch.Tensor:
    """Sorted indices of up to `per_class` samples of each class (a seeded random choice), or all of them."""
    if per_class is None:
        return torch.arange(len(labels))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    chosen = [order[labels[order] == c][:per_class] for c in labels.unique().tolist()]
    return torch.cat(chosen).sort().values


def to_rgb_image(pixels: torch.Tensor, size: int) -> Image.Image:
    """A uint8 (C, H, W) image as an RGB PIL image of size×size (bicubic)."""
    array = pixels.permute(1, 2, 0).numpy()
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).convert("RGB")
    return image if image.size == (size, size) else image.resize((size, size), Image.BICUBIC)


def plan_jpeg_dataset(source: str = "fashion-mnist", *, train_per_class: Optional[int] = None,
                      val_per_class: Optional[int] = None, seed: int = 0) -> list:
    """[(tree split, ArraySource, indices)] for train/ (from the train split) and val/ (from the test split).

    `train_per_class` / `val_per_class` cut each split to that many images per class (None: all)."""
    plan = []
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        opened = open_source(source, split)
        if not isinstance(opened, ArraySource):
            raise ConfigError(f"source {source} is a JPEG tree already; give an array dataset (Fashion-MNIST, "
                              "MNIST, CIFAR)")
        plan.append((split, opened, balanced_subset(opened.labels, per_class, seed)))
    return plan


def write_jpeg_dataset(out: Union[str, Path], plan: list, *, size: int = 64, quality: int = 90, force: bool = False,
                       progress: Optional[Callable[[int], None]] = None) -> Path:
    """Write the images of `plan` (see `plan_jpeg_dataset`) under `out` as size×size RGB JPEGs; returns `out`.

    Refuses a non-empty `out` unless `force`."""
    out = Path(out)
    if size < 8:
        raise ConfigError(f"size must be at least 8 pixels, got {size}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ConfigError(f"{out} exists and is not empty; pass force=True to write into it")
    for split, opened, indices in plan:
        folders = [out / split / name for name in class_folder_names(opened)]
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        for index in indices.tolist():
            image = to_rgb_image(opened.images[index], size)
            image.save(folders[int(opened.labels[index])] / f"{split}_{index:06d}.jpg", quality=quality)
            if progress:
                progress(1)
    return out
