"""Ingest: scan source roots, decode every IR candidate once, write the catalog.

Work is cut into fixed chunks of the sorted file list of each source (the rows never depend
on the cut); a work unit is a run of chunks, a few per worker and at most `PART_FILES` files,
and its worker writes the unit's rows as one catalog part (`catalog/part-<source>-<first
chunk>.parquet`, the chunks it covers in its footer) under a temporary name that the driver
renames once the unit is done (on a cluster the driver writes the part the worker returns).
A killed run re-plans, removes temporary parts, skips the chunks a committed part covers
and finishes the rest, so the catalog equals an uninterrupted run's, for any worker count.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from inf590k.build import catalog as cat
from inf590k.build import lineage
from inf590k.build.ingest_config import IngestConfig, IngestSummary, SourceSummary
from inf590k.build.ingest_parts import (
    ROW_GROUP_ROWS,
    catalog_counts,
    commit_part,
    done_chunks,
    part_schema,
    parts_state,
    remove_parts,
    remove_temporary_parts,
    source_parts,
    temporary_part,
)
from inf590k.build.ingest_plan import (
    PlannedUnits,
    SourcePlan,
    chunk_starts,
    files_per_unit,
    per_chunk,
    plan_sources,
    quick_signature,
    read_weights,
    source_signature,
    streamed_rows,
    streamed_weights,
    unit_plan,
)
from inf590k.build.rows import (
    DECISIONS,
    STATUSES,
    SourceJob,
    UnitTasks,
    _init_worker,
    policy_for,
    process_chunk,
    raise_opencv_pixel_limit,
)
from inf590k.execution.units import UnitRun, run_units
from inf590k.fsutil import available_cores, open_new
from inf590k.inputs.manifest import (
    SYNTH_CITATION,
    SYNTH_LICENSE,
    SYNTH_MARKER,
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
    SourceReader,
    root_kind,
)

# ----------------------------------------------------------------------------- planning












































# ----------------------------------------------------------------------------- processing


# ----------------------------------------------------------------------------- driver


def with_tar_bytes(job: SourceJob, pieces: PlannedUnits) -> Iterator[UnitTasks]:
    """Attach member bytes to tar work units in one forward pass over the archive.

    Units follow archive order, so only the current unit's members are held. A member that
    cannot be read (cut off, corrupt stream) gets the reason in place of its bytes (its row is
    rejected). Members of an uncompressed tar are not streamed: the worker reads them at their
    offset.
    """
    wanted = pieces.streamed_names()
    if not wanted:  # uncompressed: each worker reads its members in place (no copy held here)
        yield from pieces
        return
    stream = SourceReader(job.root).iter_tar_bytes(wanted)
    buffered: dict[str, bytes | DamagedMember] = {}
    for piece in pieces:
        names = piece.table.column("relpath").to_pylist()
        flags = streamed_rows(piece.table).tolist()
        needed = {name for name, flag in zip(names, flags, strict=True) if flag}
        while not needed <= buffered.keys():
            name, payload = next(stream, (None, None))
            if name is None:  # the stream ended early: cannot happen unless the file changed
                buffered.update({n: DamagedMember("archive member not found on re-read") for n in needed})
                break
            buffered[name] = payload
        data = tuple(buffered.pop(name) if flag else None for name, flag in zip(names, flags, strict=True))
        yield replace(piece, data=data)


def process_unit(job: SourceJob, unit: UnitTasks, indices: list[int], write: bool) -> pa.Table | int:
    """Catalogue a unit's chunks. `write`: into its temporary part (this worker writes it,
    a row group per `ROW_GROUP_ROWS` rows held), returning the row count; else (a cluster
    worker, which may not see the build folder) return the rows as one table."""
    schema = part_schema(indices)
    chunks = unit.chunks()
    if not write:
        rows = [row for chunk in chunks for row in process_chunk(job, chunk)]
        return cat.rows_to_table(rows).cast(schema)
    written = 0
    held: list[dict] = []
    with open_new(temporary_part(job.build, job.manifest.id, indices[0])) as handle:
        with pq.ParquetWriter(handle, schema) as writer:
            for chunk in chunks:
                held.extend(process_chunk(job, chunk))
                if len(held) >= ROW_GROUP_ROWS or chunk is chunks[-1]:
                    writer.write_table(cat.rows_to_table(held).cast(schema))
                    written, held = written + len(held), []
        handle.flush()
        os.fsync(handle.fileno())
    return written


def summarize_parts(build: Path, manifest: Manifest, root: Path, planned: pa.Table) -> SourceSummary:
    """A source's counts: rows by status from its parts (their status column alone), what
    the listing decided from the plan's columns (`planned`: every file of the source, as the
    parts' rows were made from it), with Arrow kernels (no Python object per row)."""
    summary = SourceSummary(manifest.id, str(root), expected=manifest.expected_count)
    summary.folder = manifest.folder_source
    summary.catalog = str(cat.catalog_dir(build))
    for path in source_parts(build, manifest.id):
        status = pq.read_table(path, columns=["status"]).column("status")
        summary.found += len(status)
        summary.excluded += pc.sum(pc.equal(status, cat.STATUS_EXCLUDED)).as_py() or 0
        summary.ok += pc.sum(pc.is_in(status, pa.array([cat.STATUS_OK, cat.STATUS_DUPLICATE]))).as_py() or 0
    summary.rejected = summary.found - summary.excluded - summary.ok
    # an unreadable archive's row, and the files the include globs matched (a video is one
    # file): all but exclusions, and frames the video stride left out; workers change neither
    relpath, status, reason = (planned.column(name) for name in ("relpath", "status", "reason"))
    damaged = pc.and_(pc.equal(relpath, DAMAGED_INDEX), pc.equal(status, STATUSES.index(cat.STATUS_REJECTED)))
    if pc.any(damaged).as_py():
        summary.damaged = pc.filter(reason, damaged)[-1].as_py()
    excluded = pc.equal(status, STATUSES.index(cat.STATUS_EXCLUDED))
    matched = pc.or_kleene(pc.invert(excluded), pc.starts_with(reason, "video subsampling"))
    summary.matched = distinct_count(planned, pc.fill_null(matched, False))
    return summary


