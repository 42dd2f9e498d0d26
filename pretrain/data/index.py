"""The dataset's index: shard URLs from patterns, folders and `_info.json` (someone else's file:
its names stay inside its folder, its numbers are checked against its sidecars), the epoch
length, and `resolve_data`, which reads it once for a run.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import posixpath
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import braceexpand
from webdataset.tariterators import base_plus_ext

from inf590k.dataset.layout import (
    DATA_DIRNAME,
    INFO_SOURCE_KEYS,
    SIZES_PATH,
    SOURCES_PATH,
    SUMS_PATH,
    SplitIndex,
    check_relpath,
    read_info_sources,
    read_splits,
)
from pretrain.config import DataConfig
from pretrain.data.remote import (
    NetworkDisabledError,
    ShardUnreachableError,
    _join,
    open_url,
    redact_url,
)
from pretrain.data.tarstream import tar_members

log = logging.getLogger(__name__)

INFO_NAME = "_info.json"


@dataclass(frozen=True)
class DatasetInfo:
    num_samples: int
    filenames: tuple[str, ...]  # absolute URLs
    shard_lengths: tuple[int, ...]
    sources: tuple[dict[str, Any], ...] = ()  # top-level "sources" of _info.json, if any
    # `<bin>/<shard>.tar` -> sha256 from the dataset's metadata/SHA256SUMS, where it has one
    sums: dict[str, str] = field(default_factory=dict)

    def select(self, urls: Sequence[str]) -> DatasetInfo:
        """The part of the dataset that `urls` read: their shards, lengths and sample count.

        Shards are matched by `<bin>/<shard>.tar`, however they are reached. For shards without
        a length in _info.json the count is estimated from the others (and a warning says so)."""
        keys = [shard_key(url) for url in urls]
        all_keys = [shard_key(name) for name in self.filenames]
        if keys == all_keys:
            return self
        has_lengths = len(self.shard_lengths) == len(self.filenames)
        lengths = dict(zip(all_keys, self.shard_lengths, strict=True)) if has_lengths else {}
        listed = [
            (url, lengths[key]) for url, key in zip(urls, keys, strict=True) if key in lengths
        ]
        total = sum(n for _, n in listed)
        missing = len(urls) - len(listed)
        if missing:
            per_shard = (
                total / len(listed) if listed else self.num_samples / max(1, len(self.filenames))
            )
            total = round(total + per_shard * missing)
            log.warning(
                "_info.json gives no length for %d of the %d selected shards: epoch length "
                "estimated at %d samples (--samples-per-epoch sets it)",
                missing,
                len(urls),
                total,
            )
        return DatasetInfo(
            total, tuple(u for u, _ in listed), tuple(n for _, n in listed), self.sources, self.sums
        )


def is_info_url(url: str) -> bool:
    return posixpath.basename(urllib.parse.urlparse(url).path) == INFO_NAME


def index_member_url(index_url: str, name: object) -> str:
    """A shard name read from an index, as a URL inside the index's own folder.

    The index may be someone else's file, so a name is accepted only as a plain relative path
    (`layout.check_relpath`): `pipe:...` (a shell command to webdataset), another scheme or
    host, an absolute path or `..` is refused (ValueError naming the index), and the result
    keeps the index's scheme, host and folder. An index read through `pipe:` locates nothing."""
    where = redact_url(index_url)
    if index_url.startswith("pipe:"):
        raise ValueError(
            f"{where}: shards listed by an index read through pipe: cannot be located; pass the "
            "shards themselves to --shards"
        )
    check_relpath(name, f"{where}: shard name")
    if not name.endswith(".tar"):
        raise ValueError(f"{where}: shard name {name!r} is not a .tar shard")
    return _join(index_url, name)


MAX_INFO_BYTES = 64 << 20  # an _info.json of 156K shards is ~10 MB; anything larger is refused


def read_index_json(url: str, config: DataConfig) -> Any:
    """The parsed JSON of a small index file (bounded: someone else's file may be endless)."""
    with open_url(url, config) as stream:
        try:
            data = stream.read(MAX_INFO_BYTES + 1)
            if len(data) > MAX_INFO_BYTES:
                raise ValueError(f"over {MAX_INFO_BYTES >> 20} MiB")
            return json.loads(data)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{redact_url(url)} is not a readable JSON index ({exc})") from None


