"""Mid-epoch step checkpoints: a Trainer stopped after a step checkpoint and resumed in a fresh one ends with the
weights and metrics of an uninterrupted run, bit for bit (CPU), on a loader that follows the state_dict contract."""
from pathlib import Path

import pytest
import torch

from rkd.kd.ensemble import TeacherEnsemble
from rkd.kd.step import KDStep
from rkd.models import WithFeatures, create, unwrap
from rkd.train.checkpoint import load_checkpoint
from rkd.train.distributed import SINGLE_PROCESS, DistInfo
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


def make_trainer(path, stop_at=None, dist=SINGLE_PROCESS):
    """A distillation Trainer on 5 batches an epoch, 2 epochs, a step checkpoint every 3 steps; the step function
    dies at global step `stop_at` (as a SIGKILL would: nothing after the last checkpoint survives). Under `dist`
    each rank has its own batches, the student is wrapped in DDP and only rank 0 has the run directory."""
    generator = torch.Generator().manual_seed(5 + dist.rank)
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
    run = RunDir(path) if dist.is_main else None
    if run is not None:
        run.open({"test": 1}, resume=True)
    student = WithFeatures(create("resnet8", 10, 16, 1))
    if dist.world_size > 1:
        student = torch.nn.parallel.DistributedDataParallel(student)
    return Trainer(student, StatefulReplay(batches), step_fn,
                   lambda model, epoch: {"test_acc": float(unwrap(model).fc.weight.detach().sum())},
                   OptimConfig(epochs=2, lr=0.05, warmup_epochs=0.5), ModelInfo("resnet8", 10, 16, 1), "cpu", run,
                   progress=False, checkpoint_every=3, dist=dist), run


def whole_killed_resumed(root, stop_at, dist=SINGLE_PROCESS):
    """The three runs: uninterrupted, killed at `stop_at`, resumed; the run directories on rank 0."""
    whole, whole_run = make_trainer(root / "whole", dist=dist)
    whole.fit()
    victim, victim_run = make_trainer(root / "victim", stop_at=stop_at, dist=dist)
    with pytest.raises(Killed):
        victim.fit()
    if victim_run is not None:
        victim_run.close()
        saved = load_checkpoint(victim_run.last)["progress"]
        assert saved["steps"] == (stop_at - 1) // 3 * 3 % 5  # the last step checkpoint (every 3 of 5-step epochs)
        assert len(saved["loaders"]) == dist.world_size
    resumed, resumed_run = make_trainer(root / "victim", dist=dist)
    resumed.resume()
    resumed.fit()
    return whole_run, resumed_run


@pytest.mark.parametrize("stop_at", [5, 8])  # inside epoch 0 (checkpoint at step 3), inside epoch 1 (step 6)
def test_resume_from_a_step_checkpoint_is_bit_identical(tmp_path, stop_at):
    whole_run, resumed_run = whole_killed_resumed(tmp_path, stop_at)
    assert_same(whole_run, resumed_run)


def assert_same(whole_run, resumed_run):
    a, b = load_checkpoint(whole_run.last), load_checkpoint(resumed_run.last)
    assert a["epoch"] == b["epoch"] == 2 and "progress" not in b
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["optimizer"]["state"][0]["momentum_buffer"], b["optimizer"]["state"][0]["momentum_buffer"])
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in whole_run.read_metrics()]
    again = [{k: v for k, v in r.items() if k not in TIMING} for r in resumed_run.read_metrics()]
    assert again == strip
    assert [r["step"] for r in resumed_run.read_metrics("step")] == [2, 4, 6, 8, 10]


def two_process_runs(rank: int, root: str, port: int) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    whole_killed_resumed(Path(root), 8, DistInfo(rank, 2, rank))
    dist.destroy_process_group()


def test_two_processes_resume_from_a_step_checkpoint(tmp_path):
    """Under DDP (2 gloo processes) rank 0 writes every rank's loader position and hands the checkpoint to
    every rank on resume: the resumed run equals the uninterrupted one."""
    import torch.multiprocessing as mp

    mp.spawn(two_process_runs, args=(str(tmp_path), 29547), nprocs=2)
    saved = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    assert saved["epoch"] == 2
    assert_same(RunDir(tmp_path / "whole"), RunDir(tmp_path / "victim"))
