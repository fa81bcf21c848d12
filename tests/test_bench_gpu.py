"""`python -m bench gpu --dry-run`: the prepared GPU check runs every part on the CPU, so it cannot rot."""
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.bench_gpu import PARTS
from bench.cuda_selection import needs_cuda

REPO = Path(__file__).resolve().parent.parent


def test_dry_run_writes_every_part_to_the_table_and_the_json(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "RKD_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "bench", "gpu", "--dry-run", "--results", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert table[0] == "| part | measurement | value | against |"
    assert {line.split(" | ")[0][2:] for line in table[2:]} == set(PARTS)
    assert "FAILED" not in done.stdout, done.stdout[-3000:]
    (results,) = tmp_path.glob("*.json")
    run = json.loads(results.read_text())["gpu-dry-run"]
    assert run["config"]["parts"] == {part: "done" for part in PARTS}
    assert run["results"]["cuda_tests"]["tests"] >= 1 and run["results"]["cuda_tests"]["failures"] == 0
    for label in ("augment/randaugment_2_9/ours", "cpu/triton", "distill/torch_loader",
                  "jpeg/torch/decode_device=cpu", "launch/teachers/eager"):
        assert run["results"][label]["items_per_s"] > 0
    assert 0 <= run["results"]["distill/torch_loader/data_wait"]["data_wait_share"] <= 1


def test_the_cuda_selection_keeps_only_tests_that_need_cuda():
    class Marker:
        def __init__(self, reason):
            self.kwargs = {"reason": reason}

    class Item:
        def __init__(self, *reasons):
            self.markers = [Marker(r) for r in reasons]

        def iter_markers(self, name):
            return iter(self.markers if name == "skipif" else [])

    assert needs_cuda(Item("needs CUDA (mixed decoding)"))
    assert not needs_cuda(Item("needs ffcv")) and not needs_cuda(Item())


def test_the_device_clock_synchronizes_cuda_before_reading_the_host_clock(monkeypatch):
    import time

    import torch

    from rkd.train.timing import DeviceClock
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(("sync", str(device))))
    real = time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: events.append(("clock",)) or real())
    DeviceClock("cuda:0").now()
    DeviceClock("cpu").now()
    assert events == [("sync", "cuda:0"), ("clock",), ("clock",)]
