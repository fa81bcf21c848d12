"""The teacher ensemble: T frozen models on one batch, giving logits (T, B, C) and feature maps (T, B, K, h, w).

Two ways to run it, chosen once at construction (`TeacherEnsemble.mode`):
- "fused": teachers of one architecture, eval-mode BatchNorm. BatchNorm is folded into the convolutions and the
  T teachers become one model T times as wide: each Conv2d a grouped convolution (groups × T), each Linear a batched
  matmul; the stem convolution reads the images once and writes T·K channels. One forward pass gives every
  teacher's outputs. torch.func's stack_module_state + vmap lowers to the same grouped convolutions; on CPU it was
  slower at 224 px and even at 32 px. On CPU the "loop" was faster than both (oneDNN's grouped convolutions are
  slower than dense ones): pass `fused=False` there. Measure a GPU with `python -m bench ensemble`.
- "loop": one teacher after the other (BatchNorm folded in eval mode), each on its own CUDA stream on a GPU. Used for
  teachers of different architectures, for bn_mode "train" (batch statistics; running statistics move as in the
  paper's code), when a model cannot be widened, and when asked for (`fused=False`).
bf16 autocast comes from the caller (the KD step runs under `rkd.train.evaluate.autocast_for`).
"""
from __future__ import annotations

import copy
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.fx
import torch.nn as nn

from ..errors import RkdError
from .fold_bn import fold_batchnorm
from .teachers import load_teacher

TEACHER_BN_MODES = ("eval", "train")
# The wide model is checked once against the teachers on a random batch. A model whose forward mixes channels
# (e.g. concatenation along channels) is off by O(1); 1e-2 leaves room for TF32 convolutions on a GPU.
PROBE_TOLERANCE = 1e-2

Pass = Callable[[torch.Tensor], tuple]


def teacher_pass(model: nn.Module, images: torch.Tensor) -> tuple:
    """(logits (B, C), last feature map (B, K, h, w)) of one model."""
    features = model.forward_features(images)
    return model.forward_head(features), features


class GroupedLinear(nn.Module):
    """T linear layers side by side: (B, T·in) → (B, T·out), one batched matmul."""

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in linears]).transpose(1, 2))
        self.bias = (nn.Parameter(torch.stack([layer.bias.detach() for layer in linears]).unsqueeze(1))
                     if linears[0].bias is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grouped = x.reshape(x.shape[0], self.weight.shape[0], -1).transpose(0, 1)
        out = torch.bmm(grouped, self.weight) if self.bias is None else torch.baddbmm(self.bias, grouped, self.weight)
        return out.transpose(0, 1).reshape(x.shape[0], -1)


def input_convs(model: nn.Module) -> tuple:
    """Names of the Conv2d layers (groups 1, called once) that read the images if nothing else reads them; else ()."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # fx raises several types for data-dependent control flow; then the input is repeated
        return ()
    modules = dict(model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    users = list(next(node for node in graph.nodes if node.op == "placeholder").users)
    if users and all(user.op == "call_module" and type(modules[user.target]) is nn.Conv2d
                     and modules[user.target].groups == 1 and calls[user.target] == 1 for user in users):
        return tuple(user.target for user in users)
    return ()


def _stack_module(name: str, modules: Sequence[nn.Module], reads_images: bool) -> Optional[nn.Module]:
    """One module doing the work of `modules` (same type and shapes) on T channel groups; None if it holds no
    parameters or buffers (it must then act per channel: checked by the probe). A conv that `reads_images` takes
    the images once (not repeated) and writes the T groups."""
    first, count = modules[0], len(modules)
    cat = lambda attribute: nn.Parameter(torch.cat([getattr(m, attribute).detach() for m in modules]),
                                         requires_grad=False)
    if type(first) is nn.Conv2d:
        in_channels, groups = (first.in_channels, 1) if reads_images else (first.in_channels * count,
                                                                           first.groups * count)
        wide = nn.Conv2d(in_channels, first.out_channels * count, first.kernel_size, first.stride, first.padding,
                         first.dilation, groups, first.bias is not None, first.padding_mode, device="meta")
        wide.weight = cat("weight")
        if first.bias is not None:
            wide.bias = cat("bias")
        return wide
    if type(first) is nn.BatchNorm2d:
        wide = copy.deepcopy(first)
        wide.num_features *= count
        for attribute, value in list(wide.named_parameters(recurse=False)) + list(wide.named_buffers(recurse=False)):
            if attribute != "num_batches_tracked":
                joined = torch.cat([getattr(m, attribute).detach() for m in modules])
                setattr(wide, attribute, nn.Parameter(joined, requires_grad=False)
                        if isinstance(value, nn.Parameter) else joined)
        return wide
    if type(first) is nn.Linear:
        return GroupedLinear(modules)
    if any(True for _ in first.parameters(recurse=False)) or any(True for _ in first.buffers(recurse=False)):
        raise ValueError(f"cannot stack {type(first).__name__} at {name or 'the model'}")
    return None


def widen(models: Sequence[nn.Module], image_convs: Sequence[str] = ()) -> nn.Module:
    """One model T times as wide that runs `models` (one architecture) side by side on T channel groups.

    Its outputs hold teacher t in channels t·K..(t+1)·K. Its input is the images if `image_convs` names the convs
    that read them (see `input_convs`), else the images repeated T times along channels.
    """
    wide = copy.deepcopy(models[0])
    counterparts = [dict(model.named_modules()) for model in models]
    for name, _ in list(wide.named_modules()):
        stacked = _stack_module(name, [modules[name] for modules in counterparts], name in image_convs)
        if stacked is not None:
            if not name:
                return stacked
            parent, _, attribute = name.rpartition(".")
            setattr(wide.get_submodule(parent), attribute, stacked)
    return wide


def wide_pass(wide: nn.Module, count: int, images: torch.Tensor, repeat_images: bool) -> tuple:
    """(logits (T, B, C), feature maps (T, B, K, h, w)) of the widened model; both strided views."""
    features = wide.forward_features(torch.cat([images] * count, dim=1) if repeat_images else images)
    logits = wide.forward_head(features)
    return logits.unflatten(1, (count, -1)).transpose(0, 1), features.unflatten(1, (count, -1)).transpose(0, 1)


def same_architecture(models: Sequence[nn.Module]) -> bool:
    """Same classes, module tree, module settings and parameter/buffer shapes."""
    def signature(model: nn.Module) -> list:
        return ([(name, type(m), m.extra_repr()) for name, m in model.named_modules()] +
                [(name, tuple(t.shape)) for name, t in model.state_dict().items()])
    first = signature(models[0])
    return all(signature(model) == first for model in models[1:])


def _probe_input(model: nn.Module, device: torch.device) -> torch.Tensor:
    """Two random images at the model's size (`rkd_image_size`, else 32) with its input channel count."""
    in_chans = next(m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    size = getattr(model, "rkd_image_size", 32)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, in_chans, size, size, generator=generator).to(device)


def _relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours.float() - reference.float()).norm() / reference.float().norm().clamp_min(1e-12)).item()


