"""Publish: a built dataset folder -> a Hugging Face dataset repo anyone can load or stream.

The Hub layout, staged in a folder first (`--dry-run DIR` stops there)::

    README.md                               dataset card: YAML (license, configs, ...) + body
    data/<bin>/<bin>-000000.tar             the shards, hard-linked from the dataset folder
    data/_info.json                         timm's index, as `inf590k shard` wrote it
    metadata/_info.json                     the same; shard names relative to metadata/
    metadata/sizes.json                     shard -> sample count, same relative names
    metadata/SHA256SUMS                     `cd metadata && sha256sum -c SHA256SUMS`
    metadata/catalog.parquet                the catalog (all rows with --build, else kept rows)
    metadata/sources.json                   per source: name, license, citation, homepage, ...
    metadata/_counts.json                   per-source catalog counts
    metadata/shards/<bin>/<bin>-000000.parquet  the rows of each shard, in tar order
    metadata/report/                        report.json and the report's PNG figures

The card's `configs` give one config per resolution bin and a default `all`, each a
`data_files` glob over the tars, so `datasets.load_dataset(REPO, BIN)` reads one bin and
`streaming=True` streams it.

Upload: `create_repo` (exist_ok), then one `upload_folder` per bin and one for the card and
metadata (the card goes last, so the repo only describes shards that are there). A shard the
repo already holds with the same sha256 is skipped, so a re-run after an interrupted upload
continues where it stopped; `upload_folder` itself splits large folders into several
commits. Every failure (offline, unreachable, unauthorised, rejected) is one
`PublishError` line that says what to do; the staged folder is left as it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from inf590k import catalog as cat
from inf590k.fsutil import write_text_atomic
from inf590k.report import REPORT_DIRNAME, gather_numbers
from inf590k.shard import (
    COUNTS_FILENAME,
    INFO_FILENAME,
    SIZES_FILENAME,
    STATS_SUFFIX,
    SUMS_FILENAME,
    read_sidecars,
)

CARD_FILENAME = "README.md"
DATA_DIRNAME = "data"
METADATA_DIRNAME = "metadata"
CATALOG_FILENAME = "catalog.parquet"
SHARD_ROWS_DIRNAME = "shards"  # metadata/shards/<bin>/<shard>.parquet
STAGE_ENTRIES = frozenset({CARD_FILENAME, DATA_DIRNAME, METADATA_DIRNAME, ".gitattributes"})
REPORT_FILES = ("report.json", "resolution_hist.png", "entropy_hist.png", "sample_grid.png")
ALL_CONFIG = "all"
DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 15.0  # the Hub client has no timeout of its own: the access check has one
SOURCE_FIELDS = ("index", "name", "license", "citation", "homepage", "modality", "policy")


class PublishError(RuntimeError):
    """A publishing failure as one line that says what to do next (never holds a token)."""


@dataclass(frozen=True)
class PublishConfig:
    """One field per `inf590k publish` option."""

    dataset: Path
    repo: str  # OWNER/NAME
    private: bool = False
    dry_run: Path | None = None  # stage into this folder and stop
    stage: Path | None = None  # staging folder of a real upload (default: DATASET-hub beside it)
    build: Path | None = None  # build folder: full catalog and the recorded source facts
    pretty_name: str | None = None  # default: the name in _info.json
    endpoint: str | None = None  # default: HF_ENDPOINT, else https://huggingface.co


@dataclass(frozen=True)
class StagedShard:
    bin: str
    relpath: str  # "<bin>/<bin>-000000.tar" in the dataset folder
    samples: int
    bytes: int
    sha256: str

    @property
    def repo_path(self) -> str:
        return f"{DATA_DIRNAME}/{self.relpath}"


@dataclass
class StagedDataset:
    folder: Path
    split: str
    shards: list[StagedShard]
    linked: int = 0  # shard files newly hard-linked (or copied) into the stage
    copied: int = 0  # of those, copied because a hard link was impossible

    @property
    def bins(self) -> list[str]:
        return sorted({s.bin for s in self.shards})

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)


@dataclass
class PublishSummary:
    repo: str
    staged: Path
    samples: int
    shards: int
    bins: int
    dry_run: bool
    url: str = ""
    uploaded: int = 0  # shard files sent
    skipped: int = 0  # shard files the repo already held
    commits: list[str] = field(default_factory=list)  # commit messages, in order

    def __str__(self) -> str:
        if self.dry_run:
            return (
                f"publish (dry run): {self.samples} samples in {self.shards} shards, "
                f"{self.bins} bins + card + metadata staged in {self.staged}"
            )
        return (
            f"publish: {self.samples} samples in {self.shards} shards ({self.bins} bins) -> "
            f"{self.url}: {self.uploaded} shards uploaded, {self.skipped} already there, "
            f"{len(self.commits)} upload calls"
        )


# ----------------------------------------------------------------------------- staging


def default_stage(dataset: Path) -> Path:
    dataset = Path(dataset).resolve()
    return dataset.parent / f"{dataset.name}-hub"


def read_shards(dataset: Path) -> tuple[str, list[StagedShard]]:
    """The split and shards of a dataset folder, each checked against its `_stats.json`."""
    dataset = Path(dataset)
    info_path = dataset / INFO_FILENAME
    if not info_path.is_file():
        raise PublishError(
            f"{info_path} is missing: publish takes the folder `inf590k shard --out` wrote"
        )
    splits = json.loads(info_path.read_text()).get("splits", {})
    if len(splits) != 1:
        raise PublishError(
            f"{info_path} has splits {sorted(splits)}; publish takes a dataset with exactly one "
            "split (shard each split into its own folder and publish them as separate repos)"
        )
    ((split, entry),) = splits.items()
    shards = []
    for relpath, samples in zip(entry["filenames"], entry["shard_lengths"], strict=True):
        tar = dataset / relpath
        stats_path = tar.with_name(tar.name[: -len(".tar")] + STATS_SUFFIX)
        try:
            stats = json.loads(stats_path.read_text())
            size = tar.stat().st_size
        except (OSError, ValueError) as err:
            raise PublishError(
                f"shard {relpath} or its stats file is missing or unreadable ({err}); "
                "finish it with `inf590k shard` and check with `inf590k verify`"
            ) from err
        if size != stats["bytes"] or int(stats["count"]) != int(samples):
            raise PublishError(
                f"shard {relpath} does not match its stats ({size} bytes, stats say "
                f"{stats['bytes']}): re-run `inf590k shard`, then `inf590k verify`"
            )
        shards.append(
            StagedShard(
                bin=relpath.split("/", 1)[0],
                relpath=relpath,
                samples=int(samples),
                bytes=size,
                sha256=stats["sha256"],
            )
        )
    if not shards:
        raise PublishError(f"{info_path} lists no shards: nothing to publish")
    return split, shards


def _check_stage_folder(stage: Path, dataset: Path) -> None:
    stage, dataset = Path(stage).resolve(), Path(dataset).resolve()
    if stage == dataset or dataset in stage.parents or stage in dataset.parents:
        raise PublishError(
            f"staging folder {stage} overlaps the dataset folder {dataset}: pick another folder"
        )
    if stage.is_dir():
        foreign = sorted(p.name for p in stage.iterdir() if p.name not in STAGE_ENTRIES)
        if foreign:
            raise PublishError(
                f"{stage} holds {foreign[0]!r}, which publish did not stage: "
                "pick an empty or earlier staging folder"
            )


def _link_or_copy(source: Path, target: Path) -> bool:
    """Hard-link `source` to `target` (shards are large); copy across file systems.

    Returns True when the file had to be copied. A target that already is the same file
    (same inode, or same size and mtime after a copy) is left alone, so re-staging is cheap.
    """
    if target.exists():
        same = os.path.samefile(source, target)
        if not same:
            a, b = source.stat(), target.stat()
            same = a.st_size == b.st_size and int(a.st_mtime) == int(b.st_mtime)
        if same:
            return False
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        return False
    except OSError:
        tmp = target.with_name(target.name + ".tmp")
        shutil.copy2(source, tmp)
        os.replace(tmp, target)
        return True


def _write_text(path: Path, text: str) -> None:
    write_text_atomic(path, text)


def _relative_to_metadata(relpath: str) -> str:
    """A shard's name as seen from metadata/ (where _info.json lives on the Hub)."""
    return f"../{DATA_DIRNAME}/{relpath}"


