"""The paper's data shapes for array sources: RandomResizedCrop(scale=(s, 1)) of the native image up to the
training size (`AugmentSpec.array_crop_scale`, `--array-crop-scale`), on every loader backend."""
import json

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

import pipelines
from pipelines.augment.train_transforms import random_resized_crop_boxes
from pipelines.errors import ConfigError
from pipelines.torch_backend import array_batch_transform
from rkd.cli import main


def test_the_crop_is_torchvisions_resized_crop_with_its_box_sampling():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    ours = array_batch_transform(images, 96, True, torch.Generator().manual_seed(3), crop_scale=0.2)
    generator = torch.Generator().manual_seed(3)
    boxes = random_resized_crop_boxes(6, 32, 32, generator, scale=(0.2, 1.0))
    flips = torch.rand(6, generator=generator) < 0.5
    for image, box, flip, got in zip(images, boxes.tolist(), flips, ours):
        want = TF.resized_crop(image, *box, [96, 96], antialias=False)  # upsampling: antialiasing does nothing
        want = TF.horizontal_flip(want) if flip else want
        assert (got.int() - want.int()).abs().max() <= 1
    assert min(box[2] * box[3] for box in boxes.tolist()) >= 0.2 * 32 * 32 - 32  # area fraction >= scale (rounded)


def test_without_the_option_training_keeps_the_padded_crop_and_evaluation_ignores_it():
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    padded = array_batch_transform(images, 28, True, torch.Generator().manual_seed(0))
    assert padded.shape == images.shape
    clean = array_batch_transform(images, 56, False, torch.Generator().manual_seed(0), crop_scale=0.2)
    torch.testing.assert_close(clean, array_batch_transform(images, 56, False, torch.Generator()))


@pytest.mark.parametrize("backend", ["torch", "ffcv", "dali"])
def test_every_backend_crops_array_sources_up_to_the_training_size(backend, fmnist_dir, tmp_path, monkeypatch):
    pytest.importorskip({"torch": "torch", "ffcv": "ffcv", "dali": "nvidia.dali"}[backend])
    monkeypatch.setenv("RKD_CACHE_DIR", str(tmp_path))
    loader = pipelines.build_loader(backend, str(fmnist_dir), split="train", batch_size=16, image_size=64,
                                    augment=pipelines.AugmentSpec(array_crop_scale=0.2), device="cpu", seed=0,
                                    num_workers=1)
    images, _ = next(iter(loader))
    assert images.shape == (16, 1, 64, 64)
    whole = pipelines.build_loader("torch", str(fmnist_dir), split="test", batch_size=16, image_size=64,
                                   device="cpu", num_workers=0)
    assert images.std() > 0 and not torch.equal(images, next(iter(whole))[0])


def test_a_bad_scale_is_one_line():
    with pytest.raises(ConfigError, match=r"array_crop_scale must be in \(0, 1\]"):
        pipelines.AugmentSpec(array_crop_scale=1.5)


def test_train_teacher_with_the_papers_crop(fmnist_dir, tmp_path):
    main(["train-teacher", "--data", str(fmnist_dir), "--arch", "resnet8", "--image-size", "48",
          "--array-crop-scale", "0.2", "--epochs", "1", "--batch-size", "64", "--no-progress", "--device", "cpu",
          "--runs-dir", str(tmp_path), "--name", "t"])
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["data"]["augment"]["array_crop_scale"] == 0.2 and config["data"]["image_size"] == 48
