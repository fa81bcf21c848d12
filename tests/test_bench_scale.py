"""`python -m bench scale` in its quick form: builds tiny cached trees, measures them, saves growth ratios."""
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.bench_scale import tree_shape

ROOT = Path(__file__).resolve().parent.parent


def test_tree_shape_is_imagenet_like():
    assert tree_shape(10_000) == (100, 100) and tree_shape(100_000) == (1000, 100)
    assert tree_shape(1_000_000) == (1000, 1000) and tree_shape(150) == (1, 150)


def test_bench_scale_quick(tmp_path):
    env = {**os.environ, "RKD_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "bench", "scale", "--", "--sizes", "200,400", "--backends", "torch",
               "--repeats", "1", "--results", str(tmp_path / "results")]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "growth of scan_s per file, 400 / 200 files" in done.stdout
    train = tmp_path / "cache/bench/scale-tree-4x100/train"
    paths = [os.path.join(folder, name) for folder, _, names in os.walk(train) for name in names]
    assert len(paths) == 400 and all(p.endswith(".JPEG") for p in paths)
    (saved,) = (tmp_path / "results").glob("*.json")
    suite = json.loads(saved.read_text())["scale"]
    assert suite["results"]["400/files"] == {"files": 400, "classes": 4,
                                             "path_bytes": sum(len(os.fsencode(p)) for p in paths)}
    assert suite["results"]["400/per-file"]["retained_bytes"] > 0 and suite["results"]["200/seconds"]["len_s"] >= 0
    assert {f"growth {key} per file 400/200" for key in ("scan_s", "retained_bytes", "shard_s", "len_s",
                                                         "first_batch_torch_s")} <= suite["ratios"].keys()