def _rewrite_sums(dataset: Path) -> str:
    """SHA256SUMS with paths as they are staged, relative to metadata/."""
    lines = []
    for line in (dataset / SUMS_FILENAME).read_text().splitlines():
        digest, _, path = line.partition("  ")
        if path.endswith(".tar"):
            lines.append(f"{digest}  {_relative_to_metadata(path)}")
        elif path.endswith(".parquet"):
            lines.append(f"{digest}  {SHARD_ROWS_DIRNAME}/{path}")
    return "".join(f"{line}\n" for line in sorted(lines, key=lambda x: x.split("  ", 1)[1]))


def source_classes(dataset: Path, shards: list[StagedShard]) -> dict[str, int]:
    """Each source's `.cls` value, read from the first shard sample of that source."""
    classes: dict[str, int] = {}
    for shard in shards:
        tar_path = Path(dataset) / shard.relpath
        rows = pq.read_table(tar_path.with_suffix(".parquet"), columns=["uid", "source"])
        first = {}
        for uid, source in zip(
            *(rows.column(c).to_pylist() for c in ("uid", "source")), strict=True
        ):
            if source not in classes and source not in first:
                first[source] = uid
        if first:
            with tarfile.open(tar_path) as tar:
                for source, uid in first.items():
                    classes[source] = int(tar.extractfile(f"{uid}.cls").read())
    return classes


