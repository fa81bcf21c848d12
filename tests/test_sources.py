"""Data sources read the real formats; malformed input is a one-line ConfigError naming the path."""
import pickle

import numpy as np
import pytest
import torch

from formats import write_idx
from pipelines import ConfigError, open_source
from pipelines.sources import detect_format


def test_fashion_mnist_idx(fmnist_dir):
    train, test = open_source(fmnist_dir, "train"), open_source(fmnist_dir, "test")
    assert train.images.shape == (256, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (128, 1, 28, 28) and len(test) == 128
    assert train.labels.dtype == torch.int64 and set(train.labels.tolist()) == set(range(10))
    assert train.num_classes == 10 and train.channels == 1 and train.native_size == 28


def test_cifar10_and_cifar100(cifar10_dir, cifar100_dir):
    c10 = open_source(cifar10_dir, "train")
    assert c10.images.shape == (100, 3, 32, 32) and c10.num_classes == 10
    assert open_source(cifar10_dir, "test").images.shape == (20, 3, 32, 32)
    c100 = open_source(cifar100_dir, "test")
    assert c100.num_classes == 100 and c100.labels.max() == 39 and detect_format(cifar100_dir) == "cifar100"


def test_cifar_rows_are_channel_planes(tmp_path):
    """CIFAR stores 1024 red, then green, then blue bytes per row."""
    data = np.zeros((1, 3072), dtype=np.uint8)
    data[0, 1024:2048] = 200
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": [3]}, f)
    image = open_source(tmp_path, "test").images[0]
    assert image[1].min() == 200 and image[0].max() == 0 and image[2].max() == 0


def test_image_folder(jpeg_tree):
    train, val = open_source(jpeg_tree, "train"), open_source(jpeg_tree, "val")
    assert len(train) == 12 and len(val) == 6 and train.classes == val.classes
    assert train.labels.tolist() == sorted(train.labels.tolist())


def test_missing_path(tmp_path):
    with pytest.raises(ConfigError, match=r"^source: .*nowhere does not exist"):
        open_source(tmp_path / "nowhere", "train")


def test_unknown_folder(tmp_path):
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a dataset this project reads"):
        open_source(tmp_path, "train")


def test_truncated_idx(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8))
    (tmp_path / "train-images-idx3-ubyte").write_bytes((tmp_path / "train-images-idx3-ubyte").read_bytes()[:100])
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(ConfigError, match="not a valid IDX file"):
        open_source(tmp_path, "train")


def test_malformed_cifar_pickle(tmp_path):
    for name in ("data_batch_1", "test_batch"):
        (tmp_path / name).write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match="not a CIFAR python pickle"):
        open_source(tmp_path, "train")


def test_unknown_split(fmnist_dir):
    with pytest.raises(ConfigError, match="unknown split"):
        open_source(fmnist_dir, "holdout")


def test_checked_sources_pass_through_and_subsets_stay_checked(jpeg_tree, monkeypatch):
    from pipelines import sources
    train = open_source(jpeg_tree, "train")
    assert train.checked and sources.take(train, torch.tensor([0, 3])).checked
    monkeypatch.setattr(sources, "usable_indices", lambda *args: pytest.fail("a checked source was checked again"))
    assert open_source(train, "train") is train
    unchecked = sources.dataclasses.replace(train, checked=False)
    monkeypatch.undo()
    assert open_source(unchecked, "train").checked


def test_cifar_pickle_of_a_numpy_object_array_is_refused(tmp_path):
    """An object array unpickles element by element through globals a CIFAR file never holds."""
    rows = np.empty(1, dtype=object)
    rows[0] = pickle.loads  # a function inside an array
    for name in ("data_batch_1", "test_batch"):
        (tmp_path / name).write_bytes(pickle.dumps({b"data": rows, b"labels": [0]}, protocol=2))
    with pytest.raises(ConfigError, match="data_batch_1 is not a CIFAR python pickle .*pickle.loads, which"):
        open_source(tmp_path, "train")
