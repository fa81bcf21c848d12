"""Pretrained timm models: `timm:NAME` (timm's own hub loading, bounded) and `timm:NAME@FILE` (local weights).

A local file is a safetensors file or a PyTorch state_dict read with ``torch.load(weights_only=True)``, so no pickled
code runs: e.g. ``timm.create_model(NAME, pretrained=True).state_dict()`` saved with torch.save or safetensors, or
torchvision's ResNet weights (timm's resnet18/resnet50 use torchvision's key names). The hub is tried only when a
quick connection to it succeeds; otherwise timm may use its local cache only, and failing that the error says how
to pass a local file instead.
"""
from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ..errors import RkdError

TIMM_PREFIX = "timm:"
HUB_ADDRESS = ("huggingface.co", 443)
HUB_PROBE_TIMEOUT_S = 3.0
DOWNLOAD_SOCKET_TIMEOUT_S = 30.0
FALSE_WORDS = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class TimmSpec:
    """`timm:NAME[@FILE]`: a timm model name (with an optional pretrained tag) and an optional local weights file."""

    name: str
    file: Optional[Path] = None

    @property
    def arch(self) -> str:
        """The architecture without its pretrained tag (resnet50.a1_in1k -> resnet50), as rkd.models.create takes."""
        return self.name.split(".", 1)[0]

    def __str__(self) -> str:
        return f"{TIMM_PREFIX}{self.name}" + (f"@{self.file}" if self.file else "")


def is_timm_spec(spec) -> bool:
    """True for a `timm:NAME[@FILE]` string."""
    return str(spec).startswith(TIMM_PREFIX)


def parse_timm_spec(spec: str, flag: str = "--teachers") -> TimmSpec:
    """`timm:NAME` or `timm:NAME@FILE` as a TimmSpec; checks that timm knows NAME and that FILE exists."""
    import timm

    name, _, file = str(spec)[len(TIMM_PREFIX):].partition("@")
    parsed = TimmSpec(name, Path(file).expanduser() if file else None)
    if not name or parsed.arch not in timm.list_models():
        raise RkdError(f"{flag} {spec}: {name!r} is not a timm model name (see timm.list_models()); "
                       f"write {flag} timm:NAME or timm:NAME@FILE")
    if parsed.file is not None and not parsed.file.is_file():
        raise RkdError(f"{flag} {spec}: weights file {parsed.file} does not exist")
    return parsed


def read_state_dict(path: Path, flag: str = "--teachers") -> dict:
    """Tensors of a safetensors file or a torch state_dict (weights only; a {'state_dict'|'model': ...} wrapper and
    DistributedDataParallel's 'module.' prefixes are unwrapped)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors and torch raise several types for foreign or truncated files
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise RkdError(f"{flag}: {path} is not a readable weights file ({reason}); pass a safetensors file or a "
                       "torch.save'd state_dict") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RkdError(f"{flag}: {path} holds no state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def head_name(model: nn.Module) -> str:
    """The module name of a timm model's classifier (e.g. 'fc', 'head.fc')."""
    head = model.get_classifier()
    return next(name for name, module in model.named_modules() if module is head)


def _first_conv_weight(model: nn.Module) -> str:
    return next(f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Conv2d))


def hub_reachable() -> bool:
    """False when HF_HUB_OFFLINE is set or the hub does not accept a connection within HUB_PROBE_TIMEOUT_S."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in FALSE_WORDS:
        return False
    try:
        socket.create_connection(HUB_ADDRESS, timeout=HUB_PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def bounded_hub(online: bool):
    """Downloads under a socket timeout; offline, huggingface_hub answers from its local cache only."""
    import huggingface_hub.constants as hub_constants

    previous_timeout, previous_offline = socket.getdefaulttimeout(), hub_constants.HF_HUB_OFFLINE
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    hub_constants.HF_HUB_OFFLINE = previous_offline or not online
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous_timeout)
        hub_constants.HF_HUB_OFFLINE = previous_offline


def _hub_model(spec: TimmSpec, flag: str, **kwargs) -> nn.Module:
    """timm.create_model(NAME, pretrained=True), bounded; a one-line RkdError when the weights cannot be had."""
    import timm

    online = hub_reachable()
    try:
        with bounded_hub(online):
            return timm.create_model(spec.name, pretrained=True, **kwargs)
    except Exception as err:  # huggingface_hub, torch.hub and urllib raise many types when offline
        reason = "offline" if not online else (str(err).splitlines()[0][:100] if str(err) else type(err).__name__)
        raise RkdError(f"{flag} {spec}: cannot fetch timm's pretrained weights ({reason}); save "
                       f"timm.create_model('{spec.name}', pretrained=True).state_dict() where the hub is reachable "
                       f"and pass {flag} timm:{spec.arch}@FILE") from None


def _file_model(spec: TimmSpec, flag: str, in_chans: int, num_classes: Optional[int]) -> nn.Module:
    """The timm architecture with the file's weights; num_classes given: a fresh head of that size instead."""
    import timm

    state = read_state_dict(spec.file, flag)
    model = timm.create_model(spec.arch, pretrained=False, in_chans=in_chans)
    head = head_name(model)
    if f"{head}.weight" not in state:
        raise RkdError(f"{flag} {spec}: {spec.file} has no '{head}.weight' (the classifier of timm {spec.arch}); "
                       "is it that architecture's state_dict?")
    conv = _first_conv_weight(model)
    if conv in state and state[conv].shape[1] != in_chans:
        from timm.models import adapt_input_conv
        state[conv] = adapt_input_conv(in_chans, state[conv])  # timm's own rule for grey or multi-channel input
    if num_classes is None:
        model.reset_classifier(state[f"{head}.weight"].shape[0])
    else:
        state = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}
        model.reset_classifier(num_classes)
    try:
        model.load_state_dict(state, strict=num_classes is None)
    except RuntimeError as err:
        raise RkdError(f"{flag} {spec}: {spec.file} does not fit timm {spec.arch} "
                       f"({' '.join(str(err).split())[:160]})") from None
    return model


def timm_teacher(spec: TimmSpec, *, num_classes: int, in_chans: int, image_size: int,
                 flag: str = "--teachers") -> nn.Module:
    """A pretrained timm model used as it is (its own head); its class count must be the data's."""
    model = (_file_model(spec, flag, in_chans, None) if spec.file
             else _hub_model(spec, flag, in_chans=in_chans))
    if model.num_classes != num_classes:
        raise RkdError(f"{flag} {spec}: the teacher predicts {model.num_classes} classes but the data has "
                       f"{num_classes}; fine-tune it first (rkd train-teacher --init {spec})")
    model.rkd_image_size = image_size
    return model.eval()


def timm_init(spec: TimmSpec, *, num_classes: int, in_chans: int, image_size: int, flag: str = "--init") -> nn.Module:
    """A pretrained timm model with a fresh (seeded) head of `num_classes` outputs, for fine-tuning."""
    model = (_file_model(spec, flag, in_chans, num_classes) if spec.file
             else _hub_model(spec, flag, in_chans=in_chans, num_classes=num_classes))
    model.rkd_image_size = image_size
    return model
