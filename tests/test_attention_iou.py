"""kernels.attention_iou: the three backends against the PyTorch reference, the paper's loop, bad input."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels.grid import axis_table, segments
from kernels.reference import normalize_min_max, torch_counts, upsample_bilinear

ROOT = Path(__file__).resolve().parents[1]
SOFT_TOLERANCE = 1e-6   # soft IoU: numba sums lines (documented bound 1e-4; ~1e-8 measured on ordinary maps)


def _maps(seed, *shape, kind="random"):
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.randn(*shape, generator=g)
    if kind == "integer":   # upsampled exactly in float32 at dyadic scales: thresholds hit pixels exactly
        return torch.randint(0, 5, shape, generator=g).float()
    if kind == "offset":    # range tiny against magnitude: the numba kernel must fall back to exact pixels
        return 1000.0 + 1e-3 * torch.randn(*shape, generator=g)
    if kind == "plateau":   # flat tops: the maximum is attained on whole regions, t = 1 keeps all of them
        return torch.randn(*shape, generator=g).clamp(max=0.3)
    raise ValueError(kind)


def _assert_same_counts(ours, ref):
    for name in ("intersection", "all_intersection", "any_union"):
        assert torch.equal(getattr(ours, name).cpu(), getattr(ref, name).cpu()), name
    for name in ("soft_min", "soft_max"):
        torch.testing.assert_close(getattr(ours, name).cpu(), getattr(ref, name).cpu(),
                                   rtol=SOFT_TOLERANCE, atol=1e-3)


CASES = [   # (T, B, h, w, out_h, out_w, kind)
    (3, 3, 7, 7, 224, 224, "random"),
    (2, 4, 5, 4, 37, 50, "random"),        # non-square, non-integer scales
    (3, 3, 3, 6, 16, 9, "random"),
    (2, 3, 13, 11, 5, 7, "random"),        # downsampling
    (3, 2, 1, 5, 9, 19, "random"),         # a single input row
    (3, 3, 7, 7, 224, 224, "integer"),
    (2, 3, 7, 5, 100, 37, "integer"),
    (2, 3, 7, 7, 56, 56, "offset"),
    (3, 3, 7, 7, 64, 64, "plateau"),
    (4, 2, 6, 5, 50, 41, "random"),
]
THRESHOLDS = [0.0, 0.2, 0.25, 0.4, 0.5, 0.6, 0.75, 1.0]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_numba_counts_equal_reference(case):
    t, b, h, w, oh, ow, kind = case
    maps = _maps(sum(case[:6]), t, b, h, w, kind=kind)
    thr = torch.tensor(THRESHOLDS)
    _assert_same_counts(kernels.attention_iou(maps, (oh, ow), thr, backend="numba").counts,
                        torch_counts(maps, (oh, ow), thr))


def test_thresholds_hit_exactly_count_as_on():
    maps = _maps(1, 3, 4, 7, 7, kind="integer")
    norm = normalize_min_max(upsample_bilinear(maps, (224, 224)))
    assert (norm == 0.5).sum() > 1000          # the case is real: many pixels sit exactly on the threshold
    result = kernels.attention_iou(maps, 224, [0.5], backend="numba")
    area = result.counts.intersection[0].diagonal(dim1=-2, dim2=-1)     # (B, T)
    assert torch.equal(area, (norm >= 0.5).sum((-2, -1)).T)
    assert not torch.equal(area, (norm > 0.5).sum((-2, -1)).T)


def test_reference_upsampling_is_f_interpolate_up_to_rounding():
    for h, w, oh, ow in [(7, 7, 224, 224), (7, 5, 100, 37), (13, 11, 5, 7), (4, 4, 4, 9)]:
        maps = _maps(h * w, 3, h, w)
        ours = upsample_bilinear(maps, (oh, ow))
        theirs = F.interpolate(maps[:, None], size=(oh, ow), mode="bilinear", align_corners=False)[:, 0]
        # its compiled kernel may fuse multiply-adds, also in the source coordinate (error ~ ulp(src) * |A|)
        assert (ours - theirs).abs().max() <= 4 * max(h, w) * 2.0 ** -24 * maps.abs().max()
    exact = _maps(0, 3, 7, 7, kind="integer")      # dyadic scale, small integers: every operation is exact
    assert torch.equal(upsample_bilinear(exact, (224, 224)),
                       F.interpolate(exact[:, None], size=(224, 224), mode="bilinear", align_corners=False)[:, 0])


@pytest.mark.parametrize("h,w,oh,ow", [(7, 7, 224, 224), (5, 3, 37, 50), (6, 4, 13, 17), (3, 3, 8, 8)])
def test_extremes_lie_at_pixels_next_to_input_samples(h, w, oh, ow):
    """Piecewise bilinear on a product grid: min and max sit at the first or last output row/column of a segment,
    i.e. the output pixels adjacent to the input sample positions (checked in float64, no rounding)."""
    maps = _maps(h + w, 6, h, w).double()
    up = upsample_bilinear(maps, (oh, ow))
    keep = []
    for n_in, n_out in ((h, oh), (w, ow)):
        seg = segments(axis_table(n_in, n_out))
        keep.append(torch.from_numpy(np.unique(np.concatenate([seg.start, seg.start + seg.length - 1]))))
    sub = up[:, keep[0]][:, :, keep[1]]
    torch.testing.assert_close(sub.amax((-2, -1)), up.amax((-2, -1)), rtol=0, atol=1e-12)
    torch.testing.assert_close(sub.amin((-2, -1)), up.amin((-2, -1)), rtol=0, atol=1e-12)


def test_pooled_iou_equals_papers_loop_with_rkds_binarization():
    thresholds = [0.2, 0.4, 0.6]
    exact = _maps(3, 3, 4, 7, 7, kind="integer")
    rkd_rule = dict(strict=False, epsilon=0.0)    # the kernels binarize with >= t and no epsilon
    ours, paper = kernels.attention_iou(exact, 112, thresholds), kernels.paper_attention_iou(exact, (112, 112),
                                                                                           thresholds, **rkd_rule)
    assert torch.equal(ours.pooled, paper.pooled)
    assert torch.equal(ours.all_models_pooled, paper.all_models_pooled)
    rough = _maps(4, 3, 4, 7, 5)       # F.interpolate may round an ulp differently: a pixel or two may flip
    ours, paper = kernels.attention_iou(rough, (100, 70), thresholds), kernels.paper_attention_iou(
        rough, (100, 70), thresholds, **rkd_rule)
    torch.testing.assert_close(ours.pooled, paper.pooled, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.all_models_pooled, paper.all_models_pooled, rtol=0, atol=1e-5)


def test_result_fields_and_conventions():
    maps = _maps(5, 3, 4, 7, 7)
    maps[1, 0] = 2.5                        # a constant map: normalized to zeros, empty mask for t > 0
    maps[2, 0] = -1.0
    r = kernels.attention_iou(maps, 56, [0.0, 0.4], backend="torch")
    assert r.pairwise.shape == (2, 4, 3, 3) and r.pooled.shape == (2, 3, 3) and r.soft.shape == (4, 3, 3)
    assert r.all_models.shape == (2, 4) and r.all_models_pooled.shape == (2,)
    assert torch.equal(r.pairwise, r.pairwise.transpose(-1, -2))
    assert torch.all(r.pairwise.diagonal(dim1=-2, dim2=-1) == 1)
    assert torch.all(r.pairwise[0] == 1)                    # t = 0: every pixel on
    assert r.pairwise[1, 0, 1, 2] == 1                      # two empty masks: IoU 1 by convention
    assert r.pairwise[1, 0, 0, 1] == 0
    assert r.soft[0, 1, 2] == 1 and r.soft[0, 0, 1] == 0
    assert torch.all(r.all_models <= r.pairwise.amin((-2, -1)) + 1e-12)
    as_list = kernels.attention_iou(list(maps), 56, [0.0, 0.4], backend="torch")
    assert torch.equal(as_list.pairwise, r.pairwise)


def test_counts_pool_over_batches():
    maps = _maps(6, 3, 6, 7, 7)
    whole = kernels.attention_iou(maps, 64, [0.4])
    parts = [kernels.attention_iou(maps[:, :2], 64, [0.4]).counts, kernels.attention_iou(maps[:, 2:], 64, [0.4]).counts]
    pooled = kernels.iou_from_counts(kernels.concat_counts(parts), whole.thresholds)
    for ours, ref in zip(pooled, whole):
        if isinstance(ours, torch.Tensor):
            assert torch.equal(ours, ref)


_TRITON_CHILD = """
import sys, torch
import kernels
cases = torch.load(sys.argv[1])
out = [kernels.attention_iou(maps, size, thr, backend="triton").counts._asdict() for maps, size, thr in cases]
torch.save(out, sys.argv[2])
"""
TRITON_CASES = [(3, 2, 7, 7, 20, 30, "random"), (2, 2, 3, 4, 13, 9, "random"), (3, 2, 7, 7, 28, 28, "integer"),
                (2, 2, 5, 5, 31, 17, "offset")]


def test_triton_interpreter_counts_equal_reference(tmp_path):
    """Triton's interpreter runs the kernel on the CPU; tiny sizes (it is slow). A fresh process, since the
    interpreter must be chosen before triton is first imported."""
    pytest.importorskip("triton")
    thresholds = torch.tensor([0.0, 0.25, 0.4, 0.5, 1.0])
    cases = [(_maps(i, t, b, h, w, kind=kind), (oh, ow), thresholds)
             for i, (t, b, h, w, oh, ow, kind) in enumerate(TRITON_CASES)]
    torch.save(cases, tmp_path / "cases.pt")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-c", _TRITON_CHILD, str(tmp_path / "cases.pt"), str(tmp_path / "out.pt")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for (maps, size, thr), got in zip(cases, torch.load(tmp_path / "out.pt")):
        _assert_same_counts(kernels.IoUCounts(**got), torch_counts(maps, size, thr))


def test_triton_kernel_compiles_for_h100_without_fused_multiply_add():
    """Bit-exact masks on a GPU need IEEE float32 arithmetic: no fused multiply-add, round-to-nearest division.
    Compile the kernel for sm_90 (no GPU needed) and read its PTX."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from kernels.triton_backend import _image_kernel
    pointers = {"maps_ptr": "*fp32", "thr_ptr": "*fp32", "yi0_ptr": "*i32", "yi1_ptr": "*i32", "yw0_ptr": "*fp32",
                "yw1_ptr": "*fp32", "xi0_ptr": "*i32", "xi1_ptr": "*i32", "xw0_ptr": "*fp32", "xw1_ptr": "*fp32",
                "inter_ptr": "*i32", "all_ptr": "*i32", "any_ptr": "*i32", "smin_ptr": "*fp64", "smax_ptr": "*fp64"}
    scalars = {name: "i32" for name in ("batch", "in_h", "in_w", "out_h", "out_w", "n_thr")}
    constants = {"N_MAPS": 3, "T_PAD": 4, "K_PAD": 4, "BLOCK": 128}
    source = ASTSource(fn=_image_kernel, signature={**pointers, **scalars, **dict.fromkeys(constants, "constexpr")},
                       constexprs=constants)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": False})
    ptx = compiled.asm["ptx"]
    assert "fma." not in ptx and "div.full" not in ptx and "div.approx" not in ptx
    assert "div.rn.f32" in ptx and "mul.rn.f32" in ptx
    assert len(compiled.asm["cubin"]) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_on_cuda_equals_reference_on_cuda():
    thr = torch.tensor(THRESHOLDS)
    for t, b, h, w, oh, ow, kind in CASES:
        maps = _maps(b + h, t, b, h, w, kind=kind).cuda()
        _assert_same_counts(kernels.attention_iou(maps, (oh, ow), thr).counts, torch_counts(maps, (oh, ow), thr))


