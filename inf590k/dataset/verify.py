"""Verify a dataset folder: hashes, index files, sidecars, stray files, every sample re-read.

Each tar is read once, as a stream: its sha256 is computed from the bytes the tar reader
consumes, and one sample at a time is held, so a worker's memory does not grow with the shard.

Works on the folder `inf590k shard` wrote and on a copy as `hf download --repo-type dataset
--local-dir` leaves it (`.gitattributes` and `.cache/` are the Hub's, not strays). Each
problem is one line naming the file. `VerifyReport.ok` is False when there is any; the CLI
exits non-zero then.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import pyarrow.parquet as pq

from inf590k.dataset.layout import (
    CARD_FILENAME,
    CATALOG_SCHEMA,
    COUNTS_PATH,
    FILES_PATH,
    INFO_PATH,
    SIZES_PATH,
    SOURCES_PATH,
    SUMS_PATH,
    dataset_file,
    folder_files,
    index_files,
    info_shards,
    info_sources,
    is_hub_extra,
    read_info_sources,
    read_sources_table,
    sample_json,
    shard_files,
    sidecar_path,
    stats_path,
    symlinks_under,
    tar_path,
)
from inf590k.execution import progress
from inf590k.execution.units import ExecutionOptions, run_units
from inf590k.fsutil import file_sha256, plural
from inf590k.inputs.headers import RejectedImage, check_before_decode

BASE_MEMBERS = ("cls", "json", "png")
READ_BLOCK = 1 << 20  # bytes per read of the end of a tar
MAX_MEMBER_BYTES = 256 << 20  # a larger member is reported, not read (a 16-bit 8K frame: 128 MiB)
REQUIRED_FILES = (CARD_FILENAME, SOURCES_PATH, COUNTS_PATH, FILES_PATH)  # besides index and sums


@dataclass(frozen=True)
class VerifyConfig:
    """One field per `inf590k verify` option."""

    dataset: Path
    decode: bool = True  # re-read every sample (PNG decode, JSON, class); off: hashes only
    execution: ExecutionOptions = field(default_factory=ExecutionOptions)


@dataclass
class VerifyReport:
    dataset: Path
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        if self.ok:
            return (
                f"verify: OK, {plural(self.shards, 'shard')}, "
                f"{plural(self.samples, 'sample')} in {self.dataset}"
            )
        first = "; ".join(self.problems[:3])
        more = f" (+{len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
        return f"verify: {plural(len(self.problems), 'problem')} in {self.dataset}: {first}{more}"


@dataclass(frozen=True)
class _ShardCheck:
    dataset: Path
    relpath: str  # under data/, as _info.json names it
    expected_sha256: str | None  # from SHA256SUMS
    expected_count: int  # from _info.json
    classes: dict[str, int]  # source -> class id (the sources table)
    raw: bool  # samples of 16-bit files have an npy member
    decode: bool


def read_sums(path: Path) -> dict[str, str]:
    """`sha256sum` lines -> {relative path: digest}."""
    sums = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise ValueError(f"{path.name} line {number} is not `<sha256>  <path>`")
        sums[name] = digest
    return sums


class _HashingReader:
    """A file read front to back, hashing every byte handed out (one pass: hash and tar)."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        return data

    def finish(self) -> str:
        """Hash what is left (what tarfile did not need: the end-of-archive padding)."""
        while self.read(READ_BLOCK):
            pass
        return self.digest.hexdigest()


MAX_HEADER_BYTES = 1 << 20  # a pax or GNU long-name header holds names, not data
_EXTENDED_HEADERS = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses an extended header over MAX_HEADER_BYTES before reading it:
    `tarfile` reads a pax or long-name header whole, so a hostile one of a few GB would be
    held in memory (three times over) by the stream reader."""

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED_HEADERS and self.size > MAX_HEADER_BYTES:
            raise tarfile.HeaderError(
                f"an extended header of {self.size} bytes at byte {self.offset}, over "
                f"{MAX_HEADER_BYTES} (not read)"
            )
        return super()._proc_member(tar)


def _member_problem(member: tarfile.TarInfo, key: str, members: dict[str, bytes]) -> str | None:
    """Why a member cannot be one of a sample's files (read as is otherwise), or None."""
    if not member.isfile():
        return f"sample {key}: member {member.name!r} is not a plain file (a link or folder)"
    extension = member.name.partition(".")[2]
    if not key or not extension or "/" in member.name:
        return f"member {member.name!r} is not named <sample key>.<extension>"
    if extension in members:
        return f"sample {key}: member {member.name} appears more than once"
    if member.size > MAX_MEMBER_BYTES:
        return f"sample {key}: member {member.name} holds {member.size} bytes, over {MAX_MEMBER_BYTES} (not read)"
    return None


