"""FFCV .beton files: convert any source once, describe it in a sidecar, validate it before loading.

A .beton written here has two fields, ``image`` (FFCV's RGBImageField) and ``label`` (IntField), and a JSON
sidecar ``OUT.beton.json`` with what a loader needs that FFCV does not store: mean/std, classes, channels, the
kind of source. One-channel sources (Fashion-MNIST, MNIST) are stored with the channel replicated three times,
because RGBImageField holds 3-channel HWC images; the loader takes channel 0 back, which in raw mode returns the
exact source pixels. A .beton without a sidecar (written by other tools) is read as RGB with ImageNet statistics.

Corrupt images in a JPEG tree: the conversion decodes every image anyway, so it refuses the whole source with
the count and the first files named, before any training starts; a .beton never holds a broken image.
"""
from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import multiprocessing
import os
import queue
import signal
import sys
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from ffcv.fields import IntField, RGBImageField
from ffcv.reader import Reader
from ffcv.types import ALLOC_TABLE_TYPE
from ffcv import writer as ffcv_writer
from ffcv.memory_allocator import MemoryAllocator
from ffcv.writer import MAX_PAGE_SIZE, DatasetWriter
from torchvision.io import ImageReadMode, decode_image, read_file

from ..cache import CACHE_ENV, cache_dir, writable_folder  # noqa: F401 - CACHE_ENV was defined here; kept importable
from ..errors import ConfigError
from ..sources import IMAGENET_MEAN, IMAGENET_STD, ArraySource, FileSource, Source, open_source, resolve_path
from ..validate import scan_files

LAYOUT_VERSION = 1  # bump when what this module writes changes: cached conversions are then redone
WRITE_MODES = ("jpg", "raw", "proportion")
IMAGE_FIELD, LABEL_FIELD = "image", "label"
DEFAULT_PAGE_SIZE = 1 << 23  # FFCV's default (8 MiB); raised to fit the largest image
_PR_SET_PDEATHSIG = 1  # prctl option (Linux): a signal the kernel sends a process when its parent dies


@dataclass(frozen=True)
class BetonInfo:
    """A validated .beton and what its sidecar says about it (the attributes a loader reads from a Source)."""

    path: Path
    name: str
    kind: str  # "array" (constant-size images from memory) or "files" (variable-size images from a tree)
    split: str
    channels: int
    num_classes: int
    mean: tuple
    std: tuple
    native_size: Optional[int]
    num_samples: int
    classes: Optional[tuple] = None
    options: dict = field(default_factory=dict)
    source: str = ""
    source_key: str = ""
    extra_fields: tuple = ()  # fields besides image and label (in .beton files written by other tools)

    def __len__(self) -> int:
        return self.num_samples


def sidecar_path(beton: Path) -> Path:
    """Where the description of `beton` lives: ``OUT.beton.json``."""
    return beton.with_name(beton.name + ".json")


def cache_root() -> Path:
    """The directory holding cached conversions: ``$RKD_CACHE_DIR/beton`` or ``~/.cache/rkd/beton`` (created)."""
    return cache_dir("beton")


def _resolve_write_mode(write_mode: Optional[str], source: Source) -> str:
    """`None` picks raw for in-memory arrays (tiny images, exact) and jpg for JPEG trees (a tenth of the size)."""
    if write_mode is None:
        return "raw" if isinstance(source, ArraySource) else "jpg"
    if write_mode not in WRITE_MODES:
        raise ConfigError(f"unknown write_mode {write_mode!r}: choose one of {', '.join(WRITE_MODES)}")
    return write_mode


