"""Publish: a dataset folder -> a Hugging Face dataset repo, uploaded as it is.

The folder `inf590k shard` writes is already the repo's layout (README.md card, data/, metadata/;
see inf590k/dataset/layout.py), so nothing is staged or copied: `create_repo` (exist_ok), then one
`upload_folder` per bin with the shards the repo does not hold yet (same path and sha256:
skipped, so a re-run after an interrupted upload continues where it stopped; a shard to send is
hashed first and refused if it is not the one `shard` recorded), then the card,
data/_info.json and metadata/ last, so the repo only describes shards that are there. Only
files the folder's own index (metadata/files.json) names are sent: anything else a user keeps
in the folder stays local. A report older than the shards is refreshed first (its files and
the card are the folder's own). Every failure (offline, unreachable, unauthorised, rejected)
is one `PublishError` line that says what to do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from inf590k.dataset.card import report_is_fresh
from inf590k.dataset.hub import (
    PublishError,
    check_hub_access,
    hub_endpoint,
    hub_errors,
    hub_token,
    refuse_offline,
)
from inf590k.dataset.layout import (
    CARD_FILENAME,
    DATA_DIRNAME,
    INFO_PATH,
    UnsafePathError,
    dataset_file,
    info_shards,
    read_info,
    read_owned,
    stats_path,
    symlinks_under,
    tar_path,
)
from inf590k.dataset.report import ReportConfig, report
from inf590k.fsutil import file_sha256


@dataclass(frozen=True)
class PublishConfig:
    """One field per `inf590k publish` option."""

    dataset: Path
    repo: str  # OWNER/NAME
    private: bool = False
    dry_run: bool = False  # check the folder and say what would be uploaded; write nothing
    endpoint: str | None = None  # default: HF_ENDPOINT, else https://huggingface.co


@dataclass(frozen=True)
class DatasetShard:
    bin: str
    relpath: str  # "<bin>/<bin>-000000.tar", as data/_info.json names it
    samples: int
    bytes: int
    sha256: str

    @property
    def repo_path(self) -> str:
        return f"{DATA_DIRNAME}/{self.relpath}"


@dataclass
class PublishSummary:
    repo: str
    dataset: Path
    samples: int
    shards: int
    bins: int
    dry_run: bool
    url: str = ""
    uploaded: int = 0  # shard files sent
    skipped: int = 0  # shard files the repo already held
    report_refreshed: bool = False
    commits: list[str] = field(default_factory=list)  # commit messages, in order

    def __str__(self) -> str:
        if self.dry_run:
            stale = (
                "; the report is out of date and will be refreshed first"
                if self.report_refreshed
                else ""
            )
            return (
                f"publish (dry run): {self.samples} samples in {self.shards} shards, {self.bins} bins "
                f"+ card + metadata of {self.dataset} would go to {self.repo}{stale}"
            )
        return (
            f"publish: {self.samples} samples in {self.shards} shards ({self.bins} bins) -> "
            f"{self.url}: {self.uploaded} shards uploaded, {self.skipped} already there, "
            f"{len(self.commits)} upload calls"
        )


# ----------------------------------------------------------------------------- the folder


def read_shards(dataset: Path) -> tuple[str, list[DatasetShard]]:
    """The split and shards of a dataset folder, each checked against its stats file."""
    dataset = Path(dataset)
    info_path = dataset / INFO_PATH
    if not info_path.is_file():
        raise PublishError(
            f"{info_path} is missing: publish takes the folder `inf590k shard --out` wrote"
        )
    try:
        splits = read_info(dataset).get("splits", {})
    except ValueError as err:
        raise PublishError(str(err)) from err
    if len(splits) != 1:
        raise PublishError(
            f"{info_path} has splits {sorted(splits)}; publish takes a dataset with exactly one "
            "split (shard each split into its own folder and publish them as separate repos)"
        )
    split = next(iter(splits))
    shards = []
    for relpath, samples in info_shards({"splits": splits}):
        try:
            stats = json.loads(stats_path(dataset, relpath).read_text())
            size = tar_path(dataset, relpath).stat().st_size
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
            DatasetShard(relpath.split("/", 1)[0], relpath, int(samples), size, stats["sha256"])
        )
    if not shards:
        raise PublishError(f"{info_path} lists no shards: nothing to publish")
    return split, shards


def owned_files(dataset: Path) -> list[str]:
    """The folder's own files that exist (metadata/files.json), as repo paths: plain files
    inside the folder only (a link would upload whatever it points to)."""
    owned = read_owned(dataset)
    if owned is None:
        raise PublishError(
            f"{dataset} has no metadata/files.json: publish takes a folder written by "
            "`inf590k shard` (re-run it with --out pointing there)"
        )
    return sorted(p for p in owned if dataset_file(dataset, p).is_file())


def refuse_links(dataset: Path) -> None:
    """Refuse a folder holding any symbolic link: the Hub client would upload what a file link
    points to, and skip a linked folder while we report its shards as sent."""
    links = symlinks_under(dataset)
    if links:
        raise PublishError(
            f"{Path(dataset) / links[0]} is a symbolic link ({len(links)} in the folder): publish "
            "uploads plain files only; replace each link with the file itself, then "
            "`inf590k verify` and publish again"
        )


# ----------------------------------------------------------------------------- the Hub


DRY_RUN_INSTEAD = "or check the folder only, with --dry-run"


def _kept(dataset: Path) -> str:
    return f"nothing in {dataset} changed; re-run to continue"


def _remote_sha256(api, repo: str, repo_type: str) -> dict[str, str]:
    """path -> sha256 of the LFS files the repo already holds (empty for a new repo)."""
    from huggingface_hub.hf_api import RepoFile  # the Hub client loads in ~0.5 s: when used

    return {
        entry.path: entry.lfs.sha256
        for entry in api.list_repo_tree(repo, recursive=True, repo_type=repo_type)
        if isinstance(entry, RepoFile) and entry.lfs is not None
    }


def check_unchanged(dataset: Path, shards: list[DatasetShard]) -> None:
    """Refuse shards whose bytes are not the ones their stats recorded (an edit of equal size
    passes the size check): the repo would hold a shard that fails `verify`."""
    for shard in shards:
        if file_sha256(tar_path(dataset, shard.relpath)) != shard.sha256:
            raise PublishError(
                f"shard {shard.relpath} changed after it was written (sha256 differs from its "
                "stats): re-run `inf590k shard`, then `inf590k verify`; nothing of it was uploaded"
            )


def upload_dataset(config: PublishConfig, shards: list[DatasetShard], token: str) -> PublishSummary:
    """create_repo + one upload_folder per bin still missing + card and metadata last."""
    from huggingface_hub import HfApi  # the Hub client loads in ~0.5 s: when used

    dataset = Path(config.dataset)
    endpoint = hub_endpoint(config.endpoint)
    refuse_offline(DRY_RUN_INSTEAD)
    check_hub_access(endpoint, token, _kept(dataset))
    api = HfApi(endpoint=endpoint, token=token)
    summary = _summary(config, shards, dry_run=False)
    with hub_errors(f"creating {config.repo}", endpoint, token, _kept(dataset)):
        summary.url = str(
            api.create_repo(config.repo, repo_type="dataset", private=config.private, exist_ok=True)
        )
    with hub_errors(f"listing {config.repo}", endpoint, token, _kept(dataset)):
        remote = _remote_sha256(api, config.repo, "dataset")
    for bin_name in sorted({s.bin for s in shards}):
        in_bin = [s for s in shards if s.bin == bin_name]
        missing = [s for s in in_bin if remote.get(s.repo_path) != s.sha256]
        summary.skipped += len(in_bin) - len(missing)
        if not missing:
            continue
        check_unchanged(dataset, missing)
        message = f"Add {len(missing)} shards of bin {bin_name} ({sum(s.samples for s in missing):,} samples)"
        with hub_errors(f"uploading bin {bin_name}", endpoint, token, _kept(dataset)):
            api.upload_folder(
                repo_id=config.repo,
                repo_type="dataset",
                folder_path=dataset,
                allow_patterns=[s.repo_path for s in missing],
                commit_message=message,
            )
        summary.uploaded += len(missing)
        summary.commits.append(message)
    tars = {s.repo_path for s in shards}
    rest = [p for p in owned_files(dataset) if p not in tars and not p.endswith(".tar")]
    message = "Dataset card and metadata"
    with hub_errors("uploading the card and metadata", endpoint, token, _kept(dataset)):
        api.upload_folder(
            repo_id=config.repo,
            repo_type="dataset",
            folder_path=dataset,
            allow_patterns=rest,
            commit_message=message,
        )
    summary.commits.append(message)
    return summary


def _summary(config: PublishConfig, shards: list[DatasetShard], dry_run: bool) -> PublishSummary:
    return PublishSummary(
        repo=config.repo,
        dataset=Path(config.dataset),
        samples=sum(s.samples for s in shards),
        shards=len(shards),
        bins=len({s.bin for s in shards}),
        dry_run=dry_run,
    )


def _refresh_report(dataset: Path) -> None:
    try:
        report(ReportConfig(dataset=dataset))
    except (OSError, ValueError) as err:
        raise PublishError(
            f"refreshing the report failed ({err}); run `inf590k report {dataset}`"
        ) from err


def publish(config: PublishConfig) -> PublishSummary:
    """Check a dataset folder, refresh a stale report, then (unless dry run) upload it."""
    if config.repo.count("/") != 1 or not all(config.repo.split("/")):
        raise PublishError(f"--repo {config.repo!r}: write OWNER/NAME, e.g. my-lab/inf590k")
    dataset = Path(config.dataset)
    try:
        refuse_links(dataset)
        _, shards = read_shards(dataset)
        owned = owned_files(dataset)
    except UnsafePathError as err:
        raise PublishError(str(err)) from err
    if CARD_FILENAME not in owned:
        raise PublishError(
            f"{dataset}/{CARD_FILENAME} is missing: re-run `inf590k shard` to write the card"
        )
    stale = not report_is_fresh(dataset)
    if config.dry_run:
        check_unchanged(dataset, shards)  # what the upload would refuse, the dry run refuses too
        summary = _summary(config, shards, dry_run=True)
        summary.report_refreshed = stale
        return summary
    refuse_offline(DRY_RUN_INSTEAD)  # no upload can work: say so before anything else
    token = hub_token()
    if stale:
        _refresh_report(dataset)
    summary = upload_dataset(config, shards, token)
    summary.report_refreshed = stale
    return summary
