"""Attention-IoU counts on the CPU without materializing the upsampled maps (Numba, parallel over images).

The idea: on one output row y and one x-segment (see `kernels.grid`), the upsampled value of a map is, up to
float32 rounding, a linear function of x:

    v(y, x) ~ w0y * (a (1 - L(x)) + b L(x)) + w1y * (c (1 - L(x)) + d L(x))      L(x) affine in x

so the pixels of that row segment above a level form a prefix or a suffix, found in closed form. The T maps'
cuts split a row segment into at most T + 1 pieces, each with one on/off pattern; the kernel counts pixels per
pattern (a histogram of 2**T bins), from which every intersection and union follows. A cell (y-segment x
x-segment: all rows mixing the same two input rows) on which every map is certainly on or off at a threshold is
counted in one step. The work is at most rows x segments per image and threshold, never pixels.

Exactness. The float32 value the reference binarizes differs from that line by at most
`eps = max|A| * (4 * deviation + 16 * 2**-24)` (weights off their line by `deviation`, and four roundings of
magnitude max|A|; a factor of two to spare). So:
  * min and max: the line's extremes on a segment are at its ends; only row segments whose ends come within
    2 eps of the line's extreme can hold the float32 extreme, and those are evaluated pixel by pixel in float32,
    exactly as the reference (same operations, same order, no fused multiply-add) -> bit-identical min and max.
  * threshold t: `fl(fl(v - min) / (max - min)) >= t` is monotone in v, so it equals `v >= v_t` for the smallest
    float32 `v_t` that passes, found by stepping through float32 neighbours. Pixels whose line value is more than
    eps away from `v_t` are classified by the line; a row segment holding any pixel within eps of `v_t` is
    evaluated pixel by pixel in float32. Hence the counts equal the reference's exactly, values exactly at a
    threshold included. (Rare in practice: that band is ~1e-6 of the value range wide.)
  * soft IoU: sums of min/max of the normalized lines, in closed form (float64) per cell where the smaller map
    does not change, else per row segment. They follow the lines, not the float32 pixels: each pixel's term is
    off by at most eps / (max - min), typically ~1e-7. An image with a map whose range is tiny against its
    magnitude (eps / (max - min) > SOFT_LINE_LIMIT) gets its soft sums from the float32 pixels instead. So every
    pixel's term is within 2e-5 of the reference's (the soft IoU typically differs by ~1e-8).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
from numba import njit, prange

from .counts import IoUCounts
from .grid import axis_table, segments

ROUNDING = 2.0 ** -24
SOFT_LINE_LIMIT = 2e-5   # largest eps / (max - min) for which the soft IoU is summed on the lines


@njit(cache=True, inline="always")
def _pixel(a, m, b, y, x, ytab, xtab):
    """Float32 upsampled value of map m, image b at (y, x), operation for operation as `kernels.grid` defines."""
    yi0, yi1, yw0, yw1 = ytab
    xi0, xi1, xw0, xw1 = xtab
    r0, r1, c0, c1 = yi0[y], yi1[y], xi0[x], xi1[x]
    top = a[m, b, r0, c0] * xw0[x] + a[m, b, r0, c1] * xw1[x]
    bot = a[m, b, r1, c0] * xw0[x] + a[m, b, r1, c1] * xw1[x]
    return top * yw0[y] + bot * yw1[y]


@njit(cache=True)
def _level_cut(low, span, threshold):
    """Smallest float32 v with fl(fl(v - low) / span) >= threshold (span > 0, 0 <= threshold <= 1)."""
    v = np.float32(low + np.float64(threshold) * span)
    if v < low:
        v = low
    if (v - low) / span >= threshold:
        while v > low:
            below = np.nextafter(v, np.float32(-np.inf))
            if (below - low) / span >= threshold:
                v = below
            else:
                break
    else:
        while (v - low) / span < threshold:
            v = np.nextafter(v, np.float32(np.inf))
    return v


@njit(cache=True, inline="always")
def _line_sum(c0, c1, lo, hi):
    """Sum of c0 + c1 j over integers j in [lo, hi)."""
    if hi <= lo:
        return 0.0
    return (hi - lo) * c0 + c1 * 0.5 * (hi * (hi - 1.0) - lo * (lo - 1.0))


@njit(cache=True, inline="always")
def _min_sum(p0, p1, p_sum, q0, q1, q_sum, n):
    """Sum over j in [0, n) of min(p0 + p1 j, q0 + q1 j), given both lines' sums over [0, n)."""
    d_first = p0 - q0
    d_last = d_first + (p1 - q1) * (n - 1)
    if d_first <= 0.0 and d_last <= 0.0:
        return p_sum
    if d_first >= 0.0 and d_last >= 0.0:
        return q_sum
    cross = d_first / (d_first - d_last) * (n - 1)      # where p - q changes sign, strictly inside (0, n - 1)
    split = int(np.floor(cross)) + 1
    if d_first < 0.0:   # p is the smaller one up to the crossing
        return _line_sum(p0, p1, 0, split) + _line_sum(q0, q1, split, n)
    return _line_sum(q0, q1, 0, split) + _line_sum(p0, p1, split, n)


