"""`rkd sweep`: distill at a range of augmentation magnitudes and report which of the paper's claims hold."""
from __future__ import annotations

from dataclasses import replace

import click
import torch
from click.core import ParameterSource

from ..train import run_lock
from ..train.distributed import resolve_device
from ..study.sweep import SweepOptions, grid, plan_entries, run_sweep, sweep_folder
from ..study.executors import EXECUTORS, make_executor
from ..study.status import describe, read_plan
from ..study.report import write_outputs
from .multi_value import ManyValues
from .options import (DEFAULT_CHECKPOINT_EVERY, Flags, build_job_options, build_kd_options, build_teacher_options,
                      data_options, kd_options, model_options, teacher_options)



CPU_SWEEP_EPOCHS = 6         # the default sweep's cut to fit 30 minutes on 2 CPU cores
CPU_SWEEP_TRAIN_IMAGES = 5000
# --regime overfit: students see few images for many epochs, so the control student overfits at magnitude 0
REGIMES = {"default": {}, "overfit": dict(train_images=500, epochs=15, batch_size=32, magnitudes=(0, 5, 9, 15, 20),
                                         seeds=(0, 1, 2))}


@click.command("sweep")
@data_options
@model_options
@click.option("--name", default=None, help="Sweep folder name [derived from the options].")
@click.option("--regime", type=click.Choice(list(REGIMES)), default="default", show_default=True,
              help="overfit: students train on {train_images} images for {epochs} epochs in batches of "
                   "{batch_size}, magnitudes {magnitudes}, seeds {seeds}, so the control student overfits (the flags "
                   "override each).".format(
                       **{k: " ".join(map(str, v)) if isinstance(v, tuple) else v
                          for k, v in REGIMES["overfit"].items()}))
@click.option("--magnitudes", cls=ManyValues, default=(0, 5, 9, 15, 20, 25), show_default=True,
              help="Student augmentation magnitudes (bins of --num-magnitude-bins).")
@click.option("--seeds", cls=ManyValues, default=(0,), show_default=True, help="Seeds per magnitude.")
@click.option("--teacher-magnitudes", cls=ManyValues, default=None,
              help="Also train teacher ensembles at these magnitudes (the paper's weak/strong teachers) "
                   "[the default un-augmented ensemble].")
@click.option("--train-images", type=click.IntRange(0), default=None,
              help=f"Student training images per run, 0 = the whole train split [{CPU_SWEEP_TRAIN_IMAGES} on the CPU, "
                   "all on a GPU].")
@click.option("--analysis-images", type=click.IntRange(1), default=1000, show_default=True)
@teacher_options
@kd_options
@click.option("--executor", type=click.Choice(list(EXECUTORS)), default="sequential", show_default=True,
              help="sequential: one job after the other in this process; ray: each job a Ray task (one GPU each "
                   "where the cluster has GPUs), run in parallel (pip install 'rkd[ray]').")
@click.option("--ray-address", default=None, metavar="HOST:PORT",
              help="Join this Ray cluster (every node sees --runs-dir and --data at the same paths) [a local Ray "
                   "instance on this machine's CPUs and GPUs, for the sweep's duration].")
@click.option("--cpus-per-point", type=click.IntRange(1), default=None,
              help="Torch CPU threads of every job, and the CPUs a Ray task asks for on a cluster without GPUs. "
                   "CPU results depend on it, so executors agree at the same value [this process's torch threads].")
@click.option("--status", "show_status", is_flag=True,
              help="Show which points of the sweep folder are done, running, failed and left, then exit.")
