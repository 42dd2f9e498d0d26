"""Model commands: model-info, pretrain, visualize, export, publish-model, plot, probe, eval.

Each imports `pretrain` (and so torch) only when it runs: `inf590k --help` and the dataset
commands do not pay for torch's import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cli.app import CliError, LazyGroup, main
from cli.dataset import HUB_ENDPOINT
from cli.options import DEVICE, THREADS, checked_device, opening_line, opt, options

# ----------------------------------------------------------------------------- pretrain


def click_option(option) -> click.Option:
    """The click option of one pretraining config field (`pretrain.config.cli_options`)."""
    help_text = option.help
    if option.default not in (None, ()):
        help_text += f"  [default: {option.default}]"
    if option.kind == "bool":
        return click.Option([f"{option.flag}/--no-{option.flag[2:]}"], default=None, help=help_text)
    if option.kind == "multiple":
        return click.Option([option.flag], multiple=True, help=help_text, required=option.required)
    types = {"int": int, "float": float, "str": str}
    return click.Option([option.flag], type=types[option.kind], default=None, help=help_text)


def build_pretrain_command() -> click.Command:
    from pretrain.config import cli_options  # torch: when the command runs

    def run(**options) -> None:
        from pretrain.config import config_from_options  # torch: when the command runs
        from pretrain.data import ShardUnreachableError  # torch: when the command runs
        from pretrain.runs import TrainingDiverged  # torch: when the command runs
        from pretrain.train import pretrain  # torch: when the command runs

        chosen = {k: v for k, v in options.items() if v is not None and v != ()}
        try:
            result = pretrain(config_from_options(chosen))
        except (ShardUnreachableError, TrainingDiverged, ValueError, FileNotFoundError) as err:
            raise CliError(str(err)) from err
        if result.is_main:
            click.echo(str(result))  # the run's one closing line

    return click.Command(
        "pretrain",
        callback=run,
        params=[click_option(option) for option in cli_options()],
        help="Pretrain DuGI-MAE (or an ablation) from shard URLs; the same command under "
        "`torchrun --nproc-per-node N $(which inf590k) pretrain ...` runs DDP.",
        short_help="Pretrain from shard URLs (1 GPU, many, or CPU).",
    )


LazyGroup.lazy_builders["pretrain"] = build_pretrain_command
LazyGroup.lazy_short_help["pretrain"] = "Pretrain from shard URLs (1 GPU, many, or CPU)."


# ----------------------------------------------------------------------------- inspect, export, publish


@main.command("model-info")
@click.argument("name")
@options(
    opt(
        "--img-size",
        "--image-size",
        "image_size",
        type=int,
        default=None,
        help="Square input size, px  [default: the model's pretraining size: 64 for *_tiny, "
        "224 otherwise]",
    ),
    opt(
        "--in-chans",
        default=1,
        show_default=True,
        type=click.Choice(["1", "3"]),
        help="Input channels (3: grey replicated, as the reference checkpoints).",
    ),
)
def model_info(name: str, image_size: int | None, in_chans: str) -> None:
    """Parameters and forward FLOPs per image of a named model, per part, at the size shown
    (GFLOPs, or MFLOPs for a model under one GFLOP).

    Names: mae_vit_base, infmae_base, dugi_mae_base, their _large and _tiny variants.
    """
    from pretrain.models import MODEL_NAMES, format_model_info  # torch: when the command runs
    from pretrain.models import model_info as describe  # torch: when the command runs

    if name not in MODEL_NAMES:
        raise CliError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODEL_NAMES))}")
    try:
        click.echo(format_model_info(describe(name, image_size, int(in_chans))))
    except ValueError as err:
        raise CliError(str(err)) from err


@main.command()
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@options(
    opt(
        "--image",
        "images",
        required=True,
        multiple=True,
        type=click.Path(exists=True, path_type=Path),
        help="An infrared image (any format ingest reads), or a folder of them. Repeatable: one "
        "row each, 8 rows at most (the first 8 images, folders in name order).",
    ),
    opt(
        "--out",
        required=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="PNG to write.",
    ),
    DEVICE,
    THREADS,
)
def visualize(
    checkpoint: Path, images: tuple[Path, ...], out: Path, device: str, threads: int | None
) -> None:
    """Reconstruction grid of a training checkpoint, one row per image: input | masked |
    reconstruction | reconstruction with the visible patches pasted."""
    from pretrain.threads import torch_threads  # torch: when the command runs
    from pretrain.visualize import MAX_ROWS, image_files, visualize_checkpoint  # torch: when run

    device = checked_device(device)
    opening = opening_line("visualize", device, 0, threads)  # its one line says it
    try:
        given = image_files(images)
        if len(given) > MAX_ROWS:  # say so rather than drop an image named on the command line
            click.echo(
                f"note: {len(given)} images given, the grid has {MAX_ROWS} rows: "
                f"{given[MAX_ROWS]} and {len(given) - MAX_ROWS - 1} more left out",
                err=True,
            )
        with torch_threads(0, threads):
            written = visualize_checkpoint(checkpoint, images, out, device)
    except (ValueError, OSError) as err:
        raise CliError(str(err)) from err
    click.echo(f"{opening}; wrote {written}")


@main.command()
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@options(
    opt(
        "--out",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Export folder.",
    ),
    opt(
        "--kind",
        type=click.Choice(["auto", "infmae", "convmae", "mae"]),
        default="auto",
        show_default=True,
        help="A released checkpoint's kind (auto: a training checkpoint of ours, or found from the keys).",
    ),
    opt(
        "--stage3",
        type=click.Choice(["fused", "raw"]),
        default="fused",
        show_default=True,
        help="F3 of hierarchical encoders: fused with stages 1-2 + final norm (as pretrained), or "
        "raw stage-3 blocks output (ConvMAE's downstream form).",
    ),
    opt(
        "--in-chans",
        type=click.Choice(["1", "3"]),
        default="1",
        show_default=True,
        help="Input channels of a released (3-channel) checkpoint's export.",
    ),
    opt(
        "--device",
        default="auto",
        show_default=True,
        help="Where a training checkpoint's model is rebuilt: auto, cpu, cuda (or gpu) or "
        "cuda:N (the weights are written from the CPU either way).",
    ),
    THREADS,
)
def export(
    checkpoint: Path,
    out: Path,
    kind: str,
    stage3: str,
    in_chans: str,
    device: str,
    threads: int | None,
) -> None:
    """Export a checkpoint's encoder: safetensors + timm config + model card.

    CHECKPOINT is a training checkpoint of `inf590k pretrain`, or a released InfMAE, ConvMAE or
    MAE pretraining checkpoint (.pth)."""
    from pretrain.threads import torch_threads  # torch: when the command runs

    device = checked_device(device)
    opening = opening_line("export", device, 0, threads)  # its one line says it
    try:
        with torch_threads(0, threads):
            folder = _export(checkpoint, out, kind, stage3, int(in_chans), device)
    except (ValueError, OSError) as err:
        raise CliError(str(err)) from err
    except (KeyError, RuntimeError) as err:  # a state dict that does not fit the model
        raise CliError(
            f"cannot read {checkpoint} ({type(err).__name__}: {str(err).splitlines()[0]}); pass a checkpoint of "
            "`inf590k pretrain` or a released InfMAE/ConvMAE/MAE .pth"
        ) from err
    click.echo(f"{opening}; wrote {folder}")


def _export(
    checkpoint: Path, out: Path, kind: str, stage3: str, in_chans: int, device: str
) -> Path:
    """A released checkpoint (by --kind or its keys) or one of `inf590k pretrain`."""
    from pretrain.checkpoint import export_checkpoint  # torch: when the command runs
    from pretrain.models.reference import export_reference, reference_state

    state = reference_state(checkpoint)  # read once: a released checkpoint is handed on
    if kind != "auto" or state is not None:
        return export_reference(
            checkpoint,
            out,
            None if kind == "auto" else kind,
            in_chans=in_chans,
            stage3=stage3,
            state=state,
        )
    return export_checkpoint(checkpoint, out, stage3, device)


class LegacyDryRunCommand(click.Command):
    """publish-model's `--dry-run DIR` of earlier releases, read as `--dry-run --stage DIR`
    with a line saying so: `--dry-run` is a flag, as for `publish`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, legacy_dry_run(args, self.params))


