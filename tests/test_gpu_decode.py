"""Batched JPEG decoding (`decode_device`): the same crops as the per-image path, on the CPU here, nvJPEG on CUDA."""
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from pipelines import ConfigError, build_loader
from pipelines.augment.train_transforms import resized_crop
from pipelines.jpeg_batch import decode_crop_flip

SIZES = ((80, 60), (45, 97), (120, 90), (33, 40), (64, 64), (150, 50))   # (width, height): a ragged batch


@pytest.fixture(scope="module")
def ragged_tree(tmp_path_factory):
    """Two classes of JPEGs of different sizes: smooth gradients plus noise (so a wrong box shows)."""
    root = tmp_path_factory.mktemp("ragged")
    rng = np.random.default_rng(3)
    for i, (width, height) in enumerate(SIZES * 2):
        folder = root / "train" / f"n{i % 2:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
        pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i}.jpg", quality=92)
    return root


def uint8_batches(loader):
    """The loader's uint8 batches before the device stage, for epoch 0 (batch path decoded on its device)."""
    batches = []
    for batch_index, indices in enumerate(loader.epoch_batches()):
        images, _labels = loader.dataset[(0, batch_index, indices)]
        if loader.decode_device is not None:
            images = decode_crop_flip(*images, size=loader.image_size, device=loader.decode_device)
        batches.append(images.cpu())
    return torch.cat(batches)


def test_resized_crops_of_a_ragged_batch_equal_torchvision():
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)
              for h, w in ((50, 40), (37, 61), (80, 80), (20, 30))]
    boxes = torch.tensor([[0, 0, 50, 40], [3, 5, 20, 50], [10, 2, 70, 60], [19, 29, 1, 1]])
    for size in ((24, 24), (64, 50)):
        for antialias in (True, False):
            ours = resized_crop(images, boxes, size, antialias=antialias)
            expected = torch.stack([TF.resized_crop(x, *b.tolist(), list(size), antialias=antialias)
                                    for x, b in zip(images, boxes)])
            assert ours.shape == (4, 3, *size)
            assert (ours.int() - expected.int()).abs().max() <= 1   # float here, fixed point in torchvision


def test_batched_cpu_decode_crops_like_the_per_image_path(ragged_tree):
    common = dict(split="train", batch_size=4, image_size=32, seed=7, num_workers=0)
    per_image = uint8_batches(build_loader("torch", ragged_tree, **common))
    batched = uint8_batches(build_loader("torch", ragged_tree, decode_device="cpu", **common))
    assert batched.shape == per_image.shape == (12, 3, 32, 32)
    difference = (batched.int() - per_image.int()).abs()
    assert difference.max() <= 1, "same boxes and flips, so only resize rounding may differ"
    other_seed = uint8_batches(build_loader("torch", ragged_tree, decode_device="cpu", **{**common, "seed": 8}))
    assert (other_seed.int() - per_image.int()).abs().float().mean() > 10   # the comparison can fail


def test_batched_decode_loader_contract_and_workers(ragged_tree):
    def run(workers):
        loader = build_loader("torch", ragged_tree, split="train", batch_size=4, image_size=24, seed=2,
                              decode_device="cpu", num_workers=workers)
        return [x for x, _ in loader]

    serial, parallel = run(0), run(2)
    assert serial[0].shape == (4, 3, 24, 24) and serial[0].dtype == torch.float32
    assert serial[0].is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel))


def test_batched_decode_refuses_what_it_cannot_do(ragged_tree, fmnist_dir, tmp_path):
    with pytest.raises(ConfigError, match="array dataset"):
        build_loader("torch", fmnist_dir, split="train", batch_size=4, decode_device="cpu")
    with pytest.raises(ConfigError, match="one of cpu, cuda"):
        build_loader("torch", ragged_tree, split="train", batch_size=4, image_size=24, decode_device="tpu")
    with pytest.raises(ConfigError, match="augment_device=True"):
        build_loader("torch", ragged_tree, split="train", batch_size=4, image_size=24, decode_device="cpu",
                     augment_device=False)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="needs a CUDA device"):
            build_loader("torch", ragged_tree, split="train", batch_size=4, image_size=24, decode_device="cuda")
    png_tree = tmp_path / "png" / "train" / "n0"
    png_tree.mkdir(parents=True)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(png_tree / "a.png")
    loader = build_loader("torch", tmp_path / "png", split="train", batch_size=1, image_size=16,
                          decode_device="cpu", num_workers=0)
    with pytest.raises(ConfigError, match=r"a\.png is PNG, not JPEG"):
        next(iter(loader))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nvjpeg_decode_matches_the_cpu_decode(ragged_tree):
    common = dict(split="train", batch_size=4, image_size=32, seed=7, num_workers=0)
    on_cpu = uint8_batches(build_loader("torch", ragged_tree, decode_device="cpu", **common))
    on_gpu = uint8_batches(build_loader("torch", ragged_tree, decode_device="cuda", device="cuda", **common))
    difference = (on_gpu.int() - on_cpu.int()).abs().float()
    assert difference.mean() < 1.0 and difference.max() <= 16   # nvJPEG's IDCT vs libjpeg-turbo's, same boxes


def run_cli(argv, capsys):
    """Run `rkd argv` in-process; returns (exit code, stderr)."""
    from rkd.cli import main
    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def test_cli_decode_device_trains_and_refuses_in_one_line(jpeg_tree, tmp_path, capsys):
    tiny = ["train-teacher", "--data", str(jpeg_tree), "--runs-dir", str(tmp_path), "--arch", "resnet8",
            "--image-size", "32", "--batch-size", "4", "--epochs", "1", "--no-progress", "--device", "cpu",
            "--workers", "0"]
    code, err = run_cli([*tiny, "--decode-device", "cpu", "--name", "decoded"], capsys)
    assert code == 0, err
    config = (tmp_path / "decoded" / "config.json").read_text()
    assert '"decode_device": "cpu"' in config
    refusals = [(["--decode-device", "cpu", "--loader", "dali"], "--decode-device applies to --loader torch")]
    if not torch.cuda.is_available():
        refusals.append((["--decode-device", "cuda"], "--decode-device cuda needs a CUDA device"))
    for extra, message in refusals:
        code, err = run_cli([*tiny, *extra], capsys)
        assert code == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