def source_facts(
    dataset: Path, build: Path | None, shards: list[StagedShard], sources: list[str]
) -> dict[str, dict]:
    """Name, license, citation, homepage, ... per source: from the build, else the manifests.

    Only these fields are published: the build's record also holds local root paths. The
    index is the `.cls` the shards hold.
    """
    recorded = cat.read_sources(build) if build else {}
    missing = [s for s in sources if s not in recorded]
    if missing:
        from inf590k.manifest import ManifestError, resolve_manifests

        try:
            manifests = resolve_manifests(())
        except ManifestError:
            manifests = {}
        for source in missing:
            manifest = manifests.get(source)
            if manifest is not None:
                recorded[source] = {
                    "name": manifest.name,
                    "license": manifest.license,
                    "citation": manifest.citation,
                    "homepage": manifest.homepage,
                    "modality": manifest.modality,
                }
    classes = source_classes(dataset, shards)
    facts = {s: {k: recorded.get(s, {}).get(k) for k in SOURCE_FIELDS} for s in sources}
    for source, fact in facts.items():
        fact["index"] = classes.get(source)
    return facts


def _catalog_table(dataset: Path, build: Path | None) -> pa.Table:
    if build is None:
        return read_sidecars(dataset)
    try:
        return cat.read_catalog(build)
    except FileNotFoundError as err:
        raise PublishError(f"{err}; or leave out --build to publish the kept rows only") from err


def _stage_report(dataset: Path, target: Path) -> None:
    """Copy DATASET/report's files, or write the report there when it was never made."""
    source = Path(dataset) / REPORT_DIRNAME
    if all((source / name).is_file() for name in REPORT_FILES):
        target.mkdir(parents=True, exist_ok=True)
        for name in REPORT_FILES:
            shutil.copyfile(source / name, target / name)
        return
    from inf590k.report import ReportConfig, report

    report(ReportConfig(dataset=Path(dataset), out=target))
    (target / "dataset_card.md").unlink(missing_ok=True)  # the staged README.md replaces it


def _remove_unplanned(stage: Path, planned: set[Path]) -> None:
    """Files under data/ and metadata/ of an earlier staging that this one does not write."""
    for top in (stage / DATA_DIRNAME, stage / METADATA_DIRNAME):
        if not top.is_dir():
            continue
        for path in sorted(top.rglob("*"), reverse=True):
            if path.is_file() and path not in planned:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()