def _conversion_options(source: Source, max_resolution: Optional[int], write_mode: Optional[str],
                        jpeg_quality: int, compress_probability: float) -> dict:
    mode = _resolve_write_mode(write_mode, source)
    if max_resolution is not None and max_resolution < 1:
        raise ConfigError(f"max_resolution must be positive, got {max_resolution}")
    if not 1 <= jpeg_quality <= 100:
        raise ConfigError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    if not 0.0 <= compress_probability <= 1.0:
        raise ConfigError(f"compress_probability must be in [0, 1], got {compress_probability}")
    options = {"write_mode": mode, "max_resolution": max_resolution}
    if mode != "raw":
        options["jpeg_quality"] = int(jpeg_quality)
    if mode == "proportion":
        options["compress_probability"] = float(compress_probability)
    return options


class _ArrayItems:
    """(HWC uint8 RGB image, label) pairs of an ArraySource, one channel replicated to three."""

    def __init__(self, source: ArraySource) -> None:
        self.images = np.ascontiguousarray(source.images.numpy())
        self.labels = source.labels.numpy()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index].transpose(1, 2, 0)
        if image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        return np.ascontiguousarray(image), int(self.labels[index])


class _FileItems:
    """(HWC uint8 RGB image, label) pairs of a FileSource, decoded as the torch backend decodes them.

    Never raises (an exception in an FFCV writer process ends that process): an undecodable file is replaced by
    a 1×1 placeholder and flagged in shared memory; the conversion then refuses the source. The up-front check
    of `open_source` has refused such files already; this catches a file that changed since.
    """

    def __init__(self, source: FileSource) -> None:
        self.files, self.labels = source.files, source.labels.numpy()
        self.failed = multiprocessing.RawArray("b", len(self.files))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        try:
            image = decode_image(read_file(self.files[index]), mode=ImageReadMode.RGB)
            if image.dtype == torch.uint8:
                return np.ascontiguousarray(image.permute(1, 2, 0).numpy()), int(self.labels[index])
        except Exception:  # noqa: BLE001 - anything a broken file raises; reported by the parent
            pass
        self.failed[index] = 1
        return np.zeros((1, 1, 3), dtype=np.uint8), int(self.labels[index])


def _die_with_parent(work, *args) -> None:
    """Run an FFCV writer job in a process that the kernel kills when its parent dies; an error is reported
    to the parent through the last argument (a queue) and ends the process quietly with exit code 1."""
    *args, failures = args
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)
    try:
        work(*args)
    except BaseException as err:  # noqa: BLE001 - reported by the parent as one line
        failures.put(f"{type(err).__name__}: {err}")
        sys.exit(1)


class _SupervisedWriter(DatasetWriter):
    """FFCV's DatasetWriter whose worker processes can neither hang the conversion nor outlive it.

    FFCV 1.0.2 waits for a sample count that a failed worker never reports (the conversion hangs forever), and
    its workers keep running when their parent is killed. Here each worker dies with its parent, the parent
    stops waiting as soon as a worker ends without its results, and whatever ends the write, every worker is
    stopped and the shared memory released.
    """

    def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
        self.num_samples = num_samples
        self.prepare()
        processes = []
        try:
            work, allocations, failures = multiprocessing.Queue(), multiprocessing.Queue(), multiprocessing.Queue()
            for todo in queue_content:
                work.put(todo)
            for _ in range(self.num_workers):
                work.put(None)
            done = multiprocessing.Value(ctypes.c_uint64, 0)
            allocator = MemoryAllocator(self.fname, self.data_region_start, self.page_size)
            args = (work, self.metadata_sm, self.metadata_type, self.fields, allocator, done, allocations,
                    *extra_worker_args, failures)
            processes = [multiprocessing.Process(target=_die_with_parent, args=(work_fn, *args), daemon=True)
                         for _ in range(self.num_workers)]
            for process in processes:
                process.start()
            self.finalize(self._collect(processes, allocations, failures, done))
        finally:
            for process in processes:
                if process.is_alive():
                    process.kill()
                process.join()
            self.metadata_sm.close()
            self.metadata_sm.unlink()

    def _collect(self, processes: list, allocations, failures, done) -> list:
        """Every worker's allocations, showing progress; a RuntimeError when a worker ends without them."""
        collected, progress, shown = [], ffcv_writer.tqdm(total=self.num_samples), 0
        try:
            while len(collected) < len(processes):
                try:
                    collected.append(allocations.get(timeout=0.1))
                except queue.Empty:
                    if any(p.exitcode not in (None, 0) for p in processes):
                        raise RuntimeError(self._failure(processes, failures)) from None
                    if all(p.exitcode == 0 for p in processes):  # all done: their results are in the queue
                        try:
                            collected.append(allocations.get(timeout=1))
                        except queue.Empty:
                            raise RuntimeError(self._failure(processes, failures)) from None
                progress.update(done.value - shown)
                shown = done.value
        finally:
            progress.close()
        return [entry for allocation in collected for entry in allocation]

    @staticmethod
    def _failure(processes: list, failures) -> str:
        try:
            return failures.get(timeout=1)
        except queue.Empty:
            return f"a writer process ended with exit code {next((p.exitcode for p in processes if p.exitcode), 0)}"