@njit(cache=True)
def _count_pixels(a, b, y, start, n, cuts_k, ytab, xtab, hist_kb):
    """Exact float32 path for one row segment and one threshold: evaluate every pixel of every map."""
    for j in range(n):
        pattern = 0
        for m in range(a.shape[0]):
            if _pixel(a, m, b, y, start + j, ytab, xtab) >= cuts_k[m]:
                pattern |= 1 << m
        hist_kb[pattern] += 1


@njit(cache=True)
def _soft_cell(rows, ends, b, s, y_first, y_end, cell_i0, cell_i1, w_top, w_bot, n, low, span, norm, sums,
               soft_min, soft_max):
    """Add the sums of min and max of every pair of normalized maps over one cell (x-segment s, output rows
    y_first..y_end - 1) to image b's soft sums.

    In a cell every output row mixes the same two input rows: n = w0y P0(j) + w1y P1(j) with P0, P1 the
    normalized input-row lines and w0y, w1y >= 0. Where P_m - P_q has one sign at both ends of both input rows,
    one map is the smaller on the whole cell and the cell sums come in closed form (w_top, w_bot: the cell's sums
    of w0y, w1y); otherwise the pair is summed row by row.
    """
    n_maps = len(low)
    for m in range(n_maps):
        for r in range(2):
            for e in range(2):
                row = cell_i0 if r == 0 else cell_i1
                norm[m, r, e] = (rows[m, row, s, e] - low[m]) / span[m] if span[m] > 0 else 0.0
        sums[m] = 0.5 * n * (w_top * (norm[m, 0, 0] + norm[m, 0, 1]) + w_bot * (norm[m, 1, 0] + norm[m, 1, 1]))
        soft_min[b, m, m] += sums[m]
        soft_max[b, m, m] += sums[m]
    for m in range(n_maps):
        for q in range(m + 1, n_maps):
            below = above = 0
            for r in range(2):
                for e in range(2):
                    d = norm[m, r, e] - norm[q, r, e]
                    below += d <= 0.0
                    above += d >= 0.0
            if below == 4 or above == 4:
                smaller = sums[m] if below == 4 else sums[q]
            else:
                smaller = 0.0
                per_m = 1.0 / span[m] if span[m] > 0 else 0.0
                per_q = 1.0 / span[q] if span[q] > 0 else 0.0
                per_pixel = 1.0 / max(n - 1, 1)
                for y in range(y_first, y_end):
                    p0, p_last = (ends[m, y, s, 0] - low[m]) * per_m, (ends[m, y, s, 1] - low[m]) * per_m
                    q0, q_last = (ends[q, y, s, 0] - low[q]) * per_q, (ends[q, y, s, 1] - low[q]) * per_q
                    smaller += _min_sum(p0, (p_last - p0) * per_pixel, 0.5 * n * (p0 + p_last),
                                        q0, (q_last - q0) * per_pixel, 0.5 * n * (q0 + q_last), n)
            larger = sums[m] + sums[q] - smaller
            soft_min[b, m, q] += smaller
            soft_min[b, q, m] += smaller
            soft_max[b, m, q] += larger
            soft_max[b, q, m] += larger


@njit(cache=True)
def _soft_pixels(a, b, low, span, ytab, xtab, out_w, soft_min, soft_max):
    """Image b's soft sums from every float32 normalized pixel, as the reference computes them."""
    n_maps = a.shape[0]
    norm = np.empty(n_maps, np.float32)
    for y in range(len(ytab[0])):
        for x in range(out_w):
            for m in range(n_maps):
                v = _pixel(a, m, b, y, x, ytab, xtab)
                norm[m] = (v - low[m]) / span[m] if span[m] > 0 else np.float32(0)
            for m in range(n_maps):
                for q in range(n_maps):
                    soft_min[b, m, q] += min(norm[m], norm[q])
                    soft_max[b, m, q] += max(norm[m], norm[q])


