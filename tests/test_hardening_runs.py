"""Run directories under faults and concurrency, and bad flags and environment values at the CLI boundary.

Each bad input must end in one line on stderr naming the flag, file or folder, a non-zero exit, nothing lost.
"""
import fcntl
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import torch

from pipelines.errors import ConfigError
from rkd.train import run_lock
from rkd.cli import main
from rkd.train.runs import RunDir
from test_cli import TINY, run_cli


def one_line_error(code, err, *fragments):
    """Exit 2 and one line on stderr, no traceback, holding every fragment."""
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def _hold(folder, ready) -> None:
    run_lock.acquire(folder)
    ready.set()
    time.sleep(300)


@contextmanager
def held_elsewhere(folder):
    """A second process (forked: no imports to wait for) holding the run lock of `folder`; killed on exit."""
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    holder = context.Process(target=_hold, args=(folder, ready), daemon=True)
    holder.start()
    try:
        assert ready.wait(30), "the holder did not take the lock"
        yield holder
    finally:
        holder.kill()
        holder.join()


def flock_is_free(lock_file) -> bool:
    """Whether a new descriptor can take the flock now (flocks of two descriptors conflict even in one process)."""
    with open(lock_file) as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def teacher_argv(data, runs, name="t", *extra):
    return ["train-teacher", "--data", str(data), "--arch", "resnet8", "--runs-dir", str(runs), "--name", name,
            *TINY, *extra]


@pytest.fixture(scope="module")
def finished(fmnist_dir, tmp_path_factory):
    """A finished tiny teacher run: (runs dir, its argv)."""
    runs = tmp_path_factory.mktemp("runs")
    argv = teacher_argv(fmnist_dir, runs, "done")
    main(argv)
    return runs, argv


# --- ownership: one process per run directory ---

def test_a_second_process_is_refused_naming_the_holder(fmnist_dir, tmp_path, capsys):
    with held_elsewhere(tmp_path / "t") as holder:
        code, _, err = run_cli(teacher_argv(fmnist_dir, tmp_path), capsys)
        one_line_error(code, err, f"run directory {tmp_path / 't'} is in use by pid {holder.pid}", "since",
                       "choose another --name")
    assert not (tmp_path / "t" / "config.json").exists(), "the refused process wrote nothing"


def test_a_lock_of_a_killed_process_is_taken_over(fmnist_dir, tmp_path, capsys):
    with held_elsewhere(tmp_path / "t") as holder:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    assert str(holder.pid) in (tmp_path / "t" / ".lock").read_text(), "the dead holder's record is still there"
    code, out, err = run_cli(teacher_argv(fmnist_dir, tmp_path), capsys)
    assert code == 0, err
    assert (tmp_path / "t" / "checkpoints" / "best.pt").is_file()


