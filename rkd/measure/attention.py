"""Attention agreement among teachers and between student and teachers, pooled over many batches.

Models' class activation maps (from their own last feature maps and linear heads) go through
`kernels.attention_iou` with the student (if any) stacked after the teachers, so every pair is counted in one
call; with a student, a second call on the teachers alone gives the all-teachers intersection and union (the
kernel's all-models counts would include the student). Counts add up over batches: rkd's pooled IoU over a whole
set (`*_pooled`) is exact, and the per-image IoU is averaged over every image seen.

With `paper=True` the meter also follows the paper's code (`kernels.paper_attention_iou`: `> t` after
(v - min) / (max - min + 1e-8), IoU pooled within each batch) and reports the batch-size-weighted mean of the
batch IoUs (`*_paper`), including the three-way IoU of the teachers and the student at once.
"""
from __future__ import annotations

from itertools import combinations
from typing import Optional, Sequence

import torch

from kernels import attention_iou, paper_attention_iou, ratio, unions

from .cam import class_activation_maps

CAM_MODES = ("agnostic", "target", "predicted")
DEFAULT_THRESHOLDS = (0.4,)


def cams(features: torch.Tensor, weight: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
         mode: str) -> torch.Tensor:
    """Class activation maps (B, h, w): summed over all classes (the paper), or for the true or predicted class."""
    if mode not in CAM_MODES:
        raise ValueError(f"unknown CAM mode {mode!r}: choose one of {', '.join(CAM_MODES)}")
    classes = None if mode == "agnostic" else (labels if mode == "target" else logits.argmax(-1))
    return class_activation_maps(features.float(), weight.float(), classes)


