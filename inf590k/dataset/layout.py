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

import json
import os
import re
import stat
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

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


# ----------------------------------------------------------------------------- the catalog row

# One row per scanned file in the build's catalog; the rows of each shard (metadata/shards/) and
# the whole catalog (metadata/catalog.parquet) keep this schema in the dataset folder.
CATALOG_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),  # stable: source + relpath, no dots
        pa.field("source", pa.string(), nullable=False),
        pa.field("relpath", pa.string(), nullable=False),  # inside the root or archive
        pa.field("frame", pa.int32()),  # video frame index, -1 for still images
        pa.field("split", pa.string()),  # split folder of the source if any (train/val/test)
        pa.field("license", pa.string()),
        pa.field("modality", pa.string()),  # lwir, mwir, nir, synthetic
        pa.field("tags", pa.list_(pa.string())),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),  # why excluded / rejected / duplicate; "" when ok
        pa.field("file_bytes", pa.int64()),
        pa.field("file_sha256", pa.string()),
        pa.field("pixel_sha256", pa.string()),  # of the stored 1-channel pixels
        pa.field("width", pa.int32()),  # after crop: what a shard stores
        pa.field("height", pa.int32()),
        pa.field("orig_width", pa.int32()),
        pa.field("orig_height", pa.int32()),
        pa.field("orig_channels", pa.int8()),
        pa.field("orig_dtype", pa.string()),  # uint8, uint16, float32
        pa.field("bit_depth", pa.int8()),  # 8 or 16, of the decoded file
        pa.field("grey_diff", pa.float32()),  # mean |channel difference| of 3-channel files
        pa.field("normalisation", pa.string()),  # e.g. "none", "p1-p99 stretch 812..3420"
        pa.field("crop_box", pa.list_(pa.int32(), 4)),  # x0, y0, x1, y1 in the original
        pa.field("entropy", pa.float32()),  # global 256-bin entropy of the 8-bit view, bits
        pa.field("phash", pa.string()),  # imagehash 64-bit pHash of the 8-bit view, 16 hex
        pa.field("dhash", pa.string()),
        pa.field("dup_group", pa.int64()),  # set by dedupe; -1 when unique
        pa.field("res_bin", pa.string()),  # set by bin
    ]
)

COLUMN_NAMES = tuple(CATALOG_SCHEMA.names)


# ----------------------------------------------------------------------------- the folder's files

REPORT_FILES = ("report.json", "resolution_hist.png", "entropy_hist.png", "sample_grid.png")


WRITTEN_BY = "inf590k shard"


# What a copy made by `hf download --local-dir` (or a git clone of the repo) adds beside ours.
HUB_EXTRAS = (".gitattributes", ".cache/", ".git/", ".huggingface/")


def _shard_stem(relpath: str) -> str:
    """`<bin>/<bin>-000000` of a shard name, checked: a plain relative path ending in .tar."""
    check_relpath(relpath, "shard name")
    if not relpath.endswith(".tar") or relpath == ".tar":
        raise UnsafePathError(f"shard name {relpath!r} does not end in .tar")
    return relpath[: -len(".tar")]


def tar_path(out: Path, relpath: str) -> Path:
    return dataset_file(out, f"{DATA_DIRNAME}/{_shard_stem(relpath)}.tar")


def sidecar_path(out: Path, relpath: str) -> Path:
    """metadata/shards/<bin>/<bin>-000000.parquet of data/<bin>/<bin>-000000.tar."""
    return dataset_file(out, f"{SIDECAR_DIR}/{_shard_stem(relpath)}.parquet")


def stats_path(out: Path, relpath: str) -> Path:
    return dataset_file(out, f"{SIDECAR_DIR}/{_shard_stem(relpath)}{STATS_SUFFIX}")


def shard_files(relpath: str) -> list[str]:
    """The dataset-relative paths one shard writes: tar, sidecar rows, stats."""
    stem = _shard_stem(relpath)
    return [
        f"{DATA_DIRNAME}/{relpath}",
        f"{SIDECAR_DIR}/{stem}.parquet",
        f"{SIDECAR_DIR}/{stem}{STATS_SUFFIX}",
    ]


def index_files() -> list[str]:
    """The dataset-relative paths every dataset folder has besides its shards."""
    return [
        CARD_FILENAME,
        INFO_PATH,
        SIZES_PATH,
        SUMS_PATH,
        SOURCES_PATH,
        COUNTS_PATH,
        CATALOG_PATH,
        LICENSES_PATH,
        FILES_PATH,
        *(f"{REPORT_DIR}/{name}" for name in REPORT_FILES),
    ]


def is_hub_extra(relpath: str) -> bool:
    return any(relpath == e or relpath.startswith(e) for e in HUB_EXTRAS if e.endswith("/")) or (
        relpath in HUB_EXTRAS
    )