def legacy_dry_run(args: list[str], params: list[click.Parameter]) -> list[str]:
    """`--dry-run DIR` -> `--dry-run --stage DIR` when DIR is a second positional argument."""
    takes_value = {
        name for p in params if isinstance(p, click.Option) and not p.is_flag for name in p.opts
    }
    if any(a.startswith("--dry-run=") for a in args):  # `--dry-run=DIR`: the same old form
        args = [
            part
            for a in args
            for part in (["--dry-run", a.split("=", 1)[1]] if a.startswith("--dry-run=") else [a])
        ]
    positional, index, after_dry_run = [], 0, None
    while index < len(args):
        token = args[index]
        if token == "--":
            positional += [(i, False) for i in range(index + 1, len(args))]
            break
        if token in takes_value:
            index += 2
            continue
        if not token.startswith("-"):
            positional.append((index, index - 1 == after_dry_run))
        elif token == "--dry-run":
            after_dry_run = index
        index += 1
    legacy = [i for i, follows in positional if follows]
    if len(positional) < 2 or not legacy:
        return args
    click.echo(
        "note: `--dry-run DIR` is now `--dry-run --stage DIR` (--dry-run is a flag, as for "
        "`publish`); read it so",
        err=True,
    )
    return [*args[: legacy[0]], "--stage", *args[legacy[0] :]]


