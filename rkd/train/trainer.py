"""The epoch loop shared by teacher training and distillation: schedule, timing, checkpoints, resume."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn
from tqdm import tqdm

from .checkpoint import load_checkpoint, model_record, save_checkpoint
from .evaluate import autocast_for
from ..models import unwrap
from .optim import OptimConfig, make_optimizer, make_scheduler
from .runs import RunDir
from .timing import DeviceClock

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
EvaluateFn = Callable[[nn.Module, int], dict]


@dataclass
class ModelInfo:
    """What a checkpoint needs to rebuild the trained model."""

    arch: str
    num_classes: int
    image_size: int
    in_chans: int
    extra: dict = field(default_factory=dict)


class Trainer:
    """Trains `model` on `loader` with `loss_fn`, evaluates each epoch, checkpoints atomically, resumes.

    Only the main process (`run` not None) writes metrics and checkpoints; `best.pt` follows `best_key`.
    """

    def __init__(self, model: nn.Module, loader, loss_fn: LossFn, evaluate: EvaluateFn, optim: OptimConfig,
                 info: ModelInfo, device: torch.device, run: Optional[RunDir], *, amp: bool = True,
                 best_key: str = "test_acc", progress: bool = True, description: str = "train") -> None:
        self.model, self.loader, self.loss_fn, self.evaluate = model, loader, loss_fn, evaluate
        self.optim, self.info, self.device, self.run = optim, info, torch.device(device), run
        self.amp, self.best_key, self.progress, self.description = amp, best_key, progress, description
        self.optimizer = make_optimizer(model, optim)
        self.steps_per_epoch = len(loader)
        self.scheduler = make_scheduler(self.optimizer, optim, self.steps_per_epoch)
        self.start_epoch, self.best = 0, float("-inf")

    def resume(self) -> None:
        """Continue from `last.pt` when there is one; drops metrics of epochs after it."""
        if self.run is None or not self.run.last.exists():
            return
        payload = load_checkpoint(self.run.last, "--resume", fix="delete it to start this run again from scratch, "
                                                                 "or restore a good copy")
        unwrap(self.model).load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        torch.set_rng_state(payload["rng_cpu"])
        self.start_epoch, self.best = payload["epoch"], payload["best"]
        self.run.truncate_metrics(self.start_epoch)
        print(f"resuming {self.run.path} after epoch {self.start_epoch}/{self.optim.epochs}", flush=True)

    def _checkpoint(self, epoch: int, record: dict) -> None:
        """best.pt (if this epoch is the best) then last.pt: a kill between them only redoes this epoch."""
        is_best = record.get(self.best_key, float("-inf")) >= self.best
        if is_best:
            self.best = record[self.best_key]
        payload = {**model_record(self.model, self.info.arch, self.info.num_classes, self.info.image_size,
                                  self.info.in_chans),
                   **self.info.extra, "optimizer": self.optimizer.state_dict(), "epoch": epoch,
                   "best": self.best, "rng_cpu": torch.get_rng_state(), "metrics": record}
        if is_best:
            save_checkpoint(self.run.best, payload)
        save_checkpoint(self.run.last, payload)

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the loader; returns loss, images/s, the share of time spent waiting for data, lr.

        Timed with a device clock (CUDA is synchronized before each reading), so the data wait is the time from
        the end of one step's kernels to the batch being ready on the device, and images/s counts the kernels.
        """
        self.model.train()
        self.loader.set_epoch(epoch)
        bar = tqdm(total=self.steps_per_epoch, desc=f"{self.description} {epoch + 1}/{self.optim.epochs}",
                   disable=None if self.progress else True, leave=False, mininterval=1.0)
        seen, loss_sum, data_wait = 0, torch.zeros((), device=self.device), 0.0
        clock = DeviceClock(self.device)
        start = waited_from = clock.now()
        for step, (images, labels) in enumerate(self.loader):
            data_wait += clock.now() - waited_from
            with autocast_for(self.device, self.amp):
                loss = self.loss_fn(self.model, images, labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step_update(num_updates=epoch * self.steps_per_epoch + step + 1)
            loss_sum += loss.detach() * len(labels)
            seen += len(labels)
            bar.update()
            waited_from = clock.now()
        elapsed = clock.now() - start
        bar.close()
        return {"train_loss": (loss_sum / max(seen, 1)).item(), "images_per_s": seen / elapsed,
                "data_wait_share": data_wait / elapsed, "epoch_seconds": elapsed,
                "lr": self.optimizer.param_groups[0]["lr"]}

    def fit(self) -> list:
        """Run the remaining epochs; returns the epoch records of the whole run (resumed ones included)."""
        for epoch in range(self.start_epoch, self.optim.epochs):
            record = {"kind": "epoch", "epoch": epoch, **self.train_epoch(epoch)}
            record.update(self.evaluate(self.model, epoch))
            if self.run is not None:
                self.run.append_metrics(record)
                self._checkpoint(epoch + 1, record)
                shown = {k: record[k] for k in ("train_loss", "test_acc", "train_acc", "agreement_ensemble",
                                                 "images_per_s") if k in record}
                print(f"{self.description} epoch {epoch + 1}/{self.optim.epochs}: " +
                      ", ".join(f"{k} {v:.4g}" for k, v in shown.items()), flush=True)
        return self.run.read_metrics("epoch") if self.run is not None else []