def read_info(url: str, split: str = "train", config: DataConfig | None = None) -> DatasetInfo:
    """Parse a timm-format `_info.json`, checked (`layout.read_splits`: names, counts, totals;
    a lie is one ValueError naming the field); shard names become URLs inside its folder."""
    config = config or DataConfig()
    where = redact_url(url)
    info = read_index_json(url, config)
    splits = read_splits(info, where)
    if split not in splits:
        raise ValueError(f"{where} has no split {split!r} (it has {sorted(splits)}); pick --split")
    entry = splits[split]
    if not entry.filenames:
        raise ValueError(f"{where}: split {split!r} lists no shards")
    filenames = tuple(index_member_url(url, name) for name in entry.filenames)
    sources = tuple(read_info_sources(info, where))
    sums = check_against_metadata(url, entry, sources, config)
    return DatasetInfo(entry.num_samples, filenames, entry.shard_lengths, sources, sums)


def _metadata_file(index_url: str, relpath: str, config: DataConfig) -> Any | None:
    """A file of the dataset's metadata/ folder beside data/_info.json, parsed (JSON, or text
    for SHA256SUMS); None when the index is not in a dataset folder or the file is absent."""
    path = urllib.parse.urlparse(index_url).path if "://" in index_url else index_url
    if index_url.startswith("pipe:") or posixpath.basename(posixpath.dirname(path)) != DATA_DIRNAME:
        return None
    url = _join(index_url, f"../{relpath}")
    try:
        if relpath == SUMS_PATH:
            with open_url(url, config) as stream:
                return stream.read(MAX_INFO_BYTES).decode("utf-8", "replace")
        return read_index_json(url, config)
    except NetworkDisabledError:
        raise
    except ShardUnreachableError:
        return None


def _sums_by_shard(text: str) -> dict[str, str]:
    """`sha256sum` lines of data/ shards -> {`<bin>/<shard>.tar`: digest}."""
    sums = {}
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) == 64 and name.startswith(f"{DATA_DIRNAME}/"):
            sums[name[len(DATA_DIRNAME) + 1 :]] = digest
    return sums


def check_against_metadata(
    index_url: str, split: SplitIndex, sources: tuple[dict[str, Any], ...], config: DataConfig
) -> dict[str, str]:
    """_info.json against the sidecars of its dataset folder (metadata/sizes.json, SHA256SUMS,
    sources.json), where it sits in one: a disagreement is one ValueError naming the field.
    Returns each listed shard's recorded sha256 (checked as the shard streams). Training
    takes the epoch length and the weights' licence from these fields."""
    where = redact_url(index_url)
    sizes = _metadata_file(index_url, SIZES_PATH, config)
    if isinstance(sizes, dict):
        for name, length in zip(split.filenames, split.shard_lengths, strict=True):
            if sizes.get(f"{DATA_DIRNAME}/{name}") != length:
                raise ValueError(
                    f"{where}: field splits.{split.name}.shard_lengths gives {name} {length} "
                    f"samples, {SIZES_PATH} says {sizes.get(f'{DATA_DIRNAME}/{name}')!r}"
                )
    table = _metadata_file(index_url, SOURCES_PATH, config)
    if isinstance(table, list) and sources:
        recorded = [
            {key: e.get(key) for key in INFO_SOURCE_KEYS}
            for e in table
            if isinstance(e, dict) and e.get("samples")
        ]
        if recorded != list(sources):
            raise ValueError(
                f"{where}: field sources disagrees with {SOURCES_PATH} (licences, names or "
                "counts edited?): run `inf590k verify` on the dataset"
            )
    text = _metadata_file(index_url, SUMS_PATH, config)
    if text is None:
        return {}
    sums = _sums_by_shard(text)
    missing = [name for name in split.filenames if name not in sums]
    if missing:
        raise ValueError(f"{where}: shard {missing[0]} is not listed in {SUMS_PATH}")
    return {name: sums[name] for name in split.filenames}


