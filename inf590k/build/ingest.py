"""Ingest: scan source roots, decode every IR candidate once, write the catalog.

Work is cut into fixed chunks of the sorted file list of each source; each finished chunk is
written as one catalog part (`catalog/part-<source>-<chunk>.parquet`, atomically). A killed
run re-plans, skips the chunks whose part exists and finishes the rest, so the catalog equals
an uninterrupted run's, for any worker count.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pyarrow.parquet as pq

from inf590k.build import catalog as cat
from inf590k.build import lineage
from inf590k.build.rows import (
    SourceJob,
    Task,
    _init_worker,
    policy_for,
    process_chunk,
    raise_opencv_pixel_limit,
)
from inf590k.execution.units import ExecutionOptions, UnitRun, run_units
from inf590k.fsutil import plural
from inf590k.inputs.imageio import (
    ImagePolicy,
)
from inf590k.inputs.manifest import (
    IMAGE_EXTENSIONS,
    NOT_SIGNED,
    SYNTH_CITATION,
    SYNTH_LICENSE,
    SYNTH_MARKER,
    VIDEO_EXTENSIONS,
    Manifest,
    SourceIndex,
    check_folder_facts,
    folder_source_id,
    manifest_for_source,
    read_folder_facts,
    resolve_manifests,
    with_folder_facts,
)
from inf590k.inputs.sources import (
    DAMAGED_INDEX,
    DamagedMember,
    SourceEntry,
    SourceReader,
    list_entries,
    member_suffix,
    root_kind,
)

CHUNK_FILES = 64  # files per catalog part: the resume granularity, independent of workers
SYNTH_MARKER_REASON = "marker of a synthetic tree (written by inf590k synth)"
CHUNK_BYTES = 64 << 20  # and at most this many bytes to read per part (memory in flight)


@dataclass(frozen=True)
class IngestConfig:
    sources: tuple[tuple[str, Path], ...]  # (source id, root folder or archive)
    build: Path
    manifests: tuple[Path, ...] = ()  # extra manifest files (--manifest)
    policy: ImagePolicy = field(default_factory=ImagePolicy)
    drop_sources: tuple[str, ...] = ()  # source ids whose rows and chunks are removed first
    execution: ExecutionOptions = field(default_factory=ExecutionOptions)
    # (folder source id, name | license | citation, text): --source-name/-license/-citation,
    # over the description file at the folder's root
    source_facts: tuple[tuple[str, str, str], ...] = ()


@dataclass
class SourceSummary:
    source: str
    root: str = ""
    found: int = 0
    ok: int = 0
    excluded: int = 0
    rejected: int = 0
    matched: int = 0  # distinct files the include globs matched, before the video stride
    expected: int | None = None
    reused_chunks: int = 0
    folder: bool = False  # a `folder:NAME` (or `folder`) source: no layout to compare
    damaged: str = ""  # the reason of the row that stands for an unreadable archive
    catalog: str = ""  # the build's catalog folder

    def __str__(self) -> str:
        line = (
            f"{self.source}: found {self.found} = ok {self.ok} + excluded {self.excluded} "
            f"+ rejected {self.rejected}"
        )
        if self.expected is not None and self.expected != self.matched:
            line += f" (the manifest expects {self.expected} files matching its globs, found {self.matched})"
        if self.reused_chunks:
            line += f" [resumed: {plural(self.reused_chunks, 'chunk')} already done]"
        return line

    def warning(self) -> str:
        """A line when the source yielded no image at all, with the next step for its case."""
        if self.ok:
            return ""
        head = f"warning: source {self.source} kept 0 of {self.found} files in {self.root}: "
        if self.damaged:  # the archive's index (or everything after its start) cannot be read
            return head + self.damaged
        if self.folder:  # `folder:NAME` sources have no manifest that `sources show` knows
            return head + (
                "check that the path holds infrared images, and read why each file was left out "
                f"in the catalog's reason column (pyarrow.parquet.read_table('{self.catalog}'))"
            )
        return head + (
            f"compare its layout with `inf590k sources show {self.source}` (or use --manifest FILE)"
        )


@dataclass
class IngestSummary:
    sources: list[SourceSummary]
    seconds: float
    decoded: int
    earlier_sources: tuple[str, ...] = ()  # in the build folder from earlier runs, not named now
    dropped: tuple[str, ...] = ()
    changed: bool = True  # catalog parts were written or removed (lineage: later stages stale)
    lineage_options: dict = field(default_factory=dict)  # what the catalog was made from
    lineage_counts: dict = field(default_factory=dict)  # {source: rows}, every source in the build

    @property
    def warnings(self) -> list[str]:
        return [w for w in (s.warning() for s in self.sources) if w]

    def __str__(self) -> str:
        lines = [str(s) for s in self.sources]
        if self.dropped:
            lines.append(f"dropped from the build: {', '.join(self.dropped)}")
        if self.earlier_sources:
            lines.append(
                f"also in the build from earlier runs: {', '.join(self.earlier_sources)} "
                "(remove one with --drop-source ID)"
            )
        rate = self.decoded / self.seconds if self.seconds > 0 else 0.0
        total = sum(s.found for s in self.sources)
        lines.append(f"ingest: {plural(total, 'file')} catalogued, {self.decoded} decoded in {self.seconds:.1f} s ({rate:.0f} img/s)")
        lines.extend(self.warnings)
        return "\n".join(lines)


# ----------------------------------------------------------------------------- planning


def classify(manifest: Manifest, entry: SourceEntry, max_bytes: int, in_archive: bool) -> Task:
    """Scan decision for one file: decode it, decode it as video, or say why not."""
    task = Task(entry.relpath, entry.size, "", occurrence=entry.occurrence, order=entry.order, offset=entry.offset)
    if entry.problem:
        return replace(task, status=cat.STATUS_REJECTED, reason=entry.problem)
    rule = manifest.excluded_by(entry.relpath)
    if rule:
        return replace(task, status=cat.STATUS_EXCLUDED, reason=rule)
    suffix = member_suffix(entry.relpath)
    if suffix not in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS:
        reason = f"not an image file ({suffix or 'no extension'})"
        return replace(task, status=cat.STATUS_EXCLUDED, reason=reason)
    if not manifest.included(entry.relpath):
        return replace(task, status=cat.STATUS_EXCLUDED, reason="outside the manifest's include globs")
    if entry.size == 0:
        return replace(task, status=cat.STATUS_REJECTED, reason="empty file (0 bytes)")
    video = suffix in VIDEO_EXTENSIONS
    if entry.size > max_bytes and (in_archive or not video):  # folder videos are streamed
        reason = (
            f"file too large ({entry.size / 2**20:.0f} MB > {max_bytes / 2**20:g} MB): not read "
            "(raise --max-file-mb to allow)"
        )
        return replace(task, status=cat.STATUS_REJECTED, reason=reason)
    return replace(task, decision="video" if video else "decode")


def subsample_sequences(manifest: Manifest, tasks: list[Task]) -> list[Task]:
    """Keep every k-th frame of each frame-sequence folder; the others are excluded."""
    if manifest.video_stride <= 1 or not manifest.sequence_globs:
        return tasks
    position: dict[str, int] = {}
    out: list[Task] = []
    for task in tasks:  # tasks are sorted by path, so frames of a folder come in order
        if task.decision != "decode" or not manifest.in_sequence(task.relpath):
            out.append(task)
            continue
        folder = posixpath.dirname(task.relpath)
        index = position.get(folder, 0)
        position[folder] = index + 1
        if index % manifest.video_stride:
            reason = f"video subsampling (every {manifest.video_stride}th frame kept)"
            task = replace(task, decision="", status=cat.STATUS_EXCLUDED, reason=reason)
        out.append(task)
    return out


def plan_source(manifest: Manifest, root: Path, max_bytes: int) -> tuple[list[Task], str]:
    """The source's tasks, and a digest of its file list (names, sizes, times).

    Tasks are sorted by path, except in a tar archive: there they keep archive order, so one
    forward pass reads each chunk's members without holding members of later chunks.
    """
    entries = list_entries(root)
    listing = hashlib.sha256()
    for entry in entries:
        listing.update(f"{entry.relpath}\0{entry.size}\0{entry.mtime}\0{entry.problem}\n".encode("utf-8", "backslashreplace"))
    kind = root_kind(root)
    tasks = [classify(manifest, entry, max_bytes, kind != "folder") for entry in entries]
    tasks = [replace(t, reason=SYNTH_MARKER_REASON) if t.relpath == SYNTH_MARKER else t for t in tasks]
    tasks = subsample_sequences(manifest, tasks)
    if kind == "tar":
        tasks.sort(key=lambda task: task.order)
    return tasks, listing.hexdigest()


def chunked(tasks: list[Task], size: int = CHUNK_FILES, max_bytes: int = CHUNK_BYTES) -> list[list[Task]]:
    """Consecutive runs of at most `size` files and `max_bytes` bytes to read (one file over
    that gets a chunk of its own): the cut depends on the file list only."""
    chunks: list[list[Task]] = []
    current: list[Task] = []
    held = 0
    for task in tasks:
        weight = task.size if task.decision else 0
        if current and (len(current) >= size or held + weight > max_bytes):
            chunks.append(current)
            current, held = [], 0
        current.append(task)
        held += weight
    if current:
        chunks.append(current)
    return chunks


def part_path(build: Path, source: str, chunk: int) -> Path:
    return cat.catalog_dir(build) / f"part-{source}-{chunk:06d}.parquet"


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


# ----------------------------------------------------------------------------- processing


# ----------------------------------------------------------------------------- driver


def with_tar_bytes(job: SourceJob, chunks: list[list[Task]]) -> Iterator[list[Task]]:
    """Attach member bytes to tar chunks in one forward pass over the archive.

    Chunks follow archive order, so only the current chunk's members are held. A member that
    cannot be read (cut off, corrupt stream) becomes a rejected task with the reason. Members
    of an uncompressed tar are not streamed: the worker reads them at their offset.
    """
    wanted = {t.relpath for chunk in chunks for t in chunk if t.decision and t.offset < 0}
    if not wanted:  # uncompressed: each worker reads its members in place (no copy held here)
        yield from chunks
        return
    stream = SourceReader(job.root).iter_tar_bytes(wanted)
    buffered: dict[str, bytes | DamagedMember] = {}
    for chunk in chunks:
        needed = {t.relpath for t in chunk if t.decision and t.offset < 0}
        while not needed <= buffered.keys():
            name, payload = next(stream, (None, None))
            if name is None:  # the stream ended early: cannot happen unless the file changed
                buffered.update({n: DamagedMember("archive member not found on re-read") for n in needed})
                break
            buffered[name] = payload
        yield [attach(t, buffered.pop(t.relpath)) if t.relpath in needed else t for t in chunk]


def attach(task: Task, payload: bytes | DamagedMember) -> Task:
    if isinstance(payload, DamagedMember):
        return replace(task, decision="", status=cat.STATUS_REJECTED, reason=str(payload))
    return replace(task, data=payload)


def write_chunk(build: Path, source: str, chunk: int, rows: list[dict]) -> None:
    cat.write_parquet_atomic(cat.rows_to_table(rows), part_path(build, source, chunk))


def summarize_parts(build: Path, manifest: Manifest, root: Path) -> SourceSummary:
    summary = SourceSummary(manifest.id, str(root), expected=manifest.expected_count)
    summary.folder = manifest.folder_source
    summary.catalog = str(cat.catalog_dir(build))
    candidates: set[str] = set()  # files the include globs matched (a video is one file)
    for path in sorted(cat.catalog_dir(build).glob(f"part-{manifest.id}-*.parquet")):
        table = pq.read_table(path, columns=["status", "reason", "relpath"])
        for status, reason, relpath in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True):
            summary.found += 1
            if relpath == DAMAGED_INDEX and status == cat.STATUS_REJECTED:
                summary.damaged = reason
            if status == cat.STATUS_EXCLUDED:
                summary.excluded += 1
                if reason.startswith("video subsampling"):
                    candidates.add(relpath)
                continue
            candidates.add(relpath)
            if status in (cat.STATUS_OK, cat.STATUS_DUPLICATE):
                summary.ok += 1
            else:
                summary.rejected += 1
    summary.matched = len(candidates)
    return summary


def prepare_source(config: IngestConfig, manifest: Manifest, root: Path, recorded: dict) -> tuple[SourceJob, list[list[Task]], list[int]]:
    """Plan a source and find which chunks still need doing (stale parts are removed)."""
    if synthetic_marker(Path(root)):
        manifest = as_synthetic(manifest)
    tasks, listing = plan_source(manifest, root, config.policy.max_file_bytes)
    signature = source_signature(manifest, root, config.policy, listing)
    if recorded.get(manifest.id, {}).get("signature") != signature:
        remove_parts(config.build, manifest.id)
    job = SourceJob(manifest, Path(root), root_kind(root), policy_for(manifest, config.policy), config.build)
    recorded[manifest.id] = {
        "root": str(Path(root).resolve()),
        "kind": job.kind,
        "signature": signature,
        "policy": asdict(job.policy),
        "name": manifest.name,
        "license": manifest.license,
        "modality": manifest.modality,
        "citation": manifest.citation,
        "homepage": manifest.homepage,
        # only when set: a build of an earlier toolkit is not "changed" by keys it lacks
        **({"license_link": manifest.license_link} if manifest.license_link else {}),
        **({"folder_source": True} if manifest.folder_source else {}),
    }
    chunks = chunked(tasks)
    todo = [i for i in range(len(chunks)) if not part_path(config.build, manifest.id, i).exists()]
    return job, chunks, todo


def remove_parts(build: Path, source: str) -> None:
    for stale in cat.catalog_dir(build).glob(f"part-{source}-*.parquet"):
        stale.unlink()


def synthetic_marker(root: Path) -> bool:
    """Whether `inf590k synth` wrote this tree (its marker file at the root of the folder)."""
    return root.is_dir() and (root / SYNTH_MARKER).is_file()


def as_synthetic(manifest: Manifest) -> Manifest:
    """A tree written by `inf590k synth` imitates a source's layout, not its data: its frames
    are synthetic, under the toolkit's license and citation."""
    return replace(
        manifest,
        name=f"{manifest.name} (synthetic imitation)",
        modality="synthetic",
        license=SYNTH_LICENSE,
        citation=SYNTH_CITATION,
        homepage="",
    )


