"""Build commands: ingest, dedupe, bin, shard and build (the four in one), with their option
groups; the stages run in the library, and the card is written after `shard` and `build`.
"""

from __future__ import annotations

from pathlib import Path

import click

from cli.app import CliError, main
from cli.options import (
    BUILD_DIR,
    EXECUTOR_OPTIONS,
    WAIT,
    Opt,
    execution,
    manifest_option,
    opt,
    options,
    parse_source,
    pick,
    run_stage,
)
from cli.stage_options import (
    BIN_OPTIONS,
    DEDUPE_OPTIONS,
    SHARD_OPTIONS,
    bin_config,
    dedupe_config,
    feature_model_folder,
    shard_config,
)
from inf590k.build.bins import bin_catalog
from inf590k.build.catalog import read_sources
from inf590k.build.dedupe.stage import dedupe as run_dedupe
from inf590k.build.ingest import IngestConfig
from inf590k.build.ingest import ingest as run_ingest
from inf590k.build.pipeline import BuildConfig, run_build
from inf590k.build.shard import shard as run_shard
from inf590k.dataset.card import write_card
from inf590k.inputs.imageio import ImagePolicy
from inf590k.inputs.manifest import (
    FOLDER_FACTS_FILES,
    FOLDER_LICENSE,
    folder_source_id,
    renamed_folder_note,
)

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


def source_input_options(required: bool) -> list[Opt]:
    """--source ID=PATH (repeatable) and --manifest, as ingest and build take them."""
    source_help = (
        "A source id (see `sources list`; folder or folder:NAME for your own images) and its "
        "folder or archive. Repeatable."
    )
    return [
        opt("--source", "source_values", multiple=True, required=required, metavar="ID=PATH",
            help=source_help),  # fmt: skip
        manifest_option("Your own manifest YAML (adds or overrides a source id). Repeatable."),
    ]


SOURCE_FACT_OPTIONS = [
    opt(
        f"--source-{key}",
        f"source_{key}s",
        multiple=True,
        metavar="ID=TEXT",
        help=f"The {what} of folder source ID (as in --source folder:ID=PATH), for the card, "
        f"LICENSES.md and the weights' licence; over the {FOLDER_FACTS_FILES[0]} (or .json) file "
        "at the folder's root, if any. Repeatable.",
    )
    for key, what in (
        ("name", "display name"),
        ("license", "licence (an SPDX id such as CC-BY-4.0, or its text)"),
        ("citation", "citation"),
    )
]


def source_facts(source_names, source_licenses, source_citations) -> tuple[tuple[str, str, str], ...]:
    """--source-name/-license/-citation ID=TEXT as (id, key, text). ID may be written as in
    `--source folder:NAME=PATH` (NAME, or folder:NAME): my-cam means the source my_cam."""
    facts: dict[tuple[str, str], str] = {}
    for key, values in (("name", source_names), ("license", source_licenses), ("citation", source_citations)):
        for value in values:
            given, sep, text = value.partition("=")
            if not sep or not given or not text.strip():
                raise click.BadParameter(f"--source-{key} {value!r}: write ID=TEXT, e.g. vifb=CC-BY-4.0")
            source_id = folder_source_id("folder:" + given.removeprefix("folder:"))
            if (source_id, key) in facts:
                raise click.BadParameter(f"--source-{key} names {source_id} twice; give it once")
            facts[source_id, key] = text
    return tuple((source_id, key, text) for (source_id, key), text in facts.items())


def source_values_with_notes(values: tuple[str, ...]) -> tuple[tuple[str, Path], ...]:
    """--source values, with a note for each folder:NAME whose id is not NAME as typed."""
    parsed = tuple(parse_source(v) for v in values)
    for source_id, _ in parsed:
        note = renamed_folder_note(source_id)
        if note:
            click.echo(note, err=True)
    return parsed


def unlicensed_folder_notes(build: Path, sources: tuple[tuple[str, Path], ...]) -> list[str]:
    """A note per folder source of this run still without a licence of its own: the card,
    LICENSES.md and the weights will say "user-provided" until it is given."""
    recorded = read_sources(build)
    notes = []
    for given, _ in sources:
        source_id = folder_source_id(given)
        folder = given == "folder" or given.startswith("folder:")
        if folder and recorded.get(source_id, {}).get("license") == FOLDER_LICENSE:
            notes.append(
                f"note: folder source {source_id} states no licence (cards and weights say "
                f"{FOLDER_LICENSE!r}): put {FOLDER_FACTS_FILES[0]} at its root or give "
                f"--source-license {source_id}=SPDX-ID (README: your own images)"
            )
    return notes


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
    *source_input_options(required=False),
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
    *SOURCE_FACT_OPTIONS,
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
    **values,
) -> None:
    """Scan sources and catalogue every file (kept, excluded or rejected, with a reason)."""

    if not source_values and not drop_sources:
        raise click.UsageError(
            "give --source ID=PATH (repeatable), or --drop-source ID to shrink a build"
        )
    config = IngestConfig(
        sources=source_values_with_notes(source_values),
        build=build_dir,
        manifests=tuple(manifest_files),
        policy=make_policy(**pick(values, POLICY_OPTIONS)),
        drop_sources=tuple(drop_sources),
        execution=execution(workers, executor, ray_address),
        source_facts=source_facts(**pick(values, SOURCE_FACT_OPTIONS)),
    )
    summary = run_stage(run_ingest, config, wait)
    click.echo(str(summary))
    for note in unlicensed_folder_notes(build_dir, config.sources):
        click.echo(note, err=True)




















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
    *source_input_options(required=True),
    *SOURCE_FACT_OPTIONS,
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
            sources=source_values_with_notes(source_values),
            build=build_dir,
            manifests=tuple(manifest_files),
            policy=make_policy(**pick(options, POLICY_OPTIONS)),
            execution=execution(workers, executor, ray_address),
            source_facts=source_facts(**pick(options, SOURCE_FACT_OPTIONS)),
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
    for note in unlicensed_folder_notes(build_dir, config.ingest.sources):
        click.echo(note, err=True)
    click.echo(str(summary.dedupe))
    click.echo(str(summary.bins))
    click.echo(str(summary.shard))
    click.echo(str(summary))
