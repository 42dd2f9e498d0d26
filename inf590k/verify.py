"""Verify a dataset folder: hashes, index files, sidecars, and every sample re-read.

Each problem is one line naming the file. `VerifyReport.ok` is False when there is any; the
CLI exits non-zero then.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from inf590k.fsutil import available_cores
from inf590k.shard import INFO_FILENAME, SIZES_FILENAME, STATS_SUFFIX, SUMS_FILENAME

SAMPLE_MEMBERS = ("cls", "json", "png")


@dataclass(frozen=True)
class VerifyConfig:
    """One field per `inf590k verify` option."""

    dataset: Path
    decode: bool = True  # re-read every sample (PNG decode, JSON, class); off: hashes only
    workers: int = 0  # 0: one process per core
    progress: bool = True


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
            return f"verify: OK, {self.shards} shards, {self.samples} samples in {self.dataset}"
        first = "; ".join(self.problems[:3])
        more = f" (+{len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
        return f"verify: {len(self.problems)} problems in {self.dataset}: {first}{more}"


@dataclass(frozen=True)
class _ShardCheck:
    dataset: Path
    relpath: str
    expected_sha256: str | None  # from SHA256SUMS
    expected_count: int  # from _info.json
    decode: bool


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_sums(path: Path) -> dict[str, str]:
    """`sha256sum` lines -> {relative path: digest}."""
    sums = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise ValueError(f"{path.name} line {number} is not `<sha256>  <path>`")
        sums[name] = digest
    return sums


def _check_samples(
    path: Path, relpath: str, expected_count: int, decode: bool
) -> tuple[int, list[str], list[str]]:
    """Re-read a tar: members per sample, JSON/uid, class, PNG size. -> (count, uids, problems)."""
    problems: list[str] = []
    samples: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                key, _, extension = member.name.partition(".")
                if key not in samples:
                    samples[key] = {}
                    order.append(key)
                handle = tar.extractfile(member)
                samples[key][extension] = handle.read() if handle else b""
    except (tarfile.TarError, OSError, EOFError) as error:
        return (
            len(order),
            order,
            [f"{relpath}: unreadable tar ({error}): the shard is truncated or corrupt"],
        )
    for key in order:
        members = samples[key]
        if tuple(sorted(members)) != SAMPLE_MEMBERS:
            problems.append(
                f"{relpath}: sample {key} has members {sorted(members)}, expected {list(SAMPLE_MEMBERS)}"
            )
            continue
        if not decode:
            continue
        try:
            meta = json.loads(members["json"])
            int(members["cls"])
        except ValueError as error:
            problems.append(f"{relpath}: sample {key} has a bad json or cls member ({error})")
            continue
        image = cv2.imdecode(np.frombuffer(members["png"], np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None or image.ndim != 2:
            problems.append(
                f"{relpath}: sample {key}: the PNG does not decode to a 1-channel image"
            )
        elif meta.get("uid") != key or image.shape != (meta.get("height"), meta.get("width")):
            problems.append(f"{relpath}: sample {key}: JSON uid/size does not match the PNG")
    if len(order) != expected_count:
        problems.append(
            f"{relpath}: count mismatch: {len(order)} samples, {INFO_FILENAME} says {expected_count}"
        )
    return len(order), order, problems


def check_shard(check: _ShardCheck) -> tuple[int, list[str]]:
    """All checks of one shard: (samples read, problems)."""
    path = check.dataset / check.relpath
    if not path.exists():
        return 0, [f"{check.relpath}: missing shard"]
    problems = []
    if check.expected_sha256 is None:
        problems.append(f"{check.relpath}: not listed in {SUMS_FILENAME}")
    elif sha256_file(path) != check.expected_sha256:
        problems.append(f"{check.relpath}: sha256 mismatch (changed, truncated or corrupt)")
    stats_path = path.with_name(path.name[: -len(".tar")] + STATS_SUFFIX)
    if stats_path.exists():
        try:
            stats = json.loads(stats_path.read_text())
        except ValueError:
            stats = {"bytes": "unreadable"}
            problems.append(f"{stats_path.name}: not valid JSON")
        if stats.get("bytes") != path.stat().st_size:
            problems.append(
                f"{check.relpath}: {path.stat().st_size} bytes, its stats say {stats.get('bytes')} (truncated?)"
            )
        if stats.get("count") != check.expected_count:
            problems.append(
                f"{stats_path.name}: count {stats.get('count')} != {check.expected_count} in {INFO_FILENAME}"
            )
    else:
        problems.append(f"{check.relpath}: missing sidecar {stats_path.name}")
    count, uids, sample_problems = _check_samples(
        path, check.relpath, check.expected_count, check.decode
    )
    problems += sample_problems
    parquet_path = path.with_suffix(".parquet")
    if not parquet_path.exists():
        problems.append(f"{check.relpath}: missing sidecar {parquet_path.name}")
    else:
        sidecar = pq.read_table(parquet_path, columns=["uid"]).column("uid").to_pylist()
        if sidecar != uids and not sample_problems:
            problems.append(
                f"{parquet_path.name}: {len(sidecar)} rows do not match the tar's {count} samples"
            )
        elif len(sidecar) != check.expected_count:
            problems.append(
                f"{parquet_path.name}: count mismatch: {len(sidecar)} rows, {INFO_FILENAME} says {check.expected_count}"
            )
    return count, problems


def _index_problems(
    dataset: Path, info: dict, sums: dict[str, str]
) -> tuple[list[tuple[str, int]], list[str]]:
    """Shards listed by _info.json (path, count) and problems of the index files themselves."""
    problems, shards = [], []
    for split_name, split in sorted(info.get("splits", {}).items()):
        filenames, lengths = split.get("filenames", []), split.get("shard_lengths", [])
        if len(filenames) != len(lengths):
            problems.append(
                f"{INFO_FILENAME}: split {split_name} has {len(filenames)} filenames, {len(lengths)} shard_lengths"
            )
        if split.get("num_samples") != sum(lengths):
            problems.append(
                f"{INFO_FILENAME}: split {split_name} num_samples {split.get('num_samples')} != sum of shard_lengths {sum(lengths)}"
            )
        shards += list(zip(filenames, lengths, strict=False))
    if not shards:
        problems.append(f"{INFO_FILENAME}: lists no shards")
    sizes_path = dataset / SIZES_FILENAME
    if not sizes_path.exists():
        problems.append(f"{SIZES_FILENAME}: missing")
    elif json.loads(sizes_path.read_text()) != dict(shards):
        problems.append(f"{SIZES_FILENAME}: does not match {INFO_FILENAME}")
    listed = {name for name, _ in shards}
    for name in sorted(sums):
        if not (dataset / name).exists() and name not in listed:
            problems.append(f"{name}: listed in {SUMS_FILENAME} but missing")
        elif (
            name.endswith(".parquet")
            and (dataset / name).exists()
            and sha256_file(dataset / name) != sums[name]
        ):
            problems.append(f"{name}: sha256 mismatch")
    for path in sorted(dataset.glob("*/*.tar")):
        if path.relative_to(dataset).as_posix() not in listed:
            problems.append(
                f"{path.relative_to(dataset).as_posix()}: a tar that {INFO_FILENAME} does not list"
            )
    return shards, problems


def verify(config: VerifyConfig) -> VerifyReport:
    dataset = Path(config.dataset)
    report = VerifyReport(dataset=dataset)
    for name in (INFO_FILENAME, SUMS_FILENAME):
        if not (dataset / name).exists():
            report.problems.append(
                f"{name}: missing; is {dataset} a dataset written by `inf590k shard`?"
            )
    if report.problems:
        return report
    try:
        info = json.loads((dataset / INFO_FILENAME).read_text())
        sums = read_sums(dataset / SUMS_FILENAME)
        shards, report.problems = _index_problems(dataset, info, sums)
    except (ValueError, OSError, KeyError, TypeError, AttributeError) as err:
        report.problems.append(f"index files unreadable ({type(err).__name__}: {err})")
        return report
    checks = [
        _ShardCheck(dataset, name, sums.get(name), count, config.decode) for name, count in shards
    ]
    report.shards = len(checks)
    workers = min(config.workers or available_cores(), max(1, len(checks)))
    with tqdm(total=len(checks), unit="shard", desc="verify", disable=not config.progress) as bar:
        if workers == 1:
            results = map(check_shard, checks)
        else:
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            results = pool.map(check_shard, checks)
        for count, problems in results:
            report.samples += count
            report.problems += problems
            bar.update(1)
        if workers > 1:
            pool.shutdown()
    return report