def stage_dataset(config: PublishConfig, stage: Path) -> StagedDataset:
    """Write the Hub layout of `config.dataset` into `stage` (idempotent; shards hard-linked)."""
    dataset = Path(config.dataset)
    stage = Path(stage)
    split, shards = read_shards(dataset)
    _check_stage_folder(stage, dataset)
    staged = StagedDataset(folder=stage, split=split, shards=shards)
    planned: set[Path] = set()
    for shard in shards:
        target = stage / shard.repo_path
        before = target.exists()
        staged.copied += _link_or_copy(dataset / shard.relpath, target)
        staged.linked += not before
        planned.add(target)
        rows_target = (stage / METADATA_DIRNAME / SHARD_ROWS_DIRNAME / shard.relpath).with_suffix(
            ".parquet"
        )
        _link_or_copy((dataset / shard.relpath).with_suffix(".parquet"), rows_target)
        planned.add(rows_target)

    metadata = stage / METADATA_DIRNAME
    info = json.loads((dataset / INFO_FILENAME).read_text())
    info["splits"][split]["filenames"] = [
        _relative_to_metadata(f) for f in info["splits"][split]["filenames"]
    ]
    sizes = {_relative_to_metadata(s.relpath): s.samples for s in shards}
    written = {
        INFO_FILENAME: json.dumps(info, indent=1) + "\n",
        SIZES_FILENAME: json.dumps(sizes, indent=1) + "\n",
        SUMS_FILENAME: _rewrite_sums(dataset),
    }
    numbers = gather_numbers(dataset)
    facts = source_facts(dataset, config.build, shards, sorted(numbers["sources"]))
    written["sources.json"] = json.dumps(facts, indent=1, sort_keys=True) + "\n"
    if (dataset / COUNTS_FILENAME).is_file():
        written[COUNTS_FILENAME] = (dataset / COUNTS_FILENAME).read_text()
    for name, text in written.items():
        _write_text(metadata / name, text)
        planned.add(metadata / name)
    # The index again beside the bin folders, names unchanged: readers that look for
    # `_info.json` next to the shards (`inf590k pretrain`, timm with root=data) find it there.
    _write_text(stage / DATA_DIRNAME / INFO_FILENAME, (dataset / INFO_FILENAME).read_text())
    planned.add(stage / DATA_DIRNAME / INFO_FILENAME)

    catalog_path = metadata / CATALOG_FILENAME
    cat.write_parquet_atomic(_catalog_table(dataset, config.build), catalog_path)
    planned.add(catalog_path)
    _stage_report(dataset, metadata / REPORT_DIRNAME)
    planned.update(p for p in (metadata / REPORT_DIRNAME).iterdir() if p.is_file())
    _remove_unplanned(stage, planned)

    card = dataset_card(config, staged, numbers, facts)
    _write_text(stage / CARD_FILENAME, card)
    return staged


# ----------------------------------------------------------------------------- card


def size_category(samples: int) -> str:
    for limit, label in (
        (1e3, "n<1K"),
        (1e4, "1K<n<10K"),
        (1e5, "10K<n<100K"),
        (1e6, "100K<n<1M"),
        (1e7, "1M<n<10M"),
    ):
        if samples < limit:
            return label
    return "10M<n<100M"


def card_configs(staged: StagedDataset) -> list[dict]:
    """The card's `configs`: `all` (default) and one per bin, each a glob over its tars."""
    split = staged.split
    configs = [
        {
            "config_name": ALL_CONFIG,
            "default": True,
            "data_files": [{"split": split, "path": f"{DATA_DIRNAME}/*/*.tar"}],
        }
    ]
    for bin_name in staged.bins:
        configs.append(
            {
                "config_name": bin_name,
                "data_files": [{"split": split, "path": f"{DATA_DIRNAME}/{bin_name}/*.tar"}],
            }
        )
    return configs


def _card_data(config: PublishConfig, staged: StagedDataset, name: str):
    from huggingface_hub import DatasetCardData

    return DatasetCardData(
        license="other",
        license_name="per-source",
        pretty_name=config.pretty_name or name,
        task_categories=["image-feature-extraction"],
        size_categories=[size_category(staged.samples)],
        tags=["infrared", "thermal", "webdataset", "self-supervised-pretraining", "inf590k"],
        configs=card_configs(staged),
    )


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return lines


