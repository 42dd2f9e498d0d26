"""Shard: kept catalog rows -> a dataset folder that is the Hugging Face dataset repo itself.

The folder's format is `inf590k/dataset/layout.py`; the plan is `plan.py`, the plan file and
the jobs `jobs.py`, the tar bytes `tar.py`. `hf upload`/`inf590k publish` send the folder as it
is, and `datasets.load_dataset(FOLDER)`, timm, webdataset and `inf590k verify` read it locally
and as downloaded.

Memory: the main process reads the catalog once, writes the catalog copy (under its temporary
name), the counts, the sources table and the plan file from it, then lets it go before a
shard is written: the jobs and the index inputs hold no row.

Resume and ownership: a shard is done when its `_stats.json` names the same rows digest (or,
checked by its worker, the same plan digest) and its tar has the recorded size; anything else
is rewritten (tar.tmp, fsync, rename, then sidecars).
`metadata/files.json` is written before anything else: a non-empty folder without it is not
ours and is refused; only files it names are ever replaced or removed. One `shard` at a time
writes a folder.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from inf590k.build import catalog as cat
from inf590k.build import lineage
from inf590k.build.locks import folder_lock
from inf590k.build.shard.jobs import ShardJob, plan_file, remove_plan, write_plan
from inf590k.build.shard.plan import (
    PlannedShard,
    ShardConfig,
    _check_options,
    kept_rows_by_bin,
    kept_sources,
    plan_layout,
    sources_table,
)
from inf590k.build.shard.reread import SourceChanged, _PixelLoader, _read_files
from inf590k.build.shard.tar import _HashingFile, add_sample, encode_png, raw_npy, tar_end
from inf590k.dataset.layout import (
    CATALOG_PATH,
    COUNTS_PATH,
    DATA_DIRNAME,
    FILES_PATH,
    INFO_PATH,
    SIZES_PATH,
    SOURCES_PATH,
    SUMS_PATH,
    WRITTEN_BY,
    dataset_file,
    folder_files,
    index_files,
    info_sources,
    is_hub_extra,
    read_owned,
    read_sources_table,
    shard_files,
    sidecar_path,
    stats_path,
    tar_path,
)
from inf590k.execution import progress
from inf590k.execution.units import run_units
from inf590k.fsutil import file_sha256, open_new, plural, write_text_atomic

# ----------------------------------------------------------------------------- summary

@dataclass
class ShardSummary:
    shards: int
    written: int
    reused: int
    samples: int
    bytes: int
    seconds: float
    out: Path
    lengths: tuple[int, int] = (0, 0)  # shortest and longest shard, samples
    bins: int = 0  # resolution bins, each sharded on its own

    def __str__(self) -> str:
        rate = self.samples / self.seconds if self.written and self.seconds > 0 else 0.0
        line = (
            f"shard: {plural(self.samples, 'sample')} in {plural(self.shards, 'shard')} of {self.lengths[0]}-"
            f"{self.lengths[1]} ({self.bytes / 1e6:.1f} MB) over {plural(self.bins, 'bin')}, "
            f"{self.written} written + {self.reused} already done, {self.seconds:.1f} s "
            f"({rate:.0f} img/s) -> {self.out}"
        )
        return line


# ----------------------------------------------------------------------------- writing one shard

def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_shard(job: ShardJob) -> dict:
    """Write one tar atomically, then its parquet sidecar, then its stats marker; or keep a
    finished shard whose marker names only its plan digest (adding the rows digest to it).
    -> its stats, with "reused": True when kept."""
    kept = finished_stats(job, "plan", job.plan)
    if kept is not None:
        kept["rows"] = job.rows_digest
        write_text_atomic(stats_path(job.out, job.relpath), json.dumps(kept, indent=1))
        progress.tick(len(job))
        return {**kept, "reused": True}
    started = time.perf_counter()
    load = _PixelLoader(job.build, job.keep_16bit)
    target = tar_path(job.out, job.relpath)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = target.with_name(target.name + ".tmp")
    with open_new(tmp_path) as handle, _HashingFile(handle) as hashing:
        files = _read_files(job.build, job.rows)
        for (row, data), cls, meta in zip(files, job.class_ids, job.jsons, strict=True):
            try:
                view8, raw = load(row, data)
            except SourceChanged:
                raise
            except Exception as error:
                raise RuntimeError(
                    f"{job.relpath}: cannot re-read {row['uid']} ({row['source']}/{row['relpath']}): "
                    f"{error}; restore the source files or re-run `inf590k ingest`"
                ) from error
            png = encode_png(view8, job.png_level)
            add_sample(hashing, row["uid"], cls, meta, png, None if raw is None else raw_npy(raw))
            progress.tick()
        hashing.write(tar_end(hashing.size))
        hashing.sync()
    os.replace(tmp_path, target)
    _fsync_dir(target.parent)
    parquet = sidecar_path(job.out, job.relpath)
    cat.write_parquet_atomic(job.table, parquet)
    stats = {
        "shard": job.relpath,
        "count": len(job.rows),
        "bytes": hashing.size,
        "sha256": hashing.digest.hexdigest(),
        "parquet_sha256": file_sha256(parquet),
        "plan": job.plan,
        "rows": job.rows_digest,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_text_atomic(stats_path(job.out, job.relpath), json.dumps(stats, indent=1))
    return stats


def finished_stats(job: ShardJob, key: str = "rows", digest: str = "") -> dict | None:
    """The recorded stats when this exact shard is already complete (its marker names the
    digest `key` of the job: its rows digest unless told), else None."""
    try:
        stats = json.loads(stats_path(job.out, job.relpath).read_text())
        complete = (
            stats.get(key) == (digest or job.rows_digest)
            and tar_path(job.out, job.relpath).stat().st_size == stats["bytes"]
            and sidecar_path(job.out, job.relpath).exists()
        )
    except (OSError, ValueError, KeyError):
        return None
    return stats if complete else None


# ----------------------------------------------------------------------------- ownership

def _write_owned(out: Path, files: Iterable[str]) -> None:
    index = {"written_by": WRITTEN_BY, "files": sorted(set(files))}
    write_text_atomic(dataset_file(out, FILES_PATH), json.dumps(index, indent=1) + "\n", fsync=True)


def claim_folder(out: Path, planned: set[str]) -> set[str]:
    """Refuse a folder that holds files we did not write; record `planned` as ours first.

    Returns the files the previous index named (empty for a new folder). The index written
    here names old and new files, so a run killed at any point leaves nothing unaccounted.
    """
    previous = read_owned(out)
    present = folder_files(out) if out.is_dir() else []
    if previous is None:
        foreign = [p for p in present if not is_hub_extra(p)]
        if foreign:
            raise ValueError(
                f"--out {out} already holds files that `inf590k shard` did not write (e.g. "
                f"{foreign[0]}): pick a new or empty folder"
            )
        previous = set()
    clashes = sorted(p for p in planned if p not in previous and dataset_file(out, p).exists())
    if clashes:
        raise ValueError(
            f"--out {out}: {clashes[0]} exists but `inf590k shard` did not write it: move it "
            "away or pick another folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    _write_owned(out, previous | planned)
    return previous


def remove_stale(out: Path, previous: set[str], planned: set[str]) -> int:
    """Delete files of our previous index that this plan does not write, and our temp files."""
    removed = 0
    for relpath in sorted(previous | planned):
        path = dataset_file(out, relpath)
        tmp = path.with_name(path.name + ".tmp")
        if tmp.is_symlink() or tmp.is_file():
            tmp.unlink()  # a half-written file of a killed run (a link there is not followed)
    for relpath in sorted(previous - planned):
        path = dataset_file(out, relpath)
        if path.is_file():
            path.unlink()
            removed += 1
        parent = path.parent
        while parent != out and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    return removed


# ----------------------------------------------------------------------------- index files

def reason_class(reason: str) -> str:
    """The kind of a catalog reason without its specifics: "too small (12x9 ...)" -> "too small"."""
    return re.split(r"[(:/]| of | with ", reason or "", maxsplit=1)[0].strip() or "unspecified"


def catalog_counts(table: pa.Table) -> dict[str, dict]:
    """{source: {found, ok, excluded, rejected, duplicate, reasons: {status: {kind: n}}}}:
    counted by Arrow group-by; statuses and kinds in the order the rows first name them."""
    sources, statuses = table.column("source"), table.column("status")
    counts: dict[str, dict] = {}
    grouped = pa.table({"source": sources, "status": statuses}).group_by(["source", "status"], use_threads=False)
    for source, status, count in _columns(grouped.aggregate([("status", "count")]), "source", "status", "status_count"):
        per_source = counts.setdefault(source, {"found": 0, **{s: 0 for s in cat.STATUSES}})
        per_source["found"] += count
        per_source[status] += count
    not_ok = pc.fill_null(pc.not_equal(statuses, cat.STATUS_OK), True)
    reasons = table.select(["source", "status", "reason"]).filter(not_ok)
    distinct = pc.unique(reasons.column("reason").combine_chunks())
    kinds = pa.array([reason_class(r) for r in distinct.to_pylist()], pa.string())
    kind = kinds.take(pc.index_in(reasons.column("reason"), value_set=distinct))
    position = pa.array(np.arange(reasons.num_rows))
    by_kind = pa.table({"source": reasons.column("source"), "status": reasons.column("status"), "kind": kind, "position": position})
    grouped = by_kind.group_by(["source", "status", "kind"], use_threads=False).aggregate([("position", "min"), ("position", "count")])
    found = sorted(_columns(grouped, "source", "status", "kind", "position_min", "position_count"), key=lambda g: g[3])
    first_status = {}
    for source, status, _, first, _ in found:  # the order a row-by-row count would insert keys
        first_status.setdefault((source, status), first)
    for source, status, kind_name, _, count in sorted(found, key=lambda g: (first_status[g[0], g[1]], g[3])):
        per_status = counts[source].setdefault("reasons", {}).setdefault(status, {})
        per_status[kind_name] = count
    for per_source in counts.values():
        per_source.setdefault("reasons", {})
    return dict(sorted(counts.items()))


def _columns(table: pa.Table, *names: str) -> Iterator[tuple]:
    return zip(*(table.column(n).to_pylist() for n in names), strict=True)


def sample_members(config: ShardConfig, catalog: pa.Table, kept: np.ndarray) -> list[str]:
    """The member extensions of the dataset's samples (npy only where raw frames were kept):
    `kept`: (rows,) indices of the kept rows in `catalog`."""
    depths = catalog.column("bit_depth").take(pa.array(kept))
    raw = config.keep_16bit and bool(pc.any(pc.equal(depths, 16)).as_py())
    return ["cls", "json", *(["npy"] if raw else []), "png"]


def _write_json(path: Path, data: object, fsync: bool = False) -> None:
    write_text_atomic(path, json.dumps(data, indent=1) + "\n", fsync=fsync)


@dataclass(frozen=True)
class IndexInputs:
    """What the index files need of the catalog, gathered while the plan is written, so the
    catalog is not held while the shards are written."""

    table: list[dict]  # the sources table
    counts: dict[str, dict]  # metadata/counts.json
    members: list[str]  # the member extensions of the samples
    catalog_tmp: Path  # metadata/catalog.parquet, written but not yet in place


def _write_catalog_copy(out: Path, catalog: pa.Table) -> Path:
    """metadata/catalog.parquet under its temporary name (open_new, fsync): `write_index`
    moves it in place, `remove_stale` removes it if the run stops before."""
    path = dataset_file(out, CATALOG_PATH)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open_new(tmp) as handle:
        pq.write_table(catalog, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return tmp


def write_index(
    config: ShardConfig,
    jobs: list[ShardJob],
    stats: dict[str, dict],
    index: IndexInputs,
) -> dict:
    """data/_info.json (timm's format + sources), sizes.json, SHA256SUMS, catalog, counts."""
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
        "sources": info_sources(index.table),
        "members": index.members,
    }
    if index.catalog_tmp.is_symlink():
        raise ValueError(f"{index.catalog_tmp} is a link, not the file `inf590k shard` wrote: run again")
    os.replace(index.catalog_tmp, dataset_file(out, CATALOG_PATH))
    _write_json(dataset_file(out, COUNTS_PATH), index.counts)
    _write_json(dataset_file(out, SOURCES_PATH), index.table)
    _write_json(
        dataset_file(out, SIZES_PATH),
        {f"{DATA_DIRNAME}/{f}": n for f, n in zip(filenames, lengths, strict=True)},
    )
    sums = {CATALOG_PATH: file_sha256(dataset_file(out, CATALOG_PATH))}
    for name in filenames:
        tar_rel, parquet_rel, _ = shard_files(name)
        sums[tar_rel] = stats[name]["sha256"]
        sums[parquet_rel] = stats[name]["parquet_sha256"]
    write_text_atomic(
        dataset_file(out, SUMS_PATH), "".join(f"{sums[p]}  {p}\n" for p in sorted(sums))
    )
    _write_json(
        dataset_file(out, INFO_PATH), info, fsync=True
    )  # last: it names only finished shards
    return info


