"""Shared fixtures: tiny datasets in real formats, written once per session."""
from __future__ import annotations

import pytest

from formats import write_cifar10, write_cifar100, write_fashion_mnist, write_jpeg_tree


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory):
    """Conversions and tree scans of the tests go to a temporary cache folder, not the user's ~/.cache/rkd."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RKD_CACHE_DIR", str(tmp_path_factory.mktemp("rkd-cache")))
        yield


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory):
    """A tiny Fashion-MNIST-format folder (256 train / 128 test)."""
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("cifar10"))


@pytest.fixture(scope="session")
def cifar100_dir(tmp_path_factory):
    return write_cifar100(tmp_path_factory.mktemp("cifar100"))


@pytest.fixture(scope="session")
def jpeg_tree(tmp_path_factory):
    return write_jpeg_tree(tmp_path_factory.mktemp("jpegs"))
