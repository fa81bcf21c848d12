"""`rkd sweep`: verdict rules on synthetic data, and a tiny real sweep that resumes without recomputing."""
import hashlib
import json
import math
import os
import socket
import subprocess
import sys

import pytest

from rkd.cli import main
from rkd.study.sweep import SweepResult
from rkd.study.status import mark
from rkd.study.report import METRICS, aggregate, change_interval, definitions_side_by_side, spearman_test, verdict


def synthetic_points(values_by_magnitude):
    points = []
    for magnitude, values in values_by_magnitude.items():
        for seed, value in enumerate(values):
            point = {"teachers": "default", "magnitude": magnitude, "seed": seed, **{m: 0.5 for m in METRICS}}
            point["iou_tt@0.4"] = value
            points.append(point)
    return points


MAGNITUDES = (0, 5, 9, 15, 20, 25)
# The iou_tt@0.4 means of a real 3-seed CPU sweep whose analysis reused one seed: three identical values per
# magnitude. Over all 18 runs Spearman's test gave p = 0.043; over the 6 magnitudes it is 256/720.
REPEATED_ACROSS_SEEDS = {m: [v] * 3 for m, v in zip(MAGNITUDES, (0.4132, 0.4129, 0.4143, 0.4160, 0.4038, 0.3934))}


@pytest.mark.parametrize("values,expected", [
    ({m: [0.9 - m / 100, 0.91 - m / 100] for m in MAGNITUDES}, "supported"),
    ({m: [0.6 + m / 100, 0.61 + m / 100] for m in MAGNITUDES}, "contradicted"),
    ({m: [0.70 - m / 1000, 0.60 - m / 1000] for m in MAGNITUDES}, "inconclusive"),   # change within the spread
    ({m: [0.7, 0.7] for m in MAGNITUDES}, "inconclusive"),                               # constant: rho undefined
    ({0: [0.8], 10: [0.7], 20: [0.6]}, "inconclusive"),     # monotone but 3 magnitudes: exact p = 2/6
    ({m: [0.9 - m / 100] for m in MAGNITUDES}, "supported"),   # 6 monotone magnitudes, one seed: p = 2/720
    (REPEATED_ACROSS_SEEDS, "inconclusive"),                   # seeds are repeats, not independent trend points
])
def test_verdict_rule(values, expected):
    assert verdict(aggregate(synthetic_points(values)), "iou_tt@0.4", -1)[0] == expected


def test_spearman_permutation_test_is_exact_for_few_points():
    rho, p = spearman_test(MAGNITUDES, [6, 5, 4, 3, 1, 2])
    assert rho == pytest.approx(-0.9429, abs=1e-4) and p == pytest.approx(12 / 720)   # 12 of the 720 orders
    assert spearman_test(MAGNITUDES, [6, 5, 4, 3, 2, 1])[1] == pytest.approx(2 / 720)


def test_aggregate_mean_and_std():
    rows = aggregate(synthetic_points({0: [0.2, 0.4], 5: [0.1]}))
    assert rows[0]["iou_tt@0.4"] == pytest.approx(0.3) and rows[0]["iou_tt@0.4_std"] == pytest.approx(0.1414, rel=1e-3)
    assert rows[1]["seeds"] == 1 and rows[1]["iou_tt@0.4_std"] == 0.0


def test_change_interval_is_a_seeded_bootstrap_over_seeds():
    low, high = [0.30, 0.32, 0.34], [0.20, 0.21, 0.25]
    change, lower, upper = change_interval(low, high)
    assert change == pytest.approx(sum(high) / 3 - sum(low) / 3)
    # every resample's difference lies between the extreme resampled means
    assert min(high) - max(low) <= lower < change < upper <= max(high) - min(low)
    assert upper < 0                                                    # a clear fall
    assert change_interval(low, high) == (change, lower, upper)         # seeded: reproducible
    assert math.isnan(change_interval([0.3], [0.2, 0.1])[1])           # one seed: no interval
    assert change_interval([0.5, 0.5], [0.4, 0.4]) == pytest.approx((-0.1, -0.1, -0.1))
    wide = change_interval([0.1, 0.9, 0.5], [0.2, 0.8, 0.4])
    assert wide[1] < 0 < wide[2]                                        # within the seeds' spread


def test_verdict_carries_its_interval():
    rows = aggregate(synthetic_points({m: [0.9 - m / 100, 0.91 - m / 100] for m in MAGNITUDES}))
    name, rho, p, low, high, (change, lower, upper) = verdict(rows, "iou_tt@0.4", -1)
    assert name == "supported" and change == pytest.approx(high - low) and lower <= change <= upper < 0