def chosen_manifests(config: IngestConfig) -> list[Manifest]:
    """The manifest of each --source, after checking ids, roots and the build path."""
    manifests = resolve_manifests(config.manifests)
    chosen = [
        described(manifest_for_source(source_id, manifests), Path(root), config.source_facts)
        for source_id, root in config.sources
    ]
    given = {m.id for m in chosen}
    for source_id, key, _ in config.source_facts:
        if folder_source_id(source_id) not in given:
            raise ValueError(
                f"--source-{key} {source_id}=...: no --source names {source_id!r}; give "
                f"--source folder:{folder_source_id(source_id)}=PATH too"
            )
    ids = [m.id for m in chosen]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})[0]
        raise ValueError(f"source {twice!r} is given twice: use folder:NAME=PATH to name each folder")
    both = sorted(set(ids) & set(config.drop_sources))
    if both:
        raise ValueError(f"source {both[0]!r} is both given and dropped: pass one of --source, --drop-source")
    build = Path(config.build).resolve()
    for manifest, (_, root) in zip(chosen, config.sources, strict=True):
        if root_kind(Path(root)) == "folder" and build.is_relative_to(Path(root).resolve()):
            raise ValueError(
                f"--build {config.build} is inside the folder of source {manifest.id} ({root}): "
                "it would catalogue itself; put the build folder elsewhere"
            )
    return chosen


