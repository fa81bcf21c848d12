"""`rkd distill`: a student learns from a frozen teacher ensemble under a chosen augmentation."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .data import dataset_facts, eval_loaders, train_loader
from .distributed import barrier
from .ensemble import load_ensemble
from .evaluate import accuracy, predict_logits, top1_agreement
from .job import JobContext, JobOptions, augment_tag, start_job, unwrap, wrap_for_training
from .losses import ensemble_kd_loss
from .report import write_summary
from .trainer import ModelInfo, Trainer


@dataclass(frozen=True)
class KDOptions:
    """The distillation loss and the teachers' mode."""

    alpha: float = 0.6
    temperature: float = 3.0
    mode: str = "per-teacher"
    teacher_bn: str = "eval"
    compile: bool = False
    fusion: str = "auto"


FUSION_CHOICES = {"auto": None, "fused": True, "loop": False}


def distill_run_name(options: JobOptions, kind: str) -> str:
    data = options.data
    return f"distill-{kind}-{options.arch}-{data.loader}-{augment_tag(data.augment)}-s{options.seed}"


@torch.no_grad()
def ensemble_logits(ensemble, loader, device, amp: bool) -> tuple:
    """(teacher logits (T, N, C) on CPU, labels) over a deterministic loader."""
    per_teacher = [predict_logits(teacher, loader, device, amp) for teacher in ensemble.teachers]
    return torch.stack([logits for logits, _ in per_teacher]), per_teacher[0][1]


def mean_probability_logits(teacher_logits: torch.Tensor) -> torch.Tensor:
    """Log of the teachers' averaged probabilities: the ensemble's prediction, as logits."""
    return F.softmax(teacher_logits, dim=-1).mean(0).log()


def distill(options: JobOptions, teacher_paths: Sequence[Path], kd: KDOptions) -> Optional[dict]:
    """Distill a student from the teachers at `teacher_paths`; returns the summary (main rank)."""
    context: JobContext = start_job(options, distill_run_name(options, dataset_facts(options.data).kind))
    ensemble, described = load_ensemble(teacher_paths, context.device, num_classes=context.facts.num_classes,
                                        in_chans=context.facts.in_chans, bn_mode=kd.teacher_bn,
                                        fused=FUSION_CHOICES[kd.fusion], compile=kd.compile)
    test_loader, train_eval = eval_loaders(options.data, context.facts, context.device)
    teacher_test, test_labels = (ensemble_logits(ensemble, test_loader, context.device, options.amp)
                                 if context.dist.is_main else (None, None))

    def kd_step(student, images, labels):
        teacher_logits = ensemble(images)
        return ensemble_kd_loss(student(images), teacher_logits, labels, alpha=kd.alpha,
                                temperature=kd.temperature, mode=kd.mode)

    def evaluate(student, epoch: int) -> dict:
        if not context.dist.is_main:
            return {}
        student_test, _ = predict_logits(unwrap(student), test_loader, context.device, options.amp)
        train_acc = accuracy(*predict_logits(unwrap(student), train_eval, context.device, options.amp))
        test_acc = accuracy(student_test, test_labels)
        record = {"test_acc": test_acc, "train_acc": train_acc, "gap": train_acc - test_acc,
                  "agreement_ensemble": top1_agreement(student_test, mean_probability_logits(teacher_test))}
        record.update({f"agreement_teacher{i}": top1_agreement(student_test, logits)
                       for i, logits in enumerate(teacher_test)})
        return record

    student = context.new_model()
    trainer = Trainer(wrap_for_training(student, context),
                      train_loader(options.data, context.facts, context.device, options.seed, context.dist),
                      kd_step, evaluate, options.optim,
                      ModelInfo(options.arch, context.facts.num_classes, context.facts.image_size,
                                context.facts.in_chans, {"teachers": [p for p, _ in described]}),
                      context.device, context.run, amp=options.amp, progress=options.progress,
                      description=f"distill {options.arch}")
    if options.resume:
        trainer.resume()
    records = trainer.fit()
    barrier(context.dist)
    if not context.dist.is_main:
        return None
    teachers = [{"name": f"teacher{i} ({arch})", "path": path, "test_acc": accuracy(logits, test_labels),
                 "agreement_ensemble": top1_agreement(logits, mean_probability_logits(teacher_test))}
                for i, ((path, arch), logits) in enumerate(zip(described, teacher_test))]
    return write_summary(context.run, options, teachers, records,
                         ensemble_acc=accuracy(mean_probability_logits(teacher_test), test_labels))
