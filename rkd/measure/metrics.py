"""Fidelity and calibration metrics on logits (N, C) and labels (N,): pure torch functions, in nats.

Whole-set statistics are rkd's definitions; the paper's (Guo et al., code zisci2/RethinkKD) carry `paper` in
their names and compute what that code computes.
- top-1 agreement between student and teacher;
- KL divergence in both directions, the direction in the name: `kl_teacher_student` = KL(p_teacher || p_student);
  the paper's `paper_kl` is 10 * KL(p_student || p_teacher);
- mutual information between student and teacher top-1 predictions: plug-in estimate from their contingency
  table over the whole evaluation set (`contingency_table` tables add up over batches), and its normalized form
  (MI / arithmetic mean of the two entropies, as sklearn's default). The paper's per-batch estimates, averaged
  over batches of 128 with `paper_batch_mean`: `paper_mi_score` (sklearn's `mutual_info_score`) and
  `paper_mi_classif` (sklearn's `mutual_info_classif`, the class index taken as a continuous feature);
- expected calibration error over equal-width confidence bins (lo, hi]: sample-weighted over 15 bins (Guo et al.
  2017), and the paper's `paper_ece`: the plain mean over all 10 bins, an empty bin counting 0;
- mean predictive entropy; affinity = accuracy on augmented images / accuracy on the clean images.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.feature_selection import mutual_info_classif
from sklearn.metrics import mutual_info_score

ECE_BINS = 15
PAPER_ECE_BINS = 10
PAPER_BATCH_SIZE = 128          # the paper's training batches, over which its per-batch metrics are averaged
PAPER_KL_SCALE = 10.0           # the paper's code multiplies its KL by 10
PAPER_MI_RANDOM_STATE = 0       # mutual_info_classif adds random noise to continuous features: fixed here


def _check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    if logits.dim() != 2:
        raise ValueError(f"{name} must be (N samples, C classes), got shape {tuple(logits.shape)}")


def _check_pair(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    _check_logits(student_logits, "student_logits")
    _check_logits(teacher_logits, "teacher_logits")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
                         f"{tuple(teacher_logits.shape)}")


def _check_labels(logits: torch.Tensor, labels: torch.Tensor) -> None:
    _check_logits(logits)
    if labels.shape != (logits.shape[0],) or labels.dtype != torch.long:
        raise ValueError(f"labels must be a LongTensor of shape ({logits.shape[0]},), got "
                         f"{tuple(labels.shape)} {labels.dtype}")


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy, a fraction in [0, 1]."""
    _check_labels(logits, labels)
    return (logits.argmax(1) == labels).double().mean()


def top1_agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Fraction of samples on which student and teacher predict the same class."""
    _check_pair(student_logits, teacher_logits)
    return (student_logits.argmax(1) == teacher_logits.argmax(1)).double().mean()


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over samples of KL(softmax(p/T) || softmax(q/T)), in nats."""
    _check_pair(p_logits, q_logits)
    log_p = F.log_softmax(p_logits.double() / temperature, dim=1)
    log_q = F.log_softmax(q_logits.double() / temperature, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1).mean()


