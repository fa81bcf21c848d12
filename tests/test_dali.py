"""The DALI backend (CPU-only DALI): the loader contract, equality with the torch backend, and its augmentation
against torchvision v2 -- each op pixel by pixel, each policy's op statistics through marker ops."""
import collections
import math
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali", reason="the dali backend needs nvidia-dali (pip install 'rkd[dali]')")

from nvidia.dali import fn, pipeline_def, types  # noqa: E402
from nvidia.dali.auto_aug.core import augmentation, signed_bin  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.transforms import v2  # noqa: E402
from torchvision.transforms.v2 import InterpolationMode  # noqa: E402

from formats import learnable_images, write_idx  # noqa: E402
from pipelines import AugmentSpec, ConfigError, build_loader, open_source  # noqa: E402
from pipelines.augment import space  # noqa: E402
from pipelines.dali import suite as dali_suite  # noqa: E402
from pipelines.device_stage import DeviceStage  # noqa: E402
from pipelines.photo_tree import build_photo_tree  # noqa: E402
from pipelines.sampling import shard_indices  # noqa: E402

TV_SPACE = {"randaugment": v2.RandAugment._AUGMENTATION_SPACE, "autoaugment": v2.AutoAugment._AUGMENTATION_SPACE,
            "trivialaugment": v2.TrivialAugmentWide._AUGMENTATION_SPACE}


def collect(loader):
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def dali(source, **kw):
    kw.setdefault("num_workers", 2)
    return build_loader("dali", source, **kw)


def as_uint8(images: torch.Tensor, source) -> torch.Tensor:
    """Undo the device stage's normalization (exact after rounding)."""
    mean = torch.tensor(source.mean).view(1, -1, 1, 1) * 255
    std = torch.tensor(source.std).view(1, -1, 1, 1) * 255
    return (images * std + mean).round().to(torch.uint8)


@pytest.fixture(scope="module")
def fmnist64(tmp_path_factory):
    """A 64-image Fashion-MNIST-format folder (gzipped IDX, 28x28 gray), train and test."""
    root = tmp_path_factory.mktemp("fmnist64")
    rng = np.random.default_rng(1)
    for prefix in ("train", "t10k"):
        labels = rng.permutation(np.arange(64) % 10)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", learnable_images(labels, 28, 1, rng)[:, 0])
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return root


@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory):
    return build_photo_tree(tmp_path_factory.mktemp("photos") / "tree", classes=2, train_per_class=4,
                            val_per_class=5)


@pytest.fixture(scope="module")
def flat_tree(tmp_path_factory):
    """JPEGs of one colour each (decoded: constant per channel), the fixed points of every op at magnitude 0."""
    root = tmp_path_factory.mktemp("flat")
    rng = np.random.default_rng(2)
    for split in ("train", "val"):
        for cls in range(2):
            folder = root / split / f"c{cls}"
            folder.mkdir(parents=True)
            for i in range(8):
                colour = tuple(int(c) for c in rng.integers(20, 235, size=3))
                Image.new("RGB", (40, 30), colour).save(folder / f"{i}.jpg", quality=95)
    return root


# ------------------------------------------------------------------------------------------------ the contract
def test_contract_arrays(fmnist64):
    train = dali(fmnist64, split="train", batch_size=24, seed=1)
    assert len(train) == 2  # 64 // 24, drop_last in training
    images, labels = next(iter(train))
    assert images.shape == (24, 1, 28, 28) and images.dtype == torch.float32
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert labels.dtype == torch.int64 and labels.max() < 10
    test = dali(fmnist64, split="test", batch_size=24)
    assert len(test) == 3 and [len(y) for _, y in test] == [24, 24, 16]  # the partial last batch is kept


@pytest.mark.parametrize("rank", [0, 1])
def test_eval_equals_torch_backend_exactly_on_arrays(fmnist64, cifar10_dir, rank):
    for source in (fmnist64, cifar10_dir):
        kw = dict(split="test", batch_size=7, rank=rank, world_size=2)
        ours, theirs = collect(dali(source, **kw)), collect(build_loader("torch", source, **kw))
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


