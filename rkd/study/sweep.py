"""`rkd sweep`: the paper's study over a range of augmentation magnitudes.

For every teacher set (the default un-augmented ensemble, or ensembles trained at `teacher_magnitudes`), every
student magnitude and every seed: distill a student, train a cross-entropy-only control student, and measure
attention IoU (on augmented training images) and fidelity (on the clean test set). Every piece lives in its own run
directory under the sweep folder and is reused when present, so an interrupted sweep resumes where it stopped.
The pieces are jobs for an executor (`sweep_executors`): one after the other here, or in parallel on Ray.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch

import pipelines

from .analyze import AnalyzeOptions, analyze
from ..config import DataOptions, TeacherOptions
from ..train.data import DatasetFacts
from ..kd.distill import distill
from ..train.distributed import log, resolve_device
from ..train.job import JobOptions
from ..train.runs import RunDir
from .executors import Executor, Job, SequentialExecutor
from .status import Progress, forget_unfinished, mark, tracked, write_plan
from ..kd.teachers import default_teachers, train_teacher

DEFAULT_TEACHERS = "default"
ATTENTION_KEYS = ("iou_tt@0.4", "iou_tt_pooled@0.4", "iou_st@0.4", "iou_st_pooled@0.4", "soft_iou_tt", "soft_iou_st",
                  "iou_all_teachers_pooled@0.4", "iou_tt_paper@0.4", "iou_st_paper@0.4", "iou_all_teachers_paper@0.4",
                  "iou_teachers_student_paper@0.4")
FIDELITY_KEYS = ("agreement_st", "kl_teacher_student", "kl_student_teacher", "mi_st", "nmi_st", "ece_student",
                 "agreement_st_paper", "kl_st_paper", "mi_st_paper_score", "mi_st_paper_classif", "ece_student_paper")


@dataclass(frozen=True)
class SweepOptions:
    """The grid, the teachers and what is measured at each point (the KD settings are the job's `kd`)."""

    magnitudes: tuple = (0, 5, 9, 15, 20, 25)
    seeds: tuple = (0,)
    teacher_magnitudes: tuple = ()
    analysis_images: int = 1000
    teachers: TeacherOptions = TeacherOptions()
    regime: str = "default"


def _with_magnitude(data: DataOptions, magnitude: int) -> DataOptions:
    return replace(data, augment=replace(data.augment, magnitude=magnitude))


def teacher_sets(job: JobOptions, facts: DatasetFacts, sweep: SweepOptions, folder: Path) -> dict:
    """{teacher-set name: checkpoint paths}: the default ensemble, or one trained at each teacher magnitude."""
    teachers = sweep.teachers
    if not sweep.teacher_magnitudes:
        return {DEFAULT_TEACHERS: default_teachers(job, facts, teachers)}
    sets = {}
    full_data = replace(job.data, train_images=None)
    for magnitude in sweep.teacher_magnitudes:
        paths = []
        for seed in range(teachers.count):
            name = f"teacher-m{magnitude}-s{seed}"
            log(f"teachers at magnitude {magnitude}: {name}")
            train_teacher(JobOptions(data=_with_magnitude(full_data, magnitude), arch=teachers.arch,
                                     optim=replace(job.optim, epochs=teachers.epochs), seed=seed,
                                     device=job.device, runs_dir=str(folder / "teachers"), name=name, resume=True,
                                     progress=job.progress), facts)
            paths.append(folder / "teachers" / name / "checkpoints" / "best.pt")
        sets[f"m{magnitude}"] = paths
    return sets


def _analysis(data: DataOptions, facts: DatasetFacts, teachers: list, student: Path, split: str, images: int,
              seed: int, device, out: Path, keys: tuple) -> dict:
    """analysis.json of `out`, computed once per (images, seed) and again when it lacks one of `keys`. The point's
    seed picks the images and their augmentation draws, so seeds are independent repeats of the attention
    measurement too."""
    stored = out / "analysis.json"
    if stored.exists():
        results = json.loads(stored.read_text())
        if results.get("seed") == seed and results.get("max_images") == images and all(k in results for k in keys):
            return results
    return analyze(data, facts, teachers, student,
                   AnalyzeOptions(split=split, max_images=images, seed=seed), device, out)


def _final_epoch(run: Path) -> dict:
    return RunDir(run).read_metrics("epoch")[-1]


@dataclass(frozen=True)
class Point:
    """One (teacher set, magnitude, seed) of the grid, and the keys of its jobs (their run directories)."""

    teacher_set: str
    magnitude: int
    seed: int

    @property
    def label(self) -> str:
        return f"teachers {self.teacher_set}, magnitude {self.magnitude}, seed {self.seed}"

    @property
    def distill_name(self) -> str:
        return f"distill-t{self.teacher_set}-m{self.magnitude}-s{self.seed}"

    @property
    def control_name(self) -> str:   # the control student has no teachers: points of every teacher set share it
        return f"control-m{self.magnitude}-s{self.seed}"

    @property
    def jobs(self) -> dict:
        """{role: job key}; an analysis job is named after the distilled student it measures."""
        return {"distill": self.distill_name, "control": self.control_name,
                "attention": f"{self.distill_name}/analysis-train-augmented",
                "fidelity": f"{self.distill_name}/analysis-test-clean"}


def grid(sweep: SweepOptions) -> list:
    """The sweep's points in order: teacher set, then magnitude, then seed."""
    sets = [DEFAULT_TEACHERS] if not sweep.teacher_magnitudes else [f"m{m}" for m in sweep.teacher_magnitudes]
    return [Point(teacher_set, magnitude, seed) for teacher_set in sets for magnitude in sweep.magnitudes
            for seed in sweep.seeds]


def plan_entries(points: list) -> list:
    """The points as `sweep_status` records them: label and job keys."""
    return [{"label": point.label, "jobs": list(point.jobs.values())} for point in points]


def _point_job(job: JobOptions, folder: Path, point: Point) -> JobOptions:
    return replace(job, data=_with_magnitude(job.data, point.magnitude), seed=point.seed, runs_dir=str(folder),
                   resume=True)


def distill_student(job: JobOptions, facts: DatasetFacts, folder: Path, point: Point, teachers: list) -> dict:
    """Distill the point's student from its teacher set with the job's KD settings; returns the run's final
    epoch record."""
    log(f"sweep point: {point.label}: distilling")
    distill(replace(_point_job(job, folder, point), name=point.distill_name), facts, teachers)
    return _final_epoch(folder / point.distill_name)


def train_control(job: JobOptions, facts: DatasetFacts, folder: Path, point: Point) -> dict:
    """Train the point's cross-entropy-only control student; returns the run's final epoch record."""
    log(f"sweep point: {point.label}: control student")
    train_teacher(replace(_point_job(job, folder, point), name=point.control_name, kd=None), facts, role="control")
    return _final_epoch(folder / point.control_name)


ANALYSES = {"attention": ("train", True), "fidelity": ("test", False)}   # role: (split, augmented)
ANALYSIS_KEYS = {"attention": ATTENTION_KEYS, "fidelity": FIDELITY_KEYS}   # what each analysis must hold


def measure(job: JobOptions, facts: DatasetFacts, sweep: SweepOptions, folder: Path, point: Point, teachers: list,
            role: str) -> dict:
    """The distilled student's analysis `role`: attention IoU on augmented training images at the point's
    magnitude, or fidelity on the clean test images."""
    split, augmented = ANALYSES[role]
    data = (_with_magnitude(job.data, point.magnitude) if augmented
            else replace(job.data, augment=pipelines.AugmentSpec()))
    return _analysis(data, facts, teachers, folder / point.distill_name / "checkpoints" / "last.pt", split,
                     sweep.analysis_images, point.seed, resolve_device(job.device), folder / point.jobs[role],
                     ANALYSIS_KEYS[role])


def point_jobs(job: JobOptions, facts: DatasetFacts, sweep: SweepOptions, folder: Path, point: Point,
               teachers: list) -> list:
    """The point's four jobs: the two students (independent), then the two analyses of the distilled one."""
    steps = {"distill": (distill_student, (job, facts, folder, point, teachers)),
             "control": (train_control, (job, facts, folder, point)),
             **{role: (measure, (job, facts, sweep, folder, point, teachers, role)) for role in ANALYSES}}
    keys = point.jobs
    return [Job(key, tracked, (folder, key, steps[role][0], *steps[role][1]),
                (keys["distill"],) if role in ANALYSES else ()) for role, key in keys.items()]


def point_metrics(point: Point, results: dict) -> dict:
    """The point's row of the sweep from its jobs' results ({role: result})."""
    student_final, control_final = results["distill"], results["control"]
    attention, fidelity = results["attention"], results["fidelity"]
    return {
        "teachers": point.teacher_set, "magnitude": point.magnitude, "seed": point.seed,
        "student_test_acc": student_final["test_acc"], "student_train_acc": student_final["train_acc"],
        "gap": student_final["gap"], "control_test_acc": control_final["test_acc"], "control_gap": control_final["gap"],
        **{key: attention[key] for key in ATTENTION_KEYS},
        **{key: fidelity[key] for key in FIDELITY_KEYS},
    }


@dataclass(frozen=True)
class SweepResult:
    """The metrics of the points that finished (in grid order), and {job key: error} of the jobs that did not."""

    points: list
    failed: dict


def run_sweep(job: JobOptions, facts: DatasetFacts, sweep: SweepOptions, folder: Path,
              executor: Optional[Executor] = None) -> SweepResult:
    """Every point of the grid on `executor` (sequential by default); finished runs are reused. A failed job is
    retried once, then reported, and the points that need it are left out while the others go on. `job.kd` is
    the distillations' loss; `facts` the data's, resolved once."""
    folder.mkdir(parents=True, exist_ok=True)
    executor = executor or SequentialExecutor(torch.get_num_threads())
    with executor:   # joined or started first, so a cluster that cannot be used is said before teachers train
        teachers = teacher_sets(job, facts, sweep, folder)
        points = grid(sweep)
        jobs = {}
        for point in points:
            for point_job in point_jobs(job, facts, sweep, folder, point, teachers[point.teacher_set]):
                jobs.setdefault(point_job.key, point_job)   # a control student shared by teacher sets runs once
        write_plan(folder, plan_entries(points))
        forget_unfinished(folder, jobs)   # this run retries them
        finished, failed = _collect(executor, list(jobs.values()), points, folder)
    metrics = [finished[point] for point in points if finished.get(point) is not None]
    (folder / "points.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return SweepResult(metrics, failed)


def _collect(executor: Executor, jobs: list, points: list, folder: Path) -> tuple:
    """Run the jobs; record failures, log a line per point that ends. ({point: metrics or None}, {key: error})."""
    progress = Progress(len(points), executor.slots)
    results, seconds, failed, finished = {}, {}, {}, {}
    for outcome in executor.run(jobs):
        if outcome.retrying:
            mark(folder, outcome.key, "retrying", error=outcome.error, attempt=outcome.attempt)
            log(f"sweep job {outcome.key} failed ({outcome.error}); retrying once")
            continue
        if outcome.error:
            mark(folder, outcome.key, "failed", error=outcome.error, attempt=outcome.attempt)
            failed[outcome.key] = outcome.error
        else:
            results[outcome.key], seconds[outcome.key] = outcome.result, outcome.seconds
        for point in points:
            keys = point.jobs
            if point in finished or outcome.key not in keys.values():
                continue
            if outcome.error:
                finished[point] = None
                log(progress.point_failed(point.label, f"{outcome.key}: {outcome.error}"))
            elif all(key in results for key in keys.values()):
                finished[point] = point_metrics(point, {role: results[key] for role, key in keys.items()})
                log(progress.point_done(point.label, sum(seconds[key] for key in keys.values()), finished[point]))
    return finished, failed


def sweep_folder(runs_dir: str, name: Optional[str], job: JobOptions, kind: str, sweep: SweepOptions) -> Path:
    """The sweep's folder: `name`, or one named after the data, policy, loader, KD loss and regime."""
    suffix = "" if sweep.regime == "default" else f"-{sweep.regime}"
    derived = f"sweep-{kind}-{job.data.augment.policy}-{job.data.loader}-{job.kd.loss_name}{suffix}"
    return Path(runs_dir) / (name or derived)