def folder_files(folder: Path) -> list[str]:
    """Every file under `folder`, as sorted POSIX paths relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())


def read_owned(dataset: Path) -> set[str] | None:
    """The files metadata/files.json says `inf590k` wrote here; None when there is no such index.

    The index decides what `shard` may replace or delete and what `publish` uploads, so a name
    in it that would lead outside the folder (`..`, an absolute path, a link) is refused for
    the whole folder (UnsafePathError), never skipped."""
    try:
        index = json.loads(dataset_file(dataset, FILES_PATH).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or index.get("written_by") != WRITTEN_BY:
        return None
    files = index.get("files", [])
    if not isinstance(files, list):
        raise UnsafePathError(f"{Path(dataset) / FILES_PATH}: `files` is not a list of paths")
    for name in files:
        check_relpath(name, f"{Path(dataset) / FILES_PATH} names")
    return set(files)


# ----------------------------------------------------------------------------- index files

def read_info(dataset: Path) -> dict:
    """data/_info.json of a dataset folder, with a one-line error when it is not one."""
    path = dataset_file(dataset, INFO_PATH)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: {dataset} is not a dataset folder; write one with "
            "`inf590k shard --build BUILD --out FOLDER`"
        )
    return _read_json(path, "re-run `inf590k shard` for it, or download it again")


def _read_json(path: Path, fix: str) -> object:
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): {fix}") from error


def info_shards(info: object) -> list[tuple[str, int]]:
    """(relpath under data/, samples) of every shard _info.json lists, all splits; names and
    counts checked (`layout.read_splits`: a ValueError naming the field)."""
    return [
        (name, length)
        for split in read_splits(info).values()
        for name, length in zip(split.filenames, split.shard_lengths, strict=True)
    ]


def read_sources_table(dataset: Path) -> list[dict]:
    path = dataset_file(dataset, SOURCES_PATH)
    if not path.is_file():
        return []
    table = _read_json(path, "re-run `inf590k shard` for this folder, or download it again")
    if not isinstance(table, list) or not all(
        isinstance(e, dict) and "class_id" in e for e in table
    ):
        raise ValueError(f"{path} is not a sources table: re-run `inf590k shard` for this folder")
    return table


def info_sources(table: list[dict]) -> list[dict]:
    """The `sources` list of _info.json: the sources that have samples, contract fields only."""
    keys = ("id", "class_id", "name", "license", "license_link", "modality", "samples")
    return [{k: entry.get(k) for k in keys} for entry in table if entry["samples"] > 0]


def read_sidecars(dataset: Path) -> pa.Table:
    """The sidecar rows of every shard data/_info.json lists (catalog schema), in its order."""
    info = read_info(dataset)
    paths = [sidecar_path(dataset, name) for name, _ in info_shards(info)]
    if not paths:
        raise FileNotFoundError(f"{Path(dataset) / INFO_PATH} lists no shards: run `inf590k shard`")
    return pa.concat_tables(pq.read_table(p, schema=CATALOG_SCHEMA) for p in paths)


# ----------------------------------------------------------------------------- sample form

DATASET_WIDE_FIELDS = ("status", "reason", "split")  # same for every sample: not in .json


SAMPLE_FIELDS = tuple(n for n in COLUMN_NAMES if n not in DATASET_WIDE_FIELDS)


def _json_default(field: pa.Field) -> object:
    """The value a null becomes, so every sample has the same JSON type per key."""
    if pa.types.is_string(field.type):
        return ""
    if pa.types.is_integer(field.type):
        return -1
    if pa.types.is_floating(field.type):
        return -1.0
    if pa.types.is_list(field.type) or pa.types.is_fixed_size_list(field.type):
        return []
    raise TypeError(f"no JSON default for catalog column {field.name} ({field.type})")


def _is_string_list(field: pa.Field) -> bool:
    return pa.types.is_list(field.type) and pa.types.is_string(field.type.value_type)


def sample_json(row: Mapping) -> bytes:
    """The per-sample catalog fields as the sample's JSON: sorted keys, stable JSON types.

    Nulls become "", -1, -1.0 or [] by column type, and string lists (`tags`) are joined with
    commas into one string, so every sample has the same keys and types (readers that infer a
    schema from the first samples would otherwise fail on a later one). The sidecar parquet
    keeps the list and the dataset-wide fields.
    """
    record = {}
    for field in CATALOG_SCHEMA:
        if field.name in DATASET_WIDE_FIELDS:
            continue
        value = row.get(field.name)
        if _is_string_list(field):
            value = ",".join(tag for tag in value or [] if tag is not None)  # a null tag: none
        record[field.name] = _json_default(field) if value is None else value
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def json_feature_types() -> dict[str, str]:
    """The `datasets` dtype of every .json field ("list<int32>" for crop_box)."""
    types = {}
    for field in CATALOG_SCHEMA:
        if field.name in DATASET_WIDE_FIELDS:
            continue
        if _is_string_list(field):
            types[field.name] = "string"
        elif pa.types.is_list(field.type) or pa.types.is_fixed_size_list(field.type):
            types[field.name] = f"list<{field.type.value_type}>"
        else:
            types[field.name] = str(field.type)
    return dict(sorted(types.items()))
