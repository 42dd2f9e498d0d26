"""Shard: kept catalog rows -> deterministic WebDataset tars, one folder per resolution bin.

Layout of a dataset folder (DESIGN.md "Shard format")::

    DATASET/<bin>/<bin>-000000.tar          {uid}.cls, {uid}.json, {uid}.png per sample
    DATASET/<bin>/<bin>-000000.parquet      the catalog rows of that shard, in tar order
    DATASET/<bin>/<bin>-000000_stats.json   count, bytes, sha256, duration: the done marker
    DATASET/_info.json                      timm's index: splits.<split>.{name, num_samples,
                                            filenames, shard_lengths}
    DATASET/sizes.json                      shard path -> sample count (webdataset/wids style)
    DATASET/SHA256SUMS                      `sha256sum -c` of every tar and sidecar parquet

Determinism: the shard plan (which uid goes to which shard, in which order) is computed up
front from the catalog alone: uids of a bin sorted, then shuffled by a generator seeded from
(seed, bin); shards are cut by count and by a pixel-byte budget, never by what a worker did.
Tar members have a fixed mtime, uid/gid 0, empty owner names and mode 0644; a sample's
members are sorted (.cls, .json, .png). So any worker count, and a second run from scratch,
writes byte-identical tars.

Resume: a shard is done when its `_stats.json` exists, names the same plan digest and its tar
has the recorded size; anything else is rewritten (tar.tmp, fsync, rename, then sidecars).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from inf590k import catalog as cat
from inf590k import lineage
from inf590k.fsutil import available_cores, write_text_atomic
from inf590k.ray_executor import open_executor
from inf590k.workers import sigterm_as_interrupt

FORMAT_VERSION = 1  # bump when the bytes of a sample change for the same catalog row
FIXED_MTIME = 1_700_000_000  # 2023-11-14; any constant works, 0 upsets some tar tools
INFO_FILENAME = "_info.json"
SIZES_FILENAME = "sizes.json"
SUMS_FILENAME = "SHA256SUMS"
COUNTS_FILENAME = "_counts.json"  # per-source catalog counts, for the report and dataset card
STATS_SUFFIX = "_stats.json"
SAMPLE_OVERHEAD_BYTES = 4096  # 3 tar headers + JSON + PNG headers, per sample (estimate)
FLUSH_EVERY = 32 << 20  # bytes between background fdatasync calls while a tar is written
READ_BATCH = 256  # files read at once from folder and zip sources (bounds memory)
SHARD_NAME = re.compile(
    r"^(?P<bin>.+)-(?P<index>\d{6})(?:\.tar|\.tar\.tmp|\.parquet|_stats\.json)$"
)


@dataclass(frozen=True)
class ShardConfig:
    """One field per `inf590k shard` option."""

    build: Path
    out: Path
    max_count: int = 10_000  # samples per shard
    max_size: int = 1_000_000_000  # bytes per shard, counted as raw pixels + overhead: a bound
    keep_16bit: bool = False  # 16-bit PNGs for rows whose file was 16-bit
    png_level: int = 1  # zlib level of cv2.imencode: encoding dominates the build
    seed: int = 0  # sample order inside each bin
    split: str = "train"
    name: str = "inf590k"  # the dataset name in _info.json
    workers: int = 0  # 0: one process per core
    progress: bool = True
    executor: str = "local"  # "local" (process pool) or "ray" (see inf590k.ray_executor)
    ray_address: str | None = None  # a Ray cluster; None: RAY_ADDRESS, else a Ray started here


@dataclass(frozen=True)
class ShardJob:
    """Everything one worker needs to write one shard."""

    build: Path
    out: Path
    relpath: str  # "<bin>/<bin>-000000.tar", relative to out
    rows: tuple[dict, ...]  # catalog rows in tar order
    classes: tuple[int, ...]  # source index per row (the .cls member)
    jsons: tuple[bytes, ...]  # the .json member per row
    keep_16bit: bool
    png_level: int
    plan: str  # digest of everything that decides the tar bytes


@dataclass
class ShardSummary:
    shards: int
    written: int
    reused: int
    samples: int
    bytes: int
    seconds: float
    out: Path

    def __str__(self) -> str:
        rate = self.samples / self.seconds if self.written and self.seconds > 0 else 0.0
        return (
            f"shard: {self.samples} samples in {self.shards} shards ({self.bytes / 1e6:.1f} MB), "
            f"{self.written} written + {self.reused} already done, {self.seconds:.1f} s "
            f"({rate:.0f} img/s) -> {self.out}"
        )


# ----------------------------------------------------------------------------- sample form


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


def sample_json(row: Mapping) -> bytes:
    """The catalog row as the sample's JSON: every column, sorted keys, stable JSON types.

    Nulls become "", -1, -1.0 or [] by column type, and string lists (`tags`) are joined with
    commas into one string: readers that infer a schema from the first samples (the Hugging
    Face webdataset loader reads five) would otherwise type an all-empty list as null and fail
    on a later sample that has tags. The sidecar parquet keeps the list.
    """
    record = {}
    for field in cat.CATALOG_SCHEMA:
        value = row.get(field.name)
        if pa.types.is_list(field.type) and pa.types.is_string(field.type.value_type):
            value = ",".join(value or [])
        record[field.name] = _json_default(field) if value is None else value
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def encode_png(pixels: np.ndarray, level: int) -> bytes:
    """1-channel lossless PNG (8- or 16-bit) with OpenCV: ~2x faster than Pillow here."""
    ok, encoded = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, level])
    if not ok:
        raise RuntimeError(f"PNG encoding failed for a {pixels.dtype} {pixels.shape} image")
    return encoded.tobytes()


def _tar_member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = FIXED_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def add_sample(tar: tarfile.TarFile, uid: str, cls: int, json_bytes: bytes, png: bytes) -> None:
    """A sample's members, sorted by extension, next to each other."""
    for extension, payload in (("cls", str(cls).encode()), ("json", json_bytes), ("png", png)):
        tar.addfile(_tar_member(f"{uid}.{extension}", len(payload)), io.BytesIO(payload))


