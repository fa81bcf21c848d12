"""The cache directory (``$RKD_CACHE_DIR`` or ``~/.cache/rkd``): converted .beton files, image-tree scans."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

from .errors import ConfigError

CACHE_ENV = "RKD_CACHE_DIR"


def cache_home() -> Path:
    """``$RKD_CACHE_DIR`` when set, else ``~/.cache/rkd`` (not created)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rkd").expanduser()


def writable_folder(folder: Union[str, Path], what: str) -> Path:
    """`folder`, created if needed, after proving a file can be made in it; else a one-line ConfigError."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ConfigError(f"{what} {folder} cannot hold files ({err.strerror or err}); "
                          "point it at a writable folder") from None
    return folder


def cache_dir(kind: str) -> Path:
    """The cache's `kind` subfolder (e.g. ``beton``, ``scans``), created and checked to be writable."""
    return writable_folder(cache_home() / kind, f"cache folder (${CACHE_ENV})")
