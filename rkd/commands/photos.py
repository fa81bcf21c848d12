"""`rkd make-photo-tree` (photos shipped in Python packages, for throughput) and `rkd make-jpeg-dataset` (an array
dataset as a learnable JPEG tree): ImageNet-style class-folder trees written offline."""
from __future__ import annotations

from pathlib import Path

import click
from tqdm import tqdm

from pipelines import build_photo_tree, plan_jpeg_dataset, write_jpeg_dataset

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


@click.command("make-jpeg-dataset")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--source", default="fashion-mnist", show_default=True,
              help="An array dataset: 'fashion-mnist', or a Fashion-MNIST/MNIST IDX folder or CIFAR pickle folder.")
@click.option("--size", default=64, show_default=True, type=click.IntRange(8), help="Image side in pixels (RGB).")
@click.option("--train-per-class", default=None, type=click.IntRange(1), help="Train images per class [all].")
@click.option("--val-per-class", default=None, type=click.IntRange(1), help="Val images per class [all].")
@click.option("--quality", default=90, show_default=True, type=click.IntRange(1, 100), help="JPEG quality.")
@click.option("--seed", default=0, show_default=True, help="Seed of the per-class subset.")
@click.option("--force", is_flag=True, help="Write into a non-empty folder.")
def make_jpeg_dataset_command(out, source, size, train_per_class, val_per_class, quality, seed, force) -> None:
    """Write an array dataset as OUT/{train,val}/<NN_class>/*.jpg: a learnable ImageNet-format tree, offline."""
    plan = plan_jpeg_dataset(source, train_per_class=train_per_class, val_per_class=val_per_class, seed=seed)
    total = sum(len(indices) for _, _, indices in plan)
    with tqdm(total=total, desc="writing JPEGs", disable=None) as bar:
        write_jpeg_dataset(out, plan, size=size, quality=quality, force=force, progress=bar.update)
    click.echo(f"wrote {total} {size}x{size} JPEGs ({plan[0][1].num_classes} classes) to {out}")
