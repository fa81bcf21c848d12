"""Command-line options shared by the training commands, and their translation into job options."""
from __future__ import annotations

import functools
from typing import Callable, Optional

import click

import pipelines
from pipelines.spec import AUTOAUGMENT_POLICIES, POLICIES

from ..train.data import DataOptions, dataset_facts
from ..defaults import STEP_MILESTONES, defaults_for
from ..train.job import JobOptions
from ..models import is_known
from ..train.optim import SCHEDULES, OptimConfig
from ..errors import ConfigError, RkdError
from .validate import Device, Real, WritableFolder, check_cache_dir, check_launch_env, in_flag_words


def _stack(decorators: list) -> Callable:
    def apply(function):
        return functools.reduce(lambda f, d: d(f), reversed(decorators), function)
    return apply


data_options = _stack([
    click.option("--data", default="fashion-mnist", show_default=True,
                 help="Dataset: 'fashion-mnist', a Fashion-MNIST/MNIST IDX folder, a CIFAR-10/100 pickle folder, "
                      "an ImageNet-style folder (train/, val/), or a .beton file (ffcv)."),
    click.option("--loader", "loader_backend", default="torch", show_default=True,
                 type=click.Choice(pipelines.BACKENDS), help="Data loader backend."),
    click.option("--policy", default=None, type=click.Choice(POLICIES),
                 help="Augmentation policy applied per image on the device [distill: randaugment, "
                      "train-teacher: none]."),
    click.option("--magnitude", default=9, show_default=True, type=int,  # range: build_data_options
                 help="Augmentation magnitude: a bin in 0..num-magnitude-bins-1 (torchvision's meaning)."),
    click.option("--num-ops", default=2, show_default=True, type=click.IntRange(1), help="RandAugment ops per image."),
    click.option("--num-magnitude-bins", default=31, show_default=True, type=click.IntRange(2)),
    click.option("--magnitude-std", default=0.0, show_default=True, type=Real(0),
                 help="Per-image magnitude noise (timm's mstd)."),
    click.option("--autoaugment-policy", default="imagenet", show_default=True,
                 type=click.Choice(AUTOAUGMENT_POLICIES)),
    click.option("--cutout", default=0, show_default=True, type=click.IntRange(0),
                 help="Cutout hole side in pixels (0: off)."),
    click.option("--batch-size", type=click.IntRange(1), default=None,
                 help="Per-process batch size [dataset default]."),
    click.option("--image-size", type=click.IntRange(1), default=None,
                 help="Training resolution [native; 224 for JPEG trees]."),
    click.option("--array-crop-scale", type=float, default=None,
                 help="Array sources (CIFAR, Fashion-MNIST): train on RandomResizedCrop(scale=(S, 1)) of the native "
                      "image, resized to --image-size, instead of the 4-px padded crop (the paper's CIFAR runs: "
                      "--image-size 224 --array-crop-scale 0.2)."),
    click.option("--workers", type=click.IntRange(0), default=None, help="Data loader worker processes [auto]."),
    click.option("--on-bad-file", default="error", show_default=True, type=click.Choice(pipelines.ON_BAD_FILE),
                 help="A class-folder tree's files that cannot be decoded (checked before training): refuse the "
                      "tree, or skip them with a count."),
    click.option("--decode-device", type=click.Choice(("cpu", "cuda")), default=None,
                 help="--loader torch, JPEG trees: decode training batches at once on this device (cuda: nvJPEG) "
                      "and crop them there [per image in the workers]."),
])

model_options = _stack([
    click.option("--arch", default=None, help="Model: a CIFAR ResNet (resnet8, resnet20, ...) or a timm name "
                                              "[dataset default]."),
    click.option("--epochs", type=click.IntRange(1), default=None, help="Epochs [dataset default]."),
    click.option("--lr", type=Real(positive=True), default=None, help="Peak learning rate [dataset default]."),
    click.option("--weight-decay", type=Real(0), default=None),
    click.option("--warmup-epochs", type=Real(0), default=None),
    click.option("--schedule", type=click.Choice(SCHEDULES), default=None),
    click.option("--device", default="auto", show_default=True, type=Device(), help="auto, cpu, cuda, cuda:1 ..."),
    click.option("--no-amp", is_flag=True, help="Disable bf16 autocast on CUDA."),
    click.option("--runs-dir", default="runs", show_default=True, type=WritableFolder()),
    click.option("--no-progress", is_flag=True, help="No progress bars."),
])