def kl_teacher_student(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """KL(p_teacher || p_student), mean over samples, nats (the direction the KD loss minimizes)."""
    return kl_divergence(teacher_logits, student_logits, temperature)


def kl_student_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """KL(p_student || p_teacher), mean over samples, nats."""
    return kl_divergence(student_logits, teacher_logits, temperature)


def contingency_table(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """(C, C) int64 counts of (student top-1, teacher top-1) pairs; sum tables over batches for a whole set."""
    _check_pair(student_logits, teacher_logits)
    num_classes = student_logits.shape[1]
    pairs = student_logits.argmax(1) * num_classes + teacher_logits.argmax(1)
    return torch.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _entropy_of_counts(counts: torch.Tensor) -> torch.Tensor:
    p = counts.double() / counts.sum()
    p = p[p > 0]
    return -(p * p.log()).sum()


def mutual_information(table: torch.Tensor) -> torch.Tensor:
    """Plug-in mutual information (nats) of a contingency table: sum p_ij log(p_ij / (p_i. p_.j))."""
    if table.dim() != 2 or table.sum() <= 0:
        raise ValueError(f"contingency table must be a 2-D table of counts with a positive total, "
                         f"got shape {tuple(table.shape)}")
    joint = table.double() / table.sum()
    rows, cols = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    nonzero = joint > 0
    return (joint[nonzero] * (joint[nonzero].log() - (rows * cols)[nonzero].log())).sum().clamp_min(0.0)


def normalized_mutual_information(table: torch.Tensor) -> torch.Tensor:
    """MI / mean(H(student), H(teacher)) in [0, 1]; 1 when both predictions are constant (as sklearn)."""
    mi = mutual_information(table)
    h_rows, h_cols = _entropy_of_counts(table.sum(1)), _entropy_of_counts(table.sum(0))
    if h_rows == 0 and h_cols == 0:
        return torch.tensor(1.0, dtype=torch.float64)
    return mi / ((h_rows + h_cols) / 2)


def _top1(logits: torch.Tensor) -> np.ndarray:
    return logits.argmax(1).cpu().numpy()


def paper_mi_score(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """The paper's `mis` of one batch (nats): sklearn's mutual_info_score of teacher and student top-1 classes."""
    _check_pair(student_logits, teacher_logits)
    return float(mutual_info_score(_top1(teacher_logits), _top1(student_logits)))


def paper_mi_classif(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     random_state: int = PAPER_MI_RANDOM_STATE) -> float:
    """The paper's `mi` of one batch (nats): sklearn's mutual_info_classif with the student's top-1 class index as
    one continuous feature (k-nearest-neighbour estimate) and the teacher's top-1 class as the target.

    sklearn leaves out the samples of classes seen once; when no teacher class occurs twice nothing is left and
    the estimate is 0."""
    _check_pair(student_logits, teacher_logits)
    target = _top1(teacher_logits)
    if np.bincount(target).max() < 2:
        return 0.0
    feature = _top1(student_logits).reshape(-1, 1).astype(np.float64)
    return float(mutual_info_classif(feature, target, random_state=random_state)[0])


def paper_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """The paper's KL of one batch: 10 * mean over samples of KL(p_student || p_teacher), nats."""
    return PAPER_KL_SCALE * float(kl_student_teacher(student_logits, teacher_logits))


def paper_batch_mean(metric: Callable[[torch.Tensor, torch.Tensor], float], student_logits: torch.Tensor,
                     teacher_logits: torch.Tensor, batch_size: int = PAPER_BATCH_SIZE) -> float:
    """The paper's dataset figure of a per-batch metric: its plain mean over consecutive batches of `batch_size`."""
    _check_pair(student_logits, teacher_logits)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    values = [metric(s, t) for s, t in zip(student_logits.split(batch_size), teacher_logits.split(batch_size))]
    return float(np.mean(values))


def _calibration_bins(logits: torch.Tensor, labels: torch.Tensor, n_bins: int):
    _check_labels(logits, labels)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    confidence, predicted = F.softmax(logits.double(), dim=1).max(1)
    correct = (predicted == labels).double()
    # bin b holds confidences in (b / n_bins, (b + 1) / n_bins], the edges compared as the paper's code does
    upper = torch.tensor([(b + 1) / n_bins for b in range(n_bins)], dtype=torch.float64)
    index = torch.searchsorted(upper, confidence).clamp_max(n_bins - 1)
    count = torch.bincount(index, minlength=n_bins).double()
    conf_sum = torch.bincount(index, weights=confidence, minlength=n_bins)
    correct_sum = torch.bincount(index, weights=correct, minlength=n_bins)
    return count, conf_sum, correct_sum


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> torch.Tensor:
    """Sample-weighted ECE: sum over bins of (n_b / N) |accuracy_b - confidence_b|."""
    count, conf_sum, correct_sum = _calibration_bins(logits, labels, n_bins)
    return (correct_sum - conf_sum).abs().sum() / count.sum()


def paper_ece(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = PAPER_ECE_BINS) -> torch.Tensor:
    """The paper's ECE: plain mean over all `n_bins` bins of |accuracy_b - confidence_b|, an empty bin counting 0."""
    count, conf_sum, correct_sum = _calibration_bins(logits, labels, n_bins)
    gap = (correct_sum - conf_sum).abs() / count.clamp_min(1)
    return gap.sum() / n_bins


def predictive_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean entropy of softmax(logits) over samples, nats."""
    _check_logits(logits)
    log_p = F.log_softmax(logits.double(), dim=1)
    return -(log_p.exp() * log_p).sum(1).mean()


def affinity(augmented_logits: torch.Tensor, clean_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Accuracy on augmented images / accuracy on the same images clean (Gontijo-Lopes et al.'s affinity)."""
    clean = accuracy(clean_logits, labels)
    if clean == 0:
        raise ValueError("affinity is undefined: the model gets no clean image right")
    return accuracy(augmented_logits, labels) / clean