def dataset_card(
    config: PublishConfig, staged: StagedDataset, numbers: dict, facts: dict[str, dict]
) -> str:
    """README.md of the dataset repo: YAML metadata + summary, tables, figures, sources, use."""
    from huggingface_hub import DatasetCard

    endpoint = hub_endpoint(config.endpoint)
    repo = config.repo
    resolve = f"{endpoint}/datasets/{repo}/resolve/main"
    title = config.pretty_name or numbers["name"]
    total = numbers["totals"]
    shards_per_bin = {b: [s for s in staged.shards if s.bin == b] for b in staged.bins}
    bins = {row["bin"]: row for row in numbers["bins"]}
    example_bin = staged.bins[0]
    example_last = len(shards_per_bin[example_bin]) - 1

    body = [
        f"# {title}",
        "",
        f"{staged.samples:,} single-channel infrared (thermal) images in {len(staged.shards)} "
        f"WebDataset shards, one folder per resolution bin under `data/`. Each sample holds "
        "`{uid}.png` (lossless, 1 channel), `{uid}.json` (its catalog row) and `{uid}.cls` "
        "(the index of its source).",
        "",
        f"Built with the `inf590k` toolkit from {total['found']:,} files of "
        f"{len(numbers['sources'])} public sources: {total['kept']:,} kept, "
        f"{total['duplicate']:,} duplicates removed, {total['rejected']:,} rejected, "
        f"{total['excluded']:,} excluded (visible halves, masks, labels).",
        "",
        "## Configurations",
        "",
        f"`{ALL_CONFIG}` (the default) reads every shard; each resolution bin is a config of "
        "its own (`s<short side range>_r<aspect ratio x100 range>`).",
        "",
    ]
    rows = [[ALL_CONFIG, f"{staged.samples:,}", len(staged.shards), "", "`data/*/*.tar`"]]
    for bin_name in staged.bins:
        size = bins.get(bin_name, {}).get("median_size", ["?", "?"])
        rows.append(
            [
                bin_name,
                f"{sum(s.samples for s in shards_per_bin[bin_name]):,}",
                len(shards_per_bin[bin_name]),
                f"{size[0]}x{size[1]}",
                f"`data/{bin_name}/*.tar`",
            ]
        )
    body += _table(["config", "samples", "shards", "median size", "files"], rows)
    body += ["", "## Sources", ""]
    rows = [
        [
            s,
            r["found"],
            r["kept"],
            r["duplicate"],
            r["rejected"],
            r["excluded"],
            facts[s].get("license") or "not stated",
        ]
        for s, r in numbers["sources"].items()
    ]
    body += _table(
        ["source", "found", "kept", "duplicate", "rejected", "excluded", "license"], rows
    )
    body += ["", "### Citations", ""]
    for source, fact in facts.items():
        name = fact.get("name") or source
        link = f" ({fact['homepage']})" if fact.get("homepage") else ""
        citation = fact.get("citation") or "no citation recorded; see the source's homepage"
        body.append(f"- **{source}**: {name}{link}. {citation}")
    body += [
        "",
        "## Licenses",
        "",
        "`license: other`: every image keeps the license of its source, listed per source",
        "above and in the `license` field of its JSON. Several sources state none, and some",
        "restrict use to research. Check the terms of every source before you redistribute",
        "or use the images commercially.",
        "",
        "## Statistics",
        "",
    ]
    short, entropy = numbers.get("short_side", {}), numbers.get("entropy_bits", {})
    stat_rows = [
        [label, *(f"{d.get(k, float('nan')):.1f}" for k in ("min", "p5", "median", "p95", "max"))]
        for label, d in (("short side (px)", short), ("entropy (bits)", entropy))
        if d
    ]
    body += _table(["", "min", "p5", "median", "p95", "max"], stat_rows)
    body += [
        "",
        "Bit depth: "
        + ", ".join(f"{k}-bit {v:,}" for k, v in numbers["bit_depth"].items())
        + "; modality: "
        + ", ".join(f"{k} {v:,}" for k, v in numbers["modality"].items())
        + ".",
        "",
        f"![resolution]({METADATA_DIRNAME}/{REPORT_DIRNAME}/resolution_hist.png)",
        f"![entropy]({METADATA_DIRNAME}/{REPORT_DIRNAME}/entropy_hist.png)",
        "",
        f"![samples]({METADATA_DIRNAME}/{REPORT_DIRNAME}/sample_grid.png)",
        "",
        "## Load and stream",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'everything = load_dataset("{repo}", split="{staged.split}")',
        f'one_bin = load_dataset("{repo}", "{example_bin}", split="{staged.split}")',
        f'for sample in load_dataset("{repo}", split="{staged.split}", streaming=True):',
        '    image, row, source = sample["png"], sample["json"], sample["cls"]  # PIL, dict, int',
        "```",
        "",
        "With webdataset, straight from the shard URLs:",
        "",
        "```python",
        "import webdataset as wds",
        f'url = "{resolve}/data/{example_bin}/{example_bin}-{{000000..{example_last:06d}}}.tar"',
        'dataset = wds.WebDataset(url, shardshuffle=100).decode("pil")',
        "```",
        "",
        "Pretraining with the `inf590k` toolkit streams every shard listed in",
        "`data/_info.json` (timm's index format), which also gives the epoch length; a brace",
        "pattern of shard URLs under `data/` works too (set `HF_TOKEN` for a private repo):",
        "",
        "```",
        f"inf590k pretrain --shards {resolve}/{DATA_DIRNAME}/{INFO_FILENAME} \\",
        "    --model dugi_mae_base --batch-size 256 --out runs/dugi",
        "```",
        "",
        "```python",
        "import timm.data",
        f'dataset = timm.data.create_dataset("wds/inf590k", root="{resolve}/{DATA_DIRNAME}", '
        f'split="{staged.split}")',
        "```",
        "",
        "## Files",
        "",
        "- `data/<bin>/<bin>-NNNNNN.tar`: the shards",
        "- `data/_info.json`, `metadata/_info.json`, `metadata/sizes.json`: shard names and "
        "sample counts (in metadata/, relative to metadata/)",
        "- `metadata/SHA256SUMS`: `cd metadata && sha256sum -c SHA256SUMS`",
        "- `metadata/catalog.parquet`: the catalog, one row per image (uid, source, relpath, "
        "license, size, bit depth, hashes, resolution bin, ...)",
        "- `metadata/shards/<bin>/<bin>-NNNNNN.parquet`: the rows of each shard, in tar order",
        "- `metadata/sources.json`, `metadata/_counts.json`: source facts and per-source counts",
        "- `metadata/report/`: report numbers and figures",
        "",
    ]
    text = "---\n" + _card_data(config, staged, numbers["name"]).to_yaml() + "\n---\n\n"
    return str(DatasetCard(text + "\n".join(body)))


