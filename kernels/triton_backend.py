"""Attention-IoU counts on CUDA with one Triton program per image (or on the CPU under TRITON_INTERPRET=1).

On a GPU the arithmetic is cheap and the upsampled maps are the expensive part only if they go through memory,
so each program evaluates its image's pixels in registers, block by block, for all T maps at once: a first pass
finds each map's min and max, a second normalizes, binarizes at all K thresholds and counts. Nothing but the
input maps is read and nothing but the counts is written.

The pixel values follow `kernels.grid`'s float32 formula operation for operation: the kernel is launched with
`enable_fp_fusion=False` (no fused multiply-add) and divides with `div_rn` (IEEE division), so its masks are
bit-identical to the reference's. The soft IoU sums are accumulated per block in float32 and across blocks in
float64 (about 1e-6 relative from the reference's float64 sums).
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from .counts import IoUCounts
from .grid import axis_table

BLOCK_PIXELS = 128


@triton.jit
def _values(maps_ptr, map_offset, map_ok, start, n_pix, out_w, in_w,
            yi0_ptr, yi1_ptr, yw0_ptr, yw1_ptr, xi0_ptr, xi1_ptr, xw0_ptr, xw1_ptr, BLOCK: tl.constexpr):
    """Float32 upsampled values (T_PAD, BLOCK) of pixels start..start+BLOCK and their validity (BLOCK,)."""
    p = start + tl.arange(0, BLOCK)
    ok = p < n_pix
    y = p // out_w
    x = p % out_w
    r0 = tl.load(yi0_ptr + y, mask=ok, other=0) * in_w
    r1 = tl.load(yi1_ptr + y, mask=ok, other=0) * in_w
    c0 = tl.load(xi0_ptr + x, mask=ok, other=0)
    c1 = tl.load(xi1_ptr + x, mask=ok, other=0)
    wy0 = tl.load(yw0_ptr + y, mask=ok, other=0.0)[None, :]
    wy1 = tl.load(yw1_ptr + y, mask=ok, other=0.0)[None, :]
    wx0 = tl.load(xw0_ptr + x, mask=ok, other=0.0)[None, :]
    wx1 = tl.load(xw1_ptr + x, mask=ok, other=0.0)[None, :]
    both = map_ok[:, None] & ok[None, :]
    base = maps_ptr + map_offset[:, None]
    top = (tl.load(base + (r0 + c0)[None, :], mask=both, other=0.0) * wx0
           + tl.load(base + (r0 + c1)[None, :], mask=both, other=0.0) * wx1)
    bot = (tl.load(base + (r1 + c0)[None, :], mask=both, other=0.0) * wx0
           + tl.load(base + (r1 + c1)[None, :], mask=both, other=0.0) * wx1)
    return top * wy0 + bot * wy1, ok


@triton.jit
def _image_kernel(maps_ptr, thr_ptr, yi0_ptr, yi1_ptr, yw0_ptr, yw1_ptr, xi0_ptr, xi1_ptr, xw0_ptr, xw1_ptr,
                  inter_ptr, all_ptr, any_ptr, smin_ptr, smax_ptr,
                  batch, in_h, in_w, out_h, out_w, n_thr,
                  N_MAPS: tl.constexpr, T_PAD: tl.constexpr, K_PAD: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    maps_i = tl.arange(0, T_PAD)
    map_ok = maps_i < N_MAPS
    map_offset = (maps_i * batch + b) * (in_h * in_w)
    n_pix = out_h * out_w
    thr_i = tl.arange(0, K_PAD)

    low = tl.full([T_PAD], float("inf"), tl.float32)
    high = tl.full([T_PAD], float("-inf"), tl.float32)
    for start in range(0, n_pix, BLOCK):
        v, ok = _values(maps_ptr, map_offset, map_ok, start, n_pix, out_w, in_w,
                        yi0_ptr, yi1_ptr, yw0_ptr, yw1_ptr, xi0_ptr, xi1_ptr, xw0_ptr, xw1_ptr, BLOCK)
        low = tl.minimum(low, tl.min(tl.where(ok[None, :], v, float("inf")), axis=1))
        high = tl.maximum(high, tl.max(tl.where(ok[None, :], v, float("-inf")), axis=1))
    span = high - low
    has_span = span > 0
    safe_span = tl.where(has_span, span, 1.0)

    inter = tl.zeros([K_PAD, T_PAD, T_PAD], tl.int32)
    every = tl.zeros([K_PAD], tl.int32)
    some = tl.zeros([K_PAD], tl.int32)
    smin = tl.zeros([T_PAD, T_PAD], tl.float64)
    smax = tl.zeros([T_PAD, T_PAD], tl.float64)
    for start in range(0, n_pix, BLOCK):
        v, ok = _values(maps_ptr, map_offset, map_ok, start, n_pix, out_w, in_w,
                        yi0_ptr, yi1_ptr, yw0_ptr, yw1_ptr, xi0_ptr, xi1_ptr, xw0_ptr, xw1_ptr, BLOCK)
        norm = tl.where(has_span[:, None], tl.div_rn(v - low[:, None], safe_span[:, None]), 0.0)
        valid = map_ok[:, None] & ok[None, :]                                  # (T_PAD, BLOCK)
        norm = tl.where(valid, norm, 0.0)
        smin += tl.sum(tl.minimum(norm[:, None, :], norm[None, :, :]), axis=2).to(tl.float64)
        smax += tl.sum(tl.maximum(norm[:, None, :], norm[None, :, :]), axis=2).to(tl.float64)
        for k in tl.static_range(K_PAD):
            threshold = tl.load(thr_ptr + k, mask=k < n_thr, other=2.0)    # padding switches nothing on
            on = ((norm >= threshold) & valid).to(tl.int32)                   # (T_PAD, BLOCK)
            pairs = tl.sum(on[:, None, :] * on[None, :, :], axis=2)          # (T_PAD, T_PAD)
            every_k = tl.sum(tl.min(tl.where(map_ok[:, None], on, 1), axis=0) * ok.to(tl.int32), axis=0)
            some_k = tl.sum(tl.max(on, axis=0), axis=0)
            inter += tl.where(thr_i[:, None, None] == k, pairs[None, :, :], 0)
            every += tl.where(thr_i == k, every_k, 0)
            some += tl.where(thr_i == k, some_k, 0)

    thr_ok = thr_i < n_thr
    pair = maps_i[:, None] * N_MAPS + maps_i[None, :]
    pair_ok = map_ok[:, None] & map_ok[None, :]
    inter_offset = (thr_i[:, None, None] * batch + b) * (N_MAPS * N_MAPS) + pair[None, :, :]
    tl.store(inter_ptr + inter_offset, inter, mask=thr_ok[:, None, None] & pair_ok[None, :, :])
    tl.store(all_ptr + thr_i * batch + b, every, mask=thr_ok)
    tl.store(any_ptr + thr_i * batch + b, some, mask=thr_ok)
    tl.store(smin_ptr + b * N_MAPS * N_MAPS + pair, smin, mask=pair_ok)
    tl.store(smax_ptr + b * N_MAPS * N_MAPS + pair, smax, mask=pair_ok)


def triton_counts(maps: torch.Tensor, out_size: Tuple[int, int], thresholds: torch.Tensor) -> IoUCounts:
    """Counts of `kernels.attention_iou` from float32 maps (T, B, h, w) on CUDA (or CPU under the interpreter)."""
    maps = maps.contiguous()
    n_maps, batch, h, w = maps.shape
    device = maps.device
    k = len(thresholds)

    def table(n_in: int, n_out: int):
        t = axis_table(n_in, n_out)
        return [torch.from_numpy(x).to(device) for x in (t.i0.astype("int32"), t.i1.astype("int32"), t.w0, t.w1)]

    y_tab, x_tab = table(h, out_size[0]), table(w, out_size[1])
    inter = torch.zeros(k, batch, n_maps, n_maps, dtype=torch.int32, device=device)
    all_inter = torch.zeros(k, batch, dtype=torch.int32, device=device)
    any_union = torch.zeros(k, batch, dtype=torch.int32, device=device)
    soft_min = torch.zeros(batch, n_maps, n_maps, dtype=torch.float64, device=device)
    soft_max = torch.zeros_like(soft_min)
    _image_kernel[(batch,)](
        maps, thresholds.to(device=device, dtype=torch.float32).contiguous(), *y_tab, *x_tab,
        inter, all_inter, any_union, soft_min, soft_max,
        batch, h, w, out_size[0], out_size[1], k,
        N_MAPS=n_maps, T_PAD=triton.next_power_of_2(n_maps), K_PAD=triton.next_power_of_2(k),
        BLOCK=BLOCK_PIXELS, enable_fp_fusion=False)
    return IoUCounts(inter.long(), all_inter.long(), any_union.long(), soft_min, soft_max)