# ----------------------------------------------------------------------------- the stage

def _class_ids(
    config: ShardConfig, out: Path, catalog: pa.Table, by_bin: dict[str, np.ndarray]
) -> tuple[list[dict], dict[str, int]]:
    """The sources table of this build (ids of the folder's earlier table kept) and its ids."""
    kept = kept_sources(catalog, np.concatenate([np.empty(0, np.int64), *by_bin.values()]))
    previous = read_sources_table(out) if read_owned(out) is not None else []
    table = sources_table(kept, cat.read_sources(config.build), previous)
    return table, {e["id"]: int(e["class_id"]) for e in table}


def _write_all(todo: list[ShardJob], config: ShardConfig) -> Iterator[dict]:
    """Write the shards, largest first so that the workers finish together (the files do not
    depend on the order); the bar moves per sample (per shard on Ray)."""
    largest_first = sorted(todo, key=lambda j: -j.estimated_bytes)
    with run_units(
        config.execution,
        preload=("inf590k.build.shard.stage",),
        label="shard",
        total=sum(len(j) for j in todo),
        units=len(todo),
        count=lambda unit, stats: stats["count"],
    ) as run:
        yield from run.map(write_shard, ((job,) for job in largest_first))


@lineage.stage("shard", mark=True)  # refuses a missing/unfinished/stale bin; records the run
def shard(config: ShardConfig) -> ShardSummary:
    """Write (or finish) the dataset folder of a build; byte-identical for any worker count."""
    started = time.perf_counter()
    out = Path(config.out)
    _check_options(config)
    if (out / cat.CATALOG_DIRNAME).exists() or out.resolve() == Path(config.build).resolve():
        raise ValueError(
            f"--out {out} is a build folder (it holds a catalog): write the dataset to a folder of its own"
        )
    if out.resolve() == plan_file(Path(config.build)).parent.resolve():
        raise ValueError(f"--out {out} is where `shard` keeps its plan file: write the dataset to a folder of its own")
    # one writer per dataset folder, whatever build it comes from
    with folder_lock(out, "--out"):
        return _write_dataset(config, out, started)


