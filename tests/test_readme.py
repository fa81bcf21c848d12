"""README.md and `--help` agree: every `rkd ...` command line README shows parses with the CLI's own click types."""
import re
import shlex
from pathlib import Path

import click
import pytest

from rkd.cli import cli
from rkd.commands.options import parse_loader_options

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_command_lines() -> list:
    """`rkd ...` lines of README's fenced code blocks, and its inline `rkd ... --flag ...` spans (a span without a
    flag names a command in prose; comments dropped)."""
    text = README.read_text()
    lines = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
        lines += [line.split(" #")[0].strip() for line in block.splitlines()]
    lines += re.findall(r"`(rkd [^`]* --[^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    lines += [f"rkd {line.split(' -m rkd ', 1)[1]}" for line in re.findall(r"`([^`]* -m rkd [^`]+)`", text)]
    return sorted({line for line in lines if line.startswith("rkd ")})


def parse(line: str) -> click.Context:
    """The click context of `line` (no command runs); README's `...` elisions are dropped and its `[optional]`
    parts taken."""
    name, *rest = [arg for arg in shlex.split(line.replace("[", "").replace("]", ""))[1:] if arg != "..."]
    group = click.Context(cli, info_name="rkd")
    command = cli.get_command(group, name)
    assert command is not None, f"README: unknown command rkd {name}"
    return command.make_context(name, rest, parent=group)


def test_readme_shows_command_lines():
    lines = readme_command_lines()
    assert len(lines) >= 20 and any("--loader-option" in line for line in lines)


@pytest.mark.parametrize("line", [line for line in readme_command_lines() if "--help" not in line])
def test_readme_command_line_parses(line):
    try:
        context = parse(line)
    except click.UsageError as err:
        pytest.fail(f"README line `{line}`: {err.format_message()}")
    entries = context.params.get("loader_options")
    if entries:
        parse_loader_options(context.params["loader_backend"], entries)


def test_a_flag_that_does_not_exist_fails_to_parse():
    """The check can fail: README's old `--augment-backend` flag is not one."""
    with pytest.raises(click.NoSuchOption):
        parse("rkd distill --loader dali --augment-backend torch")
    with pytest.raises(click.BadParameter):
        parse("rkd sweep --kd-loss paper")