@njit(cache=True)
def _line_ends(a, b, ytab, xseg, yseg_start, yseg_len, scale):
    """Image b's lines at both ends of every x-segment: on each input row (T, h, S, 2), on each output row
    (T, H, S, 2), and bounds of their range over each cell (y-segment x x-segment): (T, Y, S, 2) as (min, max).

    In a cell, v = w0y R0 + w1y R1 with w1y non-decreasing and |w0y + w1y - 1| <= 2**-24: within
    2**-24 |R0| of a monotone function of y, so its range is bounded by the first and last rows' values
    widened by 2 * 2**-24 * scale (scale = max |A|).
    """
    yi0, yi1, yw0, yw1 = ytab
    seg_start, seg_len, seg_i0, seg_i1, seg_alpha, seg_beta = xseg
    n_maps, _, h, _ = a.shape
    out_h, n_seg = len(yi0), len(seg_start)
    rows = np.empty((n_maps, h, n_seg, 2))
    ends = np.empty((n_maps, out_h, n_seg, 2))
    cell = np.empty((n_maps, len(yseg_start), n_seg, 2))
    for m in range(n_maps):
        for r in range(h):      # each input row interpolated along x at both ends of every segment
            for s in range(n_seg):
                left, right = np.float64(a[m, b, r, seg_i0[s]]), np.float64(a[m, b, r, seg_i1[s]])
                for e in range(2):
                    weight = seg_alpha[s] + seg_beta[s] * e * (seg_len[s] - 1)
                    rows[m, r, s, e] = left * (1.0 - weight) + right * weight
        for y in range(out_h):
            w_top, w_bot = np.float64(yw0[y]), np.float64(yw1[y])
            for s in range(n_seg):
                for e in range(2):
                    ends[m, y, s, e] = w_top * rows[m, yi0[y], s, e] + w_bot * rows[m, yi1[y], s, e]
        widen = 2.0 * ROUNDING * scale[m]
        for c in range(len(yseg_start)):
            first, last = yseg_start[c], yseg_start[c] + yseg_len[c] - 1
            for s in range(n_seg):
                cell[m, c, s, 0] = min(ends[m, first, s, 0], ends[m, first, s, 1], ends[m, last, s, 0],
                                       ends[m, last, s, 1]) - widen
                cell[m, c, s, 1] = max(ends[m, first, s, 0], ends[m, first, s, 1], ends[m, last, s, 0],
                                       ends[m, last, s, 1]) + widen
    return rows, ends, cell


@njit(cache=True)
def _exact_extremes(a, b, ends, cell, eps, ytab, xtab, seg_start, seg_len, yseg_start, yseg_len, y_repeat, x_repeat):
    """Bit-exact float32 min and max of each upsampled map of image b, evaluating only the row segments whose
    line comes within 2 eps of the line's extreme (the float32 extreme must lie in one of them). Rows and columns
    that repeat the previous one's indices and weights (clamped borders) repeat its values and are skipped."""
    n_maps, n_yseg, n_seg, _ = cell.shape
    low = np.empty(n_maps, np.float32)
    high = np.empty(n_maps, np.float32)
    for m in range(n_maps):
        line_min, line_max = cell[m, :, :, 0].min(), cell[m, :, :, 1].max()
        near_min, near_max = line_min + 2.0 * eps[m], line_max - 2.0 * eps[m]
        lo_v, hi_v = np.float32(np.inf), np.float32(-np.inf)
        for c in range(n_yseg):
            for s in range(n_seg):
                if cell[m, c, s, 0] > near_min and cell[m, c, s, 1] < near_max:
                    continue
                for y in range(yseg_start[c], yseg_start[c] + yseg_len[c]):
                    e0, e1 = ends[m, y, s, 0], ends[m, y, s, 1]
                    if y_repeat[y] or (e0 > near_min and e1 > near_min and e0 < near_max and e1 < near_max):
                        continue
                    for x in range(seg_start[s], seg_start[s] + seg_len[s]):
                        if not x_repeat[x]:
                            v32 = _pixel(a, m, b, y, x, ytab, xtab)
                            lo_v = min(lo_v, v32)
                            hi_v = max(hi_v, v32)
        low[m], high[m] = lo_v, hi_v
    return low, high


