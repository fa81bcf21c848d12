"""Attention-IoU kernels: one function, three backends (PyTorch reference, Numba CPU, Triton CUDA).

Importable without `rkd`; numba and triton are imported only when their backend is used.
"""
from .attention_iou import BACKENDS, attention_iou
from .counts import AttentionIoU, IoUCounts, concat_counts, iou_from_counts, ratio, unions
from .paper import PaperIoU, paper_attention_iou
from .reference import normalize_min_max, upsample_bilinear

__all__ = ["BACKENDS", "AttentionIoU", "IoUCounts", "PaperIoU", "attention_iou", "concat_counts", "iou_from_counts",
           "normalize_min_max", "paper_attention_iou", "ratio", "unions", "upsample_bilinear"]
