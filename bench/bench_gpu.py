"""The one prepared GPU check: every CUDA number rkd claims, in one command of at most 8 minutes on one H100/H200.

    python -m bench gpu                  # on the GPU machine, from the repository root (no install needed)
    python -m bench gpu -- --dry-run     # every part on the CPU at tiny sizes, in under a minute (a test runs it)

Parts, in order of importance (the results file is rewritten after each, so a run cut off still keeps the first):
  cuda_tests       pytest on every test skipped elsewhere with "needs CUDA" (a subprocess with a timeout)
  bandwidth        a large device-to-device copy, GB/s (read + write): the ceiling of the memory-bound parts
  augment          RandAugment(2, 9), AutoAugment, TrivialAugmentWide on uint8 224×224 batches of 256: ours
                   (batched, per image) vs torchvision v2 image by image on the same device, and vs the time
                   reading and writing the batch once takes at the measured bandwidth
  attention_iou    the Triton kernel vs the torch reference, and vs its bytes-moved bound
  ensemble         fused vs loop teacher ensemble: 3 × resnet18 at 224 (bf16, batch 256), 3 × resnet20 at 32
  distill          one distillation step, 2 × resnet50 → resnet18 at 224, bf16, channels_last: data in memory,
                   and through the torch loader decoding JPEGs on the GPU (images/s and the data-wait share)
  jpeg_decode      the torch loader's batched nvJPEG decode + crop (decode_device="cuda") vs per-image decoding
                   in CPU workers, on the same JPEG tree, images/s
  launch_overhead  CUDA graphs and torch.compile for the augmentation and for small teachers (resnet20 at 32);
                   measured only: no default changes without these numbers
  dali, ffcv       the same JPEG tree through those loaders, when their packages import (skipped otherwise)
Every timing synchronizes the device (bench.harness, rkd.train.timing). The dry run uses the CPU, tiny sizes, the
CUDA-test selection of one small file, Triton's interpreter and torch.compile's eager backend.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

REPO = Path(__file__).resolve().parent.parent
PARTS = ("cuda_tests", "bandwidth", "augment", "attention_iou", "ensemble", "distill", "jpeg_decode",
         "launch_overhead", "dali", "ffcv")


@dataclass(frozen=True)
class Sizes:
    """How big each part runs: the GPU check's sizes, or the dry run's."""

    augment_batch: int
    augment_size: int
    iou_maps: tuple            # (models, images, map side, output side)
    ensembles: tuple           # ((arch, image size, batch), ...) fused vs loop
    small_teacher: tuple       # (arch, image size, batch): launch overhead
    distill: tuple             # (student, teacher, teachers, classes >= the JPEG tree's 16, image size, batch)
    tree_images: int
    workers: int
    repeats: int
    cuda_test_files: Optional[tuple]   # None: every test file that mentions "needs CUDA"
    cuda_tests_timeout_s: int
    compile_backend: str
    start_parts_until_s: Optional[float]   # a part not started by then is skipped (the 8-minute budget)


GPU_SIZES = Sizes(256, 224, (3, 256, 7, 224), (("resnet18", 224, 256), ("resnet20", 32, 256)), ("resnet20", 32, 256),
                  ("resnet18", "resnet50", 2, 1000, 224, 256), 1024, min(16, os.cpu_count() or 1), 5, None, 150,
                  "inductor", 420)
DRY_SIZES = Sizes(4, 32, (2, 2, 7, 28), (("resnet8", 32, 4),), ("resnet8", 32, 4), ("resnet8", "resnet8", 2, 16, 32, 8),
                  16, 0, 1, ("tests/test_ensemble.py",), 120, "eager", None)


class Check:
    """The run's suite, its table rows and each part's status, saved after every part."""

    def __init__(self, suite, results_dir: Path, start_until_s: Optional[float] = None) -> None:
        self.suite, self.results_dir, self.start_until_s = suite, results_dir, start_until_s
        self.started = time.perf_counter()
        self.rows: list = []
        self.parts: dict = {}
        self.bandwidth: Optional[float] = None   # bytes/s, set by the bandwidth part
        self.suite.config["parts"] = self.parts

    def row(self, part: str, what: str, value: str, against: str = "") -> None:
        self.rows.append((part, what, value, against))

    def run(self, part: str, body: Callable[[], Optional[str]]) -> None:
        """Run one part; a failure is recorded (and shown) without stopping the later parts."""
        print(f"-- {part}", flush=True)
        start = time.perf_counter()
        late = self.start_until_s is not None and start - self.started > self.start_until_s
        try:
            skipped = f"not started: {start - self.started:.0f} s into the run (budget)" if late else body()
            self.parts[part] = f"skipped: {skipped}" if skipped else "done"
            if skipped:
                self.row(part, "skipped", skipped)
        except Exception as err:  # noqa: BLE001 - one broken part must not hide the others' numbers
            traceback.print_exc()
            self.parts[part] = f"failed: {type(err).__name__}: {err}"
            self.row(part, "FAILED", f"{type(err).__name__}: {err}"[:200])
        self.suite.results[f"{part}/part_seconds"] = {"seconds": time.perf_counter() - start}
        self.suite.save(self.results_dir)

    def table(self) -> str:
        lines = ["| part | measurement | value | against |", "| --- | --- | --- | --- |"]
        lines += [f"| {part} | {what} | {value} | {against} |" for part, what, value, against in self.rows]
        return "\n".join(lines)


def rate(result: dict) -> str:
    return f"{result['items_per_s']:,.0f} img/s"


def part_cuda_tests(check: Check, sizes: Sizes) -> Optional[str]:
    """pytest on the tests that need CUDA (bench.cuda_selection keeps only those), pass/fail/skip counts."""
    files = sizes.cuda_test_files or tuple(sorted(str(path.relative_to(REPO)) for path in (REPO / "tests").glob(
        "test_*.py") if "needs CUDA" in path.read_text()))
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "junit.xml"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "bench.cuda_selection", f"--junitxml={report}",
                   "-o", "cache_dir=" + str(Path(folder) / "cache"), *files]
        try:
            done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=sizes.cuda_tests_timeout_s)
        except subprocess.TimeoutExpired:
            check.suite.record("cuda_tests", timed_out_after_s=sizes.cuda_tests_timeout_s, files=list(files))
            check.row("cuda_tests", "pytest", f"timed out after {sizes.cuda_tests_timeout_s} s")
            return None
        if not report.exists():
            raise RuntimeError(f"pytest wrote no report (exit {done.returncode}): {done.stderr[-500:]}")
        suites = ElementTree.parse(report).getroot()
        suites = [suites] if suites.tag == "testsuite" else list(suites)
        counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
        failed = [f"{case.get('classname')}.{case.get('name')}" for s in suites for case in s.iter("testcase")
                  if case.find("failure") is not None or case.find("error") is not None]
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    check.suite.record("cuda_tests", passed=passed, **counts, failed_tests=failed, exit_code=done.returncode,
                       files=list(files), output_tail=done.stdout[-3000:] if failed else "")
    check.row("cuda_tests", f"{counts['tests']} tests needing CUDA",
              f"{passed} passed, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped",
              ", ".join(failed[:5]))
    return None


def part_bandwidth(check: Check, device: torch.device, dry: bool) -> Optional[str]:
    from bench.harness import copy_bandwidth
    bandwidth = copy_bandwidth(device, mib=8 if dry else 1024, repeats=3 if dry else 20)
    check.suite.record("bandwidth", copy_gb_s=bandwidth / 1e9)
    check.bandwidth = bandwidth
    check.row("bandwidth", "device-to-device copy (read + write)", f"{bandwidth / 1e9:,.1f} GB/s")
    return None


def part_augment(check: Check, device: torch.device, sizes: Sizes) -> Optional[str]:
    from bench.bench_augment import POLICIES, _batch, _ours, _torchvision_loop
    batch, size = sizes.augment_batch, sizes.augment_size
    images = _batch(batch, size, device)
    bound_s = 2 * images.numel() / check.bandwidth     # read the batch once, write it once
    for name, (ours, theirs) in POLICIES.items():
        mine = check.suite.measure(f"augment/{name}/ours", _ours(ours(), images), batch, repeats=sizes.repeats)
        base = check.suite.measure(f"augment/{name}/torchvision_per_image", _torchvision_loop(theirs(), images),
                                   batch, repeats=max(1, sizes.repeats // 2))
        ratio = check.suite.compare(f"augment/{name}/ours", f"augment/{name}/torchvision_per_image")
        check.suite.record(f"augment/{name}/bandwidth_bound", bound_s=bound_s, ours_s=mine["median_s"],
                           share_of_bound=bound_s / mine["median_s"])
        check.row("augment", f"{name}, batch {batch} of {size}²", rate(mine),
                  f"{ratio:.1f}× torchvision per image ({rate(base)}); {bound_s / mine['median_s']:.1%} of the "
                  f"copy-bandwidth bound")
    return None


def part_attention_iou(check: Check, device: torch.device, sizes: Sizes) -> Optional[str]:
    from bench.bench_attention_iou import bench_triton
    n_maps, batch, side, out = sizes.iou_maps
    maps = torch.randn(n_maps, batch, side, side, generator=torch.Generator().manual_seed(0))
    bench_triton(check.suite, maps, (out, out), torch.tensor([0.2, 0.4, 0.6]), device,
                 repeats=max(2, sizes.repeats * 4), bandwidth=check.bandwidth)
    results, prefix = check.suite.results, device.type
    bound = results[f"{prefix}/bytes_bound"]
    check.row("attention_iou", f"Triton, {n_maps} maps × {batch} images, {side}² → {out}²",
              rate(results[f"{prefix}/triton"]),
              f"{check.suite.ratios[f'{prefix}/triton vs {prefix}/torch_reference']:.1f}× the torch reference; "
              f"{bound['triton_over_bound']:.1f}× its bytes bound")
    return None


def part_ensemble(check: Check, device: torch.device, sizes: Sizes) -> Optional[str]:
    from bench.bench_ensemble import bench_config
    for arch, image_size, batch in sizes.ensembles:
        prefix = bench_config(check.suite, arch, image_size, batch, 3, device, sizes.repeats, compile=False,
                              skip=("vmap",))
        fused = check.suite.results[f"{prefix}/fused"]
        check.row("ensemble", f"3 × {arch} at {image_size}, batch {batch}, fused", rate(fused),
                  f"{check.suite.ratios[f'{prefix}/fused vs {prefix}/loop']:.2f}× the loop "
                  f"({rate(check.suite.results[f'{prefix}/loop'])})")
    return None


def photo_tree_source(images: int):
    from bench.bench_loaders import photo_tree
    from pipelines.sources import open_source
    return open_source(photo_tree(images), "train")


def part_distill(check: Check, device: torch.device, sizes: Sizes) -> Optional[str]:
    import pipelines
    from bench.bench_distill import InMemory, build_trainer
    student, teacher, count, classes, image_size, batch = sizes.distill
    shape = (classes, image_size, 3)
    loader = pipelines.build_loader("torch", photo_tree_source(sizes.tree_images), split="train", batch_size=batch,
                                    image_size=image_size, augment=pipelines.AugmentSpec("randaugment", magnitude=9),
                                    device=device, num_workers=sizes.workers, decode_device=device.type)
    labels = torch.randint(0, classes, (batch,), device=device)
    images = torch.randn(batch, 3, image_size, image_size, device=device).contiguous(memory_format=torch.channels_last)
    setting = f"2 × {teacher} → {student} at {image_size}, batch {batch}"
    for label, source in (("in_memory", InMemory(images, labels, len(loader))), ("torch_loader", loader)):
        trainer = build_trainer(source, device, 0, student, teacher, count, shape)
        epochs = []
        result = check.suite.measure(f"distill/{label}", lambda: epochs.append(trainer.train_epoch(len(epochs))),
                                     items=len(source) * batch, warmup=1, repeats=max(1, sizes.repeats // 2))
        share = sum(e["data_wait_share"] for e in epochs[1:]) / len(epochs[1:])
        check.suite.record(f"distill/{label}/data_wait", data_wait_share=share)
        what = ("data in memory" if label == "in_memory" else
                f"torch loader, decode_device={device.type}, RandAugment on the device")
        check.row("distill", f"{setting}, {what}", rate(result), f"data wait {share:.0%} of step time")
    return None


def loader_args(sizes: Sizes, device: torch.device) -> argparse.Namespace:
    """What bench_loaders.measure_loader needs."""
    return argparse.Namespace(batch_size=sizes.augment_batch, device=str(device), workers=sizes.workers,
                              repeats=max(1, sizes.repeats // 2))


def part_jpeg_decode(check: Check, device: torch.device, sizes: Sizes) -> Optional[str]:
    import pipelines
    from bench.bench_loaders import measure_loader
    source, args = photo_tree_source(sizes.tree_images), loader_args(sizes, device)
    labels = {"batched": f"jpeg/torch/decode_device={device.type}", "per_image": "jpeg/torch/per_image_in_workers"}
    for kind, label in labels.items():
        options = {"decode_device": device.type} if kind == "batched" else {}
        if measure_loader(check.suite, label, "torch", source, augment=pipelines.AugmentSpec(),
                          image_size=sizes.augment_size, args=args, options=options) is None:
            raise RuntimeError(f"{label}: {check.suite.results.get(f'{label}/failed', 'refused')}")
    ratio = check.suite.compare(labels["batched"], labels["per_image"])
    check.row("jpeg_decode", f"torch loader, decode_device={device.type}, {len(source)} JPEGs at "
              f"{sizes.augment_size}", rate(check.suite.results[labels["batched"]]),
              f"{ratio:.2f}× per-image decoding in {args.workers} workers")
    return None


def graphed(run: Callable[[torch.Tensor], object], example: torch.Tensor) -> Callable[[], object]:
    """`run` on a static copy of `example`, captured once in a CUDA graph; the returned callable replays it."""
    static = example.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            run(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = run(static)

    def replay():
        graph.replay()
        return output
    return replay


def part_launch_overhead(check: Check, device: torch.device, sizes: Sizes) -> Optional[str]:
    from bench.bench_augment import _batch
    from pipelines.augment import RandAugment
    from rkd.kd.ensemble import TeacherEnsemble
    from rkd.models import create
    from rkd.train.timing import DeviceClock
    suite, clock = check.suite, DeviceClock(device)
    arch, image_size, batch = sizes.small_teacher
    teachers = [create(arch, 10, image_size).to(device, memory_format=torch.channels_last).eval() for _ in range(3)]
    ensemble = TeacherEnsemble(teachers, fused=True)
    images = torch.randn(batch, 3, image_size, image_size, device=device).contiguous(memory_format=torch.channels_last)

    def teacher_run(x):
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda",
                                             cache_enabled=False):
            return ensemble.forward_with_features(x)

    policy = RandAugment(2, 9)
    augment_images = _batch(sizes.augment_batch, sizes.augment_size, device)

    def augment_run(x):
        return policy(x, torch.Generator(device=device).manual_seed(1))

    for name, run, example in (("teachers", teacher_run, images), ("randaugment", augment_run, augment_images)):
        items = example.shape[0]
        eager = suite.measure(f"launch/{name}/eager", lambda: run(example), items, repeats=sizes.repeats * 2)
        start = clock.now()
        compiled = torch.compile(run, backend=sizes.compile_backend)
        try:
            compiled(example)
            suite.record(f"launch/{name}/compile_first_call", seconds=clock.now() - start,
                         backend=sizes.compile_backend)
            fast = suite.measure(f"launch/{name}/compile", lambda: compiled(example), items, repeats=sizes.repeats * 2)
            compile_text = f"torch.compile ({sizes.compile_backend}) {fast['items_per_s'] / eager['items_per_s']:.2f}×"
        except Exception as err:  # noqa: BLE001 - a variant that cannot compile is a result, not a crash
            suite.record(f"launch/{name}/compile", failed=f"{type(err).__name__}: {str(err)[:300]}")
            compile_text = f"torch.compile failed ({type(err).__name__})"
        if device.type != "cuda":
            suite.record(f"launch/{name}/cuda_graph", skipped="CUDA graphs need a CUDA device")
            graph_text = "CUDA graph: needs CUDA"
        else:
            try:
                replay = graphed(run, example)
                fast = suite.measure(f"launch/{name}/cuda_graph", replay, items, repeats=sizes.repeats * 2)
                graph_text = f"CUDA graph {fast['items_per_s'] / eager['items_per_s']:.2f}×"
            except Exception as err:  # noqa: BLE001 - e.g. a host sync inside the region refuses capture
                suite.record(f"launch/{name}/cuda_graph", failed=f"{type(err).__name__}: {str(err)[:300]}")
                graph_text = f"CUDA graph capture failed ({type(err).__name__})"
        check.row("launch_overhead", f"{name} eager, batch {items}", rate(eager), f"{compile_text}; {graph_text}")
    return None


def part_other_loader(check: Check, backend: str, device: torch.device, sizes: Sizes) -> Optional[str]:
    """DALI or FFCV on the same JPEG tree, plain: skipped with the import error when the package is missing."""
    import pipelines
    from bench.bench_loaders import convert_once, measure_loader
    try:
        __import__(f"pipelines.{backend}.loader")
    except ImportError as err:
        return f"{backend} does not import ({err})"
    source, args = photo_tree_source(sizes.tree_images), loader_args(sizes, device)
    label = f"jpeg/{backend}/plain"
    if backend == "ffcv":
        convert_once(check.suite, label, source, {})
    if measure_loader(check.suite, label, backend, source, augment=pipelines.AugmentSpec(),
                      image_size=sizes.augment_size, args=args, options={}) is None:
        raise RuntimeError(f"{label}: {check.suite.results.get(f'{label}/failed', 'refused')}")
    check.row(backend, f"{len(source)} JPEGs at {sizes.augment_size}, no augmentation",
              rate(check.suite.results[label]))
    return None


def main(argv: list) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="every part on the CPU at tiny sizes (< 1 minute)")
    parser.add_argument("--results", type=Path, default=None, help="results folder [bench/results]")
    args = parser.parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")   # before anything imports triton
    elif not torch.cuda.is_available():
        print("bench gpu: skipped, no CUDA device here (python -m bench gpu --dry-run checks it on the CPU)")
        return
    from bench.harness import RESULTS_DIR, Suite
    device = torch.device("cpu" if args.dry_run else "cuda")
    sizes = DRY_SIZES if args.dry_run else GPU_SIZES
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    suite = Suite("gpu-dry-run" if args.dry_run else "gpu", device,
                  {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (dry run)",
                   "sizes": {k: v for k, v in vars(sizes).items()}})
    check = Check(suite, args.results or RESULTS_DIR, sizes.start_parts_until_s)
    parts = {
        "cuda_tests": lambda: part_cuda_tests(check, sizes),
        "bandwidth": lambda: part_bandwidth(check, device, args.dry_run),
        "augment": lambda: part_augment(check, device, sizes),
        "attention_iou": lambda: part_attention_iou(check, device, sizes),
        "ensemble": lambda: part_ensemble(check, device, sizes),
        "distill": lambda: part_distill(check, device, sizes),
        "jpeg_decode": lambda: part_jpeg_decode(check, device, sizes),
        "launch_overhead": lambda: part_launch_overhead(check, device, sizes),
        "dali": lambda: part_other_loader(check, "dali", device, sizes),
        "ffcv": lambda: part_other_loader(check, "ffcv", device, sizes),
    }
    for part in PARTS:
        check.run(part, parts[part])
    print(check.table(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