@njit(cache=True)
def _cuts(low, span, thresholds):
    """Float32 cut per threshold and map: on <=> v >= cut (a constant map normalizes to 0: on <=> 0 >= t)."""
    cuts = np.empty((len(thresholds), len(low)), np.float32)
    for k in range(len(thresholds)):
        for m in range(len(low)):
            if span[m] > 0:
                cuts[k, m] = _level_cut(low[m], span[m], thresholds[k])
            else:
                cuts[k, m] = -np.inf if thresholds[k] <= 0 else np.inf
    return cuts


@njit(cache=True)
def _image(a, b, thresholds, ytab, xtab, xseg, yseg, repeats, deviation, hist, soft_min, soft_max):
    """All counts of image b: hist (K, B, 2**T) pixels per on/off pattern of the T maps, soft_* (B, T, T)."""
    n_maps = a.shape[0]
    seg_start, seg_len = xseg[0], xseg[1]
    yseg_start, yseg_len, yseg_i0, yseg_i1, yseg_w0, yseg_w1 = yseg
    n_seg, n_thr = len(seg_start), len(thresholds)
    scale = np.zeros(n_maps)
    for m in range(n_maps):
        for r in range(a.shape[2]):
            for x in range(a.shape[3]):
                scale[m] = max(scale[m], abs(a[m, b, r, x]))
    eps = scale * (4.0 * deviation + 16.0 * ROUNDING)
    rows, ends, cell = _line_ends(a, b, ytab, xseg, yseg_start, yseg_len, scale)
    low, high = _exact_extremes(a, b, ends, cell, eps, ytab, xtab, seg_start, seg_len, yseg_start, yseg_len,
                                repeats[0], repeats[1])
    span = high - low
    cuts = _cuts(low, span, thresholds)
    soft_on_lines = True
    for m in range(n_maps):
        if span[m] > 0 and eps[m] > SOFT_LINE_LIMIT * span[m]:
            soft_on_lines = False
    if not soft_on_lines:
        _soft_pixels(a, b, low, span, ytab, xtab, len(xtab[0]), soft_min, soft_max)
    norm, sums = np.empty((n_maps, 2, 2)), np.empty(n_maps)
    cut_at = np.empty(n_maps, np.int64)        # per map crossing the row segment: first pixel on (suffix) or off
    cut_bit = np.empty(n_maps, np.int64)
    cut_rising = np.empty(n_maps, np.bool_)
    active = np.empty(n_maps, np.int64)
    for c in range(len(yseg_start)):
        y_first, y_end = yseg_start[c], yseg_start[c] + yseg_len[c]
        for s in range(n_seg):
            n = seg_len[s]
            if soft_on_lines:
                _soft_cell(rows, ends, b, s, y_first, y_end, yseg_i0[c], yseg_i1[c], yseg_w0[c], yseg_w1[c], n,
                           low, span, norm, sums, soft_min, soft_max)
            for k in range(n_thr):
                # The whole cell at once when every map is certainly on or certainly off on all of it.
                always, n_active = 0, 0
                for m in range(n_maps):
                    if cell[m, c, s, 0] - eps[m] >= cuts[k, m]:
                        always |= 1 << m
                    elif not cell[m, c, s, 1] + eps[m] < cuts[k, m]:
                        active[n_active] = m
                        n_active += 1
                if n_active == 0:
                    hist[k, b, always] += yseg_len[c] * n
                    continue
                # Else row by row for the maps not decided on the whole cell: each is on, off, or on a prefix/suffix
                # cut at one pixel; the pieces between the cuts have one pattern each. (Inline: as a function this
                # hot loop ran twice as slowly.)
                for y in range(y_first, y_end):
                    pattern, n_cut, uncertain = always, 0, False
                    for i_active in range(n_active):
                        m = active[i_active]
                        first, last, cut, margin = ends[m, y, s, 0], ends[m, y, s, 1], cuts[k, m], eps[m]
                        if min(first, last) - margin >= cut:
                            pattern |= 1 << m
                        elif max(first, last) + margin < cut:
                            continue
                        elif first == last:
                            uncertain = True
                        else:
                            per_value = (n - 1) / (last - first)      # pixels per unit of the line's value
                            if per_value > 0.0:     # on from the first pixel whose line clears cut + margin
                                sure_off = min(max(np.ceil((cut - margin - first) * per_value), 0.0), n)
                                at = min(max(np.ceil((cut + margin - first) * per_value), 0.0), n)
                                uncertain = uncertain or at > sure_off
                            else:                   # on up to the last pixel whose line clears cut + margin
                                at = min(max(np.floor((cut + margin - first) * per_value) + 1.0, 0.0), n)
                                sure_off = min(max(np.floor((cut - margin - first) * per_value) + 1.0, 0.0), n)
                                uncertain = uncertain or sure_off > at
                            i = n_cut        # insertion sort by cut position
                            while i > 0 and cut_at[i - 1] > at:
                                cut_at[i], cut_bit[i], cut_rising[i] = cut_at[i - 1], cut_bit[i - 1], cut_rising[i - 1]
                                i -= 1
                            cut_at[i], cut_bit[i], cut_rising[i] = int(at), 1 << m, per_value > 0.0
                            n_cut += 1
                    if uncertain:
                        _count_pixels(a, b, y, seg_start[s], n, cuts[k], ytab, xtab, hist[k, b])
                        continue
                    for i in range(n_cut):       # pattern of the first piece: the falling maps are on
                        if not cut_rising[i]:
                            pattern |= cut_bit[i]
                    start = 0
                    for i in range(n_cut + 1):
                        end = cut_at[i] if i < n_cut else n
                        if end > start:
                            hist[k, b, pattern] += end - start
                            start = end
                        if i < n_cut:
                            pattern ^= cut_bit[i]


