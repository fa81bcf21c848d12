"""Student-teacher fidelity over a whole evaluation set: agreement, KL both ways, mutual information, calibration."""
from __future__ import annotations

from itertools import combinations

import torch
import torch.nn.functional as F

from . import metrics


def ensemble_logits(teacher_logits: torch.Tensor) -> torch.Tensor:
    """The ensemble's prediction as logits: log of the teachers' averaged probabilities, from (T, N, C)."""
    return F.softmax(teacher_logits.float(), dim=-1).mean(0).log()


def fidelity_summary(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Fidelity of the student to the ensemble (T, N, C) on N samples; MI from the whole set's contingency table."""
    ensemble = ensemble_logits(teacher_logits)
    table = metrics.contingency_table(student_logits, ensemble)
    teacher_pairs = list(combinations(range(len(teacher_logits)), 2))
    summary = {
        "student_acc": metrics.accuracy(student_logits, labels),
        "ensemble_acc": metrics.accuracy(ensemble, labels),
        "agreement_st": metrics.top1_agreement(student_logits, ensemble),
        "kl_teacher_student": metrics.kl_teacher_student(student_logits, ensemble),
        "kl_student_teacher": metrics.kl_student_teacher(student_logits, ensemble),
        "mi_st": metrics.mutual_information(table),
        "nmi_st": metrics.normalized_mutual_information(table),
        "ece_student": metrics.expected_calibration_error(student_logits, labels),
        "ece_student_paper_unweighted": metrics.paper_ece(student_logits, labels),
        "entropy_student": metrics.predictive_entropy(student_logits),
    }
    if teacher_pairs:
        summary["agreement_tt"] = sum(metrics.top1_agreement(teacher_logits[i], teacher_logits[j])
                                      for i, j in teacher_pairs) / len(teacher_pairs)
    return {key: float(value) for key, value in summary.items()}
