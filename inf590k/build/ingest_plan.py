"""Ingest's planning: each source listed (on the workers, unit by unit) and classified into
tasks, its signatures (what decides its rows, and the quick listing fingerprint a no-op build
compares), and the cut into chunks and work units.

Chunks are fixed runs of the sorted file list (CHUNK_FILES files, CHUNK_BYTES bytes at most):
the rows never depend on the cut; a work unit is a run of chunks, a few per worker and at most
PART_FILES files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from inf590k.build import catalog as cat
from inf590k.build.rows import (
    DECISIONS,
    STATUSES,
    SourceJob,
    Task,
    UnitTasks,
    tasks_table,
)
from inf590k.execution.progress import tick
from inf590k.execution.units import ExecutionOptions, run_units
from inf590k.fsutil import available_cores
from inf590k.inputs.imageio import (
    ImagePolicy,
)
from inf590k.inputs.manifest import (
    IMAGE_EXTENSIONS,
    NOT_SIGNED,
    SYNTH_MARKER,
    VIDEO_EXTENSIONS,
    Manifest,
)
from inf590k.inputs.sources import (
    NOT_UTF8,
    ListingUnit,
    SourceEntry,
    list_entries,
    list_unit,
    listing_units,
    member_suffix,
    root_kind,
)

SYNTH_MARKER_REASON = "marker of a synthetic tree (written by inf590k synth)"


CHUNK_FILES = 64  # files per chunk: the unit of planning, independent of workers


PART_FILES = 200_000  # at most this many files per work unit (and catalog part)


UNITS_PER_WORKER = 4  # work units per worker and run: the load stays balanced, parts few


CHUNK_BYTES = 64 << 20  # and at most this many bytes to read per part (memory in flight)


def classify(manifest: Manifest, entry: SourceEntry, max_bytes: int, in_archive: bool) -> Task:
    """Scan decision for one file: decode it, decode it as video, or say why not."""
    decision, status, reason = _decide_file(manifest, entry, max_bytes, in_archive)
    return Task(  # in a listing worker; the driver gets the unit's tasks as columns
        entry.relpath, entry.size, decision, status=status, reason=reason,
        occurrence=entry.occurrence, order=entry.order, offset=entry.offset,
    )


def _decide_file(manifest: Manifest, entry: SourceEntry, max_bytes: int, in_archive: bool) -> tuple[str, str, str]:
    """(decision, status, reason) of one file."""
    if entry.problem:
        return "", cat.STATUS_REJECTED, entry.problem
    rule = manifest.excluded_by(entry.relpath)
    if rule:
        return "", cat.STATUS_EXCLUDED, rule
    suffix = member_suffix(entry.relpath)
    if suffix not in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS:
        return "", cat.STATUS_EXCLUDED, f"not an image file ({suffix or 'no extension'})"
    if not manifest.included(entry.relpath):
        return "", cat.STATUS_EXCLUDED, "outside the manifest's include globs"
    if entry.size == 0:
        return "", cat.STATUS_REJECTED, "empty file (0 bytes)"
    video = suffix in VIDEO_EXTENSIONS
    if entry.size > max_bytes and (in_archive or not video):  # folder videos are streamed
        reason = (
            f"file too large ({entry.size / 2**20:.0f} MB > {max_bytes / 2**20:g} MB): not read "
            "(raise --max-file-mb to allow)"
        )
        return "", cat.STATUS_REJECTED, reason
    return ("video" if video else "decode"), cat.STATUS_OK, ""


def subsampled(manifest: Manifest) -> bool:
    """Whether the video stride leaves frames of frame-sequence folders out."""
    return manifest.video_stride > 1 and bool(manifest.sequence_globs)


def subsample_sequences(manifest: Manifest, table: pa.Table) -> pa.Table:
    """Keep every k-th frame of each frame-sequence folder (counted in row order: rows are
    sorted by path, so a folder's frames come in order); the others are excluded."""
    if not subsampled(manifest):
        return table
    candidates = np.flatnonzero(table.column("sequence").to_numpy(zero_copy_only=False))
    if not len(candidates):
        return table
    # the folder of each frame (posixpath.dirname: the path less its last "/"s and name)
    folders = pc.replace_substring_regex(table.column("relpath").take(candidates), pattern="/*[^/]*$", replacement="")
    folder = pc.dictionary_encode(folders).combine_chunks().indices.to_numpy()  # [frames] folder id
    by_folder = np.argsort(folder, kind="stable")  # each folder's frames together, in row order
    grouped = folder[by_folder]
    first = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])  # where each folder starts
    position = np.empty(len(candidates), np.int64)  # [frames] index of the frame in its folder
    position[by_folder] = np.arange(len(candidates)) - np.repeat(first, np.diff(np.r_[first, len(candidates)]))
    left_out = np.zeros(table.num_rows, bool)
    left_out[candidates[position % manifest.video_stride != 0]] = True
    mask = pa.array(left_out)
    reason = f"video subsampling (every {manifest.video_stride}th frame kept)"
    columns = {
        "decision": pc.if_else(mask, pa.scalar(DECISIONS.index(""), pa.int8()), table.column("decision")),
        "status": pc.if_else(mask, pa.scalar(STATUSES.index(cat.STATUS_EXCLUDED), pa.int8()), table.column("status")),
        "reason": pc.if_else(mask, pa.scalar(reason), table.column("reason")),
    }
    for name, column in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


