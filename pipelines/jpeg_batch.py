"""Batched JPEG decoding with the crop on the decode device: workers read bytes and draw crop boxes, one call
decodes the batch (nvJPEG on CUDA, libjpeg on the CPU) and one batched resized crop + flip makes it uniform.

The boxes and flips are drawn in the workers by torchvision's own ``RandomResizedCrop.get_params`` and
``RandomHorizontalFlip`` rule from the image's header size, in the same order and from the same seeded stream as
the per-image path (`torch_backend`), so both paths crop the same boxes; they differ only by the resize kernel's
rounding (within one grey level).
"""
from __future__ import annotations

import io
from typing import List, Sequence, Tuple

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import RandomResizedCrop

from .augment.train_transforms import horizontal_flip, resized_crops
from .errors import ConfigError
from .spec import RRC_RATIO, RRC_SCALE

DECODE_DEVICES = ("cpu", "cuda")


def check_decode_device(decode_device: str) -> torch.device:
    """The torch device for `decode_device` ('cpu' or 'cuda[:n]'); refuses CUDA without a CUDA device."""
    try:
        device = torch.device(decode_device)
    except RuntimeError:
        device = None
    if device is None or device.type not in DECODE_DEVICES:
        raise ConfigError(f"decode_device must be one of {', '.join(DECODE_DEVICES)}, got {decode_device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("decode_device 'cuda' needs a CUDA device and this machine has none: use 'cpu'")
    return device


def read_with_crop(path: str) -> Tuple[bytes, List[int], bool]:
    """A JPEG's bytes, its RandomResizedCrop box (top, left, height, width) and its flip, drawn from torch's
    global generator exactly as the per-image path draws them (box first, then flip)."""
    try:
        with open(path, "rb") as file:
            data = file.read()
        with Image.open(io.BytesIO(data)) as header:
            if header.format != "JPEG":
                raise ConfigError(f"source: {path} is {header.format}, not JPEG; batched decoding (decode_device) "
                                  "reads JPEG files only: convert it or decode per image")
            box = list(RandomResizedCrop.get_params(header, scale=list(RRC_SCALE), ratio=list(RRC_RATIO)))
    except (UnidentifiedImageError, OSError) as err:
        raise ConfigError(f"source: cannot read {path} ({err}); remove or replace the file") from None
    flip = bool(torch.rand(1) < 0.5)
    return data, box, flip


def pack(data: Sequence[bytes]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Files' bytes as one uint8 tensor and their lengths: one storage to send from a worker (thousands of small
    tensors exhaust the file descriptors that worker queues share them by)."""
    flat = torch.frombuffer(bytearray(b"".join(data)), dtype=torch.uint8)
    return flat, torch.tensor([len(d) for d in data], dtype=torch.int64)


def decode_batch(flat: torch.Tensor, lengths: torch.Tensor, paths: Sequence[str], device: torch.device) -> list:
    """Decode a packed batch of JPEG files to RGB (C, H, W) uint8 on `device` in one call; a bad file is named."""
    data = list(torch.split(flat, lengths.tolist()))
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        for one, path in zip(data, paths):
            try:
                decode_jpeg(one, mode=ImageReadMode.RGB, device=device)
            except RuntimeError as err:
                raise ConfigError(f"source: cannot decode {path} ({err}); remove or replace the file") from None
        raise


def decode_crop_flip(flat: torch.Tensor, lengths: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor,
                     paths: Sequence[str], size: int, device: torch.device) -> torch.Tensor:
    """uint8 (B, 3, size, size) on `device`: decoded, cropped to `boxes`, resized (antialiased), flipped."""
    images = decode_batch(flat, lengths, paths, device)
    return horizontal_flip(resized_crops(images, boxes, (size, size), antialias=True), flips)