@main.command("publish-model", cls=LegacyDryRunCommand)
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@options(
    opt(
        "--repo",
        required=True,
        metavar="OWNER/NAME",
        help="Hugging Face model repo to create or update.",
    ),
    opt(
        "--dataset-repo",
        default=None,
        metavar="OWNER/NAME",
        help="Dataset repo it was pretrained on (linked from the card).",
    ),
    opt("--private", is_flag=True, help="Create the repo private."),
    opt(
        "--dry-run",
        is_flag=True,
        help="Stage weights, config and card (into --stage) and stop; upload nothing.",
    ),
    opt(
        "--stage",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        metavar="DIR",
        help="Staging folder (default: EXPORT_DIR-hub beside it).",
    ),
    *[HUB_ENDPOINT],
)
def publish_model(**values: Any) -> None:
    """Publish an exported encoder (safetensors + timm config) with a model card."""
    from pretrain.hub import ModelPublishConfig, PublishError  # torch: when the command runs
    from pretrain.hub import publish_model as run_publish_model  # torch: when the command runs

    try:  # the options are the config's fields, by name
        summary = run_publish_model(ModelPublishConfig(**values))
    except PublishError as err:
        raise CliError(str(err)) from err
    click.echo(str(summary))


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@options(
    opt(
        "--out",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="PNG to write (default: RUN/curves.png for one run, ablation.png for several).",
    ),
)
def plot(runs: tuple[Path, ...], out: Path | None) -> None:
    """Training and validation loss and lr of pretraining runs against steps, on one figure.

    RUNS are run folders (or their metrics.jsonl); several make an ablation figure, one colour
    per run, labelled with its folder, model and masking."""
    from pretrain.curves import CurvesError, plot_runs  # torch, matplotlib: when it runs

    target = out or (runs[0] / "curves.png" if len(runs) == 1 else Path("ablation.png"))
    try:
        written, notes = plot_runs(runs, target)
    except (CurvesError, OSError) as err:
        raise CliError(str(err)) from err
    for note in notes:
        click.echo(f"plot: {note}")
    click.echo(f"plot: wrote {written}")
