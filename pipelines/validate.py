"""The up-front check of a class-folder tree's files: every file is opened and decoded once, before any training.

Each file must exist (no dangling symlink), be non-empty, be a JPEG, an 8-bit PNG or a WebP image (the formats
that every backend decodes: torchvision for the torch backend and FFCV's conversion, DALI's nvImageCodec; a GIF
fails in DALI, a 16-bit PNG decodes to 16-bit pixels in torchvision) and decode completely with torchvision
(libjpeg-turbo, libpng, libwebp: the libraries FFCV and DALI decode with too). The result is cached under the
cache folder, keyed on every file's path, size and mtime, so a later run on an unchanged tree only stats the
files. A bad file is refused with its path and the count, or skipped with `on_bad_file="skip"`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

from torchvision.io import ImageReadMode, decode_image, read_file

from .cache import cache_dir
from .errors import ConfigError

SCAN_VERSION = 1  # bump when the checks change: cached scans are then redone
ON_BAD_FILE = ("error", "skip")
ANNOUNCE_FROM = 2000  # scans of at least this many files say so on stderr (they take a while once)
_MAGIC = ((b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF87a", "gif"), (b"GIF89a", "gif"))
_LIBRARY_PREFIX = re.compile(r"^(?:[\w:]+, )?(?:\S+\.(?:cpp|h|c):\d+, )?")


@dataclass(frozen=True)
class TreeScan:
    """What the check found: `problems` maps a file's index to why it is refused; `shapes` is each (h, w)."""

    problems: dict
    shapes: list


def check_policy(on_bad_file: str) -> str:
    """`on_bad_file` itself, or a one-line ConfigError naming the choices."""
    if on_bad_file not in ON_BAD_FILE:
        raise ConfigError(f"on_bad_file must be one of {', '.join(ON_BAD_FILE)}, got {on_bad_file!r}")
    return on_bad_file


def decoder_cause(err: BaseException) -> str:
    """The reason in a decoder's error without the library's function name and C++ file path."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return _LIBRARY_PREFIX.sub("", lines[-1]) if lines else type(err).__name__


def _image_format(header: bytes) -> Optional[str]:
    for magic, name in _MAGIC:
        if header.startswith(magic):
            return name
    if header[:4] == b"RIFF" and header[8:12] == b"WEBP":
        return "webp"
    return None


def inspect_file(path: str) -> tuple:
    """(None, (h, w)) for a file every backend decodes, else (the reason it cannot be used, (0, 0))."""
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as f:
            header = f.read(32)
    except FileNotFoundError:
        return ("a dangling symlink" if os.path.islink(path) else "missing"), (0, 0)
    except OSError as err:
        return f"unreadable: {err.strerror}", (0, 0)
    if size == 0:
        return "an empty file", (0, 0)
    kind = _image_format(header)
    if kind is None:
        return "not a JPEG, PNG or WebP image", (0, 0)
    if kind == "gif":
        return "a GIF, which DALI cannot decode: convert it to PNG", (0, 0)
    if kind == "png" and len(header) > 24 and header[24] == 16:
        return "a 16-bit PNG, which decodes to 16-bit pixels: save it with 8 bits per channel", (0, 0)
    try:
        image = decode_image(read_file(path), mode=ImageReadMode.RGB)
    except RuntimeError as err:
        return f"not decodable: {decoder_cause(err)}", (0, 0)
    return None, tuple(image.shape[-2:])


def _key(files: list) -> str:
    digest = hashlib.blake2b(f"scan {SCAN_VERSION}\n".encode(), digest_size=16)
    for path in files:
        try:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()


def scan_files(files: list, root: str = "") -> TreeScan:
    """Check every file (see the module docstring), from the cache when the files are unchanged."""
    cached = cache_dir("scans") / f"{_key(files)}.json"
    try:
        stored = json.loads(cached.read_text())
        return TreeScan({int(k): v for k, v in stored["problems"].items()}, [tuple(s) for s in stored["shapes"]])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    if len(files) >= ANNOUNCE_FROM:
        print(f"rkd: checking {len(files)} images of {root} once (cached while they are unchanged)",
              file=sys.stderr, flush=True)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(inspect_file, files, chunksize=64))
    scan = TreeScan({i: reason for i, (reason, _) in enumerate(results) if reason}, [s for _, s in results])
    tmp = cached.with_name(f".{cached.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps({"problems": scan.problems, "shapes": scan.shapes}))
        os.replace(tmp, cached)
    except OSError:  # a full disk: the scan stands, the next run checks again
        tmp.unlink(missing_ok=True)
    return scan


_SKIPS_SAID = set()  # (root, count, first file) already reported by this process: one line per tree


def usable_indices(files: list, root: str, on_bad_file: str) -> list:
    """Indices of the `files` every backend can decode; bad files raise (``error``) or are dropped and counted."""
    problems = scan_files(files, root).problems
    if not problems:
        return list(range(len(files)))
    first = min(problems)
    named = f"{files[first]} ({problems[first]})" + (f" and {len(problems) - 1} more" if len(problems) > 1 else "")
    if check_policy(on_bad_file) == "error":
        raise ConfigError(f"source: {len(problems)} of {len(files)} images in {root} cannot be used: {named}; "
                          "remove or replace them, or skip them (on_bad_file='skip')")
    if len(problems) == len(files):
        raise ConfigError(f"source: none of the {len(files)} images in {root} can be used: {named}")
    if (root, len(problems), files[first]) not in _SKIPS_SAID:
        _SKIPS_SAID.add((root, len(problems), files[first]))
        print(f"rkd: skipping the {len(problems)} of {len(files)} images in {root} that cannot be used: {named}",
              file=sys.stderr, flush=True)
    return [i for i in range(len(files)) if i not in problems]