def test_eval_jpeg_tree_matches_torch_backend_within_one_grey_level(photo_tree):
    kw = dict(split="val", batch_size=4, image_size=48)
    ours, theirs = collect(dali(photo_tree, **kw)), collect(build_loader("torch", photo_tree, num_workers=0, **kw))
    assert torch.equal(ours[1], theirs[1])
    source = open_source(photo_tree, "val")
    diff = (as_uint8(ours[0], source).int() - as_uint8(theirs[0], source).int()).abs()
    assert diff.max() <= 1 and diff.float().mean() < 0.25  # same geometry; the resamplers round differently


def test_training_order_is_the_shared_shard_order(fmnist64):
    loader = dali(fmnist64, split="train", batch_size=16, seed=3, rank=1, world_size=2)
    loader.set_epoch(2)
    order = shard_indices(64, seed=3, epoch=2, rank=1, world_size=2, shuffle=True, drop_last=True)
    assert torch.equal(collect(loader)[1], open_source(fmnist64, "train").labels[order])


def test_determinism_epochs_seeds_threads(photo_tree):
    spec = AugmentSpec("randaugment", magnitude=9)

    def epoch(seed=0, epoch=0, threads=2):
        loader = dali(photo_tree, split="train", batch_size=4, image_size=32, augment=spec, seed=seed,
                      num_workers=threads)
        loader.set_epoch(epoch)
        return collect(loader)

    first, same = epoch(), epoch(threads=1)
    assert torch.equal(first[0], same[0]) and torch.equal(first[1], same[1])
    for other in (epoch(epoch=1), epoch(seed=1)):
        assert not torch.equal(first[0], other[0])


def test_reset_between_epochs_and_after_a_break(fmnist64):
    spec = AugmentSpec("trivialaugment")
    loader = dali(fmnist64, split="train", batch_size=16, seed=4, augment=spec, declare_ahead=True)
    whole = collect(loader)
    next(iter(loader))  # abandoned mid-epoch
    again = collect(loader)
    assert torch.equal(whole[0], again[0]) and torch.equal(whole[1], again[1])
    loader.set_epoch(1)  # the graph declared ahead in the background
    fresh = dali(fmnist64, split="train", batch_size=16, seed=4, augment=spec, declare_ahead=False)
    fresh.set_epoch(1)
    ahead, expected = collect(loader), collect(fresh)
    assert torch.equal(ahead[0], expected[0]) and not torch.equal(ahead[0], whole[0])


def test_batches_stay_valid_after_the_next_batch(fmnist64):
    batches = iter(dali(fmnist64, split="train", batch_size=16, seed=5))
    kept, kept_labels = next(batches)
    snapshot = kept.clone()
    for _ in batches:
        pass
    assert torch.equal(kept, snapshot) and kept_labels.shape == (16,)


def test_array_training_crop_is_a_padded_window_with_flip(fmnist64):
    source = open_source(fmnist64, "train")
    images, labels = collect(dali(fmnist64, split="train", batch_size=16, seed=6))
    order = shard_indices(64, seed=6, epoch=0, rank=0, world_size=1, shuffle=True, drop_last=True)
    padded = torch.nn.functional.pad(source.images[order], (4, 4, 4, 4))
    crops = as_uint8(images, source)
    for crop, pad in zip(crops, padded):
        windows = [pad[:, y:y + 28, x:x + 28] for y in range(9) for x in range(9)]
        assert any(torch.equal(crop, w) or torch.equal(crop, w.flip(-1)) for w in windows)


# ------------------------------------------------------------------------------------------------ augmentation
@pytest.mark.parametrize("policy", ["randaugment", "autoaugment", "trivialaugment"])
def test_suite_tables_are_torchvisions(policy):
    height, width = 48, 64
    suite = dali_suite.torchvision_suite(AugmentSpec(policy), height, width, 3)
    bins = space.AUTOAUGMENT_BINS if policy == "autoaugment" else 31
    for name, (table, signed) in TV_SPACE[policy].items():
        expected = table(bins, height, width)
        assert suite[name].randomly_negate == signed, name
        if expected is None:
            assert suite[name].mag_range is None, name
        else:
            assert np.array_equal(suite[name].mag_range, expected.numpy()), name
    assert list(space.POLICY_SPACES[policy]) == list(TV_SPACE[policy])


def _photos(tree, height: int, width: int) -> np.ndarray:
    photos = [Image.open(p).resize((width, height), Image.BILINEAR) for p in sorted(tree.rglob("*.jpg"))[::3][:4]]
    return np.stack([np.asarray(p) for p in photos])


