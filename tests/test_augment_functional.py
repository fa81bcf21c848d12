"""Batched per-image kernels of pipelines.augment vs torchvision.transforms.v2.functional, image by image.

Colour and geometric ops must be bit-exact on every path: the torch path (used on CUDA) builds torchvision's grid
and runs grid_sample; the CPU Numba path recomputes that grid per pixel in the same float32 operation order and
rounds it as grid_sample does, so even nearest-neighbour ties at half-integer source coordinates agree.
"""
import contextlib
import math

import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode, TrivialAugmentWide
from torchvision.transforms.v2 import functional as TF

from pipelines.augment import functional as F
from pipelines.augment import _cpu, ops, registry, space, train_transforms as T

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
# (device, fast paths on): the CPU runs both the Numba kernels and the torch reference kernels that CUDA uses
PATHS = [pytest.param(("cpu", True), id="cpu-numba"), pytest.param(("cpu", False), id="cpu-torch"),
         pytest.param(("cuda", True), id="cuda", marks=CUDA)]
SHAPES = [(1, 28, 28), (3, 32, 32), (3, 29, 31)]


@pytest.fixture(params=PATHS)
def device(request):
    name, fast_paths = request.param
    with contextlib.nullcontext() if fast_paths else registry.use_reference_kernels():
        yield torch.device(name)


def random_images(shape, n=8, seed=0, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=generator, dtype=torch.uint8).to(device)


def each(images, reference):
    """torch.stack([reference(i, image) for every image]) on the CPU: the per-image torchvision result."""
    return torch.stack([reference(i, image) for i, image in enumerate(images.cpu())])


@pytest.mark.parametrize("shape", SHAPES)
def test_colour_kernels_equal_torchvision(device, shape):
    images = random_images(shape, seed=1, device=device)
    generator = torch.Generator().manual_seed(2)
    factors = (torch.rand(8, generator=generator, dtype=torch.float64) * 1.98 + 0.01).tolist()
    thresholds = (torch.rand(8, generator=generator, dtype=torch.float64) * 255).tolist()
    bits = list(range(8)) + [8]
    cases = {
        "brightness": (F.adjust_brightness(images, factors), lambda i, x: TF.adjust_brightness(x, factors[i])),
        "saturation": (F.adjust_saturation(images, factors), lambda i, x: TF.adjust_saturation(x, factors[i])),
        "contrast": (F.adjust_contrast(images, factors), lambda i, x: TF.adjust_contrast(x, factors[i])),
        "sharpness": (F.adjust_sharpness(images, factors), lambda i, x: TF.adjust_sharpness(x, factors[i])),
        "posterize": (F.posterize(images, bits[:8]), lambda i, x: TF.posterize(x, bits[i])),
        "solarize": (F.solarize(images, thresholds), lambda i, x: TF.solarize(x, thresholds[i])),
        "autocontrast": (F.autocontrast(images), lambda i, x: TF.autocontrast(x)),
        "equalize": (F.equalize(images), lambda i, x: TF.equalize(x)),
        "invert": (F.invert(images), lambda i, x: TF.invert(x)),
    }
    for name, (ours, reference) in cases.items():
        assert ours.dtype == torch.uint8 and ours.shape == images.shape and ours.device == images.device
        assert torch.equal(ours.cpu(), each(images, reference)), name


