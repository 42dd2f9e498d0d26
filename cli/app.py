"""The `inf590k` group: its help, its error type and the commands built only when used."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import click


def package_version() -> str:
    try:
        return version("inf590k")
    except PackageNotFoundError:
        return "0+unknown"


class CliError(click.ClickException):
    """An error printed as one line, with what to do next, and exit status 1."""


class LazyGroup(click.Group):
    """A group whose heavy commands (they import torch) are built only when used."""

    lazy_builders: dict = {}  # name -> function building the command
    lazy_short_help: dict = {}  # name -> one line for the group's help, without building

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy_short_help and name not in self.commands:
                rows.append((name, self.lazy_short_help[name]))
            else:
                rows.append(
                    (name, self.get_command(ctx, name).get_short_help_str(formatter.width - 20))
                )
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy_builders])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy_builders and name not in self.commands:
            self.add_command(self.lazy_builders[name](), name)
        return super().get_command(ctx, name)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_version(), prog_name="inf590k")
def main() -> None:
    """Build the Inf-590K infrared pretraining corpus and pretrain DuGI-MAE on it.

    \b
    Dataset:   sources, synth, ingest, dedupe, bin, shard, build, verify, report, publish
    Model:     model-info, pretrain, visualize, export, publish-model, plot, probe, eval
    Both:      demo (the whole chain on synthetic data, no downloads)
    """
