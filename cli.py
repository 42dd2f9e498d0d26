"""`inf590k`: build the Inf-590K infrared corpus and pretrain DuGI-MAE on it.

Thin on purpose: parse options, build the library's config dataclasses, call, print the
one-line summary. This is the only module that knows both `inf590k` and `pretrain`.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import click

from inf590k.execution.units import ExecutionOptions
from inf590k.inputs.imageio import ImagePolicy
from inf590k.inputs.manifest import ManifestError


def package_version() -> str:
    try:
        return version("inf590k")
    except PackageNotFoundError:
        return "0+unknown"


def parse_source(value: str) -> tuple[str, Path]:
    source_id, sep, path = value.partition("=")
    if not sep or not source_id or not path:
        raise click.BadParameter(f"{value!r}: write ID=PATH, e.g. llvip=/data/LLVIP or folder=./my_images")
    return source_id, Path(path).expanduser()


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
                rows.append((name, self.get_command(ctx, name).get_short_help_str(formatter.width - 20)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy_builders])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy_builders and name not in self.commands:
            self.add_command(self.lazy_builders[name](), name)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_version(), prog_name="inf590k")
def main() -> None:
    """Build the Inf-590K infrared pretraining corpus and pretrain DuGI-MAE on it.

    \b
    Dataset:   sources, synth, ingest, dedupe, bin, shard, build, verify, report, publish
    Model:     model-info, pretrain, visualize, export, publish-model, probe, eval
    """


# ----------------------------------------------------------------------------- sources


@main.group()
def sources() -> None:
    """The public infrared sources the toolkit knows (one manifest each)."""


@sources.command("list")
@click.option("--manifest", "manifest_files", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Extra manifest YAML files to list too.")
def sources_list(manifest_files: tuple[Path, ...]) -> None:
    """Table of sources: id, name, expected count, license, modality."""
    from inf590k.inputs.manifest import resolve_manifests

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
@click.option("--manifest", "manifest_files", multiple=True, type=click.Path(exists=True, path_type=Path))
def sources_show(source_id: str, manifest_files: tuple[Path, ...]) -> None:
    """Everything a manifest says about one source."""
    from dataclasses import asdict

    import yaml

    from inf590k.inputs.manifest import resolve_manifests

    manifests = _load_manifests(manifest_files, resolve_manifests)
    if source_id not in manifests:
        raise CliError(f"unknown source {source_id!r}; `inf590k sources list` shows the ids")
    described = asdict(manifests[source_id])
    described.pop("path", None)
    click.echo(yaml.safe_dump(described, sort_keys=False, allow_unicode=True).rstrip())


def _load_manifests(manifest_files, resolve):
    try:
        return resolve(tuple(manifest_files))
    except ManifestError as err:
        raise CliError(str(err)) from err


# ----------------------------------------------------------------------------- ingest


def apply_options(specs: list[tuple[str, dict]]):
    """Declare options from (flag, click.option keyword arguments) specs."""
    def decorate(func):
        for flag, kwargs in reversed(specs):
            func = click.option(flag, **kwargs)(func)
        return func

    return decorate


def pick(options: dict, specs: list[tuple[str, dict]]) -> dict:
    """The values of the options that `specs` declares."""
    names = [flag.lstrip("-").replace("-", "_") for flag, _ in specs]
    return {name: options[name] for name in names}


_POLICY = ImagePolicy()
POLICY_OPTIONS = [
    ("--min-side", dict(default=_POLICY.min_side, show_default=True,
                        help="Reject images whose both sides are shorter (px).")),
    ("--max-pixels", dict(default=_POLICY.max_pixels, show_default=True,
                          help="Reject files with more pixels (decompression bombs).")),
    ("--max-file-mb", dict(default=_POLICY.max_file_bytes >> 20, show_default=True,
                           help="Reject files and archive members larger than this (MB) without reading them.")),
    ("--grey-tolerance", dict(default=_POLICY.grey_tolerance, show_default=True,
                              help="Mean channel spread (8-bit levels) up to which a 3-channel file counts as grey IR.")),
    ("--allow-colour", dict(is_flag=True, help="Keep true-colour files (converted to grey) instead of rejecting them.")),
    ("--stretch", dict(default=f"{_POLICY.stretch_low:g},{_POLICY.stretch_high:g}", show_default=True,
                       help="Percentiles LOW,HIGH of the 16-bit -> 8-bit stretch.")),
    ("--no-border-crop", dict(is_flag=True, help="Keep zero-valued black borders.")),
]
policy_options = apply_options(POLICY_OPTIONS)  # shared by ingest and build


def make_policy(min_side, max_pixels, max_file_mb, grey_tolerance, allow_colour, stretch,
                no_border_crop) -> ImagePolicy:
    try:
        low, high = (float(x) for x in stretch.split(","))
    except ValueError as err:
        raise click.BadParameter(f"--stretch {stretch!r}: write two percentiles, e.g. 1,99") from err
    if not 0 <= low < high <= 100:
        raise click.BadParameter(f"--stretch {stretch!r}: need 0 <= LOW < HIGH <= 100")
    if max_file_mb < 1:
        raise click.BadParameter(f"--max-file-mb {max_file_mb}: give at least 1")
    return ImagePolicy(stretch_low=low, stretch_high=high, min_side=min_side, max_pixels=max_pixels,
                       max_file_bytes=max_file_mb << 20, grey_tolerance=grey_tolerance, allow_colour=allow_colour,
                       crop_zero_borders=not no_border_crop)


WAIT_OPTION = click.option("--wait", is_flag=True,
                           help="If another command is using the build folder, wait for it instead of failing.")


def check_executor(ctx, param, value: str) -> str:
    """--executor ray without Ray installed: one line saying how to install it, before any work."""
    if value == "ray":
        from inf590k.execution.ray_cluster import RayMissing, import_ray

        try:
            import_ray()
        except RayMissing as err:
            raise CliError(str(err)) from err
    return value


def executor_options(command):
    """--executor and --ray-address (ingest, shard, build): the same results with either."""
    command = click.option("--ray-address", envvar="RAY_ADDRESS", default=None, metavar="ADDRESS",
                           help="Ray cluster of --executor ray (env RAY_ADDRESS); default: a Ray "
                                "started for this command.")(command)
    return click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                        callback=check_executor,
                        help="Where work units run: a local process pool, or Ray (a cluster; "
                             "sources and outputs on a filesystem every node sees).")(command)


@main.command()
@click.option("--source", "source_values", multiple=True, metavar="ID=PATH",
              help="A source id (see `sources list`; folder or folder:NAME for your own images) and its folder or archive. Repeatable.")
@click.option("--manifest", "manifest_files", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Your own manifest YAML (adds or overrides a source id). Repeatable.")
@click.option("--build", "build_dir", required=True, type=click.Path(path_type=Path), help="Build directory (catalog goes to BUILD/catalog).")
@click.option("--drop-source", "drop_sources", multiple=True, metavar="ID",
              help="Remove a source an earlier run put in the build (its rows; later stages must re-run). Repeatable.")
@click.option("--workers", default=0, show_default="one per core", help="Worker processes.")
@WAIT_OPTION
@executor_options
@policy_options
def ingest(source_values, manifest_files, build_dir, drop_sources, workers, wait, executor, ray_address,
           **policy_values) -> None:
    """Scan sources and catalogue every file (kept, excluded or rejected, with a reason)."""
    from inf590k.build.ingest import IngestConfig
    from inf590k.build.ingest import ingest as run_ingest

    if not source_values and not drop_sources:
        raise click.UsageError("give --source ID=PATH (repeatable), or --drop-source ID to shrink a build")
    config = IngestConfig(sources=tuple(parse_source(v) for v in source_values), build=build_dir, manifests=tuple(manifest_files), policy=make_policy(**policy_values), drop_sources=tuple(drop_sources), execution=ExecutionOptions(workers=workers, progress=sys.stderr.isatty(), executor=executor, ray_address=ray_address))
    summary = run_stage(run_ingest, config, wait)
    click.echo(str(summary))


# ----------------------------------------------------------------------------- dedupe, bin, shard


def parse_edges(value: str, kind: type, name: str) -> tuple:
    try:
        edges = tuple(kind(x) for x in value.split(","))
    except ValueError as err:
        raise click.BadParameter(f"--{name} {value!r}: write increasing numbers separated by commas") from err
    if list(edges) != sorted(set(edges)):
        raise click.BadParameter(f"--{name} {value!r}: the edges must increase")
    return edges


DEDUPE_OPTIONS = [
    ("--radius", dict(default=8, show_default=True,
                 help="pHash Hamming distance up to which two images are near duplicates (see README).")),
    ("--dhash-max", dict(default=-1, show_default=True,
                 help="Also require dHash distance <= this for a near pair (-1: off).")),
    ("--against", dict(multiple=True, type=click.Path(exists=True, path_type=Path),
                 help="A build folder, a built dataset, or a folder of evaluation images: matches are "
                      "dropped (incremental builds, decontamination). Repeatable.")),
    ("--priority", dict(multiple=True, metavar="SOURCE",
                 help="Source ids kept first when resolutions tie, best first. Repeatable.")),
    ("--contact-groups", dict(default=12, show_default=True, help="Largest groups in the contact sheet (0: none).")),
    ("--feature-model", dict(type=click.Path(exists=True, path_type=Path), default=None,
                 help="Also dedupe by embedding cosine similarity, with this exported encoder or released "
                      "InfMAE/ConvMAE/MAE checkpoint (off by default).")),
    ("--feature-threshold", dict(default=0.85, show_default=True, help="Cosine similarity of feature duplicates.")),
    ("--feature-device", dict(default="cpu", show_default=True, help="Device for --feature-model.")),
]
BIN_OPTIONS = [
    ("--short-edges", dict(default="256,384,512,768", show_default=True, help="Short-side class edges, px.")),
    ("--aspect-edges", dict(default="1.15,1.5,2.0", show_default=True, help="Aspect (long/short) class edges.")),
]
SHARD_OPTIONS = [
    ("--max-count", dict(default=10_000, show_default=True, help="Samples per shard at most.")),
    ("--max-size", dict(default=1_000_000_000, show_default=True,
                   help="Bytes per shard at most (raw pixels + overhead: an upper bound of the tar).")),
    ("--shard-multiple", dict(default=1, show_default=True,
                   help="Make the shard count a multiple of this (GPUs x loader workers), shards "
                        "split evenly so every rank and worker gets the same share.")),
    ("--min-shard-length", dict(default=16, show_default=True,
                   help="Shortest shard the balance may cut to: shards are kept within 2x of the "
                        "smallest bin's unless that means shards under this length.")),
    ("--keep-16bit", dict(is_flag=True,
                   help="Also store the raw 16-bit frame of 16-bit files as a `.npy` member (the `.png` "
                        "stays the 8-bit view every client reads).")),
    ("--png-level", dict(default=1, show_default=True, help="PNG zlib level (0-9): encoding dominates the build.")),
    ("--seed", dict(default=0, show_default=True, help="Seed of the sample order inside each bin.")),
    ("--split", dict(default="train", show_default=True, help="Split name in _info.json.")),
    ("--name", dict(default="inf590k", show_default=True, help="Dataset name in _info.json.")),
]


def dedupe_config(build, radius, dhash_max, against, priority, contact_groups, feature_model,
                  feature_threshold, feature_device):
    from inf590k.build.dedupe.stage import DedupeConfig

    return DedupeConfig(build=build, radius=radius, dhash_max=dhash_max, against=tuple(against),
                        priority=tuple(priority), contact_groups=contact_groups, feature_model=feature_model,
                        feature_threshold=feature_threshold, feature_device=feature_device)


def bin_config(build, short_edges, aspect_edges):
    from inf590k.build.bins import BinConfig

    return BinConfig(build=build, short_edges=parse_edges(short_edges, int, "short-edges"),
                     aspect_edges=parse_edges(aspect_edges, float, "aspect-edges"))


def shard_config(build, out, workers, max_count, max_size, shard_multiple, min_shard_length, keep_16bit, png_level,
                 seed, split, name, executor="local", ray_address=None):
    from inf590k.build.shard.stage import ShardConfig

    return ShardConfig(build=build, out=out, max_count=max_count, max_size=max_size, shard_multiple=shard_multiple, min_shard_length=min_shard_length, keep_16bit=keep_16bit, png_level=png_level, seed=seed, split=split, name=name, execution=ExecutionOptions(workers=workers, progress=sys.stderr.isatty(), executor=executor, ray_address=ray_address))


def feature_model_folder(model: Path, build_dir: Path) -> Path:
    """--feature-model as a timm folder: registers our encoders with timm (the dataset package
    does not import the model package) and converts a released checkpoint into an export."""
    try:
        from pretrain.models.reference import encoder_folder
    except ImportError as err:
        raise CliError(f"--feature-model needs the pretraining extras ({err}); install them") from err
    try:
        return Path(encoder_folder(model, build_dir / "feature-model"))
    except ValueError as err:
        raise CliError(str(err)) from err


BUILD_DIR = click.option("--build", "build_dir", required=True, type=click.Path(path_type=Path),
                         help="Build directory (holds the catalog).")


def run_stage(func, config, wait: bool = False):
    from inf590k.build.lineage import lock_wait
    from inf590k.execution.local import sigterm_as_interrupt

    try:
        with lock_wait(wait), sigterm_as_interrupt():
            return func(config)
    except (ManifestError, KeyError, ValueError, FileNotFoundError, RuntimeError) as err:
        raise CliError(str(err).strip("'\"")) from err


@main.command()
@BUILD_DIR
@WAIT_OPTION
@apply_options(DEDUPE_OPTIONS)
def dedupe(build_dir, wait, **options) -> None:
    """Mark exact (pixel sha256) and near (pHash radius) duplicates, within and across sources."""
    from inf590k.build.dedupe.stage import dedupe as run_dedupe

    if options["feature_model"] is not None:
        options["feature_model"] = feature_model_folder(options["feature_model"], build_dir)

    click.echo(str(run_stage(run_dedupe, dedupe_config(build_dir, **options), wait)))


@main.command("bin")
@BUILD_DIR
@WAIT_OPTION
@apply_options(BIN_OPTIONS)
def bin_command(build_dir, wait, **options) -> None:
    """Put every kept image in a resolution bin (short side x aspect ratio)."""
    from inf590k.build.bins import bin_catalog

    click.echo(str(run_stage(bin_catalog, bin_config(build_dir, **options), wait)))


@main.command()
@BUILD_DIR
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Dataset folder to write: new, empty, or one this command wrote before.")
@click.option("--workers", default=0, show_default="one per core", help="Processes writing shards (0: one per core).")
@WAIT_OPTION
@executor_options
@apply_options(SHARD_OPTIONS)
def shard(build_dir, out, workers, wait, **options) -> None:
    """Write the dataset folder: the Hugging Face repo layout (card, data/<bin>/*.tar, data/_info.json,
    metadata/), deterministic WebDataset shards, resumable."""
    from inf590k.build.shard.stage import shard as run_shard

    summary = run_stage(run_shard, shard_config(build_dir, out, workers, **options), wait)
    write_dataset_card(out)
    click.echo(str(summary))


def write_dataset_card(out: Path) -> None:
    """The card (README.md, LICENSES.md) of a folder `shard` wrote: the dataset side's step."""
    from inf590k.dataset.card import write_card

    try:
        write_card(out)
    except (ValueError, OSError) as err:
        raise CliError(f"writing the card of {out}: {err}") from err


@main.command()
@click.option("--source", "source_values", multiple=True, required=True, metavar="ID=PATH",
              help="A source id and its folder or archive (as for ingest). Repeatable.")
@click.option("--manifest", "manifest_files", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Your own manifest YAML. Repeatable.")
@BUILD_DIR
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Dataset folder to write.")
@click.option("--workers", default=0, show_default="one per core",
              help="Worker processes of ingest and shard (the result is the same for any count).")
@WAIT_OPTION
@executor_options
@policy_options
@apply_options(DEDUPE_OPTIONS)
@apply_options(BIN_OPTIONS)
@apply_options(SHARD_OPTIONS)
def build(source_values, manifest_files, build_dir, out, workers, wait, executor, ray_address,
          **options) -> None:
    """Ingest -> dedupe -> bin -> shard in one command (each stage resumable; stages that are
    up to date are not re-run)."""
    from inf590k.build.ingest import IngestConfig
    from inf590k.build.pipeline import BuildConfig, run_build

    config = BuildConfig(
        ingest=IngestConfig(sources=tuple(parse_source(v) for v in source_values), build=build_dir, manifests=tuple(manifest_files), policy=make_policy(**pick(options, POLICY_OPTIONS)), execution=ExecutionOptions(workers=workers, progress=sys.stderr.isatty(), executor=executor, ray_address=ray_address)),
        out=out,
        dedupe=dedupe_config(build_dir, **pick(options, DEDUPE_OPTIONS)),
        bins=bin_config(build_dir, **pick(options, BIN_OPTIONS)),
        shard=shard_config(build_dir, out, workers, **pick(options, SHARD_OPTIONS),
                           executor=executor, ray_address=ray_address),
    )
    summary = run_stage(run_build, config, wait)
    write_dataset_card(out)
    click.echo(str(summary.ingest))
    click.echo(str(summary.dedupe))
    click.echo(str(summary.bins))
    click.echo(str(summary.shard))
    click.echo(str(summary))


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--hashes-only", is_flag=True, help="Only re-hash the shards; do not re-read every sample.")
@click.option("--workers", default=0, show_default="one per core", help="Processes checking shards (0: one per core).")
def verify(dataset: Path, hashes_only: bool, workers: int) -> None:
    """Check a dataset folder (or a downloaded copy): hashes, counts, sidecars, stray files, every
    sample against its row. Exit 1 on damage."""
    from inf590k.dataset.verify import VerifyConfig
    from inf590k.dataset.verify import verify as run_verify

    result = run_verify(VerifyConfig(dataset=dataset, decode=not hashes_only, execution=ExecutionOptions(workers=workers, progress=sys.stderr.isatty())))
    for problem in result.problems:
        click.echo(f"problem: {problem}", err=True)
    click.echo(str(result))
    if not result.ok:
        sys.exit(1)


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report folder (default: DATASET/metadata/report, and the card README.md is rewritten).")
@click.option("--grid-samples", default=24, show_default=True, help="Images in the sample grid.")
@click.option("--seed", default=0, show_default=True, help="Seed of the sample grid's picks.")
def report(dataset: Path, out: Path | None, grid_samples: int, seed: int) -> None:
    """Counts per source and reason, histograms, bins table, captioned sample grid; updates the card."""
    from inf590k.dataset.report import ReportConfig
    from inf590k.dataset.report import report as run_report

    click.echo(str(run_stage(run_report, ReportConfig(dataset=dataset, out=out, grid_samples=grid_samples, seed=seed))))


# ----------------------------------------------------------------------------- publish


HUB_ENDPOINT = ("--endpoint", dict(default=None, help="Hub URL (default: HF_ENDPOINT, else https://huggingface.co)."))


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo", required=True, metavar="OWNER/NAME", help="Hugging Face dataset repo to create or update.")
@click.option("--private", is_flag=True, help="Create the repo private (an existing repo keeps its visibility).")
@click.option("--dry-run", is_flag=True, help="Check the folder and say what would be uploaded; change nothing.")
@apply_options([HUB_ENDPOINT])
def publish(dataset, repo, private, dry_run, endpoint) -> None:
    """Upload a dataset folder, as it is, to the Hugging Face Hub (it already is the repo layout).

    The token comes from HF_TOKEN or the cached login and is never printed; a re-run resumes.
    """
    from inf590k.dataset.publish import PublishConfig, PublishError
    from inf590k.dataset.publish import publish as run_publish

    config = PublishConfig(dataset=dataset, repo=repo, private=private, dry_run=dry_run, endpoint=endpoint)
    try:
        summary = run_publish(config)
    except (PublishError, FileNotFoundError) as err:
        raise CliError(str(err)) from err
    click.echo(str(summary))


@main.command("publish-model")
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo", required=True, metavar="OWNER/NAME", help="Hugging Face model repo to create or update.")
@click.option("--dataset-repo", default=None, metavar="OWNER/NAME",
              help="Dataset repo it was pretrained on (linked from the card).")
@click.option("--private", is_flag=True, help="Create the repo private.")
@click.option("--dry-run", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Stage weights, config and card into DIR and stop.")
@click.option("--stage", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Staging folder (default: EXPORT_DIR-hub beside it).")
@apply_options([HUB_ENDPOINT])
def publish_model(export_dir, repo, dataset_repo, private, dry_run, stage, endpoint) -> None:
    """Publish an exported encoder (safetensors + timm config) with a model card."""
    from pretrain.hub import ModelPublishConfig, PublishError
    from pretrain.hub import publish_model as run_publish_model

    config = ModelPublishConfig(export_dir=export_dir, repo=repo, dataset_repo=dataset_repo, private=private,
                                dry_run=dry_run, stage=stage, endpoint=endpoint)
    try:
        summary = run_publish_model(config)
    except PublishError as err:
        raise CliError(str(err)) from err
    click.echo(str(summary))


# ----------------------------------------------------------------------------- synth


@main.command()
@click.option("--layout", required=True,
              help="The source whose folder layout is imitated (a manifest id; `inf590k sources show ID` "
                   "describes it). 16-bit: PNG/TIFF layouts only.",
              type=click.Choice(sorted(__import__("inf590k.synth", fromlist=["SYNTH_LAYOUTS"]).SYNTH_LAYOUTS)))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder to write the dataset tree into.")
@click.option("--count", default=64, show_default=True, help="Infrared frames to render.")
@click.option("--seed", default=0, show_default=True)
@click.option("--bit-depth", type=click.Choice(["8", "16"]), default="8", show_default=True,
              help="16: 14-bit data in uint16 PNG/TIFF (PNG/TIFF layouts only).")
@click.option("--scale", default=1.0, show_default=True, help="Shrink every frame size by this factor.")
@click.option("--width", type=int, default=None, help="Fixed IR frame width (with --height).")
@click.option("--height", type=int, default=None, help="Fixed IR frame height (with --width).")
@click.option("--workers", default=0, show_default="one per core")
def synth(layout, out, count, seed, bit_depth, scale, width, height, workers) -> None:
    """Render synthetic infrared frames in a public dataset's folder layout.

    Visible halves, masks and labels are written too, so ingest's exclusion rules get exercised.
    Deterministic for a seed; no downloads.
    """
    from inf590k.synth import SynthConfig, SynthError, synthesize

    try:
        summary = synthesize(SynthConfig(layout=layout, out=out, count=count, seed=seed, bit_depth=int(bit_depth),
                                         scale=scale, width=width, height=height, workers=workers))
    except SynthError as err:
        raise CliError(str(err)) from err
    click.echo(str(summary))


# ----------------------------------------------------------------------------- model




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
    from pretrain.config import cli_options

    def run(**options) -> None:
        from pretrain.config import config_from_options
        from pretrain.data import ShardUnreachableError
        from pretrain.train import TrainingDiverged, pretrain

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


@main.command("model-info")
@click.argument("name")
@click.option("--image-size", default=224, show_default=True, help="Square input size.")
@click.option("--in-chans", default=1, show_default=True, type=click.Choice(["1", "3"]),
              help="Input channels (3: grey replicated, as the reference checkpoints).")
def model_info(name: str, image_size: int, in_chans: str) -> None:
    """Parameters and forward GFLOPs per image of a named model, per part.

    Names: mae_vit_base, infmae_base, dugi_mae_base, their _large and _tiny variants.
    """
    from pretrain.models import MODEL_NAMES, format_model_info
    from pretrain.models import model_info as describe

    if name not in MODEL_NAMES:
        raise CliError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODEL_NAMES))}")
    try:
        click.echo(format_model_info(describe(name, image_size, int(in_chans))))
    except ValueError as err:
        raise CliError(str(err)) from err


@main.command()
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@click.option("--image", "images", required=True, multiple=True, type=click.Path(exists=True, path_type=Path),
              help="An infrared image (any format ingest reads), or a folder of them. Repeatable: one row each.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="PNG to write.")
def visualize(checkpoint: Path, images: tuple[Path, ...], out: Path) -> None:
    """Reconstruction grid of a training checkpoint, one row per image: input | masked |
    reconstruction | reconstruction with the visible patches pasted."""
    from pretrain.visualize import visualize_checkpoint

    try:
        written = visualize_checkpoint(checkpoint, images, out)
    except (ValueError, OSError) as err:
        raise CliError(str(err)) from err
    click.echo(f"visualize: wrote {written}")


@main.command()
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Export folder.")
@click.option("--kind", type=click.Choice(["auto", "infmae", "convmae", "mae"]), default="auto", show_default=True,
              help="A released checkpoint's kind (auto: a training checkpoint of ours, or found from the keys).")
@click.option("--stage3", type=click.Choice(["fused", "raw"]), default="fused", show_default=True,
              help="F3 of hierarchical encoders: fused with stages 1-2 + final norm (as pretrained), or "
                   "raw stage-3 blocks output (ConvMAE's downstream form).")
@click.option("--in-chans", type=click.Choice(["1", "3"]), default="1", show_default=True,
              help="Input channels of a released (3-channel) checkpoint's export.")
def export(checkpoint: Path, out: Path, kind: str, stage3: str, in_chans: str) -> None:
    """Export a checkpoint's encoder: safetensors + timm config + model card.

    CHECKPOINT is a training checkpoint of `inf590k pretrain`, or a released InfMAE, ConvMAE or
    MAE pretraining checkpoint (.pth)."""
    from pretrain.checkpoint import export_checkpoint
    from pretrain.models.reference import export_reference, reference_state

    try:
        state = reference_state(checkpoint)  # read once: a released checkpoint is handed on
        if kind != "auto" or state is not None:
            folder = export_reference(checkpoint, out, None if kind == "auto" else kind,
                                      in_chans=int(in_chans), stage3=stage3, state=state)
        else:
            folder = export_checkpoint(checkpoint, out, stage3)
    except (ValueError, OSError) as err:
        raise CliError(str(err)) from err
    except (KeyError, RuntimeError) as err:  # a state dict that does not fit the model
        raise CliError(f"cannot read {checkpoint} ({type(err).__name__}: {str(err).splitlines()[0]}); pass a checkpoint of "
                       "`inf590k pretrain` or a released InfMAE/ConvMAE/MAE .pth") from err
    click.echo(f"export: wrote {folder}")


# ----------------------------------------------------------------------------- probe and eval
# Thin wrappers over pretrain.probe: options, one call, one echo.

PROBE_LAYOUTS = ["sirst", "irstd1k", "nudt", "msrs", "m3fd", "flir_adas_v2", "coco"]
PROBE_TASKS = ["detect", "segment", "small-target"]


def probe_schedule_options(steps: int, batch_size: int, head_dim: int):
    """Options `probe` and `eval` share: schedule, input, head, data loading, device."""
    options = [
        click.option("--steps", default=steps, show_default=True, help="Fine-tuning steps."),
        click.option("--img-size", default=256, show_default=True,
                     help="Segmentation: images resized to this square; detection: their longer side (multiple of 32)."),
        click.option("--batch-size", default=batch_size, show_default=True),
        click.option("--lr", type=float, default=None, help="AdamW learning rate.  [default: 1e-3]"),
        click.option("--weight-decay", type=float, default=None,
                     help="AdamW weight decay.  [default: 0.1 detection, 0.01 segmentation]"),
        click.option("--head-dim", default=head_dim, show_default=True,
                     help="Width of the segmentation head / the detector's FPN (box head: 4x)."),
        click.option("--detail/--no-detail", default=False, show_default=True,
                     help="Segmentation head's full-resolution branch on the input (it solves small targets whatever the encoder)."),
        click.option("--threshold", default=0.5, show_default=True, help="Target probability of a target pixel."),
        click.option("--distance", default=3.0, show_default=True, help="Centroid distance (px) of a detected target."),
        click.option("--split", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="A split.json of an earlier run: the same train and test images."),
        click.option("--workers", default=0, show_default=True,
                     help="Data-loader processes decoding detection images (torch threads: the cores left)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


@main.command()
@click.option("--encoder", required=True,
              help="An `inf590k export` folder, a released InfMAE/ConvMAE/MAE/UNIP checkpoint (.pth), or `scratch`.")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The dataset folder in its own layout (SIRST, IRSTD-1k, NUDT-SIRST, MSRS, M3FD, FLIR ADAS v2, COCO JSON).")
@click.option("--layout", required=True, type=click.Choice(PROBE_LAYOUTS))
@click.option("--task", type=click.Choice(["auto", *PROBE_TASKS]), default="auto", show_default=True,
              help="detect (m3fd, flir_adas_v2, coco), segment (msrs) or small-target; auto: the layout's.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run folder.")
@click.option("--freeze/--no-freeze", default=False, show_default=True, help="Train the head only (the frozen-encoder arm).")
@click.option("--arch", default="dugi_mae_base", show_default=True, help="Architecture of --encoder scratch.")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="With an export: also train the same architecture from scratch, and print both rows.")
@click.option("--seed", default=0, show_default=True)
@click.option("--num-heads", type=int, default=None,
              help="Attention heads of a released checkpoint whose file does not say them.")
@probe_schedule_options(steps=500, batch_size=8, head_dim=64)
def probe(**options) -> None:
    """Fine-tune an encoder on an infrared task: small targets (IoU, nIoU, Pd, Fa), MSRS
    segmentation (mIoU, mAcc) or detection (COCO mAP, AP50, AP75, AP S/M/L, per class).

    With an export folder, the same architecture is also trained from scratch and both rows printed.
    """
    from pretrain.probe import ProbeConfig
    from pretrain.probe import probe as run_probe

    try:
        result = run_probe(ProbeConfig(**options))
    except ValueError as err:
        raise CliError(str(err)) from err
    click.echo(str(result))


@main.command("eval")
@click.option("--encoder", "encoders", required=True, multiple=True, metavar="NAME=PATH",
              help="An encoder and its name: an export folder, a released InfMAE/ConvMAE/MAE/UNIP .pth, "
                   "or scratch (scratch:ARCH for another architecture). Repeatable; `scratch` alone is the baseline.")
@click.option("--task", required=True, type=click.Choice(PROBE_TASKS))
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The dataset folder in its own layout.")
@click.option("--layout", type=click.Choice(PROBE_LAYOUTS), default=None,
              help="The data's layout  [default: m3fd (detect), msrs (segment), irstd1k (small-target)]")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Results folder; a re-run skips its finished cells.")
@click.option("--seeds", default=3, show_default=True, help="Seeds per encoder and arm (0, 1, ...).")
@click.option("--arm", "arms", multiple=True, type=click.Choice(["finetune", "frozen"]),
              default=("finetune", "frozen"), show_default=True,
              help="Fine-tune the encoder, or freeze it (head only). Repeatable.")
@click.option("--split-seed", default=0, show_default=True, help="Seed of the split where the data has none.")
@click.option("--arch", default="dugi_mae_base", show_default=True,
              help="Architecture of scratch when no other encoder gives one.")
@click.option("--num-heads", "num_heads", multiple=True, metavar="NAME=N",
              help="Attention heads of a released checkpoint whose file does not say them. Repeatable.")
@probe_schedule_options(steps=200, batch_size=4, head_dim=32)
def eval_command(encoders, num_heads, arms, **options) -> None:
    """Several encoders under one protocol (same split, schedule, input size and head), each
    fine-tuned and frozen over seeds: results.md / .json (mean ± std, paired difference to
    scratch) and results.png."""
    from pretrain.probe.compare import EvalConfig, parse_encoders, parse_heads, run_eval

    try:
        config = EvalConfig(encoders=parse_encoders(encoders), num_heads=parse_heads(num_heads),
                            arms=tuple(dict.fromkeys(arms)), **options)
        result = run_eval(config, log=click.echo)
    except ValueError as err:
        raise CliError(str(err)) from err
    click.echo(str(result))


# ----------------------------------------------------------------------------- demo

DEMO_LAYOUTS = (("sirst", 0.5), ("llvip", 0.25), ("flir_adas_v2", 0.5), ("kaist", 0.5))


@main.command()
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for everything the demo makes.")
@click.option("--extra", "extra_sources", multiple=True, metavar="ID=PATH",
              help="A real source to add to the synthetic ones (as for ingest). Repeatable.")
@click.option("--frames", default=48, show_default=True, help="Synthetic infrared frames per layout.")
@click.option("--steps", default=60, show_default=True, help="Pretraining steps of the tiny model.")
@click.option("--model", default="dugi_mae_tiny", show_default=True, help="Model to pretrain.")
@click.option("--probe-steps", default=100, show_default=True, help="Fine-tuning steps of the small-target probe.")
@click.option("--detect-steps", default=80, show_default=True, help="Fine-tuning steps of the detection probe.")
def demo(out: Path, extra_sources: tuple[str, ...], frames: int, steps: int, model: str, probe_steps: int,
         detect_steps: int) -> None:
    """The whole chain on synthetic data, no downloads: synth -> build -> verify -> report ->
    pretrain over local HTTP -> export -> reconstruction PNG -> small-target and detection probes."""
    from inf590k.build.ingest import IngestConfig
    from inf590k.build.pipeline import BuildConfig, run_build
    from inf590k.build.shard import ShardConfig
    from inf590k.dataset.report import ReportConfig
    from inf590k.dataset.report import report as run_report
    from inf590k.dataset.serve import serve_folder
    from inf590k.dataset.verify import VerifyConfig
    from inf590k.dataset.verify import verify as run_verify
    from inf590k.synth import SynthConfig, synthesize
    from pretrain.checkpoint import export_checkpoint
    from pretrain.config import config_from_options
    from pretrain.train import pretrain
    from pretrain.visualize import visualize_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    sources = []
    for index, (layout, scale) in enumerate(DEMO_LAYOUTS):
        target = out / "sources" / layout
        count = frames * 10 if layout == "kaist" else frames  # KAIST keeps every 10th frame
        click.echo(str(synthesize(SynthConfig(layout=layout, out=target, count=count, seed=index, scale=scale))))
        sources.append((layout, target))
    sources.extend(parse_source(value) for value in extra_sources)

    dataset = out / "dataset"
    # a small dataset: shards of a few samples, all within 2x of the smallest bin's
    balanced = ShardConfig(build=out / "build", out=dataset, min_shard_length=1, execution=ExecutionOptions(progress=False))
    built = run_stage(run_build, BuildConfig(
        ingest=IngestConfig(sources=tuple(sources), build=out / "build", execution=ExecutionOptions(progress=False)), out=dataset,
        shard=balanced))
    write_dataset_card(dataset)
    for part in (built.ingest, built.dedupe, built.bins, built.shard, built):
        click.echo(str(part))
    checked = run_verify(VerifyConfig(dataset=dataset, execution=ExecutionOptions(progress=False)))
    click.echo(str(checked))
    if not checked.ok:
        raise CliError("the demo dataset failed verification: " + "; ".join(checked.problems))
    reported = run_report(ReportConfig(dataset=dataset))
    click.echo(str(reported))

    run_dir = out / "run"
    with serve_folder(dataset) as base_url:
        click.echo(f"pretrain: streaming the shards from {base_url}/data/_info.json")
        options = dict(shards=[f"{base_url}/data/_info.json"], model=model, out=str(run_dir),
                       steps=steps, batch_size=16, workers=1, lr=1.5e-3, warmup_epochs=0.5, epochs=50,
                       log_every=10, ckpt_every=steps, vis_every=steps, keep_last=1, device="cpu",
                       progress=False, resume="auto", data_name=str(dataset))
        try:
            result = pretrain(config_from_options(options))
        except ValueError as err:
            raise CliError(str(err)) from err
    click.echo(str(result))
    exported = export_checkpoint(result.checkpoint, out / "export")
    images = sorted((out / "sources" / "sirst" / "images").glob("*.png"))[:4]
    grid = visualize_checkpoint(result.checkpoint, images, out / "reconstruction.png")
    from pretrain.probe import ProbeConfig
    from pretrain.probe import probe as run_probe

    probed = run_probe(ProbeConfig(encoder=str(out / "export"), data=out / "sources" / "sirst", layout="sirst",
                                   out=out / "probe", arch=model, steps=probe_steps, img_size=128, batch_size=4,
                                   head_dim=32, lr=3e-3, device="cpu"))
    click.echo(str(probed))
    # detection row: synthetic M3FD frames (VOC boxes), kept out of the pretraining sources
    click.echo(str(synthesize(SynthConfig(layout="m3fd", out=out / "probe-data" / "m3fd", count=frames,
                                          width=192, height=144, seed=len(DEMO_LAYOUTS)))))
    detected = run_probe(ProbeConfig(encoder=str(out / "export"), data=out / "probe-data" / "m3fd", layout="m3fd",
                                     task="detect", out=out / "probe-detect", arch=model, steps=detect_steps,
                                     img_size=192, batch_size=4, head_dim=32, device="cpu"))
    click.echo(str(detected))

    click.echo("\ndemo results:")
    for label, path in (
        ("synthetic sources", out / "sources"), ("catalog (Parquet)", out / "build" / "catalog"),
        ("dedupe report", out / "build" / "dedupe"), ("dataset (WebDataset shards)", dataset),
        ("dataset card", dataset / "README.md"), ("dataset report", reported.out),
        ("training run (metrics, checkpoints)", run_dir),
        ("exported encoder (timm)", exported), ("reconstruction grid", grid),
        ("small-target probe (pretrained vs scratch)", out / "probe"),
        ("detection probe on synthetic M3FD", out / "probe-detect"),
    ):
        click.echo(f"  {label:<44} {path}")


if __name__ == "__main__":
    main()