def test_definitions_side_by_side_flag_disagreeing_trends():
    points = synthetic_points({m: [0.9 - m / 100, 0.91 - m / 100] for m in MAGNITUDES})
    for point in points:                     # the paper's IoU rises where rkd's falls; agreement falls in both
        point["iou_tt_paper@0.4"] = 0.2 + point["magnitude"] / 100
        point["agreement_st"] = point["agreement_st_paper"] = 0.8 - point["magnitude"] / 200
    lines = definitions_side_by_side(aggregate(points), "default")
    row = next(line for line in lines if "`iou_tt@0.4`" in line)
    assert "`iou_tt_paper@0.4`" in row and "**disagree**" in row
    assert "| agree |" in next(line for line in lines if "`agreement_st`" in line)
    notes = [line for line in lines if line.startswith("- ")]
    assert len(notes) == 1 and "`iou_tt@0.4` changes by -0.2500" in notes[0] and "+0.2500" in notes[0]


def test_overfit_regime_presets_and_flags_override(fmnist_dir, tmp_path, monkeypatch):
    from rkd.commands import sweep as command
    seen = {}
    monkeypatch.setattr(command, "run_sweep", lambda job, facts, sweep, folder, runner: seen.update(
        job=job, sweep=sweep, folder=folder) or SweepResult(points=[{}], failed={}))
    monkeypatch.setattr(command, "write_outputs", lambda points, folder, description: description)
    main(["sweep", "--data", str(fmnist_dir), "--regime", "overfit", "--device", "cpu", "--runs-dir", str(tmp_path)])
    job, sweep = seen["job"], seen["sweep"]
    assert (job.data.train_images, job.optim.epochs, job.data.batch_size) == (500, 15, 32)
    assert sweep.magnitudes == (0, 5, 9, 15, 20) and sweep.seeds == (0, 1, 2) and sweep.regime == "overfit"
    assert seen["folder"].name.endswith("-overfit")
    main(["sweep", "--data", str(fmnist_dir), "--regime", "overfit", "--device", "cpu", "--runs-dir", str(tmp_path),
          "--epochs", "3", "--seeds", "7", "--train-images", "100", "--magnitudes", "0", "30"])
    job, sweep = seen["job"], seen["sweep"]
    assert (job.data.train_images, job.optim.epochs, job.data.batch_size) == (100, 3, 32)
    assert sweep.magnitudes == (0, 30) and sweep.seeds == (7,)


def sweep_argv(fmnist_dir, runs):
    return ["sweep", "--data", str(fmnist_dir), "--magnitudes", "0", "20", "--seeds", "0", "1", "--epochs", "1",
            "--arch", "resnet8", "--teacher-arch", "resnet8", "--teacher-epochs", "1", "--train-images", "200",
            "--analysis-images", "64", "--batch-size", "64", "--runs-dir", str(runs), "--name", "s", "--no-progress",
            "--device", "cpu"]


def test_tiny_sweep_end_to_end_and_resume(fmnist_dir, tmp_path, capsys):
    main(sweep_argv(fmnist_dir, tmp_path))
    folder = tmp_path / "s"
    for name in ("sweep.csv", "sweep.json", "report.md", "points.json", "plots/iou_tt_at_0.4.png",
                 "plots/agreement_st.png", "plots/gap.png", "distill-tdefault-m20-s0/analysis-train-augmented/analysis.json",
                 "control-m0-s0/checkpoints/last.pt"):
        assert (folder / name).is_file(), name
    data = json.loads((folder / "sweep.json").read_text())
    assert [(p["magnitude"], p["seed"]) for p in data["points"]] == [(0, 0), (0, 1), (20, 0), (20, 1)]
    analyses = [json.loads((folder / f"distill-tdefault-m20-s{seed}" / "analysis-train-augmented" /
                            "analysis.json").read_text()) for seed in (0, 1)]
    assert [a["seed"] for a in analyses] == [0, 1]   # each seed draws its own images and augmentations ...
    assert analyses[0]["iou_tt@0.4"] != analyses[1]["iou_tt@0.4"]   # ... so even the fixed teachers' IoU varies
    assert all(0 <= p["iou_tt@0.4"] <= 1 and 0 <= p["agreement_st"] <= 1 for p in data["points"])
    report = (folder / "report.md").read_text()
    assert report.count("| default |") >= 6 and "verdict" in report and "change [95% CI]" in report
    assert "rkd's definitions beside the paper's" in report and "`mi_st_paper_classif`" in report
    assert all(0 <= p["iou_tt_paper@0.4"] <= 1 and p["ece_student_paper"] >= 0 for p in data["points"])
    student_data = json.loads((folder / "distill-tdefault-m0-s0" / "config.json").read_text())["data"]
    assert student_data["train_images"] == 200
    for teacher in (tmp_path / "teachers").iterdir():   # the students' cut never reaches the cached default teachers
        assert json.loads((teacher / "config.json").read_text())["data"]["train_images"] is None, teacher.name
    checkpoints = sorted(folder.rglob("last.pt"))
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    out = capsys.readouterr().out
    assert "point 1/4 done: teachers default, magnitude 0, seed 0 in " in out and "3 left, ETA " in out
    assert "point 4/4 done: teachers default, magnitude 20, seed 1" in out and "student_test_acc" in out
    main(sweep_argv(fmnist_dir, tmp_path) + ["--status"])
    assert "4 points, 4 done, 0 running, 0 failed, 0 left" in capsys.readouterr().out
    main(sweep_argv(fmnist_dir, tmp_path))
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps, "finished runs are not recomputed"
    assert "training default teacher" not in capsys.readouterr().out


