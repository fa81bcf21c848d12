"""Teacher training (`rkd train-teacher`) and the default teacher ensemble, trained on first use and cached."""
from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

import pipelines

from ..config import DataOptions, TeacherOptions, TeacherRecord
from ..train.checkpoint import load_checkpoint, load_model
from ..train.data import DatasetFacts, eval_loaders, train_loader
from ..train.distributed import barrier, log
from ..errors import RkdError
from ..train.evaluate import predict_logits
from ..measure.metrics import accuracy
from ..train.job import JobContext, JobOptions, augment_tag, start_job, wrap_for_training
from ..models import WithFeatures, unwrap
from ..train.optim import OptimConfig
from ..train.plots import plot_loss_parts
from .pretrained import is_timm_spec, parse_timm_spec, timm_init, timm_teacher
from ..train.trainer import ModelInfo, Trainer


def teacher_run_name(options: JobOptions, kind: str) -> str:
    data = options.data
    return f"teacher-{kind}-{options.arch}-{augment_tag(data.augment)}-s{options.seed}"


def cross_entropy_step(model, images, labels, step: int) -> dict:
    """The Trainer's step function for a classifier: cross-entropy only, so loss == ce."""
    logits, _ = model(images)
    loss = F.cross_entropy(logits, labels)
    return {"loss": loss, "ce": loss.detach()}


def classifier_evaluation(context: JobContext):
    """Per-epoch test and train-subset accuracy: every rank evaluates its shard, the main rank reports."""
    test_loader, train_eval = eval_loaders(context.options.data, context.facts, context.device, context.dist)

    def evaluate(model, epoch: int) -> dict:
        test, train = (predict_logits(unwrap(model), loader, context.device, context.options.amp, context.dist)
                       for loader in (test_loader, train_eval))
        if not context.dist.is_main:
            return {}
        test_acc, train_acc = float(accuracy(*test)), float(accuracy(*train))
        return {"test_acc": test_acc, "train_acc": train_acc, "gap": train_acc - test_acc}

    return evaluate


def checkpoint_path(spec, flag: str = "--teachers") -> Path:
    """A checkpoint file, or a run directory's checkpoints/best.pt."""
    path = Path(spec).expanduser()
    if path.is_dir():
        best = path / "checkpoints" / "best.pt"
        if not best.is_file():
            raise RkdError(f"{flag}: {path} is a directory without checkpoints/best.pt; pass a checkpoint file or "
                           "a run directory of rkd train-teacher/distill")
        return best
    return path


