"""Command-line options shared by the commands, and the one place they become typed configurations (rkd.config).

Click hands a command its flags as a dict; `Flags` reads it without changing it, and the builders here turn it into
DataOptions, OptimConfig, KDOptions, TeacherOptions and JobOptions once, with the dataset's facts resolved once.
"""
from __future__ import annotations

import functools
from dataclasses import replace
from typing import Callable, Mapping, Optional

import click

import pipelines

from ..config import (KD_MODES, KD_PRESETS, SCHEDULES, TEACHER_FUSIONS, DataOptions, JobOptions, KDOptions,
                      OptimConfig, TeacherOptions)
from ..defaults import DEFAULT_NUM_TEACHERS, STEP_MILESTONES, defaults_for
from ..errors import ConfigError, RkdError
from ..kd.ensemble import TEACHER_BN_MODES
from ..models import is_known
from ..train.data import dataset_facts
from .validate import Device, Real, WritableFolder, check_cache_dir, check_launch_env, in_flag_words

def loader_option_names(backend: str) -> tuple:
    """The options --loader-option offers for `backend`: pipelines' declaration, less decode_device (--decode-device)."""
    return tuple(name for name in pipelines.backend_options(backend) if name != "decode_device")


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
    click.option("--policy", default=None, type=click.Choice(pipelines.POLICIES),
                 help="Augmentation policy applied per image on the device [distill: randaugment, "
                      "train-teacher: none]."),
    click.option("--magnitude", default=9, show_default=True, type=int,  # range: build_data_options
                 help="Augmentation magnitude: a bin in 0..num-magnitude-bins-1 (torchvision's meaning)."),
    click.option("--num-ops", default=2, show_default=True, type=click.IntRange(1), help="RandAugment ops per image."),
    click.option("--num-magnitude-bins", default=31, show_default=True, type=click.IntRange(2)),
    click.option("--magnitude-std", default=0.0, show_default=True, type=Real(0),
                 help="Per-image magnitude noise (timm's mstd)."),
    click.option("--autoaugment-policy", default="imagenet", show_default=True,
                 type=click.Choice(pipelines.AUTOAUGMENT_POLICIES)),
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
    click.option("--loader-option", "loader_options", multiple=True, metavar="KEY=VALUE",
                 help="An option of the --loader backend (repeat), e.g. order=quasi_random or os_cache=false for "
                      "ffcv, augment_backend=torch for dali; values read as int, float, true/false, none or text. "
                      "Options: " + "; ".join(f"{b}: {', '.join(loader_option_names(b))}" for b in pipelines.BACKENDS) + "."),
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


kd_options = _stack([
    click.option("--kd-loss", type=click.Choice(list(KD_PRESETS)), default="kd", show_default=True,
                 help="The KD loss by name: kd (the paper's: per-teacher, alpha 0.6), pure-kd (alpha 0), logit-mse "
                      "(MSE on logits, alpha 0); --kd-mode and --alpha override its parts."),
    click.option("--kd-mode", type=click.Choice(KD_MODES), default=None,
                 help="Mean over teachers of the KD loss (per-teacher, the paper), KD against the averaged teacher "
                      "probabilities (mean-probs), or MSE on logits (logit-mse) [--kd-loss's]."),
    click.option("--alpha", type=Real(0, 1), default=None, help="Weight of cross-entropy vs KD [--kd-loss's: 0.6 "
                                                                "for kd]."),
    click.option("--temperature", type=Real(positive=True), default=3.0, show_default=True),
    click.option("--teacher-bn", type=click.Choice(TEACHER_BN_MODES), default="eval", show_default=True,
                 help="Teachers' BatchNorm mode ('train' reproduces the paper's code)."),
    click.option("--teacher-fusion", type=click.Choice(TEACHER_FUSIONS), default="auto", show_default=True,
                 help="Teachers of one architecture as one fused forward, or one after the other (BatchNorm folded "
                      "in both); auto: fused on CUDA, loop on the CPU (faster there, bench/bench_ensemble.py)."),
    click.option("--metrics-every", type=click.IntRange(0), default=50, show_default=True,
                 help="Measure attention IoU and fidelity of the training batch every N steps (0: never)."),
    click.option("--compile", "compile_teachers", is_flag=True,
                 help="torch.compile the teacher ensemble's forward (slow first step; pays off on long GPU runs)."),
])

teacher_options = _stack([
    click.option("--num-teachers", type=click.IntRange(1), default=DEFAULT_NUM_TEACHERS, show_default=True,
                 help="Size of the default ensemble when no teachers are given."),
    click.option("--teacher-arch", default=None, help="Architecture of the default teachers [dataset default]."),
    click.option("--teacher-epochs", type=click.IntRange(1), default=None,
                 help="Epochs of the default teachers [dataset default]."),
])


class Flags:
    """A command's flag values, read only: a flag's value, or a default when it was not given."""

    def __init__(self, values: Mapping, **overrides) -> None:
        self._values = {**values, **overrides}

    def __getitem__(self, key: str):
        return self._values[key]

    def get(self, key: str, default):
        value = self._values[key]
        return default if value is None else value


