"""Scale: does a class-folder tree cost the same per file at 10k, 100k (and 1M) files, in time and memory?

Builds once (cached in the bench cache) ImageNet-shaped trees of tiny real JPEGs: a pool of distinct 16×16
JPEGs hard-linked (copied where links fail) into `size / 100` class folders of 100 files (1,000 folders at most,
as ImageNet), so 10k and 100k trees differ only in how many folders there are. Each size is measured in a fresh
subprocess: scanning the tree into a source (files/s), the memory the source keeps per file (resident: RSS after
freeing minus RSS before, the first listing in the process; traced: Python objects and numpy arrays that
tracemalloc sees, not torch's own allocations) and its peak (tracemalloc), what a forked DataLoader worker copies
from it by reading every path once (private dirty bytes), `len` and sharding at world size 8, time to the first
batch of each backend (after a warm-up on 256 files, so imports are not counted; FFCV still compiles each new
loader), FFCV conversion (files/s, on at most `--ffcv-limit` files) and the DALI reader's start-up (its first
batch). The growth ratio of each is the per-file cost at the largest size / at the smallest;
the goal is at most 1.2, and memory per file at most ~200 bytes beyond the path itself.

    python -m bench scale                           # 10k and 100k files
    python -m bench scale -- --big                  # and 1M (ffcv converts a bounded subset; said in the output)
    python -m bench scale -- --sizes 200,400 --backends torch   # a smoke test (seconds)
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from functools import partial
from pathlib import Path

import numpy as np

from .bench_loaders import bench_cache, usable
from .harness import RESULTS_DIR, Suite

FILES_PER_CLASS = 100
MAX_CLASSES = 1000
POOL_SIZE = 64
WORLD_SIZE = 8
BATCH_SIZE = 64
IMAGE_SIZE = 32
# the results (seconds or bytes, divided by the files) whose growth ratio is reported; first batches are start-ups
GROWTH = ("scan_s", "retained_bytes", "traced_bytes", "peak_bytes", "worker_copy_bytes", "shard_s", "len_s",
          "ffcv_convert_s", "first_batch_torch_s", "first_batch_ffcv_s", "first_batch_dali_s")


def parse(argv: list) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="training files per tree, comma-separated "
                        "(default: %(default)s)")
    parser.add_argument("--big", action="store_true", help="add a 1,000,000-file tree")
    parser.add_argument("--backends", default="torch,ffcv,dali", help="comma-separated (default: %(default)s)")
    parser.add_argument("--ffcv-limit", type=int, default=100_000,
                        help="convert at most this many files to .beton per size (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed scans per size (default: %(default)s)")
    parser.add_argument("--name", default="scale", help="the result's name in bench/results (default: %(default)s)")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR,
                        help="folder of the per-machine result files (default: bench/results)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()} | ({1_000_000} if args.big else set()))
    if not args.sizes or min(args.sizes) < 1:
        parser.error(f"--sizes must be positive integers, got {args.sizes}")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    return args


def _pool_jpegs(count: int) -> list:
    """`count` distinct real 16×16 JPEGs (smooth colour ramps with noise), as encoded bytes."""
    from PIL import Image
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, 16)[None, :, None] * np.linspace(0, 1, 16)[:, None, None]
    encoded = []
    for _ in range(count):
        pixels = ramp * rng.uniform(0, 255, (1, 1, 3)) + rng.normal(0, 12, (16, 16, 3))
        buffer = io.BytesIO()
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return encoded


def _place(pool: Path, target: Path) -> None:
    try:
        os.link(pool, target)
    except OSError:  # no hard links here (another filesystem, link limit): a copy of a few hundred bytes
        shutil.copyfile(pool, target)


def tree_shape(files: int) -> tuple:
    """(classes, files per class) of a tree of about `files` training files in ImageNet's shape."""
    classes = min(MAX_CLASSES, max(1, files // FILES_PER_CLASS))
    return classes, -(-files // classes)


def build_tree(files: int) -> Path:
    """The cached tree with about `files` training JPEGs (and one val JPEG per class), built once."""
    classes, per_class = tree_shape(files)
    root = bench_cache() / f"scale-tree-{classes}x{per_class}"
    if (root / "done").exists():
        return root
    print(f"building {root} ({classes * per_class:,} training JPEGs in {classes} folders, once)", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    pool = root / "pool"
    pool.mkdir(parents=True)
    sources = []
    for i, data in enumerate(_pool_jpegs(POOL_SIZE)):
        sources.append(pool / f"{i:03d}.jpg")
        sources[-1].write_bytes(data)
    for split, count in (("train", per_class), ("val", 1)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(count):
                _place(sources[(c * count + i) % POOL_SIZE], folder / f"n{c:08d}_{i}.JPEG")
    (root / "done").touch()
    return root


def _resident_bytes() -> int:
    """This process's resident set size, after returning freed heap memory to the system."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _private_dirty_bytes() -> int:
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Private_Dirty:"))


def worker_copy_bytes(files) -> int:
    """Memory a forked DataLoader worker copies from its parent (private dirty bytes) by reading every path once."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: touch each path as an epoch of decoding would, report, leave at once
        before = _private_dirty_bytes()
        for index in range(len(files)):
            files[index]
        os.write(write, str(_private_dirty_bytes() - before).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        copied = int(answer.read())
    os.waitpid(pid, 0)
    return copied


def _first_batch(backend: str, source, **options) -> float:
    """Seconds from building `backend`'s loader on `source` to its first batch."""
    import pipelines
    start = time.perf_counter()
    loader = pipelines.build_loader(backend, source, split="train", batch_size=BATCH_SIZE, image_size=IMAGE_SIZE,
                                    num_workers=2, seed=0, **options)
    next(iter(loader))
    return time.perf_counter() - start


def _timed(function, repeats: int = 1) -> tuple:
    """(the last value of `function`, the median seconds of `repeats` calls)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        seconds.append(time.perf_counter() - start)
    return value, statistics.median(seconds)


def measure_tree(root: Path, backends: list, ffcv_limit: int, repeats: int) -> dict:
    """Every per-size number, measured in this (fresh) process on the tree at `root`."""
    import torch

    import pipelines
    from pipelines.sampling import shard_indices
    from pipelines.sources import open_source, take
    for backend in backends:
        __import__("pipelines.torch_backend" if backend == "torch" else f"pipelines.{backend}.loader")
    before = _resident_bytes()
    source, first_scan = _timed(lambda: open_source(root, "train"))
    files = len(source)
    result = {"files": files, "classes": source.num_classes,
              "retained_bytes": _resident_bytes() - before,
              "path_bytes": sum(len(os.fsencode(path)) for path in source.files)}
    result["scan_s"] = statistics.median([first_scan] + [_timed(lambda: open_source(root, "train"))[1]
                                                         for _ in range(repeats - 1)])
    result["worker_copy_bytes"] = worker_copy_bytes(source.files)
    tracemalloc.start()
    again = open_source(root, "train")
    result["traced_bytes"], result["peak_bytes"] = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del again
    shards, result["shard_s"] = _timed(lambda: [shard_indices(files, seed=0, epoch=1, rank=r, world_size=WORLD_SIZE,
                                                              shuffle=True, drop_last=False)
                                                for r in range(WORLD_SIZE)], repeats=5)
    if set(np.concatenate(shards).tolist()) != set(range(files)):
        raise RuntimeError("the 8 shards do not cover the tree")
    batch = min(BATCH_SIZE, files // WORLD_SIZE)  # a quick run's tiny tree still gives every rank a batch
    loaders = [pipelines.build_loader("torch", source, split="train", batch_size=batch, image_size=IMAGE_SIZE,
                                      rank=r, world_size=WORLD_SIZE, num_workers=0) for r in range(WORLD_SIZE)]
    lengths, result["len_s"] = _timed(lambda: [len(loader) for loader in loaders], repeats=5)
    if lengths != [files // WORLD_SIZE // batch] * WORLD_SIZE:  # training drops the last partial batch
        raise RuntimeError(f"len at world size {WORLD_SIZE} is {lengths}")
    del loaders
    warmup = take(source, torch.arange(min(files, 4 * BATCH_SIZE)))  # imports and first-call costs, paid once
    for backend in (b for b in backends if b != "ffcv"):
        _first_batch(backend, warmup)
        result[f"first_batch_{backend}_s"] = _first_batch(backend, source)
    if "ffcv" in backends:
        subset = source if files <= ffcv_limit else take(source, torch.arange(ffcv_limit))
        result["ffcv_files"] = len(subset)
        from pipelines.ffcv.beton import cached_beton
        with tempfile.TemporaryDirectory(prefix="rkd-bench-scale-") as cache:
            convert = partial(cached_beton, split="train", cache_dir=cache, progress=False, num_workers=2)
            convert(warmup)
            _first_batch("ffcv", warmup, cache_dir=cache)
            _, result["ffcv_convert_s"] = _timed(lambda: convert(subset))
            result["first_batch_ffcv_s"] = _first_batch("ffcv", subset, cache_dir=cache)
    result["pipelines"] = str(Path(pipelines.__file__).parent)
    return result


def per_file(result: dict, key: str) -> float:
    """The cost of `key` per file (conversion: per converted file)."""
    files = result["ffcv_files"] if key == "ffcv_convert_s" else result["files"]
    return result[key] / files


def _child(root: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "bench.bench_scale", "--child", str(root), "--backends", ",".join(args.backends),
               "--ffcv-limit", str(args.ffcv_limit), "--repeats", str(args.repeats)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode:
        raise RuntimeError(f"measuring {root} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list) -> None:
    args = parse(argv)
    if args.child:
        print(json.dumps(measure_tree(Path(args.child), args.backends, args.ffcv_limit, args.repeats)), flush=True)
        return
    args.backends = usable(args.backends)
    suite = Suite(args.name, config={"sizes": args.sizes, "backends": args.backends, "ffcv_limit": args.ffcv_limit,
                                     "files_per_class": FILES_PER_CLASS, "world_size": WORLD_SIZE,
                                     "batch_size": BATCH_SIZE, "image_size": IMAGE_SIZE})
    measured = {}
    for size in args.sizes:
        result = _child(build_tree(size), args)
        measured[size] = result
        suite.config["pipelines"] = result.pop("pipelines")
        suite.record(f"{size}/files", **{k: result[k] for k in ("files", "classes", "path_bytes")})
        rates = {"scan_files_per_s": result["files"] / result["scan_s"]}
        if "ffcv_convert_s" in result:
            rates["ffcv_files_per_s"] = result["ffcv_files"] / result["ffcv_convert_s"]
        suite.record(f"{size}/per-file", **{k: per_file(result, k) for k in GROWTH if k in result}, **rates,
                     retained_beyond_path_bytes=(result["retained_bytes"] - result["path_bytes"]) / result["files"])
        suite.record(f"{size}/seconds", **{k: result[k] for k in GROWTH if k.endswith("_s") and k in result})
        if result.get("ffcv_files", result["files"]) < result["files"]:
            print(f"  ffcv converted a bounded subset: {result['ffcv_files']:,} of {result['files']:,} files")
    small, large = min(measured), max(measured)
    if small != large:
        for key in GROWTH:
            if key in measured[small] and key in measured[large]:
                ratio = per_file(measured[large], key) / max(per_file(measured[small], key), 1e-12)
                suite.ratios[f"growth {key} per file {large}/{small}"] = ratio
                print(f"  growth of {key} per file, {large:,} / {small:,} files: {ratio:.2f}", flush=True)
    suite.save(args.results)


if __name__ == "__main__":
    main(sys.argv[1:])
