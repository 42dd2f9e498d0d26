"""Dataset commands besides the build: sources, synth, verify, report, publish.

They import only the dataset side (no torch), so `inf590k --help` and the build stay light.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import click
import yaml

from cli.app import CliError, main
from cli.options import (
    execution,
    manifest_option,
    opt,
    options,
    run_stage,
)
from inf590k.dataset.publish import PublishConfig, PublishError
from inf590k.dataset.publish import publish as run_publish
from inf590k.dataset.report import ReportConfig
from inf590k.dataset.report import report as run_report
from inf590k.dataset.verify import VerifyConfig
from inf590k.dataset.verify import verify as run_verify
from inf590k.fsutil import plural
from inf590k.inputs.manifest import ManifestError, resolve_manifests
from inf590k.synth import SYNTH_LAYOUTS, SynthConfig, SynthError, synthesize

# ----------------------------------------------------------------------------- sources


@main.group()
def sources() -> None:
    """The public infrared sources the toolkit knows (one manifest each)."""


@sources.command("list")
@options(
    manifest_option(
        "Extra manifest YAML files to list too."
    ),
)
def sources_list(manifest_files: tuple[Path, ...]) -> None:
    """Table of sources: id, name, expected count, license, modality."""

    manifests = _load_manifests(manifest_files, resolve_manifests)
    rows = [("id", "name", "count", "license", "modality")]
    for m in sorted(manifests.values(), key=lambda m: m.id):
        count = "?" if m.expected_count is None else str(m.expected_count)
        rows.append((m.id, m.name, count, m.license, m.modality))
    widths = [min(max(len(r[i]) for r in rows), 42) for i in range(5)]
    for row in rows:
        click.echo("  ".join(fit(cell, widths[i]) for i, cell in enumerate(row)).rstrip())


def fit(cell: str, width: int) -> str:
    """The cell padded to `width`; a longer one is cut and ends with an ellipsis."""
    return cell.ljust(width) if len(cell) <= width else cell[: width - 1] + "…"


@sources.command("show")
@click.argument("source_id")
@options(
    manifest_option(
        "A manifest YAML file of your own (schema: manifests/README.md), so SOURCE_ID may "
        "be its id; it overrides a built-in manifest of the same id. Repeatable."
    ),
)
def sources_show(source_id: str, manifest_files: tuple[Path, ...]) -> None:
    """Everything a manifest says about one source."""
    manifests = _load_manifests(manifest_files, resolve_manifests)
    if source_id not in manifests:
        raise CliError(f"unknown source {source_id!r}; `inf590k sources list` shows the ids")
    described = asdict(manifests[source_id])
    for internal in ("path", "folder_source"):
        described.pop(internal, None)
    click.echo(yaml.safe_dump(described, sort_keys=False, allow_unicode=True).rstrip())


def _load_manifests(manifest_files, resolve):
    try:
        return resolve(tuple(manifest_files))
    except ManifestError as err:
        raise CliError(str(err)) from err


# ----------------------------------------------------------------------------- ingest


# ----------------------------------------------------------------------------- dedupe, bin, shard


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@options(
    opt(
        "--hashes-only", is_flag=True, help="Only re-hash the shards; do not re-read every sample."
    ),
    opt(
        "--workers",
        default=0,
        show_default="one per core",
        help="Processes checking shards (0: one per core).",
    ),
)
def verify(dataset: Path, hashes_only: bool, workers: int) -> None:
    """Check a dataset folder (or a downloaded copy): hashes, counts, sidecars, stray files, every
    sample against its row. Exit 1 on damage."""

    result = run_verify(
        VerifyConfig(dataset=dataset, decode=not hashes_only, execution=execution(workers))
    )
    if result.ok:
        click.echo(str(result))
        return
    for problem in result.problems:  # each once; the closing line only counts them
        click.echo(f"problem: {problem}", err=True)
    click.echo(f"verify: {plural(len(result.problems), 'problem')} in {dataset} (listed above)")
    sys.exit(1)


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@options(
    opt(
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Report folder (default: DATASET/metadata/report, and the card README.md is rewritten).",
    ),
    opt("--grid-samples", default=24, show_default=True, help="Images in the sample grid."),
    opt("--seed", default=0, show_default=True, help="Seed of the sample grid's picks."),
)
def report(dataset: Path, out: Path | None, grid_samples: int, seed: int) -> None:
    """Counts per source and reason, histograms, bins table, captioned sample grid; updates the card."""

    click.echo(
        str(
            run_stage(
                run_report,
                ReportConfig(dataset=dataset, out=out, grid_samples=grid_samples, seed=seed),
            )
        )
    )


# ----------------------------------------------------------------------------- publish

HUB_ENDPOINT = opt(
    "--endpoint", default=None, help="Hub URL (default: HF_ENDPOINT, else https://huggingface.co)."
)


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@options(
    opt(
        "--repo",
        required=True,
        metavar="OWNER/NAME",
        help="Hugging Face dataset repo to create or update.",
    ),
    opt(
        "--private",
        is_flag=True,
        help="Create the repo private (an existing repo keeps its visibility).",
    ),
    opt(
        "--dry-run",
        is_flag=True,
        help="Check the folder and say what would be uploaded; change nothing.",
    ),
    *[HUB_ENDPOINT],
)
def publish(dataset, repo, private, dry_run, endpoint) -> None:
    """Upload a dataset folder, as it is, to the Hugging Face Hub (it already is the repo layout).

    The token comes from HF_TOKEN or the cached login and is never printed; a re-run resumes.
    """

    config = PublishConfig(
        dataset=dataset, repo=repo, private=private, dry_run=dry_run, endpoint=endpoint
    )
    try:
        summary = run_publish(config)
    except (PublishError, FileNotFoundError) as err:
        raise CliError(str(err)) from err
    click.echo(str(summary))


# ----------------------------------------------------------------------------- synth


@main.command()
@options(
    opt(
        "--layout",
        required=True,
        help="The source whose folder layout is imitated (a manifest id; `inf590k sources show ID` "
        "describes it). 16-bit: PNG/TIFF layouts only.",
        type=click.Choice(
            sorted(SYNTH_LAYOUTS)
        ),
    ),
    opt(
        "--out",
        required=True,
        type=click.Path(path_type=Path),
        help="Folder to write the dataset tree into.",
    ),
    opt("--count", default=64, show_default=True, help="Infrared frames to render."),
    opt("--seed", default=0, show_default=True),
    opt(
        "--bit-depth",
        type=click.Choice(["8", "16"]),
        default="8",
        show_default=True,
        help="16: 14-bit data in uint16 PNG/TIFF (PNG/TIFF layouts only).",
    ),
    opt("--scale", default=1.0, show_default=True, help="Shrink every frame size by this factor."),
    opt("--width", type=int, default=None, help="Fixed IR frame width (with --height)."),
    opt("--height", type=int, default=None, help="Fixed IR frame height (with --width)."),
    opt("--workers", default=0, show_default="one per core"),
)
def synth(layout, out, count, seed, bit_depth, scale, width, height, workers) -> None:
    """Render synthetic infrared frames in a public dataset's folder layout.

    Visible halves, masks and labels are written too, so ingest's exclusion rules get exercised.
    Deterministic for a seed; no downloads.
    """

    try:
        summary = synthesize(
            SynthConfig(
                layout=layout,
                out=out,
                count=count,
                seed=seed,
                bit_depth=int(bit_depth),
                scale=scale,
                width=width,
                height=height,
                workers=workers,
            )
        )
    except SynthError as err:
        raise CliError(str(err)) from err
    click.echo(str(summary))