def described(manifest: Manifest, root: Path, facts: tuple[tuple[str, str, str], ...]) -> Manifest:
    """A folder source with its own name, licence and citation: the description file at its
    root, then the command line's. A manifest source's are its manifest's."""
    given = {key: text for source_id, key, text in facts if folder_source_id(source_id) == manifest.id}
    if not manifest.folder_source:
        if given:
            key = next(iter(given))
            raise ValueError(
                f"--source-{key} {manifest.id}=...: {manifest.id} is described by its manifest; "
                "these options describe folder sources (write a manifest, --manifest FILE, to "
                "change a known source)"
            )
        return manifest
    from_file, filename = read_folder_facts(root)
    own = check_folder_facts(given, "the command line")
    return with_folder_facts(manifest, {**from_file, **own}, filename)


def drop_sources(build: Path, recorded: dict, drop: tuple[str, ...]) -> None:
    """Remove the rows, chunks and record of sources an earlier run put in the build."""
    for source in drop:
        if source not in recorded:
            held = ", ".join(sorted(recorded)) or "none"
            raise ValueError(f"--drop-source {source}: not in {build} (it holds: {held})")
    for source in drop:
        remove_parts(build, source)
        del recorded[source]


def _parts_state(build: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in cat.part_paths(build)}


@lineage.stage("ingest", validate=chosen_manifests)
def ingest(config: IngestConfig) -> IngestSummary:
    """Catalogue every file of every source; resumable; identical for any worker count."""
    build = Path(config.build)
    chosen = chosen_manifests(config)
    recorded = cat.read_sources(build)
    before = (json.dumps(recorded, sort_keys=True), _parts_state(build))
    drop_sources(build, {**recorded}, config.drop_sources)  # checks every id before any change
    lineage.mark_running(build, "ingest")
    drop_sources(build, recorded, config.drop_sources)
    plans = [
        prepare_source(config, manifest, Path(root), recorded)
        for manifest, (_, root) in zip(chosen, config.sources, strict=True)
    ]
    index = SourceIndex.for_ids(set(recorded))
    for source_id, info in recorded.items():
        info["index"] = index.index(source_id)
    cat.write_sources(build, recorded)

    total = sum(sum(len(chunks[i]) for i in todo) for _, chunks, todo in plans)
    raise_opencv_pixel_limit(max((job.policy.max_pixels for job, _, _ in plans), default=0))
    started = time.perf_counter()
    decoded = 0
    with run_units(
        config.execution,
        preload=("inf590k.build.rows",),
        label="ingest",
        total=total,
        units=sum(len(todo) for _, _, todo in plans),
        unit="file",
        initializer=_init_worker,
        count=_files_of_rows,
    ) as run:
        for job, chunks, todo in plans:
            decoded += run_source(job, chunks, todo, run)
    seconds = time.perf_counter() - started
    summaries = [summarize_parts(build, job.manifest, job.root) for job, _, _ in plans]
    for summary, (_, chunks, todo) in zip(summaries, plans, strict=True):
        summary.reused_chunks = len(chunks) - len(todo)
    named = {job.manifest.id for job, _, _ in plans}
    after = (json.dumps(recorded, sort_keys=True), _parts_state(build))
    return IngestSummary(
        summaries,
        seconds,
        decoded,
        earlier_sources=tuple(sorted(set(recorded) - named)),
        dropped=tuple(config.drop_sources),
        changed=after != before,
        lineage_options={s: info["signature"] for s, info in sorted(recorded.items())},
        lineage_counts=catalog_counts(build),
    )


