"""Run benchmarks by name: ``python -m bench loaders augment`` or ``python -m bench --all``."""
from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list:
    """Benchmark modules: bench/bench_<name>.py, each with a main(argv) function."""
    here = Path(__file__).resolve().parent
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))


def main(argv: list) -> int:
    names = available() if argv[:1] == ["--all"] else argv
    if not names:
        print(f"usage: python -m bench NAME... | --all   (available: {', '.join(available())})")
        return 2
    for name in names:
        if name not in available():
            print(f"unknown benchmark {name!r}: choose from {', '.join(available())}")
            return 2
        print(f"== bench {name}", flush=True)
        importlib.import_module(f"bench.bench_{name}").main([])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
