"""The loader core shared by every backend: declared backend options, one rule for augmenting an evaluation split,
and FFCV's fixes applied by the loader rather than by an import."""
from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch

import pipelines
from pipelines import AugmentSpec, ConfigError, build_loader

AUGMENT = AugmentSpec("randaugment", magnitude=9)
COMMON = set(inspect.signature(build_loader).parameters) - {"backend", "backend_options", "on_bad_file"}


def _loader_class(backend: str):
    if backend == "torch":
        from pipelines.torch_backend import TorchLoader
        return TorchLoader
    if backend == "ffcv":
        from pipelines.ffcv.loader import FFCVLoader
        return FFCVLoader
    from pipelines.dali.loader import DALILoader
    return DALILoader


BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(not pipelines.backend_available(name),
                                                         reason=f"needs the {name} package"))
            for name in pipelines.BACKENDS]


@pytest.mark.parametrize("backend", BACKENDS)
def test_declared_options_are_the_loaders_own_keywords(backend):
    declared = pipelines.backend_options(backend)
    keywords = set(inspect.signature(_loader_class(backend)).parameters) - COMMON
    assert set(declared) == keywords
    assert all(isinstance(help_text, str) and help_text and "\n" not in help_text for help_text in declared.values())


def test_an_option_of_another_backend_is_refused_naming_it(fmnist_dir):
    with pytest.raises(ConfigError, match=r"^build_loader: backend 'torch' takes no option 'order': it takes "
                                          r"augment_device, decode_device$"):
        build_loader("torch", fmnist_dir, split="train", batch_size=8, order="random")
    with pytest.raises(ConfigError, match="^backend_options: unknown backend 'jax'"):
        pipelines.backend_options("jax")


def _eval_batches(backend: str, source, tmp_path, augment: AugmentSpec, **options) -> torch.Tensor:
    if backend == "ffcv":
        options["cache_dir"] = tmp_path / "beton"
    loader = build_loader(backend, source, split="test", batch_size=32, augment=augment, seed=5, num_workers=1,
                          **options)
    return torch.cat([images for images, _ in loader])


@pytest.mark.parametrize("backend, options", [("torch", {}), ("ffcv", {}), ("dali", {"augment_backend": "rkd"})])
def test_an_evaluation_split_is_augmented_when_asked_the_same_on_every_backend(backend, options, fmnist_dir,
                                                                                tmp_path):
    if not pipelines.backend_available(backend):
        pytest.skip(f"needs the {backend} package")
    reference = _eval_batches("torch", fmnist_dir, tmp_path, AUGMENT)
    assert not torch.equal(reference, _eval_batches("torch", fmnist_dir, tmp_path, AugmentSpec()))
    assert torch.equal(_eval_batches(backend, fmnist_dir, tmp_path, AUGMENT, **options), reference)


@pytest.mark.skipif(not pipelines.backend_available("dali"), reason="needs the dali package")
def test_dalis_graph_augments_an_evaluation_split_too(fmnist_dir, tmp_path):
    plain = _eval_batches("dali", fmnist_dir, tmp_path, AugmentSpec())
    assert torch.equal(plain, _eval_batches("torch", fmnist_dir, tmp_path, AugmentSpec()))
    assert not torch.equal(_eval_batches("dali", fmnist_dir, tmp_path, AUGMENT), plain)


@pytest.mark.skipif(not pipelines.backend_available("ffcv"), reason="needs the ffcv package")
def test_importing_the_ffcv_backend_leaves_ffcv_untouched():
    probe = ("from ffcv.memory_managers import OSCacheManager as M; from ffcv.loader.epoch_iterator import "
             "EpochIterator as E; before = (M.__dict__.get('state_type'), M.compile_reader, E.run); "
             "import pipelines.ffcv.loader, pipelines.ffcv.decoder; "
             "assert (M.__dict__.get('state_type'), M.compile_reader, E.run) == before, 'patched on import'; "
             "from pipelines.ffcv.fixes import apply_ffcv_fixes; apply_ffcv_fixes(); "
             "assert M.compile_reader is not before[1], 'not applied'")
    subprocess.run([sys.executable, "-c", probe], check=True)