class _HashingFile:
    """A write-only file that hashes what passes through (tarfile needs write and tell).

    Every FLUSH_EVERY bytes it starts an fdatasync in a background thread, so the disk
    writes overlap with PNG encoding and the final fsync before the rename is short.
    """

    def __init__(self, handle: io.BufferedWriter) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0
        self._unflushed = 0
        self._syncer = ThreadPoolExecutor(1)
        self._pending: Future | None = None

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        self._unflushed += len(data)
        written = self.handle.write(data)
        if self._unflushed >= FLUSH_EVERY and (self._pending is None or self._pending.done()):
            self.handle.flush()
            self._pending = self._syncer.submit(os.fdatasync, self.handle.fileno())
            self._unflushed = 0
        return written

    def tell(self) -> int:
        return self.size

    def sync(self) -> None:
        """Everything written is on disk when this returns."""
        self.handle.flush()
        if self._pending is not None:
            self._pending.result()
        self._syncer.shutdown()
        os.fsync(self.handle.fileno())


# ----------------------------------------------------------------------------- planning


def _bin_rng(seed: int, bin_name: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}/{bin_name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _pixel_bytes(row: Mapping, keep_16bit: bool) -> int:
    depth = 2 if keep_16bit and row.get("bit_depth") == 16 else 1
    return int(row["width"]) * int(row["height"]) * depth + SAMPLE_OVERHEAD_BYTES


def cut_shards(
    rows: list[dict], max_count: int, max_size: int, keep_16bit: bool
) -> list[list[dict]]:
    """Consecutive runs of rows: at most max_count samples and max_size estimated bytes each."""
    shards: list[list[dict]] = []
    current: list[dict] = []
    size = 0
    for row in rows:
        row_bytes = _pixel_bytes(row, keep_16bit)
        if current and (len(current) >= max_count or size + row_bytes > max_size):
            shards.append(current)
            current, size = [], 0
        current.append(row)
        size += row_bytes
    if current:
        shards.append(current)
    return shards


def _kept_rows(build: Path) -> dict[str, list[dict]]:
    table = cat.read_catalog(build)
    table = table.filter(pa.compute.equal(table.column("status"), cat.STATUS_OK))
    rows = table.to_pylist()  # sorted by uid (read_catalog)
    unbinned = [r["uid"] for r in rows if not r["res_bin"]]
    if unbinned:
        raise ValueError(
            f"{len(unbinned)} kept rows have no resolution bin (e.g. {unbinned[0]}): "
            f"run `inf590k bin --build {build}` first"
        )
    by_bin: dict[str, list[dict]] = {}
    for row in rows:
        by_bin.setdefault(row["res_bin"], []).append(row)
    return by_bin


def _source_classes(build: Path, sources: set[str]) -> dict[str, int]:
    recorded = cat.read_sources(build)
    missing = sorted(s for s in sources if "index" not in recorded.get(s, {}))
    if missing:
        raise ValueError(
            f"source {missing[0]!r} has no class index in {Path(build) / cat.SOURCES_FILENAME}: "
            "re-run `inf590k ingest` for it"
        )
    return {s: int(recorded[s]["index"]) for s in sources}


def plan_shards(config: ShardConfig) -> list[ShardJob]:
    """The full, deterministic shard plan of a build (independent of workers and of `out`)."""
    if config.max_count < 1 or config.max_size < 1:
        raise ValueError("--max-count and --max-size must be positive")
    if not 0 <= config.png_level <= 9:
        raise ValueError(f"--png-level must be 0..9, got {config.png_level}")
    by_bin = _kept_rows(Path(config.build))
    classes = _source_classes(
        Path(config.build), {r["source"] for rows in by_bin.values() for r in rows}
    )
    jobs = []
    for bin_name in sorted(by_bin):
        rows = by_bin[bin_name]
        order = _bin_rng(config.seed, bin_name).permutation(len(rows))
        shuffled = [rows[i] for i in order]
        for index, shard_rows in enumerate(
            cut_shards(shuffled, config.max_count, config.max_size, config.keep_16bit)
        ):
            relpath = f"{bin_name}/{bin_name}-{index:06d}.tar"
            shard_classes = tuple(classes[r["source"]] for r in shard_rows)
            jsons = tuple(sample_json(r) for r in shard_rows)
            plan = hashlib.sha256(
                json.dumps(
                    [FORMAT_VERSION, config.keep_16bit, config.png_level, relpath, shard_classes],
                ).encode()
                + b"".join(jsons)
            ).hexdigest()
            jobs.append(
                ShardJob(
                    build=Path(config.build),
                    out=Path(config.out),
                    relpath=relpath,
                    rows=tuple(shard_rows),
                    classes=shard_classes,
                    jsons=jsons,
                    keep_16bit=config.keep_16bit,
                    png_level=config.png_level,
                    plan=plan,
                )
            )
    return jobs


# ----------------------------------------------------------------------------- writing


def _read_files(build: Path, rows: tuple[dict, ...]) -> Iterator[tuple[dict, bytes]]:
    """(row, file bytes) in row order; one pass per tar source, small batches otherwise."""
    from inf590k.sources import SourceReader

    recorded = cat.read_sources(build)
    whole_tar: dict[str, dict[str, bytes]] = {}  # a (compressed) tar is read in one pass
    for start in range(0, len(rows), READ_BATCH):
        batch = rows[start : start + READ_BATCH]
        by_source: dict[str, dict[str, bytes]] = {}
        for source in sorted({r["source"] for r in batch}):
            if source in whole_tar:
                by_source[source] = whole_tar[source]
                continue
            with SourceReader(Path(recorded[source]["root"])) as reader:
                if reader.kind == "tar":
                    everything = [r["relpath"] for r in rows if r["source"] == source]
                    by_source[source] = whole_tar[source] = reader.read_many(everything)
                else:
                    by_source[source] = reader.read_many(
                        r["relpath"] for r in batch if r["source"] == source
                    )
        for row in batch:
            yield row, by_source[row["source"]][row["relpath"]]


class _PixelLoader:
    """`ingest.load_stored_pixels`, with each source's policy read once per shard, not per row.

    Still images take the same decode + `stored_form` steps as ingest's function, without
    re-reading sources.json for every sample (~0.8 ms per image); video frames go through it.
    """

    def __init__(self, build: Path, keep_16bit: bool) -> None:
        from inf590k.imageio import ImagePolicy

        self.build = build
        self.keep_16bit = keep_16bit
        recorded = cat.read_sources(build)
        self.policies = {s: ImagePolicy(**info["policy"]) for s, info in recorded.items()}

    def __call__(self, row: dict, data: bytes) -> np.ndarray:
        from inf590k.imageio import decode
        from inf590k.ingest import load_stored_pixels, stored_form

        if row["frame"] is not None and row["frame"] >= 0:
            return load_stored_pixels(self.build, row, keep_16bit=self.keep_16bit, data=data)
        policy = self.policies[row["source"]]
        return stored_form(decode(data, policy), row, policy, self.keep_16bit)


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_shard(job: ShardJob) -> dict:
    """Write one tar atomically, then its parquet sidecar, then its stats marker."""
    started = time.perf_counter()
    load = _PixelLoader(job.build, job.keep_16bit)
    tar_path = job.out / job.relpath
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = tar_path.with_name(tar_path.name + ".tmp")
    with open(tmp_path, "wb") as handle:
        hashing = _HashingFile(handle)
        with tarfile.open(fileobj=hashing, mode="w", format=tarfile.PAX_FORMAT) as tar:
            files = _read_files(job.build, job.rows)
            for (row, data), cls, meta in zip(files, job.classes, job.jsons, strict=True):
                try:
                    pixels = load(row, data)
                except Exception as error:
                    raise RuntimeError(
                        f"{job.relpath}: cannot re-read {row['uid']} ({row['source']}/{row['relpath']}): "
                        f"{error}; restore the source files or re-run `inf590k ingest`"
                    ) from error
                add_sample(tar, row["uid"], cls, meta, encode_png(pixels, job.png_level))
        hashing.sync()
    os.replace(tmp_path, tar_path)
    _fsync_dir(tar_path.parent)
    parquet_path = tar_path.with_suffix(".parquet")
    cat.write_parquet_atomic(cat.rows_to_table(list(job.rows)), parquet_path)
    stats = {
        "shard": job.relpath,
        "count": len(job.rows),
        "bytes": hashing.size,
        "sha256": hashing.digest.hexdigest(),
        "parquet": parquet_path.name,
        "parquet_sha256": hashlib.sha256(parquet_path.read_bytes()).hexdigest(),
        "plan": job.plan,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_text_atomic(stats_path_of(tar_path), json.dumps(stats, indent=1))
    return stats


def stats_path_of(tar_path: Path) -> Path:
    return tar_path.with_name(tar_path.name[: -len(".tar")] + STATS_SUFFIX)


def finished_stats(job: ShardJob) -> dict | None:
    """The recorded stats when this exact shard is already complete, else None."""
    tar_path = job.out / job.relpath
    try:
        stats = json.loads(stats_path_of(tar_path).read_text())
        complete = (
            stats.get("plan") == job.plan
            and tar_path.stat().st_size == stats["bytes"]
            and tar_path.with_suffix(".parquet").exists()
        )
    except (OSError, ValueError, KeyError):
        return None
    return stats if complete else None


def _remove_stale(out: Path, jobs: list[ShardJob]) -> None:
    """Delete shard files of an earlier, different plan (other bins or shard counts)."""
    planned = {(out / j.relpath).with_suffix("") for j in jobs}
    for path in sorted(out.glob("*/*")):
        match = SHARD_NAME.match(path.name)
        if path.name.endswith(".tmp"):
            path.unlink()  # a half-written file of a killed run
        elif (
            match
            and path.parent.name == match["bin"]  # only shard files inside their bin's folder
            and path.parent / f"{match['bin']}-{match['index']}" not in planned
        ):
            path.unlink()
            if not any(path.parent.iterdir()):
                path.parent.rmdir()


def write_index(config: ShardConfig, jobs: list[ShardJob], stats: dict[str, dict]) -> None:
    """_info.json (timm's format), sizes.json and SHA256SUMS, from the shards' stats."""
    out = Path(config.out)
    filenames = [j.relpath for j in jobs]
    lengths = [stats[f]["count"] for f in filenames]
    info = {
        "name": config.name,
        "splits": {
            config.split: {
                "name": config.split,
                "num_samples": sum(lengths),
                "filenames": filenames,
                "shard_lengths": lengths,
            }
        },
    }
    write_text_atomic(out / INFO_FILENAME, json.dumps(info, indent=1) + "\n", fsync=True)
    write_text_atomic(
        out / SIZES_FILENAME,
        json.dumps(dict(zip(filenames, lengths, strict=True)), indent=1) + "\n",
        fsync=True,
    )
    sums = []
    for name in filenames:
        sums.append((name, stats[name]["sha256"]))
        sums.append((str(Path(name).with_suffix(".parquet")), stats[name]["parquet_sha256"]))
    write_text_atomic(
        out / SUMS_FILENAME, "".join(f"{digest}  {path}\n" for path, digest in sorted(sums)), fsync=True
    )


def reason_class(reason: str) -> str:
    """The kind of a catalog reason without its specifics: "too small (12x9 ...)" -> "too small"."""
    return re.split(r"[(:/]| of | with ", reason or "", maxsplit=1)[0].strip() or "unspecified"


def catalog_counts(build: Path) -> dict[str, dict]:
    """{source: {found, ok, excluded, rejected, duplicate, reasons: {status: {kind: n}}}}."""
    table = cat.read_catalog(build)
    counts = cat.status_counts(table)
    for source, status, reason in zip(
        *(table.column(c).to_pylist() for c in ("source", "status", "reason")), strict=True
    ):
        if status != cat.STATUS_OK:
            reasons = counts[source].setdefault("reasons", {}).setdefault(status, {})
            kind = reason_class(reason)
            reasons[kind] = reasons.get(kind, 0) + 1
    for per_source in counts.values():
        per_source.setdefault("reasons", {})
    return dict(sorted(counts.items()))


# refuses a missing/unfinished/stale bin; records the run (the executor does not change a byte)
@lineage.stage("shard", ignore=("build", "workers", "progress", "executor", "ray_address"), mark=True)
def shard(config: ShardConfig) -> ShardSummary:
    """Write (or finish) the dataset folder of a build; byte-identical for any worker count."""
    started = time.perf_counter()
    out = Path(config.out)
    jobs = plan_shards(config)
    if not jobs:
        raise ValueError(f"no kept images in {config.build}: check `inf590k report` counts")
    out.mkdir(parents=True, exist_ok=True)
    if (out / cat.CATALOG_DIRNAME).exists() or out.resolve() == Path(config.build).resolve():
        raise ValueError(f"--out {out} is a build folder (it holds a catalog): write the dataset to a folder of its own")
    _remove_stale(out, jobs)
    stats: dict[str, dict] = {}
    todo = []
    for job in jobs:
        done = finished_stats(job)
        if done is None:
            todo.append(job)
        else:
            stats[job.relpath] = done
    workers = min(config.workers or available_cores(), max(1, len(todo)))
    total = sum(len(j.rows) for j in todo)
    with tqdm(total=total, unit="img", desc="shard", disable=not config.progress) as bar:
        if workers == 1 and config.executor == "local":
            results: Iterator[dict] = map(write_shard, todo)
            for result in results:
                stats[result["shard"]] = result
                bar.update(result["count"])
        else:
            # largest shards first, so the workers finish together (the files do not
            # depend on the order in which shards are written)
            largest_first = sorted(
                todo, key=lambda j: -sum(_pixel_bytes(r, j.keep_16bit) for r in j.rows)
            )
            # workers die with this process; SIGTERM/Ctrl-C kills them (nothing writes on)
            with sigterm_as_interrupt(), open_executor(
                config.executor, workers, ("inf590k.shard",), address=config.ray_address
            ) as pool:
                for result in pool.map(write_shard, ((job,) for job in largest_first)):
                    stats[result["shard"]] = result
                    bar.update(result["count"])
    write_index(config, jobs, stats)
    counts = catalog_counts(Path(config.build))
    write_text_atomic(out / COUNTS_FILENAME, json.dumps(counts, indent=1, sort_keys=True) + "\n", fsync=True)
    return ShardSummary(
        shards=len(jobs),
        written=len(todo),
        reused=len(jobs) - len(todo),
        samples=sum(s["count"] for s in stats.values()),
        bytes=sum(s["bytes"] for s in stats.values()),
        seconds=time.perf_counter() - started,
        out=out,
    )


def read_sidecars(dataset: Path) -> pa.Table:
    """All shard sidecar rows of a dataset folder (catalog schema)."""
    paths = sorted(Path(dataset).glob("*/*.parquet"))
    if not paths:
        raise FileNotFoundError(f"no shard sidecars in {dataset}: run `inf590k shard` first")
    return pa.concat_tables(pq.read_table(p, schema=cat.CATALOG_SCHEMA) for p in paths)