def load_teacher(spec, device, *, num_classes: int, in_chans: int, image_size: int) -> tuple:
    """(model, architecture) of one --teachers entry: an rkd checkpoint or run directory, `timm:NAME`, or
    `timm:NAME@FILE` (see rkd.kd.pretrained); class and channel counts checked against the data."""
    if is_timm_spec(spec):
        parsed = parse_timm_spec(spec)
        model = timm_teacher(parsed, num_classes=num_classes, in_chans=in_chans, image_size=image_size)
        return model.to(device), parsed.arch
    model, payload = load_model(checkpoint_path(spec), device, num_classes=num_classes, in_chans=in_chans)
    return model, payload["arch"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def teacher_records(specs: Sequence) -> tuple:
    """TeacherRecords of --teachers entries: the file each names (a timm hub model: none) and its sha256."""
    records = []
    for spec in specs:
        path = parse_timm_spec(spec).file if is_timm_spec(spec) else checkpoint_path(spec)
        path = Path(path).expanduser().resolve() if path else None
        records.append(TeacherRecord(str(spec), str(path) if path else None, _sha256(path) if path else None))
    return tuple(records)


def check_teacher_spec(spec) -> None:
    """Fail before a run directory is made on a --teachers entry that names nothing loadable."""
    if is_timm_spec(spec):
        parse_timm_spec(spec)
    elif not checkpoint_path(spec).is_file():
        raise RkdError(f"--teachers: {spec} does not exist")


def pretrained_start(options: JobOptions, facts, init: str) -> nn.Module:
    """The model `init` (timm:NAME[@FILE]) names, with pretrained weights under a fresh head seeded by the job."""
    parsed = parse_timm_spec(init, "--init")
    if parsed.arch != options.arch:
        raise RkdError(f"--init {init} is a {parsed.arch} but --arch is {options.arch}; drop --arch or make them "
                       "match")
    torch.manual_seed(options.seed)
    return timm_init(parsed, num_classes=facts.num_classes, in_chans=facts.in_chans, image_size=facts.image_size)


def train_teacher(options: JobOptions, facts: DatasetFacts, role: str = "teacher") -> JobContext:
    """Train one classifier with cross-entropy; its run directory holds checkpoints/best.pt and last.pt.

    `role` names the model in progress and log lines (the sweep's cross-entropy students are "control");
    `options.init` (timm:NAME[@FILE]) fine-tunes pretrained weights with a fresh head instead of training from
    scratch."""
    init = options.init
    pretrained = pretrained_start(options, facts, init) if init else None  # its errors come before the run dir
    context = start_job(options, facts, teacher_run_name(options, facts.kind) + ("-pretrained" if init else ""))
    model = (context.new_model() if pretrained is None
             else pretrained.to(context.device, memory_format=torch.channels_last))
    trainer = Trainer(wrap_for_training(WithFeatures(model), context),
                      train_loader(options.data, context.facts, context.device, options.seed, context.dist),
                      cross_entropy_step, classifier_evaluation(context), options.optim,
                      ModelInfo(options.arch, context.facts.num_classes, context.facts.image_size,
                                context.facts.in_chans), context.device, context.run, amp=options.amp,
                      progress=options.progress, description=f"{role} {options.arch} s{options.seed}",
                      checkpoint_every=options.checkpoint_every, dist=context.dist)
    if options.resume:
        trainer.resume()
    records = trainer.fit()
    if context.run is not None:
        plot_loss_parts(records, context.run.plots / "loss.png")
    barrier(context.dist)
    return context


def default_teacher_data(data: DataOptions) -> DataOptions:
    """The default ensemble's training data: the whole train split, un-augmented (whatever the student uses)."""
    return replace(data, augment=pipelines.AugmentSpec(), train_images=None)


def default_teacher_runs(data: DataOptions, kind: str, *, arch: str, count: int, runs_dir: str) -> list:
    """Run directories of the default ensemble: seeds 0..count-1, under ``<runs_dir>/teachers/``."""
    return [Path(runs_dir) / "teachers" / teacher_run_name(
        JobOptions(data=default_teacher_data(data), arch=arch, optim=OptimConfig(epochs=1), seed=seed), kind)
        for seed in range(count)]


def default_teachers(job: JobOptions, facts: DatasetFacts, teachers: TeacherOptions) -> list:
    """Checkpoints of the default ensemble of `teachers` for `job`'s data (see `default_teacher_runs`), each trained
    on first use with `job`'s optimizer, device and runs folder and reused afterwards; an interrupted teacher
    resumes where it stopped."""
    paths, count, arch, epochs = [], teachers.count, teachers.arch, teachers.epochs
    for seed, run in enumerate(default_teacher_runs(job.data, facts.kind, arch=arch, count=count,
                                                    runs_dir=job.runs_dir)):
        last = run / "checkpoints" / "last.pt"
        if last.exists() and _completed_epochs(last) >= epochs:
            log(f"using cached default teacher {seed + 1}/{count}: {run}")
        else:
            log(f"training default teacher {seed + 1}/{count} ({arch}, {epochs} epochs; first use, cached in {run})")
            train_teacher(JobOptions(data=default_teacher_data(job.data), arch=arch,
                                     optim=replace(job.optim, epochs=epochs), seed=seed, device=job.device,
                                     runs_dir=str(run.parent), name=run.name, resume=True, progress=job.progress),
                          facts)
        paths.append(run / "checkpoints" / "best.pt")
    return paths


def _completed_epochs(checkpoint: Path) -> int:
    return int(load_checkpoint(checkpoint, "teacher cache").get("epoch", 0))
