"""One factory over CIFAR-style ResNets (small images) and timm models (ImageNet sizes).

Every model exposes `forward_features` (last feature map), `forward_head` and `get_classifier` (timm's
convention), so class activation maps come from the forward's own output.
"""
from __future__ import annotations

import torch.nn as nn

from ..errors import RkdError
from .cifar_resnet import CIFAR_RESNETS, CifarResNet

__all__ = ["CIFAR_RESNETS", "CifarResNet", "WithFeatures", "create", "is_known", "unwrap"]


def is_known(name: str) -> bool:
    """True for a CIFAR ResNet name or any model timm can create."""
    import timm
    return name in CIFAR_RESNETS or name in timm.list_models()


def create(name: str, num_classes: int, image_size: int, in_chans: int = 3) -> nn.Module:
    """Build model `name` for `num_classes` classes at `image_size` pixels with `in_chans` input channels.

    Weights are random: no weights are downloaded (teachers are trained by rkd or loaded from a checkpoint).
    """
    if name in CIFAR_RESNETS:
        depth, widths = CIFAR_RESNETS[name]
        model = CifarResNet(depth, widths, num_classes, in_chans)
    else:
        import timm
        if name not in timm.list_models():
            known = ", ".join(CIFAR_RESNETS)
            raise RkdError(f"unknown --arch {name!r}: use a CIFAR ResNet ({known}) or a timm model name "
                           "(see timm.list_models())")
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    model.rkd_image_size = image_size
    return model


class WithFeatures(nn.Module):
    """Wraps a model so that its forward returns (logits, last feature map): one pass, usable under DDP."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, images):
        features = self.module.forward_features(images)
        return self.module.forward_head(features), features


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel and WithFeatures wrappers (both keep it as `.module`)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, WithFeatures)):
        model = model.module
    return model
