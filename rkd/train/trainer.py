"""The epoch loop shared by teacher training and distillation: schedule, loss parts, online measurements, timing,
epoch and mid-epoch step checkpoints, resume."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn
from tqdm import tqdm

from .checkpoint import load_checkpoint, model_record, save_checkpoint
from .distributed import SINGLE_PROCESS, DistInfo, broadcast_from_main, gather_to_main
from .evaluate import autocast_for
from ..errors import RkdError
from ..models import unwrap
from .optim import OptimConfig, make_optimizer, make_scheduler
from .runs import RunDir
from .timing import DeviceClock

StepFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], dict]
"""(model, images, labels, global step counted from 1) → {"loss": the tensor to minimize, "ce": its cross-entropy
part, optionally "kd": its distillation part (both detached), optionally "measured": a dict of online measurements
of this batch, recorded as a `kind: step` line of metrics.jsonl}."""
EvaluateFn = Callable[[nn.Module, int], dict]
LOSS_PARTS = ("loss", "ce", "kd")  # epoch means recorded as train_loss, train_ce, train_kd


@dataclass
class ModelInfo:
    """What a checkpoint needs to rebuild the trained model."""

    arch: str
    num_classes: int
    image_size: int
    in_chans: int
    extra: dict = field(default_factory=dict)


@dataclass
class EpochProgress:
    """The running totals of an epoch: what a mid-epoch step checkpoint stores and a resume continues from."""

    steps: int = 0
    seen: int = 0
    sums: dict = field(default_factory=dict)  # loss part -> sum over images (a 0-d tensor on the device)
    data_wait: float = 0.0
    elapsed: float = 0.0
    loaders: Optional[list] = None  # every rank's loader.state_dict() right after `steps` batches, by rank

    def add(self, out: dict, images: int) -> None:
        for part in LOSS_PARTS:
            if part in out:
                value = out[part].detach() * images
                self.sums[part] = value if part not in self.sums else self.sums[part] + value
        self.seen += images

    def means(self) -> dict:
        return {f"train_{part}": (total / max(self.seen, 1)).item() for part, total in self.sums.items()}

    def to_dict(self) -> dict:
        return {"steps": self.steps, "seen": self.seen, "sums": {k: v.cpu() for k, v in self.sums.items()},
                "data_wait": self.data_wait, "elapsed": self.elapsed, "loaders": self.loaders}

    @classmethod
    def from_dict(cls, state: dict, device: torch.device) -> "EpochProgress":
        return cls(state["steps"], state["seen"], {k: v.to(device) for k, v in state["sums"].items()},
                   state["data_wait"], state["elapsed"], state["loaders"])


def rng_states() -> dict:
    """The global torch generators (CPU, and every CUDA device when there is one)."""
    states = {"rng_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["rng_cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(payload: dict) -> None:
    torch.set_rng_state(payload["rng_cpu"])
    if "rng_cuda" in payload and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng_cuda"])


class Trainer:
    """Trains `model` on `loader` with `step_fn`, evaluates each epoch, checkpoints atomically, resumes.

    `model` is the same kind of object for every command: a `WithFeatures` model (forward → logits, features),
    wrapped in DistributedDataParallel under torchrun. Only the main process (`run` not None) writes metrics and
    checkpoints; `best.pt` follows `best_key`. With `checkpoint_every` N > 0, `last.pt` is also written every N
    training steps inside an epoch, with every rank's loader position, so `resume` continues from the middle of
    it; under torchrun (`dist`) rank 0 reads the checkpoint and hands it to every rank.
    """

    def __init__(self, model: nn.Module, loader, step_fn: StepFn, evaluate: EvaluateFn, optim: OptimConfig,
                 info: ModelInfo, device: torch.device, run: Optional[RunDir], *, amp: bool = True,
                 best_key: str = "test_acc", progress: bool = True, description: str = "train",
                 checkpoint_every: int = 0, dist: DistInfo = SINGLE_PROCESS) -> None:
        self.model, self.loader, self.step_fn, self.evaluate = model, loader, step_fn, evaluate
        self.optim, self.info, self.device, self.run = optim, info, torch.device(device), run
        self.amp, self.best_key, self.progress, self.description = amp, best_key, progress, description
        self.checkpoint_every, self.dist = checkpoint_every, dist
        self.optimizer = make_optimizer(model, optim)
        self.steps_per_epoch = len(loader)
        self.scheduler = make_scheduler(self.optimizer, optim, self.steps_per_epoch)
        self.start_epoch, self.best = 0, float("-inf")
        self.resumed: Optional[EpochProgress] = None

    def resume(self) -> None:
        """Continue from `last.pt` when there is one (the end of an epoch, or a step checkpoint inside one);
        drops the metrics recorded after it. Every rank calls it."""
        payload = None
        if self.run is not None and self.run.last.exists():
            payload = load_checkpoint(self.run.last, "--resume", fix="delete it to start this run again from "
                                                                     "scratch, or restore a good copy")
        payload = broadcast_from_main(payload, self.dist)
        if payload is None:
            return
        unwrap(self.model).load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if "scheduler" in payload:
            self.scheduler.load_state_dict(payload["scheduler"])
        restore_rng_states(payload)
        self.start_epoch, self.best = payload["epoch"], payload["best"]
        within = payload.get("progress")
        self.resumed = None if within is None else EpochProgress.from_dict(within, self.device)
        if self.run is None:
            return
        done = self.start_epoch * self.steps_per_epoch + (self.resumed.steps if self.resumed else 0)
        self.run.truncate_metrics(self.start_epoch, completed_steps=done)
        where = f"step {self.resumed.steps}/{self.steps_per_epoch} of epoch {self.start_epoch + 1}" \
            if self.resumed else f"epoch {self.start_epoch}/{self.optim.epochs}"
        print(f"resuming {self.run.path} after {where}", flush=True)

    def _payload(self, epoch: int, **extra) -> dict:
        """Everything a resume needs, after `epoch` completed epochs."""
        return {**model_record(self.model, self.info.arch, self.info.num_classes, self.info.image_size,
                               self.info.in_chans),
                **self.info.extra, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": epoch, "best": self.best, **rng_states(),
                **extra}

    def _checkpoint(self, epoch: int, record: dict) -> None:
        """best.pt (if this epoch is the best) then last.pt: a kill between them only redoes this epoch."""
        is_best = record.get(self.best_key, float("-inf")) >= self.best
        if is_best:
            self.best = record[self.best_key]
        payload = self._payload(epoch, metrics=record)
        if is_best:
            save_checkpoint(self.run.best, payload)
        save_checkpoint(self.run.last, payload)

    def _step_checkpoint(self, epoch: int, progress: EpochProgress) -> None:
        """last.pt in the middle of epoch `epoch`: weights, optimizer, schedule, RNG, loader positions, totals
        (every rank calls it: the loader positions are gathered to the main process, which writes)."""
        progress.loaders = gather_to_main(self.loader.state_dict(), self.dist)
        if self.run is not None:
            save_checkpoint(self.run.last, self._payload(epoch, progress=progress.to_dict()))

    def train_epoch(self, epoch: int, progress: Optional[EpochProgress] = None) -> dict:
        """One pass over the loader (or the rest of it after `progress`); returns the epoch means of the loss
        parts, images/s, the share of time spent waiting for data, lr.

        Timed with a device clock (CUDA is synchronized before each reading), so the data wait is the time from
        the end of one step's kernels to the batch being ready on the device, and images/s counts the kernels.
        """
        self.model.train()
        self.loader.set_epoch(epoch)
        progress = progress or EpochProgress()
        if progress.loaders is not None:
            if len(progress.loaders) != self.dist.world_size:
                raise RkdError(f"--resume: the step checkpoint was written by {len(progress.loaders)} processes, "
                               f"this run has {self.dist.world_size}: resume with the same number of processes")
            self.loader.load_state_dict(progress.loaders[self.dist.rank])
        bar = tqdm(total=self.steps_per_epoch, initial=progress.steps,
                   desc=f"{self.description} {epoch + 1}/{self.optim.epochs}",
                   disable=None if self.progress else True, leave=False, mininterval=1.0)
        clock = DeviceClock(self.device)
        start = clock.now() - progress.elapsed
        waited_from = clock.now()
        for images, labels in self.loader:
            progress.data_wait += clock.now() - waited_from
            step = epoch * self.steps_per_epoch + progress.steps + 1
            with autocast_for(self.device, self.amp):
                out = self.step_fn(self.model, images, labels, step)
            self.optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            self.optimizer.step()
            self.scheduler.step_update(num_updates=step)
            progress.add(out, len(labels))
            progress.steps += 1
            if self.run is not None and "measured" in out:
                self.run.append_metrics({"kind": "step", "epoch": epoch, "step": step, **out["measured"]})
            bar.update()
            inside = progress.steps < self.steps_per_epoch  # the epoch's end has its own checkpoint
            if self.checkpoint_every > 0 and step % self.checkpoint_every == 0 and inside:
                progress.elapsed = clock.now() - start
                self._step_checkpoint(epoch, progress)
            waited_from = clock.now()
        elapsed = clock.now() - start
        bar.close()
        return {**progress.means(), "images_per_s": progress.seen / elapsed,
                "data_wait_share": progress.data_wait / elapsed, "epoch_seconds": elapsed,
                "lr": self.optimizer.param_groups[0]["lr"]}

    def fit(self) -> list:
        """Run the remaining epochs; returns the epoch records of the whole run (resumed ones included)."""
        for epoch in range(self.start_epoch, self.optim.epochs):
            progress, self.resumed = self.resumed, None
            record = {"kind": "epoch", "epoch": epoch, **self.train_epoch(epoch, progress)}
            record.update(self.evaluate(self.model, epoch))
            if self.run is not None:
                self.run.append_metrics(record)
                self._checkpoint(epoch + 1, record)
                shown = {k: record[k] for k in ("train_loss", "train_ce", "train_kd", "test_acc", "train_acc",
                                                 "agreement_ensemble", "images_per_s") if k in record}
                print(f"{self.description} epoch {epoch + 1}/{self.optim.epochs}: " +
                      ", ".join(f"{k} {v:.4g}" for k, v in shown.items()), flush=True)
        return self.run.read_metrics("epoch") if self.run is not None else []
