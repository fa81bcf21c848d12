"""What every training job shares: its context (device, the data's facts, run directory), the record config.json
holds, seeding and model set-up."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ..config import JobOptions
from .data import DatasetFacts, data_summary
from .distributed import DistInfo, init_distributed
from ..models import create
from .runs import RunDir, environment


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


def run_config(options: JobOptions) -> dict:
    """config.json: the options, a size summary of the data, and the versions and commit that ran it."""
    return {**options.to_dict(), "data_summary": data_summary(options.data), "environment": environment()}


def start_job(options: JobOptions, facts: DatasetFacts, default_name: str) -> JobContext:
    """Join the process group if any, resolve the device, open the run directory (rank 0) with the data's facts
    resolved once by the caller."""
    dist, device = init_distributed(options.device)
    run = None
    if dist.is_main:
        run = RunDir(Path(options.runs_dir) / (options.name or default_name))
        run.open(run_config(options), options.resume)
    return JobContext(options, dist, device, facts, run)


def wrap_for_training(model: nn.Module, context: JobContext) -> nn.Module:
    """DistributedDataParallel when the job spans several processes, the model itself otherwise."""
    if context.dist.world_size == 1:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