DEFAULT_CHECKPOINT_EVERY = 1000  # training steps; see --checkpoint-every

run_options = _stack([
    model_options,
    click.option("--seed", type=click.IntRange(0), default=0, show_default=True),
    click.option("--name", default=None, help="Run directory name [derived from the options]."),
    click.option("--resume", is_flag=True, help="Continue the run in an existing run directory (from the middle "
                                                "of an epoch after a step checkpoint)."),
    click.option("--checkpoint-every", type=click.IntRange(0), default=DEFAULT_CHECKPOINT_EVERY, show_default=True,
                 help="Also write checkpoints/last.pt every N training steps inside an epoch, so a killed run "
                      "loses at most N steps (0: at epoch ends only). The default bounds the loss to about a fifth "
                      "of an ImageNet epoch at batch 256 (5005 steps, hours with a teacher ensemble on one GPU) "
                      "for a write of a few seconds; smaller datasets' epochs are shorter than N steps."),
])


def _pop_or(kw: dict, key: str, default):
    """The flag's value, or `default` when the flag was not given."""
    value = kw.pop(key)
    return default if value is None else value


def build_data_options(kw: dict, dataset_defaults: dict, default_policy: str) -> DataOptions:
    """DataOptions from the shared data flags (consumes them from `kw`)."""
    try:
        augment = pipelines.AugmentSpec(policy=_pop_or(kw, "policy", default_policy), magnitude=kw.pop("magnitude"),
                                        num_ops=kw.pop("num_ops"), num_magnitude_bins=kw.pop("num_magnitude_bins"),
                                        magnitude_std=kw.pop("magnitude_std"),
                                        autoaugment_policy=kw.pop("autoaugment_policy"), cutout=kw.pop("cutout"),
                                        array_crop_scale=kw.pop("array_crop_scale"))
    except ConfigError as err:  # a combination of flags (e.g. --magnitude beyond --num-magnitude-bins)
        raise RkdError(in_flag_words(str(err))) from None
    if kw["loader_backend"] == "ffcv":
        check_cache_dir()
    return DataOptions(data=kw.pop("data"), loader=kw.pop("loader_backend"),
                       batch_size=_pop_or(kw, "batch_size", dataset_defaults["batch_size"]),
                       image_size=kw.pop("image_size"), augment=augment, workers=kw.pop("workers"),
                       on_bad_file=kw.pop("on_bad_file"), decode_device=kw.pop("decode_device"))


def check_arch(name: str, flag: str = "--arch") -> str:
    if not is_known(name):
        raise RkdError(f"unknown {flag} {name!r}: use a CIFAR ResNet (resnet8, resnet20, resnet8x4 ...) "
                       "or a timm model name")
    return name


def dataset_kind(kw: dict) -> str:
    """The dataset kind named by the --data and --loader flags (before they are consumed), for its defaults."""
    return dataset_facts(DataOptions(data=kw["data"], loader=kw["loader_backend"],
                                     on_bad_file=kw["on_bad_file"])).kind


def build_job_options(kw: dict, default_policy: str, default_arch_key: str = "arch",
                      default_epochs_key: str = "epochs", extra: Optional[dict] = None) -> tuple:
    """(JobOptions, dataset defaults) from the shared flags; consumes them from `kw`."""
    check_launch_env()
    kind = dataset_kind(kw)
    defaults = defaults_for(kind)
    data = build_data_options(kw, defaults, default_policy)
    optim = OptimConfig(epochs=_pop_or(kw, "epochs", defaults[default_epochs_key]),
                        lr=_pop_or(kw, "lr", defaults["lr"]),
                        weight_decay=_pop_or(kw, "weight_decay", defaults["weight_decay"]),
                        warmup_epochs=_pop_or(kw, "warmup_epochs", defaults["warmup_epochs"]),
                        schedule=_pop_or(kw, "schedule", defaults["schedule"]),
                        milestones=STEP_MILESTONES.get(kind, (0.5, 0.75)))
    job = JobOptions(data=data, arch=check_arch(_pop_or(kw, "arch", defaults[default_arch_key])), optim=optim,
                     seed=kw.pop("seed"), device=kw.pop("device"), runs_dir=kw.pop("runs_dir"), name=kw.pop("name"),
                     resume=kw.pop("resume"),
                     checkpoint_every=kw.pop("checkpoint_every", DEFAULT_CHECKPOINT_EVERY),  # rkd sweep has no flag
                     amp=not kw.pop("no_amp"), progress=not kw.pop("no_progress"),
                     extra=extra or {})
    return job, defaults