def _planned_files(shards: list[PlannedShard]) -> set[str]:
    return set(index_files()) | {p for s in shards for p in shard_files(s.relpath)}


def _plan(config: ShardConfig, out: Path) -> tuple[list[ShardJob], IndexInputs, set[str], int]:
    """Read the catalog once; claim the folder; write the catalog copy, the plan file and
    the jobs; gather what the index needs. The catalog is let go on return (jobs and index
    inputs hold no row)."""
    catalog = cat.read_catalog(Path(config.build))
    by_bin = kept_rows_by_bin(Path(config.build), catalog)
    table, classes = _class_ids(config, out, catalog, by_bin)
    shards = plan_layout(config, catalog, by_bin)
    if not shards:
        raise ValueError(f"no kept images in {config.build}: check `inf590k report` counts")
    planned = _planned_files(shards)
    previous = claim_folder(out, planned)
    remove_stale(out, previous, planned)
    kept = np.concatenate([np.empty(0, np.int64), *by_bin.values()])
    try:
        copy = _write_catalog_copy(out, catalog)
        index = IndexInputs(table, catalog_counts(catalog), sample_members(config, catalog, kept), copy)
        jobs = write_plan(config, catalog, shards, classes)
    except BaseException:
        remove_stale(out, set(), planned)  # the catalog copy's temporary file
        raise
    return jobs, index, planned, len(by_bin)


