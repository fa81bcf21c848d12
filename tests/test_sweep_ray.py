"""`rkd sweep --executor ray`: the same numbers as the sequential executor, retries, and the error without Ray."""
import json
import os
import sys
from collections import defaultdict

import pytest
import torch

import rkd.study.sweep
from rkd.cli import main
from rkd.study.executors import Job, RayExecutor, SequentialExecutor

try:
    import ray
except ImportError:
    ray = None


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance with 2 CPUs for the module (it takes ~10 s to start on 2 busy cores)."""
    if ray is None:
        pytest.skip("needs ray: pip install 'rkd[ray]'")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # Ray workers cannot import this module
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 ** 2)
    yield
    ray.shutdown()


def tiny_sweep_argv(fmnist_dir, runs, name):
    return ["sweep", "--data", str(fmnist_dir), "--magnitudes", "0", "9", "--seeds", "0", "--epochs", "1",
            "--arch", "resnet8", "--teacher-arch", "resnet8", "--teacher-epochs", "1", "--num-teachers", "2",
            "--train-images", "128", "--analysis-images", "32", "--batch-size", "64", "--workers", "0",
            "--runs-dir", str(runs), "--name", name, "--no-progress", "--device", "cpu", "--cpus-per-point", "1"]


def test_ray_sweep_gives_the_sequential_numbers(fmnist_dir, tmp_path, local_ray, capsys):
    main(tiny_sweep_argv(fmnist_dir, tmp_path, "sequential"))
    main(tiny_sweep_argv(fmnist_dir, tmp_path, "ray") + ["--executor", "ray"])
    out = capsys.readouterr().out
    assert out.count("training default teacher") == 2, "the driver trains the shared teachers once, before any point"
    assert "point 2/2 done" in out and "ETA" in out
    sequential, on_ray = (json.loads((tmp_path / name / "sweep.json").read_text()) for name in ("sequential", "ray"))
    assert [(p["magnitude"], p["seed"]) for p in on_ray["points"]] == [(0, 0), (9, 0)]
    assert on_ray["points"] == sequential["points"]   # exactly: every job runs with the same seed and thread count
    assert (tmp_path / "ray" / "sweep.csv").read_text() == (tmp_path / "sequential" / "sweep.csv").read_text()
    assert sequential["points"][0]["iou_tt@0.4"] != sequential["points"][1]["iou_tt@0.4"]   # the points differ
    main(tiny_sweep_argv(fmnist_dir, tmp_path, "ray") + ["--status"])
    assert "2 points, 2 done, 0 running, 0 failed, 0 left" in capsys.readouterr().out


def succeed(value):
    return {"value": value}


def fail_until(marker, failures):
    """Fails the first `failures` times it is called for `marker` (a file counts the calls across processes)."""
    calls = int(marker.read_text()) + 1 if marker.exists() else 1
    marker.write_text(str(calls))
    if calls <= failures:
        raise RuntimeError(f"failure {calls} of {failures}\nsecond line")
    return {"calls": calls}


@pytest.mark.parametrize("executor", ["sequential", "ray"])
def test_a_failed_job_is_retried_once_and_the_others_go_on(executor, tmp_path, request):
    if executor == "ray":
        request.getfixturevalue("local_ray")
    jobs = [Job("flaky", fail_until, (tmp_path / "flaky", 1)), Job("broken", fail_until, (tmp_path / "broken", 9)),
            Job("needs-broken", succeed, (1,), after=("broken",)), Job("needs-flaky", succeed, (2,), after=("flaky",)),
            Job("free", succeed, (3,))]
    with (SequentialExecutor(1) if executor == "sequential" else RayExecutor(1)) as runner:
        outcomes = list(runner.run(jobs))
    final = {o.key: o for o in outcomes if not o.retrying}
    assert final["flaky"].result == {"calls": 2} and final["flaky"].attempt == 2
    assert final["broken"].error == "RuntimeError: failure 2 of 9" and final["broken"].attempt == 2
    assert (tmp_path / "broken").read_text() == "2", "retried exactly once"
    assert final["needs-broken"].error == "not run: broken failed" and final["needs-broken"].attempt == 0
    assert final["needs-flaky"].result == {"value": 2} and final["free"].result == {"value": 3}
    assert sorted(o.key for o in outcomes if o.retrying) == ["broken", "flaky"]


def crash_once(marker):
    """Ends its own process the first time (as an out-of-memory kill would), returns the second time."""
    if not marker.exists():
        marker.write_text("crashed")
        os._exit(1)
    return {"after": marker.read_text()}


def test_a_crashed_ray_worker_is_retried(tmp_path, local_ray):
    with RayExecutor(1) as runner:
        outcomes = list(runner.run([Job("crash", crash_once, (tmp_path / "marker",))]))
    assert [o.retrying for o in outcomes] == [True, False] and outcomes[-1].result == {"after": "crashed"}


def metrics_stub(*args):
    return defaultdict(lambda: 0.5)


def test_a_failing_point_is_reported_and_the_report_covers_the_rest(fmnist_dir, tmp_path, capsys, monkeypatch):
    def distill_student(job, facts, folder, point, teachers):
        if point.magnitude == 9:
            raise RuntimeError("loss is nan")
        return metrics_stub()

    monkeypatch.setattr(rkd.study.sweep, "teacher_sets", lambda job, facts, sweep, folder: {"default": []})
    monkeypatch.setattr(rkd.study.sweep, "distill_student", distill_student)
    monkeypatch.setattr(rkd.study.sweep, "train_control", metrics_stub)
    monkeypatch.setattr(rkd.study.sweep, "measure", metrics_stub)
    with pytest.raises(SystemExit) as exit_:
        main(tiny_sweep_argv(fmnist_dir, tmp_path, "s"))
    captured = capsys.readouterr()
    assert exit_.value.code == 1 and len(captured.err.strip().splitlines()) == 1
    assert "3 sweep jobs did not finish (first: distill-tdefault-m9-s0: RuntimeError: loss is nan)" in captured.err
    assert "distill-tdefault-m9-s0 failed (RuntimeError: loss is nan); retrying once" in captured.out
    assert "point failed: teachers default, magnitude 9, seed 0" in captured.out
    points = json.loads((tmp_path / "s" / "sweep.json").read_text())["points"]
    assert [(p["magnitude"], p["student_test_acc"]) for p in points] == [(0, 0.5)]
    assert (tmp_path / "s" / "report.md").is_file()
    main(tiny_sweep_argv(fmnist_dir, tmp_path, "s") + ["--status"])
    out = capsys.readouterr().out
    assert "2 points, 1 done, 0 running, 1 failed, 0 left" in out and "not run: distill-tdefault-m9-s0 failed" in out


def test_ray_executor_without_ray_is_one_line(fmnist_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)   # `import ray` now raises ImportError
    with pytest.raises(SystemExit) as exit_:
        main(tiny_sweep_argv(fmnist_dir, tmp_path, "s") + ["--executor", "ray"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "--executor ray" in err and "pip install 'rkd[ray]'" in err
    assert not (tmp_path / "teachers").exists(), "refused before any teacher is trained"


@pytest.mark.parametrize("extra,message", [(["--ray-address", "127.0.0.1:6379"], "use it with --executor ray"),
                                           (["--executor", "ray", "--device", "cuda:1"],
                                            # without a second GPU the device check answers first
                                            "use auto, cuda or cpu" if torch.cuda.device_count() > 1
                                            else "no usable CUDA device"),
                                           (["--cpus-per-point", "0"], "--cpus-per-point")])
def test_executor_flags_bad_input(fmnist_dir, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_:
        main(tiny_sweep_argv(fmnist_dir, tmp_path, "s") + extra)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "teachers").exists()


def test_an_unreachable_ray_address_is_one_line(fmnist_dir, tmp_path, capsys):
    if ray is None:
        pytest.skip("needs ray: pip install 'rkd[ray]'")
    with pytest.raises(SystemExit) as exit_:
        main(tiny_sweep_argv(fmnist_dir, tmp_path, "s") + ["--executor", "ray", "--ray-address", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "--ray-address 127.0.0.1:1: nothing answers there" in err and not (tmp_path / "teachers").exists()
