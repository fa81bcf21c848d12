"""`rkd convert`: write one split of a data source to an FFCV .beton file (plus its .beton.json description)."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import ConfigError

from .validate import WritableFile


@click.command("convert")
@click.argument("source")
@click.argument("out", type=WritableFile(Path))
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "test", "val"]))
@click.option("--max-resolution", type=click.IntRange(1), default=None,
              help="Cap the longer image side (downscale only).  [default: keep]")
@click.option("--write-mode", default="auto", show_default=True,
              type=click.Choice(["auto", "jpg", "raw", "proportion"]), help="auto: raw for Fashion-MNIST/CIFAR arrays, jpg for JPEG trees.")
@click.option("--jpeg-quality", default=90, show_default=True, type=click.IntRange(1, 100))
@click.option("--compress-probability", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Share of images stored as JPEG in proportion mode.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Writer processes.  [default: all cores]")
@click.option("--force", is_flag=True, help="Overwrite OUT.")
def convert_command(source, out, split, max_resolution, write_mode, jpeg_quality, compress_probability, workers,
                    force) -> None:
    """Convert SOURCE (fashion-mnist, a dataset folder) to the FFCV file OUT (.beton) for --loader ffcv."""
    try:
        from pipelines.ffcv import convert_to_beton
    except ImportError as err:
        raise ConfigError(f"rkd convert needs the ffcv package ({err.name} is missing): pip install 'rkd[ffcv]' "
                          "(needs libturbojpeg0-dev, libopencv-dev, pkg-config; see `make setup`)") from None
    info = convert_to_beton(source, out, split=split, max_resolution=max_resolution,
                            write_mode=None if write_mode == "auto" else write_mode, jpeg_quality=jpeg_quality,
                            compress_probability=compress_probability, num_workers=workers, force=force)
    size_mb = out.stat().st_size / 2**20
    click.echo(f"wrote {info.num_samples} images ({info.name} {info.split}, {info.options['write_mode']}) "
               f"to {out} ({size_mb:.1f} MiB) and {out.name}.json")
