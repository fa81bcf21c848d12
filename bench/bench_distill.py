"""The distillation step end to end: images/s and the share of step time spent waiting for data.

Student resnet8 and two resnet14 teachers (the Fashion-MNIST defaults) on a slice of Fashion-MNIST through the
torch loader, without augmentation and with RandAugment(2, 9) on the device. The step's own cost (data already in
memory) is measured too, so the loader's overhead is visible.
"""
from __future__ import annotations

import argparse

import torch

import pipelines
from pipelines.sources import open_source, take
from rkd.ensemble import TeacherEnsemble
from rkd.losses import ensemble_kd_loss
from rkd.models import create
from rkd.optim import OptimConfig
from rkd.trainer import ModelInfo, Trainer

from .harness import Suite


def kd_step_for(ensemble: TeacherEnsemble):
    def step(student, images, labels):
        return ensemble_kd_loss(student(images), ensemble(images), labels)
    return step


def build_trainer(loader, device: torch.device, student_arch: str, teacher_arch: str, teachers: int) -> Trainer:
    torch.manual_seed(0)
    student = create(student_arch, 10, 28, 1).to(device, memory_format=torch.channels_last)
    ensemble = TeacherEnsemble([create(teacher_arch, 10, 28, 1) for _ in range(teachers)]).to(device)
    ensemble = ensemble.to(memory_format=torch.channels_last)
    return Trainer(student, loader, kd_step_for(ensemble), lambda model, epoch: {}, OptimConfig(epochs=1000),
                   ModelInfo(student_arch, 10, 28, 1), device, run=None, progress=False)


class InMemory:
    """A loader that replays one prepared batch: the step's cost without any data loading."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, steps: int) -> None:
        self.images, self.labels, self.steps = images, labels, steps

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        return iter([(self.images, self.labels)] * self.steps)


def main(argv: list) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench distill")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=None, help="Fashion-MNIST training images per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    images = args.images or (1024 if args.quick else 8192)
    source = take(open_source("fashion-mnist", "train"), torch.arange(images))
    suite = Suite("distill", device, {"images": images, "batch_size": args.batch_size, "student": "resnet8",
                                      "teachers": "2 x resnet14", "data": "fashion-mnist"})
    repeats = 1 if args.quick else 3
    for policy in ("none", "randaugment"):
        spec = pipelines.AugmentSpec(policy, magnitude=9)
        loader = pipelines.build_loader("torch", source, split="train", batch_size=args.batch_size, augment=spec,
                                        device=device)
        trainer = build_trainer(loader, device, "resnet8", "resnet14", 2)
        epochs = []

        def one_epoch():
            epochs.append(trainer.train_epoch(len(epochs)))

        suite.measure(f"distill step, torch loader, {policy}", one_epoch, items=len(loader) * args.batch_size,
                      warmup=1, repeats=repeats)
        measured = epochs[1:]
        suite.record(f"data wait share, torch loader, {policy}",
                     data_wait_share=sum(e["data_wait_share"] for e in measured) / len(measured))
    first_images, first_labels = next(iter(pipelines.build_loader("torch", source, split="train",
                                                                  batch_size=args.batch_size, device=device)))
    in_memory = InMemory(first_images, first_labels, len(loader))
    trainer = build_trainer(in_memory, device, "resnet8", "resnet14", 2)
    suite.measure("distill step, data in memory", lambda: trainer.train_epoch(0),
                  items=len(in_memory) * args.batch_size, warmup=1, repeats=repeats)
    suite.compare("distill step, torch loader, none", "distill step, data in memory")
    suite.compare("distill step, torch loader, randaugment", "distill step, torch loader, none")
    suite.save()