def test_colour_edge_cases(device):
    """Flat channels, few levels, extreme factors and thresholds, a 2-pixel-high image (sharpness no-op)."""
    flat = torch.full((2, 3, 16, 16), 77, dtype=torch.uint8)
    few = random_images((3, 16, 16), n=2, seed=3) // 85 * 85
    one_bright = torch.zeros(2, 1, 16, 16, dtype=torch.uint8)
    one_bright[:, :, 0, 0] = 255
    images = torch.cat([flat, few, one_bright.expand(2, 3, 16, 16)]).to(device)
    factors = [0.0, 2.0, 1.0, 0.01, 1.99, 0.5]
    for ours, reference in [
        (F.autocontrast(images), lambda i, x: TF.autocontrast(x)),
        (F.equalize(images), lambda i, x: TF.equalize(x)),
        (F.adjust_contrast(images, factors), lambda i, x: TF.adjust_contrast(x, factors[i])),
        (F.adjust_brightness(images, factors), lambda i, x: TF.adjust_brightness(x, factors[i])),
        (F.solarize(images, [0.0, 255.0, 127.5, 85.0, 0.5, 254.9]),
         lambda i, x: TF.solarize(x, [0.0, 255.0, 127.5, 85.0, 0.5, 254.9][i])),
    ]:
        assert torch.equal(ours.cpu(), each(images, reference))
    thin = random_images((3, 2, 9), n=2, device=device)
    assert torch.equal(F.adjust_sharpness(thin, [0.3, 1.7]).cpu(), thin.cpu())


@pytest.mark.parametrize("shape", SHAPES)
def test_rotate_and_affine_equal_torchvision(device, shape):
    images = random_images(shape, seed=4, device=device)
    generator = torch.Generator().manual_seed(5)
    angles = ((torch.rand(8, generator=generator, dtype=torch.float64) - 0.5) * 400).tolist()
    angles[:4] = [90.0, -90.0, 180.0, 0.0]
    assert torch.equal(F.rotate(images, angles).cpu(), each(images, lambda i, x: TF.rotate(x, angles[i])))
    fill = [10.0, 200.0, 33.0][:shape[0]]
    assert torch.equal(F.rotate(images, angles, fill=fill).cpu(),
                       each(images, lambda i, x: TF.rotate(x, angles[i], fill=fill)))
    translations = (torch.randint(-9, 10, (8, 2), generator=generator)).double()
    shears = (torch.rand(8, 2, generator=generator, dtype=torch.float64) - 0.5) * 60
    scales = torch.rand(8, generator=generator, dtype=torch.float64) + 0.5
    centers = torch.rand(8, 2, generator=generator, dtype=torch.float64) * 20
    ours = F.affine(images, angles, translations, scales, shears, centers, fill=7.0)
    expected = each(images, lambda i, x: TF.affine(x, angles[i], translations[i].tolist(), float(scales[i]),
                                                   shears[i].tolist(), center=centers[i].tolist(), fill=7.0))
    assert torch.equal(ours.cpu(), expected)


def test_bilinear_warp_equals_torchvision(device):
    images = random_images((3, 24, 20), seed=6, device=device)
    angles = [float(a) for a in range(-70, 90, 20)]
    for fill in (None, 100.0):
        ours = F.rotate(images, angles, interpolation="bilinear", fill=fill)
        expected = each(images, lambda i, x: TF.rotate(x, angles[i], InterpolationMode.BILINEAR, fill=fill))
        assert torch.equal(ours.cpu(), expected)


def torchvision_op(op, image, magnitude):
    """torchvision's own magnitude -> kernel mapping (the reference the op table must follow)."""
    augment = TrivialAugmentWide()
    return augment._apply_image_or_video_transform(image, op, magnitude, InterpolationMode.NEAREST, augment._fill)


