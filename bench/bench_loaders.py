"""Loader throughput: torch vs ffcv (vs dali) in images/s, with and without RandAugment(2, 9).

Two workloads: an ImageNet-like JPEG tree (~500×375 photos, `pipelines.photo_tree`) read at 224×224 with
RandomResizedCrop + flip, and Fashion-MNIST (28×28 arrays, pad-crop + flip). Every loader is timed over whole
epochs once warm; the first epoch of each (FFCV: its numba compile) is recorded on its own, and so is FFCV's
one-time conversion to .beton. FFCV runs twice on the JPEG tree: all images stored as JPEG (`ffcv`, the
default), and FFCV's ImageNet recipe, half of them stored raw (`ffcv-proportion`, no decode for those).
Ratios: each backend / torch for both settings, and ffcv-augmented / ffcv-plain.

The ceiling, measured in the same run: the same JPEG files decoded with Pillow (libjpeg-turbo; draft mode off, so
every image is decoded at full size), random-resized-cropped to 224×224 (one bilinear `resize` with a box) and
turned into an array, in a multiprocessing pool on all the workers, with no loader framework around it
(`jpeg224/decode-ceiling`). Every JPEG loader is reported as a fraction of it (`... vs jpeg224/decode-ceiling`;
goal: FFCV and torch without augmentation at least 0.85).

    python -m bench loaders                    # full run (what the reported numbers come from)
    python -m bench loaders -- --quick --backends torch,ffcv --images 256
"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import random
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image, features

import pipelines
from pipelines.cache import cache_home
from pipelines.photo_tree import build_photo_tree
from pipelines.sources import open_source, take

from rkd.train.timing import DeviceClock

from .harness import Suite

RANDAUGMENT = pipelines.AugmentSpec("randaugment", magnitude=9, num_ops=2)
PLAIN = pipelines.AugmentSpec()
TREE_CLASSES = 16
IMAGE_SIZE = 224
FFCV_PROPORTION = {"write_mode": "proportion"}  # FFCV's published ImageNet setting: half the images stored raw


def parse(argv: list) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench loaders", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (a smoke test)")
    parser.add_argument("--backends", default="torch,ffcv,dali", help="comma-separated (default: %(default)s)")
    parser.add_argument("--images", type=int, default=None, help="training images in the JPEG tree [2048; quick 256]")
    parser.add_argument("--fmnist-images", type=int, default=None, help="Fashion-MNIST images [20000; quick 2048]")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=None, help="loader workers/threads [all cores]")
    parser.add_argument("--repeats", type=int, default=None, help="timed epochs per loader [3; quick 1]")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the device stage (augmentation, normalization) runs [%(default)s]")
    args = parser.parse_args(argv)
    args.images = args.images or (256 if args.quick else 2048)
    args.fmnist_images = args.fmnist_images or (2048 if args.quick else 20000)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.workers = args.workers or len(os.sched_getaffinity(0))
    return args


def bench_cache() -> Path:
    """Where built benchmark data is kept between runs: ``$RKD_CACHE_DIR/bench`` or ``~/.cache/rkd/bench``."""
    return cache_home() / "bench"


def photo_tree(images: int) -> Path:
    """An ImageNet-like tree with `images` training JPEGs (16 classes), built once and kept in the bench cache."""
    per_class = max(1, images // TREE_CLASSES)
    root = bench_cache() / f"photo-tree-{TREE_CLASSES}x{per_class}"
    if not (root / "done").exists():
        print(f"building {root} ({TREE_CLASSES * per_class} training JPEGs, once)", flush=True)
        build_photo_tree(root, classes=TREE_CLASSES, train_per_class=per_class, val_per_class=1, force=True)
        (root / "done").touch()
    return root


def usable(backends: list) -> list:
    """The requested backends whose packages import; the others are skipped with the reason printed."""
    found = []
    for backend in backends:
        try:
            if backend == "ffcv":
                import pipelines.ffcv.loader  # noqa: F401
            elif backend == "dali":
                import pipelines.dali.loader  # noqa: F401
            elif backend != "torch":
                raise ValueError(f"unknown backend {backend!r}")
            found.append(backend)
        except (ImportError, ValueError) as err:
            print(f"skipping {backend}: {err}", flush=True)
    return found


def run_epochs(loader) -> Callable[[], None]:
    """A callable that runs the next whole epoch of `loader`."""
    state = {"epoch": 0}

    def run_once() -> None:
        state["epoch"] += 1
        loader.set_epoch(state["epoch"])
        for _images, _labels in loader:
            pass

    return run_once


def measure_loader(suite: Suite, label: str, backend: str, source, *, augment: pipelines.AugmentSpec,
                   image_size: Optional[int], args: argparse.Namespace, options: dict) -> Optional[str]:
    """Record `label`/first-epoch (build + first epoch) and measure `label` warm; None if the backend refused."""
    clock = DeviceClock(torch.device(args.device))
    start = clock.now()
    try:
        loader = pipelines.build_loader(backend, source, split="train", batch_size=args.batch_size,
                                        image_size=image_size, augment=augment, device=args.device,
                                        num_workers=args.workers, seed=0, **options)
    except pipelines.ConfigError as err:
        print(f"skipping {label}: {err}", flush=True)
        return None
    built = clock.now()
    try:
        for _images, _labels in loader:
            pass
        first = clock.now()
        result = suite.measure(label, run_epochs(loader), items=len(loader) * args.batch_size, warmup=0,
                               repeats=args.repeats)
    except Exception as err:  # noqa: BLE001 - one broken backend must not hide the others' numbers
        print(f"FAILED {label}: {type(err).__name__}: {err}", flush=True)
        suite.record(f"{label}/failed", error=f"{type(err).__name__}: {err}")
        return None
    suite.record(f"{label}/first-epoch", build_s=built - start, first_epoch_s=first - built,
                 over_warm_epoch_s=(first - built) - result["median_s"])
    return label


def decode_crop(task: tuple) -> int:
    """Decode one JPEG at full size and random-resized-crop it to IMAGE_SIZE with Pillow; returns its label-free
    byte count (so the work cannot be skipped). `task` is (path, seed)."""
    path, seed = task
    with Image.open(path) as image:
        image = image.convert("RGB")
    width, height = image.size
    rng = random.Random(seed)
    for _ in range(10):                                   # RandomResizedCrop's rule: scale (0.08, 1), ratio 3/4..4/3
        area = width * height * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            break
    else:
        w, h, left, top = width, height, 0, 0
    crop = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR, box=(left, top, left + w, top + h))
    return np.asarray(crop).nbytes


def measure_decode_ceiling(suite: Suite, label: str, files: list, args: argparse.Namespace) -> None:
    """Pillow decode + crop of `files` on `args.workers` processes (no framework): the loaders' ceiling."""
    with multiprocessing.get_context("fork").Pool(args.workers) as pool:
        epoch = {"n": 0}

        def run_once() -> None:
            epoch["n"] += 1
            tasks = [(str(path), epoch["n"] * len(files) + i) for i, path in enumerate(files)]
            sum(pool.imap_unordered(decode_crop, tasks, chunksize=16))

        suite.measure(label, run_once, items=len(files), warmup=1, repeats=args.repeats,
                      extra={"decoder": f"Pillow {Image.__version__}, libjpeg-turbo "
                                        f"{features.version('libjpeg_turbo')}", "processes": args.workers})


