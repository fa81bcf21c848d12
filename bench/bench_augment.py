"""Batched per-image augmentation (pipelines.augment) vs torchvision v2 applied image by image.

Full mode: a batch of 128 uint8 224×224 RGB images; RandAugment(2, 9), AutoAugment(imagenet), TrivialAugmentWide.
Ours runs the whole batch at once (each image its own ops); the baseline loops torchvision's transform over the
images on the same device with the same thread count. Also: ours with the torch kernels that CUDA uses (CPU only:
what the Numba kernels save), each op alone on the whole batch (where the time goes), and on CUDA RandAugment(2, 9)
at batch 256. Images are uniform noise: the ops' costs do not depend on content (equalize/autocontrast read
histograms either way).

    python -m bench augment                  # full
    python -m bench.bench_augment --quick    # small smoke run
"""
from __future__ import annotations

import argparse

import torch
from torchvision.transforms import v2

from bench.harness import Suite
from pipelines.augment import AutoAugment, RandAugment, TrivialAugmentWide, ops, registry, space
from rkd.train.timing import DeviceClock

POLICIES = {
    "randaugment_2_9": (lambda: RandAugment(2, 9), lambda: v2.RandAugment(2, 9)),
    "autoaugment_imagenet": (lambda: AutoAugment("imagenet"), lambda: v2.AutoAugment()),
    "trivialaugment_wide": (lambda: TrivialAugmentWide(), lambda: v2.TrivialAugmentWide()),
}


def _batch(n: int, size: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8).to(device)


def _ours(policy, images: torch.Tensor):
    def run_once():
        return policy(images, torch.Generator(device=images.device).manual_seed(1))
    return run_once


def _torchvision_loop(transform, images: torch.Tensor):
    def run_once():
        torch.manual_seed(1)
        return torch.stack([transform(image) for image in images])
    return run_once


def main(argv: list) -> None:
    parser = argparse.ArgumentParser(prog="bench_augment", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 32 of 64×64, 2 repeats")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (both sides)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batch, size, repeats = (32, 64, 2) if args.quick else (128, 224, 5)
    name = "augment" if args.threads == torch.get_num_threads() else f"augment-{args.threads}threads"
    suite = Suite(name, device, {"batch": batch, "size": size, "device": str(device), "threads": args.threads,
                                      "images": "uniform noise uint8 RGB", "quick": args.quick})
    torch.set_num_threads(args.threads)
    print(f"bench augment: batch {batch} of {size}x{size} on {device}, {args.threads} threads", flush=True)
    images = _batch(batch, size, device)

    clock = DeviceClock(device)
    start = clock.now()
    RandAugment(2, 9)(images, torch.Generator(device=device).manual_seed(0))
    suite.record("ours/first_call_s", seconds=clock.now() - start)  # includes Numba compilation on CPU

    for name, (ours, theirs) in POLICIES.items():
        suite.measure(f"ours/{name}", _ours(ours(), images), batch, repeats=repeats)
        if device.type == "cpu":
            with registry.use_reference_kernels():
                suite.measure(f"ours_torch_kernels/{name}", _ours(ours(), images), batch, repeats=repeats)
        suite.measure(f"torchvision_per_image/{name}", _torchvision_loop(theirs(), images), batch,
                      repeats=max(2, repeats // 2))
        suite.compare(f"ours/{name}", f"torchvision_per_image/{name}")

    magnitudes = torch.full((batch,), 0.3, dtype=torch.float64, device=device)
    for op in space.OPS[1:]:
        value = {"Posterize": torch.full_like(magnitudes, 5.0), "Solarize": torch.full_like(magnitudes, 0.5)}
        op_magnitudes = value.get(op, magnitudes)
        suite.measure(f"ours_single_op/{op}", lambda: ops.apply_op(op, images, op_magnitudes), batch,
                      repeats=repeats)

    if device.type == "cuda":
        large = _batch(256, size, device)
        suite.measure("ours/randaugment_2_9_batch256", _ours(RandAugment(2, 9), large), 256, repeats=repeats * 4)
    suite.save()


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
