"""The training step returns the loss with its parts; the Trainer records their epoch means and the online
measurements; a plot shows the parts."""
import json

import pytest
import torch
import torch.nn.functional as F

from rkd.kd.ensemble import TeacherEnsemble
from rkd.kd.losses import KD_MODES, ensemble_kd_loss, ensemble_kd_parts
from rkd.kd.step import KDStep
from rkd.kd.teachers import cross_entropy_step
from rkd.models import WithFeatures, create
from rkd.train.optim import OptimConfig
from rkd.train.plots import plot_loss_parts
from rkd.train.runs import RunDir
from rkd.train.trainer import ModelInfo, Trainer


@pytest.mark.parametrize("mode", KD_MODES)
def test_parts_add_up_to_the_loss(mode):
    torch.manual_seed(0)
    student, teachers, labels = torch.randn(8, 5, requires_grad=True), torch.randn(3, 8, 5), torch.randint(0, 5, (8,))
    parts = ensemble_kd_parts(student, teachers, labels, alpha=0.3, temperature=2.0, mode=mode)
    assert torch.equal(parts.loss, ensemble_kd_loss(student, teachers, labels, alpha=0.3, temperature=2.0,
                                                    mode=mode)), "the loss itself is unchanged"
    assert parts.loss.requires_grad and not parts.ce.requires_grad and not parts.kd.requires_grad
    assert parts.ce.item() == pytest.approx(F.cross_entropy(student, labels).item(), rel=1e-6)
    if mode == "per-teacher":  # torch's own KL, teacher by teacher
        kd = sum(F.kl_div(F.log_softmax(student / 2, -1), F.log_softmax(t / 2, -1), reduction="batchmean",
                          log_target=True) for t in teachers) / 3 * 4
        assert parts.kd.item() == pytest.approx(kd.item(), rel=1e-5)
    assert parts.loss.item() == pytest.approx(0.3 * parts.ce.item() + 0.7 * parts.kd.item(), rel=1e-5)


class Replay:
    """A loader of fixed batches."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def set_epoch(self, epoch):
        pass

    def __iter__(self):
        return iter(self.batches)


def tiny_batches(count=4, size=6):
    generator = torch.Generator().manual_seed(3)
    return [(torch.randn(size, 1, 16, 16, generator=generator), torch.randint(0, 10, (size,), generator=generator))
            for _ in range(count)]


def test_trainer_records_the_parts_and_the_measurements(tmp_path):
    torch.manual_seed(0)
    teachers = [create("resnet8", 10, 16, 1).eval() for _ in range(2)]
    step = KDStep(TeacherEnsemble(teachers), alpha=0.6, temperature=3.0, mode="per-teacher", metrics_every=3)
    seen = []

    def watched(model, images, labels, global_step):
        out = step(model, images, labels, global_step)
        seen.append((global_step, len(labels), {k: float(out[k].detach()) for k in ("loss", "ce", "kd")}))
        return out

    run = RunDir(tmp_path / "run")
    run.open({"test": 1}, resume=False)
    trainer = Trainer(WithFeatures(create("resnet8", 10, 16, 1)), Replay(tiny_batches()), watched,
                      lambda model, epoch: {"test_acc": 0.0}, OptimConfig(epochs=2, lr=0.01),
                      ModelInfo("resnet8", 10, 16, 1), "cpu", run, progress=False)
    records = trainer.fit()
    assert [s[0] for s in seen] == list(range(1, 9))
    for epoch, record in enumerate(records):
        mine = seen[4 * epoch:4 * epoch + 4]
        for part in ("loss", "ce", "kd"):
            mean = sum(n * values[part] for _, n, values in mine) / sum(n for _, n, _ in mine)
            assert record[f"train_{part}"] == pytest.approx(mean, rel=1e-5)
        assert record["train_loss"] == pytest.approx(0.6 * record["train_ce"] + 0.4 * record["train_kd"], rel=1e-5)
    steps = run.read_metrics("step")
    assert [(r["epoch"], r["step"]) for r in steps] == [(0, 3), (1, 6)]
    assert {"iou_tt@0.4", "iou_st@0.4", "batch_agreement_st"} <= set(steps[0])
    out = plot_loss_parts(records, run.plots / "loss.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_teacher_step_is_cross_entropy_only():
    torch.manual_seed(0)
    model = WithFeatures(create("resnet8", 10, 16, 1))
    images, labels = tiny_batches(1)[0]
    out = cross_entropy_step(model, images, labels, 1)
    assert set(out) == {"loss", "ce"} and torch.equal(out["loss"].detach(), out["ce"])
    assert torch.equal(out["loss"], F.cross_entropy(model.module(images), labels))


def test_distill_run_records_parts_and_plots_them(tmp_path, fmnist_dir):
    from rkd.cli import main
    common = ["--data", str(fmnist_dir), "--arch", "resnet8", "--epochs", "1", "--batch-size", "64",
              "--runs-dir", str(tmp_path), "--no-progress", "--device", "cpu"]
    main(["train-teacher", *common, "--name", "teacher"])
    teacher = tmp_path / "teacher"
    record = json.loads((teacher / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_loss"] == record["train_ce"] and "train_kd" not in record
    assert (teacher / "plots" / "loss.png").is_file()
    main(["distill", *common, "--name", "student", "--policy", "none", "--teachers", str(teacher)])
    epochs = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    epoch = [r for r in epochs if r["kind"] == "epoch"][-1]
    assert epoch["train_loss"] == pytest.approx(0.6 * epoch["train_ce"] + 0.4 * epoch["train_kd"], rel=1e-5)
    assert (tmp_path / "student" / "plots" / "loss.png").is_file()
