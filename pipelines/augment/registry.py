"""The kernel registry: each `functional` kernel has a reference implementation (torch, any device) and may have
fast paths per device type (the Numba kernels of `_cpu` for "cpu"), as torchvision v2 registers its kernels.

A functional op runs its kernel through `dispatch(name, images, ...)`, one lookup per call. A fast path may
declare when it `applies` (e.g. nearest-neighbour warps only); otherwise, or inside `use_reference_kernels()`,
the reference runs. Fast-path modules are imported on the first lookup for their device type.
"""
from __future__ import annotations

import contextlib
import importlib
from contextvars import ContextVar
from typing import Callable, Dict, Iterator, NamedTuple, Optional, Tuple

import torch

REFERENCE = "any"
#: the module (of this package) that registers the fast paths of a device type, imported on first use
FAST_PATH_MODULES = {"cpu": "._cpu"}


class _Kernel(NamedTuple):
    implementation: Callable
    applies: Optional[Callable[..., bool]]


_KERNELS: Dict[Tuple[str, str], _Kernel] = {}
_loaded: set = set()
_reference_only: ContextVar[bool] = ContextVar("reference_only", default=False)


def register_kernel(name: str, device_type: str = REFERENCE,
                    applies: Optional[Callable[..., bool]] = None) -> Callable[[Callable], Callable]:
    """Decorator: register the implementation of kernel `name` for `device_type` ("any" for the reference).

    `applies`, given the kernel's arguments, tells whether this fast path handles them (default: always).
    """
    def register(implementation: Callable) -> Callable:
        if (name, device_type) in _KERNELS:
            raise ValueError(f"kernel {name!r} already has an implementation for device type {device_type!r}")
        _KERNELS[(name, device_type)] = _Kernel(implementation, applies)
        return implementation
    return register


def get_kernel(name: str, device_type: str, *args, **kwargs) -> Callable:
    """The implementation of kernel `name` on `device_type` for the arguments `args`/`kwargs`: the fast path
    registered there if fast paths are on and it applies to the arguments (not checked when none are given),
    else the reference."""
    if not _reference_only.get():
        fast = _fast_path(name, device_type)
        if fast is not None and (fast.applies is None or not (args or kwargs) or fast.applies(*args, **kwargs)):
            return fast.implementation
    if (name, REFERENCE) not in _KERNELS:
        raise ValueError(f"no kernel named {name!r}: registered are {', '.join(sorted(kernel_names()))}")
    return _KERNELS[(name, REFERENCE)].implementation


def dispatch(name: str, images: torch.Tensor, *args, **kwargs):
    """Run kernel `name` on `images` (and the other arguments) with its implementation for the images' device."""
    return get_kernel(name, images.device.type, images, *args, **kwargs)(images, *args, **kwargs)


def _fast_path(name: str, device_type: str) -> Optional[_Kernel]:
    if device_type in FAST_PATH_MODULES and device_type not in _loaded:
        importlib.import_module(FAST_PATH_MODULES[device_type], __package__)
        _loaded.add(device_type)
    return _KERNELS.get((name, device_type))


def kernel_names() -> set:
    """The names of every kernel with a reference implementation."""
    return {name for name, device_type in _KERNELS if device_type == REFERENCE}


@contextlib.contextmanager
def use_reference_kernels() -> Iterator[None]:
    """Within the block (in this thread or task), every kernel runs its torch reference, fast paths off."""
    token = _reference_only.set(True)
    try:
        yield
    finally:
        _reference_only.reset(token)
