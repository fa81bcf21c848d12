"""Executors for a sweep's jobs: one after the other in this process, or as Ray tasks on a cluster.

An executor takes jobs (a function and its arguments, and the keys of the jobs it needs first) and yields an
`Outcome` each time one ends. Every job sets torch's thread count to the executor's `threads` before it runs, so a
job computes the same numbers whichever process runs it and whatever ran there before. A failed job is run once
more (`MAX_ATTEMPTS`); when it fails again, the jobs that need it are not run, and the others go on.
"""
from __future__ import annotations

import os
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from ..errors import RkdError

MAX_ATTEMPTS = 2
RAY_INSTALL_HINT = "pip install 'rkd[ray]'"
RAY_LOCAL_OBJECT_STORE_BYTES = 256 * 1024 ** 2   # jobs pass a few small dicts; the default takes 30% of memory


@dataclass(frozen=True)
class Job:
    """`function(*args)` once the jobs named in `after` have succeeded; `key` names it in outcomes."""

    key: str
    function: Callable
    args: tuple
    after: tuple = ()


@dataclass(frozen=True)
class Outcome:
    """How one attempt at a job ended: its result, or a one-line error (and whether it will be retried)."""

    key: str
    result: Any = None
    error: Optional[str] = None
    seconds: float = 0.0
    attempt: int = 1
    retrying: bool = False


def execute(function: Callable, args: tuple, threads: int) -> tuple:
    """(result, seconds) of `function(*args)` run with `threads` torch threads, in whatever process this is."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def one_line(error: BaseException) -> str:
    """The error's type and the first line of its message."""
    cause = getattr(error, "cause", None) or error   # a Ray task error carries the task's own exception
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0]}" if text else type(cause).__name__


