"""The teacher ensemble: fused forward == per-teacher forwards, BatchNorm folding, fallbacks, frozen teachers."""
import copy
import functools
import warnings

import pytest
import torch
import torch.nn as nn

from rkd.train.checkpoint import model_record, save_checkpoint
from rkd.kd.ensemble import TeacherEnsemble, load_ensemble
from rkd.kd.fold_bn import conv_bn_pairs, fold_batchnorm
from rkd.models import create

TOLERANCE = 1e-5  # relative error, fp32 on CPU


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).norm() / reference.norm()).item()


def with_random_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so that folding has something to fold."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model


def make_teachers(arch: str, size: int, in_chans: int, count: int = 3, seed: int = 0) -> list:
    torch.manual_seed(seed)
    return [with_random_batchnorm(create(arch, 10, size, in_chans)).eval() for _ in range(count)]


def per_teacher(teachers, images) -> tuple:
    """The reference: each teacher on its own, one pass each (features, then the head on them)."""
    with torch.no_grad():
        features = [teacher.forward_features(images) for teacher in teachers]
        logits = [teacher.forward_head(f) for teacher, f in zip(teachers, features)]
    return torch.stack(logits), torch.stack(features)


CASES = [("resnet8", 28, 1), ("resnet20", 32, 3), ("resnet10t", 64, 3)]


@pytest.mark.parametrize("arch,size,in_chans", CASES)
def test_fold_batchnorm_folds_every_pair_and_keeps_outputs(arch, size, in_chans):
    model = make_teachers(arch, size, in_chans, count=1)[0]
    batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(conv_bn_pairs(model)) == batchnorms > 0
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == batchnorms  # the original is untouched
    images = torch.randn(4, in_chans, size, size)
    (logits, features), (want_logits, want_features) = per_teacher([folded], images), per_teacher([model], images)
    assert relative_error(logits, want_logits) <= TOLERANCE
    assert relative_error(features, want_features) <= TOLERANCE


def test_fold_batchnorm_leaves_unpaired_batchnorm():
    """A BatchNorm fed by something other than a lone conv (here: a conv whose output is used twice) stays."""
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = with_random_batchnorm(Shared()).eval()
    assert conv_bn_pairs(model) == []
    assert isinstance(fold_batchnorm(model).bn, nn.BatchNorm2d)


@pytest.mark.parametrize("arch,size,in_chans", CASES)
def test_fused_matches_separate_teachers(arch, size, in_chans):
    teachers = make_teachers(arch, size, in_chans)
    ensemble = TeacherEnsemble(teachers, fused=True)
    assert ensemble.mode == "fused" and ensemble.fallback_reason is None and not ensemble.repeat_images
    images = torch.randn(5, in_chans, size, size)
    logits, features = ensemble.forward_with_features(images)
    want_logits, want_features = per_teacher(teachers, images)
    assert logits.shape == want_logits.shape and features.shape == want_features.shape
    assert relative_error(logits, want_logits) <= TOLERANCE
    assert relative_error(features, want_features) <= TOLERANCE
    for t in range(len(teachers)):  # each teacher lands in its own slot
        assert relative_error(logits[t], want_logits[t]) <= TOLERANCE
    with torch.no_grad():
        plain_logits = torch.stack([teacher(images) for teacher in teachers])
    assert relative_error(ensemble(images), plain_logits) <= TOLERANCE


def test_fused_false_forces_the_loop_over_folded_teachers():
    teachers = make_teachers("resnet8", 28, 1)
    ensemble = TeacherEnsemble(teachers, fused=False)
    assert ensemble.mode == "loop" and ensemble.fallback_reason == "fused=False" and not hasattr(ensemble, "wide")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ensemble.folded.modules())
    images = torch.randn(3, 1, 28, 28)
    logits, features = ensemble.forward_with_features(images)
    want_logits, want_features = per_teacher(teachers, images)
    assert relative_error(logits, want_logits) <= TOLERANCE
    assert relative_error(features, want_features) <= TOLERANCE


def test_heterogeneous_teachers_fall_back_to_the_loop():
    torch.manual_seed(1)
    teachers = [with_random_batchnorm(create(arch, 10, 28, 1)).eval() for arch in ("resnet8", "resnet14", "resnet8")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an expected fallback is not worth a warning
        ensemble = TeacherEnsemble(teachers)
    assert ensemble.mode == "loop" and "different architectures" in ensemble.fallback_reason
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ensemble.folded.modules())
    images = torch.randn(4, 1, 28, 28)
    logits, features = ensemble.forward_with_features(images)
    want_logits, want_features = per_teacher(teachers, images)
    assert relative_error(logits, want_logits) <= TOLERANCE
    assert relative_error(features, want_features) <= TOLERANCE


class PooledStem(nn.Module):
    """Pools the images before the first conv: the wide model must take the images repeated per teacher."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, 5)

    def forward_features(self, x):
        return torch.relu(self.bn(self.conv(nn.functional.avg_pool2d(x, 2))))

    def forward_head(self, features):
        return self.fc(features.mean((2, 3)))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def test_fused_repeats_the_images_when_no_conv_reads_them_directly():
    torch.manual_seed(4)
    teachers = [with_random_batchnorm(PooledStem()).eval() for _ in range(3)]
    ensemble = TeacherEnsemble(teachers, fused=True)
    assert ensemble.mode == "fused" and ensemble.repeat_images
    images = torch.randn(4, 3, 16, 16)
    logits, features = ensemble.forward_with_features(images)
    want_logits, want_features = per_teacher(teachers, images)
    assert relative_error(logits, want_logits) <= TOLERANCE
    assert relative_error(features, want_features) <= TOLERANCE


class ChannelConcat(nn.Module):
    """Concatenates two branches along channels: a forward that cannot be widened channel group by group."""

    def __init__(self):
        super().__init__()
        self.left, self.right = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward_features(self, x):
        return torch.cat([self.left(x), self.right(x)], dim=1)

    def forward_head(self, features):
        return self.fc(features.mean((2, 3)))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class WithGroupNorm(ChannelConcat):
    """Holds a module type the widening does not know (GroupNorm)."""

    def __init__(self):
        super().__init__()
        self.norm = nn.GroupNorm(2, 8)

    def forward_features(self, x):
        return self.norm(super().forward_features(x))


@pytest.mark.parametrize("model_class,reason", [(ChannelConcat, "differs from the teachers"),
                                                 (WithGroupNorm, "cannot stack GroupNorm")])
def test_unwidenable_models_fall_back_with_a_warning(model_class, reason):
    torch.manual_seed(2)
    teachers = [model_class().eval() for _ in range(3)]
    with pytest.warns(UserWarning, match="not fused"):
        ensemble = TeacherEnsemble(teachers, fused=True)
    assert ensemble.mode == "loop" and reason in ensemble.fallback_reason
    images = torch.randn(2, 3, 32, 32)
    logits, features = ensemble.forward_with_features(images)
    want_logits, want_features = per_teacher(teachers, images)
    assert relative_error(logits, want_logits) <= TOLERANCE
    assert relative_error(features, want_features) <= TOLERANCE


def test_train_bn_mode_keeps_batch_statistics():
    teachers = make_teachers("resnet8", 28, 1)
    reference = [copy.deepcopy(t).train() for t in teachers]  # plain loop, BatchNorm on batch statistics
    ensemble = TeacherEnsemble(teachers, bn_mode="train")
    assert ensemble.mode == "loop" and "train" in ensemble.fallback_reason
    images = torch.randn(6, 1, 28, 28)
    for step in range(2):
        if step:  # an evaluation in between (as predict_logits does) must not switch the teachers to eval for good
            ensemble.teachers[0].eval()
        logits, features = ensemble.forward_with_features(images)
        want_logits, want_features = per_teacher(reference, images)
        assert relative_error(logits, want_logits) <= TOLERANCE
        assert relative_error(features, want_features) <= TOLERANCE
    for ours, theirs in zip(teachers, reference):  # running statistics move as in the paper's code
        assert torch.allclose(ours.bn1.running_mean, theirs.bn1.running_mean)
    eval_logits, _ = per_teacher([copy.deepcopy(t).eval() for t in teachers], images)
    assert relative_error(logits, eval_logits) > 1e-2  # batch statistics really differ from running ones


def test_teachers_stay_frozen_and_in_eval_mode():
    teachers = make_teachers("resnet8", 28, 1)
    ensemble = TeacherEnsemble(teachers)
    assert all(not p.requires_grad for p in ensemble.parameters())
    ensemble.train()  # e.g. a caller putting everything in train mode
    assert not any(m.training for m in ensemble.modules())
    images = torch.randn(3, 1, 28, 28, requires_grad=True)
    logits, features = ensemble.forward_with_features(images)
    assert not logits.requires_grad and not features.requires_grad
    want_logits, _ = per_teacher(teachers, images.detach())
    assert relative_error(logits, want_logits) <= TOLERANCE


def test_compile_flag_compiles_the_fused_pass(monkeypatch):
    """Inductor's C++ compile of even resnet8 takes > 60 s on 2 busy cores, so torch.compile runs with the "eager"
    backend here: dynamo still captures the fused pass, which must give one graph (no graph breaks)."""
    import torch._dynamo
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    teachers = make_teachers("resnet8", 28, 1)
    ensemble = TeacherEnsemble(teachers, compile=True)
    images = torch.randn(4, 1, 28, 28)
    logits, features = ensemble.forward_with_features(images)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    want_logits, want_features = per_teacher(teachers, images)
    assert relative_error(logits, want_logits) <= TOLERANCE
    assert relative_error(features, want_features) <= TOLERANCE


def test_load_ensemble_fuses_checkpointed_teachers(tmp_path):
    teachers = make_teachers("resnet8", 28, 1, count=2)
    paths = []
    for index, teacher in enumerate(teachers):
        paths.append(tmp_path / f"t{index}.pt")
        save_checkpoint(paths[-1], model_record(teacher, "resnet8", 10, 28, 1))
    ensemble, described = load_ensemble(paths, torch.device("cpu"), num_classes=10, in_chans=1, fused=True)
    assert ensemble.mode == "fused" and [arch for _, arch in described] == ["resnet8", "resnet8"]
    images = torch.randn(3, 1, 28, 28)
    assert relative_error(ensemble(images), per_teacher(teachers, images)[0]) <= TOLERANCE
    looped, _ = load_ensemble(paths, torch.device("cpu"), num_classes=10, in_chans=1, fused=False)
    assert looped.mode == "loop"
    automatic, _ = load_ensemble(paths, torch.device("cpu"), num_classes=10, in_chans=1)
    assert automatic.mode == "loop" and "on the CPU" in automatic.fallback_reason  # the faster path here
    assert relative_error(automatic(images), per_teacher(teachers, images)[0]) <= TOLERANCE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("archs", [("resnet8",) * 3, ("resnet8", "resnet14", "resnet8")])
def test_cuda_bf16_matches_separate_teachers(archs):
    """Fused (or the loop on CUDA streams) under bf16 autocast, channels_last, agrees with separate forwards."""
    torch.manual_seed(3)
    teachers = [with_random_batchnorm(create(a, 10, 32, 3)).eval().cuda().to(memory_format=torch.channels_last)
                for a in archs]
    ensemble = TeacherEnsemble(teachers)
    assert ensemble.mode == ("fused" if len(set(archs)) == 1 else "loop")
    images = torch.randn(16, 3, 32, 32, device="cuda").to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, features = ensemble.forward_with_features(images)
        want_logits, want_features = per_teacher(teachers, images)
    assert logits.dtype == want_logits.dtype == torch.bfloat16
    assert relative_error(logits.float(), want_logits.float()) <= 3e-2
    assert relative_error(features.float(), want_features.float()) <= 3e-2
