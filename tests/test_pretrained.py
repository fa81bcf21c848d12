"""Pretrained teachers offline: timm:NAME@FILE (safetensors, state_dict, torchvision weights), the hub's offline
error, class-count checks, run directories as --teachers, mixed ensembles and fine-tuning with a fresh head."""
import time

import pytest
import timm
import torch
import torchvision

from rkd.train.checkpoint import model_record, save_checkpoint
from rkd.kd.ensemble import load_ensemble
from rkd.errors import RkdError
from rkd.models import create
from rkd.kd.pretrained import TimmSpec, parse_timm_spec, timm_init, timm_teacher
from rkd.kd.teachers import load_teacher

ARCH = "test_resnet"  # timm's smallest ResNet (0.37 M parameters)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A 10-class timm model and its weights as .safetensors and as a torch.save'd state_dict."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    model = timm.create_model(ARCH, num_classes=10).eval()
    save_file(model.state_dict(), str(folder / "w.safetensors"))
    torch.save(model.state_dict(), folder / "w.pt")
    return model, folder


def _logits(model, images):
    with torch.no_grad():
        return model.eval()(images)


@pytest.mark.parametrize("name", ["w.safetensors", "w.pt"])
def test_a_local_weights_file_gives_the_saved_model(weights, name):
    model, folder = weights
    teacher = timm_teacher(parse_timm_spec(f"timm:{ARCH}@{folder / name}"), num_classes=10, in_chans=3,
                           image_size=64)
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(_logits(teacher, images), _logits(model, images))
    assert teacher.rkd_image_size == 64 and not teacher.training


def test_torchvision_resnet18_weights_load_into_timm_resnet18(tmp_path):
    """timm's resnet18 uses torchvision's key names: the same weights give the same logits."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    teacher = timm_teacher(TimmSpec("resnet18", tmp_path / "tv.pth"), num_classes=10, in_chans=3, image_size=64)
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(_logits(teacher, images), _logits(reference, images), rtol=1e-4, atol=1e-4)


def test_wrong_class_count_names_both(weights):
    _, folder = weights
    with pytest.raises(RkdError, match="predicts 10 classes but the data has 7") as info:
        load_teacher(f"timm:{ARCH}@{folder / 'w.pt'}", "cpu", num_classes=7, in_chans=3, image_size=64)
    assert "\n" not in str(info.value)


class _Exploit:
    def __reduce__(self):
        return (print, ("pickled code ran",))


@pytest.mark.parametrize("content,match", [(b"not a weights file", "not a readable weights file"),
                                           (None, "not a readable weights file")])
def test_foreign_files_are_refused_without_running_code(tmp_path, capsys, content, match):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"fc.weight": _Exploit()}, path)  # a pickle that would run code under weights_only=False
    else:
        path.write_bytes(content)
    with pytest.raises(RkdError, match=match):
        load_teacher(f"timm:{ARCH}@{path}", "cpu", num_classes=10, in_chans=3, image_size=64)
    assert "pickled code ran" not in capsys.readouterr().out


def test_weights_of_another_architecture_are_one_line(tmp_path):
    torch.save(timm.create_model("resnet10t", num_classes=10).state_dict(), tmp_path / "other.pt")
    with pytest.raises(RkdError, match="does not fit timm test_resnet") as info:
        load_teacher(f"timm:{ARCH}@{tmp_path / 'other.pt'}", "cpu", num_classes=10, in_chans=3, image_size=64)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("spec,match", [("timm:no_such_net", "not a timm model name"),
                                        ("timm:test_resnet@/no/such/file.pt", "does not exist")])
def test_bad_specs_are_one_line(spec, match):
    with pytest.raises(RkdError, match=match):
        parse_timm_spec(spec)


def test_the_hub_offline_is_a_one_line_error_that_names_the_local_file_form(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    with pytest.raises(RkdError) as info:
        load_teacher("timm:resnet18.a1_in1k", "cpu", num_classes=1000, in_chans=3, image_size=224)
    message = str(info.value)
    assert "\n" not in message and "offline" in message and "--teachers timm:resnet18@FILE" in message


def test_an_unreachable_hub_fails_fast_without_the_offline_variable(monkeypatch, tmp_path):
    """The probe's refusal switches timm to its (empty) cache: an error in seconds, not a hang."""
    import huggingface_hub.constants

    import rkd.kd.pretrained

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(rkd.kd.pretrained, "HUB_ADDRESS", ("127.0.0.1", 9))  # discard port: connection refused
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(RkdError, match="offline"):
        timm_init(TimmSpec("resnet18.a1_in1k"), num_classes=10, in_chans=3, image_size=64)
    assert time.perf_counter() - start < 30
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # restored


