"""Downstream commands: `probe` (one encoder on one task, against its scratch copy) and `eval`
(several encoders under one protocol, side by side). Each imports `pretrain` only when it runs.
"""

from __future__ import annotations

from pathlib import Path

import click

from cli.app import CliError, main
from cli.options import DEVICE, THREADS, Opt, checked_device, opening_line, opt, options

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