def distinct_count(planned: pa.Table, rows: pa.ChunkedArray) -> int:
    """Distinct relpaths among `rows` of the plan without hashing every one: a name the
    listing met before has an occurrence (archive members named twice), so only those
    names can repeat."""
    relpath = planned.column("relpath")
    repeated = pc.unique(pc.filter(relpath, pc.greater(planned.column("occurrence"), 0)).combine_chunks())
    in_repeated = pc.is_in(relpath, repeated)
    once = pc.sum(pc.and_(rows, pc.invert(in_repeated))).as_py() or 0
    return once + pc.count_distinct(pc.filter(relpath, pc.and_(rows, in_repeated))).as_py()


def source_manifest(manifest: Manifest, root: Path) -> Manifest:
    return as_synthetic(manifest) if synthetic_marker(Path(root)) else manifest


def prepare_source(
    config: IngestConfig, manifest: Manifest, root: Path, recorded: dict, plan: tuple[pa.Table, str]
) -> SourcePlan:
    """Record a planned source and find which chunks still need doing (stale parts are removed)."""
    table, listing = plan
    signature = source_signature(manifest, root, config.policy, listing)
    if recorded.get(manifest.id, {}).get("signature") != signature:
        remove_parts(config.build, manifest.id)
    job = SourceJob(manifest, Path(root), root_kind(root), policy_for(manifest, config.policy), Path(config.build).absolute())
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
        # "quick" and "summary" are added once the source is catalogued (a no-op run reads them)
    }
    starts = chunk_starts(read_weights(table))
    to_read = per_chunk((table.column("decision").to_numpy() != DECISIONS.index("")).astype(np.int64), starts)
    done = done_chunks(config.build, manifest.id)
    todo = [i for i in range(len(starts) - 1) if i not in done]
    return SourcePlan(job, table, starts, to_read, todo)






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




