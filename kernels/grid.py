"""Sampling tables of bilinear upsampling (align_corners=False), shared by every attention-IoU backend.

For each output index `o` along one axis, `F.interpolate` reads input indices `i0[o]`, `i1[o]` with float32
weights `w0[o]`, `w1[o]`:

    src = max(scale * (o + 0.5) - 0.5, 0)        scale = float32(n_in) / n_out, all in float32
    i0 = min(floor(src), n_in - 1),  i1 = i0 + (i0 < n_in - 1),  w1 = clamp(src - i0, 0, 1),  w0 = 1 - w1

and an output pixel is

    top = A[i0y, i0x] * w0x + A[i0y, i1x] * w1x          (float32, each product and sum rounded)
    bot = A[i1y, i0x] * w0x + A[i1y, i1x] * w1x
    v   = top * w0y + bot * w1y

This exact sequence of float32 operations (no fused multiply-add) is *our* definition of the upsampled map: every
backend evaluates it bit for bit, so all of them binarize identical float32 values. `F.interpolate` itself computes
the same formula but its compiled kernels may fuse multiply-adds, so it can differ from it by an ulp or two.

Along one axis the outputs fall into *segments*: runs of consecutive outputs reading the same input pair
(`i0`, `i1`) with the same clamping. Inside a segment `w1` is (up to float32 rounding) an affine function of the
output index, so one output row of a map is linear in x on each segment; `Segments.deviation` bounds, exactly,
how far the float32 weights stray from that line.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AxisTable:
    """Input indices and float32 weights of each output index along one axis (see the module docstring)."""

    i0: np.ndarray        # int64 (n_out,)
    i1: np.ndarray        # int64 (n_out,)
    w0: np.ndarray        # float32 (n_out,)
    w1: np.ndarray        # float32 (n_out,)
    clamped: np.ndarray   # bool (n_out,): src < 0 was clamped to 0 (w1 == 0 there)


@dataclass(frozen=True)
class Segments:
    """Runs of output indices along an axis on which the weights are affine in the index."""

    start: np.ndarray     # int64 (S,) first output index
    length: np.ndarray    # int64 (S,)
    i0: np.ndarray        # int64 (S,)
    i1: np.ndarray        # int64 (S,)
    alpha: np.ndarray     # float64 (S,) ideal w1 at the first index
    beta: np.ndarray      # float64 (S,) ideal increase of w1 per index
    deviation: float      # max over outputs of |w1 - line| and |w0 - (1 - line)|, in float64


def axis_table(n_in: int, n_out: int) -> AxisTable:
    """The float32 indices and weights `F.interpolate(mode="bilinear", align_corners=False)` uses on one axis."""
    out = np.arange(n_out)
    if n_in == n_out:
        return AxisTable(out.astype(np.int64), out.astype(np.int64), np.ones(n_out, np.float32),
                         np.zeros(n_out, np.float32), np.zeros(n_out, bool))
    f32 = np.float32
    scale = f32(n_in) / f32(n_out)
    src = scale * (out.astype(f32) + f32(0.5)) - f32(0.5)
    clamped = src < 0
    src = np.where(clamped, f32(0), src).astype(f32)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    w1 = np.clip(src - i0.astype(f32), f32(0), f32(1)).astype(f32)
    w0 = (f32(1) - w1).astype(f32)
    i1 = i0 + (i0 < n_in - 1)
    return AxisTable(i0, i1, w0, w1, clamped)


def segments(table: AxisTable) -> Segments:
    """Split an axis into segments and measure how far its float32 weights are from each segment's line."""
    n = len(table.i0)
    key_change = np.ones(n, bool)
    key_change[1:] = ((table.i0[1:] != table.i0[:-1]) | (table.i1[1:] != table.i1[:-1])
                      | (table.clamped[1:] != table.clamped[:-1]))
    start = np.flatnonzero(key_change)
    length = np.diff(np.append(start, n))
    last = start + length - 1
    w0 = table.w0.astype(np.float64)
    w1 = table.w1.astype(np.float64)
    alpha = w1[start]
    beta = np.where(length > 1, (w1[last] - alpha) / np.maximum(length - 1, 1), 0.0)
    seg_of = np.repeat(np.arange(len(start)), length)
    line = alpha[seg_of] + beta[seg_of] * (np.arange(n) - start[seg_of])
    deviation = float(max(np.abs(w1 - line).max(), np.abs(w0 - (1.0 - line)).max()))
    return Segments(start.astype(np.int64), length.astype(np.int64), table.i0[start], table.i1[start],
                    alpha, beta, deviation)
