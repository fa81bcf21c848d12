"""Class activation maps: CAM from a model's last feature map and linear head, and Grad-CAM for other heads.

Models follow timm's split: `forward_features(x)` -> (B, K, h, w), `forward_head(features)` -> logits,
`get_classifier()` -> the linear head. For a global-average-pool + linear head, CAM costs one einsum on the
features the forward already computed:

    CAM_c(i, j) = sum_k W[c, k] * f_k(i, j)          (no bias, no ReLU, as Zhou et al. 2016)

The paper's map is class-agnostic: the sum over all classes, i.e. the weights summed over classes. A
class-specific map uses each image's class (its label, or the predicted class). Grad-CAM weights the feature
channels by the spatial mean of d(target)/d(features) and keeps the positive part; on a GAP + linear head that
mean is W[c] / (h w), so Grad-CAM is CAM scaled by 1/(h w) (before the ReLU).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


def _check_classes(classes: torch.Tensor, batch: int, num_classes: int) -> None:
    if classes.shape != (batch,) or classes.dtype != torch.long:
        raise ValueError(f"classes must be a LongTensor of shape ({batch},), one class per image; "
                         f"got {tuple(classes.shape)} {classes.dtype}")
    if batch and (classes.min() < 0 or classes.max() >= num_classes):
        raise ValueError(f"classes must lie in [0, {num_classes}); got values in "
                         f"[{int(classes.min())}, {int(classes.max())}]")


def class_activation_maps(features: torch.Tensor, weight: torch.Tensor,
                          classes: Optional[torch.Tensor] = None) -> torch.Tensor:
    """CAMs (B, h, w) from features (B, K, h, w) and a linear head's weight (C, K).

    classes=None: class-agnostic (sum over all C classes, the paper's); else a LongTensor (B,) of per-image classes.
    """
    if features.dim() != 4:
        raise ValueError(f"features must be (B, K, h, w), got shape {tuple(features.shape)}")
    if weight.dim() != 2 or weight.shape[1] != features.shape[1]:
        raise ValueError(f"classifier weight must be (C, K={features.shape[1]}), got shape {tuple(weight.shape)}")
    weight = weight.to(features.dtype)
    if classes is None:
        return torch.einsum("bkhw,k->bhw", features, weight.sum(0))
    _check_classes(classes, features.shape[0], weight.shape[0])
    return torch.einsum("bkhw,bk->bhw", features, weight[classes])


def linear_head_weight(model: nn.Module) -> torch.Tensor:
    """The (C, K) weight of the model's linear head, for `class_activation_maps`."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Linear):
        raise ValueError(f"{type(model).__name__} has no linear classifier head (get_classifier() returned "
                         f"{type(head).__name__}); use rkd.measure.cam.grad_cam for its attention maps")
    return head.weight


def grad_cam(model: nn.Module, images: torch.Tensor, classes: Optional[torch.Tensor] = None, *,
             relu: bool = True) -> torch.Tensor:
    """Grad-CAM maps (B, h, w) at the model's last feature map, for any head.

    The target is the logit of each image's class, or (classes=None) the sum of all logits, matching the
    class-agnostic CAM. relu=False returns the map before Grad-CAM's ReLU. The model's own parameters get no
    gradients; its mode (train/eval) is left as it is.
    """
    with torch.no_grad():
        features = model.forward_features(images)
    if features.dim() != 4:
        raise ValueError(f"{type(model).__name__}.forward_features returned shape {tuple(features.shape)}; "
                         "Grad-CAM needs a spatial feature map (B, K, h, w)")
    features = features.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model.forward_head(features)
        if classes is None:
            target = logits.sum()
        else:
            _check_classes(classes, logits.shape[0], logits.shape[1])
            target = logits.gather(1, classes[:, None]).sum()
        (grads,) = torch.autograd.grad(target, features)
    cam = torch.einsum("bkhw,bk->bhw", features.detach(), grads.mean(dim=(2, 3)))
    return cam.clamp_min(0) if relu else cam
