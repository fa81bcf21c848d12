"""Checkpoints: written atomically, read with `torch.load(weights_only=True)`, validated before use."""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ..errors import RkdError
from ..models import create, unwrap

FORMAT = "rkd-checkpoint-v1"


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write `payload` to `path` atomically: a temporary file in the same folder, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive
DEFAULT_FIX = "restore a good copy, or re-create it (rkd train-teacher / rkd distill write checkpoints/best.pt)"


def _unreadable_reason(path: Path, err: Exception) -> str:
    """Our own words for why torch could not read `path` (torch's text is long and about other things)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "is empty"
    if head != ZIP_MAGIC:
        return "is not a torch checkpoint (it does not start as one: another kind of file, or overwritten)"
    if isinstance(err, pickle.UnpicklingError):
        return "holds Python objects beyond tensors and plain values, which rkd refuses to load (they could run code)"
    if "central directory" in str(err) or isinstance(err, EOFError):
        return "is truncated (an interrupted write or copy)"
    return f"is corrupt ({type(err).__name__})"


def load_checkpoint(path: Path, flag: str = "checkpoint", fix: str = DEFAULT_FIX) -> dict:
    """Read an rkd checkpoint (weights only); a missing, corrupt or foreign file is a one-line RkdError."""
    path = Path(path)
    if path.is_dir():
        inside = path / "checkpoints" / "best.pt"
        hint = f"pass {inside}" if inside.is_file() else "pass a .pt file (a run's checkpoints/best.pt)"
        raise RkdError(f"{flag}: {path} is a folder, not a checkpoint file: {hint}")
    if not path.is_file():
        raise RkdError(f"{flag}: {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise RkdError(f"{flag}: {path} {_unreadable_reason(path, err)}: {fix}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise RkdError(f"{flag}: {path} is not an rkd checkpoint (no '{FORMAT}' marker)")
    return payload


def model_record(model: nn.Module, arch: str, num_classes: int, image_size: int, in_chans: int) -> dict:
    """The part of a checkpoint that rebuilds a model: architecture, shape facts and weights."""
    state = unwrap(model).state_dict()
    return {"arch": arch, "num_classes": num_classes, "image_size": image_size, "in_chans": in_chans,
            "model": state}


def load_model(path: Path, device="cpu", *, num_classes: Optional[int] = None, in_chans: Optional[int] = None,
               flag: str = "--teachers") -> tuple:
    """Rebuild the model stored at `path`; checks class and channel counts when given. Returns (model, payload)."""
    payload = load_checkpoint(path, flag)
    for key in ("arch", "num_classes", "image_size", "in_chans", "model"):
        if key not in payload:
            raise RkdError(f"{flag}: {path} lacks '{key}'; it was not written by rkd train-teacher/distill")
    if num_classes is not None and payload["num_classes"] != num_classes:
        raise RkdError(f"{flag}: {path} predicts {payload['num_classes']} classes but the data has {num_classes}; "
                       "use a teacher trained on this dataset")
    if in_chans is not None and payload["in_chans"] != in_chans:
        raise RkdError(f"{flag}: {path} takes {payload['in_chans']}-channel images but the data has {in_chans}")
    model = create(payload["arch"], payload["num_classes"], payload["image_size"], payload["in_chans"])
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        raise RkdError(f"{flag}: {path} weights do not fit architecture {payload['arch']!r} "
                       f"({str(err).splitlines()[0][:100]})") from None
    return model.to(device), payload
