"""Teacher-ensemble forward, images/s: the fused pass against the sequential one, measured in the same run.

For T teachers of one architecture on one batch (logits and last feature maps of every teacher):
  sequential     the original teachers one after the other (the previous TeacherEnsemble; the baseline)
  loop           TeacherEnsemble(fused=False): BatchNorm folded, one teacher after the other (CUDA streams)
  vmap           torch.func stack_module_state + functional_call + vmap over the folded teachers (the alternative)
  fused          TeacherEnsemble: BatchNorm folded, the teachers as one wide grouped-convolution model
  fused-compile  the same under torch.compile (--compile; the first call's compile time is recorded)
CPU default: 3 × resnet20 at 32×32, batch 256, and 3 × resnet18 (timm) at 224×224, batch 32 (256 would take
minutes per call on 2 cores). CUDA default: 3 × resnet18 at 224×224, batch 256, bf16 autocast, channels_last.

    python -m bench ensemble                      # full run on CUDA if available, else CPU
    python -m bench.bench_ensemble --quick        # seconds
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state, vmap

from bench.harness import Suite
from rkd.kd.ensemble import TeacherEnsemble, teacher_pass
from rkd.train.evaluate import autocast_for
from rkd.models import CIFAR_RESNETS, create
from rkd.train.timing import DeviceClock


class _LogitsAndFeatures(nn.Module):
    """A module whose forward is `teacher_pass`, so that functional_call can run it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple:
        return teacher_pass(self.model, images)


def vmap_pass(models: list):
    """images → (logits (T, B, C), features (T, B, K, h, w)) with torch.func over stacked weights."""
    wrapped = [_LogitsAndFeatures(model) for model in models]
    params, buffers = stack_module_state(wrapped)
    base = copy.deepcopy(wrapped[0]).to("meta")

    def run(images: torch.Tensor) -> tuple:
        return vmap(lambda p, b: functional_call(base, (p, b), (images,)))(params, buffers)
    return run


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours.float() - reference.float()).norm() / reference.float().norm()).item()


def bench_config(suite: Suite, arch: str, image_size: int, batch_size: int, count: int, device: torch.device,
                 repeats: int, compile: bool, skip: tuple = ()) -> str:
    """Measure every variant (but those in `skip`; never the sequential reference) on `count` teachers `arch` at
    `image_size`, batch `batch_size`; returns the labels' prefix."""
    torch.manual_seed(0)
    num_classes = 10 if image_size <= 64 else 1000
    teachers = [create(arch, num_classes, image_size).to(device, memory_format=torch.channels_last).eval()
                for _ in range(count)]
    images = torch.randn(batch_size, 3, image_size, image_size, device=device).to(memory_format=torch.channels_last)
    looped, fused = TeacherEnsemble(teachers, fused=False), TeacherEnsemble(teachers, fused=True)
    assert fused.mode == "fused", fused.fallback_reason
    variants = {
        "sequential": lambda x: tuple(map(torch.stack, zip(*(teacher_pass(t, x) for t in teachers)))),
        "loop": looped.forward_with_features,
        "vmap": vmap_pass(list(looped.folded)),
        "fused": fused.forward_with_features,
    }
    variants = {name: run for name, run in variants.items() if name not in skip}
    prefix = f"{count}x{arch}@{image_size}/b{batch_size}"
    if compile:
        compiled = TeacherEnsemble(teachers, fused=True, compile=True)
        clock = DeviceClock(device)
        start = clock.now()
        with torch.no_grad(), autocast_for(device):
            compiled.forward_with_features(images)
        suite.record(f"{prefix}/fused-compile first call", seconds=clock.now() - start)
        variants["fused-compile"] = compiled.forward_with_features

    def once(run):
        def call():
            with torch.no_grad(), autocast_for(device):
                return run(images)
        return call

    outputs = {name: once(run)() for name, run in variants.items()}
    reference = outputs["sequential"]
    for name, (logits, features) in outputs.items():
        if name != "sequential":
            suite.record(f"{prefix}/{name} relative error vs sequential",
                         logits=relative_error(logits, reference[0]), features=relative_error(features, reference[1]))
    for name, run in variants.items():
        suite.measure(f"{prefix}/{name}", once(run), items=batch_size, warmup=1, repeats=repeats)
    for name in variants:
        if name != "sequential":
            suite.compare(f"{prefix}/{name}", f"{prefix}/sequential")
    for baseline in ("vmap", "loop"):
        if baseline in variants:
            suite.compare(f"{prefix}/fused", f"{prefix}/{baseline}")
    return prefix


def main(argv: list) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench ensemble", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 × resnet8 at 32×32, batch 32, 2 repeats.")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
    parser.add_argument("--arch", default=None, help="One architecture instead of the default set.")
    parser.add_argument("--image-size", type=int, default=None, help="With --arch [32 for CIFAR ResNets, else 224].")
    parser.add_argument("--batch-size", type=int, default=256, help="With --arch.")
    parser.add_argument("--teachers", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=None, help="Timed calls per variant [5; 3 for 224 on CPU].")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU [torch's default].")
    parser.add_argument("--compile", action="store_true", help="Also measure the torch.compile'd fused pass.")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.quick:
        configs = [("resnet8", 32, 32)]
    elif args.arch:
        configs = [(args.arch, args.image_size or (32 if args.arch in CIFAR_RESNETS else 224), args.batch_size)]
    elif device.type == "cuda":
        configs = [("resnet18", 224, 256)]
    else:
        configs = [("resnet20", 32, 256), ("resnet18", 224, 32)]
    suite = Suite("ensemble-quick" if args.quick else "ensemble", device,
                  {"configs": configs, "teachers": args.teachers, "amp": "bf16" if device.type == "cuda" else "none",
                   "memory_format": "channels_last", "compile": args.compile})
    for arch, image_size, batch_size in configs:
        repeats = args.repeats or (2 if args.quick else 3 if device.type == "cpu" and image_size >= 224 else 5)
        print(f"{args.teachers} × {arch} at {image_size}×{image_size}, batch {batch_size} on {device}", flush=True)
        bench_config(suite, arch, image_size, batch_size, args.teachers, device, repeats, args.compile)
    suite.save()


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
