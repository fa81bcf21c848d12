"""A pytest plugin (``-p bench.cuda_selection``) that keeps only the tests skipped with "needs CUDA" elsewhere."""
from __future__ import annotations

MARK = "needs CUDA"


def needs_cuda(item) -> bool:
    """Whether `item` carries a skipif marker whose reason says it needs CUDA."""
    return any(MARK in str(marker.kwargs.get("reason", "")) for marker in item.iter_markers("skipif"))


def pytest_collection_modifyitems(config, items) -> None:
    """Deselect every collected test that does not need CUDA."""
    kept = [item for item in items if needs_cuda(item)]
    dropped = [item for item in items if not needs_cuda(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept
