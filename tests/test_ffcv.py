"""The ffcv backend: .beton conversion and cache, the loader contract, equality with the torch backend, bad input.

Equality with the torch backend (augmentation off):
- arrays (Fashion-MNIST, CIFAR), raw mode: exactly equal, training batches (same seeds) and evaluation batches;
- JPEG trees whose short side is already the evaluation resize size (no resampling in either backend), raw mode:
  exactly equal;
- JPEG trees in jpg mode (re-encoded at quality 90) and trees of any size (OpenCV INTER_AREA vs torchvision's
  antialiased bilinear): mean |difference| <= 4 and 99th percentile <= 24 grey levels (of 255).
Each FFCV loader compiles its pipeline with numba on its first epoch (seconds): loaders are shared per module.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ffcv", reason="the ffcv backend needs the ffcv package (pip install 'rkd[ffcv]')")

from click.testing import CliRunner  # noqa: E402
from ffcv.fields import FloatField, IntField, RGBImageField  # noqa: E402
from ffcv.reader import Reader  # noqa: E402
from ffcv.writer import DatasetWriter  # noqa: E402
from formats import write_jpeg_tree  # noqa: E402

from pipelines import AugmentSpec, ConfigError, build_loader, open_source  # noqa: E402
from pipelines.ffcv.beton import cache_root, cached_beton, convert_to_beton, read_beton, sidecar_path  # noqa: E402
from pipelines.crops import eval_crop_box  # noqa: E402
from pipelines.ffcv.loader import FFCVLoader  # noqa: E402
from pipelines.photo_tree import build_photo_tree  # noqa: E402
from rkd.cli import cli, in_flags  # noqa: E402
from rkd.commands.convert import convert_command  # noqa: E402

MEAN_TOLERANCE, P99_TOLERANCE = 4.0, 24.0


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("beton-cache")


@pytest.fixture(scope="module")
def sized_tree(tmp_path_factory) -> Path:
    """JPEGs 80×64: at image size 56 the evaluation resize (short side 64) is the identity in both backends."""
    return write_jpeg_tree(tmp_path_factory.mktemp("sized"), classes=2, train_per_class=4, val_per_class=6,
                           size=(80, 64))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return build_photo_tree(tmp_path_factory.mktemp("photos"), classes=2, train_per_class=6, val_per_class=8)


def ffcv(source, cache, **kwargs) -> FFCVLoader:
    options = dict(split="train", batch_size=32, num_workers=2, cache_dir=cache, seed=0)
    return build_loader("ffcv", source, **{**options, **kwargs})


def torch_loader(source, **kwargs):
    kwargs.pop("write_mode", None)
    return build_loader("torch", source, **{**dict(split="train", batch_size=32, num_workers=0, seed=0), **kwargs})


def collect(loader) -> tuple:
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def grey_levels(images: torch.Tensor, source) -> torch.Tensor:
    """Undo the normalization: the uint8-scale pixels a loader started from."""
    mean = torch.tensor(source.mean).view(1, -1, 1, 1) * 255
    std = torch.tensor(source.std).view(1, -1, 1, 1) * 255
    return images * std + mean


@pytest.fixture(scope="module")
def fmnist_train(fmnist_dir, cache) -> FFCVLoader:
    return ffcv(fmnist_dir, cache)


# --- the contract -------------------------------------------------------------------------------------------------

def test_contract_arrays(fmnist_train):
    assert len(fmnist_train) == 256 // 32
    images, labels = next(iter(fmnist_train))
    assert images.shape == (32, 1, 28, 28) and images.dtype == torch.float32
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert labels.dtype == torch.int64 and labels.shape == (32,) and 0 <= labels.min() and labels.max() < 10


def test_training_batches_equal_torch_backend_and_follow_epochs(fmnist_dir, fmnist_train):
    reference = torch_loader(fmnist_dir)
    epochs = []
    for epoch in (0, 1):
        fmnist_train.set_epoch(epoch)
        reference.set_epoch(epoch)
        ours, theirs = collect(fmnist_train), collect(reference)
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
        epochs.append(ours)
    assert not torch.equal(epochs[0][1], epochs[1][1])  # set_epoch reshuffles
    fmnist_train.set_epoch(0)
    again = collect(fmnist_train)  # the same (seed, epoch) gives the same batches
    assert torch.equal(again[0], epochs[0][0]) and torch.equal(again[1], epochs[0][1])


def test_labels_survive_buffer_reuse(fmnist_dir, fmnist_train):
    fmnist_train.set_epoch(0)
    kept = [labels for _, labels in fmnist_train]  # held past FFCV's reuse of its output slots
    expected = open_source(fmnist_dir, "train").labels[fmnist_train.epoch_indices(0)]
    assert torch.equal(torch.cat(kept), expected)


@pytest.mark.parametrize("fixture, split", [("fmnist_dir", "test"), ("cifar10_dir", "test")])
def test_eval_arrays_equal_torch_backend_exactly(request, cache, fixture, split):
    root = request.getfixturevalue(fixture)
    ours = collect(ffcv(root, cache, split=split, batch_size=12))
    theirs = collect(torch_loader(root, split=split, batch_size=12))
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


def test_rank_shards_are_disjoint_and_match_torch_backend(fmnist_dir, cache):
    seen = []
    for rank in (0, 1):
        loader = ffcv(fmnist_dir, cache, batch_size=50, rank=rank, world_size=2, drop_last=False, seed=7)
        reference = torch_loader(fmnist_dir, batch_size=50, rank=rank, world_size=2, drop_last=False, seed=7)
        assert len(loader) == len(reference) == 3
        ours, theirs = collect(loader), collect(reference)
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
        seen.append(set(loader.epoch_indices(0).tolist()))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(256))


def test_quasi_random_order_is_a_seeded_permutation(fmnist_dir, cache):
    loader = ffcv(fmnist_dir, cache, order="quasi_random", os_cache=False, seed=3)
    orders = [loader.epoch_indices(e) for e in (0, 1)]
    assert sorted(orders[0].tolist()) == list(range(256)) and not np.array_equal(orders[0], orders[1])
    source = open_source(fmnist_dir, "train")
    labels = torch.cat([y for _, y in loader])
    assert torch.equal(labels, source.labels[orders[0]])


def test_augmentation_runs_on_the_device_stage(fmnist_dir, cache):
    plain = ffcv(fmnist_dir, cache, batch_size=64)
    augmented = ffcv(fmnist_dir, cache, batch_size=64, augment=AugmentSpec("randaugment", magnitude=9))
    x, y = next(iter(augmented))
    assert x.shape == (64, 1, 28, 28) and x.is_contiguous(memory_format=torch.channels_last)
    x0, y0 = next(iter(plain))
    assert torch.equal(y, y0) and not torch.equal(x, x0)
    again, _ = next(iter(augmented))
    assert torch.equal(x, again)


# --- JPEG trees ------------------------------------------------------------------------------------------------------

def test_eval_crop_box_is_torchvisions_when_no_resize_is_needed():
    assert eval_crop_box(64, 80, 56, 64) == (4, 12, 56, 56)
    assert eval_crop_box(64, 81, 56, 64) == (4, 12, 56, 56)  # round half to even, as torchvision
    top, left, h, w = eval_crop_box(375, 500, 224, 256)
    assert (h, w) == (328, 328) and abs(top - 23) <= 1 and abs(left - 86) <= 1


def test_raw_jpeg_tree_equals_torch_backend_exactly(sized_tree, cache):
    ours = collect(ffcv(sized_tree, cache, split="val", batch_size=5, image_size=56, write_mode="raw"))
    theirs = collect(torch_loader(sized_tree, split="val", batch_size=5, image_size=56))
    assert ours[0].shape == (12, 3, 56, 56)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


@pytest.mark.parametrize("write_mode, image_size", [("jpg", 64), ("raw", 48)])
def test_photo_tree_within_tolerance_of_torch_backend(photos, cache, write_mode, image_size):
    loader = ffcv(photos, cache, split="val", batch_size=8, image_size=image_size, write_mode=write_mode)
    ours = collect(loader)
    theirs = collect(torch_loader(photos, split="val", batch_size=8, image_size=image_size))
    assert torch.equal(ours[1], theirs[1])
    diff = (grey_levels(ours[0], loader.info) - grey_levels(theirs[0], loader.info)).abs().flatten()
    assert diff.mean() <= MEAN_TOLERANCE and diff.quantile(0.99) <= P99_TOLERANCE, (diff.mean(), diff.quantile(0.99))


def test_training_crops_are_seeded_per_epoch(photos, cache):
    loader = ffcv(photos, cache, batch_size=4, image_size=40, seed=11)
    assert len(loader) == 3
    first = collect(loader)
    assert first[0].shape == (12, 3, 40, 40) and first[0].is_contiguous(memory_format=torch.channels_last)
    again = collect(loader)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    loader.set_epoch(1)
    other = collect(loader)
    assert not torch.equal(first[1], other[1])
    loader.set_epoch(0)
    assert torch.equal(collect(loader)[0], first[0])


# --- conversion and cache ------------------------------------------------------------------------------------------

def test_convert_describes_and_refuses_to_overwrite(fmnist_dir, tmp_path):
    out = tmp_path / "fm.beton"
    info = convert_to_beton(fmnist_dir, out, split="test", progress=False)
    assert (info.num_samples, info.channels, info.native_size, info.kind) == (128, 1, 28, "array")
    assert info.options["write_mode"] == "raw" and sidecar_path(out).exists()
    assert read_beton(out) == info
    with pytest.raises(ConfigError, match="exists; pass force=True"):
        convert_to_beton(fmnist_dir, out, split="test", progress=False)
    again = convert_to_beton(fmnist_dir, out, split="test", write_mode="jpg", jpeg_quality=80, force=True,
                             progress=False)
    assert again.options == {"write_mode": "jpg", "max_resolution": None, "jpeg_quality": 80}
    with pytest.raises(ConfigError, match="must end in .beton"):
        convert_to_beton(fmnist_dir, tmp_path / "fm.bin", progress=False)


def test_convert_modes_and_max_resolution(photos, tmp_path):
    from ffcv.reader import Reader
    info = convert_to_beton(photos, tmp_path / "p.beton", split="val", max_resolution=128, write_mode="proportion",
                            compress_probability=0.5, num_workers=1, progress=False)
    assert info.kind == "files" and info.native_size is None and info.classes == ("class_000", "class_001")
    meta = Reader(str(tmp_path / "p.beton")).metadata["f0"]
    assert max(meta["height"].max(), meta["width"].max()) == 128
    assert set(meta["mode"].tolist()) <= {0, 1}


def test_cache_reuses_until_the_source_changes(sized_tree, tmp_path, monkeypatch):
    monkeypatch.setenv("RKD_CACHE_DIR", str(tmp_path / "rkd-cache"))
    assert cache_root() == tmp_path / "rkd-cache" / "beton"
    tree = shutil.copytree(sized_tree, tmp_path / "tree")
    first = cached_beton(tree, "val", progress=False)
    assert first.path.parent == cache_root()
    stamp = first.path.stat().st_mtime_ns
    assert cached_beton(tree, "val", progress=False).path == first.path
    assert first.path.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert cached_beton(tree, "val", write_mode="raw", progress=False).path != first.path  # other options
    victim = next((tree / "val").rglob("*.jpg"))
    os.utime(victim, ns=(stamp, stamp + 10**9))
    assert cached_beton(tree, "val", progress=False).path != first.path  # a changed file converts anew


def test_convert_command(fmnist_dir, tmp_path):
    out = tmp_path / "cli.beton"
    result = CliRunner().invoke(convert_command, [str(fmnist_dir), str(out), "--split", "test", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote 128 images" in result.output and out.exists()
    refused = CliRunner().invoke(cli, ["convert", str(fmnist_dir), str(out), "--split", "test"])
    assert isinstance(refused.exception, ConfigError) and "exists; pass force=True" in str(refused.exception)
    assert in_flags(str(refused.exception)).endswith("exists; pass --force to overwrite it")
    result = CliRunner().invoke(convert_command, [str(fmnist_dir), str(out), "--split", "test", "--force"])
    assert result.exit_code == 0, result.output


# --- bad input -----------------------------------------------------------------------------------------------------

def test_missing_beton(tmp_path):
    with pytest.raises(ConfigError, match="does not exist; create it with `rkd convert"):
        FFCVLoader(tmp_path / "nope.beton", split="train", batch_size=4)


def test_truncated_beton(fmnist_dir, tmp_path):
    good = tmp_path / "good.beton"
    convert_to_beton(fmnist_dir, good, split="test", progress=False)
    data = good.read_bytes()
    for keep in (0, 10, len(data) // 2, len(data) - 24, len(data) - 5):
        bad = tmp_path / f"cut{keep}.beton"
        bad.write_bytes(data[:keep])
        with pytest.raises(ConfigError, match=f"{bad.name}"):
            read_beton(bad)


def test_sidecar_of_another_beton(fmnist_dir, cifar10_dir, tmp_path):
    convert_to_beton(fmnist_dir, tmp_path / "a.beton", split="test", progress=False)
    convert_to_beton(cifar10_dir, tmp_path / "b.beton", split="test", progress=False)
    shutil.copy(sidecar_path(tmp_path / "b.beton"), sidecar_path(tmp_path / "a.beton"))
    with pytest.raises(ConfigError, match="describes another .beton"):
        read_beton(tmp_path / "a.beton")


def _write_beton(path: Path, fields: dict, rows: list) -> None:
    DatasetWriter(str(path), fields, num_workers=1).from_indexed_dataset(rows)


def test_beton_with_other_fields(tmp_path):
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    _write_beton(tmp_path / "names.beton", {"img": RGBImageField(), "y": IntField()}, [(image, 1)] * 4)
    with pytest.raises(ConfigError, match="has fields \\(img: RGBImageField, y: IntField\\)"):
        read_beton(tmp_path / "names.beton")
    _write_beton(tmp_path / "types.beton", {"image": RGBImageField(), "label": FloatField()}, [(image, 1.0)] * 4)
    with pytest.raises(ConfigError, match="needs 'image': RGBImageField and 'label': IntField"):
        read_beton(tmp_path / "types.beton")
    _write_beton(tmp_path / "foreign.beton", {"image": RGBImageField(), "label": IntField()}, [(image, 2)] * 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = read_beton(tmp_path / "foreign.beton")
    assert "no foreign.beton.json" in str(caught[0].message)
    assert (info.channels, info.num_classes, info.native_size, info.num_samples) == (3, 3, 8, 4)


def test_corrupt_jpegs_refuse_the_conversion(sized_tree, tmp_path):
    tree = shutil.copytree(sized_tree, tmp_path / "tree")
    files = sorted((tree / "val").rglob("*.jpg"))
    files[1].write_bytes(files[1].read_bytes()[:200])  # truncated
    files[4].write_bytes(b"not a jpeg")
    out = tmp_path / "broken.beton"
    with pytest.raises(ConfigError, match=f"2 of 12 images .* cannot be used: {files[1]} .* and 1 more"):
        convert_to_beton(tree, out, split="val", progress=False)
    assert not out.exists() and not list(tmp_path.glob(".broken.beton*"))


# --- hardening: conversions that cannot hang, leave nothing behind, and .beton files checked against their use ------

def _tiny_tree(root: Path) -> Path:
    return write_jpeg_tree(root, classes=2, train_per_class=3, val_per_class=2, size=(16, 12))


def _leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.glob(".*.tmp-*"))


def test_16bit_png_is_refused_before_converting(tmp_path):
    tree = _tiny_tree(tmp_path / "tree")
    deep = tree / "train" / "n00000001" / "deep.png"
    from PIL import Image
    Image.fromarray(np.arange(12 * 16, dtype=np.uint16).reshape(12, 16) * 300).save(deep)
    out = tmp_path / "out" / "deep.beton"
    with pytest.raises(ConfigError, match=f"{deep} \\(a 16-bit PNG") as raised:
        convert_to_beton(tree, out, progress=False)
    assert "\n" not in str(raised.value) and not out.exists() and not _leftovers(out.parent)


def test_image_larger_than_ffcvs_default_page_converts(tmp_path):
    tree = _tiny_tree(tmp_path / "tree")
    from PIL import Image
    Image.fromarray(np.full((1800, 1800, 3), 90, np.uint8)).save(tree / "train" / "n00000000" / "big.png")
    info = convert_to_beton(tree, tmp_path / "big.beton", write_mode="raw", progress=False)  # 9.7 MB > 8 MiB page
    images = Reader(str(tmp_path / "big.beton")).metadata["f0"]
    assert info.num_samples == 7 and (1800, 1800) in set(zip(images["height"].tolist(), images["width"].tolist()))


def test_a_failing_writer_process_ends_the_conversion(tmp_path, monkeypatch):
    def broken_encode(self, destination, image, malloc):
        raise ValueError("no space in this field")

    monkeypatch.setattr(RGBImageField, "encode", broken_encode)
    tree = _tiny_tree(tmp_path / "tree")
    out = tmp_path / "never.beton"
    started = time.monotonic()
    with pytest.raises(ConfigError, match="failed in FFCV's writer \\(ValueError: no space in this field\\)") as raised:
        convert_to_beton(tree, out, num_workers=2, progress=False)
    assert time.monotonic() - started < 30 and "\n" not in str(raised.value)
    assert not out.exists() and not _leftovers(tmp_path)


def test_stale_temporaries_are_removed_at_the_next_start(fmnist_dir, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [tmp_path / f".old.beton.tmp-{dead.pid}", tmp_path / f".old.beton.json.tmp-{dead.pid}"]
    alive = tmp_path / f".other.beton.tmp-{os.getpid()}"  # a conversion still running: kept
    for path in (*stale, alive):
        path.write_bytes(b"partial")
    convert_to_beton(fmnist_dir, tmp_path / "new.beton", split="test", progress=False)
    assert _leftovers(tmp_path) == [alive.name]


def _children(pid: int) -> list:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_writer_processes_die_with_a_killed_conversion(fmnist_dir, tmp_path, monkeypatch):
    import pipelines.ffcv.beton as beton
    item = beton._ArrayItems.__getitem__
    monkeypatch.setattr(beton._ArrayItems, "__getitem__", lambda self, i: (time.sleep(0.05), item(self, i))[1])
    out = tmp_path / "killed.beton"
    conversion = multiprocessing.get_context("fork").Process(
        target=convert_to_beton, args=(fmnist_dir, out), kwargs=dict(num_workers=2, progress=False))
    conversion.start()  # the conversion's own process: its writers are its children
    deadline = time.monotonic() + 60
    while len(writers := _children(conversion.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(writers) >= 2 and conversion.is_alive()
    os.kill(conversion.pid, signal.SIGKILL)
    conversion.join()
    deadline = time.monotonic() + 10
    while any(map(_running, writers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_running, writers)) and not out.exists() and _leftovers(tmp_path)
    monkeypatch.setattr(beton._ArrayItems, "__getitem__", item)
    convert_to_beton(fmnist_dir, tmp_path / "next.beton", split="test", progress=False)  # the next start cleans up
    assert not _leftovers(tmp_path)


def test_beton_of_the_test_split_is_refused_for_training(fmnist_dir, tmp_path):
    beton = tmp_path / "test.beton"
    convert_to_beton(fmnist_dir, beton, split="test", progress=False)
    with pytest.raises(ConfigError, match="holds the test split .* convert the train split") as raised:
        build_loader("ffcv", beton, split="train", batch_size=8, num_workers=1)
    assert "\n" not in str(raised.value)
    assert len(build_loader("ffcv", beton, split="test", batch_size=8, num_workers=1)) == 16


def test_beton_whose_source_now_holds_another_dataset(fmnist_dir, cifar10_dir, tmp_path):
    from rkd.train.data import DataOptions, evaluation_data
    source = shutil.copytree(fmnist_dir, tmp_path / "data")
    beton = tmp_path / "train.beton"
    convert_to_beton(source, beton, split="train", progress=False)
    assert evaluation_data(DataOptions(data=str(beton), loader="ffcv")) == str(source)
    shutil.rmtree(source)
    shutil.copytree(cifar10_dir, source)
    with pytest.raises(ConfigError, match="now holds another dataset \\(channels 1 then, 3 now") as raised:
        evaluation_data(DataOptions(data=str(beton), loader="ffcv"))
    assert "\n" not in str(raised.value)


def test_read_only_cache_dir_is_one_line(fmnist_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cache_dir .* cannot hold files") as raised:
        cached_beton(fmnist_dir, "test", cache_dir=blocker / "sub", progress=False)
    assert "\n" not in str(raised.value)
    with pytest.raises(ConfigError, match=f"output folder {blocker} cannot hold files") as raised:
        convert_to_beton(fmnist_dir, blocker / "out.beton", split="test", progress=False)
    assert "\n" not in str(raised.value)
