"""`rkd train-teacher` and `rkd distill`."""
from __future__ import annotations

from dataclasses import replace

import click

from ..kd.distill import distill
from ..kd.pretrained import parse_timm_spec
from ..kd.teachers import check_teacher_spec, default_teachers, train_teacher
from .options import (Flags, build_job_options, build_kd_options, build_teacher_options, data_options, kd_options,
                      run_options, teacher_options)


FINE_TUNE_LR_FACTOR = 0.1


@click.command("train-teacher")
@data_options
@run_options
@click.option("--init", default=None, metavar="timm:NAME[@FILE]",
              help="Fine-tune pretrained timm weights (from timm's hub, or a local safetensors/state_dict FILE) "
                   "with a fresh head for the data's classes; --arch defaults to NAME's architecture and --lr to "
                   f"{FINE_TUNE_LR_FACTOR:g}x the dataset default.")
def train_teacher_command(init, **kw) -> None:
    """Train one teacher with cross-entropy (augmentation off unless --policy is given), or fine-tune one."""
    flags = Flags(kw, arch=kw["arch"] or (parse_timm_spec(init, "--init").arch if init else None))
    job, facts, defaults = build_job_options(flags, default_policy="none", arch_key="teacher_arch",
                                             epochs_key="teacher_epochs", init=init)
    if init is not None and kw["lr"] is None:
        job = replace(job, optim=replace(job.optim, lr=FINE_TUNE_LR_FACTOR * defaults["lr"]))
    context = train_teacher(job, facts)
    if context.run is not None:
        click.echo(f"teacher checkpoint: {context.run.best}")


@click.command("distill")
@data_options
@run_options
@click.option("--teachers", multiple=True, metavar="CHECKPOINT|RUN_DIR|timm:NAME[@FILE]",
              help="A teacher (repeat for an ensemble): an rkd checkpoint, a run directory (its checkpoints/best.pt), "
                   "or a pretrained timm model from its hub or a local weights FILE [the dataset's default ensemble, "
                   "trained on first use].")
@teacher_options
@kd_options
def distill_command(teachers, **kw) -> None:
    """Distill a student from a teacher ensemble under the chosen augmentation (the main job)."""
    flags = Flags(kw)
    job, facts, defaults = build_job_options(flags, default_policy="randaugment", kd=build_kd_options(flags))
    ensemble = build_teacher_options(flags, defaults, teachers)
    for spec in ensemble.specs:
        check_teacher_spec(spec)
    distill(job, facts, list(ensemble.specs) or default_teachers(job, facts, ensemble))
