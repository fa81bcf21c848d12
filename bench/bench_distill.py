"""The distillation step end to end: images/s and the share of step time spent waiting for data.

Student resnet8 and two resnet14 teachers (the Fashion-MNIST defaults) on a slice of Fashion-MNIST through the
torch loader, without augmentation and with RandAugment(2, 9) on the device, with online attention/fidelity
metrics off and every 50 steps (the default; 50 steps per epoch, so one measured batch per epoch).
The step's own cost (data already in memory) is measured too, so the loader's overhead is visible.
"""
from __future__ import annotations

import argparse

import torch

import pipelines
from pipelines.sources import open_source, take
from rkd.kd.ensemble import TeacherEnsemble
from rkd.kd.step import KDStep
from rkd.models import WithFeatures, create
from rkd.train.optim import OptimConfig
from rkd.train.trainer import ModelInfo, Trainer

from .harness import Suite


def build_trainer(loader, device: torch.device, metrics_every: int, student_arch: str = "resnet8",
                  teacher_arch: str = "resnet14", teachers: int = 2, shape: tuple = (10, 28, 1)) -> Trainer:
    """The distill job's trainer: fused eval-mode teachers, KDStep, the student wrapped to return its features.
    `shape` is (classes, image size, channels); the default is the Fashion-MNIST setting."""
    torch.manual_seed(0)
    student = WithFeatures(create(student_arch, *shape).to(device, memory_format=torch.channels_last))
    models = [create(teacher_arch, *shape).to(device, memory_format=torch.channels_last).eval()
              for _ in range(teachers)]
    kd_step = KDStep(TeacherEnsemble(models), alpha=0.6, temperature=3.0, mode="per-teacher",
                     metrics_every=metrics_every)
    return Trainer(student, loader, kd_step, lambda model, epoch: {}, OptimConfig(epochs=1000),
                   ModelInfo(student_arch, *shape), device, run=None, progress=False)


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
    parser.add_argument("--images", type=int, default=None, help="Fashion-MNIST training images per epoch "
                        "(default 6400: 50 steps of 128)")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    images = args.images or (1280 if args.quick else 6400)
    source = take(open_source("fashion-mnist", "train"), torch.arange(images))
    suite = Suite("distill", device, {"images": images, "batch_size": args.batch_size, "student": "resnet8",
                                      "teachers": "2 x resnet14", "data": "fashion-mnist"})
    repeats = 1 if args.quick else 3
    metrics_every = 10 if args.quick else 50
    for policy, every in (("none", 0), ("randaugment", 0), ("randaugment", metrics_every)):
        label = f"distill step, torch loader, {policy}" + (f", metrics every {every}" if every else "")
        spec = pipelines.AugmentSpec(policy, magnitude=9)
        loader = pipelines.build_loader("torch", source, split="train", batch_size=args.batch_size, augment=spec,
                                        device=device)
        trainer = build_trainer(loader, device, every)
        epochs = []

        def one_epoch():
            epochs.append(trainer.train_epoch(len(epochs)))

        suite.measure(label, one_epoch, items=len(loader) * args.batch_size, warmup=1, repeats=repeats)
        measured = epochs[1:]
        suite.record(label.replace("distill step", "data wait share"),
                     data_wait_share=sum(e["data_wait_share"] for e in measured) / len(measured))
    first_images, first_labels = next(iter(pipelines.build_loader("torch", source, split="train",
                                                                  batch_size=args.batch_size, device=device)))
    in_memory = InMemory(first_images, first_labels, len(loader))
    trainer = build_trainer(in_memory, device, 0)
    suite.measure("distill step, data in memory", lambda: trainer.train_epoch(0),
                  items=len(in_memory) * args.batch_size, warmup=1, repeats=repeats)
    suite.compare("distill step, torch loader, none", "distill step, data in memory")
    suite.compare("distill step, torch loader, randaugment", "distill step, torch loader, none")
    suite.compare(f"distill step, torch loader, randaugment, metrics every {metrics_every}",
                  "distill step, torch loader, randaugment")
    suite.save()