def _expand(
    specs: str | Sequence[str], split: str, config: DataConfig | None
) -> tuple[list[str], dict[str, DatasetInfo]]:
    """Shard URLs of the specs in order, and every index read for them (URL -> its info)."""
    if isinstance(specs, str):
        specs = [specs]
    urls: list[str] = []
    indexes: dict[str, DatasetInfo] = {}
    for spec in specs:
        for part in spec.split("::"):
            part = part.strip()
            if not part:
                continue
            index = part if is_info_url(part) else None
            if index is None and "://" not in part and not part.startswith("pipe:"):
                index = folder_info(part)
            if index is not None:
                if index not in indexes:
                    indexes[index] = read_info(index, split, config)
                urls.extend(indexes[index].filenames)
                continue
            for url in braceexpand.braceexpand(part):
                urls.extend(_local_glob(url))
    if not urls:
        raise ValueError(f"no shard URLs in {list(specs)!r}; pass --shards PATTERN_OR_URL")
    return urls, indexes


def expand_shard_urls(
    specs: str | Sequence[str], split: str = "train", config: DataConfig | None = None
) -> list[str]:
    """URLs from brace patterns, `::` lists, `_info.json` files (or folders holding one).

    `"data/640x512/shard-{000000..000009}.tar"`, `"data/*/*.tar"` (local), `"a.tar::b.tar"`,
    `"https://host/ds/_info.json"`, `"pipe:cat x.tar"` all work; order is kept.
    """
    return _expand(specs, split, config)[0]


@dataclass(frozen=True)
class ResolvedData:
    """A run's data, resolved once: what it reads and the index that describes it."""

    urls: list[str]  # every shard URL the run reads, in order
    info: DatasetInfo | None  # the index narrowed to those shards (epoch length, sources, sums)
    info_url: str | None  # where that index was read (None: the data has none)


def resolve_data(config: DataConfig) -> ResolvedData:
    """The shard URLs of --shards and the index that describes them, each index read once:
    --info, else the first index given (an _info.json or a dataset folder), else the one beside
    the shards (`find_info_url`). Its lies are refused here (`read_info`)."""
    urls, indexes = _expand(config.shards, config.split, config)
    info_url = config.info or next(iter(indexes), None) or find_info_url(urls, config)
    if info_url is None:
        return ResolvedData(urls, None, None)
    info = indexes.get(info_url) or read_info(info_url, config.split, config)
    return ResolvedData(urls, info.select(urls), info_url)


def _local_glob(url: str) -> list[str]:
    """A local path with `*`, `?` or `[...]` becomes the sorted files it matches; URLs stay.

    A local path that is not a file fails here, at once, rather than after retries."""
    if "://" in url or url.startswith("pipe:"):
        return [url]
    if not any(c in url for c in "*?["):
        if os.path.isdir(url):
            raise ValueError(
                f"--shards {url!r} is a folder without {INFO_NAME}: pass a built dataset "
                f"folder or its shards, e.g. '{url.rstrip('/')}/*/*.tar'"
            )
        if not os.path.exists(url):
            raise ValueError(f"--shards {url!r}: no such file; check the path")
        return [url]
    matches = sorted(glob.glob(url))
    if not matches:
        raise ValueError(f"--shards {url!r} matches no file")
    return matches


def _local_exists(path: str) -> bool:
    return os.path.isfile(path)


def folder_info(folder: str) -> str | None:
    """The index of a local dataset folder: FOLDER/data/_info.json (the Hub layout) or
    FOLDER/_info.json (a folder of bin folders); None when it holds neither."""
    for candidate in (posixpath.join(folder, "data", INFO_NAME), posixpath.join(folder, INFO_NAME)):
        if _local_exists(candidate):
            return candidate
    return None


def find_info_url(shard_urls: Sequence[str], config: DataConfig | None = None) -> str | None:
    """`_info.json` of a dataset laid out as `root/<bin>/<shard>.tar` (or `root/<shard>.tar`)."""
    first = shard_urls[0]
    if first.startswith("pipe:"):
        return None
    candidates = list(dict.fromkeys([_join(first, f"../{INFO_NAME}"), _join(first, INFO_NAME)]))
    for candidate in candidates:
        try:
            with open_url(candidate, config or DataConfig()):
                return candidate
        except NetworkDisabledError:
            raise
        except ShardUnreachableError:
            continue
    return None


def shard_key(url: str) -> str:
    """`<bin>/<shard>.tar` of a URL: how _info.json names a shard, however it is reached."""
    path = urllib.parse.urlparse(url).path if "://" in url else url
    return "/".join(path.rstrip("/").split("/")[-2:])


