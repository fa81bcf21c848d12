"""Fidelity and calibration metrics on logits (N, C) and labels (N,): pure torch functions, in nats.

Whole-set statistics are the default; the paper's per-batch or unweighted variants carry `paper_` in their names.
- top-1 agreement between student and teacher;
- KL divergence in both directions, the direction in the name: `kl_teacher_student` = KL(p_teacher || p_student);
- mutual information between student and teacher top-1 predictions: plug-in estimate from their contingency
  table over the whole evaluation set (`contingency_table` tables add up over batches), and its normalized form
  (MI / arithmetic mean of the two entropies, as sklearn's default). `paper_batch_mi` is the paper's per-batch
  estimate (sklearn's `mutual_info_score` on one batch), biased upwards for small batches;
- expected calibration error with 15 equal-width confidence bins: sample-weighted (Guo et al. 2017), and the
  paper's unweighted mean over non-empty bins;
- mean predictive entropy; affinity = accuracy on augmented images / accuracy on the clean images.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ECE_BINS = 15


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


def paper_batch_mi(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """The paper's per-batch MI (nats): sklearn's mutual_info_score on one batch's top-1 predictions.

    The paper averages it over batches; a plug-in estimate on a small batch is biased upwards, so prefer
    `mutual_information` of the whole set's `contingency_table`.
    """
    return mutual_information(contingency_table(student_logits, teacher_logits))


def _calibration_bins(logits: torch.Tensor, labels: torch.Tensor, n_bins: int):
    _check_labels(logits, labels)
    confidence, predicted = F.softmax(logits.double(), dim=1).max(1)
    correct = (predicted == labels).double()
    # bin b holds confidences in (b / n_bins, (b + 1) / n_bins]
    index = (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)
    count = torch.bincount(index, minlength=n_bins).double()
    conf_sum = torch.bincount(index, weights=confidence, minlength=n_bins)
    correct_sum = torch.bincount(index, weights=correct, minlength=n_bins)
    return count, conf_sum, correct_sum


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> torch.Tensor:
    """Sample-weighted ECE: sum over bins of (n_b / N) |accuracy_b - confidence_b|."""
    count, conf_sum, correct_sum = _calibration_bins(logits, labels, n_bins)
    return (correct_sum - conf_sum).abs().sum() / count.sum()


def paper_ece(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> torch.Tensor:
    """The paper's ECE: unweighted mean over non-empty bins of |accuracy_b - confidence_b|."""
    count, conf_sum, correct_sum = _calibration_bins(logits, labels, n_bins)
    filled = count > 0
    return ((correct_sum[filled] - conf_sum[filled]).abs() / count[filled]).mean()


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