@lineage.stage("ingest", validate=chosen_manifests)
def ingest(config: IngestConfig) -> IngestSummary:
    """Catalogue every file of every source; resumable; identical for any worker count."""
    build = Path(config.build)
    chosen = chosen_manifests(config)
    recorded = cat.read_sources(build)
    if not config.drop_sources:
        unchanged = up_to_date(config, chosen, recorded)
        if unchanged is not None:
            return unchanged
    before = (json.dumps(_without_quick(recorded), sort_keys=True), parts_state(build))
    drop_sources(build, {**recorded}, config.drop_sources)  # checks every id before any change
    lineage.mark_running(build, "ingest")
    cat.catalog_dir(build).mkdir(parents=True, exist_ok=True)  # workers write their parts there
    remove_temporary_parts(build)
    drop_sources(build, recorded, config.drop_sources)
    sources = [(source_manifest(m, Path(root)), Path(root)) for m, (_, root) in zip(chosen, config.sources, strict=True)]
    quick, listed = plan_sources(sources, config.policy, config.execution)
    quicks = {manifest.id: signature for (manifest, _), signature in zip(sources, quick, strict=True)}
    plans = [
        prepare_source(config, manifest, root, recorded, plan)
        for (manifest, root), plan in zip(sources, listed, strict=True)
    ]
    index = SourceIndex.for_ids(set(recorded))
    for source_id, info in recorded.items():
        info["index"] = index.index(source_id)
    cat.write_sources(build, recorded)

    # the bar counts the files to read: excluded ones are decided already and take no time
    total = sum(plan.to_read[i] for plan in plans for i in plan.todo)
    raise_opencv_pixel_limit(max((plan.job.policy.max_pixels for plan in plans), default=0))
    files = [np.diff(plan.starts).tolist() for plan in plans]  # per chunk
    per_unit = files_per_unit(
        sum(counts[i] for plan, counts in zip(plans, files, strict=True) for i in plan.todo),
        config.execution.workers or available_cores(),
    )
    units = [
        unit_plan(counts, streamed_weights(plan), plan.todo, per_unit)
        for plan, counts in zip(plans, files, strict=True)
    ]
    to_read = {plan.job.manifest.id: plan.to_read for plan in plans}
    started = time.perf_counter()
    decoded = 0
    with run_units(
        config.execution,
        preload=("inf590k.build.rows",),
        label="ingest",
        total=total,
        units=sum(len(u) for u in units),
        unit="file",
        initializer=_init_worker,
        count=lambda unit, _: sum(to_read[unit[0].manifest.id][i] for i in unit[2]),  # Ray
    ) as run:
        for plan, source_units in zip(plans, units, strict=True):
            decoded += run_source(plan, source_units, run)
    seconds = time.perf_counter() - started
    summaries = [summarize_parts(build, plan.job.manifest, plan.job.root, plan.table) for plan in plans]
    for summary, plan in zip(summaries, plans, strict=True):
        source = plan.job.manifest.id
        summary.reused_chunks = plan.chunks - len(plan.todo)
        recorded[source].update(quick=quicks[source], summary={**asdict(summary), "reused_chunks": plan.chunks})
    named = {plan.job.manifest.id for plan in plans}
    after = (json.dumps(_without_quick(recorded), sort_keys=True), parts_state(build))
    cat.write_sources(build, recorded)
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


def _without_quick(recorded: dict) -> dict:
    """sources.json without what a finished run adds for the next no-op check."""
    return {s: {k: v for k, v in info.items() if k not in ("quick", "summary")} for s, info in recorded.items()}


def up_to_date(config: IngestConfig, chosen: list[Manifest], recorded: dict) -> IngestSummary | None:
    """The last run's summary when nothing changed (its record fresh, every source's quick
    signature as recorded): no file listed, classified or catalog part read. None: re-plan."""
    build = Path(config.build)
    record = lineage.read_record(build, "ingest")
    if record is None or lineage.problem(build, "ingest"):
        return None
    summaries = []
    for manifest, (_, root) in zip(chosen, config.sources, strict=True):
        info = recorded.get(manifest.id, {})
        if "quick" not in info or "summary" not in info:
            return None
        if synthetic_marker(Path(root)):
            manifest = as_synthetic(manifest)
        if quick_signature(manifest, Path(root), config.policy) != info["quick"]:
            return None
        summaries.append(SourceSummary(**info["summary"]))
    named = {m.id for m in chosen}
    return IngestSummary(
        summaries,
        seconds=0.0,
        decoded=0,
        earlier_sources=tuple(sorted(set(recorded) - named)),
        changed=False,
        lineage_options=record.options,
        lineage_counts=record.counts,
    )




def process_streamed(job: SourceJob, piece: UnitTasks, indices: list[int], write: bool) -> pa.Table | int:
    """One chunk of an archive a cluster worker streams (Ray resolves a top-level argument)."""
    return process_unit(job, piece, indices, write)


def run_source(plan: SourcePlan, units: list[list[int]], run: UnitRun) -> int:
    job = plan.job
    if run.on_cluster and PlannedUnits(plan, units).streamed_names():  # a worker streams the
        units = [[i] for unit in units for i in unit]  # archive, one chunk a unit, as Ray resolves it
        stream = run.executor.stream(with_tar_bytes, job, PlannedUnits(plan, units))
        work = ((job, ref, indices, False) for ref, indices in zip(stream, units, strict=False))
        return _commit_all(plan, units, run.map(process_streamed, work))
    pieces = with_tar_bytes(job, PlannedUnits(plan, units))
    write = not run.on_cluster
    work = ((job, piece, indices, write) for piece, indices in zip(pieces, units, strict=False))
    return _commit_all(plan, units, run.map(process_unit, work))


def _commit_all(plan: SourcePlan, units: list[list[int]], results: Iterator) -> int:
    decoded = 0
    for indices, result in zip(units, results, strict=False):
        commit_part(plan.job.build, plan.job.manifest.id, indices, result)
        decoded += sum(plan.to_read[i] for i in indices)
    return decoded


# ----------------------------------------------------------------------------- re-reading