@contextmanager
def _progress_bar(enabled: bool, description: str):
    """FFCV's writer always shows a tqdm bar (tqdm reads TQDM_DISABLE only at import): set it for one write."""
    original = ffcv_writer.tqdm
    ffcv_writer.tqdm = partial(original, disable=not enabled, desc=description)
    try:
        yield
    finally:
        ffcv_writer.tqdm = original


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _remove_stale_temporaries(folder: Path, pattern: str) -> None:
    """Delete the temporary files matching `pattern` in `folder` whose writing process no longer runs."""
    for tmp in folder.glob(pattern):
        pid = tmp.name.rpartition(".tmp-")[2]
        if pid.isdigit() and not _process_runs(int(pid)):
            tmp.unlink(missing_ok=True)


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _page_size(source: Source, max_resolution: Optional[int]) -> int:
    """A page that holds the largest image: FFCV's default, or the next power of two above twice its raw size
    (a JPEG of noise can exceed the raw size); a one-line ConfigError when no FFCV page is that large."""
    if isinstance(source, ArraySource):
        shapes, names = [tuple(source.images.shape[-2:])], [f"the images of {source.path}"]
    else:
        shapes, names = scan_files(source.files, str(source.path)).shapes, source.files
    largest, largest_index = 0, 0
    for index, (height, width) in enumerate(shapes):
        if max_resolution is not None and max(height, width) > max_resolution:
            ratio = max_resolution / max(height, width)  # FFCV's resizer: (ratio * size).astype(int)
            height, width = int(ratio * height), int(ratio * width)
        if height * width * 3 > largest:
            largest, largest_index = height * width * 3, index
    page = DEFAULT_PAGE_SIZE
    while page < 2 * largest + (1 << 16):
        page *= 2
    if page >= MAX_PAGE_SIZE:
        raise ConfigError(f"source: {names[largest_index]} is too large for a .beton ({largest} bytes of pixels, "
                          f"FFCV pages hold under {MAX_PAGE_SIZE // 2}): pass max_resolution")
    return page