def test_init_keeps_the_backbone_and_starts_a_fresh_head(weights):
    model, folder = weights
    torch.manual_seed(0)
    tuned = timm_init(TimmSpec(ARCH, folder / "w.pt"), num_classes=3, in_chans=3, image_size=64)
    saved = model.state_dict()
    for key, value in tuned.state_dict().items():
        if key.startswith("fc."):
            assert value.shape[0] == 3
        else:
            torch.testing.assert_close(value, saved[key])
    grey = timm_init(TimmSpec(ARCH, folder / "w.pt"), num_classes=3, in_chans=1, image_size=64)
    stem = next(k for k in saved if k.endswith(".weight") and saved[k].dim() == 4)
    torch.testing.assert_close(grey.state_dict()[stem], saved[stem].sum(1, keepdim=True))  # timm's adapt rule


def test_a_run_directory_is_taken_for_its_best_checkpoint(tmp_path):
    model = create("resnet8", 10, 32, 3)
    save_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", model_record(model, "resnet8", 10, 32, 3))
    loaded, arch = load_teacher(tmp_path / "run", "cpu", num_classes=10, in_chans=3, image_size=32)
    assert arch == "resnet8"
    with pytest.raises(RkdError, match="directory without checkpoints/best.pt"):
        load_teacher(tmp_path, "cpu", num_classes=10, in_chans=3, image_size=32)


def test_mixed_ensemble_of_an_rkd_checkpoint_and_timm_files_fuses(weights, tmp_path):
    """An rkd checkpoint of the timm architecture next to timm teachers: one fused forward, same outputs."""
    _, folder = weights
    torch.manual_seed(1)
    own = create(ARCH, 10, 64, 3)
    save_checkpoint(tmp_path / "own.pt", model_record(own, ARCH, 10, 64, 3))
    specs = [tmp_path / "own.pt", f"timm:{ARCH}@{folder / 'w.safetensors'}", f"timm:{ARCH}@{folder / 'w.pt'}"]
    fused, described = load_ensemble(specs, torch.device("cpu"), num_classes=10, in_chans=3, image_size=64,
                                     fused=True)
    assert fused.mode == "fused" and [arch for _, arch in described] == [ARCH] * 3
    images = torch.randn(2, 3, 64, 64)
    logits, features = fused.forward_with_features(images)
    for teacher, teacher_logits in zip(fused.teachers, logits):
        torch.testing.assert_close(teacher_logits, _logits(teacher, images), rtol=1e-3, atol=1e-3)
    assert features.shape[:2] == (3, 2)
    cifar = tmp_path / "cifar.pt"  # a CIFAR ResNet: 64 x 16 x 16 feature maps at 64 px, test_resnet's 96 x 2 x 2
    save_checkpoint(cifar, model_record(create("resnet8", 10, 64, 3), "resnet8", 10, 64, 3))
    with pytest.raises(RkdError, match="last feature maps differ in shape"):
        load_ensemble([cifar, specs[1]], torch.device("cpu"), num_classes=10, in_chans=3, image_size=64)


def test_mixed_architectures_with_one_feature_map_shape_run_in_a_loop(tmp_path):
    """An rkd-trained resnet10t next to torchvision's resnet18 weights as timm:resnet18@FILE (both 512 x h x w)."""
    own = tmp_path / "own.pt"
    save_checkpoint(own, model_record(create("resnet10t", 10, 64, 3), "resnet10t", 10, 64, 3))
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "tv.pth")
    ensemble, described = load_ensemble([own, f"timm:resnet18@{tmp_path / 'tv.pth'}"], torch.device("cpu"),
                                        num_classes=10, in_chans=3, image_size=64)
    assert ensemble.mode == "loop" and [arch for _, arch in described] == ["resnet10t", "resnet18"]
    logits, features = ensemble.forward_with_features(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 2, 10) and features.shape == (2, 2, 512, 2, 2)
