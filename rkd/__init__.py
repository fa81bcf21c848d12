"""rkd: ensemble knowledge distillation with parameterized augmentation, attention and fidelity metrics."""

__version__ = "0.1.0"
