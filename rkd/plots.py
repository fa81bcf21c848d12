"""PNG plots of a run's per-epoch metrics."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_epoch_metrics(records: Sequence[dict], keys: Sequence[str], out: Path, title: str) -> Path:
    """One line per metric key against epoch; keys missing from the records are left out."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for key in keys:
        points = [(r["epoch"] + 1, r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points), marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
