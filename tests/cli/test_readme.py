"""Every `inf590k` command line shown in the README names a real command and real options."""

from __future__ import annotations

import re
import shlex

import click
import pytest

from cli import main
from tests.conftest import REPO_ROOT

README = REPO_ROOT / "README.md"


def readme_command_lines() -> list[str]:
    """`inf590k ...` invocations inside fenced code blocks, continuation lines joined."""
    text = README.read_text()
    lines: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip().replace("$(which inf590k)", "inf590k")
            start = line.find("inf590k ")
            if start >= 0 and not line.startswith(("import", "backbone", "features")):
                lines.append(line[start:].replace("[", "").replace("]", ""))
    return lines


def resolve(args: list[str]) -> tuple[click.Command, list[str]]:
    """The command an argument list reaches, and the arguments left for it."""
    ctx = click.Context(main)
    command: click.Command = main
    rest = list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.get_command(ctx, rest[0])
        assert sub is not None, f"README uses an unknown command: {rest[0]!r}"
        command, rest = sub, rest[1:]
    return command, rest


COMMAND_LINES = readme_command_lines()


def test_readme_shows_the_main_commands():
    used = {shlex.split(line)[1] for line in COMMAND_LINES}
    assert {"ingest", "build", "dedupe", "shard", "verify", "report", "pretrain", "export", "synth"} <= used


@pytest.mark.parametrize("line", COMMAND_LINES)
def test_readme_command_line_is_valid(line):
    args = shlex.split(line.replace("...", ""))[1:]
    command, rest = resolve(args)
    declared = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for token in rest:
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            assert flag in declared, f"{line!r}: {command.name} has no option {flag}"