class AttentionMeter:
    """Accumulates attention IoU of T teachers (and optionally a student, as model index T) over batches."""

    SUMMED = ("pairwise_sum", "intersection", "soft_sum", "all_intersection", "any_union", "paper_pairwise",
              "paper_all_teachers", "paper_everyone")

    def __init__(self, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, out_size: Optional[int] = None,
                 cam_mode: str = "agnostic", backend: str = "auto", paper: bool = False) -> None:
        self.thresholds, self.out_size, self.cam_mode, self.backend = tuple(thresholds), out_size, cam_mode, backend
        self.paper = paper
        self.images = 0
        self.pairwise_sum = self.intersection = self.soft_sum = None
        self.all_intersection = self.any_union = None
        self.paper_pairwise = self.paper_all_teachers = self.paper_everyone = None   # batch IoU x batch size
        self.num_teachers = 0

    def teacher_maps(self, teacher_features: torch.Tensor, teacher_weights: Sequence[torch.Tensor],
                     teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The teachers' CAMs (T, B, h, w) for this meter's CAM mode."""
        return torch.stack([cams(f, w, z, labels, self.cam_mode)
                            for f, w, z in zip(teacher_features, teacher_weights, teacher_logits)])

    @torch.no_grad()
    def update(self, teacher_features: torch.Tensor, teacher_weights: Sequence[torch.Tensor],
               teacher_logits: torch.Tensor, labels: torch.Tensor, image_size: int,
               student: Optional[tuple] = None) -> None:
        """Add one batch. teacher_features (T, B, K, h, w), teacher_logits (T, B, C); student = (features,
        weight, logits) or None. Maps are upsampled to `out_size` (default: the input images' size)."""
        student_map = cams(*student, labels, self.cam_mode) if student is not None else None
        self.update_maps(self.teacher_maps(teacher_features, teacher_weights, teacher_logits, labels), student_map,
                         image_size)

    @torch.no_grad()
    def update_maps(self, teacher_maps: torch.Tensor, student_map: Optional[torch.Tensor], image_size: int) -> None:
        """Add one batch of CAMs: teachers (T, B, h, w), student (B, h, w) or None."""
        self.num_teachers = teacher_maps.shape[0]
        size = self.out_size or image_size
        teachers = attention_iou(teacher_maps, size, self.thresholds, backend=self.backend)
        everyone = teachers
        if student_map is not None:
            everyone = attention_iou(torch.cat([teacher_maps, student_map.unsqueeze(0)]), size, self.thresholds,
                                     backend=self.backend)
        batch = {
            "pairwise_sum": everyone.pairwise.sum(1),
            "intersection": everyone.counts.intersection.sum(1),
            "soft_sum": everyone.soft.sum(0),
            "all_intersection": teachers.counts.all_intersection.sum(1),  # the teachers' alone, never the student's
            "any_union": teachers.counts.any_union.sum(1),
        }
        if self.paper:
            batch.update(self._paper_batch(teacher_maps, student_map, size))
        for key, value in batch.items():
            current = getattr(self, key)
            setattr(self, key, value.cpu().double() if current is None else current + value.cpu().double())
        self.images += teacher_maps.shape[1]

    def merge(self, other: "AttentionMeter") -> None:
        """Add the counts of `other` (same thresholds, same models), e.g. the batches another rank evaluated;
        merging one-batch meters in batch order gives exactly the sums of updating one meter with those batches."""
        for key in self.SUMMED:
            value, current = getattr(other, key), getattr(self, key)
            if value is not None:
                setattr(self, key, value if current is None else current + value)
        self.images += other.images
        self.num_teachers = other.num_teachers or self.num_teachers

    def _paper_batch(self, teacher_maps: torch.Tensor, student_map: Optional[torch.Tensor], size: int) -> dict:
        """The paper's IoUs of this batch, times its size (the paper weights batches by their size)."""
        images = teacher_maps.shape[1]
        teachers = paper_attention_iou(teacher_maps, (size, size), self.thresholds)
        everyone = teachers if student_map is None else paper_attention_iou(
            torch.cat([teacher_maps, student_map.unsqueeze(0)]), (size, size), self.thresholds)
        return {"paper_pairwise": everyone.pooled * images,
                "paper_all_teachers": teachers.all_models_pooled * images,
                "paper_everyone": everyone.all_models_pooled * images}

    def summary(self) -> dict:
        """Mean teacher-teacher and student-teacher IoUs per threshold: per image, pooled, soft (and the paper's)."""
        if not self.images:
            return {}
        t = self.num_teachers
        per_image = self.pairwise_sum / self.images
        pooled = ratio(self.intersection, unions(self.intersection))
        soft = self.soft_sum / self.images
        pairs = list(combinations(range(t), 2))
        out = {"images": self.images}
        for k, threshold in enumerate(self.thresholds):
            tag = f"@{threshold:g}"
            student_pairs = [(t, j) for j in range(t)] if per_image.shape[-1] > t else []
            if pairs:
                out[f"iou_tt{tag}"] = _mean_over(per_image[k], pairs)
                out[f"iou_tt_pooled{tag}"] = _mean_over(pooled[k], pairs)
                out[f"iou_all_teachers_pooled{tag}"] = float(ratio(self.all_intersection[k], self.any_union[k]))
            if student_pairs:
                out[f"iou_st{tag}"] = _mean_over(per_image[k], student_pairs)
                out[f"iou_st_pooled{tag}"] = _mean_over(pooled[k], student_pairs)
            if self.paper:
                out.update(self._paper_summary(k, tag, pairs, student_pairs))
        if pairs:
            out["soft_iou_tt"] = _mean_over(soft, pairs)
        if soft.shape[-1] > t:
            out["soft_iou_st"] = _mean_over(soft, [(t, j) for j in range(t)])
        return out


    def _paper_summary(self, k: int, tag: str, pairs: Sequence[tuple], student_pairs: Sequence[tuple]) -> dict:
        """The paper's dataset figures at threshold index k: batch IoUs averaged with batch-size weights."""
        pairwise = self.paper_pairwise[k] / self.images
        out = {}
        if pairs:
            out[f"iou_tt_paper{tag}"] = _mean_over(pairwise, pairs)
            out[f"iou_all_teachers_paper{tag}"] = float(self.paper_all_teachers[k] / self.images)
        if student_pairs:
            out[f"iou_st_paper{tag}"] = _mean_over(pairwise, student_pairs)
            out[f"iou_teachers_student_paper{tag}"] = float(self.paper_everyone[k] / self.images)
        return out


def _mean_over(matrix: torch.Tensor, pairs: Sequence[tuple]) -> float:
    return float(sum(matrix[i, j] for i, j in pairs) / len(pairs))
