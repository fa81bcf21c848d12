"""Typed configuration: config.json records what determines a run, --resume names the part that differs, the
data's facts are read once, --loader-option reaches the backend, and rkd imports only public kernels/pipelines."""
import ast
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

import kernels
import pipelines
from pipelines import sources
from rkd.cli import main
from rkd.commands.options import parse_option_value
from rkd.models import create
from rkd.train import runs as runs_module
from rkd.train.checkpoint import model_record, save_checkpoint
from rkd.train.runs import first_difference
from test_cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ["--epochs", "1", "--batch-size", "64", "--no-progress", "--device", "cpu", "--arch", "resnet8",
           "--workers", "0"]
TINY = [*TEACHER, "--policy", "none", "--metrics-every", "0"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """An untrained resnet8 teacher checkpoint for the tiny Fashion-MNIST data (what is measured is the config)."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_checkpoint(path, model_record(create("resnet8", 10, 28, 1), "resnet8", 10, 28, 1))
    return path


@pytest.fixture(scope="module")
def opens():
    """{split: times a split of an IDX folder was read}, counted while a test runs `rkd` in-process."""
    return {}


@pytest.fixture(scope="module")
def distilled(fmnist_dir, teacher, tmp_path_factory, opens):
    runs = tmp_path_factory.mktemp("runs")
    argv = ["distill", "--data", str(fmnist_dir), "--runs-dir", str(runs), "--teachers", str(teacher),
            "--teachers", str(teacher), "--name", "tiny", "--alpha", "0.4", *TINY]
    reader = sources._read_idx_source

    def counted(path, split):
        opens[split] = opens.get(split, 0) + 1
        return reader(path, split)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sources, "_read_idx_source", counted)
        main(argv)
    return runs / "tiny", argv


def test_config_json_records_everything_that_determines_the_run(distilled, fmnist_dir, teacher):
    run, _ = distilled
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["data"] == str(fmnist_dir) and config["data"]["loader"] == "torch"
    assert config["data"]["augment"]["policy"] == "none" and config["data"]["loader_options"] == {}
    files = sorted(p for p in Path(fmnist_dir).rglob("*") if p.is_file())
    assert config["data_summary"] == {"path": str(Path(fmnist_dir).resolve()), "files": len(files),
                                      "bytes": sum(p.stat().st_size for p in files)}
    assert config["arch"] == "resnet8" and config["seed"] == 0
    assert config["optim"]["epochs"] == 1 and config["optim"]["schedule"] == "cosine"
    assert config["kd"] == {"alpha": 0.4, "temperature": 3.0, "mode": "per-teacher", "teacher_bn": "eval",
                            "fusion": "auto", "compile": False, "metrics_every": 0}
    digest = hashlib.sha256(teacher.read_bytes()).hexdigest()
    assert config["teachers"] == [{"spec": str(teacher), "path": str(teacher.resolve()), "sha256": digest}] * 2
    versions = config["environment"]["versions"]
    assert set(versions) == {"torch", "torchvision", "timm", "dali", "ffcv", "rkd"}
    import torch
    assert versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    git = config["environment"]["git"]
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        assert git["commit"] == head
    else:
        assert git is None


def test_one_distill_reads_the_test_split_once_for_its_facts_and_once_to_evaluate(distilled, opens):
    """Issue 14: the data's facts are resolved once per command (it used to read the test split ~8 times)."""
    assert opens["test"] == 2, opens   # dataset facts, then the evaluation loader
    assert opens["train"] <= 2, opens  # the training loader and the train-accuracy subset


def test_resume_names_the_part_that_differs_in_one_line(distilled, capsys):
    _, argv = distilled
    changed = list(argv)
    changed[changed.index("--alpha") + 1] = "0.5"
    code, _, err = run_cli(changed + ["--resume"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "differs from this command in kd.alpha (saved 0.4, now 0.5)" in err


def test_resume_ignores_versions_commit_and_parts_an_older_rkd_did_not_record(distilled, capsys):
    run, argv = distilled
    config = json.loads((run / "config.json").read_text())
    config["environment"] = {"versions": {"torch": "0.0"}, "git": {"commit": "0" * 40, "dirty": True}}
    del config["data_summary"]   # a config.json written before it was recorded
    (run / "config.json").write_text(json.dumps(config))
    code, out, err = run_cli(argv + ["--resume"], capsys)
    assert code == 0, err


def test_first_difference_walks_nested_parts():
    saved = {"data": {"augment": {"magnitude": 9}, "workers": 2}, "kd": {"mode": "per-teacher"}, "environment": 1}
    assert first_difference(saved, {**saved, "environment": 2, "data": {"augment": {"magnitude": 9}, "workers": 0},
                                    "new": 1}) is None
    assert first_difference(saved, {**saved, "kd": {"mode": "mean-probs"}}) == \
        'kd.mode (saved "per-teacher", now "mean-probs")'
    assert first_difference(saved, {"data": saved["data"], "environment": 1}) == \
        'kd (saved {"mode": "per-teacher"}, now null)'
    teachers = {"teachers": [{"sha256": "a"}, {"sha256": "b"}]}
    assert first_difference(teachers, {"teachers": [{"sha256": "a"}, {"sha256": "c"}]}) == \
        'teachers.1.sha256 (saved "b", now "c")'
    assert first_difference(teachers, {"teachers": [{"sha256": "a"}]}).startswith("teachers (saved [")


def test_environment_without_git(monkeypatch, tmp_path):
    """No git checkout, or no git program: the commit is None and nothing fails."""
    assert runs_module.git_commit(tmp_path) is None

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert runs_module.git_commit(ROOT) is None
    assert runs_module.environment()["git"] is None


@pytest.mark.parametrize("text,value", [("3", 3), ("0.5", 0.5), ("true", True), ("False", False), ("none", None),
                                        ("quasi_random", "quasi_random")])
def test_loader_option_values(text, value):
    assert parse_option_value(text) == value and type(parse_option_value(text)) is type(value)


@pytest.mark.parametrize("option,message", [
    ("os_cache=false", "--loader-option os_cache: --loader torch does not take it; it takes augment_device"),
    ("order", "--loader-option 'order': expected KEY=VALUE"),
    ("decode_device=cpu", "use --decode-device")])
def test_loader_option_refusals_are_one_line(fmnist_dir, tmp_path, capsys, option, message):
    code, _, err = run_cli(["train-teacher", "--data", str(fmnist_dir), "--runs-dir", str(tmp_path),
                            "--loader-option", option, *TEACHER], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_loader_option_refusal_names_the_options_as_written(fmnist_dir, tmp_path, capsys):
    """The options --loader-option takes are listed as KEY names, not rewritten into other flags."""
    code, _, err = run_cli(["train-teacher", "--data", str(fmnist_dir), "--runs-dir", str(tmp_path), "--loader", "ffcv",
                            "--loader-option", "bogus=1", *TEACHER], capsys)
    assert code == 2 and "it takes order, os_cache, batches_ahead, write_mode, max_resolution, jpeg_quality" in err, err


def test_loader_option_reaches_the_backend_and_config(fmnist_dir, tmp_path, capsys, monkeypatch):
    """--loader-option augment_device=false: the torch backend augments in its workers; config.json says so."""
    seen = []
    build = pipelines.build_loader

    def spy(backend, source, **kwargs):
        seen.append(kwargs.get("augment_device"))
        return build(backend, source, **kwargs)

    monkeypatch.setattr(pipelines, "build_loader", spy)
    code, _, err = run_cli(["train-teacher", "--data", str(fmnist_dir), "--runs-dir", str(tmp_path), "--name", "t",
                            "--loader-option", "augment_device=false", *TEACHER], capsys)
    assert code == 0, err
    assert False in seen   # the training loader got it
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["data"]["loader_options"] == {"augment_device": False}


def _rkd_imports():
    """(file, line, module, name) of every `from kernels|pipelines... import name` and `import kernels|pipelines.x`
    in rkd/."""
    for path in sorted((ROOT / "rkd").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] in ("kernels", "pipelines"):
                    for alias in node.names:
                        yield path.relative_to(ROOT), node.lineno, node.module, alias.name
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in ("kernels", "pipelines"):
                        yield path.relative_to(ROOT), node.lineno, alias.name, None


PUBLIC_SUBPACKAGES = {"pipelines.augment", "pipelines.ffcv"}   # documented, each with its own __all__


def test_rkd_imports_only_public_names_of_kernels_and_pipelines():
    import importlib
    bad = []
    for path, line, module, name in _rkd_imports():
        if module not in ("kernels", "pipelines", *PUBLIC_SUBPACKAGES):
            bad.append(f"{path}:{line}: {module} is not a public module")
            continue
        if name is not None:
            exported = getattr(importlib.import_module(module), "__all__", ())
            if name not in exported:
                bad.append(f"{path}:{line}: {module}.{name} is not in {module}.__all__")
    assert not bad, "\n".join(bad)


def test_rkd_attribute_uses_of_kernels_and_pipelines_are_exported():
    """`pipelines.X` / `kernels.X` attribute reads in rkd/ name exported names only."""
    exported = {"pipelines": set(pipelines.__all__), "kernels": set(kernels.__all__)}
    bad = []
    for path in sorted((ROOT / "rkd").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in exported and node.attr not in exported[node.value.id]):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not bad, "\n".join(bad)
