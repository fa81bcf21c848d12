"""`rkd make-photo-tree`: an ImageNet-like JPEG tree from photos shipped in Python packages."""
from __future__ import annotations

from pathlib import Path

import click
from tqdm import tqdm

from pipelines.photo_tree import build_photo_tree

from .validate import WritableFolder


@click.command("make-photo-tree")
@click.argument("out", type=WritableFolder(Path))
@click.option("--classes", default=10, show_default=True, type=click.IntRange(1))
@click.option("--train-per-class", default=100, show_default=True, type=click.IntRange(1))
@click.option("--val-per-class", default=20, show_default=True, type=click.IntRange(1))
@click.option("--quality", default=90, show_default=True, type=click.IntRange(1, 100), help="JPEG quality.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0))
@click.option("--force", is_flag=True, help="Write into a non-empty folder.")
def make_photo_tree_command(out, classes, train_per_class, val_per_class, quality, seed, force) -> None:
    """Write OUT/{train,val}/class_XXX/*.jpg (ImageNet-sized JPEGs) for loader throughput work."""
    with tqdm(total=classes * (train_per_class + val_per_class), desc="writing JPEGs", disable=None) as bar:
        build_photo_tree(out, classes=classes, train_per_class=train_per_class, val_per_class=val_per_class,
                         quality=quality, seed=seed, force=force, progress=bar.update)
    click.echo(f"wrote {classes * (train_per_class + val_per_class)} JPEGs to {out}")
