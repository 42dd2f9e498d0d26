"""The shard jobs and the plan file their workers read their rows from.

The main process reads the catalog once and writes the kept rows in shard order to one file
in the build folder (PLAN_PATH: each shard's rows one Arrow IPC record batch message,
CATALOG_SCHEMA, one after the other), then lets the catalog go: a job is a few fields (the
file, its byte range, its name, the class ids per source, its rows digest), small to pickle.

Two digests per shard. The rows digest (`rows_digest`: format, options, name, classes and the
rows' IPC bytes) is cheap for the main process: a shard is done when its `_stats.json` names
it. The plan digest (`plan_digest`: the same with every sample's JSON member instead of the
rows) is made by the worker, from the JSON it writes anyway; a shard whose `_stats.json`
names only that one (written before the rows digest existed) is checked there and kept.
Either covers everything that decides a shard's bytes. The worker refuses its rows unless
their bytes give the job's rows digest: a plan file edited during the run is never trusted,
and each run writes the file afresh from the catalog, then removes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from inf590k.build import catalog as cat
from inf590k.build.shard.plan import (
    FORMAT_VERSION,
    PlannedShard,
    ShardConfig,
    kept_rows_by_bin,
    plan_digest,
    plan_layout,
    planning_threads,
)
from inf590k.build.shard.sample_json import joined_bytes, sample_json_array
from inf590k.dataset.layout import CATALOG_SCHEMA

# ----------------------------------------------------------------------------- constants

PLAN_PATH = "shard/plan.arrow"  # in the build folder, while `shard` runs


_T = TypeVar("_T")
_R = TypeVar("_R")


class PlanChanged(RuntimeError):
    """The plan file no longer holds the rows its job was planned with; one line."""


# ----------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class ShardJob:
    """Everything one worker needs to write one shard: where its rows are, not the rows."""

    build: Path
    out: Path
    relpath: str  # "<bin>/<bin>-000000.tar", relative to data/ (as _info.json names it)
    plan_file: Path  # the plan file (PLAN_PATH of the build)
    offset: int  # the shard's IPC message in it: first byte
    length: int  # and bytes
    count: int  # its samples
    classes: tuple[tuple[str, int], ...]  # class id per source (the sources table)
    keep_16bit: bool
    png_level: int
    rows_digest: str  # `rows_digest` of the shard's rows, as the main process planned them
    estimated_bytes: int = 0  # of the tar, from the rows (`estimated_bytes`)

    @cached_property
    def table(self) -> pa.Table:
        """The shard's catalog rows in tar order (CATALOG_SCHEMA), read in the worker and
        refused unless their bytes are the rows planned (checked before they are parsed)."""
        message = read_plan_message(self.plan_file, self.offset, self.length)
        if rows_digest(self.keep_16bit, self.png_level, self.relpath, self.classes, message) != self.rows_digest:
            raise PlanChanged(
                f"{self.plan_file}: the rows of {self.relpath} are not those planned (the file "
                "changed during the run): run `inf590k shard` again"
            )
        batch = pa.ipc.read_record_batch(pa.py_buffer(message), CATALOG_SCHEMA)
        return pa.Table.from_batches([batch], CATALOG_SCHEMA)

    @cached_property
    def class_ids(self) -> tuple[int, ...]:
        """The class id per row (the .cls member)."""
        by_source = dict(self.classes)
        return tuple(by_source.get(s, -1) for s in self.table.column("source").to_pylist())

    @cached_property
    def json_array(self) -> pa.BinaryArray:
        return sample_json_array(self.table)

    @cached_property
    def jsons(self) -> tuple[bytes, ...]:
        """The .json member per row."""
        return tuple(self.json_array.to_pylist())

    @cached_property
    def plan(self) -> str:
        """`plan_digest` of the shard (its JSON members made here, in the worker)."""
        return plan_digest(self.keep_16bit, self.png_level, self.relpath, list(self.class_ids), [joined_bytes(self.json_array)])

    @cached_property
    def rows(self) -> tuple[dict, ...]:
        """The rows as dicts, made where they are used (in the worker)."""
        return tuple(self.table.to_pylist())

    def __len__(self) -> int:
        return self.count


def rows_digest(
    keep_16bit: bool, png_level: int, relpath: str, classes: tuple[tuple[str, int], ...], message: bytes | pa.Buffer
) -> str:
    """Digest of a shard's rows as planned: the format, the options, its name, the class id
    per source and the rows' IPC message (every catalog column the JSON, the class and the
    sidecar are made of)."""
    header = json.dumps(["rows", FORMAT_VERSION, keep_16bit, png_level, relpath, classes])
    digest = hashlib.sha256(header.encode())
    digest.update(message)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- the plan file


def plan_file(build: Path) -> Path:
    return Path(build) / PLAN_PATH


def _plan_folder(path: Path) -> Path:
    """The folder of plan file `path`, made; a link, file or folder in a place of ours refused
    in one line (nothing of it touched)."""
    folder = path.parent
    if folder.is_symlink():
        raise ValueError(f"{folder} is a link, not a file `inf590k shard` wrote: remove it and run again")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file, not the folder `inf590k shard` writes: remove it and run again")
    if path.is_dir() and not path.is_symlink():
        raise ValueError(f"{path} is a folder, not the file `inf590k shard` writes: remove it and run again")
    folder.mkdir(exist_ok=True)
    return folder


def _open_plan(path: Path) -> BinaryIO:
    """The plan file opened as a new file inside its folder opened without following a link:
    a link swapped in for the folder or the file after the checks is never written through."""
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0))
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path.name, dir_fd=folder)  # a leftover file or link of that name
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        return os.fdopen(os.open(path.name, flags, 0o644, dir_fd=folder), "wb")
    finally:
        os.close(folder)


def read_plan_message(path: Path, offset: int, length: int) -> bytes:
    """`length` bytes of the plan file from `offset` (never through a link)."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        pieces = []
        while length > 0:
            piece = os.pread(descriptor, length, offset)
            if not piece:
                raise PlanChanged(f"{path} is shorter than planned: run `inf590k shard` again")
            pieces.append(piece)
            offset, length = offset + len(piece), length - len(piece)
        return b"".join(pieces)
    finally:
        os.close(descriptor)


