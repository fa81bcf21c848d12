"""The loader contract on the torch backend: shapes, dtypes, normalization, seeds, epochs, shards."""
import numpy as np
import pytest
import torch

from pipelines import AugmentSpec, ConfigError, build_loader, open_source
from pipelines.sampling import shard_indices
from pipelines.torch_backend import random_pad_crop_flip


def collect(loader):
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def test_contract_arrays(fmnist_dir):
    loader = build_loader("torch", fmnist_dir, split="train", batch_size=64, seed=1)
    assert len(loader) == 4
    images, labels = next(iter(loader))
    assert images.shape == (64, 1, 28, 28) and images.dtype == torch.float32
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() < 10


def test_eval_is_normalized_source_in_order(fmnist_dir):
    source = open_source(fmnist_dir, "test")
    images, labels = collect(build_loader("torch", fmnist_dir, split="test", batch_size=50))
    assert torch.equal(labels, source.labels)
    expected = (source.images.float() / 255 - source.mean[0]) / source.std[0]
    torch.testing.assert_close(images, expected)


def test_seeded_determinism_and_epochs(fmnist_dir):
    def first_epoch(seed, epoch=0):
        loader = build_loader("torch", fmnist_dir, split="train", batch_size=64, seed=seed)
        loader.set_epoch(epoch)
        return collect(loader)

    a, b = first_epoch(3), first_epoch(3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], first_epoch(4)[1])
    assert not torch.equal(a[1], first_epoch(3, epoch=1)[1])


def test_shards_are_disjoint_and_cover(fmnist_dir):
    shards = [shard_indices(256, seed=0, epoch=0, rank=r, world_size=3, shuffle=True, drop_last=False)
              for r in range(3)]
    assert all(len(s) == 86 for s in shards)
    assert set(np.concatenate(shards)) == set(range(256))
    dropped = [shard_indices(256, seed=0, epoch=0, rank=r, world_size=3, shuffle=True, drop_last=True)
               for r in range(3)]
    flat = np.concatenate(dropped)
    assert len(flat) == len(set(flat)) == 255
    loaders = [build_loader("torch", fmnist_dir, split="train", batch_size=32, rank=r, world_size=2) for r in range(2)]
    assert [len(l) for l in loaders] == [4, 4]


def test_pad_crop_flip_is_a_shifted_window():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).view(2, 1, 6, 6)
    out = random_pad_crop_flip(images, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, y:y + 6, x:x + 6] for y in range(5) for x in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)


def test_jpeg_tree_train_and_eval(jpeg_tree):
    train = build_loader("torch", jpeg_tree, split="train", batch_size=4, image_size=32, num_workers=0)
    images, labels = next(iter(train))
    assert images.shape == (4, 3, 32, 32) and labels.max() < 3
    val = build_loader("torch", jpeg_tree, split="val", batch_size=6, image_size=32, num_workers=0)
    assert len(val) == 1 and next(iter(val))[0].shape == (6, 3, 32, 32)


def test_output_does_not_depend_on_worker_count(jpeg_tree):
    def run(workers):
        loader = build_loader("torch", jpeg_tree, split="train", batch_size=4, image_size=24, num_workers=workers,
                              seed=5)
        return collect(loader)

    a, b = run(0), run(2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_torchvision_worker_augmentation_changes_images(fmnist_dir):
    plain = collect(build_loader("torch", fmnist_dir, split="train", batch_size=64, seed=2, num_workers=0))
    spec = AugmentSpec("randaugment", magnitude=9)
    augmented = collect(build_loader("torch", fmnist_dir, split="train", batch_size=64, seed=2, num_workers=0,
                                     augment=spec, augment_device=False))
    assert torch.equal(plain[1], augmented[1]) and not torch.equal(plain[0], augmented[0])


def test_bad_input(fmnist_dir, jpeg_tree):
    with pytest.raises(ConfigError, match="build_loader: unknown backend 'tf'"):
        build_loader("tf", fmnist_dir, split="train", batch_size=8)
    with pytest.raises(ConfigError, match="image_size is required"):
        build_loader("torch", jpeg_tree, split="train", batch_size=8)
    with pytest.raises(ConfigError, match="magnitude 31 is outside 0..30"):
        AugmentSpec("randaugment", magnitude=31)
    with pytest.raises(ConfigError, match="AugmentSpec: unknown policy 'mixup'"):
        AugmentSpec("mixup")


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_jpeg_is_named(tmp_path, jpeg_tree, workers):
    import shutil
    tree = tmp_path / "tree"
    shutil.copytree(jpeg_tree, tree)
    bad = sorted((tree / "val").rglob("*.jpg"))[0]
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(ConfigError, match=f"cannot be used: {bad} ") as raised:  # up front, before any batch
        build_loader("torch", tree, split="val", batch_size=6, image_size=16, num_workers=workers)
    assert "\n" not in str(raised.value)