@pytest.mark.parametrize("extra,message", [(["--magnitude", "5"], "use --magnitudes"),
                                           (["--magnitudes", "0", "40"], "magnitude 40 is outside 0..30"),
                                           (["--magnitudes", "zero"], "expected int values")])
def test_sweep_bad_input(fmnist_dir, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_:
        main(sweep_argv(fmnist_dir, tmp_path) + extra)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_sweep_status_shows_done_running_failed_and_left(fmnist_dir, tmp_path, capsys):
    main(sweep_argv(fmnist_dir, tmp_path) + ["--status"])   # nothing started: the grid of the options
    assert "4 points, 0 done, 0 running, 0 failed, 4 left" in capsys.readouterr().out
    folder = tmp_path / "s"
    plan = [{"label": f"point {name}", "jobs": [f"{name}-train", f"{name}-train/analysis"]} for name in "abcde"]
    folder.mkdir()
    (folder / "plan.json").write_text(json.dumps({"points": plan}))
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for job in ("a-train", "a-train/analysis", "b-train", "d-train"):
        mark(folder, job, "done", seconds=30.0)
    mark(folder, "b-train/analysis", "running", host=socket.gethostname(), pid=os.getpid())
    mark(folder, "c-train", "failed", error="RuntimeError: out of memory", attempt=2)
    mark(folder, "d-train/analysis", "running", host=socket.gethostname(), pid=int(ended.stdout))   # killed sweep
    main(sweep_argv(fmnist_dir, tmp_path) + ["--status"])   # the folder's plan, not the options' grid
    lines = capsys.readouterr().out.splitlines()
    assert "5 points, 1 done, 1 running, 1 failed, 2 left" in lines[0]
    assert lines[1].split()[:3] == ["done", "point", "a"] and "1m00s of compute" in lines[1]
    assert lines[2].split()[:3] == ["running", "point", "b"] and "b-train/analysis running for 0m" in lines[2]
    assert lines[3].split()[:3] == ["failed", "point", "c"] and "c-train: RuntimeError: out of memory" in lines[3]
    assert lines[4].split()[:3] == ["left", "point", "d"] and "interrupted: d-train/analysis" in lines[4]
    assert lines[5].split() == ["left", "point", "e"]
    (folder / "plan.json").write_text(json.dumps({"points": plan, "driver": {"host": socket.gethostname(),
                                                                             "pid": int(ended.stdout)}}))
    main(sweep_argv(fmnist_dir, tmp_path) + ["--status"])   # the sweep's driver ended: nothing runs any more
    lines = capsys.readouterr().out.splitlines()
    assert "5 points, 1 done, 0 running, 1 failed, 3 left" in lines[0] and "interrupted: b-train/analysis" in lines[2]


class _StopAfterConfig(Exception):
    """Raised in place of loading the teachers: the run directory and its config.json exist by then."""


@pytest.mark.parametrize("flags,alpha,mode", [((), 0.6, "per-teacher"), (("--kd-loss", "pure-kd"), 0.0, "per-teacher"),
                                              (("--kd-loss", "logit-mse"), 0.0, "logit-mse"),
                                              (("--kd-mode", "mean-probs", "--alpha", "0.3"), 0.3, "mean-probs")])
def test_sweep_point_distill_config_records_alpha_and_kd_mode(fmnist_dir, tmp_path, monkeypatch, capsys, flags, alpha,
                                                              mode):
    """The regression of issue 14: a sweep point's distill run recorded neither alpha nor the KD mode. The teachers
    are stand-in files (recorded with their sha256) and the distillation stops once its run directory is open."""
    from rkd.kd import distill as distill_module
    from rkd.study import sweep as sweep_module

    teachers = [tmp_path / f"teacher{i}.pt" for i in range(2)]
    for i, teacher in enumerate(teachers):
        teacher.write_bytes(b"teacher %d" % i)
    monkeypatch.setattr(sweep_module, "default_teachers", lambda job, facts, options: teachers)
    monkeypatch.setattr(sweep_module, "train_control", lambda *args: {})
    monkeypatch.setattr(distill_module, "load_ensemble", lambda *args, **kwargs: (_ for _ in ()).throw(
        _StopAfterConfig()))
    with pytest.raises(SystemExit):   # the point's distillation fails (twice: it is retried), so the sweep does
        main(["sweep", "--data", str(fmnist_dir), "--magnitudes", "5", "--seeds", "1", "--epochs", "1",
              "--runs-dir", str(tmp_path), "--name", "s", "--no-progress", "--device", "cpu", *flags])
    config = json.loads((tmp_path / "s" / "distill-tdefault-m5-s1" / "config.json").read_text())
    assert config["kd"]["alpha"] == alpha and config["kd"]["mode"] == mode and config["kd"]["temperature"] == 3.0
    assert config["data"]["augment"]["magnitude"] == 5 and config["seed"] == 1
    assert [t["sha256"] for t in config["teachers"]] == [hashlib.sha256(t.read_bytes()).hexdigest() for t in teachers]
