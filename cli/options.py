"""The one way commands declare options: `opt(...)` specs (click.option's arguments) grouped
in lists, applied with `@options(...)`; a group shared by several commands (the build stages'
options, for `build`) is one list, and `pick` takes its values back out."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from cli.app import CliError
from inf590k.build.locks import lock_wait
from inf590k.execution.local import sigterm_as_interrupt
from inf590k.execution.units import ExecutionOptions
from inf590k.inputs.manifest import ManifestError


@dataclass(frozen=True)
class Opt:
    """click.option's arguments, to apply later."""

    decls: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The parameter's name, as click derives it."""
        named = [d for d in self.decls if not d.startswith("-")]
        if named:
            return named[0]
        flag = max((d.split("/")[0] for d in self.decls), key=lambda d: d.startswith("--"))
        return flag.lstrip("-").replace("-", "_")


def opt(*decls: str, **attrs: Any) -> Opt:
    return Opt(decls, attrs)


def manifest_option(help: str) -> Opt:
    """--manifest: the user's own manifest YAML files (repeatable)."""
    path = click.Path(exists=True, path_type=Path)
    return opt("--manifest", "manifest_files", multiple=True, type=path, help=help)


def options(*specs: Opt) -> Callable:
    """Apply option specs to a command, listed in the order given."""

    def decorate(command: Callable) -> Callable:
        for spec in reversed(specs):
            command = click.option(*spec.decls, **spec.attrs)(command)
        return command

    return decorate


def pick(values: dict, specs: list[Opt]) -> dict:
    """The values of the options that `specs` declares."""
    return {spec.name: values[spec.name] for spec in specs}


def parse_source(value: str) -> tuple[str, Path]:
    source_id, sep, path = value.partition("=")
    if not sep or not source_id or not path:
        raise click.BadParameter(
            f"{value!r}: write ID=PATH, e.g. llvip=/data/LLVIP or folder=./my_images"
        )
    return source_id, Path(path).expanduser()


def run_stage(func, config, wait: bool = False):
    """A library stage under the build lock's --wait choice and SIGTERM as Ctrl-C; its errors
    as one CliError line."""
    try:
        with lock_wait(wait), sigterm_as_interrupt():
            return func(config)
    except (ManifestError, KeyError, ValueError, FileNotFoundError, RuntimeError) as err:
        raise CliError(str(err).strip("'\"")) from err


def check_executor(ctx, param, value: str) -> str:
    """--executor ray without Ray installed: one line saying how to install it, before any work."""
    if value == "ray":
        from inf590k.execution.ray_cluster import RayMissing, import_ray  # Ray is optional

        try:
            import_ray()
        except RayMissing as err:
            raise CliError(str(err)) from err
    return value


def execution(
    workers: int, executor: str = "local", ray_address: str | None = None
) -> ExecutionOptions:
    """The execution options of a command: a progress bar when stderr is a terminal."""
    return ExecutionOptions(
        workers=workers, executor=executor, ray_address=ray_address, progress=sys.stderr.isatty()
    )


def checked_device(name: str) -> str:
    """The torch device `--device` names, checked before any work: a GPU asked for where
    there is none is one line, not torch's traceback."""
    from pretrain.distributed import DeviceError, pick_device  # torch: when the command runs

    try:
        return str(pick_device(name))
    except DeviceError as err:
        raise CliError(str(err)) from err


def opening_line(command: str, device: str, workers: int, threads: int | None) -> str:
    """`probe on cpu: 1 torch thread, 1 loader worker (2 usable cores)`: what the command's
    torch work will use (pretrain.threads' policy, which the library applies alike)."""
    from pretrain.threads import plan_threads  # torch: when the command runs

    try:
        return f"{command} on {device}: {plan_threads(workers, threads)}"
    except ValueError as err:
        raise CliError(str(err)) from err


# Every command that runs torch: its intra-op threads (pretrain's is a config field).
THREADS = opt(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Torch intra-op threads  [default: the cores this process may use (affinity, cgroup "
    "quota) less the loader workers, at least 1]",
)
DEVICE = opt(
    "--device", default="auto", show_default=True, help="auto, cpu, cuda (or gpu) or cuda:N."
)

WAIT = opt(
    "--wait",
    is_flag=True,
    help="If another command is using the build folder, wait for it instead of failing.",
)
BUILD_DIR = opt(
    "--build",
    "build_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Build directory (holds the catalog).",
)
# --executor and --ray-address (ingest, shard, build): the same results with either.
EXECUTOR_OPTIONS = [
    opt(
        "--executor",
        type=click.Choice(["local", "ray"]),
        default="local",
        show_default=True,
        callback=check_executor,
        help="Where work units run: a local process pool, or Ray (a cluster; sources and outputs on a "
        "filesystem every node sees).",
    ),
    opt(
        "--ray-address",
        envvar="RAY_ADDRESS",
        default=None,
        metavar="ADDRESS",
        help="Ray cluster of --executor ray (env RAY_ADDRESS); default: a Ray started for this command.",
    ),
]
