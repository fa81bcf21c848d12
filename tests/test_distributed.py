"""torchrun with two CPU processes (gloo): DDP distillation runs end to end and only rank 0 writes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.skipif(not TORCHRUN.exists(), reason="needs torchrun next to the Python interpreter")
def test_torchrun_two_processes(fmnist_dir, tmp_path):
    runs = tmp_path / "runs"
    argv = [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", "29533", "-m", "rkd", "distill",
            "--data", str(fmnist_dir), "--teacher-arch", "resnet8", "--teacher-epochs", "1", "--epochs", "1",
            "--batch-size", "32", "--policy", "none", "--runs-dir", str(runs), "--name", "ddp", "--no-progress",
            "--device", "cpu"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("training default teacher 1/2") == 1, "only rank 0 logs"
    records = [json.loads(line) for line in (runs / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and "test_acc" in records[0]
    assert (runs / "ddp" / "checkpoints" / "best.pt").is_file()


def evaluate_checkpoints(rank: int, world_size: int, data: str, paths: list, out: str, port: int) -> None:
    """One process of the evaluation: the distillation and the classifier evaluations of the same checkpoints."""
    import torch
    import torch.distributed as dist

    from rkd.kd.distill import DistillEvaluation
    from rkd.kd.ensemble import load_ensemble
    from rkd.kd.teachers import classifier_evaluation
    from rkd.models import WithFeatures
    from rkd.train.checkpoint import load_model
    from rkd.train.data import DataOptions, dataset_facts
    from rkd.train.distributed import DistInfo
    from rkd.train.job import JobContext, JobOptions
    from rkd.train.optim import OptimConfig

    torch.set_num_threads(1)
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    options = JobOptions(data=DataOptions(data=data, batch_size=64), arch="resnet8", optim=OptimConfig(epochs=1))
    facts = dataset_facts(options.data)
    context = JobContext(options, DistInfo(rank, world_size, rank), torch.device("cpu"), facts, None)
    ensemble, described = load_ensemble(paths[1:], "cpu", num_classes=facts.num_classes, in_chans=facts.in_chans)
    student = WithFeatures(load_model(paths[0])[0])
    distilled = DistillEvaluation(ensemble, context)
    record = {**distilled(student, 0), **{f"classifier_{k}": v for k, v in
                                          classifier_evaluation(context)(student, 0).items()}}
    if rank == 0:
        teachers, ensemble_acc = distilled.teacher_rows(described)
        torch.save({"record": record, "teachers": teachers, "ensemble_acc": ensemble_acc}, out)
    if world_size > 1:
        dist.destroy_process_group()


def test_evaluation_on_every_rank_equals_one_process(tmp_path):
    """2 gloo processes, each evaluating its shard (3 test batches: two on rank 0, one on rank 1), report exactly
    the numbers of one process on the same checkpoints."""
    import torch
    import torch.multiprocessing as mp

    from formats import write_fashion_mnist
    from rkd.models import create
    from rkd.train.checkpoint import model_record, save_checkpoint

    data = write_fashion_mnist(tmp_path / "data", train=300, test=600, seed=2)  # eval batches of 256: 256+256+88
    paths = []
    for seed in range(3):  # a student and two teachers, different weights
        torch.manual_seed(seed)
        model = create("resnet8", 10, 28, 1)
        for module in model.modules():  # non-trivial BatchNorm statistics, as after training
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
        paths.append(str(tmp_path / f"m{seed}.pt"))
        save_checkpoint(paths[-1], model_record(model, "resnet8", 10, 28, 1))
    evaluate_checkpoints(0, 1, str(data), paths, str(tmp_path / "one.pt"), 0)
    mp.spawn(evaluate_checkpoints, args=(2, str(data), paths, str(tmp_path / "two.pt"), 29541), nprocs=2)
    one, two = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("one", "two"))
    assert one == two
    record = one["record"]
    assert {"test_acc", "train_acc", "agreement_ensemble", "kl_teacher_student", "nmi_st", "iou_st@0.4",
            "classifier_test_acc"} <= set(record)
    assert record["test_acc"] == record["classifier_test_acc"]
