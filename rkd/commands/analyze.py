"""`rkd analyze`: attention IoU and fidelity of teachers (and a student) under an augmentation."""
from __future__ import annotations

from pathlib import Path

import click

import kernels

from ..study.analyze import AnalyzeOptions, analyze
from ..measure.attention import CAM_MODES
from ..config import DataOptions, JobOptions, OptimConfig
from ..defaults import DEFAULT_NUM_TEACHERS, defaults_for
from ..kd.distill import distill_run_name
from ..train.data import DatasetFacts
from ..train.distributed import resolve_device
from ..errors import RkdError
from ..kd.teachers import default_teacher_runs
from .options import Flags, data_options, resolve_data
from .validate import Device, WritableFolder


def default_models(data: DataOptions, facts: DatasetFacts, runs_dir: str) -> tuple:
    """The main job's teachers and student (`rkd distill` with no options), which must exist already."""
    defaults = defaults_for(facts.kind)
    teachers = [run / "checkpoints" / "best.pt" for run in
                default_teacher_runs(data, facts.kind, arch=defaults["teacher_arch"], count=DEFAULT_NUM_TEACHERS,
                                     runs_dir=runs_dir)]
    missing = [str(t) for t in teachers if not t.exists()]
    if missing:
        raise RkdError(f"--teachers not given and the default teachers are missing ({missing[0]}): run "
                       "`rkd distill` first, or pass --teachers")
    main_job = JobOptions(data=data, arch=defaults["arch"], optim=OptimConfig(epochs=1))
    student = Path(runs_dir) / distill_run_name(main_job, facts.kind) / "checkpoints" / "best.pt"
    return teachers, student if student.exists() else None


@click.command("analyze")
@data_options
@click.option("--teachers", multiple=True, type=click.Path(path_type=Path),
              help="Teacher checkpoints (repeat) [the default ensemble of `rkd distill`].")
@click.option("--student", type=click.Path(path_type=Path), default=None,
              help="Student checkpoint [the main job's student, when --teachers is not given either].")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--max-images", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--thresholds", type=float, multiple=True, default=(0.4,), show_default=True,
              help="Mask thresholds after min-max normalization (repeat).")
@click.option("--cam", "cam_mode", type=click.Choice(CAM_MODES), default="agnostic", show_default=True,
              help="Class-agnostic CAM (sum over classes, the paper) or the target / predicted class's.")
@click.option("--backend", type=click.Choice(kernels.BACKENDS), default="auto",
              show_default=True, help="Attention-IoU kernel.")
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False))
@click.option("--out", type=WritableFolder(Path), default=None,
              help="Output folder [runs/analysis/<split>-<policy>-m<magnitude>].")
@click.option("--device", default="auto", show_default=True, type=Device())
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
def analyze_command(teachers, student, split, max_images, thresholds, cam_mode, backend, runs_dir, out, device, seed,
                    **kw) -> None:
    """Teacher-teacher and student-teacher attention IoU, agreement, KL, MI and calibration, as JSON, Markdown
    and a PNG grid of attention masks."""
    if any(not 0 <= t <= 1 for t in thresholds):  # NaN too; checked before any work
        raise click.BadParameter(f"thresholds must lie in [0, 1], got {list(thresholds)}", param_hint="--thresholds")
    data, facts, _ = resolve_data(Flags(kw), "randaugment")
    if not teachers:
        teachers, default_student = default_models(data, facts, runs_dir)
        student = student or default_student
    options = AnalyzeOptions(split=split, max_images=max_images, thresholds=tuple(thresholds), cam_mode=cam_mode,
                             seed=seed, backend=backend)
    out = out or Path(runs_dir) / "analysis" / f"{split}-{data.augment.policy}-m{data.augment.magnitude}"
    results = analyze(data, facts, list(teachers), student, options, resolve_device(device), out)
    click.echo((out / "analysis.md").read_text())
    click.echo(f"wrote {out}/analysis.json, analysis.md, attention_grid.png ({results['images']} images)")