def _channels_last(model: nn.Module) -> nn.Module:
    return model.to(memory_format=torch.channels_last)


def _folded(teacher: nn.Module) -> nn.Module:
    """The teacher with BatchNorm folded, channels_last; the teacher itself (with a warning) if fx cannot trace it."""
    try:
        return _channels_last(fold_batchnorm(teacher))
    except ValueError as err:
        warnings.warn(f"BatchNorm not folded: {err}", stacklevel=3)
        return teacher


class TeacherEnsemble(nn.Module):
    """Frozen teachers. `bn_mode="train"` keeps BatchNorm in train mode, as the paper's code did.

    `fused=True` runs teachers of one architecture as one wide model in eval mode; `fused=False` forces the
    per-teacher loop; `fused=None` (default) fuses on CUDA and loops on the CPU, where the loop with folded
    BatchNorm measured faster (bench/bench_ensemble.py: 1.75x sequential vs 0.71x fused, 3 x resnet20, 2 cores).
    `compile` wraps the forward pass in `torch.compile`. `teachers` holds the original models (for per-teacher
    evaluation); `mode` says which pass is used and `fallback_reason` why it is not fused.
    """

    def __init__(self, teachers: Sequence[nn.Module], bn_mode: str = "eval", *, fused: Optional[bool] = None,
                 compile: bool = False) -> None:
        super().__init__()
        if bn_mode not in TEACHER_BN_MODES:
            raise ValueError(f"unknown teacher BatchNorm mode {bn_mode!r}: choose eval or train")
        self.teachers = nn.ModuleList(teachers)
        self.bn_mode = bn_mode
        self.train(False)
        self.mode, self.fallback_reason = self._choose_mode(fused)
        folded = [_folded(t) for t in self.teachers] if bn_mode == "eval" else []
        if self.mode == "fused":
            self.fallback_reason = self._build_wide(folded)
            if self.fallback_reason is not None:
                self.mode = "loop"
                warnings.warn(f"teacher ensemble not fused ({self.fallback_reason}); running teachers in a loop",
                              stacklevel=2)
        if self.mode == "loop" and folded:
            self.folded = nn.ModuleList(folded)
        for param in self.parameters():
            param.requires_grad_(False)
        self._pass = self._make_pass(compile)
        self._streams: list = []

    def _choose_mode(self, fused: Optional[bool]) -> tuple:
        if fused is False:
            return "loop", "fused=False"
        if self.bn_mode == "train":
            return "loop", "bn_mode 'train' needs per-teacher batch statistics"
        if not same_architecture(self.teachers):
            return "loop", "teachers of different architectures"
        if fused is None and next(self.teachers[0].parameters()).device.type != "cuda":
            return "loop", "on the CPU the per-teacher loop with folded BatchNorm is faster"
        return "fused", None

    def _build_wide(self, folded: list) -> Optional[str]:
        """Build `self.wide` from the folded teachers and check it against the teachers; returns why not, if not."""
        try:
            image_convs = input_convs(folded[0])
            wide = _channels_last(widen(folded, image_convs)).eval()
            probe = _probe_input(self.teachers[0], next(self.teachers[0].parameters()).device)
            with torch.no_grad():
                got = wide_pass(wide, len(folded), probe, not image_convs)
                want = [torch.stack(outputs) for outputs in zip(*(teacher_pass(t, probe) for t in self.teachers))]
        except (ValueError, RuntimeError) as err:
            return str(err).splitlines()[0]
        error = max(_relative_error(g, w) for g, w in zip(got, want))
        if error > PROBE_TOLERANCE:
            return f"the widened model differs from the teachers (relative error {error:.2g})"
        self.wide, self.repeat_images = wide, not image_convs
        return None

    def _make_pass(self, compile: bool) -> Pass:
        """The function images → (logits (T, B, C), features (T, B, K, h, w)) for `self.mode`."""
        if self.mode == "fused":
            count = len(self.teachers)
            run = lambda images: wide_pass(self.wide, count, images, self.repeat_images)
            return torch.compile(run) if compile else run
        one = torch.compile(teacher_pass) if compile else teacher_pass
        return lambda images: tuple(map(torch.stack, zip(*self._loop(one, images))))

    def _loop(self, one: Callable, images: torch.Tensor) -> list:
        """Each teacher's (logits, features); on CUDA each teacher on its own stream."""
        models = self.folded if self.bn_mode == "eval" else self.teachers
        if images.device.type != "cuda":
            return [one(model, images) for model in models]
        current = torch.cuda.current_stream(images.device)
        if len(self._streams) != len(models) or self._streams[0].device != images.device:
            self._streams = [torch.cuda.Stream(images.device) for _ in models]
        outputs = []
        for model, stream in zip(models, self._streams):
            stream.wait_stream(current)
            images.record_stream(stream)
            with torch.cuda.stream(stream):
                outputs.append(one(model, images))
        for stream in self._streams:
            current.wait_stream(stream)
        for output in outputs:
            for tensor in output:
                tensor.record_stream(current)
        return outputs

    def train(self, mode: bool = True) -> "TeacherEnsemble":
        """Teachers stay in eval mode unless bn_mode is 'train' (then BatchNorm uses batch statistics)."""
        super().train(False)
        if getattr(self, "bn_mode", "eval") == "train":
            for module in self.teachers.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.train(True)
        return self

    def __len__(self) -> int:
        return len(self.teachers)

    @torch.no_grad()
    def forward_with_features(self, images: torch.Tensor) -> tuple:
        """(logits (T, B, C), last feature maps (T, B, K, h, w)) in one pass."""
        if self.bn_mode == "train":
            self.train(False)  # batch statistics again, even if a caller switched the teachers to eval meanwhile
        return self._pass(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (T, B, C)."""
        return self.forward_with_features(images)[0]


def load_ensemble(paths: Sequence[Path], device: torch.device, *, num_classes: int, in_chans: int,
                  image_size: int = 224, bn_mode: str = "eval", fused: Optional[bool] = None,
                  compile: bool = False) -> tuple:
    """Load teachers (rkd checkpoints, run directories, timm:NAME[@FILE]) into a TeacherEnsemble; returns
    (ensemble, list of (spec, arch)). `image_size` is the data's, for pretrained models."""
    models, described = [], []
    for path in paths:
        model, arch = load_teacher(path, device, num_classes=num_classes, in_chans=in_chans, image_size=image_size)
        models.append(_channels_last(model))
        described.append((str(path), arch))
    _check_feature_shapes(models, described, device)
    return TeacherEnsemble(models, bn_mode, fused=fused, compile=compile).to(device), described


def _check_feature_shapes(models: Sequence[nn.Module], described: list, device: torch.device) -> None:
    """Teachers' last feature maps must agree in shape (they are stacked, T × (B, K, h, w)); one line otherwise."""
    shapes = []
    with torch.no_grad():
        for model in models:
            shapes.append(tuple(model.eval().forward_features(_probe_input(model, device)[:1]).shape[1:]))
    if len(set(shapes)) > 1:
        listed = ", ".join(f"{spec} ({arch}): {'x'.join(map(str, shape))}"
                           for (spec, arch), shape in zip(described, shapes))
        raise RkdError(f"--teachers: the teachers' last feature maps differ in shape ({listed}); an ensemble needs "
                       "one feature-map shape (e.g. resnet18 with resnet34, or one architecture)")
