"""Honest wall-clock timing on any device: a host clock read only after the device's queued work has finished."""
from __future__ import annotations

import time
from typing import Optional, Union

import torch

DeviceLike = Optional[Union[str, torch.device]]


def synchronize(device: DeviceLike) -> None:
    """Wait for the kernels queued on `device` (CUDA); nothing to wait for on the CPU or with no device."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class DeviceClock:
    """`now()` is `time.perf_counter()` read after synchronizing `device`, so intervals include the asynchronous
    kernels launched before them (on the CPU it is a plain perf_counter)."""

    def __init__(self, device: DeviceLike = None) -> None:
        self.device = None if device is None else torch.device(device)

    def now(self) -> float:
        """Seconds on the host clock once everything queued on the device has run."""
        synchronize(self.device)
        return time.perf_counter()
