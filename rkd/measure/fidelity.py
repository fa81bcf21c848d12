"""Student-teacher fidelity over a whole evaluation set: agreement, KL both ways, mutual information, calibration.

rkd's ensemble is the teachers' averaged probabilities; the paper's is the mean of their logits, and its metrics
(`*_paper*` keys) are per-batch values averaged over batches of 128, as its code computes them.
"""
from __future__ import annotations

from itertools import combinations

import torch
import torch.nn.functional as F

from . import metrics


def ensemble_logits(teacher_logits: torch.Tensor) -> torch.Tensor:
    """The ensemble's prediction as logits: log of the teachers' averaged probabilities, from (T, N, C)."""
    return F.softmax(teacher_logits.float(), dim=-1).mean(0).log()


def paper_ensemble_logits(teacher_logits: torch.Tensor) -> torch.Tensor:
    """The paper's ensemble: the mean of the teachers' logits (T, N, C) -> (N, C)."""
    return teacher_logits.float().mean(0)


def paper_fidelity(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """The paper's fidelity metrics of the student to its mean-of-logits ensemble, and its 10-bin ECE."""
    ensemble = paper_ensemble_logits(teacher_logits)

    def batch_mean(metric) -> float:
        return metrics.paper_batch_mean(metric, student_logits, ensemble)

    return {
        "agreement_st_paper": batch_mean(lambda s, t: float(metrics.top1_agreement(s, t))),
        "kl_st_paper": batch_mean(metrics.paper_kl),
        "mi_st_paper_score": batch_mean(metrics.paper_mi_score),
        "mi_st_paper_classif": batch_mean(metrics.paper_mi_classif),
        "ece_student_paper": float(metrics.paper_ece(student_logits, labels)),
    }


def fidelity_summary(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                     paper: bool = False) -> dict:
    """Fidelity of the student to the ensemble (T, N, C) on N samples, MI from the whole set's contingency table;
    with `paper`, the paper's definitions beside them (`paper_fidelity`: its kNN MI costs ~40 ms a batch)."""
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
        "entropy_student": metrics.predictive_entropy(student_logits),
    }
    if teacher_pairs:
        summary["agreement_tt"] = sum(metrics.top1_agreement(teacher_logits[i], teacher_logits[j])
                                      for i, j in teacher_pairs) / len(teacher_pairs)
    summary = {key: float(value) for key, value in summary.items()}
    return {**summary, **paper_fidelity(student_logits, teacher_logits, labels)} if paper else summary
