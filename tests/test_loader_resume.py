"""Mid-epoch resume on every backend: `state_dict()` between batches, `load_state_dict()` on a fresh loader, and the
remaining batches are bit-identical to the uninterrupted loader's, whatever the number of workers."""
from __future__ import annotations

import io

import pytest
import torch

import pipelines
from pipelines import AugmentSpec, ConfigError, build_loader

AUGMENT = AugmentSpec("randaugment", magnitude=9)
BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(not pipelines.backend_available(name),
                                                         reason=f"needs the {name} package"))
            for name in pipelines.BACKENDS]


def make(backend, source, workers, tmp_path, **kwargs):
    options = dict(split="train", batch_size=32, seed=3, augment=AUGMENT, num_workers=workers)
    if backend == "ffcv":
        options["cache_dir"] = tmp_path / "beton"
    return build_loader(backend, source, **{**options, **kwargs})


def through_torch_save(state: dict) -> dict:
    """The state after a round trip through torch.save / torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_same_batches(ours: list, theirs: list) -> None:
    assert len(ours) == len(theirs)
    for (x, y), (x_ref, y_ref) in zip(ours, theirs):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("data", ["fmnist_dir", "jpeg_tree"])
def test_resume_mid_epoch_yields_the_remaining_batches(request, backend, data, tmp_path):
    source = request.getfixturevalue(data)
    size = {"image_size": 32, "batch_size": 4} if data == "jpeg_tree" else {}
    reference = make(backend, source, 1, tmp_path, **size)
    reference.set_epoch(1)
    epoch_one = list(reference)
    reference.set_epoch(2)
    epoch_two = list(reference)
    stop = len(epoch_one) // 2

    interrupted = make(backend, source, 1, tmp_path, **size)
    interrupted.set_epoch(1)
    batches = iter(interrupted)
    for count in range(1, stop + 1):
        next(batches)
        assert interrupted.state_dict()["batches_yielded"] == count
    state = through_torch_save(interrupted.state_dict())
    del batches

    resumed = make(backend, source, 2, tmp_path, **size)   # another worker count
    resumed.load_state_dict(state)
    resumed.set_epoch(1)                                   # the same epoch again keeps the resumed position
    assert_same_batches(list(resumed), epoch_one[stop:])
    assert resumed.state_dict()["batches_yielded"] == len(resumed)
    resumed.set_epoch(2)
    assert_same_batches(list(resumed), epoch_two)


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_at_the_start_and_the_end_of_an_epoch(backend, fmnist_dir, tmp_path):
    loader = make(backend, fmnist_dir, 1, tmp_path)
    epoch = list(loader)
    at_start = make(backend, fmnist_dir, 1, tmp_path)
    at_start.load_state_dict(make(backend, fmnist_dir, 1, tmp_path).state_dict())
    assert_same_batches(list(at_start), epoch)
    at_end = make(backend, fmnist_dir, 1, tmp_path)
    at_end.load_state_dict(loader.state_dict())
    assert list(at_end) == []
    assert_same_batches(list(at_end), epoch)               # a finished resume: the next pass is the whole epoch


def test_state_is_plain_data_and_counts_batches(fmnist_dir, tmp_path):
    loader = make("torch", fmnist_dir, 0, tmp_path)
    loader.set_epoch(4)
    batches = iter(loader)
    assert loader.state_dict()["batches_yielded"] == 0
    next(batches), next(batches)
    state = loader.state_dict()
    assert through_torch_save(state) == state
    assert (state["epoch"], state["batches_yielded"]) == (4, 2)
    plain = (int, str)
    assert all(isinstance(key, str) and isinstance(value, plain) for key, value in state.items())
    loader.set_epoch(5)
    assert (loader.state_dict()["epoch"], loader.state_dict()["batches_yielded"]) == (5, 0)


@pytest.mark.parametrize("change, named", [
    (dict(seed=4), "seed"), (dict(batch_size=16), "batch_size"), (dict(world_size=2), "world_size"),
    (dict(world_size=2, rank=1), "world_size"), (dict(split="test"), "split"), (dict(drop_last=False), "drop_last"),
])
def test_a_state_of_other_arguments_is_refused(fmnist_dir, cifar10_dir, tmp_path, change, named):
    state = make("torch", fmnist_dir, 0, tmp_path).state_dict()
    other = make("torch", fmnist_dir, 0, tmp_path, **change)
    with pytest.raises(ConfigError, match=rf"^load_state_dict: state was saved with {named} .*{named}$"):
        other.load_state_dict(state)


def test_a_state_of_another_source_rank_or_backend_is_refused(fmnist_dir, cifar10_dir, tmp_path):
    state = make("torch", fmnist_dir, 0, tmp_path, world_size=2).state_dict()
    for other, named in ((make("torch", cifar10_dir, 0, tmp_path, world_size=2), "source"),
                         (make("torch", fmnist_dir, 0, tmp_path, world_size=2, rank=1), "rank")):
        with pytest.raises(ConfigError, match=rf"^load_state_dict: state was saved with {named} "):
            other.load_state_dict(state)
    if pipelines.backend_available("dali"):
        with pytest.raises(ConfigError, match="^load_state_dict: state was saved with backend 'torch'"):
            make("dali", fmnist_dir, 1, tmp_path, world_size=2).load_state_dict(state)


@pytest.mark.parametrize("state, message", [
    ([1, 2], "must be the dict"), ({"epoch": 0}, "lacks version"),
    ("version", "must be the dict"),
])
def test_malformed_states_are_refused_in_one_line(fmnist_dir, tmp_path, state, message):
    with pytest.raises(ConfigError, match=f"^load_state_dict: state .*{message}"):
        make("torch", fmnist_dir, 0, tmp_path).load_state_dict(state)


@pytest.mark.parametrize("key, value", [("epoch", -1), ("epoch", 1.5), ("batches_yielded", -1),
                                        ("batches_yielded", 2.0), ("batches_yielded", 9)])
def test_out_of_range_positions_are_refused(fmnist_dir, tmp_path, key, value):
    loader = make("torch", fmnist_dir, 0, tmp_path)   # 8 batches per epoch
    with pytest.raises(ConfigError, match="^load_state_dict: state's epoch"):
        loader.load_state_dict({**loader.state_dict(), key: value})
