"""`rkd train-teacher` and `rkd distill`."""
from __future__ import annotations

import click

from ..defaults import DEFAULT_NUM_TEACHERS, defaults_for
from ..kd.distill import KDOptions, distill
from ..kd.ensemble import TEACHER_BN_MODES
from ..kd.losses import KD_MODES
from ..kd.pretrained import parse_timm_spec
from ..kd.teachers import check_teacher_spec, default_teachers, train_teacher
from .options import build_job_options, check_arch, data_options, dataset_kind, run_options
from .validate import Real


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
    if init is not None:
        kw["arch"] = kw["arch"] or parse_timm_spec(init, "--init").arch
        kw["lr"] = kw["lr"] or FINE_TUNE_LR_FACTOR * defaults_for(dataset_kind(kw))["lr"]
    job, _ = build_job_options(kw, default_policy="none", default_arch_key="teacher_arch",
                               default_epochs_key="teacher_epochs", extra={"init": init} if init else None)
    context = train_teacher(job, init=init)
    if context.run is not None:
        click.echo(f"teacher checkpoint: {context.run.best}")


@click.command("distill")
@data_options
@run_options
@click.option("--teachers", multiple=True, metavar="CHECKPOINT|RUN_DIR|timm:NAME[@FILE]",
              help="A teacher (repeat for an ensemble): an rkd checkpoint, a run directory (its checkpoints/best.pt), "
                   "or a pretrained timm model from its hub or a local weights FILE [the dataset's default ensemble, "
                   "trained on first use].")
@click.option("--num-teachers", type=click.IntRange(1), default=DEFAULT_NUM_TEACHERS, show_default=True,
              help="Size of the default ensemble when --teachers is not given.")
@click.option("--teacher-arch", default=None, help="Architecture of the default teachers [dataset default].")
@click.option("--teacher-epochs", type=click.IntRange(1), default=None,
              help="Epochs of the default teachers [dataset default].")
@click.option("--alpha", type=Real(0, 1), default=0.6, show_default=True, help="Weight of cross-entropy vs KD.")
@click.option("--temperature", type=Real(positive=True), default=3.0, show_default=True)
@click.option("--kd-mode", type=click.Choice(KD_MODES), default="per-teacher", show_default=True,
              help="Mean over teachers of the KD loss (paper), or KD against the averaged teacher probabilities.")
@click.option("--teacher-bn", type=click.Choice(TEACHER_BN_MODES), default="eval", show_default=True,
              help="Teachers' BatchNorm mode ('train' reproduces the paper's code).")
@click.option("--teacher-fusion", type=click.Choice(["auto", "fused", "loop"]), default="auto", show_default=True,
              help="Teachers of one architecture as one fused forward, or one after the other (BatchNorm folded "
                   "in both); auto: fused on CUDA, loop on the CPU (faster there, bench/bench_ensemble.py).")
@click.option("--metrics-every", type=click.IntRange(0), default=50, show_default=True,
              help="Measure attention IoU and fidelity of the training batch every N steps (0: never).")
@click.option("--compile", "compile_teachers", is_flag=True,
              help="torch.compile the teacher ensemble's forward (slow first step; pays off on long GPU runs).")
def distill_command(teachers, num_teachers, teacher_arch, teacher_epochs, alpha, temperature, kd_mode, teacher_bn,
                    teacher_fusion, metrics_every, compile_teachers, **kw) -> None:
    """Distill a student from a teacher ensemble under the chosen augmentation (the main job)."""
    kd = KDOptions(alpha=alpha, temperature=temperature, mode=kd_mode, teacher_bn=teacher_bn,
                   compile=compile_teachers, fusion=teacher_fusion, metrics_every=metrics_every)
    job, defaults = build_job_options(kw, default_policy="randaugment", extra={"kd": kd.__dict__})
    for spec in teachers:
        check_teacher_spec(spec)
    if not teachers:
        teachers = default_teachers(job.data, arch=check_arch(teacher_arch or defaults["teacher_arch"],
                                                              "--teacher-arch"),
                                    epochs=teacher_epochs or defaults["teacher_epochs"], count=num_teachers,
                                    optim=job.optim, device=job.device, runs_dir=job.runs_dir,
                                    progress=job.progress)
    distill(job, list(teachers), kd)
