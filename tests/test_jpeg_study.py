"""The whole study on an ImageNet-format JPEG tree written by `rkd make-jpeg-dataset`, with a timm architecture:
train-teacher (from scratch and fine-tuned from a local weights file), distill with rkd-trained and timm teachers
on every loader backend, analyze, and a 2-point sweep. Tiny: 30 train / 20 val images, 1 epoch, 64 px."""
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from pipelines.sources import open_source
from rkd.train.checkpoint import load_checkpoint
from rkd.cli import main
from test_cli import run_cli as run_cli_strings

ARCH = "test_resnet"  # timm's smallest ResNet; 2x2 feature maps at 64 px
TINY = ["--epochs", "1", "--batch-size", "16", "--image-size", "64", "--workers", "0", "--no-progress",
        "--device", "cpu"]


def run_cli(argv, capsys):
    """`rkd argv` in-process (paths allowed in argv); returns (exit code, stdout, stderr)."""
    return run_cli_strings([str(a) for a in argv], capsys)


def epoch_records(run):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]


@pytest.fixture(scope="module")
def study(fmnist_dir, tmp_path_factory):
    """A 32-px JPEG tree of the tiny Fashion-MNIST-format data, a timm weights file, one rkd-trained teacher."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("study")
    main(["make-jpeg-dataset", str(root / "tree"), "--source", str(fmnist_dir), "--size", "32",
          "--train-per-class", "3", "--val-per-class", "2"])
    torch.manual_seed(0)
    save_file(timm.create_model(ARCH, num_classes=10).state_dict(), str(root / "timm.safetensors"))
    main(["train-teacher", "--data", str(root / "tree"), "--arch", ARCH, "--runs-dir", str(root / "runs"),
          "--name", "teacher", *TINY])
    return root


def test_make_jpeg_dataset_writes_the_source_as_labelled_class_folders(fmnist_dir, tmp_path, capsys):
    code, out, err = run_cli(["make-jpeg-dataset", tmp_path / "t", "--source", fmnist_dir, "--size", "28",
                              "--train-per-class", "2", "--val-per-class", "1", "--quality", "95"], capsys)
    assert code == 0, err
    assert "wrote 30 28x28 JPEGs (10 classes)" in out
    arrays, tree = open_source(fmnist_dir, "train"), open_source(tmp_path / "t", "train")
    assert len(tree) == 20 and torch.bincount(tree.labels).tolist() == [2] * 10
    assert len(open_source(tmp_path / "t", "val")) == 10
    for path, label in zip(tree.files, tree.labels.tolist()):
        index = int(path.rsplit("_", 1)[1].split(".")[0])
        assert int(arrays.labels[index]) == label
        pixels = np.asarray(Image.open(path))
        assert pixels.shape == (28, 28, 3)
        assert np.abs(pixels.astype(int) - arrays.images[index, 0].numpy()[..., None]).mean() < 4
    code, _, err = run_cli(["make-jpeg-dataset", tmp_path / "t", "--source", fmnist_dir], capsys)
    assert code == 2 and "exists and is not empty; pass --force" in err


def test_train_teacher_on_the_tree(study):
    run = study / "runs" / "teacher"
    assert load_checkpoint(run / "checkpoints" / "best.pt")["arch"] == ARCH
    record = epoch_records(run)[0]
    assert 0 <= record["test_acc"] <= 1 and record["images_per_s"] > 0


def test_train_teacher_fine_tunes_a_local_timm_file(study, capsys):
    weights = study / "timm.safetensors"
    code, out, err = run_cli(["train-teacher", "--data", study / "tree", "--init", f"timm:{ARCH}@{weights}",
                              "--runs-dir", study / "runs", "--name", "tuned", *TINY], capsys)
    assert code == 0, err
    config = json.loads((study / "runs" / "tuned" / "config.json").read_text())
    assert config["init"] == f"timm:{ARCH}@{weights}" and config["arch"] == ARCH
    assert config["optim"]["lr"] == pytest.approx(0.01)  # a tenth of the imagefolder default
    code, _, err = run_cli(["train-teacher", "--data", study / "tree", "--init", f"timm:{ARCH}@{weights}",
                            "--arch", "resnet18", "--runs-dir", study / "runs", "--name", "x", *TINY], capsys)
    assert code == 2 and "--init timm:test_resnet" in err and "--arch is resnet18" in err


@pytest.mark.parametrize("loader", ["torch", "ffcv", "dali"])
def test_distill_from_an_rkd_teacher_and_a_timm_file(study, loader, tmp_path, monkeypatch, capsys):
    """`rkd distill --teachers RUN_DIR --teachers timm:NAME@FILE --loader L --magnitude 9` on the JPEG tree."""
    pytest.importorskip({"torch": "torch", "ffcv": "ffcv", "dali": "nvidia.dali"}[loader])
    monkeypatch.setenv("RKD_CACHE_DIR", str(tmp_path))
    code, out, err = run_cli(["distill", "--data", study / "tree", "--arch", ARCH, "--loader", loader,
                              "--magnitude", "9", "--teachers", study / "runs" / "teacher",
                              "--teachers", f"timm:{ARCH}@{study / 'timm.safetensors'}",
                              "--runs-dir", study / "runs", "--name", f"student-{loader}", *TINY], capsys)
    assert code == 0, err
    run = study / "runs" / f"student-{loader}"
    record = epoch_records(run)[0]
    for key in ("test_acc", "agreement_teacher0", "agreement_teacher1", "iou_tt@0.4", "iou_st@0.4"):
        assert 0 <= record[key] <= 1, key
    assert f"teacher1 ({ARCH})" in (run / "report.md").read_text()
    assert json.loads((run / "config.json").read_text())["data"]["loader"] == loader


def test_analyze_the_study(study, capsys):
    student = study / "runs" / "student-torch" / "checkpoints" / "best.pt"
    if not student.exists():
        pytest.skip("needs the torch distillation of test_distill_from_an_rkd_teacher_and_a_timm_file")
    code, out, err = run_cli(["analyze", "--data", study / "tree", "--image-size", "64", "--batch-size", "16",
                              "--teachers", study / "runs" / "teacher",
                              "--teachers", f"timm:{ARCH}@{study / 'timm.safetensors'}", "--student", student,
                              "--out", study / "analysis", "--device", "cpu", "--workers", "0"], capsys)
    assert code == 0, err
    results = json.loads((study / "analysis" / "analysis.json").read_text())
    assert results["images"] == 20 and 0 <= results["iou_st@0.4"] <= 1 and 0 <= results["teacher1_acc"] <= 1


def test_a_two_point_sweep_on_the_tree(study, capsys):
    code, out, err = run_cli(["sweep", "--data", study / "tree", "--arch", ARCH, "--teacher-arch", ARCH,
                              "--teacher-epochs", "1", "--num-teachers", "2", "--magnitudes", "0", "9",
                              "--analysis-images", "30", "--runs-dir", study / "sweeps", "--name", "s", *TINY],
                             capsys)
    assert code == 0, err
    points = json.loads((study / "sweeps" / "s" / "points.json").read_text())
    assert sorted(p["magnitude"] for p in points) == [0, 9]
    assert all(0 <= p["iou_tt@0.4"] <= 1 for p in points) and (study / "sweeps" / "s" / "report.md").is_file()