@pytest.mark.parametrize("shape", SHAPES)
def test_every_policy_op_equals_torchvision(device, shape):
    """Each op at random per-image magnitudes from its wide (TrivialAugment) range, signed where torchvision
    signs it, includes ±90° rotations and ±32-pixel translations."""
    images = random_images(shape, n=10, seed=7, device=device)
    generator = torch.Generator().manual_seed(8)
    for op in space.OPS:
        magnitude_range = (space.TRIVIALAUGMENT_SPACE | space.AUTOAUGMENT_SPACE)[op]
        table = magnitude_range.values(31, *shape[1:])
        bins = torch.randint(31, (10,), generator=generator)
        bins[:2] = torch.tensor([20, 30])
        magnitudes = table[bins]
        if magnitude_range.signed:
            magnitudes = torch.where(torch.rand(10, generator=generator) < 0.5, -magnitudes, magnitudes)
        ours = ops.apply_op(op, images, magnitudes.to(device))
        expected = each(images, lambda i, x: torchvision_op(op, x, float(magnitudes[i])))
        assert torch.equal(ours.cpu(), expected), op


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 29, 31)])
def test_shears_at_every_bin_equal_torchvision_ties_included(device, shape):
    """ShearX/ShearY at every bin, both signs: at magnitude 20 many source coordinates are exact half-integers,
    the ties that grid_sample rounds half to even."""
    images = random_images(shape, n=61, seed=12, device=device)
    for op in ("ShearX", "ShearY"):
        table = space.TRIVIALAUGMENT_SPACE[op].values(31, *shape[1:])
        magnitudes = torch.cat([table, -table[1:]])
        ours = ops.apply_op(op, images, magnitudes.to(device))
        assert torch.equal(ours.cpu(), each(images, lambda i, x: torchvision_op(op, x, float(magnitudes[i])))), op


def test_numba_warp_reproduces_this_machines_grid():
    """The Numba warp runs only where it rebuilds torch's grid bit for bit (else the torch kernels run)."""
    assert _cpu.grid_rule() is not None, "the Numba warp cannot reproduce torch's float32 grid here: it is off"


def test_the_registry_picks_the_kernel_per_device():
    """On the CPU the Numba kernels run (where they apply), elsewhere and under use_reference_kernels the torch
    reference; the fast path's own conditions send a bilinear warp to the reference."""
    images = random_images((3, 8, 8), n=2)
    matrices = torch.eye(2, 3, dtype=torch.float64).expand(2, 2, 3)
    assert registry.get_kernel("apply_lut", "cpu") is _cpu.apply_lut
    assert registry.get_kernel("warp_affine", "cpu", images, matrices, "nearest", None, None, None) is _cpu.warp_nearest
    assert registry.get_kernel("warp_affine", "cpu", images, matrices, "bilinear", None, None, None) is \
        registry.get_kernel("warp_affine", "cuda")
    assert registry.get_kernel("apply_lut", "cuda") is not _cpu.apply_lut
    with registry.use_reference_kernels():
        assert registry.get_kernel("apply_lut", "cpu") is registry.get_kernel("apply_lut", "cuda")
    assert registry.get_kernel("apply_lut", "cpu") is _cpu.apply_lut  # the block restores the fast paths
    assert registry.kernel_names() == {"apply_lut", "channel_histograms", "mean_gray", "adjust_saturation",
                                       "adjust_sharpness", "warp_affine"}
    with pytest.raises(ValueError, match="no kernel named 'blur'"):
        registry.get_kernel("blur", "cuda")
    with pytest.raises(ValueError, match="already has an implementation"):
        registry.register_kernel("apply_lut", "cpu")(lambda *args: None)


def test_slot_applies_each_image_its_own_op(device):
    """apply_slot (grouping by op, in-place writes by index) equals applying each image's op on its own."""
    images = random_images((3, 20, 24), n=40, seed=9, device=device)
    generator = torch.Generator().manual_seed(10)
    op_ids = torch.randint(len(space.OPS), (40,), generator=generator)
    magnitudes = torch.rand(40, generator=generator, dtype=torch.float64) * 0.8
    magnitudes = torch.where(op_ids == ops.OP_INDEX["Posterize"], 5.0, magnitudes)
    ours = ops.apply_slot(images, op_ids.to(device), magnitudes.to(device))
    expected = each(images, lambda i, x: torchvision_op(space.OPS[op_ids[i]], x, float(magnitudes[i])))
    assert torch.equal(ours.cpu(), expected)


