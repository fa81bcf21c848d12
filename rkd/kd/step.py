"""The distillation step: one teacher-ensemble forward and one student forward give the KD loss with its parts and,
every `metrics_every` steps, attention IoU and fidelity of that same batch (no second pass)."""
from __future__ import annotations

import torch

from ..measure.attention import AttentionMeter
from ..measure.cam import linear_head_weight
from .ensemble import TeacherEnsemble
from ..measure.fidelity import fidelity_summary
from .losses import ensemble_kd_parts
from ..models import unwrap


class KDStep:
    """The Trainer's step function for distillation (see `rkd.train.trainer.StepFn`); the student is the
    Trainer's `WithFeatures` model, so its forward returns (logits, last feature map)."""

    def __init__(self, ensemble: TeacherEnsemble, *, alpha: float, temperature: float, mode: str,
                 metrics_every: int = 0, thresholds: tuple = (0.4,)) -> None:
        self.ensemble, self.alpha, self.temperature, self.mode = ensemble, alpha, temperature, mode
        self.metrics_every, self.thresholds = metrics_every, thresholds
        self.teacher_weights = [linear_head_weight(t) for t in ensemble.teachers]

    def __call__(self, student, images: torch.Tensor, labels: torch.Tensor, step: int) -> dict:
        """{"loss", "ce", "kd"} and, on a measured step (the global step, counted from 1), "measured"."""
        measure = self.metrics_every > 0 and step % self.metrics_every == 0
        if measure:
            teacher_logits, teacher_features = self.ensemble.forward_with_features(images)
        else:
            teacher_logits, teacher_features = self.ensemble(images), None
        student_logits, student_features = student(images)
        parts = ensemble_kd_parts(student_logits, teacher_logits, labels, alpha=self.alpha,
                                  temperature=self.temperature, mode=self.mode)
        out = {"loss": parts.loss, "ce": parts.ce, "kd": parts.kd}
        if measure:
            out["measured"] = self._measure(student, images, labels, teacher_logits, teacher_features,
                                            student_logits, student_features)
        return out

    @torch.no_grad()
    def _measure(self, student, images, labels, teacher_logits, teacher_features, student_logits,
                 student_features) -> dict:
        """Attention IoU and fidelity of this training batch."""
        meter = AttentionMeter(self.thresholds)
        meter.update(teacher_features, self.teacher_weights, teacher_logits, labels, images.shape[-1],
                     student=(student_features.detach(), linear_head_weight(unwrap(student)),
                              student_logits.detach()))
        batch = fidelity_summary(student_logits.detach().float().cpu(), teacher_logits.float().cpu(), labels.cpu())
        return {**meter.summary(), **{f"batch_{k}": v for k, v in batch.items()}}