def convert_once(suite: Suite, label: str, source, options: dict) -> None:
    """FFCV's one-time conversion into the cache, timed on its own (~0 s when already cached)."""
    from pipelines.ffcv.beton import cached_beton
    start = time.perf_counter()
    info = cached_beton(source, "train", progress=False, **options)
    suite.record(f"{label}/convert", seconds=time.perf_counter() - start, images=info.num_samples,
                 mib=info.path.stat().st_size / 2**20)


def variants(backends: list, workload: str) -> list:
    """(label, backend, backend options) to measure; JPEG trees add FFCV's ImageNet recipe (half stored raw)."""
    found = []
    for backend in backends:
        found.append((backend, backend, {}))
        if backend == "ffcv" and workload == "jpeg224":
            found.append(("ffcv-proportion", "ffcv", FFCV_PROPORTION))
    return found


def main(argv: list) -> None:
    args = parse(argv)
    backends = usable([b.strip() for b in args.backends.split(",") if b.strip()])
    suite = Suite("loaders", device=torch.device(args.device),
                  config={"images": args.images, "fmnist_images": args.fmnist_images, "device": args.device,
                          "batch_size": args.batch_size, "workers": args.workers, "repeats": args.repeats,
                          "image_size": IMAGE_SIZE, "backends": backends, "augment": RANDAUGMENT.to_dict(),
                          "ffcv_proportion": FFCV_PROPORTION, "quick": args.quick})
    tree = open_source(photo_tree(args.images), "train")
    fmnist = open_source("fashion-mnist", "train")
    fmnist = take(fmnist, torch.arange(min(args.fmnist_images, len(fmnist))))
    workloads = (("jpeg224", tree, IMAGE_SIZE), ("fmnist", fmnist, None))
    print(f"{len(tree)} JPEGs at {IMAGE_SIZE}, {len(fmnist)} Fashion-MNIST images, batch {args.batch_size}, "
          f"{args.workers} workers, device {args.device}", flush=True)
    measure_decode_ceiling(suite, "jpeg224/decode-ceiling", list(tree.files), args)
    for workload, source, image_size in workloads:
        for label, backend, options in variants(backends, workload):
            if backend == "ffcv":
                convert_once(suite, f"{workload}/{label}", source, options)
            for name, augment in (("plain", PLAIN), ("randaugment", RANDAUGMENT)):
                measure_loader(suite, f"{workload}/{label}/{name}", backend, source, augment=augment,
                               image_size=image_size, args=args, options=options)
    for workload, _source, _size in workloads:
        labels = [label for label, _backend, _options in variants(backends, workload)]
        for label in labels:
            for name in ("plain", "randaugment"):
                ours, baseline = f"{workload}/{label}/{name}", f"{workload}/torch/{name}"
                if label != "torch" and {ours, baseline} <= suite.results.keys():
                    suite.compare(ours, baseline)
                if workload == "jpeg224" and ours in suite.results:
                    suite.compare(ours, "jpeg224/decode-ceiling")
            augmented, plain = f"{workload}/{label}/randaugment", f"{workload}/{label}/plain"
            if label.startswith("ffcv") and {augmented, plain} <= suite.results.keys():
                suite.compare(augmented, plain)
    suite.save()
