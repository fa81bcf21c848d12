"""Per-dataset defaults: architectures, epochs and optimizer settings that a bare command uses."""
from __future__ import annotations

DATASET_DEFAULTS = {
    # Sized for the default job: 2 teachers + a distilled student on 2 CPU cores in under 10 minutes.
    "fashion-mnist": dict(teacher_arch="resnet14", arch="resnet8", teacher_epochs=2, epochs=3, batch_size=128,
                          lr=0.1, schedule="cosine", warmup_epochs=0.2, weight_decay=5e-4),
    "mnist": dict(teacher_arch="resnet14", arch="resnet8", teacher_epochs=2, epochs=3, batch_size=128, lr=0.1,
                  schedule="cosine", warmup_epochs=0.2, weight_decay=5e-4),
    # The KD literature's CIFAR recipe (CRD): 240 epochs, lr 0.05, 0.1x at 150/180/210.
    "cifar10": dict(teacher_arch="resnet32x4", arch="resnet8x4", teacher_epochs=240, epochs=240, batch_size=64,
                    lr=0.05, schedule="step", warmup_epochs=0.0, weight_decay=5e-4),
    "cifar100": dict(teacher_arch="resnet32x4", arch="resnet8x4", teacher_epochs=240, epochs=240, batch_size=64,
                     lr=0.05, schedule="step", warmup_epochs=0.0, weight_decay=5e-4),
    # ImageNet-style trees: timm ResNets, 90 epochs.
    "imagefolder": dict(teacher_arch="resnet50", arch="resnet18", teacher_epochs=90, epochs=90, batch_size=256,
                        lr=0.1, schedule="cosine", warmup_epochs=5.0, weight_decay=1e-4),
}
STEP_MILESTONES = {"cifar10": (0.625, 0.75, 0.875), "cifar100": (0.625, 0.75, 0.875)}
DEFAULT_NUM_TEACHERS = 2


def defaults_for(dataset_kind: str) -> dict:
    """Defaults for a dataset name (fashion-mnist, mnist, cifar10, cifar100) or 'imagefolder'."""
    return dict(DATASET_DEFAULTS.get(dataset_kind, DATASET_DEFAULTS["imagefolder"]))
