"""A small benchmark harness: warm-up, repeats, median throughput, peak memory, JSON per machine.

    suite = Suite("augment")
    suite.measure("ours/randaugment", run_once, items=128)          # run_once() processes `items` items
    suite.measure("torchvision/randaugment", baseline_once, items=128)
    suite.compare("ours/randaugment", "torchvision/randaugment")     # ratio, recorded and printed
    suite.save()                                                     # bench/results/<machine>.json
"""
from __future__ import annotations

import json
import os
import platform
import re
import resource
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from rkd.train.timing import DeviceClock

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_name() -> str:
    """A file-name-safe name for this machine: the GPU's name when CUDA is used, else CPU model and core count."""
    if torch.cuda.is_available():
        name = "cuda-" + torch.cuda.get_device_name(0)
    else:
        model = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1]
                    break
        except OSError:
            pass
        name = f"cpu-{os.cpu_count()}core-{model}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def peak_memory_mb(device: Optional[torch.device] = None) -> float:
    """Peak GPU memory allocated on `device` (CUDA) or this process's peak resident set size (CPU), in MiB."""
    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def copy_bandwidth(device: torch.device, mib: int = 256, repeats: int = 20) -> float:
    """Bytes per second of a large same-device copy (bytes read + bytes written): the memory roofline."""
    src = torch.randint(0, 256, (mib * 2**20,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    clock = DeviceClock(device)
    start = clock.now()
    for _ in range(repeats):
        dst.copy_(src)
    return 2 * src.numel() * repeats / (clock.now() - start)


class Suite:
    """One benchmark run: named measurements and their ratios, saved together under the machine's name."""

    def __init__(self, name: str, device: Optional[torch.device] = None, config: Optional[dict] = None) -> None:
        self.name, self.device, self.config = name, device, dict(config or {})
        self.results: dict = {}
        self.ratios: dict = {}

    def measure(self, label: str, run_once: Callable[[], object], items: int, *, warmup: int = 1,
                repeats: int = 5, extra: Optional[dict] = None) -> dict:
        """Time `run_once` (which processes `items` items) `repeats` times after `warmup` calls."""
        clock = DeviceClock(self.device)
        for _ in range(warmup):
            run_once()
        seconds = []
        for _ in range(repeats):
            start = clock.now()
            run_once()
            seconds.append(clock.now() - start)
        median = statistics.median(seconds)
        result = {"items_per_s": items / median, "median_s": median, "min_s": min(seconds), "max_s": max(seconds),
                  "items": items, "repeats": repeats, "warmup": warmup,
                  "peak_memory_mb": round(peak_memory_mb(self.device), 1), **(extra or {})}
        self.results[label] = result
        print(f"  {label:<48} {result['items_per_s']:>12,.1f} items/s   (median {median * 1e3:,.2f} ms)", flush=True)
        return result

    def record(self, label: str, **values) -> None:
        """Record a measurement taken by the caller (e.g. a one-off first-epoch compile time)."""
        self.results[label] = values
        print(f"  {label:<48} " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in values.items()), flush=True)

    def compare(self, ours: str, baseline: str) -> float:
        """Throughput ratio ours / baseline, both measured in this run."""
        ratio = self.results[ours]["items_per_s"] / self.results[baseline]["items_per_s"]
        self.ratios[f"{ours} vs {baseline}"] = ratio
        print(f"  ratio {ours} / {baseline}: {ratio:.2f}x", flush=True)
        return ratio

    def save(self, results_dir: Path = RESULTS_DIR) -> Path:
        """Merge this suite into bench/results/<machine>.json (other suites' entries are kept)."""
        results_dir.mkdir(parents=True, exist_ok=True)
        path = results_dir / f"{machine_name()}.json"
        everything = json.loads(path.read_text()) if path.exists() else {}
        everything[self.name] = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine_name(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "config": self.config,
            "results": self.results, "ratios": self.ratios,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(everything, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
        print(f"saved {self.name} -> {path}", flush=True)
        return path
