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
from cli.options import DEVICE, THREADS, Opt, checked_device, opening_line, opt, options

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


# ----------------------------------------------------------------------------- probe and eval

# Thin wrappers over pretrain.probe: options, one call, one echo.

PROBE_LAYOUTS = ["sirst", "irstd1k", "nudt", "msrs", "m3fd", "flir_adas_v2", "coco"]


PROBE_TASKS = ["detect", "segment", "small-target"]


def probe_schedule_options(steps: int, batch_size: int, head_dim: int) -> list[Opt]:
    """Options `probe` and `eval` share: schedule, input, head, data loading, device."""
    specs = [
        opt("--steps", default=steps, show_default=True, help="Fine-tuning steps."),
        opt(
            "--img-size",
            default=256,
            show_default=True,
            help="Segmentation: images resized to this square; detection: their longer side (multiple of 32).",
        ),
        opt("--batch-size", default=batch_size, show_default=True),
        opt("--lr", type=float, default=None, help="AdamW learning rate.  [default: 1e-3]"),
        opt(
            "--weight-decay",
            type=float,
            default=None,
            help="AdamW weight decay.  [default: 0.1 detection, 0.01 segmentation]",
        ),
        opt(
            "--head-dim",
            default=head_dim,
            show_default=True,
            help="Width of the segmentation head / the detector's FPN (box head: 4x).",
        ),
        opt(
            "--detail/--no-detail",
            default=False,
            show_default=True,
            help="Segmentation head's full-resolution branch on the input (it solves small targets whatever the encoder).",
        ),
        opt(
            "--threshold",
            default=0.5,
            show_default=True,
            help="Small targets: a pixel counts as a target where the head's predicted probability is above this (0-1).",
        ),
        opt(
            "--distance",
            default=3.0,
            show_default=True,
            help="Centroid distance (px) of a detected target.",
        ),
        opt(
            "--split",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="A split.json of an earlier run: the same train and test images.",
        ),
        opt(
            "--workers",
            default=0,
            show_default=True,
            help="Data-loader processes decoding detection images (torch threads: the cores left).",
        ),
        DEVICE,
        THREADS,
    ]

    return specs


@main.command()
@options(
    opt(
        "--encoder",
        required=True,
        help="An `inf590k export` folder, a released InfMAE/ConvMAE/MAE/UNIP checkpoint (.pth), or `scratch`.",
    ),
    opt(
        "--data",
        required=True,
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="The dataset folder in its own layout (SIRST, IRSTD-1k, NUDT-SIRST, MSRS, M3FD, FLIR ADAS v2, COCO JSON).",
    ),
    opt("--layout", required=True, type=click.Choice(PROBE_LAYOUTS)),
    opt(
        "--task",
        type=click.Choice(["auto", *PROBE_TASKS]),
        default="auto",
        show_default=True,
        help="detect (m3fd, flir_adas_v2, coco), segment (msrs) or small-target; auto: the layout's.",
    ),
    opt(
        "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run folder."
    ),
    opt(
        "--freeze/--no-freeze",
        default=False,
        show_default=True,
        help="Train the head only (the frozen-encoder arm).",
    ),
    opt(
        "--arch",
        default="dugi_mae_base",
        show_default=True,
        help="Architecture of --encoder scratch.",
    ),
    opt(
        "--baseline/--no-baseline",
        default=True,
        show_default=True,
        help="With an export: also train the same architecture from scratch, and print both rows.",
    ),
    opt("--seed", default=0, show_default=True),
    opt(
        "--num-heads",
        type=int,
        default=None,
        help="Attention heads of a released checkpoint whose file does not say them.",
    ),
    *probe_schedule_options(steps=500, batch_size=8, head_dim=64),
)
def probe(**options) -> None:
    """Fine-tune an encoder on an infrared task: small targets (IoU, nIoU, Pd, Fa), MSRS
    segmentation (mIoU, mAcc) or detection (COCO mAP, AP50, AP75, AP S/M/L, per class).

    With an export folder, the same architecture is also trained from scratch and both rows printed.
    """
    from pretrain.probe import ProbeConfig  # torch: when the command runs
    from pretrain.probe import probe as run_probe  # torch: when the command runs

    try:
        config = ProbeConfig(**options)
    except ValueError as err:
        raise CliError(str(err)) from err
    device = checked_device(config.device)
    click.echo(opening_line("probe", device, config.workers, config.threads))
    try:
        result = run_probe(config)
    except ValueError as err:
        raise CliError(str(err)) from err
    click.echo(str(result))


@main.command("eval")
@options(
    opt(
        "--encoder",
        "encoders",
        required=True,
        multiple=True,
        metavar="NAME=PATH",
        help="An encoder and its name: an export folder, a released InfMAE/ConvMAE/MAE/UNIP .pth, "
        "or scratch (scratch:ARCH for another architecture). Repeatable; `scratch` alone is the baseline.",
    ),
    opt("--task", required=True, type=click.Choice(PROBE_TASKS)),
    opt(
        "--data",
        required=True,
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="The dataset folder in its own layout.",
    ),
    opt(
        "--layout",
        type=click.Choice(PROBE_LAYOUTS),
        default=None,
        help="The data's layout  [default: m3fd (detect), msrs (segment), irstd1k (small-target)]",
    ),
    opt(
        "--out",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Results folder; a re-run skips its finished cells.",
    ),
    opt("--seeds", default=3, show_default=True, help="Seeds per encoder and arm (0, 1, ...)."),
    opt(
        "--arm",
        "arms",
        multiple=True,
        type=click.Choice(["finetune", "frozen"]),
        default=("finetune", "frozen"),
        show_default=True,
        help="Fine-tune the encoder, or freeze it (head only). Repeatable.",
    ),
    opt(
        "--split-seed",
        default=0,
        show_default=True,
        help="Seed of the split where the data has none.",
    ),
    opt(
        "--arch",
        default="dugi_mae_base",
        show_default=True,
        help="Architecture of scratch when no other encoder gives one.",
    ),
    opt(
        "--num-heads",
        "num_heads",
        multiple=True,
        metavar="NAME=N",
        help="Attention heads of a released checkpoint whose file does not say them. Repeatable.",
    ),
    *probe_schedule_options(steps=200, batch_size=4, head_dim=32),
)
def eval_command(encoders, num_heads, arms, **options) -> None:
    """Several encoders under one protocol (same split, schedule, input size and head), each
    fine-tuned and frozen over seeds: results.md / .json (mean ± std, paired difference to
    scratch) and results.png."""
    from pretrain.probe.compare import EvalConfig, parse_encoders, parse_heads, run_eval

    try:
        config = EvalConfig(
            encoders=parse_encoders(encoders),
            num_heads=parse_heads(num_heads),
            arms=tuple(dict.fromkeys(arms)),
            **options,
        )
        checked_device(config.device)  # before any work (its first line names the threads)
        result = run_eval(config, log=click.echo)
    except ValueError as err:
        raise CliError(str(err)) from err
    click.echo(str(result))