def plan_source(manifest: Manifest, root: Path, max_bytes: int) -> tuple[pa.Table, str]:
    """The source's tasks (TASK_SCHEMA columns), and a digest of its file list (names,
    sizes, times), in this process (`plan_sources` lists folders in parts on the workers, to
    the same result)."""
    listed = list_part(manifest, root, None, max_bytes)
    return ordered_tasks(manifest, root, listed.tasks), hashlib.sha256(listed.lines).hexdigest()


@dataclass(frozen=True)
class ListedPart:
    """A listing unit's files, classified (TASK_SCHEMA columns), and its share of the listing
    digest's input."""

    tasks: pa.Table
    lines: bytes
    renamed: bool  # a name was not UTF-8: its escaped form could equal a name in another unit


def list_part(manifest: Manifest, root: Path, unit: ListingUnit | None, max_bytes: int) -> ListedPart:
    """List and classify one listing unit of a folder, or (`unit` None) a whole source."""
    entries = list_entries(root) if unit is None else list_unit(root, unit)
    in_archive = unit is None and root_kind(root) != "folder"
    tasks = [classify(manifest, entry, max_bytes, in_archive) for entry in entries]
    tasks = [replace(t, reason=SYNTH_MARKER_REASON) if t.relpath == SYNTH_MARKER else t for t in tasks]
    sequence = [t.decision == "decode" and manifest.in_sequence(t.relpath) for t in tasks] if subsampled(manifest) else None
    lines = "".join(f"{e.relpath}\0{e.size}\0{e.mtime}\0{e.problem}\n" for e in entries)
    tick(1)
    table = tasks_table(tasks, sequence)
    return ListedPart(table, lines.encode("utf-8", "backslashreplace"), any(e.problem == NOT_UTF8 for e in entries))


def _ticked_quick_signature(manifest: Manifest, root: Path, policy: ImagePolicy) -> str:
    signature = quick_signature(manifest, root, policy)
    tick(1)  # one part of the listing bar
    return signature


def ordered_tasks(manifest: Manifest, root: Path, table: pa.Table) -> pa.Table:
    """Every k-th frame of a sequence kept; sorted by path, except in a tar archive: there
    tasks keep archive order, so one forward pass reads each chunk's members without holding
    members of later chunks. One chunk per column (work units take their rows from it)."""
    table = subsample_sequences(manifest, table)
    if root_kind(root) == "tar":
        table = table.take(pc.sort_indices(table, [("order", "ascending")]))  # a stable sort
    return table.combine_chunks()


