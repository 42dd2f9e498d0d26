"""Build commands: ingest, dedupe, bin, shard and build (the four in one), with their option
groups; the stages run in the library, and the card is written after `shard` and `build`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cli.app import CliError, main
from cli.options import (
    BUILD_DIR,
    EXECUTOR_OPTIONS,
    WAIT,
    execution,
    opt,
    options,
    parse_source,
    pick,
    run_stage,
)
from inf590k.build.bins import BinConfig, bin_catalog
from inf590k.build.dedupe.config import DedupeConfig
from inf590k.build.dedupe.stage import dedupe as run_dedupe
from inf590k.build.ingest import IngestConfig
from inf590k.build.ingest import ingest as run_ingest
from inf590k.build.pipeline import BuildConfig, run_build
from inf590k.build.shard import ShardConfig
from inf590k.build.shard import shard as run_shard
from inf590k.dataset.card import write_card
from inf590k.inputs.imageio import ImagePolicy

_POLICY = ImagePolicy()


POLICY_OPTIONS = [
    opt(
        "--min-side",
        default=_POLICY.min_side,
        show_default=True,
        help="Reject images whose both sides are shorter (px).",
    ),
    opt(
        "--max-pixels",
        default=_POLICY.max_pixels,
        show_default=True,
        help="Reject files with more pixels (decompression bombs).",
    ),
    opt(
        "--max-file-mb",
        default=_POLICY.max_file_bytes >> 20,
        show_default=True,
        help="Reject files and archive members larger than this (MB) without reading them.",
    ),
    opt(
        "--grey-tolerance",
        default=_POLICY.grey_tolerance,
        show_default=True,
        help="Mean channel spread (8-bit levels) up to which a 3-channel file counts as grey IR.",
    ),
    opt(
        "--allow-colour",
        is_flag=True,
        help="Keep true-colour files (converted to grey) instead of rejecting them.",
    ),
    opt(
        "--stretch",
        default=f"{_POLICY.stretch_low:g},{_POLICY.stretch_high:g}",
        show_default=True,
        help="Percentiles LOW,HIGH of the 16-bit -> 8-bit stretch.",
    ),
    opt("--no-border-crop", is_flag=True, help="Keep zero-valued black borders."),
]


def make_policy(
    min_side, max_pixels, max_file_mb, grey_tolerance, allow_colour, stretch, no_border_crop
) -> ImagePolicy:
    try:
        low, high = (float(x) for x in stretch.split(","))
    except ValueError as err:
        raise click.BadParameter(
            f"--stretch {stretch!r}: write two percentiles, e.g. 1,99"
        ) from err
    if not 0 <= low < high <= 100:
        raise click.BadParameter(f"--stretch {stretch!r}: need 0 <= LOW < HIGH <= 100")
    if max_file_mb < 1:
        raise click.BadParameter(f"--max-file-mb {max_file_mb}: give at least 1")
    return ImagePolicy(
        stretch_low=low,
        stretch_high=high,
        min_side=min_side,
        max_pixels=max_pixels,
        max_file_bytes=max_file_mb << 20,
        grey_tolerance=grey_tolerance,
        allow_colour=allow_colour,
        crop_zero_borders=not no_border_crop,
    )


@main.command()
@options(
    opt(
        "--source",
        "source_values",
        multiple=True,
        metavar="ID=PATH",
        help="A source id (see `sources list`; folder or folder:NAME for your own images) and its folder or archive. Repeatable.",
    ),
    opt(
        "--manifest",
        "manifest_files",
        multiple=True,
        type=click.Path(exists=True, path_type=Path),
        help="Your own manifest YAML (adds or overrides a source id). Repeatable.",
    ),
    opt(
        "--build",
        "build_dir",
        required=True,
        type=click.Path(path_type=Path),
        help="Build directory (catalog goes to BUILD/catalog).",
    ),
    opt(
        "--drop-source",
        "drop_sources",
        multiple=True,
        metavar="ID",
        help="Remove a source an earlier run put in the build (its rows; later stages must re-run). Repeatable.",
    ),
    opt("--workers", default=0, show_default="one per core", help="Worker processes."),
    WAIT,
    *EXECUTOR_OPTIONS,
    *POLICY_OPTIONS,
)
def ingest(
    source_values,
    manifest_files,
    build_dir,
    drop_sources,
    workers,
    wait,
    executor,
    ray_address,
    **policy_values,
) -> None:
    """Scan sources and catalogue every file (kept, excluded or rejected, with a reason)."""

    if not source_values and not drop_sources:
        raise click.UsageError(
            "give --source ID=PATH (repeatable), or --drop-source ID to shrink a build"
        )
    config = IngestConfig(
        sources=tuple(parse_source(v) for v in source_values),
        build=build_dir,
        manifests=tuple(manifest_files),
        policy=make_policy(**policy_values),
        drop_sources=tuple(drop_sources),
        execution=execution(workers, executor, ray_address),
    )
    summary = run_stage(run_ingest, config, wait)
    click.echo(str(summary))


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


SHARD_OPTIONS = [
    opt("--max-count", default=10_000, show_default=True, help="Samples per shard at most."),
    opt(
        "--max-size",
        default=1_000_000_000,
        show_default=True,
        help="Bytes per shard at most (raw pixels + overhead: an upper bound of the tar).",
    ),
    opt(
        "--shard-multiple",
        default=1,
        show_default=True,
        help="Make the shard count a multiple of this (GPUs x loader workers), shards "
        "split evenly so every rank and worker gets the same share.",
    ),
    opt(
        "--min-shard-length",
        default=16,
        show_default=True,
        help="Shortest shard the balance may cut to: shards are kept within 2x of the "
        "smallest bin's unless that means shards under this length.",
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
    min_shard_length,
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
        min_shard_length=min_shard_length,
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


@main.command()
@options(
    BUILD_DIR,
    WAIT,
    *DEDUPE_OPTIONS,
)
def dedupe(build_dir, wait, **options) -> None:
    """Mark exact (pixel sha256) and near (pHash radius) duplicates, within and across sources."""

    if options["feature_model"] is not None:
        options["feature_model"] = feature_model_folder(options["feature_model"], build_dir)

    click.echo(str(run_stage(run_dedupe, dedupe_config(build_dir, **options), wait)))


@main.command("bin")
@options(
    BUILD_DIR,
    WAIT,
    *BIN_OPTIONS,
)
def bin_command(build_dir, wait, **options) -> None:
    """Put every kept image in a resolution bin (short side x aspect ratio)."""

    click.echo(str(run_stage(bin_catalog, bin_config(build_dir, **options), wait)))


@main.command()
@options(
    BUILD_DIR,
    opt(
        "--out",
        required=True,
        type=click.Path(path_type=Path),
        help="Dataset folder to write: new, empty, or one this command wrote before.",
    ),
    opt(
        "--workers",
        default=0,
        show_default="one per core",
        help="Processes writing shards (0: one per core).",
    ),
    WAIT,
    *EXECUTOR_OPTIONS,
    *SHARD_OPTIONS,
)
def shard(build_dir, out, workers, wait, **options) -> None:
    """Write the dataset folder: the Hugging Face repo layout (card, data/<bin>/*.tar, data/_info.json,
    metadata/), deterministic WebDataset shards, resumable."""
    summary = run_stage(run_shard, shard_config(build_dir, out, workers, **options), wait)
    write_dataset_card(out)
    click.echo(str(summary))


def write_dataset_card(out: Path) -> None:
    """The card (README.md, LICENSES.md) of a folder `shard` wrote: the dataset side's step."""

    try:
        write_card(out)
    except (ValueError, OSError) as err:
        raise CliError(f"writing the card of {out}: {err}") from err


@main.command()
@options(
    opt(
        "--source",
        "source_values",
        multiple=True,
        required=True,
        metavar="ID=PATH",
        help="A source id and its folder or archive (as for ingest). Repeatable.",
    ),
    opt(
        "--manifest",
        "manifest_files",
        multiple=True,
        type=click.Path(exists=True, path_type=Path),
        help="Your own manifest YAML. Repeatable.",
    ),
    BUILD_DIR,
    opt("--out", required=True, type=click.Path(path_type=Path), help="Dataset folder to write."),
    opt(
        "--workers",
        default=0,
        show_default="one per core",
        help="Worker processes of ingest and shard (the result is the same for any count).",
    ),
    WAIT,
    *EXECUTOR_OPTIONS,
    *POLICY_OPTIONS,
    *DEDUPE_OPTIONS,
    *BIN_OPTIONS,
    *SHARD_OPTIONS,
)
def build(
    source_values, manifest_files, build_dir, out, workers, wait, executor, ray_address, **options
) -> None:
    """Ingest -> dedupe -> bin -> shard in one command (each stage resumable; stages that are
    up to date are not re-run)."""

    config = BuildConfig(
        ingest=IngestConfig(
            sources=tuple(parse_source(v) for v in source_values),
            build=build_dir,
            manifests=tuple(manifest_files),
            policy=make_policy(**pick(options, POLICY_OPTIONS)),
            execution=execution(workers, executor, ray_address),
        ),
        out=out,
        dedupe=dedupe_config(build_dir, **pick(options, DEDUPE_OPTIONS)),
        bins=bin_config(build_dir, **pick(options, BIN_OPTIONS)),
        shard=shard_config(
            build_dir,
            out,
            workers,
            **pick(options, SHARD_OPTIONS),
            executor=executor,
            ray_address=ray_address,
        ),
    )
    summary = run_stage(run_build, config, wait)
    write_dataset_card(out)
    click.echo(str(summary.ingest))
    click.echo(str(summary.dedupe))
    click.echo(str(summary.bins))
    click.echo(str(summary.shard))
    click.echo(str(summary))
