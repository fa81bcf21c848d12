"""Policy samplers of pipelines.augment: tables equal torchvision's, sampled statistics match the policy's
definition (chi-square / Kolmogorov-Smirnov at alpha = 0.001, fixed seeds), plans applied as torchvision would,
determinism, BatchAugment's contract and its errors."""
import math
from collections import Counter

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import AutoAugmentPolicy, InterpolationMode

from pipelines import AugmentSpec, ConfigError
from pipelines.augment import (AutoAugment, BatchAugment, RandAugment, TrivialAugmentWide, cutout_boxes, erase, ops,
                               random_horizontal_flip)
from pipelines.augment.train_transforms import random_resized_crop_boxes
from pipelines.augment import space
from pipelines.augment.space import autoaugment_subpolicies
from pipelines.device_stage import DeviceStage

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                    reason="needs CUDA"))]
N = 20_000
SIZE = (32, 32)
RANDAUGMENT_OPS = space.OPS[:-1]  # torchvision's RandAugment / TrivialAugmentWide: all but Invert


def chi_square_critical(df: int, z: float = 3.0902) -> float:
    """Upper 0.001 quantile of chi-square(df), Wilson-Hilferty approximation."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def assert_fits(observed: dict, expected: dict) -> None:
    """Chi-square goodness of fit of counts to expected counts (same keys; cells under 5 expected pooled)."""
    assert set(observed) <= set(expected), f"unexpected outcomes {set(observed) - set(expected)}"
    small = [k for k in expected if expected[k] < 5]
    cells = [(observed.get(k, 0), expected[k]) for k in expected if k not in small]
    if small:
        cells.append((sum(observed.get(k, 0) for k in small), sum(expected[k] for k in small)))
    statistic = sum((o - e) ** 2 / e for o, e in cells)
    assert statistic < chi_square_critical(len(cells) - 1), f"chi-square {statistic:.1f} over {len(cells)} cells"


def assert_same_distribution(a: torch.Tensor, b: torch.Tensor) -> None:
    """Two-sample Kolmogorov-Smirnov test at alpha = 0.001."""
    a, b = a.double().sort().values, b.double().sort().values
    grid = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, grid, right=True) / len(a)
    cdf_b = torch.searchsorted(b, grid, right=True) / len(b)
    statistic = (cdf_a - cdf_b).abs().max().item()
    assert statistic < 1.95 * math.sqrt((len(a) + len(b)) / (len(a) * len(b))), f"KS statistic {statistic:.4f}"


def generator(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def torchvision_space(cls, height=SIZE[0], width=SIZE[1], bins=31):
    return {op: (fn(bins, height, width), signed) for op, (fn, signed) in cls._AUGMENTATION_SPACE.items()}


@pytest.mark.parametrize("ours, theirs", [(space.RANDAUGMENT_SPACE, v2.RandAugment),
                                          (space.TRIVIALAUGMENT_SPACE, v2.TrivialAugmentWide),
                                          (space.AUTOAUGMENT_SPACE, v2.AutoAugment)])
def test_magnitude_tables_equal_torchvision(ours, theirs):
    for height, width, bins in [(32, 32, 31), (28, 28, 10), (224, 160, 31), (17, 40, 5)]:
        reference = torchvision_space(theirs, height, width, bins)
        assert list(ours) == list(reference)
        for op, (values, signed) in reference.items():
            assert ours[op].signed == signed, op
            expected = torch.zeros(bins, dtype=torch.float64) if values is None else values.double()
            assert torch.equal(ours[op].values(bins, height, width), expected), op


@pytest.mark.parametrize("policy", ["imagenet", "cifar10", "svhn"])
def test_autoaugment_tables_equal_torchvision(policy):
    assert autoaugment_subpolicies(policy) == v2.AutoAugment(AutoAugmentPolicy(policy))._policies


def slot_outcomes(slot):
    """Counter of (op name, |magnitude| rounded) over the images of one slot."""
    names = [space.OPS[i] for i in slot.ops.tolist()]
    return Counter(zip(names, [round(abs(m), 6) for m in slot.magnitudes.tolist()]))


def test_randaugment_statistics():
    slots = RandAugment(num_ops=2, magnitude=9).sample(N, *SIZE, generator(0))
    reference = torchvision_space(v2.RandAugment)
    expected = {(op, round(0.0 if values is None else float(values[9]), 6)): N / len(reference)
                for op, (values, _) in reference.items()}
    for slot in slots:
        assert_fits(slot_outcomes(slot), expected)  # ops uniform over the 14, each at bin 9
        for op, (values, signed) in reference.items():  # signs: p = 1/2 for signed ops, never otherwise
            chosen = slot.ops == ops.OP_INDEX[op]
            negative = int((slot.magnitudes[chosen] < 0).sum())
            if signed:
                half = int(chosen.sum()) / 2
                assert_fits({"-": negative, "+": int(chosen.sum()) - negative}, {"-": half, "+": half})
            else:
                assert negative == 0
    pairs = Counter(zip(slots[0].ops.tolist(), slots[1].ops.tolist()))  # the two ops are drawn independently
    assert_fits(pairs, {(a, b): N / 14 ** 2 for a in range(14) for b in range(14)})


def recovered_bins(slot, space, bins=31):
    """The (fractional) bin of every image whose op has a linear range starting at 0."""
    found = []
    for op, magnitude_range in space.items():
        if magnitude_range.kind == "linear" and magnitude_range.start == 0:
            chosen = slot.ops == ops.OP_INDEX[op]
            found.append(slot.magnitudes[chosen].abs() / magnitude_range.end * (bins - 1))
    return torch.cat(found)


def test_randaugment_magnitude_std_is_clipped_normal():
    slots = RandAugment(num_ops=2, magnitude=15, magnitude_std=2.0).sample(N, *SIZE, generator(1))
    bins = torch.cat([recovered_bins(slot, space.RANDAUGMENT_SPACE) for slot in slots])
    assert abs(bins.mean().item() - 15) < 0.1 and abs(bins.std().item() - 2) < 0.1
    assert (bins != bins.round()).float().mean() > 0.99  # continuous, not rounded to bins
    low = torch.cat([recovered_bins(s, space.RANDAUGMENT_SPACE)
                     for s in RandAugment(1, 0, magnitude_std=3.0).sample(N, *SIZE, generator(2))])
    assert low.min() >= 0 and abs((low < 1e-9).float().mean().item() - 0.5) < 0.03  # half clipped to bin 0
    high = torch.cat([recovered_bins(s, space.RANDAUGMENT_SPACE)
                      for s in RandAugment(1, 30, magnitude_std=3.0).sample(N, *SIZE, generator(3))])
    assert high.max() <= 30 + 1e-5  # float32 table values
    posterize = torch.cat([s.magnitudes[s.ops == ops.OP_INDEX["Posterize"]] for s in slots])
    assert set(posterize.tolist()) <= {7.0, 8.0, 6.0, 5.0}  # integer bits from the nearest bins 0..30


def test_trivialaugment_statistics():
    (slot,) = TrivialAugmentWide().sample(N, *SIZE, generator(4))
    assert_fits(Counter(space.OPS[i] for i in slot.ops.tolist()), {op: N / 14 for op in RANDAUGMENT_OPS})
    bins = recovered_bins(slot, space.TRIVIALAUGMENT_SPACE).round().long()
    assert_fits(Counter(bins.tolist()), {b: len(bins) / 31 for b in range(31)})
    signed = torch.tensor([space.TRIVIALAUGMENT_SPACE[space.OPS[i]].signed for i in slot.ops.tolist()])
    nonzero = signed & (slot.magnitudes != 0)
    negative = int((slot.magnitudes[nonzero] < 0).sum())
    half = int(nonzero.sum()) / 2
    assert_fits({"-": negative, "+": int(nonzero.sum()) - negative}, {"-": half, "+": half})


@pytest.mark.parametrize("policy", ["imagenet", "cifar10", "svhn"])
def test_autoaugment_statistics(policy):
    slots = AutoAugment(policy).sample(N, *SIZE, generator(5))
    reference = torchvision_space(v2.AutoAugment, bins=10)
    subpolicies = v2.AutoAugment(AutoAugmentPolicy(policy))._policies
    for step, slot in enumerate(slots):
        expected = Counter()
        for sub in subpolicies:
            op, probability, magnitude_bin = sub[step]
            values = reference[op][0]
            value = 0.0 if values is None else float(values[magnitude_bin])
            expected[(op, round(abs(value), 6))] += N / len(subpolicies) * probability
            expected[("Identity", 0.0)] += N / len(subpolicies) * (1 - probability)
        assert_fits(slot_outcomes(slot), {k: v for k, v in expected.items() if v > 0})


def torchvision_op(op, image, magnitude):
    augment = v2.TrivialAugmentWide()
    return augment._apply_image_or_video_transform(image, op, magnitude, InterpolationMode.NEAREST, augment._fill)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("policy", [RandAugment(2, 9), RandAugment(3, 20, magnitude_std=1.0), AutoAugment("svhn"),
                                    TrivialAugmentWide()], ids=["ra", "ra-std", "aa", "ta"])
def test_policy_applies_its_plan_as_torchvision(policy, channels, device):
    """Each image goes through its own slots' ops in order, exactly as torchvision's per-image op would
    (geometric tolerance as in test_augment_functional)."""
    images = torch.randint(0, 256, (24, channels, 20, 22), generator=generator(6), dtype=torch.uint8).to(device)
    plan = policy.sample(24, 20, 22, generator(7, device))
    expected = []
    for i, image in enumerate(images.cpu()):
        for slot in plan:
            image = torchvision_op(space.OPS[slot.ops[i]], image, float(slot.magnitudes[i]))
        expected.append(image)
    ours = policy(images, generator(7, device)).cpu()
    same = ours == torch.stack(expected)
    assert same.float().mean() >= 0.995 and same.flatten(1).float().mean(1).min() >= 0.98
    colour_only = torch.stack([slot.ops.cpu() > ops.OP_INDEX["Rotate"] for slot in plan]).all(0)
    colour_only |= torch.stack([slot.ops.cpu() == 0 for slot in plan]).all(0)
    assert same[colour_only].all()


SPECS = [AugmentSpec("randaugment", magnitude=9, cutout=8), AugmentSpec("autoaugment", autoaugment_policy="cifar10"),
         AugmentSpec("trivialaugment"), AugmentSpec("randaugment", magnitude=5, magnitude_std=0.5),
         AugmentSpec("none", cutout=6)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.policy}-c{s.cutout}")
def test_determinism(spec, device):
    images = torch.randint(0, 256, (16, 3, 24, 24), generator=generator(8), dtype=torch.uint8).to(device)
    original = images.clone()
    augment = BatchAugment(spec)
    rng_state = torch.get_rng_state()
    first = augment(images, generator(9, device))
    assert torch.equal(torch.get_rng_state(), rng_state)  # only the given generator is used
    torch.manual_seed(1234)
    assert torch.equal(augment(images, generator(9, device)), first)
    assert not torch.equal(augment(images, generator(10, device)), first)
    assert torch.equal(images, original) and first.shape == images.shape and first.dtype == torch.uint8


def test_cutout_only_spec():
    images = torch.randint(1, 256, (64, 1, 28, 28), generator=generator(11), dtype=torch.uint8)
    out = BatchAugment(AugmentSpec("none", cutout=16))(images, generator(12))
    holes = out != images
    assert torch.equal(holes, out == 0)  # changed pixels are exactly the zeroed ones
    boxes = cutout_boxes(64, 28, 28, 16, generator(12))
    assert torch.equal(out, erase(images, boxes, 0))
    areas = holes.flatten(1).sum(1)
    assert torch.equal(areas, boxes[:, 2] * boxes[:, 3]) and areas.min() >= 64 and areas.max() <= 256
    assert torch.equal(BatchAugment(AugmentSpec("none"))(images, generator(12)), images)


def test_cutout_centres_are_uniform():
    boxes = cutout_boxes(N, 12, 10, 1, generator(13))
    assert (boxes[:, 2:] == 1).all()
    assert_fits(Counter(boxes[:, 0].tolist()), {y: N / 12 for y in range(12)})
    assert_fits(Counter(boxes[:, 1].tolist()), {x: N / 10 for x in range(10)})


@pytest.mark.parametrize("height, width", [(64, 64), (30, 90)])
def test_random_resized_crop_boxes_match_torchvision(height, width):
    boxes = random_resized_crop_boxes(4000, height, width, generator(14))
    top, left, box_h, box_w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + box_h <= height).all() and (left + box_w <= width).all()
    torch.manual_seed(15)
    crop = v2.RandomResizedCrop(8)
    theirs = torch.tensor([[p["top"], p["left"], p["height"], p["width"]]
                           for p in (crop.make_params([torch.zeros(1, height, width)]) for _ in range(4000))])
    def features(b):  # area, aspect ratio, relative vertical offset
        return b[:, 2] * b[:, 3], b[:, 3] / b[:, 2], b[:, 0] / (height - b[:, 2] + 1)
    for ours_values, their_values in zip(features(boxes), features(theirs)):
        assert_same_distribution(ours_values, their_values)


def test_random_flip():
    images = torch.randint(0, 256, (N // 10, 1, 6, 6), generator=generator(19), dtype=torch.uint8)
    flipped = random_horizontal_flip(images, generator(20))
    is_flipped = (flipped == images.flip(-1)).flatten(1).all(1) & (flipped != images).flatten(1).any(1)
    assert torch.equal(is_flipped | (flipped == images).flatten(1).all(1), torch.ones(N // 10, dtype=torch.bool))
    assert_fits({"flipped": int(is_flipped.sum()), "kept": int((~is_flipped).sum())},
                {"flipped": N / 20, "kept": N / 20})
    assert torch.equal(random_horizontal_flip(images, generator(20), p=0.0), images)


def test_device_stage_uses_the_policy():
    stage = DeviceStage((0.5,), (0.25,), "cpu", AugmentSpec("randaugment", magnitude=9, cutout=8), seed=3)
    images = torch.randint(0, 256, (32, 1, 28, 28), generator=generator(18), dtype=torch.uint8)
    labels = torch.arange(32)
    a, _ = stage(images, labels, epoch=0, batch_index=0)
    b, _ = stage(images, labels, epoch=0, batch_index=0)
    c, _ = stage(images, labels, epoch=1, batch_index=0)
    plain = (images.float() / 255 - 0.5) / 0.25
    assert a.shape == (32, 1, 28, 28) and torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, plain)


def test_bad_input_gives_clear_errors():
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    augment = BatchAugment(AugmentSpec("randaugment"))
    with pytest.raises(TypeError, match="uint8"):
        augment(images.float(), generator(0))
    with pytest.raises(ValueError, match="contiguous"):
        augment(images.contiguous(memory_format=torch.channels_last), generator(0))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        augment(images[:, :2].contiguous(), generator(0))
    with pytest.raises(TypeError, match="Generator"):
        augment(images, 0)
    with pytest.raises(TypeError, match="AugmentSpec"):
        BatchAugment("randaugment")
    with pytest.raises(ConfigError, match="AugmentSpec: unknown policy 'augmix'"):
        AugmentSpec("augmix")
    with pytest.raises(ConfigError, match="outside 0..30"):
        RandAugment(2, 31)
    with pytest.raises(ConfigError, match="outside 0..9"):
        RandAugment(2, 10, num_magnitude_bins=10)
    with pytest.raises(ConfigError, match="num_ops"):
        RandAugment(0, 9)
    with pytest.raises(ConfigError, match="unknown AutoAugment policy"):
        AutoAugment("reduced-imagenet")
    with pytest.raises(ConfigError, match="randaugment only"):
        BatchAugment(AugmentSpec("trivialaugment", magnitude_std=0.5))
    with pytest.raises(ConfigError, match="interpolation"):
        TrivialAugmentWide(interpolation="bicubic")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generator_on_another_device_is_rejected():
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8, device="cuda")
    with pytest.raises(ValueError, match="generator is on"):
        BatchAugment(AugmentSpec("trivialaugment"))(images, generator(0))