# (policy, channels, bins to check): every op at each bin with both signs, in one pipeline
@pytest.mark.parametrize("policy,channels,bins", [("randaugment", 3, (0, 9, 30)), ("randaugment", 1, (0, 20)),
                                                  ("autoaugment", 3, (0, 9)), ("trivialaugment", 3, (0, 30))])
def test_each_op_matches_torchvision(photo_tree, policy, channels, bins):
    photos = _photos(photo_tree, 48, 64)[..., :channels].copy()
    n, height, width, _ = photos.shape
    suite = dali_suite.torchvision_suite(AugmentSpec(policy), height, width, channels)
    tv_space = TV_SPACE[policy]
    num_bins = space.AUTOAUGMENT_BINS if policy == "autoaugment" else 31
    cases = [(name, b, s) for name, (table, signed) in tv_space.items()
             for b in (bins if table(num_bins, height, width) is not None else (0,))
             for s in ((0, 1) if signed else (0,))]

    @pipeline_def
    def every_op():
        images = fn.external_source(source=lambda: photos, batch=True, layout="HWC")
        def sign(s):
            return types.Constant(np.array(s, dtype=np.int32), device="cpu")
        return tuple(suite[name](images, magnitude_bin=signed_bin(b, random_sign=sign(s)), num_magnitude_bins=num_bins)
                     for name, b, s in cases)

    pipe = every_op(batch_size=n, num_threads=2, device_id=None, seed=0)
    pipe.build()
    reference = v2.RandAugment()
    inputs = torch.from_numpy(photos).permute(0, 3, 1, 2)
    for (name, b, s), out in zip(cases, pipe.run()):
        table = tv_space[name][0](num_bins, height, width)
        magnitude = 0.0 if table is None else float(table[b]) * (-1 if s else 1)
        expected = torch.stack([reference._apply_image_or_video_transform(
            image, name, magnitude, interpolation=InterpolationMode.NEAREST, fill=reference._fill)
            for image in inputs])
        got = torch.from_numpy(np.array(out.as_tensor())).permute(0, 3, 1, 2)
        diff = (got.int() - expected.int()).abs()
        label = f"{name} bin {b} sign {s}"
        if name == "Equalize":  # DALI's lookup table is OpenCV's, torchvision's PIL's: not alignable
            assert np.array_equal(got.numpy(), np.stack([_opencv_equalize(image) for image in inputs.numpy()]))
        elif name in ("ShearX", "ShearY", "Rotate"):  # nearest-neighbour ties round differently
            assert (diff > 0).float().mean() < 0.1, label
        else:
            assert diff.max() == 0, label


def _opencv_equalize(image: np.ndarray) -> np.ndarray:
    """OpenCV's equalizeHist per channel of a (C, H, W) image: lut = round(255 (cdf - cdf(min)) / (n - cdf(min)))."""
    out = image.copy()
    for channel, plane in zip(out, image):
        hist = np.bincount(plane.ravel(), minlength=256)
        low = np.flatnonzero(hist)[0]
        if hist[low] < plane.size:
            scale = np.float32(255 / (plane.size - hist[low]))
            lut = np.clip(np.rint((np.cumsum(hist) - hist[low]).astype(np.float32) * scale), 0, 255)
            channel[...] = lut.astype(np.uint8)[plane]
    return out


def _marker_op(code: int):
    """An op that appends its code (base 16) and its signed magnitude bin (+32, base 64) to a 2-vector."""
    def mark(data, magnitude):
        step = types.Constant(np.float32([code, 32]))
        if magnitude is not None:
            step = step + magnitude * types.Constant(np.float32([0, 1]))
        return data * types.Constant(np.float32([16, 64])) + step
    return mark


_SPACE = {**v2.RandAugment._AUGMENTATION_SPACE, **v2.AutoAugment._AUGMENTATION_SPACE}
_CODES = {name: code for code, name in enumerate(sorted(_SPACE), start=1)}
_HAS_MAGNITUDE = {name: table(10, 8, 8) is not None for name, (table, _) in _SPACE.items()}


