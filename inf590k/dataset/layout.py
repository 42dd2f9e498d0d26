"""The dataset folder's format: the contract between the build side (inf590k) and training.

A dataset folder is the Hugging Face dataset repo as it is served::

    README.md                                    the card: a config per bin + `all`, features
    data/_info.json                              timm's index (names relative to data/) + sources
    data/<bin>/<bin>-000000.tar                  {uid}.cls, {uid}.json, [{uid}.npy], {uid}.png
    metadata/shards/<bin>/<bin>-000000.parquet   the sidecar rows of that shard, in tar order
    metadata/shards/<bin>/<bin>-000000_stats.json  count, bytes, sha256, plan: the done marker
    metadata/sizes.json                          data/<bin>/<shard>.tar -> samples
    metadata/SHA256SUMS                          `sha256sum -c metadata/SHA256SUMS` in the folder
    metadata/sources.json                        the sources table: stable class ids, licences
    metadata/counts.json, catalog.parquet, LICENSES.md, files.json, report/

A folder may be someone else's (downloaded from the Hub, handed over): every name read from
its index files must be a plain relative path (`check_relpath`), and every number a count
that adds up (`read_splits`). This module uses the standard library only, so that the
training side can import it.
"""

from __future__ import annotations

import os
import re
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

CARD_FILENAME = "README.md"
DATA_DIRNAME = "data"
METADATA_DIRNAME = "metadata"
INFO_FILENAME = "_info.json"
INFO_PATH = f"{DATA_DIRNAME}/{INFO_FILENAME}"
SIDECAR_DIR = f"{METADATA_DIRNAME}/shards"
SIZES_PATH = f"{METADATA_DIRNAME}/sizes.json"
SUMS_PATH = f"{METADATA_DIRNAME}/SHA256SUMS"
SOURCES_PATH = f"{METADATA_DIRNAME}/sources.json"
COUNTS_PATH = f"{METADATA_DIRNAME}/counts.json"
CATALOG_PATH = f"{METADATA_DIRNAME}/catalog.parquet"
LICENSES_PATH = f"{METADATA_DIRNAME}/LICENSES.md"
FILES_PATH = f"{METADATA_DIRNAME}/files.json"
REPORT_DIR = f"{METADATA_DIRNAME}/report"
STATS_SUFFIX = "_stats.json"
# The `sources` entries of _info.json: the contract fields of the sources table.
INFO_SOURCE_KEYS = ("id", "class_id", "name", "license", "license_link", "modality", "samples")

# One path segment as the toolkit writes it or accepts it from an index: no separators, no
# URL syntax (`%`, `?`, `#`, `:`), no spaces or control characters.
SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_.+=,@-]+")


class UnsafePathError(ValueError):
    """A path read from a file (an index, a list of owned files) would leave its folder."""


class InfoError(ValueError):
    """_info.json says something that cannot be true; the message names the file and field."""


def check_relpath(relpath: object, what: str = "path") -> str:
    """`relpath` when it is a plain relative POSIX path (segments of SAFE_SEGMENT, no `.` or
    `..`, no leading `/`); UnsafePathError naming `what` otherwise."""
    segments = relpath.split("/") if isinstance(relpath, str) else []
    if not segments or any(s in ("", ".", "..") or not SAFE_SEGMENT.fullmatch(s) for s in segments):
        raise UnsafePathError(
            f"{what} {relpath!r} is not a plain relative path inside the folder (absolute, `..`, "
            "empty or unusual characters): the file naming it is damaged or hostile"
        )
    return relpath


def inside(root: Path, relpath: str, what: str = "path") -> Path:
    """`root/relpath`, refused unless it stays inside `root`: a plain relative path (see
    `check_relpath`) with no symbolic link on the way, since a link could lead anywhere (the
    root itself is the user's choice and may be one). Parts that do not exist yet are fine."""
    path = Path(root)
    for segment in check_relpath(relpath, what).split("/"):
        path = path / segment
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode):
            raise UnsafePathError(
                f"{path} is a symbolic link: the toolkit reads, writes, deletes and uploads only "
                "plain files inside the folder; replace the link with the file itself"
            )
    return path


