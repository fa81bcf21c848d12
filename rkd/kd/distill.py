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
from ..train.evaluate import autocast_for, gather_batches, predict_logits
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
    """The fixed teachers on (this rank's shard of) the test set, once: per batch, (logits (T, B, C), labels),
    and their CAMs."""
    outputs, maps = [], []
    for images, targets in loader:
        with autocast_for(images.device, amp):
            batch_logits, features = ensemble.forward_with_features(images)
        maps.append(meter.teacher_maps(features, weights, batch_logits, targets))
        outputs.append((batch_logits.float().cpu(), targets.cpu()))
    return outputs, maps


@torch.no_grad()
def student_test_pass(student, loader, teacher_maps: list, cam_mode: str, image_size: int, amp: bool) -> list:
    """Per batch of (this rank's shard of) the test set: the student's logits (eval mode) and an attention meter
    of its CAMs with the cached teacher CAMs (merged in batch order by `gathered_student_test`)."""
    weight = linear_head_weight(student)
    was_training = student.training
    student.eval()
    out = []
    for (images, targets), maps in zip(loader, teacher_maps):
        with autocast_for(images.device, amp):
            features = student.forward_features(images)
            batch_logits = student.forward_head(features)
        meter = AttentionMeter(cam_mode=cam_mode)
        meter.update_maps(maps, cams(features, weight, batch_logits, targets, cam_mode), image_size)
        out.append((batch_logits.float().cpu(), meter))
    student.train(was_training)
    return out


def gathered_student_test(batches: list, cam_mode: str) -> tuple:
    """The student's test logits (N, C) and attention summary from the per-batch results of every rank."""
    meter = AttentionMeter(cam_mode=cam_mode)
    for _, batch_meter in batches:
        meter.merge(batch_meter)
    return torch.cat([logits for logits, _ in batches]), meter.summary()


class DistillEvaluation:
    """The per-epoch evaluation of a student against its fixed teachers, on the clean test set and the train
    subset: every rank evaluates its shard, rank 0 reports. The teachers' test outputs are computed once."""

    def __init__(self, ensemble, context: JobContext, cam_mode: str = "agnostic") -> None:
        self.context, self.cam_mode = context, cam_mode
        self.test_loader, self.train_eval = eval_loaders(context.options.data, context.facts, context.device,
                                                         context.dist)
        weights = [linear_head_weight(t) for t in ensemble.teachers]
        teacher_batches, self.teacher_maps = teacher_test_outputs(ensemble, self.test_loader,
                                                                  AttentionMeter(cam_mode=cam_mode), weights,
                                                                  context.options.amp)
        gathered = gather_batches(teacher_batches, context.dist)  # the teachers' whole test set, on rank 0
        self.teacher_test = self.test_labels = None
        if gathered is not None:
            self.teacher_test = torch.cat([logits for logits, _ in gathered], 1)
            self.test_labels = torch.cat([labels for _, labels in gathered])

    def __call__(self, student, epoch: int) -> dict:
        """Accuracy, train-test gap, fidelity to the ensemble and attention IoU of `student` (rank 0; {} else)."""
        context, amp = self.context, self.context.options.amp
        model = unwrap(student)
        student_batches = gather_batches(student_test_pass(model, self.test_loader, self.teacher_maps,
                                                           self.cam_mode, context.facts.image_size, amp),
                                         context.dist)
        train = predict_logits(model, self.train_eval, context.device, amp, context.dist)
        if not context.dist.is_main:
            return {}
        student_test, attention = gathered_student_test(student_batches, self.cam_mode)
        train_acc = float(accuracy(*train))
        fidelity = fidelity_summary(student_test, self.teacher_test, self.test_labels)
        record = {"test_acc": fidelity["student_acc"], "train_acc": train_acc,
                  "gap": train_acc - fidelity["student_acc"], "agreement_ensemble": fidelity["agreement_st"],
                  **{k: v for k, v in fidelity.items() if k not in ("student_acc", "agreement_st")}, **attention}
        record.update({f"agreement_teacher{i}": float(top1_agreement(student_test, logits))
                       for i, logits in enumerate(self.teacher_test)})
        return record

    def teacher_rows(self, described: Sequence[tuple]) -> tuple:
        """(one summary row per teacher, the ensemble's test accuracy), on rank 0."""
        ensemble_test = ensemble_logits(self.teacher_test)
        rows = [{"name": f"teacher{i} ({arch})", "path": path,
                 "test_acc": float(accuracy(logits, self.test_labels)),
                 "agreement_ensemble": float(top1_agreement(logits, ensemble_test))}
                for i, ((path, arch), logits) in enumerate(zip(described, self.teacher_test))]
        return rows, float(accuracy(ensemble_test, self.test_labels))


def distill(options: JobOptions, facts: DatasetFacts, teacher_paths: Sequence[Path]) -> Optional[dict]:
    """Distill a student from the teachers at `teacher_paths` with the KD settings `options.kd`; returns the
    summary (main rank). The run's config.json records the teachers with their files' sha256.

    Every `kd.metrics_every` steps the KD step also measures attention IoU and fidelity of its batch
    (metrics.jsonl, kind "step"); each evaluation adds them on the clean test set to the epoch record
    (`DistillEvaluation`).
    """
    kd = options.kd
    options = replace(options, teachers=teacher_records(teacher_paths))
    context: JobContext = start_job(options, facts, distill_run_name(options, facts.kind))
    ensemble, described = load_ensemble(teacher_paths, context.device, num_classes=context.facts.num_classes,
                                        in_chans=context.facts.in_chans, image_size=context.facts.image_size,
                                        bn_mode=kd.teacher_bn, fused=kd.fused, compile=kd.compile)
    evaluate = DistillEvaluation(ensemble, context)
    loader = train_loader(options.data, context.facts, context.device, options.seed, context.dist)
    kd_step = KDStep(ensemble, alpha=kd.alpha, temperature=kd.temperature, mode=kd.mode,
                     metrics_every=kd.metrics_every if context.dist.is_main else 0)
    student = context.new_model()
    trainer = Trainer(wrap_for_training(WithFeatures(student), context), loader, kd_step, evaluate, options.optim,
                      ModelInfo(options.arch, context.facts.num_classes, context.facts.image_size,
                                context.facts.in_chans, {"teachers": [p for p, _ in described]}),
                      context.device, context.run, amp=options.amp, progress=options.progress,
                      description=f"distill {options.arch}", checkpoint_every=options.checkpoint_every,
                      dist=context.dist)
    if options.resume:
        trainer.resume()
    records = trainer.fit()
    barrier(context.dist)
    if not context.dist.is_main:
        return None
    teachers, ensemble_acc = evaluate.teacher_rows(described)
    return write_summary(context.run, options, teachers, records, ensemble_acc=ensemble_acc)
