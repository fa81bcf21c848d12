"""Run benchmarks by name: ``python -m bench loaders augment``, ``python -m bench --all``, or one benchmark with
its own options: ``python -m bench loaders -- --backends torch,ffcv`` (the ``--`` may be left out:
``python -m bench gpu --dry-run``)."""
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
    split = argv.index("--") if "--" in argv else next(
        (i for i, arg in enumerate(argv) if arg.startswith("-") and arg != "--all"), len(argv))
    names, options = argv[:split], argv[split + (argv[split:split + 1] == ["--"]):]
    names = available() if names == ["--all"] else names
    if not names or (options and len(names) != 1):
        print(f"usage: python -m bench NAME... | --all | NAME -- OPTIONS   (available: {', '.join(available())})")
        return 2
    for name in names:
        if name not in available():
            print(f"unknown benchmark {name!r}: choose from {', '.join(available())}")
            return 2
        print(f"== bench {name}", flush=True)
        importlib.import_module(f"bench.bench_{name}").main(options)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