def _observed_steps(spec: AugmentSpec, samples: int) -> collections.Counter:
    """How often each sequence of (op, signed magnitude bin) was applied, read back from marker ops."""
    num_bins = space.AUTOAUGMENT_BINS if spec.policy == "autoaugment" else spec.num_magnitude_bins
    suite = {name: augmentation(_marker_op(_CODES[name]), name=name, randomly_negate=signed,
                                mag_range=np.arange(num_bins, dtype=np.float32) if _HAS_MAGNITUDE[name] else None)
             for name, (_, signed) in _SPACE.items()}

    @pipeline_def(enable_conditionals=True)
    def markers():
        return dali_suite.apply_policy(fn.constant(fdata=[0.0, 0.0], shape=[2], dtype=types.FLOAT), spec, suite)

    pipe = markers(batch_size=samples, num_threads=1, device_id=None, seed=11)
    pipe.build()
    names = {code: name for name, code in _CODES.items()}
    counts = collections.Counter()
    for codes, bins in np.array(pipe.run()[0].as_tensor()).astype(np.int64).tolist():
        steps = []
        while codes:
            name = names[codes % 16]
            steps.append((name, bins % 64 - 32 if _HAS_MAGNITUDE[name] else None))
            codes, bins = codes // 16, bins // 64
        counts[tuple(reversed(steps))] += 1
    return counts


def _with_signs(name: str, magnitude_bin: int, p: float) -> dict:
    if not _HAS_MAGNITUDE[name]:
        return {(name, None): p}
    if not _SPACE[name][1] or magnitude_bin == 0:
        return {(name, magnitude_bin): p}
    return {(name, magnitude_bin): p / 2, (name, -magnitude_bin): p / 2}


def _expected_steps(spec: AugmentSpec) -> dict:
    """torchvision's distribution of applied (op, signed bin) sequences for `spec`."""
    def one_step(bin_probabilities):
        out = collections.defaultdict(float)
        for name in space.RANDAUGMENT_SPACE:
            for b, q in bin_probabilities.items():
                for key, p in _with_signs(name, b, q / len(space.RANDAUGMENT_SPACE)).items():
                    out[key] += p
        return out

    if spec.policy == "trivialaugment":
        step = one_step({b: 1 / spec.num_magnitude_bins for b in range(spec.num_magnitude_bins)})
        return {(k,): p for k, p in step.items()}
    if spec.policy == "randaugment":  # magnitude_std: N(magnitude, std) clipped to the bins, to the nearest bin
        cdf = lambda x: 0.5 * (1 + math.erf((x - spec.magnitude) / (spec.magnitude_std * math.sqrt(2))))  # noqa
        top = spec.num_magnitude_bins - 1
        bins = ({spec.magnitude: 1.0} if spec.magnitude_std == 0 else
                {b: (1 if b == top else cdf(b + 0.5)) - (0 if b == 0 else cdf(b - 0.5)) for b in range(top + 1)})
        sequences = {(): 1.0}
        for _ in range(spec.num_ops):
            step = one_step(bins)
            sequences = {seq + (k,): p * q for seq, p in sequences.items() for k, q in step.items()}
        return sequences
    expected = collections.defaultdict(float)
    table = v2.AutoAugment(v2.AutoAugmentPolicy(spec.autoaugment_policy))._policies
    for steps in table:
        patterns = {(): 1 / len(table)}
        for name, p, b in steps:
            grown = collections.defaultdict(float)
            for seq, q in patterns.items():
                grown[seq] += q * (1 - p)
                for key, r in _with_signs(name, b, q * p).items():
                    grown[seq + (key,)] += r
            patterns = grown
        for seq, q in patterns.items():
            expected[seq] += q
    return expected


def _assert_chi2_fits(observed: collections.Counter, expected: dict, samples: int) -> None:
    support = [k for k, p in expected.items() if p > 0]
    assert set(observed) <= set(support), f"never drawn by torchvision: {set(observed) - set(support)}"
    chi2 = sum((observed[k] - samples * expected[k]) ** 2 / (samples * expected[k]) for k in support)
    dof = len(support) - 1
    assert chi2 < dof + 8 * math.sqrt(2 * dof), f"chi2 {chi2:.0f} for {dof} degrees of freedom"


@pytest.mark.parametrize("spec", [AugmentSpec("randaugment", magnitude=9), AugmentSpec("trivialaugment"),
                                  AugmentSpec("randaugment", magnitude=3, num_ops=1, magnitude_std=2.0),
                                  AugmentSpec("autoaugment", autoaugment_policy="imagenet"),
                                  AugmentSpec("autoaugment", autoaugment_policy="svhn")], ids=str)
def test_policy_op_statistics_match_torchvision(spec):
    samples = 4000
    _assert_chi2_fits(_observed_steps(spec, samples), _expected_steps(spec), samples)


