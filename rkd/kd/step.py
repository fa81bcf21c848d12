"""The distillation step: one teacher-ensemble forward and one student forward give the KD loss and, every
`metrics_every` steps, attention IoU and fidelity of that same batch (no second pass)."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..measure.attention import AttentionMeter
from ..measure.cam import linear_head_weight
from .ensemble import TeacherEnsemble
from ..measure.fidelity import fidelity_summary
from .losses import ensemble_kd_loss
from ..models import unwrap

Record = Callable[[dict], None]


class KDStep:
    """Callable as the Trainer's loss function; the student must be wrapped in `WithFeatures`."""

    def __init__(self, ensemble: TeacherEnsemble, *, alpha: float, temperature: float, mode: str,
                 steps_per_epoch: int, metrics_every: int = 0, record: Optional[Record] = None,
                 thresholds: tuple = (0.4,)) -> None:
        self.ensemble, self.alpha, self.temperature, self.mode = ensemble, alpha, temperature, mode
        self.metrics_every, self.record, self.thresholds = metrics_every, record, thresholds
        self.teacher_weights = [linear_head_weight(t) for t in ensemble.teachers]
        self.steps_per_epoch = steps_per_epoch
        self.steps = 0

    def start_at(self, epoch: int) -> None:
        """Continue the global step count from the start of `epoch` (after a resume)."""
        self.steps = epoch * self.steps_per_epoch

    def __call__(self, student, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        measure = self.metrics_every > 0 and self.steps % self.metrics_every == 0
        if measure:
            teacher_logits, teacher_features = self.ensemble.forward_with_features(images)
        else:
            teacher_logits, teacher_features = self.ensemble(images), None
        student_logits, student_features = student(images)
        if measure:
            self._measure(student, images, labels, teacher_logits, teacher_features, student_logits,
                          student_features)
        return ensemble_kd_loss(student_logits, teacher_logits, labels, alpha=self.alpha,
                                temperature=self.temperature, mode=self.mode)

    @torch.no_grad()
    def _measure(self, student, images, labels, teacher_logits, teacher_features, student_logits,
                 student_features) -> None:
        meter = AttentionMeter(self.thresholds)
        meter.update(teacher_features, self.teacher_weights, teacher_logits, labels, images.shape[-1],
                     student=(student_features.detach(), linear_head_weight(unwrap(student)),
                              student_logits.detach()))
        batch = fidelity_summary(student_logits.detach().float().cpu(), teacher_logits.float().cpu(), labels.cpu())
        record = {"kind": "step", "epoch": (self.steps - 1) // self.steps_per_epoch, "step": self.steps,
                  **meter.summary(),
                  **{f"batch_{k}": v for k, v in batch.items()}}
        if self.record is not None:
            self.record(record)
