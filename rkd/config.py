"""The typed configuration of a run, built once by a command and handed down: data and loader, optimizer, KD,
teachers and the run itself (augmentation is `pipelines.AugmentSpec`). One vocabulary per choice lives here."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch

import pipelines

from .defaults import DEFAULT_NUM_TEACHERS
from .errors import ConfigError

KD_MODES = ("per-teacher", "mean-probs", "logit-mse")
# --kd-loss: named settings of the one KD loss (mode and alpha), shared by `rkd distill` and `rkd sweep`
KD_PRESETS = {
    "kd": dict(alpha=0.6, mode="per-teacher"),          # the paper's loss
    "pure-kd": dict(alpha=0.0, mode="per-teacher"),     # towards matching: no cross-entropy
    "logit-mse": dict(alpha=0.0, mode="logit-mse"),     # direct logit matching
}
# --teacher-fusion: teachers of one architecture as one fused forward, one after the other, or by device
TEACHER_FUSIONS = ("auto", "fused", "loop")
SCHEDULES = ("cosine", "step")


@dataclass(frozen=True)
class DataOptions:
    """Which data, through which loader backend (with its options), with which augmentation."""

    data: str = "fashion-mnist"
    loader: str = "torch"
    batch_size: int = 128
    image_size: Optional[int] = None
    augment: pipelines.AugmentSpec = pipelines.AugmentSpec()
    workers: Optional[int] = None
    train_eval_size: int = 10000
    train_images: Optional[int] = None
    on_bad_file: str = "error"  # a class-folder tree's undecodable files: refuse the tree, or skip them
    decode_device: Optional[str] = None
    loader_options: tuple = ()  # sorted (name, value) pairs handed to the backend (--loader-option KEY=VALUE)

    def __post_init__(self) -> None:
        if self.decode_device is not None and self.loader != "torch":
            raise ConfigError(f"--decode-device applies to --loader torch, not --loader {self.loader}")
        if self.decode_device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--decode-device cuda needs a CUDA device and this machine has none: use cpu or omit it")

    def to_dict(self) -> dict:
        return {**asdict(self), "augment": self.augment.to_dict(), "loader_options": dict(self.loader_options)}


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and schedule. Step milestones are fractions of the whole run (0.1× decay at each)."""

    epochs: int
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    schedule: str = "cosine"
    milestones: tuple = (0.5, 0.75)


@dataclass(frozen=True)
class KDOptions:
    """The distillation loss (mode, alpha, temperature), the teachers' BatchNorm mode and fusion, online metrics."""

    alpha: float = 0.6
    temperature: float = 3.0
    mode: str = "per-teacher"
    teacher_bn: str = "eval"
    compile: bool = False
    fusion: str = "auto"
    metrics_every: int = 50

    def __post_init__(self) -> None:
        if self.mode not in KD_MODES:
            raise ConfigError(f"--kd-mode {self.mode!r}: choose one of {', '.join(KD_MODES)}")
        if self.fusion not in TEACHER_FUSIONS:
            raise ConfigError(f"--teacher-fusion {self.fusion!r}: choose one of {', '.join(TEACHER_FUSIONS)}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "KDOptions":
        """The KD settings that `--kd-loss NAME` names, with `overrides` (other KD flags) on top."""
        return cls(**{**KD_PRESETS[name], **overrides})

    @property
    def fused(self) -> Optional[bool]:
        """The fusion as the teacher ensemble's `fused` argument: True, False, or None (by device)."""
        return None if self.fusion == "auto" else self.fusion == "fused"

    @property
    def loss_name(self) -> str:
        """The preset these settings equal (at the default temperature), else e.g. 'mean-probs-a0.5-T4'."""
        for name, preset in KD_PRESETS.items():
            if preset == {"alpha": self.alpha, "mode": self.mode} and self.temperature == 3.0:
                return name
        return f"{self.mode}-a{self.alpha:g}-T{self.temperature:g}"


@dataclass(frozen=True)
class TeacherOptions:
    """The teachers of a distillation: the given specs (checkpoints, run folders, timm:NAME[@FILE]), or when there
    are none the dataset's default ensemble of `count` × `arch` trained `epochs` epochs (trained on first use)."""

    specs: tuple = ()
    count: int = DEFAULT_NUM_TEACHERS
    arch: str = "resnet14"
    epochs: int = 2


@dataclass(frozen=True)
class TeacherRecord:
    """One teacher as a run records it: the spec given, the file it resolved to, and that file's sha256."""

    spec: str
    path: Optional[str]
    sha256: Optional[str]


@dataclass(frozen=True)
class JobOptions:
    """A training run: data, architecture, optimizer, seed, device, where the run directory goes; for a
    distillation also its KD settings and teachers; for a fine-tuned model the pretrained weights it starts from."""

    data: DataOptions
    arch: str
    optim: OptimConfig
    seed: int = 0
    device: str = "auto"
    runs_dir: str = "runs"
    name: Optional[str] = None
    resume: bool = False
    amp: bool = True
    progress: bool = True
    checkpoint_every: int = 0  # training steps between mid-epoch step checkpoints (0: epoch ends only)
    kd: Optional[KDOptions] = None
    teachers: tuple = ()   # TeacherRecords, filled in by the distillation before its run directory opens
    init: Optional[str] = None

    def to_dict(self) -> dict:
        """Everything that determines the run, as config.json stores it (before the run-time facts)."""
        record = {k: v for k, v in asdict(self).items() if k not in ("data", "optim", "kd", "teachers", "init")}
        record.update(data=self.data.to_dict(), optim=asdict(self.optim))
        if self.kd is not None:
            record.update(kd=asdict(self.kd), teachers=[asdict(t) for t in self.teachers])
        if self.init is not None:
            record["init"] = self.init
        return record