@pytest.mark.parametrize("augment_backend", ["dali", "rkd"])
def test_magnitude_zero_leaves_images_unchanged(flat_tree, augment_backend):
    def train(spec):
        return collect(dali(flat_tree, split="train", batch_size=8, image_size=16, seed=8, augment=spec,
                            augment_backend=augment_backend))

    plain = train(AugmentSpec())
    assert torch.equal(plain[0].amax((2, 3)), plain[0].amin((2, 3)))  # the premise: constant channels
    zero = train(AugmentSpec("randaugment", magnitude=0))
    assert torch.equal(zero[0], plain[0]) and torch.equal(zero[1], plain[1])
    assert not torch.equal(train(AugmentSpec("randaugment", magnitude=9))[0], plain[0])


def test_rkd_backend_augments_dalis_batch_with_the_device_stage(fmnist64):
    spec = AugmentSpec("randaugment", magnitude=12)
    plain = dali(fmnist64, split="train", batch_size=16, seed=9, augment=spec, augment_backend="rkd")
    unaugmented = dali(fmnist64, split="train", batch_size=16, seed=9)
    source = open_source(fmnist64, "train")
    stage = DeviceStage(source.mean, source.std, torch.device("cpu"), spec, seed=9)
    for index, ((ours, labels), (raw, _)) in enumerate(zip(plain, unaugmented)):
        expected, _ = stage(as_uint8(raw, source), labels, 0, index)
        assert torch.equal(ours, expected)


def test_cutout_zeroes_one_clipped_square(flat_tree):
    images, _ = collect(dali(flat_tree, split="train", batch_size=8, image_size=24, seed=10,
                             augment=AugmentSpec(cutout=8)))
    source = open_source(flat_tree, "train")
    holes = (as_uint8(images, source) == 0).all(1)
    for hole in holes:
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        assert 4 <= len(rows) <= 8 and 4 <= len(cols) <= 8
        assert hole.sum() == len(rows) * len(cols)  # one rectangle
        assert (len(rows) == 8 or rows[0] == 0 or rows[-1] == 23) and (len(cols) == 8 or cols[0] == 0 or cols[-1] == 23)


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_input(fmnist64, photo_tree, tmp_path):
    with pytest.raises(ConfigError, match="unknown augment_backend 'kornia'"):
        dali(fmnist64, split="train", batch_size=8, augment_backend="kornia")
    with pytest.raises(ConfigError, match="image_size is required"):
        dali(photo_tree, split="train", batch_size=8)
    with pytest.raises(ConfigError, match="does not exist"):
        dali(tmp_path / "nowhere", split="train", batch_size=8)
    (tmp_path / "data.beton").write_bytes(b"")
    with pytest.raises(ConfigError, match="only the ffcv backend"):
        dali(tmp_path / "data.beton", split="train", batch_size=8)
    with pytest.raises(ConfigError, match="decode_device 'mixed'"):
        dali(fmnist64, split="train", batch_size=8, decode_device="mixed")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            dali(fmnist64, split="train", batch_size=8, device="cuda")


def test_corrupt_jpeg_is_named(tmp_path, photo_tree):
    tree = tmp_path / "tree"
    shutil.copytree(photo_tree, tree)
    bad = sorted((tree / "val").rglob("*.jpg"))[3]
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(ConfigError, match=f"cannot be used: {bad} ") as raised:  # up front, before any batch
        dali(tree, split="val", batch_size=2, image_size=16)
    assert "\n" not in str(raised.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (mixed decoding, GPU auto_aug)")
def test_cuda_path_matches_cpu_path(photo_tree, fmnist64):
    kw = dict(split="val", batch_size=4, image_size=48)
    gpu, cpu = collect(dali(photo_tree, device="cuda", **kw)), collect(dali(photo_tree, **kw))
    assert gpu[0].is_cuda and torch.equal(gpu[1].cpu(), cpu[1])
    source = open_source(photo_tree, "val")
    diff = (as_uint8(gpu[0].cpu(), source).int() - as_uint8(cpu[0], source).int()).abs().float()
    assert diff.mean() < 3  # nvJPEG's IDCT and upsampling differ from libjpeg-turbo's
    kw = dict(split="train", batch_size=16, augment=AugmentSpec("randaugment", magnitude=9))
    images, labels = collect(dali(fmnist64, device="cuda", **kw))
    assert images.is_cuda and images.shape == (64, 1, 28, 28) and labels.is_cuda