@njit(parallel=True, cache=True)
def _all_images(a, thresholds, ytab, xtab, xseg, yseg, repeats, deviation, hist, soft_min, soft_max):
    for b in prange(a.shape[1]):
        _image(a, b, thresholds, ytab, xtab, xseg, yseg, repeats, deviation, hist, soft_min, soft_max)


MAX_MAPS = 16   # the pattern histogram has 2**T bins


def _repeats(table) -> np.ndarray:
    """True where an output index reads the same inputs with the same weights as the one before it."""
    same = np.zeros(len(table.i0), bool)
    same[1:] = ((table.i0[1:] == table.i0[:-1]) & (table.i1[1:] == table.i1[:-1])
                & (table.w0[1:] == table.w0[:-1]) & (table.w1[1:] == table.w1[:-1]))
    return same


def numba_counts(maps: torch.Tensor, out_size: Tuple[int, int], thresholds: torch.Tensor) -> IoUCounts:
    """Counts of `kernels.attention_iou` from float32 CPU maps (T, B, h, w); same counts as the reference."""
    a = np.ascontiguousarray(maps.detach().cpu().numpy(), dtype=np.float32)
    n_maps, batch, h, w = a.shape
    if n_maps > MAX_MAPS:
        raise ValueError(f"attention_iou: the numba backend handles up to {MAX_MAPS} maps per image, got {n_maps}; "
                         "use backend='torch'")
    k = len(thresholds)
    ty, tx = axis_table(h, out_size[0]), axis_table(w, out_size[1])
    xseg, yseg = segments(tx), segments(ty)
    hist = np.zeros((k, batch, 2 ** n_maps), np.int64)
    soft_min = np.zeros((batch, n_maps, n_maps))
    soft_max = np.zeros((batch, n_maps, n_maps))
    _all_images(a, thresholds.cpu().numpy().astype(np.float32), (ty.i0, ty.i1, ty.w0, ty.w1),
                (tx.i0, tx.i1, tx.w0, tx.w1), (xseg.start, xseg.length, xseg.i0, xseg.i1, xseg.alpha, xseg.beta),
                (yseg.start, yseg.length, yseg.i0, yseg.i1, np.add.reduceat(ty.w0.astype(np.float64), yseg.start),
                 np.add.reduceat(ty.w1.astype(np.float64), yseg.start)),
                (_repeats(ty), _repeats(tx)), xseg.deviation, hist, soft_min, soft_max)
    on = (np.arange(2 ** n_maps)[:, None] >> np.arange(n_maps)) & 1                 # (patterns, T)
    inter = np.einsum("kbp,pi,pj->kbij", hist, on, on)
    return IoUCounts(torch.from_numpy(inter), torch.from_numpy(hist[..., -1].copy()),
                     torch.from_numpy(hist[..., 1:].sum(-1)), torch.from_numpy(soft_min), torch.from_numpy(soft_max))
