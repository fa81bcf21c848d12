"""Hostile data, one class of defect per test: every case ends in one line naming the file or parameter, before
any batch, with nothing executed, nothing hung and nothing left behind."""
from __future__ import annotations

import io
import math
import multiprocessing
import os
import pickle
import resource
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from formats import write_cifar10, write_jpeg_tree
from pipelines import AugmentSpec, ConfigError, build_loader, open_source
from pipelines import validate
from pipelines.crops import EvalResizeCrop
from torchvision.transforms import v2

def one_line(err: BaseException) -> str:
    text = str(err)
    assert text and "\n" not in text and "Traceback" not in text
    return text


# ------------------------------------------------------------------------------- CIFAR pickles execute nothing
class _Marker:
    """Unpickling this runs os.system: the payload a hostile data_batch_1 would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Other:
    """A class a CIFAR pickle never holds (pickled by reference to this test module)."""


@pytest.mark.parametrize("payload", ["system", "eval", "other_class", "not_a_dict"])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_pickle_runs_no_code(tmp_path, payload, protocol):
    root = write_cifar10(tmp_path / "cifar", per_batch=10)
    marker = tmp_path / "MARKER"
    content = {"system": lambda: {b"data": _Marker(marker), b"labels": [0]},
               "eval": lambda: {b"data": _EvalPayload(marker), b"labels": [0]},
               "other_class": lambda: {b"data": _Other(), b"labels": [0]},
               "not_a_dict": lambda: [np.zeros((1, 3072), np.uint8)]}[payload]()
    (root / "data_batch_3").write_bytes(pickle.dumps(content, protocol=protocol))
    with pytest.raises(ConfigError, match="data_batch_3") as raised:
        open_source(root, "train")
    assert "replace it with the file from the CIFAR download" in one_line(raised.value)
    assert not marker.exists()


class _EvalPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w')",)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_real_cifar_pickles_still_read(tmp_path, protocol):
    """The original CIFAR files are protocol-2 pickles of numpy arrays; newer protocols spell arrays otherwise."""
    root = write_cifar10(tmp_path / "cifar", per_batch=10)
    rng = np.random.default_rng(protocol)
    data = rng.integers(0, 256, (10, 3072), dtype=np.uint8)
    entry = {b"batch_label": b"training batch 1 of 5", b"labels": list(range(10)), b"data": data,
             b"filenames": [f"img{i}.png".encode() for i in range(10)]}
    (root / "data_batch_1").write_bytes(pickle.dumps(entry, protocol=protocol))
    source = open_source(root, "train")
    assert torch.equal(source.images[:10], torch.from_numpy(data.reshape(10, 3, 32, 32)))
    assert source.labels[:10].tolist() == list(range(10))


def test_cifar_pickle_with_out_of_range_labels(tmp_path):
    root = write_cifar10(tmp_path / "cifar", per_batch=10)
    (root / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 12]}))
    with pytest.raises(ConfigError, match=r"test_batch needs one label in 0..9") as raised:
        open_source(root, "test")
    one_line(raised.value)


# ------------------------------------------------------------------------- class-folder trees checked up front
def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _bad_file(kind: str, path: Path) -> Path:
    """Write one bad file of `kind` at `path` (a name the tree listing accepts); returns the path."""
    rng = np.random.default_rng(0)
    good_jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(good_jpeg, format="JPEG")
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is a text file named like an image\n")
    elif kind == "truncated_jpeg":
        path.write_bytes(good_jpeg.getvalue()[:len(good_jpeg.getvalue()) // 2])
    elif kind == "garbage_after_marker":
        path.write_bytes(b"\xff\xd8\xff" + bytes(rng.integers(0, 255, 300, dtype=np.uint8)))
    elif kind == "truncated_png":
        path = path.with_suffix(".png")
        data = _png_bytes(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
        path.write_bytes(data[:len(data) // 2])
    elif kind == "png16":
        path = path.with_suffix(".png")
        Image.fromarray(rng.integers(0, 65535, (12, 16), dtype=np.uint16)).save(path)
    elif kind == "gif":
        Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(path, format="GIF")
    elif kind == "dangling":
        path.symlink_to(path.parent / "gone.jpg")
    return path


BAD_KINDS = {"empty": "an empty file", "text": "not a JPEG, PNG or WebP image",
             "truncated_jpeg": "not decodable", "garbage_after_marker": "not decodable",
             "truncated_png": "not decodable", "png16": "a 16-bit PNG", "gif": "a GIF",
             "dangling": "a dangling symlink"}


@pytest.fixture()
def small_tree(tmp_path) -> Path:
    return write_jpeg_tree(tmp_path / "tree", classes=2, train_per_class=5, val_per_class=2, size=(16, 12))


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_bad_file_refused_before_the_first_batch(small_tree, kind):
    bad = _bad_file(kind, small_tree / "train" / "n00000001" / "zzz_last.jpg")  # last in the reading order
    with pytest.raises(ConfigError) as raised:
        build_loader("torch", small_tree, split="train", batch_size=2, image_size=8, num_workers=0)
    text = one_line(raised.value)
    assert f"{bad} ({BAD_KINDS[kind]}" in text and "1 of 11 images" in text and "on_bad_file='skip'" in text


def test_skip_leaves_bad_files_out_with_a_count(small_tree, capfd):
    for i, kind in enumerate(("truncated_jpeg", "text")):
        _bad_file(kind, small_tree / "train" / f"n0000000{i}" / "zzz_bad.jpg")
    loader = build_loader("torch", small_tree, split="train", batch_size=2, image_size=8, num_workers=0,
                          on_bad_file="skip", drop_last=False)
    batches = list(loader)
    assert sum(len(labels) for _, labels in batches) == 10 and len(loader) == 5
    err = capfd.readouterr().err
    assert err.count("skipping the 2 of 12 images") == 1 and "zzz_bad.jpg" in err
    open_source(small_tree, "train", on_bad_file="skip")
    assert "skipping" not in capfd.readouterr().err  # said once per tree


def test_scan_is_cached_until_a_file_changes(small_tree, monkeypatch):
    files = open_source(small_tree, "train").files
    calls = []
    monkeypatch.setattr(validate, "inspect_file", lambda path: calls.append(path) or (None, (12, 16)))
    open_source(small_tree, "train")
    assert calls == []  # every file stated, none opened
    os.utime(files[3], ns=(1, 1))
    open_source(small_tree, "train")
    assert len(calls) == len(files)


@pytest.mark.parametrize("bad_value", ["maybe", ""])
def test_on_bad_file_choices(small_tree, bad_value):
    with pytest.raises(ValueError, match="on_bad_file must be one of error, skip") as raised:
        build_loader("torch", small_tree, split="train", batch_size=2, image_size=8, on_bad_file=bad_value)
    one_line(raised.value)


def test_unusable_cache_dir_is_one_line(small_tree, tmp_path, monkeypatch):
    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("")
    monkeypatch.setenv("RKD_CACHE_DIR", str(not_a_folder))
    with pytest.raises(ConfigError, match="RKD_CACHE_DIR") as raised:
        open_source(small_tree, "train")
    assert str(not_a_folder) in one_line(raised.value)


def test_cli_refuses_a_bad_tree_before_training(small_tree, tmp_path, capsys):
    from rkd.cli import main
    bad = _bad_file("truncated_png", small_tree / "val" / "n00000001" / "zzz.jpg")
    with pytest.raises(SystemExit) as exit_:
        main(["train-teacher", "--data", str(small_tree), "--runs-dir", str(tmp_path / "runs"), "--epochs", "1",
              "--image-size", "16", "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and str(bad) in err and "--on-bad-file skip" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_dali_loader_checks_up_front_and_skips(small_tree, capfd):
    pytest.importorskip("nvidia.dali", reason="the dali backend needs nvidia-dali")
    bad = _bad_file("gif", small_tree / "train" / "n00000001" / "zzz_last.jpg")  # PIL and torchvision read it
    with pytest.raises(ConfigError, match=f"{bad} \\(a GIF"):
        build_loader("dali", small_tree, split="train", batch_size=2, image_size=8, num_workers=1)
    loader = build_loader("dali", small_tree, split="train", batch_size=2, image_size=8, num_workers=1,
                          on_bad_file="skip")
    assert sum(len(labels) for _, labels in loader) == 10
    assert "skipping the 1 of 11 images" in capfd.readouterr().err


def test_dali_mid_epoch_failure_is_the_projects_sentence(small_tree):
    """A file that breaks after the check (here: truncated once the loader exists) is named in one line."""
    pytest.importorskip("nvidia.dali", reason="the dali backend needs nvidia-dali")
    loader = build_loader("dali", small_tree, split="val", batch_size=2, image_size=8, num_workers=1)
    broken = Path(loader.source.files[-1])
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(ConfigError) as raised:
        list(loader)
    text = one_line(raised.value)
    assert str(broken) in text and "remove or replace the file" in text
    assert "nvImageCodec" not in text and ".cpp" not in text


# ----------------------------------------------------------------------------------- library parameter checks
@pytest.mark.parametrize("kwargs,parameter", [
    (dict(batch_size=0), "batch_size"), (dict(batch_size=-3), "batch_size"), (dict(batch_size=2.5), "batch_size"),
    (dict(batch_size=True), "batch_size"), (dict(image_size=0), "image_size"), (dict(image_size=-8), "image_size"),
    (dict(image_size=float("nan")), "image_size"), (dict(num_workers=-1), "num_workers"),
    (dict(rank=2, world_size=2), "rank"), (dict(rank=-1), "rank"), (dict(world_size=0), "world_size"),
    (dict(seed=-5), "seed"), (dict(split="validation"), "split"), (dict(augment="randaugment"), "augment"),
    (dict(device="gpu0"), "device"), (dict(device=3.5), "device"),
    *([(dict(device="cuda"), "device")] if not torch.cuda.is_available() else []),
])
def test_build_loader_parameters(fmnist_dir, kwargs, parameter):
    options = {**dict(split="train", batch_size=8), **kwargs}
    with pytest.raises(ValueError, match=f"^build_loader: {parameter}") as raised:
        build_loader("torch", fmnist_dir, **options)
    one_line(raised.value)


@pytest.mark.parametrize("kwargs,parameter", [
    (dict(magnitude=9.5), "magnitude"), (dict(magnitude=math.nan), "magnitude"), (dict(magnitude=-1), "magnitude"),
    (dict(magnitude=31), "magnitude"), (dict(magnitude=np.float32(3)), "magnitude"),
    (dict(magnitude_std=math.nan), "magnitude_std"), (dict(magnitude_std=-0.5), "magnitude_std"),
    (dict(magnitude_std=math.inf), "magnitude_std"), (dict(cutout=-4), "cutout"), (dict(cutout=2.5), "cutout"),
    (dict(num_ops=0), "num_ops"), (dict(num_magnitude_bins=1), "num_magnitude_bins"),
    (dict(policy="mixup"), "policy"), (dict(autoaugment_policy="svhm"), "autoaugment_policy"),
])
def test_augment_spec_parameters(kwargs, parameter):
    with pytest.raises(ValueError, match=f"^AugmentSpec: .*{parameter}") as raised:
        AugmentSpec(**{"policy": "randaugment", **kwargs})
    one_line(raised.value)


def test_integer_magnitudes_of_any_integer_type_are_bins():
    assert AugmentSpec("randaugment", magnitude=np.int64(9)).magnitude == 9


def test_batch_larger_than_the_training_split(fmnist_dir):
    with pytest.raises(ConfigError, match="batch_size 512 with drop_last leaves no batch of the train split") as r:
        build_loader("torch", fmnist_dir, split="train", batch_size=512)
    one_line(r.value)
    assert len(build_loader("torch", fmnist_dir, split="train", batch_size=512, drop_last=False)) == 1


# ------------------------------------------------------------------------------- the evaluation crop's memory
def test_eval_crop_matches_torchvision_and_bounds_wide_images():
    image = torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8)
    reference = v2.Compose([v2.Resize(64, antialias=True), v2.CenterCrop(56)])
    assert torch.equal(EvalResizeCrop(56, 64)(image), reference(image))
    wide = torch.randint(0, 256, (3, 1, 2000), dtype=torch.uint8)
    assert EvalResizeCrop(224, 256)(wide).shape == (3, 224, 224)


def _first_batch_peak_growth_mb(tree: Path, answer) -> None:
    """In a forked process: (images in the first evaluation batch, growth of the peak resident memory in MB)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loader = build_loader("torch", tree, split="val", batch_size=2, image_size=224, num_workers=0)
    images, _ = next(iter(loader))
    answer.send((len(images), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024))


def test_wide_image_does_not_blow_up_the_evaluation_loader(tmp_path):
    """A 2000x1 PNG in val/: the evaluation loader's peak memory stays far below the ~1.4 GB it once took."""
    tree = write_jpeg_tree(tmp_path / "tree", classes=1, train_per_class=1, val_per_class=1, size=(16, 12))
    Image.fromarray(np.full((1, 2000, 3), 200, np.uint8)).save(tree / "val" / "n00000000" / "wide.png")
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_first_batch_peak_growth_mb, args=(tree, send))
    child.start()
    assert receive.poll(120), "the evaluation loader did not answer"
    count, grown_mb = receive.recv()
    child.join()
    assert count == 2 and grown_mb < 300