def plan_sources(
    sources: list[tuple[Manifest, Path]], policy: ImagePolicy, execution: ExecutionOptions
) -> tuple[list[str], list[tuple[pa.Table, str]]]:
    """Each source's quick signature (all taken before any file is listed: a file that
    changes meanwhile shows in the next run), and its `plan_source`, listed and classified
    on the workers: a folder in listing units (subtrees, runs of files) whose results join in
    path order, an archive whole. The same for any worker count (and as `plan_source`'s)."""
    max_bytes = policy.max_file_bytes
    workers = execution.workers or available_cores()
    units: list[tuple[int, ListingUnit | None]] = []
    for index, (_, root) in enumerate(sources):
        if root_kind(root) == "folder":
            units.extend((index, unit) for unit in listing_units(root, UNITS_PER_WORKER * workers))
        else:
            units.append((index, None))
    tables: list[list[pa.Table]] = [[] for _ in sources]
    digests = [hashlib.sha256() for _ in sources]  # fed in unit order: no listing held
    renamed = [False for _ in sources]
    with run_units(
        execution, preload=("inf590k.build.ingest",), label="list", total=len(sources) + len(units),
        units=len(units), unit="part", count=lambda *_: 1,
    ) as run:
        quicks = list(run.map(_ticked_quick_signature, ((manifest, root, policy) for manifest, root in sources)))
        work = ((*sources[index], unit, max_bytes) for index, unit in units)
        for (index, _), listed in zip(units, run.map(list_part, work), strict=True):
            tables[index].append(listed.tasks)
            digests[index].update(listed.lines)
            renamed[index] = renamed[index] or listed.renamed
    plans = []
    for (manifest, root), parts, digest, flagged in zip(sources, tables, digests, renamed, strict=True):
        if len(parts) > 1 and flagged:  # rare: a name may collide across units, flag it whole
            plans.append(plan_source(manifest, root, max_bytes))
            continue
        table = pa.concat_tables(parts) if parts else tasks_table([])
        plans.append((ordered_tasks(manifest, root, table), digest.hexdigest()))
    return quicks, plans


def read_weights(table: pa.Table) -> np.ndarray:
    """[files] bytes each file puts in flight: its size, 0 for one decided without reading."""
    size = table.column("size").to_numpy()
    return np.where(table.column("decision").to_numpy() != DECISIONS.index(""), size, 0)