# ----------------------------------------------------------------------------- the Hub


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """HF_HUB_OFFLINE, read now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    return constants.is_offline_mode() or _truthy(os.environ.get("HF_HUB_OFFLINE"))


def hub_endpoint(endpoint: str | None = None) -> str:
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_token() -> str:
    """HF_TOKEN, else the token saved by `hf auth login`; never printed."""
    from huggingface_hub import get_token

    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise PublishError(
            "no Hugging Face token: set HF_TOKEN to a token with write access, "
            "or run `hf auth login`, then re-run"
        )
    return token


def _one_line(text: str, token: str) -> str:
    first = next((line.strip() for line in str(text).splitlines() if line.strip()), "")
    return first.replace(token, "***") if token else first


@contextlib.contextmanager
def hub_errors(action: str, endpoint: str, token: str, stage: Path) -> Iterator[None]:
    """Turn what the Hub client raises into one PublishError line naming the next step."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    kept = f"the staged folder {stage} is kept; re-run to continue"
    try:
        yield
    except PublishError:
        raise
    except OfflineModeIsEnabled as err:
        raise PublishError(
            f"{action}: HF_HUB_OFFLINE is set; unset it and re-run ({kept})"
        ) from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status == 401:
            hint = "the token was rejected: set HF_TOKEN to a valid token or run `hf auth login`"
        elif status == 403:
            hint = "the token may not write there: use a token with write access to it"
        elif status == 404:
            hint = "no such repo or owner: check --repo OWNER/NAME and the token's account"
        else:
            hint = f"the Hub said: {_one_line(err, token)}"
        raise PublishError(f"{action}: HTTP {status}, {hint} ({kept})") from err
    except (httpx2.TransportError, ConnectionError) as err:
        reason = _one_line(err, token) or type(err).__name__
        raise PublishError(
            f"{action}: cannot reach {endpoint} ({reason}); check the network, proxy or "
            f"HF_ENDPOINT ({kept})"
        ) from err
    except RuntimeError as err:  # the upload backend (hf_xet) reports its failures so
        raise PublishError(f"{action} failed: {_one_line(err, token)} ({kept})") from err


