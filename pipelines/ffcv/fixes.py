"""Fixes to FFCV 1.0.2, applied by the ffcv loader (`apply_ffcv_fixes`) or used as subclasses, never at import.

- OSCacheManager declared its state type by setting ``mutable = False`` in place on numba's interned
  ``uint8[::1]`` type, which breaks later numba compilations (see `_os_cache_state_type`).
- An exception in FFCV's loader thread left the consumer waiting forever (`ReportingEpochIterator`).
- QuasiRandom shuffled its page table in place, so an epoch's order depended on the epochs before it
  (`ReproducibleQuasiRandom`).
"""
from __future__ import annotations

from queue import Full
from typing import Callable

import numba as nb
import numpy as np
from ffcv.loader.epoch_iterator import IS_CUDA, EpochIterator
from ffcv.memory_managers import OSCacheManager
from ffcv.pipeline.compiler import Compiler
from ffcv.traversal_order import QuasiRandom


def apply_ffcv_fixes() -> None:
    """Replace OSCacheManager's state type and reader with versions that leave numba's types alone (idempotent)."""
    OSCacheManager.state_type = property(_os_cache_state_type)
    OSCacheManager.compile_reader = _os_cache_compile_reader


_READONLY_BYTES = nb.types.Array(nb.uint8, 1, "C", readonly=True)


def _os_cache_state_type(self) -> nb.types.Tuple:
    """OSCacheManager's state type, declared without FFCV 1.0.2's in-place `mutable = False` on numba's
    interned ``uint8[::1]`` type: that edit changes the hash of a type numba has already stored in dictionaries,
    and later compilations of any function taking 1-d uint8 arrays fail with a KeyError."""
    pointers = nb.types.Array(nb.uint64, 1, "C")
    return nb.types.Tuple([_READONLY_BYTES, pointers, pointers])


def _os_cache_compile_reader(self) -> Callable:
    """OSCacheManager's reader (a slice of the memory-mapped file), typed with `_os_cache_state_type`."""
    def read(address, mem_state):
        size = mem_state[2][np.searchsorted(mem_state[1], address)]
        return mem_state[0][address:address + size]

    return Compiler.compile(read, _READONLY_BYTES(nb.uint64, self.state_type))


class ReportingEpochIterator(EpochIterator):
    """FFCV's epoch iterator, whose loader thread hands an exception to the consumer instead of dying silently."""

    def run(self) -> None:
        """FFCV's producer loop; an exception in it reaches the consumer (FFCV's own would leave it waiting)."""
        try:
            super().run()
        except BaseException as err:  # noqa: BLE001 - handed over to __next__, which re-raises it
            while not self.terminate_event.is_set():
                try:
                    self.output_queue.put(err, timeout=0.5)
                    return
                except Full:
                    pass

    def __next__(self):
        item = self.output_queue.get()
        if item is None or isinstance(item, BaseException):
            self.close()
            if item is None:
                raise StopIteration
            raise item
        slot, result = item
        if IS_CUDA:
            self.current_stream.wait_stream(self.cuda_streams[slot])
        return result


class ReproducibleQuasiRandom(QuasiRandom):
    """FFCV's QuasiRandom order as a function of (seed, epoch) only: FFCV's shuffles its page table in place,
    so each epoch's order also depended on the epochs sampled before it."""

    def sample_order(self, epoch: int) -> np.ndarray:
        pristine = self.page_to_samples_array
        self.page_to_samples_array = pristine.copy()
        try:
            return super().sample_order(epoch)
        finally:
            self.page_to_samples_array = pristine
