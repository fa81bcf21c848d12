"""torchrun with two CPU processes (gloo): DDP distillation runs end to end and only rank 0 writes."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.skipif(not TORCHRUN.exists(), reason="needs torchrun next to the Python interpreter")
def test_torchrun_two_processes(fmnist_dir, tmp_path):
    runs = tmp_path / "runs"
    argv = [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", "29533", "-m", "rkd", "distill",
            "--data", str(fmnist_dir), "--teacher-arch", "resnet8", "--teacher-epochs", "1", "--epochs", "1",
            "--batch-size", "32", "--policy", "none", "--runs-dir", str(runs), "--name", "ddp", "--no-progress",
            "--device", "cpu"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("training default teacher 1/2") == 1, "only rank 0 logs"
    records = [json.loads(line) for line in (runs / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and "test_acc" in records[0]
    assert (runs / "ddp" / "checkpoints" / "best.pt").is_file()
