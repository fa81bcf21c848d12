"""The `rkd` command line. Bad input ends in one line on stderr and a non-zero exit, never a traceback."""
from __future__ import annotations

import re
import sys

import click

from .errors import ConfigError, RkdError
from .train import run_lock
from .commands.analyze import analyze_command
from .commands.convert import convert_command
from .commands.photos import make_jpeg_dataset_command, make_photo_tree_command
from .commands.sweep import sweep_command
from .commands.training import distill_command, train_teacher_command


# pipelines' errors name the library's parameters; on the command line the user knows them as these flags
# (regular expressions and their replacements).
_FLAGS_OF_PARAMETERS = ((r"^source: ", "--data: "), (r"force=True", "--force"),
                        (r"on_bad_file='skip'", "--on-bad-file skip"), (r"backend='ffcv'", "--loader ffcv"),
                        (r"convert_to_beton\(SOURCE, (.*?)\)", r"rkd convert SOURCE \1"),
                        (r"convert_to_beton with ", "rkd convert "), (r"write_mode ", "--write-mode "),
                        (r"max_resolution", "--max-resolution"), (r"jpeg_quality", "--jpeg-quality"),
                        (r"image_size[= ]", "--image-size "))


def in_flags(message: str) -> str:
    """A pipelines error message with its parameters named by the CLI's flags (`source` is --data)."""
    for parameter, flag in _FLAGS_OF_PARAMETERS:
        message = re.sub(parameter, flag, message)
    return message


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="rkd")
def cli() -> None:
    """Ensemble knowledge distillation with parameterized augmentation: train, distill, analyze, sweep."""


for command in (train_teacher_command, distill_command, analyze_command, sweep_command, convert_command,
                make_photo_tree_command, make_jpeg_dataset_command):
    cli.add_command(command)


def main(argv=None) -> None:
    """Entry point: runs the click group; usage errors and ConfigError become one line on stderr (exit 2).

    The run folders the command owned are released when it ends (a process that dies releases them too)."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted; a run can be continued with --resume", err=True)
        sys.exit(130)
    except click.ClickException as err:
        hint = ""
        if isinstance(err, click.UsageError) and err.ctx is not None:
            hint = f" (see {err.ctx.command_path} --help)"
        click.echo(f"error: {err.format_message()}{hint}", err=True)
        sys.exit(err.exit_code)
    except ConfigError as err:  # rkd's own errors already speak flags; only the libraries' are translated
        click.echo(f"error: {err if isinstance(err, RkdError) else in_flags(str(err))}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted; continue the run with --resume", err=True)
        sys.exit(130)
    finally:
        run_lock.release_all()
