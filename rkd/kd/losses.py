"""Ensemble knowledge-distillation losses (Hinton et al. 2015; the paper's ensemble form)."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..config import KD_MODES


def kd_divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(z_t/T) ‖ softmax(z_s/T)) averaged over the batch, for teacher logits (..., B, C)."""
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1).mean(-1)


class KDLoss(NamedTuple):
    """The loss to minimize and its two parts: loss == α·ce + (1−α)·kd."""

    loss: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor


def ensemble_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
                     alpha: float = 0.6, temperature: float = 3.0, mode: str = "per-teacher") -> torch.Tensor:
    """α·CE(z_s, y) + (1−α)·T²·KL(teacher ‖ student), teacher logits (T, B, C); see `ensemble_kd_parts`."""
    return ensemble_kd_parts(student_logits, teacher_logits, labels, alpha=alpha, temperature=temperature,
                             mode=mode).loss


def ensemble_kd_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
                      alpha: float = 0.6, temperature: float = 3.0, mode: str = "per-teacher") -> KDLoss:
    """The KD loss with its cross-entropy part and its KD part (T²·KL, or the logit MSE), both detached.

    mode "per-teacher" (the paper): the mean over teachers of the per-teacher loss, i.e. the KL term is averaged
    over teachers. mode "mean-probs": one KL against the teachers' averaged probabilities. mode "logit-mse":
    α·CE + (1−α)·mean over teachers of the mean squared logit difference (direct logit matching; no temperature).
    """
    if mode not in KD_MODES:
        raise ValueError(f"unknown KD mode {mode!r}: choose one of {', '.join(KD_MODES)}")
    ce = F.cross_entropy(student_logits.float(), labels)
    if mode == "logit-mse":
        mse = (student_logits.float().unsqueeze(0) - teacher_logits.float()).pow(2).mean()
        return KDLoss(alpha * ce + (1.0 - alpha) * mse, ce.detach(), mse.detach())
    if mode == "per-teacher":
        kl = kd_divergence(teacher_logits, student_logits.unsqueeze(0), temperature).mean()
    else:
        mean_probs = F.softmax(teacher_logits.float() / temperature, dim=-1).mean(0)
        log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
        kl = (mean_probs * (mean_probs.clamp_min(1e-12).log() - log_p_student)).sum(-1).mean()
    loss = alpha * ce + (1.0 - alpha) * temperature ** 2 * kl  # the same arithmetic as before the parts existed
    return KDLoss(loss, ce.detach(), (temperature ** 2 * kl).detach())
