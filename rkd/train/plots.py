"""PNG plots of a run's per-epoch metrics."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _save(fig, out: Path) -> Path:
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _finish_axes(ax, xlabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_metrics(records: Sequence[dict], keys: Sequence[str], out: Path, title: str, x_key: str = "epoch") -> Path:
    """One line per metric key against epoch (counted from 1) or step; keys missing from the records are left out."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for key in keys:
        points = [(r[x_key] + (x_key == "epoch"), r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points), marker="o" if x_key == "epoch" else ".", label=key)
    ax.set_title(title)
    _finish_axes(ax, x_key if x_key == "epoch" else "training step")
    return _save(fig, out)


LOSS_PART_KEYS = ("train_loss", "train_ce", "train_kd")


def plot_loss_parts(records: Sequence[dict], out: Path) -> Path:
    """The training loss and its parts (epoch means): total, cross-entropy, distillation (when there is one)."""
    return plot_metrics(records, LOSS_PART_KEYS, out, "training loss = α·ce + (1−α)·kd (epoch means)"
                        if any("train_kd" in r for r in records) else "training loss (cross-entropy, epoch means)")


def plot_attention_grid(images: torch.Tensor, masks: torch.Tensor, names: Sequence[str], out: Path,
                        title: str) -> Path:
    """Rows of images (N, C, H, W) in [0, 1], each followed by every model's mask (M, N, H, W) overlaid in red."""
    count, models = images.shape[0], masks.shape[0]
    fig, axes = plt.subplots(count, models + 1, figsize=(1.6 * (models + 1), 1.6 * count), dpi=110, squeeze=False)
    for row in range(count):
        picture = images[row].permute(1, 2, 0).clamp(0, 1).cpu()
        picture = picture.expand(-1, -1, 3) if picture.shape[-1] == 1 else picture
        axes[row, 0].imshow(picture.numpy())
        for col in range(models):
            overlay = picture.clone()
            mask = masks[col, row].cpu().bool()
            overlay[mask] = 0.5 * overlay[mask] + 0.5 * torch.tensor([1.0, 0.0, 0.0])
            axes[row, col + 1].imshow(overlay.numpy())
        for col, name in enumerate(["image", *names]):
            if row == 0:
                axes[row, col].set_title(name, fontsize=7)
    for axis in axes.flat:
        axis.set_axis_off()
    fig.suptitle(title, fontsize=9)
    return _save(fig, out)


def plot_against_magnitude(rows: Sequence[dict], metric: str, out: Path) -> Path:
    """The metric's mean ± std over seeds against augmentation magnitude, one line per teacher set."""
    fig, ax = plt.subplots(figsize=(5.6, 3.8), dpi=110)
    for teachers in sorted({r["teachers"] for r in rows}):
        mine = [r for r in rows if r["teachers"] == teachers]
        ax.errorbar([r["magnitude"] for r in mine], [r[metric] for r in mine],
                    yerr=[r[f"{metric}_std"] for r in mine], marker="o", capsize=3, label=f"teachers: {teachers}")
    ax.set_ylabel(metric)
    _finish_axes(ax, "augmentation magnitude (bin of 31)")
    return _save(fig, out)
