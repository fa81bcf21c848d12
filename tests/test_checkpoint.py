"""Checkpoints: atomic writes, weights-only loading, clear errors for corrupt or mismatched files."""
import pytest
import torch

from pipelines.errors import ConfigError
from rkd.train.checkpoint import load_checkpoint, load_model, model_record, save_checkpoint
from rkd.models import create


def saved_model(path, arch="resnet8", classes=10, chans=1):
    model = create(arch, classes, 28, chans)
    save_checkpoint(path, {**model_record(model, arch, classes, 28, chans), "epoch": 1})
    return model


def test_roundtrip(tmp_path):
    model = saved_model(tmp_path / "m.pt")
    loaded, payload = load_model(tmp_path / "m.pt", num_classes=10, in_chans=1)
    assert payload["epoch"] == 1 and payload["arch"] == "resnet8"
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"], "no temporary file is left behind"


def test_failed_write_keeps_the_old_file(tmp_path):
    saved_model(tmp_path / "m.pt")
    before = (tmp_path / "m.pt").read_bytes()
    with pytest.raises(Exception):
        save_checkpoint(tmp_path / "m.pt", {"bad": lambda: 0})  # not picklable: the write fails midway
    assert (tmp_path / "m.pt").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_truncated_file(tmp_path):
    saved_model(tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "m.pt").write_bytes(data[:len(data) // 2])
    with pytest.raises(ConfigError, match=r"m.pt is truncated \(an interrupted write or copy\): restore a good copy"):
        load_checkpoint(tmp_path / "m.pt")


def test_foreign_file(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="not an rkd checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_pickled_code_is_refused(tmp_path):
    torch.save({"format": "rkd-checkpoint-v1", "obj": torch.nn.Linear(2, 2)}, tmp_path / "code.pt")
    with pytest.raises(ConfigError, match="holds Python objects beyond tensors and plain values, which rkd refuses"):
        load_checkpoint(tmp_path / "code.pt")


def test_class_count_and_channels_mismatch(tmp_path):
    saved_model(tmp_path / "m.pt", classes=100)
    with pytest.raises(ConfigError, match="predicts 100 classes but the data has 10"):
        load_model(tmp_path / "m.pt", num_classes=10)
    with pytest.raises(ConfigError, match="takes 1-channel images but the data has 3"):
        load_model(tmp_path / "m.pt", in_chans=3)


def test_architecture_mismatch(tmp_path):
    model = create("resnet20", 10, 28, 1)
    save_checkpoint(tmp_path / "m.pt", model_record(model, "resnet8", 10, 28, 1))
    with pytest.raises(ConfigError, match="weights do not fit architecture 'resnet8'"):
        load_model(tmp_path / "m.pt")


@pytest.mark.parametrize("content,reason", [
    (b"", "is empty"),
    (b"PK\x03\x04" + bytes(200), "is truncated"),
    (b"#!/bin/sh\nrm -rf /\n", "is not a torch checkpoint"),
    (bytes(range(256)) * 8, "is not a torch checkpoint"),
])
def test_unreadable_files_get_our_own_words(tmp_path, content, reason):
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_checkpoint(tmp_path / "x.pt", "--teachers")
    message = str(caught.value)
    assert message.startswith(f"--teachers: {tmp_path / 'x.pt'} {reason}") and "\n" not in message
    assert "Weights only" not in message and "miniz" not in message


def test_a_folder_is_not_a_checkpoint(tmp_path):
    saved_model(tmp_path / "run" / "checkpoints" / "best.pt")
    with pytest.raises(ConfigError, match=r"run is a folder, not a checkpoint file: pass .*run/checkpoints/best.pt"):
        load_checkpoint(tmp_path / "run", "--teachers")
    with pytest.raises(ConfigError, match="is a folder, not a checkpoint file: pass a .pt file"):
        load_checkpoint(tmp_path, "--teachers")

