"""The command line end to end on tiny data, and its one-line errors for bad input."""
import json

import pytest

from rkd.train.checkpoint import load_checkpoint, model_record, save_checkpoint
from rkd.cli import main
from rkd.models import create

TINY = ["--epochs", "1", "--batch-size", "64", "--no-progress", "--device", "cpu"]


def run_cli(argv, capsys):
    """Run `rkd argv` in-process; returns (exit code, stdout, stderr)."""
    code = 0
    try:
        main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def distilled(fmnist_dir, tmp_path_factory):
    """One tiny default-ensemble distillation run, shared by the tests that inspect it."""
    runs = tmp_path_factory.mktemp("runs")
    argv = ["distill", "--data", str(fmnist_dir), "--runs-dir", str(runs), "--teacher-arch", "resnet8",
            "--teacher-epochs", "1", "--arch", "resnet8", "--magnitude", "5", "--policy", "none", "--name", "tiny",
            "--metrics-every", "2", *TINY]
    main(argv)
    return runs, argv


@pytest.mark.parametrize("loader", ["ffcv", "dali"])
def test_distill_through_other_loaders(distilled, loader, tmp_path, monkeypatch, capsys):
    """`rkd distill --loader ffcv|dali --magnitude 9` with the cached default teachers: a finished run."""
    pytest.importorskip({"ffcv": "ffcv", "dali": "nvidia.dali"}[loader])
    monkeypatch.setenv("RKD_CACHE_DIR", str(tmp_path))
    runs, argv = distilled
    code, out, err = run_cli(["distill", "--data", argv[argv.index("--data") + 1], "--runs-dir", str(runs),
                              "--teacher-arch", "resnet8", "--teacher-epochs", "1", "--arch", "resnet8",
                              "--loader", loader, "--magnitude", "9", "--name", f"via-{loader}", *TINY], capsys)
    assert code == 0, err
    assert "using cached default teacher" in out
    data = json.loads((runs / f"via-{loader}" / "config.json").read_text())["data"]
    assert data["loader"] == loader and data["augment"]["policy"] == "randaugment" and data["augment"]["magnitude"] == 9
    epochs = [json.loads(line) for line in (runs / f"via-{loader}" / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "epoch"]
    assert len(epochs) == 1 and 0 <= epochs[0]["test_acc"] <= 1 and epochs[0]["images_per_s"] > 0


def test_distill_from_a_beton_file(distilled, tmp_path, capsys):
    """`rkd distill --data X.beton --loader ffcv`: trains from the file, evaluates on the source its sidecar names."""
    pytest.importorskip("ffcv")
    from pipelines.ffcv.beton import convert_to_beton

    _, argv = distilled
    source, runs = argv[argv.index("--data") + 1], tmp_path / "runs"
    beton = convert_to_beton(source, tmp_path / "train.beton", progress=False).path
    code, out, err = run_cli(["distill", "--data", str(beton), "--loader", "ffcv", "--runs-dir", str(runs),
                              "--teacher-arch", "resnet8", "--teacher-epochs", "1", "--arch", "resnet8",
                              "--name", "from-beton", *TINY], capsys)
    assert code == 0, err
    epochs = [json.loads(line) for line in (runs / "from-beton" / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "epoch"]
    assert len(epochs) == 1 and 0 <= epochs[0]["test_acc"] <= 1


def test_distill_writes_the_run_directory(distilled):
    runs, _ = distilled
    run = runs / "tiny"
    for name in ("config.json", "metrics.jsonl", "report.md", "checkpoints/last.pt", "checkpoints/best.pt",
                 "plots/accuracy.png", "plots/loss.png", "plots/attention.png", "plots/fidelity.png",
                 "plots/online.png"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    steps = [r for r in records if r["kind"] == "step"]
    assert len(epochs) == 1 and [s["step"] for s in steps] == [2, 4]  # 4 steps, --metrics-every 2
    for key in ("iou_tt@0.4", "iou_st@0.4", "batch_agreement_st", "batch_kl_teacher_student"):
        assert all(0 <= s[key] for s in steps), key
    record = epochs[0]
    for key in ("test_acc", "train_acc", "gap", "agreement_ensemble", "agreement_teacher0", "agreement_teacher1",
                "images_per_s", "data_wait_share", "train_loss", "iou_tt@0.4", "iou_st@0.4",
                "iou_tt_pooled@0.4", "soft_iou_st", "mi_st", "nmi_st", "kl_teacher_student",
                "ece_student"):
        assert key in record, key
    assert 0 <= record["iou_st@0.4"] <= 1 and 0 <= record["nmi_st"] <= 1
    assert 0 <= record["test_acc"] <= 1 and 0 <= record["data_wait_share"] <= 1
    assert record["gap"] == pytest.approx(record["train_acc"] - record["test_acc"])
    payload = load_checkpoint(run / "checkpoints" / "best.pt")
    assert payload["arch"] == "resnet8" and len(payload["teachers"]) == 2
    report = (run / "report.md").read_text()
    assert "teacher0 (resnet8)" in report and "student (resnet8)" in report
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["augment"]["policy"] == "none" and config["kd"]["alpha"] == 0.6


def test_default_teachers_are_cached_and_reused(distilled, capsys):
    runs, argv = distilled
    teachers = sorted(t.name for t in (runs / "teachers").iterdir())
    assert teachers == ["teacher-mnist-resnet8-none-s0", "teacher-mnist-resnet8-none-s1"]
    argv = [a if a != "tiny" else "again" for a in argv]
    code, out, _ = run_cli(argv, capsys)
    assert code == 0
    assert out.count("using cached default teacher") == 2 and "training default teacher" not in out
    assert "| student (resnet8) |" in out


def test_existing_run_needs_resume(distilled, capsys):
    _, argv = distilled
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "exists: pass --resume" in err
    code, out, _ = run_cli(argv + ["--resume"], capsys)
    assert code == 0 and "| student (resnet8) |" in out


def test_train_teacher(fmnist_dir, tmp_path, capsys):
    code, out, _ = run_cli(["train-teacher", "--data", str(fmnist_dir), "--arch", "resnet8", "--runs-dir",
                            str(tmp_path), "--name", "t", *TINY], capsys)
    assert code == 0 and (tmp_path / "t" / "checkpoints" / "best.pt").is_file()
    assert json.loads((tmp_path / "t" / "config.json").read_text())["data"]["augment"]["policy"] == "none"


def bad_teacher(tmp_path, classes):
    path = tmp_path / f"teacher{classes}.pt"
    save_checkpoint(path, model_record(create("resnet8", classes, 28, 1), "resnet8", classes, 28, 1))
    return path


@pytest.mark.parametrize("extra,message", [
    (["--data", "/nowhere/at/all"], "--data: /nowhere/at/all does not exist"),
    (["--loader", "tf"], "Invalid value for '--loader'"),
    (["--arch", "resnet9000"], "unknown --arch 'resnet9000'"),
    (["--policy", "mixup"], "Invalid value for '--policy'"),
    (["--magnitude", "31"], "magnitude 31 is outside 0..30"),
    (["--magnitude", "-1"], "magnitude -1 is outside 0..30"),
    (["--alpha", "1.5"], "--alpha"),
    (["--teachers", "/nowhere/t.pt"], "--teachers: /nowhere/t.pt does not exist"),
])
def test_bad_input_is_one_line(fmnist_dir, tmp_path, capsys, extra, message):
    argv = ["distill", "--data", str(fmnist_dir), "--runs-dir", str(tmp_path), *TINY, *extra]
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_mismatched_and_corrupt_teachers(fmnist_dir, tmp_path, capsys):
    wrong = bad_teacher(tmp_path, 100)
    code, _, err = run_cli(["distill", "--data", str(fmnist_dir), "--runs-dir", str(tmp_path), "--teachers",
                            str(wrong), *TINY], capsys)
    assert code == 2 and "predicts 100 classes but the data has 10" in err and len(err.strip().splitlines()) == 1
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(bad_teacher(tmp_path, 10).read_bytes()[:500])
    code, _, err = run_cli(["distill", "--data", str(fmnist_dir), "--runs-dir", str(tmp_path), "--name", "c",
                            "--teachers", str(corrupt), *TINY], capsys)
    assert code == 2 and "is truncated (an interrupted write or copy)" in err and len(err.strip().splitlines()) == 1


def test_malformed_data_folder(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "readme.txt").write_text("nothing")
    code, _, err = run_cli(["train-teacher", "--data", str(tmp_path / "data"), *TINY], capsys)
    assert code == 2 and "not a dataset this project reads" in err
