"""`rkd sweep`: the paper's study over a range of augmentation magnitudes.

For every teacher set (the default un-augmented ensemble, or ensembles trained at `teacher_magnitudes`), every
student magnitude and every seed: distill a student, train a cross-entropy-only control student, and measure
attention IoU (on augmented training images) and fidelity (on the clean test set). Every piece lives in its own run
directory under the sweep folder and is reused when present, so an interrupted sweep resumes where it stopped.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import pipelines

from .analyze import AnalyzeOptions, analyze
from .data import DataOptions, dataset_facts
from .distill import KDOptions, distill
from .distributed import log, resolve_device
from .job import JobOptions
from .runs import RunDir
from .teachers import default_teachers, train_teacher

KD_LOSSES = {
    "kd": dict(alpha=0.6, mode="per-teacher"),          # the paper's loss
    "pure-kd": dict(alpha=0.0, mode="per-teacher"),     # towards matching: no cross-entropy
    "logit-mse": dict(alpha=0.0, mode="logit-mse"),     # direct logit matching
}
DEFAULT_TEACHERS = "default"
ATTENTION_KEYS = ("iou_tt@0.4", "iou_tt_pooled@0.4", "iou_st@0.4", "iou_st_pooled@0.4", "soft_iou_tt", "soft_iou_st",
                  "iou_all_teachers_pooled@0.4", "iou_tt_paper@0.4", "iou_st_paper@0.4", "iou_all_teachers_paper@0.4",
                  "iou_teachers_student_paper@0.4")
FIDELITY_KEYS = ("agreement_st", "kl_teacher_student", "kl_student_teacher", "mi_st", "nmi_st", "ece_student",
                 "agreement_st_paper", "kl_st_paper", "mi_st_paper_score", "mi_st_paper_classif", "ece_student_paper")


@dataclass(frozen=True)
class SweepOptions:
    """The grid and what is measured at each point."""

    magnitudes: tuple = (0, 5, 9, 15, 20, 25)
    seeds: tuple = (0,)
    teacher_magnitudes: tuple = ()
    kd_loss: str = "kd"
    analysis_images: int = 1000
    num_teachers: int = 2
    teacher_arch: str = "resnet14"
    teacher_epochs: int = 2
    regime: str = "default"


def _with_magnitude(data: DataOptions, magnitude: int) -> DataOptions:
    return replace(data, augment=replace(data.augment, magnitude=magnitude))


def teacher_sets(job: JobOptions, sweep: SweepOptions, folder: Path) -> dict:
    """{teacher-set name: checkpoint paths}: the default ensemble, or one trained at each teacher magnitude."""
    if not sweep.teacher_magnitudes:
        return {DEFAULT_TEACHERS: default_teachers(job.data, arch=sweep.teacher_arch, epochs=sweep.teacher_epochs,
                                                   count=sweep.num_teachers, optim=job.optim, device=job.device,
                                                   runs_dir=job.runs_dir, progress=job.progress)}
    sets = {}
    full_data = replace(job.data, train_images=None)
    for magnitude in sweep.teacher_magnitudes:
        paths = []
        for seed in range(sweep.num_teachers):
            name = f"teacher-m{magnitude}-s{seed}"
            log(f"teachers at magnitude {magnitude}: {name}")
            train_teacher(JobOptions(data=_with_magnitude(full_data, magnitude), arch=sweep.teacher_arch,
                                     optim=replace(job.optim, epochs=sweep.teacher_epochs), seed=seed,
                                     device=job.device, runs_dir=str(folder / "teachers"), name=name, resume=True,
                                     progress=job.progress))
            paths.append(folder / "teachers" / name / "checkpoints" / "best.pt")
        sets[f"m{magnitude}"] = paths
    return sets


def _analysis(data: DataOptions, teachers: list, student: Path, split: str, images: int, seed: int, device,
              out: Path, keys: tuple) -> dict:
    """analysis.json of `out`, computed once per (images, seed) and again when it lacks one of `keys`. The point's
    seed picks the images and their augmentation draws, so seeds are independent repeats of the attention
    measurement too."""
    stored = out / "analysis.json"
    if stored.exists():
        results = json.loads(stored.read_text())
        if results.get("seed") == seed and results.get("max_images") == images and all(k in results for k in keys):
            return results
    return analyze(data, dataset_facts(data), teachers, student,
                   AnalyzeOptions(split=split, max_images=images, seed=seed), device, out)


def _final_epoch(run: Path) -> dict:
    return RunDir(run).read_metrics("epoch")[-1]


def run_point(job: JobOptions, sweep: SweepOptions, folder: Path, teacher_set: str, teachers: list, magnitude: int,
              seed: int) -> dict:
    """Distill, control and measure one (teacher set, magnitude, seed) point; returns its metrics."""
    data = _with_magnitude(job.data, magnitude)
    point_job = replace(job, data=data, seed=seed, runs_dir=str(folder), resume=True)
    distill_name = f"distill-t{teacher_set}-m{magnitude}-s{seed}"
    control_name = f"control-m{magnitude}-s{seed}"
    log(f"sweep point: teachers {teacher_set}, magnitude {magnitude}, seed {seed}")
    distill(replace(point_job, name=distill_name), teachers, KDOptions(**KD_LOSSES[sweep.kd_loss]))
    train_teacher(replace(point_job, name=control_name), role="control")
    student = folder / distill_name / "checkpoints" / "last.pt"
    device = resolve_device(job.device)
    attention = _analysis(data, teachers, student, "train", sweep.analysis_images, seed, device,
                          folder / distill_name / "analysis-train-augmented", ATTENTION_KEYS)
    fidelity = _analysis(replace(data, augment=pipelines.AugmentSpec()), teachers, student, "test",
                         sweep.analysis_images, seed, device, folder / distill_name / "analysis-test-clean",
                         FIDELITY_KEYS)
    student_final, control_final = _final_epoch(folder / distill_name), _final_epoch(folder / control_name)
    return {
        "teachers": teacher_set, "magnitude": magnitude, "seed": seed,
        "student_test_acc": student_final["test_acc"], "student_train_acc": student_final["train_acc"],
        "gap": student_final["gap"], "control_test_acc": control_final["test_acc"], "control_gap": control_final["gap"],
        **{key: attention[key] for key in ATTENTION_KEYS},
        **{key: fidelity[key] for key in FIDELITY_KEYS},
    }


def run_sweep(job: JobOptions, sweep: SweepOptions, folder: Path) -> list:
    """Every point of the grid (finished ones are reused); returns the list of point metrics."""
    folder.mkdir(parents=True, exist_ok=True)
    points = []
    for teacher_set, teachers in teacher_sets(job, sweep, folder).items():
        for magnitude in sweep.magnitudes:
            for seed in sweep.seeds:
                points.append(run_point(job, sweep, folder, teacher_set, teachers, magnitude, seed))
    (folder / "points.json").write_text(json.dumps(points, indent=2) + "\n")
    return points


def sweep_folder(runs_dir: str, name: Optional[str], job: JobOptions, sweep: SweepOptions) -> Path:
    kind = dataset_facts(job.data).kind
    suffix = "" if sweep.regime == "default" else f"-{sweep.regime}"
    derived = f"sweep-{kind}-{job.data.augment.policy}-{job.data.loader}-{sweep.kd_loss}{suffix}"
    return Path(runs_dir) / (name or derived)