def check_hub_access(endpoint: str, token: str, stage: Path) -> str:
    """Fail fast before any upload: unreachable, or a rejected token. Returns the user name."""
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    with hub_errors("checking the token", endpoint, token, stage):
        response = get_session().get(
            f"{endpoint}/api/whoami-v2",
            headers=build_hf_headers(token=token),
            timeout=PROBE_TIMEOUT_S,
        )
        hf_raise_for_status(response)
        return str(response.json().get("name", "?"))


def refuse_offline() -> None:
    if hub_offline():
        raise PublishError(
            "HF_HUB_OFFLINE is set, so nothing can be uploaded: unset it and re-run "
            "(or stage only, with --dry-run DIR)"
        )


def _remote_sha256(api, repo: str, repo_type: str) -> dict[str, str]:
    """path -> sha256 of the LFS files the repo already holds (empty for a new repo)."""
    from huggingface_hub.hf_api import RepoFile

    return {
        entry.path: entry.lfs.sha256
        for entry in api.list_repo_tree(repo, recursive=True, repo_type=repo_type)
        if isinstance(entry, RepoFile) and entry.lfs is not None
    }


def upload_dataset(config: PublishConfig, staged: StagedDataset, token: str) -> PublishSummary:
    """create_repo + one upload_folder per bin still missing + card and metadata last."""
    from huggingface_hub import HfApi

    endpoint = hub_endpoint(config.endpoint)
    refuse_offline()
    check_hub_access(endpoint, token, staged.folder)
    api = HfApi(endpoint=endpoint, token=token)
    summary = PublishSummary(
        repo=config.repo,
        staged=staged.folder,
        samples=staged.samples,
        shards=len(staged.shards),
        bins=len(staged.bins),
        dry_run=False,
    )
    with hub_errors(f"creating {config.repo}", endpoint, token, staged.folder):
        summary.url = str(
            api.create_repo(config.repo, repo_type="dataset", private=config.private, exist_ok=True)
        )
    with hub_errors(f"listing {config.repo}", endpoint, token, staged.folder):
        remote = _remote_sha256(api, config.repo, "dataset")
    for bin_name in staged.bins:
        in_bin = [s for s in staged.shards if s.bin == bin_name]
        missing = [s for s in in_bin if remote.get(s.repo_path) != s.sha256]
        summary.skipped += len(in_bin) - len(missing)
        if not missing:
            continue
        message = (
            f"Add {len(missing)} shards of bin {bin_name} "
            f"({sum(s.samples for s in missing):,} samples)"
        )
        with hub_errors(f"uploading bin {bin_name}", endpoint, token, staged.folder):
            api.upload_folder(
                repo_id=config.repo,
                repo_type="dataset",
                folder_path=staged.folder,
                allow_patterns=[s.repo_path for s in missing],
                commit_message=message,
            )
        summary.uploaded += len(missing)
        summary.commits.append(message)
    message = "Dataset card and metadata"
    with hub_errors("uploading the card and metadata", endpoint, token, staged.folder):
        api.upload_folder(
            repo_id=config.repo,
            repo_type="dataset",
            folder_path=staged.folder,
            allow_patterns=[
                CARD_FILENAME,
                f"{DATA_DIRNAME}/{INFO_FILENAME}",
                f"{METADATA_DIRNAME}/**",
            ],
            commit_message=message,
        )
    summary.commits.append(message)
    return summary


def publish(config: PublishConfig) -> PublishSummary:
    """Stage the Hub layout of a dataset folder, then (unless dry run) upload it."""
    if config.repo.count("/") != 1 or not all(config.repo.split("/")):
        raise PublishError(f"--repo {config.repo!r}: write OWNER/NAME, e.g. my-lab/inf590k")
    token = ""
    if config.dry_run is None:  # no upload can work: say so before staging anything
        refuse_offline()
        token = hub_token()
    stage = Path(config.dry_run or config.stage or default_stage(config.dataset))
    staged = stage_dataset(config, stage)
    if config.dry_run is not None:
        return PublishSummary(
            repo=config.repo,
            staged=stage,
            samples=staged.samples,
            shards=len(staged.shards),
            bins=len(staged.bins),
            dry_run=True,
        )
    return upload_dataset(config, staged, token)
