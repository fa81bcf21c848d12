"""Writers for the real on-disk dataset formats, used to make tiny test datasets."""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte IDX file (MNIST / Fashion-MNIST format), gzipped when the name ends in .gz."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(data)


def learnable_images(labels: np.ndarray, size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, C, size, size) noise images with a bright horizontal bar whose row encodes the label."""
    images = rng.integers(0, 60, size=(len(labels), channels, size, size), dtype=np.uint8)
    rows = (labels * (size - 4) // max(labels.max(), 1)) + 1
    for i, row in enumerate(rows):
        images[i, :, row:row + 3, 2:-2] = 230
    return images


def write_fashion_mnist(root: Path, train: int = 256, test: int = 128, seed: int = 0) -> Path:
    """A Fashion-MNIST-format folder (gzipped IDX, 28x28 gray, 10 classes)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = np.arange(count) % 10
        rng.shuffle(labels)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", learnable_images(labels, 28, 1, rng)[:, 0])
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return root


def write_cifar10(root: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """A CIFAR-10 python-pickle folder: data_batch_1..5 and test_batch."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = np.arange(per_batch) % 10
        images = learnable_images(labels, 32, 3, rng)
        with open(root / name, "wb") as f:
            pickle.dump({b"data": images.reshape(per_batch, -1), b"labels": labels.tolist()}, f)
    return root


def write_cifar100(root: Path, count: int = 40, seed: int = 0) -> Path:
    """A CIFAR-100 python-pickle folder: train, test, meta."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in ("train", "test"):
        labels = np.arange(count) % 100
        images = learnable_images(labels, 32, 3, rng)
        with open(root / name, "wb") as f:
            pickle.dump({b"data": images.reshape(count, -1), b"fine_labels": labels.tolist(),
                         b"coarse_labels": (labels // 5).tolist()}, f)
    with open(root / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)
    return root


def write_jpeg_tree(root: Path, classes: int = 3, train_per_class: int = 4, val_per_class: int = 2,
                    size: tuple = (80, 60), seed: int = 0) -> Path:
    """An ImageNet-style tree of small JPEGs: root/{train,val}/<class>/*.jpg."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for cls in range(classes):
            folder = root / split / f"n{cls:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img_{i}.jpg", quality=90)
    return root