def dataset_info(
    config: DataConfig, urls: Sequence[str], info_url: str | None | bool = False
) -> DatasetInfo | None:
    """The dataset's _info.json (--info, else found next to the shards), if there is one,
    narrowed to the shards `urls` select: num_samples is what one epoch of them reads.
    `info_url`: where the caller already found it (None: not found), not looked for again."""
    if info_url is False:
        info_url = config.info or find_info_url(urls, config)
    return read_info(info_url, config.split, config).select(urls) if info_url else None


def expected_lengths(info: DatasetInfo | None) -> dict[str, int]:
    if info is None or len(info.shard_lengths) != len(info.filenames):
        return {}
    return {shard_key(u): n for u, n in zip(info.filenames, info.shard_lengths, strict=True)}


def epoch_length(
    config: DataConfig, info: DatasetInfo | None, world_size: int, workers: int | None = None
) -> int | None:
    """Samples one epoch reads across ranks: --samples-per-epoch, else the selected shards'
    samples; without --resampled, each of the world_size x workers shares reads an equal
    window of ceil(samples / shares), so the remainder's padding counts too. `workers`: the
    loader processes per rank (default --workers)."""
    if config.samples_per_epoch:
        return config.samples_per_epoch
    if info is None:
        return None
    if config.resampled or len(info.shard_lengths) != len(info.filenames):
        return info.num_samples
    shares = world_size * max(1, config.workers if workers is None else workers)
    return shares * -(-info.num_samples // shares)


def epoch_samples(config: DataConfig, urls: Sequence[str]) -> int | None:
    """Samples per epoch: --samples-per-epoch, else the selected shards' samples (_info.json)."""
    if config.samples_per_epoch:
        return config.samples_per_epoch
    info = dataset_info(config, urls)
    return info.num_samples if info else None


MAX_LABEL_BYTES = 1 << 20  # a sample's .json or .cls: a catalog row or a class id, not data


def scan_sources(urls: Sequence[str], config: DataConfig) -> tuple[dict[str, Any], ...]:
    """The sources of data whose _info.json lists none, counted from the samples: each one's
    .json names its source and its .cls its class id. One read of every shard (its other
    members skipped); a shard that cannot be read is left out with a warning, as the stream
    would skip it. Entries as _info.json's `sources` ({id, class_id, samples}), by id."""
    log.warning(
        "_info.json lists no sources: counting them in the samples of %d shards", len(urls)
    )
    samples: Counter[str] = Counter()
    classes: dict[str, str] = {}  # source -> its class id (the .cls text)
    for url in dict.fromkeys(urls):
        try:
            labels = _shard_labels(url, config)
        except NetworkDisabledError:
            raise
        except (ShardUnreachableError, ValueError, OSError) as exc:
            log.warning("sources of %s not counted: %s", redact_url(url), exc)
            continue
        for source, class_id in labels:
            samples[source] += 1
            if classes.setdefault(source, class_id) != class_id:
                raise ValueError(
                    f"{redact_url(url)}: samples of source {source!r} carry class ids "
                    f"{classes[source]} and {class_id} (.cls): their source cannot be told"
                )
    if len(set(classes.values())) != len(classes) or not all(
        c.isdigit() for c in classes.values()
    ):
        raise ValueError(
            "the samples' .cls do not tell their sources apart (one class id per source): "
            "--mix needs a dataset written by `inf590k shard`, or its _info.json"
        )
    return tuple(
        {"id": source, "class_id": int(classes[source]), "samples": samples[source]}
        for source in sorted(samples)
    )


def _shard_labels(url: str, config: DataConfig) -> list[tuple[str, str]]:
    """(source of its .json, its .cls text) of each sample of one shard, in order."""
    members: dict[str, dict[str, bytes]] = {}
    wanted = lambda name: name.endswith((".json", ".cls"))  # noqa: E731
    with open_url(url, config) as stream:
        for name, data in tar_members(stream, wanted, max_size=MAX_LABEL_BYTES):
            key, extension = base_plus_ext(name)
            members.setdefault(key, {})[extension] = data
    labels = []
    for key, parts in members.items():
        try:
            source = json.loads(parts.get("json", b"{}")).get("source")
        except (ValueError, AttributeError):
            source = None
        if not isinstance(source, str) or not source:
            raise ValueError(f"sample {key} names no source in its .json")
        labels.append((source, parts.get("cls", b"").decode("ascii", "replace").strip()))
    return labels