@pytest.mark.parametrize("maps,out_size,thresholds,message", [
    ([torch.zeros(2, 7, 7), torch.zeros(2, 5, 5)], 8, [0.4], "different shapes"),
    (torch.zeros(2, 7, 7), 8, [0.4], r"\(T models, B images, h, w\)"),
    (torch.zeros(2, 0, 7, 7), 8, [0.4], "empty dimension"),
    (torch.zeros(2, 2, 7, 7, dtype=torch.long), 8, [0.4], "floating point"),
    (torch.full((2, 2, 7, 7), float("nan")), 8, [0.4], "NaN or infinite"),
    (torch.tensor([[[[1.0, float("inf")]]]]).expand(2, 1, 2, 2), 8, [0.4], "NaN or infinite"),
    (torch.zeros(2, 2, 7, 7), 8, [], "no thresholds"),
    (torch.zeros(2, 2, 7, 7), 8, [0.4, 1.5], "outside"),
    (torch.zeros(2, 2, 7, 7), 8, [-0.1], "outside"),
    (torch.zeros(2, 2, 7, 7), 8, [float("nan")], "outside"),
    (torch.zeros(2, 2, 7, 7), 0, [0.4], "out_size"),
    (torch.zeros(2, 2, 7, 7), (8,), [0.4], "out_size"),
    (torch.zeros(2, 2, 7, 7), (8, 8.5), [0.4], "out_size"),
])
def test_bad_input_is_rejected_clearly(maps, out_size, thresholds, message):
    with pytest.raises(ValueError, match=message):
        kernels.attention_iou(maps, out_size, thresholds)


def test_bad_backend_is_rejected_clearly():
    with pytest.raises(ValueError, match="unknown backend"):
        kernels.attention_iou(torch.zeros(2, 1, 3, 3), 4, [0.4], backend="cuda")
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            kernels.attention_iou(torch.zeros(2, 1, 3, 3), 4, [0.4], backend="triton")