def _check_reachable(address: str) -> None:
    """A one-line error now for a HOST:PORT nothing listens on (Ray itself would wait for minutes)."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return   # "auto", ray://... and the like: left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as error:
        raise RkdError(f"--ray-address {address}: nothing answers there ({error.strerror or error}); pass the "
                       "address of the cluster's head node (ray start --head prints it)") from None


class Executor:
    """Runs jobs in dependency order with one retry, inside `with executor:`; `slots` is how many run at once.
    Subclasses start a job and report the next one to end."""

    slots = 1

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise RkdError(f"--cpus-per-point must be at least 1, got {threads}")
        self.threads = threads

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def _has_room(self, running: int) -> bool:
        raise NotImplementedError

    def _start(self, job: Job) -> None:
        raise NotImplementedError

    def _next_ended(self) -> tuple:
        """(job, (result, seconds) or None, error or None) of the next job to end."""
        raise NotImplementedError

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        """Start jobs as their dependencies succeed (in the given order); yield an Outcome per attempt that ends."""
        unknown = sorted({key for job in jobs for key in job.after} - {job.key for job in jobs})
        if unknown:
            raise ValueError(f"jobs wait on jobs that are not given: {', '.join(unknown)}")
        pending, succeeded, failed, attempts, running = list(jobs), set(), set(), {}, 0
        while pending or running:
            for job in list(pending):
                blocked = next((key for key in job.after if key in failed), None)
                if blocked is not None:
                    pending.remove(job)
                    failed.add(job.key)
                    yield Outcome(job.key, error=f"not run: {blocked} failed", attempt=0)
                elif all(key in succeeded for key in job.after) and self._has_room(running):
                    pending.remove(job)
                    attempts[job.key] = 1
                    self._start(job)
                    running += 1
            if not running:
                if pending:
                    raise ValueError(f"jobs wait on each other: {', '.join(job.key for job in pending)}")
                continue
            job, ended, error = self._next_ended()
            running -= 1
            attempt = attempts[job.key]
            if error is None:
                succeeded.add(job.key)
                yield Outcome(job.key, result=ended[0], seconds=ended[1], attempt=attempt)
            elif attempt < MAX_ATTEMPTS:
                yield Outcome(job.key, error=one_line(error), attempt=attempt, retrying=True)   # before it restarts
                attempts[job.key] = attempt + 1
                self._start(job)
                running += 1
            else:
                failed.add(job.key)
                yield Outcome(job.key, error=one_line(error), attempt=attempt)


class SequentialExecutor(Executor):
    """One job at a time, in this process, in the order given."""

    def __init__(self, threads: int) -> None:
        super().__init__(threads)
        self._queue: deque = deque()

    def _has_room(self, running: int) -> bool:
        return running == 0

    def _start(self, job: Job) -> None:
        self._queue.append(job)

    def _next_ended(self) -> tuple:
        job = self._queue.popleft()
        try:
            return job, execute(job.function, job.args, self.threads), None
        except Exception as error:   # noqa: BLE001 - any failure of one job is reported; Ctrl-C still stops
            return job, None, error


class RayExecutor(Executor):
    """Each job is a Ray task asking for one GPU where the cluster has GPUs (and `use_gpus`), else for `threads`
    CPUs.

    Joins the cluster at `address`, or the Ray already initialized in this process, or starts a local instance
    with this machine's CPUs and GPUs that is shut down on exit. Every node must import rkd and see the sweep
    folder and the data at the same paths (a shared file system)."""

    def __init__(self, threads: int, address: Optional[str] = None, use_gpus: bool = True) -> None:
        super().__init__(threads)
        try:
            import ray
        except ImportError:
            raise RkdError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
        self._ray, self.address, self.use_gpus = ray, address, use_gpus
        self._remote, self._request = None, {}
        self._running: dict = {}
        self._started_here = False

    def __enter__(self) -> "RayExecutor":
        ray = self._ray
        if self.address:
            _check_reachable(self.address)
        if not ray.is_initialized():
            if self.address:
                try:
                    ray.init(address=self.address)
                except Exception as error:   # noqa: BLE001 - Ray raises several types for an unreachable cluster
                    raise RkdError(f"--ray-address {self.address}: cannot join the Ray cluster "
                                   f"({one_line(error)}); check the address and that the cluster runs") from None
            else:
                ray.init(num_cpus=len(os.sched_getaffinity(0)), num_gpus=torch.cuda.device_count(),
                         object_store_memory=RAY_LOCAL_OBJECT_STORE_BYTES, include_dashboard=False)
            self._started_here = True
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if self.use_gpus else 0
        largest_node = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]), default=0)
        if not gpus and largest_node < self.threads:
            self.__exit__()
            raise RkdError(f"--cpus-per-point {self.threads}: no node of the Ray cluster has that many CPUs "
                           f"(the largest has {largest_node:g}); pass --cpus-per-point {int(largest_node) or 1}")
        self._request = {"num_gpus": 1} if gpus else {"num_cpus": self.threads}
        self.slots = gpus or max(1, int(resources.get("CPU", 0) // self.threads))
        self._remote = ray.remote(execute)
        return self

    def __exit__(self, *exc) -> None:
        for ref in self._running:
            self._ray.cancel(ref, force=True)
        self._running.clear()
        if self._started_here:
            self._ray.shutdown()
            self._started_here = False

    def _has_room(self, running: int) -> bool:
        return True   # Ray queues what does not fit and runs it as resources free up

    def _start(self, job: Job) -> None:
        task = self._remote.options(name=job.key, max_retries=0, **self._request)   # retries are ours, as sequential
        self._running[task.remote(job.function, job.args, self.threads)] = job

    def _next_ended(self) -> tuple:
        (ref,), _ = self._ray.wait(list(self._running), num_returns=1)
        job = self._running.pop(ref)
        try:
            return job, self._ray.get(ref), None
        except Exception as error:   # noqa: BLE001 - a task's exception, a worker crash or an OOM kill
            return job, None, error


EXECUTORS = {"sequential": SequentialExecutor, "ray": RayExecutor}


def make_executor(name: str, threads: int, ray_address: Optional[str] = None, use_gpus: bool = True) -> Executor:
    """The executor called `name` (see EXECUTORS), to be entered (`with`) around its runs; the rest is Ray's."""
    if name == "ray":
        return RayExecutor(threads, ray_address, use_gpus)
    if ray_address:
        raise RkdError("--ray-address joins a Ray cluster: use it with --executor ray")
    return SequentialExecutor(threads)
