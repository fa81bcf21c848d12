"""Checks at the command-line boundary: click types that refuse values a run cannot use, and the environment.

A refused value is a click usage error, which `rkd.cli.main` prints as one line naming the flag and the range.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path
from typing import Optional

import click
import torch
from pipelines import CACHE_ENV

from ..errors import RkdError


class Real(click.ParamType):
    """A finite float (NaN and ±inf refused) within [low, high]; `positive` also refuses 0 and -0."""

    name = "number"

    def __init__(self, low: Optional[float] = None, high: Optional[float] = None, *, positive: bool = False) -> None:
        self.low, self.high, self.positive = low, high, positive

    def accepted(self) -> str:
        if self.positive:
            return "a finite number > 0"
        if self.high is None:
            return f"a finite number >= {self.low:g}"
        return f"a number in [{self.low:g}, {self.high:g}]"

    def convert(self, value, param, ctx) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number; use {self.accepted()}", param, ctx)
        out_of_range = (not math.isfinite(number) or (self.positive and number <= 0)
                        or (self.low is not None and number < self.low)
                        or (self.high is not None and number > self.high))
        if out_of_range:
            self.fail(f"{value} is out of range; use {self.accepted()}", param, ctx)
        return number


def device_problem(name: str) -> Optional[str]:
    """Why `name` cannot be used as the training device here (None when it can)."""
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return f"{name!r} is not a device; use auto, cpu, cuda or cuda:N"
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        return f"{name!r}: rkd trains on cpu or cuda devices; use auto, cpu, cuda or cuda:N"
    count = torch.cuda.device_count()
    if count == 0:
        return f"{name} asked for, but this machine has no usable CUDA device; use --device cpu (or auto)"
    if device.index is not None and device.index >= count:
        return f"{name} does not exist: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}"
    return None


class Device(click.ParamType):
    """auto, cpu, cuda or cuda:N, and only a CUDA device this machine has."""

    name = "device"

    def convert(self, value, param, ctx) -> str:
        problem = device_problem(value)
        if problem:
            self.fail(problem, param, ctx)
        return value


def folder_problem(path: Path) -> Optional[str]:
    """Why files cannot be written in folder `path`, which may not exist yet (None when they can).

    Probes by creating (and removing) a temporary entry, so read-only file systems are found too."""
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        if existing == path:
            tempfile.TemporaryFile(dir=path).close()
        else:
            os.rmdir(tempfile.mkdtemp(dir=existing))
    except OSError as err:
        return f"nothing can be written in {existing} ({err.strerror})"
    return None


class WritableFolder(click.ParamType):
    """A folder (existing or to be created) that this process can write into; converts to `path_type`."""

    name = "folder"

    def __init__(self, path_type: type = str) -> None:
        self.path_type = path_type

    def check(self, path: Path, param, ctx) -> None:
        problem = folder_problem(path.absolute())
        if problem:
            self.fail(f"{problem}; choose a folder you can write to", param, ctx)

    def convert(self, value, param, ctx):
        self.check(Path(value).expanduser(), param, ctx)
        return self.path_type(value)


class WritableFile(WritableFolder):
    """A file to be written, in a folder (existing or to be created) that this process can write into."""

    name = "file"

    def check(self, path: Path, param, ctx) -> None:
        if path.is_dir():
            self.fail(f"{path} is a folder; name a file inside it", param, ctx)
        super().check(path.absolute().parent, param, ctx)


def check_cache_dir() -> None:
    """Refuse an unusable $RKD_CACHE_DIR (where --loader ffcv caches its conversions) before any work."""
    value = os.environ.get(CACHE_ENV)
    problem = value and folder_problem(Path(value).expanduser())
    if problem:
        raise RkdError(f"{CACHE_ENV}={value}: {problem}; point it at a writable folder, or unset it "
                       "(default ~/.cache/rkd)")


LAUNCH_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")  # set by torchrun, read as integers by rkd.train.distributed


def check_launch_env() -> None:
    """Refuse torchrun's variables when they are not counts that fit together (RANK below WORLD_SIZE)."""
    values = {}
    for name in LAUNCH_ENV:
        value = os.environ.get(name)
        if value is not None and not value.strip().isdigit():
            raise RkdError(f"{name}={value!r}: expected a whole number >= 0 (torchrun sets it); unset it to run "
                           "one process")
        values[name] = int(value) if value is not None else None
    world, rank = values["WORLD_SIZE"], values["RANK"]
    if world is not None and world < 1:
        raise RkdError(f"WORLD_SIZE={world}: expected at least 1; unset it to run one process")
    if world is not None and world > 1 and (rank is None or rank >= world):
        raise RkdError(f"RANK={os.environ.get('RANK')} does not fit WORLD_SIZE={world}: expected 0..{world - 1} "
                       "(launch with torchrun)")


AUGMENT_FLAGS = ("array_crop_scale", "magnitude_std", "num_magnitude_bins", "num_ops", "autoaugment_policy", "cutout",
                 "magnitude")


def in_flag_words(message: str) -> str:
    """A library message about AugmentSpec's parameters, with the parameter names as the CLI's flags."""
    pattern = r"(?<![\w-])(" + "|".join(AUGMENT_FLAGS) + r")\b"
    message = message.removeprefix("AugmentSpec: ")
    return re.sub(pattern, lambda m: "--" + m.group(1).replace("_", "-"), message)