def stream_samples(
    tar: tarfile.TarFile, problems: list[str]
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample, members grouped while they are next to each other:
    one sample in memory at a time. A key seen before, a member that is not a plain file, is
    badly named, repeated or over the size limit is a problem (one line, appended before its
    sample is yielded); such a member is not read."""
    key, members, seen = None, {}, set()
    for member in tar:
        name_key, _, extension = member.name.partition(".")
        if name_key != key:
            if key is not None:
                yield key, members
            if name_key in seen:
                problems.append(f"sample {name_key}: its members are not next to each other")
            key, members = name_key, {}
            seen.add(name_key)
        problem = _member_problem(member, name_key, members)
        if problem:
            problems.append(problem)
            continue
        members[extension] = tar.extractfile(member).read()  # a plain file: never None
    if key is not None:
        yield key, members


def _decode(data: bytes) -> tuple[np.ndarray | None, str]:
    """(the PNG member decoded or None, ''), or (None, why) for a member that ingest would
    refuse before OpenCV: cut, a chunk claiming more bytes than the file holds (OpenCV would
    allocate that length first), a lying header, a decode over the byte limit."""
    # ingest's checks, imported here: the decode is verify's only use of them
    try:
        check_before_decode(data)
    except RejectedImage as refused:
        return None, str(refused)
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), ""


def sample_problem(
    key: str, members: dict[str, bytes], row: dict | None, classes: dict[str, int], raw: bool
) -> str | None:
    """What is wrong with one sample against its sidecar row, or None.

    `raw`: the dataset keeps raw 16-bit frames (`npy` member of every 16-bit row).
    """
    raw_expected = raw and (row or {}).get("bit_depth") == 16
    expected = sorted((*BASE_MEMBERS, "npy") if raw_expected else BASE_MEMBERS)
    if sorted(members) != expected:
        return f"sample {key} has members {sorted(members)}, expected {expected}"
    if row is None:
        return f"sample {key} has no row in its sidecar"
    if members["json"] != sample_json(row):
        return f"sample {key}: its JSON disagrees with its sidecar row (edited?)"
    if classes and members["cls"] != str(classes.get(row["source"], "?")).encode():
        return f"sample {key}: class {members['cls']!r} is not the id of source {row['source']!r}"
    image, refused = _decode(members["png"])
    if refused:
        return f"sample {key}: the PNG is refused before decoding ({refused})"
    if image is None or image.ndim != 2 or image.dtype != np.uint8:
        return f"sample {key}: the PNG does not decode to a 1-channel 8-bit image"
    if image.shape != (row["height"], row["width"]):
        return f"sample {key}: PNG {image.shape[1]}x{image.shape[0]}, its row says {row['width']}x{row['height']}"
    if "npy" in members:
        try:
            raw = np.load(io.BytesIO(members["npy"]), allow_pickle=False)
        except ValueError as error:
            return f"sample {key}: unreadable npy member ({error})"
        if raw.dtype != np.uint16 or raw.shape != image.shape:
            return f"sample {key}: npy member is {raw.dtype} {raw.shape}, expected uint16 {image.shape}"
    return None


def _check_samples(
    check: _ShardCheck, rows: list[dict] | None
) -> tuple[list[str], list[str], str]:
    """One streaming pass over a tar: members, JSON vs sidecar, class, PNG and npy of each
    sample, and the file's sha256. -> (uids, problems, sha256). Memory: one sample and
    tarfile's buffer, whatever the shard's size."""
    name = f"data/{check.relpath}"
    by_uid = {r["uid"]: r for r in rows or []}
    order: list[str] = []
    problems: list[str] = []
    with open(tar_path(check.dataset, check.relpath), "rb") as handle:
        reader = _HashingReader(handle)
        try:
            with tarfile.open(fileobj=reader, mode="r|", tarinfo=_BoundedTarInfo) as tar:  # type: ignore[arg-type]
                stream_problems: list[str] = []
                for key, members in stream_samples(tar, stream_problems):
                    order.append(key)
                    damaged = bool(stream_problems)  # said once: its content is not judged
                    problems += [f"{name}: {p}" for p in stream_problems]
                    stream_problems.clear()
                    if check.decode and rows is not None and not damaged:
                        problem = sample_problem(key, members, by_uid.get(key), check.classes, check.raw)
                        if problem:
                            problems.append(f"{name}: {problem}")
                    progress.tick()
                problems += [f"{name}: {p}" for p in stream_problems]
        except (tarfile.TarError, OSError, EOFError) as error:
            problems.append(f"{name}: unreadable tar ({error}): the shard is truncated or corrupt")
            return [], problems, reader.finish()
        digest = reader.finish()
    if len(order) != check.expected_count:
        problems.append(
            f"{name}: count mismatch: {len(order)} samples, {INFO_PATH} says {check.expected_count}"
        )
    return order, problems, digest


def _stats_problems(check: _ShardCheck) -> list[str]:
    path = tar_path(check.dataset, check.relpath)
    stats_file = stats_path(check.dataset, check.relpath)
    name = f"data/{check.relpath}"
    if not stats_file.exists():
        return [f"{name}: missing sidecar {stats_file.name}"]
    try:
        stats = json.loads(stats_file.read_text())
    except ValueError:
        return [f"{stats_file.name}: not valid JSON"]
    problems = []
    if stats.get("bytes") != path.stat().st_size:
        problems.append(
            f"{name}: {path.stat().st_size} bytes, its stats say {stats.get('bytes')} (truncated?)"
        )
    if stats.get("count") != check.expected_count:
        problems.append(
            f"{stats_file.name}: count {stats.get('count')} != {check.expected_count} in {INFO_PATH}"
        )
    return problems


def check_shard(check: _ShardCheck) -> tuple[int, list[str], dict[tuple[str, str], int]]:
    """All checks of one shard: (samples read, problems, sidecar rows per (source, licence))."""
    path = tar_path(check.dataset, check.relpath)
    name = f"data/{check.relpath}"
    if not path.exists():
        progress.tick(check.expected_count)
        return 0, [f"{name}: missing shard"], {}
    problems = []
    parquet = sidecar_path(check.dataset, check.relpath)
    rows = None
    if parquet.exists():
        rows = pq.read_table(parquet, schema=CATALOG_SCHEMA).to_pylist()
    uids, sample_problems, digest = _check_samples(check, rows)  # hashes as it reads
    if check.expected_sha256 is None:
        problems.append(f"{name}: not listed in {SUMS_PATH}")
    elif digest != check.expected_sha256:
        problems.append(f"{name}: sha256 mismatch (changed, truncated or corrupt)")
    problems += _stats_problems(check)
    if rows is None:
        problems.append(f"{name}: missing sidecar {parquet.name}")
    problems += sample_problems
    if rows is not None and not any("unreadable tar" in p for p in sample_problems):
        if [r["uid"] for r in rows] != uids:
            problems.append(
                f"{parquet.name}: {len(rows)} rows do not match the tar's {len(uids)} samples"
            )
    licences = Counter((r["source"], r["license"] or "") for r in rows or [])
    return len(uids), problems, dict(licences)


def _index_problems(
    dataset: Path, info: object, sums: dict[str, str]
) -> tuple[list[tuple[str, int]], list[str]]:
    """Shards listed by _info.json (relpath, count) and problems of the index files themselves.

    A name that would leave the folder, a length that is not a positive count or a total that
    does not add up stops here: nothing of such an index is read further."""
    try:
        shards = info_shards(info)
    except ValueError as err:
        return [], [str(err)]
    problems = []
    if not shards:
        problems.append(f"{INFO_PATH}: lists no shards")
    sizes_path = dataset_file(dataset, SIZES_PATH)
    if not sizes_path.exists():
        problems.append(f"{SIZES_PATH}: missing")
    elif json.loads(sizes_path.read_text()) != {f"data/{n}": c for n, c in shards}:
        problems.append(f"{SIZES_PATH}: does not match {INFO_PATH}")
    for name in REQUIRED_FILES:
        if not dataset_file(dataset, name).is_file():
            problems.append(f"{name}: missing (`inf590k shard` writes it)")
    tars = {f"data/{n}" for n, _ in shards}
    for name in sorted(sums):
        if name in tars:
            continue  # hashed with its shard
        path = dataset_file(dataset, name)
        if not path.is_file():
            problems.append(f"{name}: listed in {SUMS_PATH} but missing")
        elif file_sha256(path) != sums[name]:
            problems.append(f"{name}: sha256 mismatch")
    return shards, problems


def stray_files(dataset: Path, shards: list[tuple[str, int]]) -> list[str]:
    """Files that do not belong: neither index files nor files of a listed shard."""
    allowed = set(index_files()) | {p for name, _ in shards for p in shard_files(name)}
    return [p for p in folder_files(dataset) if p not in allowed and not is_hub_extra(p)]


def _sources_table(dataset: Path, problems: list[str]) -> list[dict]:
    """metadata/sources.json; [] (and a problem) when unreadable: the class check is skipped."""
    try:
        table = read_sources_table(dataset)
        for entry in table:
            int(entry["class_id"])
        return table
    except (ValueError, KeyError, TypeError) as error:
        problems.append(f"{SOURCES_PATH}: unreadable ({error})")
        return []


def _add(
    report: VerifyReport,
    licences: Counter,
    count: int,
    problems: list[str],
    shard_licences: dict[tuple[str, str], int],
) -> None:
    report.samples += count
    report.problems += problems
    licences.update(shard_licences)


def _run_checks(checks: list[_ShardCheck], options: ExecutionOptions, report: VerifyReport) -> Counter:
    """Check every shard into `report`; returns the sidecar rows per (source, licence)."""
    licences: Counter = Counter()
    with run_units(
        options,
        preload=("inf590k.dataset.verify",),
        label="verify",
        total=sum(c.expected_count for c in checks),
        units=len(checks),
        count=lambda unit, result: result[0],
    ) as run:
        for result in run.map(check_shard, ((check,) for check in checks)):
            _add(report, licences, *result)
    return licences


def _differences(listed: list[dict], expected: list[dict]) -> str:
    """The first difference between two lists of source entries, in words."""
    by_id = {e["id"]: e for e in expected}
    for entry in listed:
        other = by_id.get(entry["id"])
        if other is None:
            return f"source {entry['id']!r} is not in the table"
        for key in entry:
            if entry[key] != other.get(key):
                return f"source {entry['id']!r}: {key} {entry[key]!r}, the table says {other.get(key)!r}"
    missing = sorted(set(by_id) - {e["id"] for e in listed})
    return f"source {missing[0]!r} is missing" if missing else "order differs"


def source_problems(info: object, table: list[dict], licences: Counter) -> list[str]:
    """_info.json's `sources` against the sources table, and the table's samples and licences
    against the sidecar rows (hashed in SHA256SUMS): training takes the weights' licence from
    these entries, so a lie in them is a problem, not a detail."""
    try:
        listed = read_info_sources(info)
    except ValueError as err:
        return [str(err)]
    if not table:
        return []
    problems = []
    if listed != info_sources(table):
        problems.append(
            f"{INFO_PATH}: field sources disagrees with {SOURCES_PATH} "
            f"({_differences(listed, info_sources(table))}): edited? re-run `inf590k shard`"
        )
    for entry in table:
        rows = {licence: n for (source, licence), n in licences.items() if source == entry["id"]}
        if sum(rows.values()) != entry.get("samples"):
            problems.append(
                f"{SOURCES_PATH}: source {entry['id']!r} says {entry.get('samples')} samples, its "
                f"sidecar rows hold {sum(rows.values())}"
            )
        stated = max((n, licence) for licence, n in rows.items() if licence)[1] if any(rows) else ""
        if stated and stated != entry.get("license"):
            problems.append(
                f"{SOURCES_PATH}: source {entry['id']!r} has licence {entry.get('license')!r}, but "
                f"its samples' rows say {stated!r}"
            )
    return problems


def verify(config: VerifyConfig) -> VerifyReport:
    dataset = Path(config.dataset)
    report = VerifyReport(dataset=dataset)
    report.problems += [
        f"{link}: a symbolic link; a dataset folder holds plain files only (a link could make "
        "`publish` upload what it points to): replace it with the file itself"
        for link in symlinks_under(dataset)
    ]
    if report.problems:
        return report  # nothing is read through a link
    for name in (INFO_PATH, SUMS_PATH):
        if not dataset_file(dataset, name).exists():
            report.problems.append(
                f"{name}: missing; is {dataset} a dataset written by `inf590k shard`?"
            )
    if report.problems:
        return report
    try:
        info = json.loads(dataset_file(dataset, INFO_PATH).read_text())
        sums = read_sums(dataset_file(dataset, SUMS_PATH))
        shards, report.problems = _index_problems(dataset, info, sums)
    except (ValueError, OSError, KeyError, TypeError, AttributeError) as err:
        report.problems.append(f"index files unreadable ({type(err).__name__}: {err})")
        return report
    if not shards:
        return report
    report.problems += [
        f"{p}: a file that does not belong to the dataset (not in {INFO_PATH} or the layout)"
        for p in stray_files(dataset, shards)
    ]
    table = _sources_table(dataset, report.problems)
    classes = {e["id"]: int(e["class_id"]) for e in table}
    raw = "npy" in info.get("members", [])
    checks = [
        _ShardCheck(dataset, name, sums.get(f"data/{name}"), count, classes, raw, config.decode)
        for name, count in shards
    ]
    report.shards = len(checks)
    licences = _run_checks(checks, config.execution, report)
    report.problems += source_problems(info, table, licences)
    return report
