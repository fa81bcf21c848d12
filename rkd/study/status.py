"""A sweep's state on disk (a status file per job, written atomically) and its progress: lines, ETA, `--status`.

`<sweep folder>/plan.json` lists the points and their jobs; `<sweep folder>/status/<job>.json` holds the job's last
state: running (host, pid, since), done (seconds), retrying or failed (the error line). The process that runs a
job records running and done, the sweep's driver records retries and failures. Status files only report: whether
a job's work is finished is decided by its run directory, as always.
"""
from __future__ import annotations

import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from ..train.runs import _write_atomic

KEY_METRICS = ("student_test_acc", "control_test_acc", "agreement_st", "iou_tt@0.4", "iou_st@0.4", "gap")


def _status_file(folder: Path, key: str) -> Path:
    return Path(folder) / "status" / f"{key.replace('/', '.')}.json"


def mark(folder: Path, key: str, state: str, **fields) -> None:
    """Record `state` (and `fields`) as job `key`'s status, replacing the previous one atomically."""
    path = _status_file(folder, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"job": key, "state": state, "at": time.time(), **fields}
    _write_atomic(path, json.dumps(record, sort_keys=True) + "\n")


def read_status(folder: Path, key: str) -> dict:
    """Job `key`'s last recorded status; {"state": "left"} when it never started."""
    path = _status_file(folder, key)
    return json.loads(path.read_text()) if path.exists() else {"job": key, "state": "left"}


def tracked(folder: Path, key: str, function: Callable, *args):
    """`function(*args)`, recorded as running (this host and process) and then done in the sweep's status."""
    mark(folder, key, "running", **_this_process())
    start = time.perf_counter()
    result = function(*args)
    mark(folder, key, "done", seconds=time.perf_counter() - start)
    return result


def _this_process() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def write_plan(folder: Path, points: Sequence[dict]) -> None:
    """plan.json: each point's label and the keys of its jobs, in grid order, and the sweep's driver process."""
    plan = {"driver": _this_process(), "points": list(points)}
    _write_atomic(Path(folder) / "plan.json", json.dumps(plan, indent=2) + "\n")


def read_plan(folder: Path):
    """The plan of the sweep folder's last run, or None."""
    path = Path(folder) / "plan.json"
    return json.loads(path.read_text()) if path.exists() else None


def forget_unfinished(folder: Path, keys) -> None:
    """Drop the status of jobs that a previous run left failed, retrying or running: they are left again."""
    for key in keys:
        if read_status(folder, key)["state"] != "done":
            _status_file(folder, key).unlink(missing_ok=True)


def _alive(record: dict) -> bool:
    """Whether the process of a record still runs (only knowable on its own host; elsewhere assumed)."""
    if record.get("host") != socket.gethostname():
        return True
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # it runs, as another user
        pass
    return True


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def point_state(records: Sequence[dict], driver_alive: bool = True) -> tuple:
    """(done | running | failed | left, detail) of a point from its jobs' status records; nothing runs any more
    when the sweep's driver has ended."""
    failed = [r for r in records if r["state"] == "failed"]
    if failed:
        return "failed", "; ".join(f"{r['job']}: {r['error']}" for r in failed)
    running = [r for r in records if r["state"] in ("running", "retrying")]
    live = [r for r in running if driver_alive and (r["state"] == "retrying" or _alive(r))]
    if live:
        return "running", "; ".join(
            f"{r['job']} {'retrying after ' + r['error'] if r['state'] == 'retrying' else 'running'} for "
            f"{_duration(time.time() - r['at'])}" + (f" (pid {r['pid']} on {r['host']})" if "pid" in r else "")
            for r in live)
    if all(r["state"] == "done" for r in records):
        return "done", f"{_duration(sum(r['seconds'] for r in records))} of compute"
    if running:
        return "left", "interrupted: " + ", ".join(r["job"] for r in running)
    started = [r["job"] for r in records if r["state"] == "done"]
    return "left", ("done: " + ", ".join(started)) if started else ""


def describe(folder: Path, plan: dict) -> str:
    """What `rkd sweep --status` prints for a plan (see `write_plan`): a count per state, then one line per point."""
    points, driver_alive = plan["points"], _alive(plan["driver"]) if "driver" in plan else True
    states = [(point, *point_state([read_status(folder, key) for key in point["jobs"]], driver_alive))
              for point in points]
    counts = {state: sum(1 for _, s, _ in states if s == state) for state in ("done", "running", "failed", "left")}
    lines = [f"sweep {folder}: {len(points)} points, " + ", ".join(f"{n} {state}" for state, n in counts.items())]
    for point, state, detail in states:
        lines.append(f"  {state:<8} {point['label']:<40} {detail}".rstrip())
    return "\n".join(lines)


class Progress:
    """One line per finished point with its compute time, key metrics and the sweep's ETA.

    ETA: the mean compute time of the points finished so far, times the points left, over the jobs that run at
    once (`slots`)."""

    def __init__(self, total: int, slots: int) -> None:
        self.total, self.slots, self.finished_seconds, self.failed = total, max(1, slots), [], 0

    def point_failed(self, label: str, error: str) -> str:
        self.failed += 1
        return f"point failed: {label}: {error}"

    def point_done(self, label: str, seconds: float, metrics: dict) -> str:
        self.finished_seconds.append(seconds)
        done = len(self.finished_seconds)
        left = self.total - done - self.failed
        shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in KEY_METRICS if k in metrics)
        eta = sum(self.finished_seconds) / done * left / self.slots
        finish = datetime.fromtimestamp(time.time() + eta, timezone.utc).strftime("%H:%M UTC")
        tail = f"ETA {_duration(eta)} ({finish})" if left else "no point left"
        return f"point {done}/{self.total} done: {label} in {_duration(seconds)}; {shown}; {left} left, {tail}"
