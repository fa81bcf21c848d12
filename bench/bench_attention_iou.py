"""Attention IoU: our backends against the paper's per-image loop, measured in one run.

    python -m bench attention_iou            # T=3 maps, B=256 images, 7x7 -> 224x224, thresholds 0.2/0.4/0.6
    python -m bench attention_iou -- --quick

CPU: the paper's loop vs the PyTorch reference vs the Numba kernel (target: Numba >= 50x the paper's loop), with
all cores, and once more on one thread each (per-core cost; also steadier on a machine shared with other jobs,
where many-threaded small torch ops suffer most).
CUDA (when available): the Triton kernel vs the PyTorch reference on the GPU, and against the time the bytes it
must move would take at the device's measured copy bandwidth.
"""
from __future__ import annotations

import argparse
import time

import numba
import torch

import kernels
from bench.harness import Suite
from kernels.numba_backend import numba_counts
from kernels.reference import torch_counts


def _check_same(ours, reference, label: str) -> None:
    for name in ("intersection", "all_intersection", "any_union"):
        if not torch.equal(getattr(ours, name).cpu(), getattr(reference, name).cpu()):
            raise AssertionError(f"{label}: {name} differs from the reference")


def _copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large device-to-device copy (read + write), the memory roofline we compare with."""
    src = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(20):
        dst.copy_(src)
    torch.cuda.synchronize(device)
    return 2 * src.numel() * 20 / (time.perf_counter() - start)


def _bench_cuda(suite: Suite, maps: torch.Tensor, size, thresholds: torch.Tensor) -> None:
    from kernels.triton_backend import triton_counts
    device = torch.device("cuda")
    suite.device = device   # the harness then synchronizes the GPU around every timed call
    maps = maps.to(device)
    start = time.perf_counter()
    ours = triton_counts(maps, size, thresholds)
    torch.cuda.synchronize(device)
    suite.record("triton/first_call_compile", seconds=time.perf_counter() - start)
    _check_same(ours, torch_counts(maps, size, thresholds), "triton")
    batch = maps.shape[1]
    triton_result = suite.measure("cuda/triton", lambda: triton_counts(maps, size, thresholds), batch, repeats=20)
    suite.measure("cuda/torch_reference", lambda: torch_counts(maps, size, thresholds), batch, repeats=5)
    suite.compare("cuda/triton", "cuda/torch_reference")
    n_maps, _, h, w = maps.shape
    k = len(thresholds)
    moved = (maps.numel() * 4 + (2 * size[0] + 2 * size[1]) * 8 + k * 4                      # read
             + (k * batch * n_maps * n_maps + 2 * k * batch) * 4 + 2 * batch * n_maps * n_maps * 8)   # write
    bandwidth = _copy_bandwidth(device)
    bound = moved / bandwidth
    suite.record("cuda/bytes_bound", bytes=moved, copy_bandwidth_gb_s=bandwidth / 1e9, bound_s=bound,
                 triton_s=triton_result["median_s"], triton_over_bound=triton_result["median_s"] / bound,
                 materialized_maps_bytes=n_maps * batch * size[0] * size[1] * 4)


def main(argv: list) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench attention_iou")
    parser.add_argument("--quick", action="store_true", help="16 images instead of 256 (a smoke run)")
    args = parser.parse_args(argv)
    n_maps, batch, in_size, out_size = 3, (16 if args.quick else 256), 7, 224
    thresholds = torch.tensor([0.2, 0.4, 0.6])
    size = (out_size, out_size)
    maps = torch.randn(n_maps, batch, in_size, in_size, generator=torch.Generator().manual_seed(0))
    suite = Suite("attention_iou" + ("-quick" if args.quick else ""), config={
        "maps": n_maps, "images": batch, "in_size": in_size, "out_size": out_size,
        "thresholds": thresholds.tolist(), "map_values": "iid standard normal (rough: worst case for the kernel)",
        "note": "CPU shared with other jobs while measured; compare ratios, not absolute times"})

    start = time.perf_counter()
    ours = numba_counts(maps, size, thresholds)
    suite.record("numba/first_call_incl_jit_or_cache_load", seconds=time.perf_counter() - start)
    _check_same(ours, torch_counts(maps, size, thresholds), "numba")

    suite.measure("cpu/paper_loop", lambda: kernels.paper_attention_iou(maps, size, thresholds.tolist()), batch,
                  warmup=1, repeats=3)
    suite.measure("cpu/torch_reference", lambda: torch_counts(maps, size, thresholds), batch, warmup=1, repeats=3)
    suite.measure("cpu/numba", lambda: numba_counts(maps, size, thresholds), batch, warmup=1, repeats=7)
    suite.compare("cpu/numba", "cpu/paper_loop")
    suite.compare("cpu/torch_reference", "cpu/paper_loop")
    suite.compare("cpu/numba", "cpu/torch_reference")
    threads = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    try:
        suite.measure("cpu-1thread/paper_loop", lambda: kernels.paper_attention_iou(maps, size, thresholds.tolist()),
                      batch, warmup=1, repeats=3)
        suite.measure("cpu-1thread/numba", lambda: numba_counts(maps, size, thresholds), batch, warmup=1, repeats=7)
        suite.compare("cpu-1thread/numba", "cpu-1thread/paper_loop")
    finally:
        torch.set_num_threads(threads[0])
        numba.set_num_threads(threads[1])
    if torch.cuda.is_available():
        _bench_cuda(suite, maps, size, thresholds)
    else:
        suite.record("cuda", skipped="no CUDA device on this machine")
    suite.save()