def symlinks_under(root: Path) -> list[str]:
    """Every symbolic link under `root` (files and folders, not followed), as sorted POSIX
    paths relative to it."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                found.append(Path(os.path.relpath(path, root)).as_posix())
    return sorted(found)


def dataset_file(dataset: Path, relpath: str) -> Path:
    """A file of a dataset folder by its path relative to it, refused (UnsafePathError) when
    the name would lead outside the folder or through a symbolic link. Every path a command
    reads, writes, deletes or uploads in a dataset folder comes through here: names come from
    the folder's own index files, which may be someone else's."""
    return inside(dataset, relpath, "dataset file")


def is_count(value: object) -> bool:
    """A JSON integer >= 0 (not a bool, not a float, not a string)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class SplitIndex:
    """One split of _info.json, checked: names relative to data/, one positive length each."""

    name: str
    num_samples: int
    filenames: tuple[str, ...]
    shard_lengths: tuple[int, ...]


def _field(info: dict, key: str, kind: type, where: str) -> object:
    value = info.get(key)
    if not isinstance(value, kind):
        raise InfoError(f"{where}: field {key} is {value!r}, not a {kind.__name__}")
    return value


def _read_split(name: str, entry: object, where: str) -> SplitIndex:
    field = f"splits.{name}"
    if not isinstance(entry, dict):
        raise InfoError(f"{where}: field {field} is not an object")
    filenames = _field(entry, "filenames", list, f"{where}: {field}")
    lengths = _field(entry, "shard_lengths", list, f"{where}: {field}")
    if len(filenames) != len(lengths):
        raise InfoError(
            f"{where}: field {field}.shard_lengths has {len(lengths)} entries for "
            f"{len(filenames)} filenames"
        )
    for filename, length in zip(filenames, lengths, strict=True):
        check_relpath(filename, f"{where}: {field}.filenames entry")
        if not filename.endswith(".tar"):
            raise InfoError(f"{where}: {field}.filenames entry {filename!r} is not a .tar shard")
        if not is_count(length) or length == 0:
            raise InfoError(
                f"{where}: field {field}.shard_lengths gives {filename} {length!r} samples, "
                "not a positive count"
            )
    total = entry.get("num_samples")
    if not is_count(total) or total != sum(lengths):
        raise InfoError(
            f"{where}: field {field}.num_samples is {total!r}, but its shard_lengths add up "
            f"to {sum(lengths)}"
        )
    return SplitIndex(str(entry.get("name", name)), total, tuple(filenames), tuple(lengths))


def read_splits(info: object, where: str = INFO_PATH) -> dict[str, SplitIndex]:
    """Every split of a parsed _info.json, checked (InfoError or UnsafePathError naming the
    field): shard names plain relative .tar paths, each listed once across the splits,
    lengths positive counts, num_samples their sum."""
    if not isinstance(info, dict):
        raise InfoError(f"{where} is not a JSON object")
    splits = _field(info, "splits", dict, where)
    read = {name: _read_split(name, entry, where) for name, entry in splits.items()}
    listed = Counter(f for split in read.values() for f in split.filenames)
    repeated = sorted(f for f, times in listed.items() if times > 1)
    if repeated:
        raise InfoError(f"{where}: shard {repeated[0]} is listed more than once")
    return read


def read_info_sources(info: object, where: str = INFO_PATH) -> list[dict]:
    """The `sources` list of a parsed _info.json ([] when absent), each entry checked to
    carry the contract fields with the right types."""
    if not isinstance(info, dict) or info.get("sources") is None:
        return []
    sources = _field(info, "sources", list, where)
    for index, entry in enumerate(sources):
        if not isinstance(entry, dict) or set(entry) != set(INFO_SOURCE_KEYS):
            raise InfoError(f"{where}: field sources[{index}] does not hold {INFO_SOURCE_KEYS}")
        if not isinstance(entry["id"], str) or not is_count(entry["class_id"]):
            raise InfoError(f"{where}: field sources[{index}] has a bad id or class_id")
        if not is_count(entry["samples"]):
            raise InfoError(f"{where}: field sources[{index}].samples is not a count")
    return sources