def chunk_starts(weights: np.ndarray, size: int = CHUNK_FILES, max_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """[chunks + 1] the first row of each chunk, then the row count: consecutive runs of at
    most `size` files and `max_bytes` bytes to read (one file over that gets a chunk of its
    own), cut greedily from the start: the cut depends on the file list only."""
    total = np.concatenate([[0], np.cumsum(weights, dtype=np.int64)])  # [files + 1] bytes before each
    rows = len(weights)
    starts = [0]
    start = 0
    while start < rows:  # one step a chunk: the first file that would pass the byte limit
        over = int(np.searchsorted(total, total[start] + max_bytes, side="right")) - 1
        start = min(start + size, max(over, start + 1), rows)
        starts.append(start)
    return np.asarray(starts, np.int64)


def per_chunk(values: np.ndarray, starts: np.ndarray) -> list[int]:
    """The sum of `values` [files] over each chunk."""
    if len(starts) <= 1:
        return []
    return np.add.reduceat(values, starts[:-1]).tolist()


def unit_plan(files: Sequence[int], streamed: Sequence[int], todo: list[int], files_per_unit: int) -> list[list[int]]:
    """Runs of consecutive chunks still to do, each one work unit and one part: at most
    `files_per_unit` files and `CHUNK_BYTES` bytes streamed from a compressed tar (the driver
    holds a unit's bytes until a worker takes it). `files`, `streamed`: per chunk."""
    units: list[list[int]] = []
    held = in_stream = 0
    for index in todo:
        weight = streamed[index]
        if units and held + files[index] <= files_per_unit and (in_stream + weight <= CHUNK_BYTES or not weight):
            units[-1].append(index)
            held += files[index]
            in_stream += weight
        else:
            units.append([index])
            held, in_stream = files[index], weight
    return units


def files_per_unit(todo_files: int, workers: int) -> int:
    return min(PART_FILES, max(CHUNK_FILES, -(-todo_files // (workers * UNITS_PER_WORKER))))


def source_signature(manifest: Manifest, root: Path, policy: ImagePolicy, listing: str) -> str:
    """Digest of everything a chunk's rows depend on; a change invalidates finished chunks."""
    described = {
        "manifest": {k: v for k, v in asdict(manifest).items() if k not in NOT_SIGNED},
        "root": str(Path(root).resolve()),
        "policy": asdict(policy),
        "files": listing,
        "chunk": [CHUNK_FILES, CHUNK_BYTES],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def listing_fingerprint(root: Path) -> str:
    """A digest of what a source's files are now, without reading or classifying one: the
    (relpath, size, mtime_ns) of every file under a folder (a link to a folder by its target,
    an unreadable entry by its error), or the archive file's own. Any file added, removed,
    renamed or rewritten changes it."""
    digest = hashlib.sha256()
    root = Path(root)
    if not root.is_dir():
        info = root.stat()
        digest.update(f"{root.name}\0{info.st_size}\0{info.st_mtime_ns}\0{info.st_ino}".encode())
        return digest.hexdigest()
    pending = [""]
    while pending:
        folder = pending.pop()
        try:
            entries = sorted(os.scandir(root / folder) if folder else os.scandir(root), key=lambda e: e.name)
        except OSError as err:
            digest.update(f"{folder}\0error {err.errno}\n".encode("utf-8", "surrogateescape"))
            continue
        for entry in entries:
            rel = f"{folder}/{entry.name}" if folder else entry.name
            digest.update(_entry_line(entry, rel).encode("utf-8", "surrogateescape"))
            if entry.is_dir(follow_symlinks=False):
                pending.append(rel)
    return digest.hexdigest()


def _entry_line(entry: os.DirEntry, rel: str) -> str:
    if entry.is_dir(follow_symlinks=False):
        return f"{rel}\0dir\n"
    try:
        if entry.is_symlink() and os.path.isdir(entry.path):
            return f"{rel}\0link {os.readlink(entry.path)}\n"
        info = entry.stat()  # a linked file as the decoder reads it: its target
        return f"{rel}\0{info.st_size}\0{info.st_mtime_ns}\n"
    except OSError as err:
        return f"{rel}\0error {err.errno}\n"


def quick_signature(manifest: Manifest, root: Path, policy: ImagePolicy) -> str:
    """`source_signature` with the listing fingerprint for the file list: equal to the one
    recorded by the last finished ingest when nothing it depends on changed."""
    return source_signature(manifest, root, policy, listing_fingerprint(root))


# ----------------------------------------------------------------------------- a source's plan


@dataclass(frozen=True)
class SourcePlan:
    """A source's tasks as columns (TASK_SCHEMA, one chunk a column) cut into chunks, and the
    chunks still to do."""

    job: SourceJob
    table: pa.Table
    starts: np.ndarray  # [chunks + 1] first row of each chunk, then the row count
    to_read: list[int]  # per chunk: files a worker reads (the others are decided already)
    todo: list[int]

    @property
    def chunks(self) -> int:
        return len(self.starts) - 1

    def unit_tasks(self, indices: list[int]) -> UnitTasks:
        """A work unit's rows, copied out of the table (a slice would pickle all of it)."""
        first, last = indices[0], indices[-1]
        if last - first + 1 == len(indices):  # consecutive chunks: one run of rows
            rows = np.arange(self.starts[first], self.starts[last + 1])
        else:
            rows = np.concatenate([np.arange(self.starts[i], self.starts[i + 1]) for i in indices])
        lengths = tuple(int(self.starts[i + 1] - self.starts[i]) for i in indices)
        return UnitTasks(self.table.take(rows), lengths)


@dataclass(frozen=True)
class PlannedUnits:
    """Work units of a source, each one's rows taken from the plan as it is reached."""

    plan: SourcePlan
    units: list[list[int]]

    def __iter__(self) -> Iterator[UnitTasks]:
        return (self.plan.unit_tasks(unit) for unit in self.units)

    def streamed_names(self) -> set[str]:
        """Members of a compressed tar these units stream (none for other sources)."""
        plan = self.plan
        if plan.job.kind != "tar" or not self.units:
            return set()
        chosen = np.zeros(plan.chunks, bool)
        chosen[[i for unit in self.units for i in unit]] = True
        rows = np.repeat(chosen, np.diff(plan.starts)) & streamed_rows(plan.table)
        return set(plan.table.column("relpath").filter(pa.array(rows)).to_pylist())


def streamed_rows(table: pa.Table) -> np.ndarray:
    """[rows] of a tar source: whether a worker reads the row's file from bytes streamed to it (a
    compressed tar's members: an uncompressed one's are read in place at their offset)."""
    return (table.column("decision").to_numpy() != DECISIONS.index("")) & (table.column("offset").to_numpy() < 0)


def streamed_weights(plan: SourcePlan) -> list[int]:
    """Per chunk: bytes the driver streams from a compressed tar (0 for other sources)."""
    if plan.job.kind != "tar":
        return [0] * plan.chunks
    return per_chunk(np.where(streamed_rows(plan.table), plan.table.column("size").to_numpy(), 0), plan.starts)