def remove_plan(build: Path) -> None:
    """The plan file and its temporary file, removed (a link of that name too, not followed).
    Names are removed inside the folder opened without following a link: a link planted in
    place of the folder (`shard` refuses to write through it) never gets a file elsewhere removed."""
    path = plan_file(build)
    try:
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:  # missing, a file, or a link (ELOOP): nothing of ours there
        return
    try:
        for name in (path.name, path.name + ".tmp"):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                os.unlink(name, dir_fd=folder)  # unlink never follows a link it removes
        empty = not os.listdir(folder)
    finally:
        os.close(folder)
    if empty:
        with contextlib.suppress(OSError):  # rmdir never follows a link either
            path.parent.rmdir()


def _in_order(fn: Callable[[_T], _R], items: Iterable[_T], threads: int) -> Iterator[_R]:
    """`map(fn, items)` on `threads` threads, at most 2 x threads results held at once."""
    if threads <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def write_plan(
    config: ShardConfig, catalog: pa.Table, shards: list[PlannedShard], classes: Mapping[str, int]
) -> list[ShardJob]:
    """The plan file of `shards` (rows taken from `catalog`, CATALOG_SCHEMA) and their jobs;
    the takes on several threads (Arrow's kernels release the GIL), a few shards at a time."""
    build = Path(config.build)
    path = plan_file(build)
    _plan_folder(path)
    catalog = catalog.select(list(CATALOG_SCHEMA.names)).cast(CATALOG_SCHEMA)
    by_source = tuple(sorted(classes.items()))

    def message_and_digest(shard: PlannedShard) -> tuple[pa.Buffer, str]:
        (batch,) = catalog.take(pa.array(shard.rows)).combine_chunks().to_batches()  # one chunk
        message = batch.serialize()
        return message, rows_digest(config.keep_16bit, config.png_level, shard.relpath, by_source, message)

    placed = []
    with _open_plan(path) as handle:
        for message, digest in _in_order(message_and_digest, shards, planning_threads(config)):
            placed.append((handle.tell(), message.size, digest))
            handle.write(message)
    return [
        ShardJob(
            build=build,
            out=Path(config.out),
            relpath=shard.relpath,
            plan_file=path,
            offset=offset,
            length=length,
            count=len(shard.rows),
            classes=by_source,
            keep_16bit=config.keep_16bit,
            png_level=config.png_level,
            rows_digest=digest,
            estimated_bytes=shard.estimated_bytes,
        )
        for shard, (offset, length, digest) in zip(shards, placed, strict=True)
    ]


def plan_shards(
    config: ShardConfig, classes: Mapping[str, int] | None = None, catalog: pa.Table | None = None
) -> list[ShardJob]:
    """The full, deterministic shard plan of a build (independent of workers and of `out`),
    its plan file written. `classes`: class id per source (the sources table); default: ids
    in sorted order of the kept sources. `catalog`: the catalog, when the caller has read it.
    The options are checked by the caller (`shard`)."""
    build = Path(config.build)
    catalog = cat.read_catalog(build) if catalog is None else catalog
    by_bin = kept_rows_by_bin(build, catalog)
    if classes is None:
        kept = np.concatenate([np.empty(0, np.int64), *by_bin.values()])
        sources = pc.unique(catalog.column("source").take(pa.array(kept))).to_pylist()
        classes = {s: i for i, s in enumerate(sorted(sources))}
    return write_plan(config, catalog, plan_layout(config, catalog, by_bin), classes)
