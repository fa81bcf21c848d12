"""Attention IoU: our backends against the paper's per-image loop, measured in one run.

    python -m bench attention_iou            # T=3 maps, B=256 images, 7x7 -> 224x224, thresholds 0.2/0.4/0.6
    python -m bench attention_iou -- --quick

CPU: the paper's loop vs the PyTorch reference vs the Numba kernel, with all cores, on two kinds of maps reported
apart: i.i.d. normal noise (`cpu/`, the kernel's worst case: every cell has interior crossings) and smooth,
CAM-like maps (`cpu-cam-like/`: a few Gaussian blobs per map, shared across the models with jitter; the goal there
is Numba >= 50x the paper's loop); once more on one thread each on the noise (per-core cost; also steadier on a
machine shared with other jobs, where many-threaded small torch ops suffer most).
CUDA (when available): the Triton kernel vs the PyTorch reference on the GPU, and against the time the bytes it
must move would take at the device's measured copy bandwidth.
"""
from __future__ import annotations

import argparse
import time
from typing import Optional

import numba
import torch

import kernels
from bench.harness import Suite, copy_bandwidth
from kernels.numba_backend import numba_counts
from kernels.reference import torch_counts
from rkd.train.timing import DeviceClock


def _check_same(ours, reference, label: str) -> None:
    for name in ("intersection", "all_intersection", "any_union"):
        if not torch.equal(getattr(ours, name).cpu(), getattr(reference, name).cpu()):
            raise AssertionError(f"{label}: {name} differs from the reference")


def cam_like_maps(n_maps: int, batch: int, size: int, generator: torch.Generator, blobs: int = 3) -> torch.Tensor:
    """Smooth (T, B, size, size) maps like class activation maps: per image a few Gaussian blobs (centre, width
    1-2.5 cells, weight), the same blobs for every model with jittered centres and weights, plus faint noise."""
    def draw(*shape, low=0.0, high=1.0):
        return torch.rand(*shape, generator=generator) * (high - low) + low

    centres = draw(1, batch, blobs, 2, high=size - 1) + draw(n_maps, batch, blobs, 2, low=-0.7, high=0.7)
    widths = draw(1, batch, blobs, low=1.0, high=2.5)
    weights = draw(1, batch, blobs, low=0.3, high=1.0) * draw(n_maps, batch, blobs, low=0.7, high=1.3)
    grid = torch.arange(size, dtype=torch.float32)
    dy = grid.view(1, 1, 1, size, 1) - centres[..., 0, None, None]
    dx = grid.view(1, 1, 1, 1, size) - centres[..., 1, None, None]
    fields = weights[..., None, None] * torch.exp(-(dy ** 2 + dx ** 2) / (2 * widths[..., None, None] ** 2))
    return fields.sum(dim=2) + 0.01 * torch.randn(n_maps, batch, size, size, generator=generator)


def bench_triton(suite: Suite, maps: torch.Tensor, size, thresholds: torch.Tensor, device: torch.device,
                 repeats: int = 20, bandwidth: Optional[float] = None) -> None:
    """The Triton kernel vs the torch reference on `device`, and against its bytes-moved bound at `bandwidth`
    (measured here when not given). On the CPU this is Triton's interpreter (TRITON_INTERPRET=1)."""
    from kernels.triton_backend import triton_counts
    suite.device = device   # the harness then synchronizes the GPU around every timed call
    maps = maps.to(device)
    thresholds = thresholds.to(device)
    prefix = device.type
    clock = DeviceClock(device)
    start = clock.now()
    ours = triton_counts(maps, size, thresholds)
    suite.record("triton/first_call_compile", seconds=clock.now() - start)
    _check_same(ours, torch_counts(maps, size, thresholds), "triton")
    batch = maps.shape[1]
    triton_result = suite.measure(f"{prefix}/triton", lambda: triton_counts(maps, size, thresholds), batch,
                                  repeats=repeats)
    suite.measure(f"{prefix}/torch_reference", lambda: torch_counts(maps, size, thresholds), batch,
                  repeats=max(2, repeats // 4))
    suite.compare(f"{prefix}/triton", f"{prefix}/torch_reference")
    n_maps, _, h, w = maps.shape
    k = len(thresholds)
    moved = (maps.numel() * 4 + (2 * size[0] + 2 * size[1]) * 8 + k * 4                      # read
             + (k * batch * n_maps * n_maps + 2 * k * batch) * 4 + 2 * batch * n_maps * n_maps * 8)   # write
    bandwidth = bandwidth or copy_bandwidth(device)
    bound = moved / bandwidth
    suite.record(f"{prefix}/bytes_bound", bytes=moved, copy_bandwidth_gb_s=bandwidth / 1e9, bound_s=bound,
                 triton_s=triton_result["median_s"], triton_over_bound=triton_result["median_s"] / bound,
                 materialized_maps_bytes=n_maps * batch * size[0] * size[1] * 4)


def bench_cpu(suite: Suite, prefix: str, maps: torch.Tensor, size, thresholds: torch.Tensor) -> None:
    """The paper's loop, the torch reference and the Numba kernel on `maps` (checked equal), with their ratios."""
    batch = maps.shape[1]
    _check_same(numba_counts(maps, size, thresholds), torch_counts(maps, size, thresholds), f"{prefix}/numba")
    suite.measure(f"{prefix}/paper_loop", lambda: kernels.paper_attention_iou(maps, size, thresholds.tolist()), batch,
                  warmup=1, repeats=3)
    suite.measure(f"{prefix}/torch_reference", lambda: torch_counts(maps, size, thresholds), batch, warmup=1,
                  repeats=3)
    suite.measure(f"{prefix}/numba", lambda: numba_counts(maps, size, thresholds), batch, warmup=1, repeats=7)
    suite.compare(f"{prefix}/numba", f"{prefix}/paper_loop")
    suite.compare(f"{prefix}/torch_reference", f"{prefix}/paper_loop")
    suite.compare(f"{prefix}/numba", f"{prefix}/torch_reference")


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
        "thresholds": thresholds.tolist(), "map_values": {"cpu": "iid standard normal (rough: the kernel's worst case)",
                                         "cpu-cam-like": "cam_like_maps: 3 Gaussian blobs per map"},
        "note": "CPU shared with other jobs while measured; compare ratios, not absolute times"})

    start = time.perf_counter()
    numba_counts(maps, size, thresholds)
    suite.record("numba/first_call_incl_jit_or_cache_load", seconds=time.perf_counter() - start)
    cam_like = cam_like_maps(n_maps, batch, in_size, torch.Generator().manual_seed(1))
    for prefix, values in (("cpu", maps), ("cpu-cam-like", cam_like)):
        bench_cpu(suite, prefix, values, size, thresholds)
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
        bench_triton(suite, maps, size, thresholds, torch.device("cuda"))
    else:
        suite.record("cuda", skipped="no CUDA device on this machine")
    suite.save()
