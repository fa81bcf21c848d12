"""The run directory: config.json (with the environment that ran it; --resume compares the rest), metrics.jsonl,
checkpoints/{last,best}.pt, report.md, plots/."""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
from pathlib import Path
from typing import Optional

from . import run_lock
from ..errors import RkdError

# config.json's library versions: {name: the distributions that may provide it, first installed wins}
VERSIONED = {"torch": ("torch",), "torchvision": ("torchvision",), "timm": ("timm",), "ffcv": ("ffcv",),
             "rkd": ("rkd",), "dali": ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110", "nvidia-dali")}
# config.json parts that do not change what a resumed run computes: where it is, how it reports, what ran it
RESUME_IGNORED = ("resume", "name", "runs_dir", "progress", "data.workers", "environment", "checkpoint_every")


def _version(distributions: tuple) -> Optional[str]:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def git_commit(folder: Path) -> Optional[dict]:
    """{"commit", "dirty"} of the git checkout holding `folder`, or None (no checkout, no git, git failing)."""
    try:
        run = dict(cwd=folder, capture_output=True, text=True, timeout=10, check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def environment() -> dict:
    """The versions of the libraries that compute a run (None: not installed) and rkd's git commit, if any."""
    package = Path(__file__).resolve().parents[2]
    return {"versions": {name: _version(dists) for name, dists in VERSIONED.items()},
            "git": git_commit(package) if (package / ".git").exists() else None}


def first_difference(saved, current, path: str = "") -> Optional[str]:
    """The first dotted path where `current` differs from `saved`, with both values; parts `saved` lacks (written
    by an older rkd) and RESUME_IGNORED ones are not compared."""
    if path in RESUME_IGNORED:
        return None
    if isinstance(saved, dict) and isinstance(current, dict):
        parts = [(f"{path}.{key}" if path else key, value, current.get(key)) for key, value in sorted(saved.items())]
    elif isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        parts = [(f"{path}.{i}", value, other) for i, (value, other) in enumerate(zip(saved, current))]
    else:
        parts = None
    if parts is not None:
        return next(filter(None, (first_difference(value, other, where) for where, value, other in parts)), None)
    if saved != current:
        return f"{path} (saved {json.dumps(saved)[:60]}, now {json.dumps(current)[:60]})"
    return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunDir:
    """One run's folder, owned by one process while it runs. Everything a figure or a resume needs is in it."""

    TEMPORARY_PATTERNS = (".*.tmp", "checkpoints/.last.pt.*", "checkpoints/.best.pt.*")

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.plots = self.path / "plots"
        self.last = self.checkpoints / "last.pt"
        self.best = self.checkpoints / "best.pt"
        self.metrics_file = self.path / "metrics.jsonl"
        self.config_file = self.path / "config.json"

    @property
    def started(self) -> bool:
        """Whether a checkpoint exists: a run that failed before its first one has nothing to continue."""
        return self.last.exists()

    def open(self, config: dict, resume: bool) -> None:
        """Own the folder, then create the run or check that a resumed run has the same configuration.

        A folder without checkpoints/last.pt (a run that failed or was killed before its first checkpoint) is
        started again with this command's configuration, with or without --resume."""
        config = json.loads(json.dumps(config))  # compare as stored: tuples become lists
        run_lock.acquire(self.path)
        self._remove_temporaries()
        if self.started:
            if not resume:
                raise RkdError(f"run directory {self.path} exists: pass --resume to continue it, or choose another --name")
            self._check_same_config(config)
            self._repair_metrics()
            return
        if self.config_file.exists():
            print(f"run directory {self.path} has no checkpoint yet: starting it again with this command", flush=True)
        for stale in (self.metrics_file, self.best):
            stale.unlink(missing_ok=True)
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.plots.mkdir(exist_ok=True)
        _write_atomic(self.config_file, json.dumps(config, indent=2, sort_keys=True) + "\n")

    def close(self) -> None:
        """Give up ownership of the folder (also dropped by the kernel when the process ends)."""
        run_lock.release(self.path)

    def _remove_temporaries(self) -> None:
        """Temporary files of atomic writes that a kill interrupted (only the owner writes them, and it is us)."""
        stale = [p for pattern in self.TEMPORARY_PATTERNS for p in self.path.glob(pattern) if p.is_file()]
        for path in stale:
            path.unlink()
        if stale:
            print(f"removed {len(stale)} temporary file(s) left in {self.path} by an interrupted run", flush=True)

    def _check_same_config(self, config: dict) -> None:
        try:
            saved = json.loads(self.config_file.read_text())
            if not isinstance(saved, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            raise RkdError(f"--resume: {self.config_file} is unreadable ({str(err).splitlines()[0][:80]}): restore "
                           "it from a copy, or delete the run directory to start afresh") from None
        changed = first_difference(saved, config)
        if changed:
            raise RkdError(f"--resume: {self.config_file} differs from this command in {changed}; "
                           "resume with the same options or choose another --name")

    def _repair_metrics(self) -> None:
        """Cut a torn last line of metrics.jsonl (a write cut by a kill), saying so in one line."""
        if not self.metrics_file.exists():
            return
        data = self.metrics_file.read_bytes()
        lines = data.splitlines(keepends=True)
        if not lines:
            return
        last = lines[-1]
        try:
            torn = not last.endswith(b"\n") or not isinstance(json.loads(last), dict)
        except ValueError:
            torn = True
        if torn:
            with open(self.metrics_file, "r+b") as f:
                f.truncate(len(data) - len(last))
                os.fsync(f.fileno())
            print(f"repaired {self.metrics_file}: dropped a torn last line ({len(last)} bytes) left by an "
                  "interrupted write", flush=True)

    def append_metrics(self, record: dict) -> None:
        """Add one record as one write, flushed to disk: a kill leaves at most a torn last line."""
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(self.metrics_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while line:  # one write for a regular file; the loop only guards against a short write
                line = line[os.write(fd, line):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_metrics(self, kind: Optional[str] = None) -> list:
        if not self.metrics_file.exists():
            return []
        records = []
        for number, line in enumerate(self.metrics_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                raise RkdError(f"{self.metrics_file} line {number} is not a JSON record: repair or delete that "
                               "line (a torn last line is repaired by --resume)") from None
        return [r for r in records if kind is None or r.get("kind") == kind]

    def truncate_metrics(self, completed_epochs: int, completed_steps: Optional[int] = None) -> None:
        """Drop records of epochs after the last checkpoint (a killed run redoes them on resume); with
        `completed_steps` (a step checkpoint inside the next epoch), keep that epoch's step records up to it."""
        kept = [r for r in self.read_metrics() if r.get("epoch", 0) < completed_epochs or (
            completed_steps is not None and r.get("kind") == "step" and r.get("step", 0) <= completed_steps)]
        _write_atomic(self.metrics_file, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def write_report(self, text: str) -> Path:
        path = self.path / "report.md"
        _write_atomic(path, text)
        return path