def sweep_command(name, regime, magnitudes, seeds, teacher_magnitudes, train_images, analysis_images, executor,
                  ray_address, cpus_per_point, show_status, **kw) -> None:
    """The paper's study over augmentation magnitudes: per magnitude and seed, a distilled student, a
    cross-entropy control, attention IoU and fidelity; a table, plots and a report of which claims hold.
    Resumable: finished runs are reused. Its jobs run one after the other, or as Ray tasks in parallel
    (--executor ray); a line per finished point gives an ETA, and --status shows where a sweep stands. On the CPU the defaults are cut to fit 30 minutes on 2 cores
    (6 epochs on 5000 training images per student); on a GPU they are the dataset's full settings."""
    context = click.get_current_context()
    if context.get_parameter_source("magnitude") == ParameterSource.COMMANDLINE:
        raise click.BadParameter("a sweep sets the magnitude per run: use --magnitudes", param_hint="--magnitude")
    preset = {key: value for key, value in REGIMES[regime].items()
              if context.get_parameter_source(key) != ParameterSource.COMMANDLINE}
    magnitudes, seeds = preset.get("magnitudes", magnitudes), preset.get("seeds", seeds)
    train_images = preset.get("train_images", train_images)
    epochs, batch_size = kw["epochs"] or preset.get("epochs"), kw["batch_size"] or preset.get("batch_size")
    if resolve_device(kw["device"]).type == "cpu":
        epochs = epochs or CPU_SWEEP_EPOCHS
        train_images = CPU_SWEEP_TRAIN_IMAGES if train_images is None else train_images
    flags = Flags(kw, epochs=epochs, batch_size=batch_size, seed=seeds[0], name=None, resume=True,
                  checkpoint_every=DEFAULT_CHECKPOINT_EVERY)  # rkd sweep has no --checkpoint-every
    job, facts, defaults = build_job_options(flags, default_policy="randaugment", kd=build_kd_options(flags))
    job = replace(job, data=replace(job.data, train_images=train_images or None))
    for magnitude in (*magnitudes, *(teacher_magnitudes or ())):
        if not 0 <= magnitude < job.data.augment.num_magnitude_bins:
            raise click.BadParameter(f"magnitude {magnitude} is outside 0..{job.data.augment.num_magnitude_bins - 1}",
                                     param_hint="--magnitudes")
    if min(seeds) < 0:
        raise click.BadParameter(f"seed {min(seeds)} is negative; use seeds >= 0", param_hint="--seeds")
    sweep = SweepOptions(magnitudes=tuple(magnitudes), seeds=tuple(seeds),
                         teacher_magnitudes=tuple(teacher_magnitudes or ()), analysis_images=analysis_images,
                         teachers=build_teacher_options(flags, defaults), regime=regime)
    folder = sweep_folder(job.runs_dir, name, job, facts.kind, sweep)
    if show_status:
        click.echo(describe(folder, read_plan(folder) or {"points": plan_entries(grid(sweep))}))
        return
    run_lock.acquire(folder, "sweep folder")  # held until the command ends: one sweep per folder at a time
    if executor == "ray" and job.device not in ("auto", "cuda", "cpu"):
        raise click.BadParameter("Ray gives every task its own GPU: use auto, cuda or cpu", param_hint="--device")
    runner = make_executor(executor, cpus_per_point or torch.get_num_threads(), ray_address,
                           use_gpus=job.device != "cpu")
    result = run_sweep(job, facts, sweep, folder, runner)
    if not result.points:
        raise click.ClickException(f"no sweep point finished ({len(result.failed)} jobs failed); see "
                                   "the lines above, or rkd sweep --status with the same options")
    points = result.points
    description = (f"Regime `{regime}`. Data `{job.data.data}`, loader `{job.data.loader}`, "
                   f"policy `{job.data.augment.policy}`, "
                   f"student `{job.arch}` ({job.optim.epochs} epochs on "
                   f"{train_images or 'all'} training images in batches of {job.data.batch_size}), "
                   f"KD loss `{job.kd.loss_name}` ({job.kd.mode}, α={job.kd.alpha:g}, T={job.kd.temperature:g}), "
                   f"seeds {list(seeds)}, teachers {sweep.teachers.count} × `{sweep.teachers.arch}` "
                   f"({sweep.teachers.epochs} epochs); "
                   f"attention and fidelity measured on "
                   f"{analysis_images} images.")
    click.echo(write_outputs(points, folder, description))
    click.echo(f"sweep folder: {folder}")
    if result.failed:
        key, error = next(iter(result.failed.items()))
        raise click.ClickException(f"{len(result.failed)} sweep jobs did not finish (first: {key}: {error}); the "
                                   f"report covers the {len(points)} finished points; --status lists the rest; rerun "
                                   "the same command to retry them (finished runs are reused)")