def _write(source: Source, out: Path, options: dict, num_workers: Optional[int], progress: bool,
           source_key: str) -> BetonInfo:
    """Write `source` to `out` and its sidecar, both atomically (temporary file + os.replace).

    Temporaries that a killed conversion left in the folder are removed first; a failed conversion removes its
    own. The page size fits the largest image (FFCV's writer cannot store an image larger than a page).
    """
    items = _ArrayItems(source) if isinstance(source, ArraySource) else _FileItems(source)
    image_field = RGBImageField(write_mode=options["write_mode"], max_resolution=options["max_resolution"],
                                jpeg_quality=options.get("jpeg_quality", 90),
                                compress_probability=options.get("compress_probability", 0.5))
    workers = num_workers or len(os.sched_getaffinity(0))
    writable_folder(out.parent, "output folder")
    _remove_stale_temporaries(out.parent, ".*.beton*.tmp-*")
    page_size = _page_size(source, options["max_resolution"])
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        writer = _SupervisedWriter(str(tmp), {IMAGE_FIELD: image_field, LABEL_FIELD: IntField()},
                                   page_size=page_size, num_workers=max(1, min(workers, -(-len(items) // 100))))
        with _progress_bar(progress, f"converting {out.name}"):
            try:
                writer.from_indexed_dataset(items, chunksize=100)
            except RuntimeError as err:
                raise ConfigError(f"source: converting {source.path} to {out} failed in FFCV's writer ({err}); "
                                  "nothing was written") from None
        if isinstance(items, _FileItems):
            _refuse_failures(items, source)
        info = _describe(source, tmp, options, source_key)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    info = BetonInfo(**{**asdict(info), "path": out})
    _atomic_write_text(sidecar_path(out), json.dumps(_sidecar_dict(info), indent=1) + "\n")
    return info


def _refuse_failures(items: _FileItems, source: FileSource) -> None:
    failed = np.flatnonzero(np.frombuffer(items.failed, dtype=np.int8))
    if len(failed):
        others = f" and {len(failed) - 1} more" if len(failed) > 1 else ""
        raise ConfigError(f"source: {len(failed)} of {len(items)} images in {source.path} changed since they were "
                          f"checked and no longer decode as 8-bit images: {items.files[failed[0]]}{others}; "
                          "remove or replace them and convert again")


def _describe(source: Source, beton: Path, options: dict, source_key: str) -> BetonInfo:
    reader = Reader(str(beton))
    heights = reader.metadata["f0"]["height"]
    native = int(heights[0]) if isinstance(source, ArraySource) and len(heights) else None
    return BetonInfo(path=beton, name=source.name, kind=source.kind, split=source.split, channels=source.channels,
                     num_classes=source.num_classes, mean=tuple(source.mean), std=tuple(source.std),
                     native_size=native, num_samples=int(reader.num_samples),
                     classes=tuple(source.classes) if isinstance(source, FileSource) else None,
                     options=dict(options), source=str(source.path), source_key=source_key)


def _sidecar_dict(info: BetonInfo) -> dict:
    return {"layout": LAYOUT_VERSION, **{k: v for k, v in asdict(info).items() if k not in ("path", "extra_fields")},
            "beton_bytes": info.path.stat().st_size}


def _open(source: Union[str, Path, Source], split: str, on_bad_file: str) -> Source:
    if isinstance(source, (str, Path)) and resolve_path(source).suffix == ".beton":
        raise ConfigError(f"source: {source} is already a .beton file; convert its source instead")
    return open_source(source, split, on_bad_file)


def recorded_source(info: BetonInfo) -> str:
    """The source `info`'s sidecar names, after checking that it still holds the dataset converted into it."""
    if not info.source or not resolve_path(info.source).exists():
        raise ConfigError(f"source: {info.path} does not name an existing source in {sidecar_path(info.path).name}, "
                          "so there is no test split to evaluate on; pass the dataset itself (the ffcv loader "
                          "converts and caches it)")
    now = open_source(info.source, info.split or "train")
    found = {"kind": now.kind, "channels": now.channels, "classes": now.num_classes,
             "image size": now.native_size if now.kind == "array" else None}
    recorded = {"kind": info.kind, "channels": info.channels, "classes": info.num_classes,
                "image size": info.native_size if info.kind == "array" else None}
    differ = [f"{key} {recorded[key]} then, {found[key]} now" for key in found if found[key] != recorded[key]]
    if info.classes is not None and isinstance(now, FileSource) and tuple(now.classes) != tuple(info.classes):
        differ.append("other class folders")
    if differ:
        raise ConfigError(f"source: {info.path} was converted from {info.source}, which now holds another dataset "
                          f"({'; '.join(differ)}): convert it again (force=True) or pass the dataset itself")
    return info.source


def convert_to_beton(source: Union[str, Path, Source], out_path: Union[str, Path], *, split: str = "train",
                     max_resolution: Optional[int] = None, write_mode: Optional[str] = None,
                     jpeg_quality: int = 90, compress_probability: float = 0.5, num_workers: Optional[int] = None,
                     force: bool = False, progress: bool = True, on_bad_file: str = "error") -> BetonInfo:
    """Convert one split of `source` (alias, path or Source) to the .beton `out_path` (plus its JSON sidecar).

    `max_resolution` caps the longer side (FFCV's INTER_AREA downscale); `write_mode` is jpg, raw or
    proportion (a random `compress_probability` share as JPEG); None means raw for in-memory arrays and jpg
    for JPEG trees. Refuses to overwrite `out_path` unless `force`. A tree's undecodable files are refused, or
    left out with `on_bad_file="skip"` (see `pipelines.open_source`).
    """
    out = Path(out_path).expanduser()
    if out.suffix != ".beton":
        raise ConfigError(f"{out}: the output file name must end in .beton")
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; pass force=True to overwrite it")
    opened = _open(source, split, on_bad_file)
    options = _conversion_options(opened, max_resolution, write_mode, jpeg_quality, compress_probability)
    return _write(opened, out, options, num_workers, progress, source_key=source_fingerprint(opened, options))


def source_fingerprint(source: Source, options: dict) -> str:
    """A digest of the source's identity and the conversion options: equal digests, equal .beton files.

    Arrays: their bytes. JPEG trees: the index (root, classes, and each file's path, label, size and mtime).
    """
    digest = hashlib.blake2b(digest_size=16)
    header = {"layout": LAYOUT_VERSION, "kind": source.kind, "name": source.name, "split": source.split,
              "num_classes": source.num_classes, "mean": list(source.mean), "std": list(source.std),
              "options": options}
    if isinstance(source, FileSource):
        header.update(root=str(Path(source.path).resolve()), classes=list(source.classes))
    digest.update(json.dumps(header, sort_keys=True).encode())
    if isinstance(source, ArraySource):
        digest.update(str(tuple(source.images.shape)).encode())
        digest.update(np.ascontiguousarray(source.images.numpy()).data)
        digest.update(np.ascontiguousarray(source.labels.numpy()).data)
    else:
        for path, label in zip(source.files, source.labels.tolist()):
            stat = os.stat(path)
            digest.update(f"{path}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cached_beton(source: Union[str, Path, Source], split: str, *, cache_dir: Optional[Union[str, Path]] = None,
                 max_resolution: Optional[int] = None, write_mode: Optional[str] = None, jpeg_quality: int = 90,
                 compress_probability: float = 0.5, num_workers: Optional[int] = None,
                 progress: bool = True) -> BetonInfo:
    """The .beton of `source`'s `split`, converted once into the cache and reused while the source is unchanged.

    The file is named by `source_fingerprint`, so a changed source or other options convert anew; a lock file
    makes concurrent callers (ranks, train and test loaders) convert once and share the result.
    """
    opened = _open(source, split, "error")
    options = _conversion_options(opened, max_resolution, write_mode, jpeg_quality, compress_probability)
    key = source_fingerprint(opened, options)
    folder = writable_folder(cache_dir, "cache_dir") if cache_dir is not None else cache_root()
    out = folder / f"{opened.name}-{opened.split}-{key[:20]}.beton"
    with open(folder / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists() and sidecar_path(out).exists():
            try:
                info = read_beton(out)
                if info.source_key == key:
                    return info
            except ConfigError as err:
                warnings.warn(f"re-converting the damaged cached {out}: {err}", stacklevel=2)
        if progress:
            print(f"rkd: converting {opened.name} {opened.split} ({len(opened)} images, {options['write_mode']}) "
                  f"to {out} once; reused while the source is unchanged", file=sys.stderr, flush=True)
        return _write(opened, out, options, num_workers, progress, source_key=key)


def _check_structure(path: Path, reader: Reader) -> None:
    """Refuse a truncated .beton: every sample's data and the allocation table must lie inside the file."""
    size = path.stat().st_size
    table_ptr = int(reader.header["alloc_table_ptr"])
    intact = (len(reader.metadata) == reader.num_samples and table_ptr <= size
              and (size - table_ptr) % ALLOC_TABLE_TYPE.itemsize == 0)
    if intact and reader.num_samples:
        table = reader.alloc_table
        intact = (len(table) > 0 and int((table["ptr"] + table["size"]).max()) <= table_ptr
                  and len(np.unique(table["sample_id"])) == reader.num_samples)
    if not intact:
        raise ConfigError(f"source: {path} is truncated or damaged; re-create it (convert_to_beton with force=True)")


def _check_fields(path: Path, reader: Reader) -> None:
    found = {name: type(handler).__name__ for name, handler in reader.handlers.items()}
    if not (isinstance(reader.handlers.get(IMAGE_FIELD), RGBImageField)
            and isinstance(reader.handlers.get(LABEL_FIELD), IntField)):
        listed = ", ".join(f"{n}: {t}" for n, t in found.items()) or "none"
        raise ConfigError(f"source: {path} has fields ({listed}); the ffcv loader needs "
                          f"'{IMAGE_FIELD}': RGBImageField and '{LABEL_FIELD}': IntField (write it with rkd convert)")


def open_reader(path: Union[str, Path]) -> Reader:
    """FFCV's Reader on `path`, with a one-line ConfigError for a missing, unreadable or truncated file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"source: {path} does not exist; create it with convert_to_beton(SOURCE, {path})")
    try:
        reader = Reader(str(path))
    except (AssertionError, ValueError, IndexError, KeyError, TypeError, OSError) as err:
        raise ConfigError(f"source: {path} is not a readable .beton ({type(err).__name__}: {err}); "
                          "re-create it (convert_to_beton with force=True)") from None
    _check_structure(path, reader)
    _check_fields(path, reader)
    return reader


def read_beton(path: Union[str, Path]) -> BetonInfo:
    """Validate the .beton at `path` and describe it from its sidecar (or as RGB/ImageNet without one)."""
    path = Path(path).expanduser()
    reader = open_reader(path)
    extra = tuple(name for name in reader.handlers if name not in (IMAGE_FIELD, LABEL_FIELD))
    sidecar = sidecar_path(path)
    if not sidecar.exists():
        return BetonInfo(**{**asdict(_infer_info(path, reader)), "extra_fields": extra})
    try:
        meta = json.loads(sidecar.read_text())
        known = {k: meta[k] for k in BetonInfo.__dataclass_fields__ if k != "path" and k in meta}
        info = BetonInfo(path=path, **known)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"source: {sidecar} is not a valid .beton description ({err}); "
                          "delete it or convert again with force=True") from None
    if (meta.get("layout") != LAYOUT_VERSION or meta.get("beton_bytes") != path.stat().st_size
            or info.num_samples != reader.num_samples):
        raise ConfigError(f"source: {sidecar} describes another .beton than {path.name}; "
                          "delete it or convert again with force=True")
    return BetonInfo(**{**asdict(info), "path": path, "mean": tuple(info.mean), "std": tuple(info.std),
                        "classes": tuple(info.classes) if info.classes is not None else None,
                        "extra_fields": extra})


def _infer_info(path: Path, reader: Reader) -> BetonInfo:
    warnings.warn(f"{path} has no {sidecar_path(path).name}: reading it as RGB with ImageNet mean/std", stacklevel=3)
    fields = list(reader.handlers)
    images = reader.metadata[f"f{fields.index(IMAGE_FIELD)}"]
    labels = reader.metadata[f"f{fields.index(LABEL_FIELD)}"]
    side = int(images["height"][0]) if len(images) else 0
    square = bool(len(images)) and bool((images["height"] == side).all() and (images["width"] == side).all())
    return BetonInfo(path=path, name=path.stem, kind="files", split="", channels=3,
                     num_classes=int(labels.max()) + 1 if len(labels) else 0, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     native_size=side if square else None, num_samples=int(reader.num_samples))
