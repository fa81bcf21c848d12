"""The run directory: config.json, metrics.jsonl, checkpoints/{last,best}.pt, report.md, plots/."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from .errors import RkdError


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunDir:
    """One run's folder. Everything a figure or a resume needs is in it."""

    RESUME_KEYS_IGNORED = ("resume", "name", "runs_dir", "workers", "progress")

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.plots = self.path / "plots"
        self.last = self.checkpoints / "last.pt"
        self.best = self.checkpoints / "best.pt"
        self.metrics_file = self.path / "metrics.jsonl"
        self.config_file = self.path / "config.json"

    def open(self, config: dict, resume: bool) -> None:
        """Create the run, or check that a resumed run has the same configuration."""
        config = json.loads(json.dumps(config))  # compare as stored: tuples become lists
        if self.config_file.exists():
            if not resume:
                raise RkdError(f"run directory {self.path} exists: pass --resume to continue it, or choose another --name")
            saved = json.loads(self.config_file.read_text())
            changed = sorted(k for k in set(saved) | set(config) if k not in self.RESUME_KEYS_IGNORED
                             and saved.get(k) != config.get(k))
            if changed:
                raise RkdError(f"--resume: {self.config_file} differs from this command in {', '.join(changed)}; "
                               "resume with the same options or choose another --name")
            return
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.plots.mkdir(exist_ok=True)
        _write_atomic(self.config_file, json.dumps(config, indent=2, sort_keys=True) + "\n")

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def read_metrics(self, kind: Optional[str] = None) -> list:
        if not self.metrics_file.exists():
            return []
        records = [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]
        return [r for r in records if kind is None or r.get("kind") == kind]

    def truncate_metrics(self, completed_epochs: int) -> None:
        """Drop records of epochs after the last checkpoint (a killed run redoes them on resume)."""
        kept = [r for r in self.read_metrics() if r.get("epoch", 0) < completed_epochs]
        _write_atomic(self.metrics_file, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def write_report(self, text: str) -> Path:
        path = self.path / "report.md"
        _write_atomic(path, text)
        return path