def _write_dataset(config: ShardConfig, out: Path, started: float) -> ShardSummary:
    try:
        return _write_planned(config, out, started)
    finally:
        remove_plan(Path(config.build))


def _write_planned(config: ShardConfig, out: Path, started: float) -> ShardSummary:
    jobs, index, planned, bins = _plan(config, out)
    pa.default_memory_pool().release_unused()  # the catalog and its copies: back to the system
    stats: dict[str, dict] = {}
    todo = []
    for job in jobs:
        done = finished_stats(job)
        if done is None:
            todo.append(job)
        else:
            stats[job.relpath] = done
    written = 0
    try:
        for result in _write_all(todo, config):
            written += not result.pop("reused", False)
            stats[result["shard"]] = result
    except BaseException:  # the pool has stopped: leave no half-written .tmp behind
        remove_stale(out, set(), planned)
        raise
    write_index(config, jobs, stats, index)
    _write_owned(out, planned)
    lengths = [len(j) for j in jobs]
    return ShardSummary(
        shards=len(jobs),
        written=written,
        reused=len(jobs) - written,
        samples=sum(lengths),
        bytes=sum(s["bytes"] for s in stats.values()),
        seconds=time.perf_counter() - started,
        out=out,
        lengths=(min(lengths), max(lengths)),
        bins=bins,
    )
