"""A distillation run killed with SIGKILL and resumed ends with the same metrics as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from formats import write_fashion_mnist
from rkd.train.checkpoint import load_checkpoint
from rkd.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data = write_fashion_mnist(root / "data", train=1536, test=256, seed=1)
    main(["train-teacher", "--data", str(data), "--arch", "resnet8", "--epochs", "1", "--batch-size", "128",
          "--runs-dir", str(root / "runs"), "--name", "teacher", "--no-progress", "--device", "cpu"])
    return root, data, root / "runs" / "teacher" / "checkpoints" / "best.pt"


def distill_argv(root, data, teacher, name):
    return [sys.executable, "-m", "rkd", "distill", "--data", str(data), "--teachers", str(teacher),
            "--teachers", str(teacher), "--arch", "resnet8", "--epochs", "3", "--batch-size", "64",
            "--magnitude", "7", "--policy", "none", "--runs-dir", str(root / "runs"), "--name", name,
            "--no-progress", "--device", "cpu"]


def records(root, name, kind="epoch"):
    path = root / "runs" / name / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [record for record in map(json.loads, lines) if record["kind"] == kind]


COMPARED = ("epoch", "test_acc", "train_acc", "agreement_ensemble", "train_loss", "train_ce", "train_kd", "lr",
            "kl_teacher_student", "nmi_st", "iou_st@0.4")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def whole(setup):
    """The uninterrupted run (3 epochs of 24 steps) that the killed ones must reproduce."""
    root, data, teacher = setup
    subprocess.run(distill_argv(root, data, teacher, "whole"), check=True, env=ENV, capture_output=True)
    return "whole"


def kill_when(argv, path, ready=lambda: True):
    """Start `argv`, SIGKILL it as soon as `path` exists and `ready()` holds; asserts it was still running."""
    victim = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (path.exists() and ready()) and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def assert_same_runs(root, name):
    """Epoch records, online step records and final weights of run `name` equal those of the whole run."""
    whole, again = records(root, "whole"), records(root, name)
    assert len(again) == len(whole) == 3
    for a, b in zip(whole, again):
        assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}
    assert records(root, "whole", "step") == records(root, name, "step")
    last_whole = load_checkpoint(root / "runs" / "whole" / "checkpoints" / "last.pt")
    last_again = load_checkpoint(root / "runs" / name / "checkpoints" / "last.pt")
    assert all(torch.equal(last_whole["model"][k], last_again["model"][k]) for k in last_whole["model"])


def test_killed_run_resumes_to_the_same_result(setup, whole):
    root, data, teacher = setup
    last = root / "runs" / "killed" / "checkpoints" / "last.pt"
    kill_when(distill_argv(root, data, teacher, "killed"), last)
    killed_at = len(records(root, "killed"))
    assert 1 <= killed_at < 3

    resumed = subprocess.run(distill_argv(root, data, teacher, "killed") + ["--resume"], env=ENV,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert_same_runs(root, "killed")
    assert [r["step"] for r in records(root, "killed", "step")] == [50]
    best_whole = load_checkpoint(root / "runs" / "whole" / "checkpoints" / "best.pt")
    best_again = load_checkpoint(root / "runs" / "killed" / "checkpoints" / "best.pt")
    assert best_whole["epoch"] == best_again["epoch"] and best_whole["best"] == best_again["best"]


def test_killed_mid_epoch_resumes_from_its_step_checkpoint(setup, whole):
    """--checkpoint-every 5: killed right after its first step checkpoint (step 5 of 24 in epoch 1), the run
    resumes in the middle of that epoch and ends bit-identical to the uninterrupted run."""
    root, data, teacher = setup
    argv = distill_argv(root, data, teacher, "mid") + ["--checkpoint-every", "5"]
    last = root / "runs" / "mid" / "checkpoints" / "last.pt"
    kill_when(argv, last)
    saved = load_checkpoint(last)
    assert saved["epoch"] == 0 and saved["progress"]["steps"] % 5 == 0 and saved["progress"]["steps"] < 24
    assert saved["progress"]["loaders"][0]["batches_yielded"] == saved["progress"]["steps"]
    assert records(root, "mid") == []

    resumed = subprocess.run(argv + ["--resume"], env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"after step {saved['progress']['steps']}/24 of epoch 1" in resumed.stdout
    assert_same_runs(root, "mid")