def parse_option_value(text: str):
    """A --loader-option value: an int, a float, true/false, none, or the text itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false", "yes", "no"):
        return lowered in ("true", "yes")
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_loader_options(backend: str, entries) -> tuple:
    """Sorted (name, value) pairs of --loader-option KEY=VALUE entries, each an option `backend` takes."""
    taken, options = loader_option_names(backend), {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise RkdError(f"--loader-option {entry!r}: expected KEY=VALUE, e.g. --loader-option order=quasi_random")
        if key == "decode_device":
            raise RkdError("--loader-option decode_device: use --decode-device (it maps cuda to the training GPU)")
        if key not in taken:
            raise RkdError(f"--loader-option {key}: --loader {backend} does not take it; it takes "
                           f"{', '.join(taken) or 'no options'}")
        options[key] = parse_option_value(value)
    return tuple(sorted(options.items()))


def build_data_options(flags: Flags, default_policy: str) -> DataOptions:
    """DataOptions from the shared data flags (the batch size, when not given, is DataOptions's until defaulted)."""
    try:
        augment = pipelines.AugmentSpec(policy=flags.get("policy", default_policy), magnitude=flags["magnitude"],
                                        num_ops=flags["num_ops"], num_magnitude_bins=flags["num_magnitude_bins"],
                                        magnitude_std=flags["magnitude_std"],
                                        autoaugment_policy=flags["autoaugment_policy"], cutout=flags["cutout"],
                                        array_crop_scale=flags["array_crop_scale"])
    except ConfigError as err:  # a combination of flags (e.g. --magnitude beyond --num-magnitude-bins)
        raise RkdError(in_flag_words(str(err))) from None
    if flags["loader_backend"] == "ffcv":
        check_cache_dir()
    return DataOptions(data=flags["data"], loader=flags["loader_backend"],
                       batch_size=flags.get("batch_size", DataOptions.batch_size),
                       image_size=flags["image_size"], augment=augment, workers=flags["workers"],
                       on_bad_file=flags["on_bad_file"], decode_device=flags["decode_device"],
                       loader_options=parse_loader_options(flags["loader_backend"], flags["loader_options"]))


def resolve_data(flags: Flags, default_policy: str) -> tuple:
    """(DataOptions, DatasetFacts, dataset defaults): the data's facts read once, its batch size defaulted."""
    data = build_data_options(flags, default_policy)
    facts = dataset_facts(data)
    defaults = defaults_for(facts.kind)
    return replace(data, batch_size=flags.get("batch_size", defaults["batch_size"])), facts, defaults


def check_arch(name: str, flag: str = "--arch") -> str:
    if not is_known(name):
        raise RkdError(f"unknown {flag} {name!r}: use a CIFAR ResNet (resnet8, resnet20, resnet8x4 ...) "
                       "or a timm model name")
    return name


def build_kd_options(flags: Flags) -> KDOptions:
    """KDOptions: the --kd-loss preset, with --kd-mode and --alpha (when given) and the other KD flags on top."""
    given = {key: flags[key] for key in ("alpha",) if flags[key] is not None}
    if flags["kd_mode"] is not None:
        given["mode"] = flags["kd_mode"]
    return KDOptions.preset(flags["kd_loss"], **given, temperature=flags["temperature"],
                            teacher_bn=flags["teacher_bn"], fusion=flags["teacher_fusion"],
                            compile=flags["compile_teachers"], metrics_every=flags["metrics_every"])


def build_teacher_options(flags: Flags, defaults: dict, specs: tuple = ()) -> TeacherOptions:
    """TeacherOptions: the given specs, and the default ensemble's size, architecture and epochs."""
    return TeacherOptions(specs=tuple(specs), count=flags["num_teachers"],
                          arch=check_arch(flags.get("teacher_arch", defaults["teacher_arch"]), "--teacher-arch"),
                          epochs=flags.get("teacher_epochs", defaults["teacher_epochs"]))


def build_job_options(flags: Flags, default_policy: str, *, arch_key: str = "arch", epochs_key: str = "epochs",
                      kd: Optional[KDOptions] = None, init: Optional[str] = None) -> tuple:
    """(JobOptions, DatasetFacts, dataset defaults) from the shared flags, the data's facts read once."""
    check_launch_env()
    data, facts, defaults = resolve_data(flags, default_policy)
    optim = OptimConfig(epochs=flags.get("epochs", defaults[epochs_key]), lr=flags.get("lr", defaults["lr"]),
                        weight_decay=flags.get("weight_decay", defaults["weight_decay"]),
                        warmup_epochs=flags.get("warmup_epochs", defaults["warmup_epochs"]),
                        schedule=flags.get("schedule", defaults["schedule"]),
                        milestones=STEP_MILESTONES.get(facts.kind, (0.5, 0.75)))
    job = JobOptions(data=data, arch=check_arch(flags.get("arch", defaults[arch_key])), optim=optim,
                     seed=flags["seed"], device=flags["device"], runs_dir=flags["runs_dir"], name=flags["name"],
                     resume=flags["resume"], checkpoint_every=flags.get("checkpoint_every", DEFAULT_CHECKPOINT_EVERY),
                     amp=not flags["no_amp"], progress=not flags["no_progress"], kd=kd,
                     init=init)
    return job, facts, defaults
