"""`rkd distill`: a student learns from a frozen teacher ensemble under a chosen augmentation."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..measure.attention import AttentionMeter, cams
from ..measure.cam import linear_head_weight
from ..train.data import DatasetFacts, eval_loaders, train_loader
from ..train.distributed import barrier
from .ensemble import load_ensemble
from ..train.evaluate import autocast_for, predict_logits
from ..measure.fidelity import ensemble_logits, fidelity_summary
from ..train.job import JobContext, JobOptions, augment_tag, start_job, wrap_for_training
from .step import KDStep
from ..measure.metrics import accuracy, top1_agreement
from ..models import WithFeatures, unwrap
from ..train.report import write_summary
from .teachers import teacher_records
from ..train.trainer import ModelInfo, Trainer


def distill_run_name(options: JobOptions, kind: str) -> str:
    data = options.data
    return f"distill-{kind}-{options.arch}-{data.loader}-{augment_tag(data.augment)}-s{options.seed}"


@torch.no_grad()
def teacher_test_outputs(ensemble, loader, meter: AttentionMeter, weights: list, amp: bool) -> tuple:
    """The fixed teachers on the test set, once: logits (T, N, C), labels, and their CAMs per batch."""
    logits, labels, maps = [], [], []
    for images, targets in loader:
        with autocast_for(images.device, amp):
            batch_logits, features = ensemble.forward_with_features(images)
        maps.append(meter.teacher_maps(features, weights, batch_logits, targets))
        logits.append(batch_logits.float().cpu())
        labels.append(targets.cpu())
    return torch.cat(logits, 1), torch.cat(labels), maps


@torch.no_grad()
def student_test_pass(student, loader, teacher_maps: list, cam_mode: str, image_size: int, amp: bool) -> tuple:
    """The student's test logits (eval mode) and the attention IoU of its CAMs with the cached teacher CAMs."""
    meter = AttentionMeter(cam_mode=cam_mode)
    weight = linear_head_weight(student)
    was_training = student.training
    student.eval()
    logits = []
    for (images, targets), maps in zip(loader, teacher_maps):
        with autocast_for(images.device, amp):
            features = student.forward_features(images)
            batch_logits = student.forward_head(features)
        meter.update_maps(maps, cams(features, weight, batch_logits, targets, cam_mode), image_size)
        logits.append(batch_logits.float().cpu())
    student.train(was_training)
    return torch.cat(logits), meter.summary()


def distill(options: JobOptions, facts: DatasetFacts, teacher_paths: Sequence[Path]) -> Optional[dict]:
    """Distill a student from the teachers at `teacher_paths` with the KD settings `options.kd`; returns the
    summary (main rank). The run's config.json records the teachers with their files' sha256.

    Every `kd.metrics_every` steps the KD step also measures attention IoU and fidelity of its batch
    (metrics.jsonl, kind "step"); each evaluation adds them on the clean test set to the epoch record.
    """
    kd = options.kd
    options = replace(options, teachers=teacher_records(teacher_paths))
    context: JobContext = start_job(options, facts, distill_run_name(options, facts.kind))
    ensemble, described = load_ensemble(teacher_paths, context.device, num_classes=context.facts.num_classes,
                                        in_chans=context.facts.in_chans, image_size=context.facts.image_size,
                                        bn_mode=kd.teacher_bn, fused=kd.fused, compile=kd.compile)
    test_loader, train_eval = eval_loaders(options.data, context.facts, context.device)
    weights = [linear_head_weight(t) for t in ensemble.teachers]
    if context.dist.is_main:
        teacher_test, test_labels, teacher_maps = teacher_test_outputs(ensemble, test_loader, AttentionMeter(),
                                                                       weights, options.amp)
    loader = train_loader(options.data, context.facts, context.device, options.seed, context.dist)
    kd_step = KDStep(ensemble, alpha=kd.alpha, temperature=kd.temperature, mode=kd.mode, steps_per_epoch=len(loader),
                     metrics_every=kd.metrics_every if context.dist.is_main else 0,
                     record=context.run.append_metrics if context.run is not None else None)

    def evaluate(student, epoch: int) -> dict:
        if not context.dist.is_main:
            return {}
        model = unwrap(student)
        student_test, attention = student_test_pass(model, test_loader, teacher_maps, "agnostic",
                                                    context.facts.image_size, options.amp)
        train_acc = float(accuracy(*predict_logits(model, train_eval, context.device, options.amp)))
        fidelity = fidelity_summary(student_test, teacher_test, test_labels)
        record = {"test_acc": fidelity["student_acc"], "train_acc": train_acc,
                  "gap": train_acc - fidelity["student_acc"], "agreement_ensemble": fidelity["agreement_st"],
                  **{k: v for k, v in fidelity.items() if k not in ("student_acc", "agreement_st")}, **attention}
        record.update({f"agreement_teacher{i}": float(top1_agreement(student_test, logits))
                       for i, logits in enumerate(teacher_test)})
        return record

    student = context.new_model()
    trainer = Trainer(wrap_for_training(WithFeatures(student), context), loader, kd_step, evaluate, options.optim,
                      ModelInfo(options.arch, context.facts.num_classes, context.facts.image_size,
                                context.facts.in_chans, {"teachers": [p for p, _ in described]}),
                      context.device, context.run, amp=options.amp, progress=options.progress,
                      description=f"distill {options.arch}")
    if options.resume:
        trainer.resume()
        kd_step.start_at(trainer.start_epoch)
    records = trainer.fit()
    barrier(context.dist)
    if not context.dist.is_main:
        return None
    ensemble_test = ensemble_logits(teacher_test)
    teachers = [{"name": f"teacher{i} ({arch})", "path": path, "test_acc": float(accuracy(logits, test_labels)),
                 "agreement_ensemble": float(top1_agreement(logits, ensemble_test))}
                for i, ((path, arch), logits) in enumerate(zip(described, teacher_test))]
    return write_summary(context.run, options, teachers, records,
                         ensemble_acc=float(accuracy(ensemble_test, test_labels)))