def test_two_real_runs_on_one_directory(fmnist_dir, tmp_path, capsys):
    """Two `rkd train-teacher` with one run name (a real process, then this one): the second is refused."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "rkd", *teacher_argv(fmnist_dir, tmp_path)]
    argv[argv.index("--epochs") + 1] = "50"
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = tmp_path / "t" / ".lock"
    try:
        deadline = time.time() + 120
        while f'"pid": {first.pid},' not in (lock.read_text() if lock.exists() else ""):
            assert first.poll() is None and time.time() < deadline, "the first run did not start"
            time.sleep(0.05)
        code, _, err = run_cli(argv[3:], capsys)
        one_line_error(code, err, f"is in use by pid {first.pid}")
    finally:
        first.kill()
        first.wait()
    assert json.loads((tmp_path / "t" / "config.json").read_text())["optim"]["epochs"] == 50, "the first run's"


def test_lock_is_reentrant_in_one_process_and_released(tmp_path):
    lock_file = run_lock.acquire(tmp_path / "r")
    assert run_lock.acquire(tmp_path / "r") == lock_file and not flock_is_free(lock_file)
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    run_lock.release(tmp_path / "r")
    assert flock_is_free(lock_file)


def test_sweep_folder_is_owned(fmnist_dir, tmp_path, capsys):
    with held_elsewhere(tmp_path / "sw") as holder:
        code, _, err = run_cli(["sweep", "--data", str(fmnist_dir), "--runs-dir", str(tmp_path), "--name", "sw",
                                "--magnitudes", "0", "--epochs", "1", "--device", "cpu"], capsys)
        one_line_error(code, err, f"sweep folder {tmp_path / 'sw'} is in use by pid {holder.pid}")
    assert not (tmp_path / "teachers").exists(), "refused before any teacher was trained"


def test_cached_default_teacher_is_owned(fmnist_dir, tmp_path, capsys):
    teacher = tmp_path / "teachers" / "teacher-mnist-resnet8-none-s0"
    with held_elsewhere(teacher) as holder:
        code, _, err = run_cli(["distill", "--data", str(fmnist_dir), "--runs-dir", str(tmp_path), "--teacher-arch",
                                "resnet8", "--teacher-epochs", "1", "--arch", "resnet8", *TINY], capsys)
        one_line_error(code, err, f"run directory {teacher} is in use by pid {holder.pid}")


# --- metrics.jsonl: torn last lines ---

def test_metrics_are_written_one_fsynced_line_per_record(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "r")
    run.open({"a": 1}, resume=False)
    writes, syncs = [], []
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: writes.append(data) or real_write(fd, data))
    monkeypatch.setattr(os, "fsync", lambda fd: syncs.append(fd))
    run.append_metrics({"kind": "epoch", "epoch": 0, "x": 1.5})
    assert writes == [b'{"epoch": 0, "kind": "epoch", "x": 1.5}\n'] and len(syncs) == 1


def test_torn_last_line_is_repaired_on_resume(finished, capsys):
    runs, argv = finished
    metrics = runs / "done" / "metrics.jsonl"
    before = metrics.read_text()
    with open(metrics, "a") as f:
        f.write('{"kind": "epoch", "epoch": 1, "train_lo')
    code, out, err = run_cli(argv + ["--resume"], capsys)
    assert code == 0, err
    assert f"repaired {metrics}: dropped a torn last line (39 bytes)" in out
    assert metrics.read_text() == before


def test_a_torn_line_inside_the_file_is_one_line(tmp_path):
    run = RunDir(tmp_path / "r")
    run.open({"a": 1}, resume=False)
    run.metrics_file.write_text('{"kind": "epoch", "epoch": 0}\n{"kind": "ep\n{"kind": "epoch", "epoch": 1}\n')
    with pytest.raises(ConfigError, match=r"metrics.jsonl line 2 is not a JSON record"):
        run.read_metrics()


@pytest.mark.parametrize("tail", ['{"kind": "epoch", "epoch": 3}', "\x00\x00\x00", "[1, 2]\n"])
def test_repair_cuts_only_the_last_line(tmp_path, capsys, tail):
    """A record without its newline, NUL bytes of a crash, a line that is JSON but no record: all cut."""
    run = RunDir(tmp_path / "r")
    run.open({"a": 1}, resume=False)
    run.last.write_bytes(b"a checkpoint")  # started: resume is allowed
    run.metrics_file.write_text('{"kind": "epoch", "epoch": 0}\n' + tail)
    run.open({"a": 1}, resume=True)
    assert "dropped a torn last line" in capsys.readouterr().out
    assert run.read_metrics() == [{"kind": "epoch", "epoch": 0}]


# --- a run that failed before its first checkpoint starts again with the same command ---

def test_failed_start_is_started_again(fmnist_dir, tmp_path, capsys):
    too_big = teacher_argv(fmnist_dir, tmp_path)
    too_big[too_big.index("--batch-size") + 1] = str(10 ** 9)
    code, _, err = run_cli(too_big, capsys)  # found after the run directory was created
    one_line_error(code, err, "--batch-size 1000000000 is larger than", "use a smaller --batch-size")
    assert (tmp_path / "t" / "config.json").exists() and not (tmp_path / "t" / "metrics.jsonl").exists()
    code, out, err = run_cli(teacher_argv(fmnist_dir, tmp_path), capsys)
    assert code == 0, err
    assert "has no checkpoint yet: starting it again with this command" in out
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["data"]["batch_size"] == 64, "config.json rewritten for the command that ran"


def test_killed_first_epoch_leaves_no_records_behind(tmp_path, capsys):
    run = RunDir(tmp_path / "r")
    run.open({"lr": 1}, resume=False)
    run.append_metrics({"kind": "step", "epoch": 0, "step": 2})
    run.best.write_bytes(b"best of a killed epoch")  # best.pt is written before last.pt
    run.open({"lr": 2}, resume=False)
    assert run.read_metrics() == [] and not run.best.exists()
    assert json.loads(run.config_file.read_text()) == {"lr": 2}


def test_finished_run_still_needs_resume(finished, capsys):
    runs, argv = finished
    code, _, err = run_cli(argv, capsys)
    one_line_error(code, err, "exists: pass --resume")


# --- leftovers of kills, corrupt files ---

def test_stale_temporaries_are_removed_at_the_next_start(finished, capsys):
    runs, argv = finished
    run = runs / "done"
    stale = [run / "checkpoints" / ".last.pt.k3j2x", run / "checkpoints" / ".best.pt.a8f0q", run / ".config.json.tmp",
             run / ".metrics.jsonl.tmp", run / ".report.md.tmp"]
    for path in stale:
        path.write_bytes(b"half a write")
    code, out, err = run_cli(argv + ["--resume"], capsys)
    assert code == 0, err
    assert f"removed 5 temporary file(s) left in {run} by an interrupted run" in out
    assert not any(p.exists() for p in stale) and (run / "checkpoints" / "last.pt").is_file()


def test_corrupt_last_checkpoint_on_resume(fmnist_dir, tmp_path, capsys):
    argv = teacher_argv(fmnist_dir, tmp_path)
    assert run_cli(argv, capsys)[0] == 0
    last = tmp_path / "t" / "checkpoints" / "last.pt"
    good = last.read_bytes()
    for damaged, reason in ((good[:len(good) // 3], "is truncated (an interrupted write or copy)"),
                            (good[:-1], "is truncated"), (os.urandom(4096), "is not a torch checkpoint"),
                            (b"", "is empty"), (b"\x00" * len(good), "is not a torch checkpoint")):
        last.write_bytes(damaged)
        code, _, err = run_cli(argv + ["--resume"], capsys)
        one_line_error(code, err, f"--resume: {last} {reason}", "delete it to start this run again")
        assert "Weights only" not in err and "PytorchStreamReader" not in err
    last.unlink()  # the fix the message gives
    code, out, err = run_cli(argv, capsys)
    assert code == 0 and "starting it again" in out, err


def test_corrupt_or_hostile_teachers_file(fmnist_dir, tmp_path, capsys):
    hostile = tmp_path / "hostile.pt"
    torch.save({"format": "rkd-checkpoint-v1", "model": torch.nn.Linear(2, 2)}, hostile)
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(1000))
    empty = tmp_path / "empty"  # a folder that is no run directory (a run directory is taken: its best.pt)
    empty.mkdir()
    for path, reason in ((hostile, "holds Python objects beyond tensors and plain values, which rkd refuses"),
                         (noise, "is not a torch checkpoint"),
                         (empty, "is a directory without checkpoints/best.pt")):
        code, _, err = run_cli(["distill", "--data", str(fmnist_dir), "--runs-dir", str(tmp_path), "--teachers",
                                str(path), "--arch", "resnet8", *TINY], capsys)
        one_line_error(code, err, f"--teachers: {path} {reason}")


@pytest.mark.parametrize("content", ["", '{"data": {"batch_', "not json at all", "[1, 2]"])
def test_unreadable_config_of_a_started_run(finished, tmp_path, capsys, content):
    runs, argv = finished
    config = runs / "done" / "config.json"
    saved = config.read_text()
    config.write_text(content)
    try:
        code, _, err = run_cli(argv + ["--resume"], capsys)
        one_line_error(code, err, f"--resume: {config} is unreadable", "restore it from a copy")
    finally:
        config.write_text(saved)


def test_unreadable_config_of_an_unstarted_run_is_replaced(tmp_path):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    run.config_file.write_text('{"torn')
    run.open({"lr": 1}, resume=True)
    assert json.loads(run.config_file.read_text()) == {"lr": 1}


def test_run_directory_that_is_a_file(fmnist_dir, tmp_path, capsys):
    (tmp_path / "t").write_text("not a folder")
    code, _, err = run_cli(teacher_argv(fmnist_dir, tmp_path), capsys)
    one_line_error(code, err, f"run directory {tmp_path / 't'} is a file, not a folder")


# --- flags and environment at the CLI boundary ---

DISTILL_FLAGS = [
    (["--lr", "nan"], "'--lr': nan is out of range; use a finite number > 0"),
    (["--lr", "inf"], "'--lr': inf is out of range"),
    (["--lr", "-1"], "'--lr': -1 is out of range"),
    (["--lr", "0"], "'--lr': 0 is out of range"),
    (["--lr", "fast"], "'--lr': 'fast' is not a number"),
    (["--temperature", "nan"], "'--temperature': nan is out of range; use a finite number > 0"),
    (["--temperature", "0"], "'--temperature': 0 is out of range"),
    (["--temperature", "-0"], "'--temperature': -0 is out of range"),
    (["--temperature", "-2.5"], "'--temperature': -2.5 is out of range"),
    (["--alpha", "1.0001"], "'--alpha': 1.0001 is out of range; use a number in [0, 1]"),
    (["--alpha", "-0.1"], "'--alpha': -0.1 is out of range"),
    (["--alpha", "nan"], "'--alpha': nan is out of range"),
    (["--image-size", "-8"], "'--image-size': -8 is not in the range x>=1"),
    (["--image-size", "0"], "'--image-size': 0 is not in the range x>=1"),
    (["--workers", "-1"], "'--workers': -1 is not in the range x>=0"),
    (["--weight-decay", "-1"], "'--weight-decay': -1 is out of range; use a finite number >= 0"),
    (["--weight-decay", "nan"], "'--weight-decay': nan is out of range"),
    (["--epochs", "0"], "'--epochs': 0 is not in the range x>=1"),
    (["--epochs", "-5"], "'--epochs': -5 is not in the range x>=1"),
    (["--batch-size", "0"], "'--batch-size': 0 is not in the range x>=1"),
    (["--batch-size", "-64"], "'--batch-size': -64 is not in the range x>=1"),
    (["--magnitude", "-3"], "--magnitude -3 is outside 0..30"),
    (["--magnitude", "31"], "--magnitude 31 is outside 0..30"),
    (["--magnitude", "12", "--num-magnitude-bins", "10"], "--magnitude 12 is outside 0..9"),
    (["--num-magnitude-bins", "1"], "'--num-magnitude-bins': 1 is not in the range x>=2"),
    (["--magnitude-std", "-0.5"], "'--magnitude-std': -0.5 is out of range; use a finite number >= 0"),
    (["--magnitude-std", "nan"], "'--magnitude-std': nan is out of range"),
    (["--magnitude-std", "0.5", "--policy", "trivialaugment"], "--magnitude-std applies to randaugment only"),
    (["--cutout", "-1"], "'--cutout': -1 is not in the range x>=0"),
    (["--num-ops", "0"], "'--num-ops': 0 is not in the range x>=1"),
    (["--num-ops", "-2"], "'--num-ops': -2 is not in the range x>=1"),
    (["--warmup-epochs", "-1"], "'--warmup-epochs': -1 is out of range"),
    (["--warmup-epochs", "inf"], "'--warmup-epochs': inf is out of range"),
    (["--metrics-every", "-1"], "'--metrics-every': -1 is not in the range x>=0"),
    (["--num-teachers", "0"], "'--num-teachers': 0 is not in the range x>=1"),
    (["--teacher-epochs", "0"], "'--teacher-epochs': 0 is not in the range x>=1"),
    (["--seed", "-1"], "'--seed': -1 is not in the range x>=0"),
    (["--device", "bogus"], "'--device': 'bogus' is not a device; use auto, cpu, cuda or cuda:N"),
    (["--device", "meta"], "'--device': 'meta': rkd trains on cpu or cuda devices"),
    (["--device", "cuda:99"], "'--device': cuda:99"),
    (["--runs-dir", "/proc/x"], "'--runs-dir': nothing can be written in /proc"),
]


@pytest.mark.parametrize("extra,message", DISTILL_FLAGS, ids=[" ".join(e) for e, _ in DISTILL_FLAGS])
def test_bad_distill_flag_is_one_line(fmnist_dir, tmp_path, capsys, extra, message):
    argv = ["distill", "--data", str(fmnist_dir), "--runs-dir", str(tmp_path), *TINY, *extra]
    code, _, err = run_cli(argv, capsys)
    one_line_error(code, err, message)
    assert not list(tmp_path.iterdir()), "refused before anything was written"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda(fmnist_dir, tmp_path, capsys):
    for device in ("cuda", "cuda:3"):
        code, _, err = run_cli(teacher_argv(fmnist_dir, tmp_path) + ["--device", device], capsys)
        one_line_error(code, err, f"'--device': {device} asked for, but this machine has no usable CUDA device")


def test_runs_dir_that_is_a_file_or_under_one(fmnist_dir, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for runs in (afile, afile / "sub" / "runs"):
        argv = teacher_argv(fmnist_dir, tmp_path)
        argv[argv.index("--runs-dir") + 1] = str(runs)
        code, _, err = run_cli(argv, capsys)
        one_line_error(code, err, f"'--runs-dir': {afile} is a file, not a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_runs_dir(fmnist_dir, tmp_path, capsys):
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o555)
    argv = teacher_argv(fmnist_dir, locked / "runs")
    code, _, err = run_cli(argv, capsys)
    one_line_error(code, err, f"'--runs-dir': nothing can be written in {locked}")


def test_unusable_cache_dir(fmnist_dir, tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for cache, reason in ((afile, f"{afile} is a file"), (afile / "sub", f"{afile} is a file"),
                          ("/proc/rkd-cache", "nothing can be written in /proc")):
        monkeypatch.setenv("RKD_CACHE_DIR", str(cache))
        code, _, err = run_cli(teacher_argv(fmnist_dir, tmp_path / "runs", "t", "--loader", "ffcv"), capsys)
        one_line_error(code, err, f"RKD_CACHE_DIR={cache}: {reason}", "unset it")


def test_other_commands_validate_their_flags(fmnist_dir, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        (["sweep", "--data", str(fmnist_dir), "--lr", "nan"], "'--lr': nan is out of range"),
        (["sweep", "--data", str(fmnist_dir), "--seeds", "0", "-1"], "--seeds: seed -1 is negative"),
        (["sweep", "--data", str(fmnist_dir), "--teacher-epochs", "0"], "'--teacher-epochs': 0 is not in the range"),
        (["sweep", "--data", str(fmnist_dir), "--device", "cuda:42"], "'--device': cuda:42"),
        (["train-teacher", "--data", str(fmnist_dir), "--warmup-epochs", "nan"], "'--warmup-epochs': nan"),
        (["analyze", "--data", str(fmnist_dir), "--thresholds", "1.5"], "--thresholds: thresholds must lie in [0, 1], got [1.5]"),
        (["analyze", "--data", str(fmnist_dir), "--thresholds", "nan"], "--thresholds: thresholds must lie in [0, 1], got [nan]"),
        (["analyze", "--data", str(fmnist_dir), "--device", "gpu"], "'--device': 'gpu' is not a device"),
        (["analyze", "--data", str(fmnist_dir), "--out", "/proc/x/out"], "'--out': nothing can be written in /proc"),
        (["convert", str(fmnist_dir), "/proc/x.beton"], "'OUT': nothing can be written in /proc"),
        (["convert", str(fmnist_dir), str(afile / "x.beton")], f"'OUT': {afile} is a file, not a folder"),
        (["convert", str(fmnist_dir), str(tmp_path)], f"'OUT': {tmp_path} is a folder; name a file inside it"),
        (["make-photo-tree", str(afile)], f"'OUT': {afile} is a file, not a folder"),
        (["make-photo-tree", "/proc/photos"], "'OUT': nothing can be written in /proc"),
        (["make-photo-tree", str(tmp_path / "p"), "--seed", "-4"], "'--seed': -4 is not in the range x>=0"),
    ]
    for argv, message in cases:
        code, _, err = run_cli(argv, capsys)
        one_line_error(code, err, message)


def test_batch_larger_than_the_training_set(fmnist_dir, tmp_path, capsys):
    code, _, err = run_cli(teacher_argv(fmnist_dir, tmp_path, "t", "--batch-size", "257"), capsys)  # 256 images
    one_line_error(code, err, "--batch-size 257 is larger than this process's share of the training images")
    assert not (tmp_path / "t" / "metrics.jsonl").exists(), "refused before any epoch"


@pytest.mark.parametrize("env,message", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two': expected a whole number >= 0"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0: expected at least 1"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 does not fit WORLD_SIZE=2: expected 0..1"),
    ({"WORLD_SIZE": "2", "RANK": "-1"}, "RANK='-1': expected a whole number >= 0"),
    ({"LOCAL_RANK": "x"}, "LOCAL_RANK='x': expected a whole number >= 0"),
])
def test_bad_launch_environment(fmnist_dir, tmp_path, capsys, monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, _, err = run_cli(teacher_argv(fmnist_dir, tmp_path), capsys)
    one_line_error(code, err, message)