def test_selected_images_are_written_in_place(device):
    images = random_images((3, 16, 16), n=6, seed=11, device=device)
    indices = torch.tensor([4, 1], device=device)
    out = torch.zeros_like(images)
    result = F.adjust_sharpness(images, [0.2, 1.8], indices=indices, out=out)
    assert result is out and not out[[0, 2, 3, 5]].any()
    assert torch.equal(out[indices], F.adjust_sharpness(images[indices], [0.2, 1.8]))
    luts = torch.randint(0, 256, (2, 3, 256), dtype=torch.uint8, device=device)
    result = F.apply_lut(images, luts, indices=indices)
    assert torch.equal(result[[0, 2, 3, 5]], images[[0, 2, 3, 5]])
    assert torch.equal(result[indices], F.apply_lut(images[indices], luts))


def test_train_transforms_equal_torchvision(device):
    images = random_images((3, 40, 36), n=6, seed=12, device=device)
    boxes = torch.tensor([[0, 0, 40, 36], [3, 5, 10, 12], [10, 2, 30, 33], [39, 35, 1, 1], [5, 0, 17, 36],
                          [0, 20, 40, 16]])
    for size in ((24, 24), (64, 50), (7, 5)):
        for antialias in (False, True):
            ours = T.resized_crop(images, boxes, size, antialias=antialias)
            expected = each(images, lambda i, x: TF.resized_crop(x, *boxes[i].tolist(), list(size),
                                                                 antialias=antialias))
            assert (ours.cpu().int() - expected.int()).abs().max() <= 1  # float vs torchvision's fixed point
            assert torch.equal(ours, T.resized_crop(list(images), boxes, size, antialias=antialias))  # ragged form
    flags = torch.tensor([True, False, True, True, False, False])
    assert torch.equal(T.horizontal_flip(images, flags).cpu(),
                       each(images, lambda i, x: TF.horizontal_flip(x) if flags[i] else x))
    erased = T.erase(images, boxes, value=9)
    assert torch.equal(erased.cpu(), each(images, lambda i, x: TF.erase(x, *boxes[i].tolist(),
                                                                           torch.tensor(9, dtype=torch.uint8))))


def test_bad_input_is_rejected():
    images = random_images((3, 8, 8), n=2)
    with pytest.raises(TypeError, match="uint8"):
        F.check_images(images.float())
    with pytest.raises(ValueError, match="C = 1 or 3"):
        F.check_images(torch.zeros(2, 4, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        F.check_images(images[0])
    with pytest.raises(ValueError, match="contiguous"):
        F.check_images(images.contiguous(memory_format=torch.channels_last))
    with pytest.raises(ValueError, match="one parameter per image"):
        F.adjust_brightness(images, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="non-negative"):
        F.adjust_contrast(images, [1.0, -0.5])
    with pytest.raises(ValueError, match="0..8"):
        F.posterize(images, [9, 1])
    with pytest.raises(ValueError, match="at most 255"):
        F.solarize(images, [256.0, 1.0])
    with pytest.raises(ValueError, match="interpolation"):
        F.rotate(images, [1.0, 2.0], interpolation="bicubic")
    with pytest.raises(ValueError, match="fill"):
        F.rotate(images, [1.0, 2.0], fill=[1.0, 2.0])
    with pytest.raises(ValueError, match="unknown augmentation op"):
        ops.apply_op("Blur", images, torch.zeros(2, dtype=torch.float64))


def test_inverse_matrix_matches_torchvision():
    from torchvision.transforms.v2.functional._geometry import _get_inverse_affine_matrix
    angle, translate, scale, shear, center = 33.0, [3.0, -7.0], 1.3, [12.0, -5.0], [-4.0, 6.0]
    ours = F.inverse_affine_matrices(torch.tensor([angle], dtype=torch.float64),
                                     torch.tensor([translate], dtype=torch.float64),
                                     torch.tensor([scale], dtype=torch.float64),
                                     torch.tensor([shear], dtype=torch.float64),
                                     torch.tensor([center], dtype=torch.float64))
    expected = _get_inverse_affine_matrix(center, angle, translate, scale, shear)
    assert all(math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12) for a, b in zip(ours.flatten().tolist(), expected))
