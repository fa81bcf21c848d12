"""A distillation run killed with SIGKILL and resumed ends with the same metrics as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

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
    lines = (root / "runs" / name / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["kind"] == kind]


COMPARED = ("epoch", "test_acc", "train_acc", "agreement_ensemble", "train_loss", "lr")


def test_killed_run_resumes_to_the_same_result(setup):
    root, data, teacher = setup
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(distill_argv(root, data, teacher, "whole"), check=True, env=env, capture_output=True)

    victim = subprocess.Popen(distill_argv(root, data, teacher, "killed"), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    last = root / "runs" / "killed" / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while not last.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = len(records(root, "killed"))
    assert 1 <= killed_at < 3

    resumed = subprocess.run(distill_argv(root, data, teacher, "killed") + ["--resume"], env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    whole, again = records(root, "whole"), records(root, "killed")
    assert len(again) == len(whole) == 3
    for a, b in zip(whole, again):
        assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}
    steps_whole, steps_again = records(root, "whole", "step"), records(root, "killed", "step")
    assert [r["step"] for r in steps_whole] == [r["step"] for r in steps_again] == [50]
    assert steps_whole == steps_again
    best_whole = load_checkpoint(root / "runs" / "whole" / "checkpoints" / "best.pt")
    best_again = load_checkpoint(root / "runs" / "killed" / "checkpoints" / "best.pt")
    assert best_whole["epoch"] == best_again["epoch"] and best_whole["best"] == best_again["best"]
