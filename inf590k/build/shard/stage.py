"""Shard: kept catalog rows -> a dataset folder that is the Hugging Face dataset repo itself.

The folder's format is `inf590k/dataset/layout.py`; the plan is `plan.py`, the tar bytes
`tar.py`. `hf upload`/`inf590k publish` send the folder as it is, and
`datasets.load_dataset(FOLDER)`, timm, webdataset and `inf590k verify` read it locally and as
downloaded.

Resume and ownership: a shard is done when its `_stats.json` names the same plan digest and its
tar has the recorded size; anything else is rewritten (tar.tmp, fsync, rename, then sidecars).
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

import pyarrow as pa

from inf590k.build import catalog as cat
from inf590k.build import lineage
from inf590k.build.locks import folder_lock
from inf590k.build.shard.plan import (
    ShardConfig,
    ShardJob,
    _check_options,
    kept_by_bin,
    plan_shards,
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
    """Write one tar atomically, then its parquet sidecar, then its stats marker."""
    started = time.perf_counter()
    load = _PixelLoader(job.build, job.keep_16bit)
    target = tar_path(job.out, job.relpath)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = target.with_name(target.name + ".tmp")
    with open_new(tmp_path) as handle, _HashingFile(handle) as hashing:
        files = _read_files(job.build, job.rows)
        for (row, data), cls, meta in zip(files, job.classes, job.jsons, strict=True):
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
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_text_atomic(stats_path(job.out, job.relpath), json.dumps(stats, indent=1))
    return stats


def finished_stats(job: ShardJob) -> dict | None:
    """The recorded stats when this exact shard is already complete, else None."""
    try:
        stats = json.loads(stats_path(job.out, job.relpath).read_text())
        complete = (
            stats.get("plan") == job.plan
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
    """{source: {found, ok, excluded, rejected, duplicate, reasons: {status: {kind: n}}}}."""
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


def sample_members(jobs: list[ShardJob]) -> list[str]:
    """The member extensions of the dataset's samples (npy only where raw frames were kept)."""
    raw = any(j.keep_16bit and 16 in j.table.column("bit_depth").to_pylist() for j in jobs)
    return ["cls", "json", *(["npy"] if raw else []), "png"]


def _write_json(path: Path, data: object, fsync: bool = False) -> None:
    write_text_atomic(path, json.dumps(data, indent=1) + "\n", fsync=fsync)


def write_index(
    config: ShardConfig,
    jobs: list[ShardJob],
    stats: dict[str, dict],
    table: list[dict],
    catalog: pa.Table,
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
        "sources": info_sources(table),
        "members": sample_members(jobs),
    }
    cat.write_parquet_atomic(catalog, dataset_file(out, CATALOG_PATH))
    _write_json(dataset_file(out, COUNTS_PATH), catalog_counts(catalog))
    _write_json(dataset_file(out, SOURCES_PATH), table)
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
    config: ShardConfig, out: Path, by_bin: dict[str, pa.Table]
) -> tuple[list[dict], dict[str, int]]:
    """The sources table of this build (ids of the folder's earlier table kept) and its ids."""
    kept: dict[str, list[dict]] = {}
    for rows in by_bin.values():  # the three columns the table needs, not whole rows
        for row in rows.select(["source", "modality", "license"]).to_pylist():
            kept.setdefault(row["source"], []).append(row)
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
    # one writer per dataset folder, whatever build it comes from
    with folder_lock(out, "--out"):
        return _write_dataset(config, out, started)


def _write_dataset(config: ShardConfig, out: Path, started: float) -> ShardSummary:
    catalog = cat.read_catalog(Path(config.build))  # read once: plan, class ids, index
    by_bin = kept_by_bin(Path(config.build), catalog)
    table, classes = _class_ids(config, out, by_bin)
    jobs = plan_shards(config, classes, by_bin)
    if not jobs:
        raise ValueError(f"no kept images in {config.build}: check `inf590k report` counts")
    planned = set(index_files()) | {p for j in jobs for p in shard_files(j.relpath)}
    previous = claim_folder(out, planned)
    remove_stale(out, previous, planned)
    stats: dict[str, dict] = {}
    todo = []
    for job in jobs:
        done = finished_stats(job)
        if done is None:
            todo.append(job)
        else:
            stats[job.relpath] = done
    try:
        for result in _write_all(todo, config):
            stats[result["shard"]] = result
    except BaseException:  # the pool has stopped: leave no half-written .tmp behind
        remove_stale(out, set(), planned)
        raise
    write_index(config, jobs, stats, table, catalog)
    _write_owned(out, planned)
    lengths = [len(j) for j in jobs]
    return ShardSummary(
        shards=len(jobs),
        written=len(todo),
        reused=len(jobs) - len(todo),
        samples=sum(lengths),
        bytes=sum(s["bytes"] for s in stats.values()),
        seconds=time.perf_counter() - started,
        out=out,
        lengths=(min(lengths), max(lengths)),
        bins=len(by_bin),
    )