def catalog_counts(build: Path) -> dict[str, int]:
    """Rows per source (later stages change statuses, never the rows)."""
    if not cat.part_paths(build):
        return {}
    sources = pq.read_table(cat.catalog_dir(build), columns=["source"]).column("source")
    return dict(sorted(Counter(sources.to_pylist()).items()))


def _files_of_rows(unit: tuple, rows: list[dict]) -> int:
    """Files a finished chunk covered, from its rows (one per file, one per kept video frame)."""
    return len({row["relpath"] for row in rows})


def run_source(job: SourceJob, chunks: list[list[Task]], todo: list[int], run: UnitRun) -> int:
    todo_chunks = [chunks[i] for i in todo]
    if job.kind == "tar":  # on a cluster, a worker streams the archive: no bytes held here
        if run.on_cluster:
            todo_chunks = run.executor.stream(with_tar_bytes, job, todo_chunks)
        else:
            todo_chunks = with_tar_bytes(job, todo_chunks)
    results = run.map(process_chunk, ((job, chunk) for chunk in todo_chunks))
    decoded = 0
    for chunk_index, rows in zip(todo, results, strict=False):
        write_chunk(job.build, job.manifest.id, chunk_index, rows)
        decoded += sum(1 for t in chunks[chunk_index] if t.decision)
    return decoded


# ----------------------------------------------------------------------------- re-reading


