"""The options of dedupe, bin and shard (declared once: each stage's command and `build` take
them) and the configs made from their values.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cli.app import CliError
from cli.options import (
    execution,
    opt,
)
from inf590k.build.bins import BinConfig
from inf590k.build.dedupe.config import DedupeConfig
from inf590k.build.shard import ShardConfig
from inf590k.build.shard.plan import DEFAULT_SHARD_SAMPLES, PNG_BYTES_PER_PIXEL, parse_size
from inf590k.inputs.imageio import ImagePolicy

_POLICY = ImagePolicy()


def parse_edges(value: str, kind: type, name: str) -> tuple:
    try:
        edges = tuple(kind(x) for x in value.split(","))
    except ValueError as err:
        raise click.BadParameter(
            f"--{name} {value!r}: write increasing numbers separated by commas"
        ) from err
    if list(edges) != sorted(set(edges)):
        raise click.BadParameter(f"--{name} {value!r}: the edges must increase")
    return edges


DEDUPE_OPTIONS = [
    opt(
        "--radius",
        default=8,
        show_default=True,
        help="pHash Hamming distance up to which two images are near duplicates (see README).",
    ),
    opt(
        "--dhash-max",
        default=-1,
        show_default=True,
        help="Also require dHash distance <= this for a near pair (-1: off).",
    ),
    opt(
        "--against",
        multiple=True,
        type=click.Path(exists=True, path_type=Path),
        help="A build folder, a built dataset, or a folder of evaluation images: matches are "
        "dropped (incremental builds, decontamination). Repeatable.",
    ),
    opt(
        "--priority",
        multiple=True,
        metavar="SOURCE",
        help="Source ids kept first when resolutions tie, best first. Repeatable.",
    ),
    opt(
        "--contact-groups",
        default=12,
        show_default=True,
        help="Largest groups in the contact sheet (0: none).",
    ),
    opt(
        "--feature-model",
        type=click.Path(exists=True, path_type=Path),
        default=None,
        help="Also dedupe by embedding cosine similarity, with this exported encoder or released "
        "InfMAE/ConvMAE/MAE checkpoint (off by default).",
    ),
    opt(
        "--feature-threshold",
        default=0.85,
        show_default=True,
        help="Cosine similarity of feature duplicates.",
    ),
    opt("--feature-device", default="cpu", show_default=True, help="Device for --feature-model."),
]


BIN_OPTIONS = [
    opt(
        "--short-edges",
        default="256,384,512,768",
        show_default=True,
        help="Short-side class edges, px.",
    ),
    opt(
        "--aspect-edges",
        default="1.15,1.5,2.0",
        show_default=True,
        help="Aspect (long/short) class edges.",
    ),
]


def size_option(value: str | int) -> int:
    """--shard-bytes as bytes (`parse_size`), a usage error otherwise."""
    try:
        return parse_size(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


SHARD_OPTIONS = [
    opt(
        "--shard-samples",
        "--max-count",
        "max_count",
        default=DEFAULT_SHARD_SAMPLES,
        show_default=True,
        help="Target samples per shard: each bin is cut into the fewest shards within this "
        "and --shard-bytes; a smaller bin is one short shard.",
    ),
    opt(
        "--shard-bytes",
        "--max-size",
        "max_size",
        default="1GB",
        show_default=True,
        metavar="SIZE",
        callback=lambda ctx, param, value: size_option(value),
        help="Target bytes per shard (e.g. 1GB, 500MB, 2GiB), estimated from the rows: "
        f"{PNG_BYTES_PER_PIXEL} bytes per pixel for the PNG, the raw frame with --keep-16bit, "
        "~3 KB per sample for headers and JSON.",
    ),
    opt(
        "--shard-multiple",
        default=1,
        show_default=True,
        help="Make the shard count a multiple of this (e.g. GPUs x loader workers), the "
        "extra shards cut from the bins whose shards are longest.",
    ),
    opt(
        "--keep-16bit",
        is_flag=True,
        help="Also store the raw 16-bit frame of 16-bit files as a `.npy` member (the `.png` "
        "stays the 8-bit view every client reads).",
    ),
    opt(
        "--png-level",
        default=1,
        show_default=True,
        help="PNG zlib level (0-9): encoding dominates the build.",
    ),
    opt("--seed", default=0, show_default=True, help="Seed of the sample order inside each bin."),
    opt("--split", default="train", show_default=True, help="Split name in _info.json."),
    opt("--name", default="inf590k", show_default=True, help="Dataset name in _info.json."),
]


def dedupe_config(
    build,
    radius,
    dhash_max,
    against,
    priority,
    contact_groups,
    feature_model,
    feature_threshold,
    feature_device,
):

    return DedupeConfig(
        build=build,
        radius=radius,
        dhash_max=dhash_max,
        against=tuple(against),
        priority=tuple(priority),
        contact_groups=contact_groups,
        feature_model=feature_model,
        feature_threshold=feature_threshold,
        feature_device=feature_device,
        progress=sys.stderr.isatty(),  # as the execution options of the other stages
    )


def bin_config(build, short_edges, aspect_edges):

    return BinConfig(
        build=build,
        short_edges=parse_edges(short_edges, int, "short-edges"),
        aspect_edges=parse_edges(aspect_edges, float, "aspect-edges"),
        progress=sys.stderr.isatty(),
    )


def shard_config(
    build,
    out,
    workers,
    max_count,
    max_size,
    shard_multiple,
    keep_16bit,
    png_level,
    seed,
    split,
    name,
    executor="local",
    ray_address=None,
):
    return ShardConfig(
        build=build,
        out=out,
        max_count=max_count,
        max_size=max_size,
        shard_multiple=shard_multiple,
        keep_16bit=keep_16bit,
        png_level=png_level,
        seed=seed,
        split=split,
        name=name,
        execution=execution(workers, executor, ray_address),
    )


def feature_model_folder(model: Path, build_dir: Path) -> Path:
    """--feature-model as a timm folder: registers our encoders with timm (the dataset package
    does not import the model package) and converts a released checkpoint into an export."""
    try:
        from pretrain.models.reference import encoder_folder  # torch: when the command runs
    except ImportError as err:
        raise CliError(
            f"--feature-model needs the pretraining extras ({err}); install them"
        ) from err
    try:
        return Path(encoder_folder(model, build_dir / "feature-model"))
    except ValueError as err:
        raise CliError(str(err)) from err
