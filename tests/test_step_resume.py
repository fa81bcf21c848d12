"""Mid-epoch step checkpoints: a Trainer stopped after a step checkpoint and resumed in a fresh one ends with the
weights and metrics of an uninterrupted run, bit for bit (CPU), on a loader that follows the state_dict contract."""
import pytest
import torch

from rkd.kd.ensemble import TeacherEnsemble
from rkd.kd.step import KDStep
from rkd.models import WithFeatures, create
from rkd.train.checkpoint import load_checkpoint
from rkd.train.optim import OptimConfig
from rkd.train.runs import RunDir
from rkd.train.trainer import ModelInfo, Trainer

TIMING = ("images_per_s", "data_wait_share", "epoch_seconds")


class StatefulReplay:
    """Fixed batches per epoch (reshuffled by epoch) with the loader's resume contract: `state_dict()` is the
    position, and after `load_state_dict` the next iteration yields the rest of that epoch."""

    def __init__(self, batches):
        self.batches, self.epoch, self.position, self.resuming = batches, 0, 0, False

    def __len__(self):
        return len(self.batches)

    def set_epoch(self, epoch):
        if epoch != self.epoch:
            self.position, self.resuming = 0, False
        self.epoch = epoch

    def state_dict(self):
        return {"epoch": self.epoch, "batches_yielded": self.position}

    def load_state_dict(self, state):
        self.epoch, self.position, self.resuming = state["epoch"], state["batches_yielded"], True

    def __iter__(self):
        start = self.position if self.resuming else 0
        self.resuming = False
        order = torch.randperm(len(self.batches), generator=torch.Generator().manual_seed(self.epoch)).tolist()
        for index in range(start, len(order)):
            self.position = index + 1
            yield self.batches[order[index]]


class Killed(Exception):
    pass


def make_trainer(path, stop_at=None):
    """A distillation Trainer on 5 batches an epoch, 2 epochs, a step checkpoint every 3 steps; the step function
    dies at global step `stop_at` (as a SIGKILL would: nothing after the last checkpoint survives)."""
    generator = torch.Generator().manual_seed(5)
    batches = [(torch.randn(6, 1, 16, 16, generator=generator), torch.randint(0, 10, (6,), generator=generator))
               for _ in range(5)]
    torch.manual_seed(0)
    teachers = [create("resnet8", 10, 16, 1).eval() for _ in range(2)]
    step = KDStep(TeacherEnsemble(teachers), alpha=0.6, temperature=3.0, mode="per-teacher", metrics_every=2)

    def step_fn(model, images, labels, global_step):
        if global_step == stop_at:
            raise Killed
        return step(model, images, labels, global_step)

    torch.manual_seed(1)
    run = RunDir(path)
    run.open({"test": 1}, resume=True)
    return Trainer(WithFeatures(create("resnet8", 10, 16, 1)), StatefulReplay(batches), step_fn,
                   lambda model, epoch: {"test_acc": float(model.module.fc.weight.detach().sum())},
                   OptimConfig(epochs=2, lr=0.05, warmup_epochs=0.5), ModelInfo("resnet8", 10, 16, 1), "cpu", run,
                   progress=False, checkpoint_every=3), run


@pytest.mark.parametrize("stop_at", [5, 8])  # inside epoch 0 (checkpoint at step 3), inside epoch 1 (step 6)
def test_resume_from_a_step_checkpoint_is_bit_identical(tmp_path, stop_at):
    whole, whole_run = make_trainer(tmp_path / "whole")
    whole.fit()
    victim, victim_run = make_trainer(tmp_path / "victim", stop_at=stop_at)
    with pytest.raises(Killed):
        victim.fit()
    victim_run.close()
    saved = load_checkpoint(victim_run.last)
    assert saved["progress"]["steps"] == (3 if stop_at == 5 else 1)  # global steps 3 and 6 of 5-step epochs
    resumed, resumed_run = make_trainer(tmp_path / "victim")
    resumed.resume()
    resumed.fit()
    a, b = load_checkpoint(whole_run.last), load_checkpoint(resumed_run.last)
    assert a["epoch"] == b["epoch"] == 2 and "progress" not in b
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["optimizer"]["state"][0]["momentum_buffer"], b["optimizer"]["state"][0]["momentum_buffer"])
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in whole_run.read_metrics()]
    again = [{k: v for k, v in r.items() if k not in TIMING} for r in resumed_run.read_metrics()]
    assert again == strip
    assert [r["step"] for r in resumed_run.read_metrics("step")] == [2, 4, 6, 8, 10]
