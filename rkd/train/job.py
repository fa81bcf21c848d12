"""What every training command shares: options, seeding, device, run directory, model and evaluation set-up."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from .data import DataOptions, DatasetFacts, dataset_facts
from .distributed import DistInfo, init_distributed
from ..models import create
from .optim import OptimConfig
from .runs import RunDir


@dataclass(frozen=True)
class JobOptions:
    """A training run: data, architecture, optimizer, seed, device and where the run directory goes."""

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
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        record = {k: v for k, v in asdict(self).items() if k not in ("data", "optim", "extra")}
        return {**record, "data": self.data.to_dict(), "optim": asdict(self.optim), **self.extra}


@dataclass
class JobContext:
    """Resolved facts of a running job."""

    options: JobOptions
    dist: DistInfo
    device: torch.device
    facts: DatasetFacts
    run: Optional[RunDir]

    def new_model(self, arch: Optional[str] = None) -> nn.Module:
        """A freshly initialized model for this data, seeded by the job's seed, channels_last on the device."""
        torch.manual_seed(self.options.seed)
        model = create(arch or self.options.arch, self.facts.num_classes, self.facts.image_size, self.facts.in_chans)
        return model.to(self.device, memory_format=torch.channels_last)


def augment_tag(spec) -> str:
    """A short run-name tag for an augmentation spec: 'none' or e.g. 'randaugment-m9'."""
    return "none" if spec.policy == "none" else f"{spec.policy}-m{spec.magnitude}"


def start_job(options: JobOptions, default_name: str) -> JobContext:
    """Join the process group if any, resolve the device, read the data's facts, open the run directory (rank 0)."""
    dist, device = init_distributed(options.device)
    facts = dataset_facts(options.data)
    run = None
    if dist.is_main:
        run = RunDir(Path(options.runs_dir) / (options.name or default_name))
        run.open(options.to_dict(), options.resume)
    return JobContext(options, dist, device, facts, run)


def wrap_for_training(model: nn.Module, context: JobContext) -> nn.Module:
    """DistributedDataParallel when the job spans several processes, the model itself otherwise."""
    if context.dist.world_size == 1:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
