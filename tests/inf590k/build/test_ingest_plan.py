"""Ingest's planning on columns: the chunk and unit cut, the video stride and a work unit's
rows equal the per-task reference (one Python object per file, as ingest planned before)."""

from __future__ import annotations

import io
import pickle
import posixpath
import random
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from inf590k.build import catalog as cat
from inf590k.build.ingest import IngestConfig, ingest, with_tar_bytes
from inf590k.build.ingest_plan import (
    CHUNK_BYTES,
    CHUNK_FILES,
    PlannedUnits,
    SourcePlan,
    chunk_starts,
    per_chunk,
    plan_source,
    read_weights,
    subsample_sequences,
    unit_plan,
)
from inf590k.build.rows import SourceJob, Task, UnitTasks, policy_for, table_tasks, tasks_table
from inf590k.execution.units import ExecutionOptions
from inf590k.inputs.imageio import ImagePolicy
from inf590k.inputs.manifest import folder_manifest
from inf590k.inputs.sources import DAMAGED_INDEX, DamagedMember
from tests.images import encode, thermal_frame

# ----------------------------------------------------------------------------- the reference


def reference_chunks(tasks: list[Task], size: int = CHUNK_FILES, max_bytes: int = CHUNK_BYTES) -> list[list[Task]]:
    """The cut as a loop over tasks: at most `size` files and `max_bytes` bytes to read."""
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


def reference_units(chunks: list[list[Task]], todo: list[int], files_per_unit: int, kind: str) -> list[list[int]]:
    units: list[list[int]] = []
    files = streamed = 0
    for index in todo:
        chunk = chunks[index]
        weight = sum(t.size for t in chunk if t.decision and t.offset < 0) if kind == "tar" else 0
        if units and files + len(chunk) <= files_per_unit and (streamed + weight <= CHUNK_BYTES or not weight):
            units[-1].append(index)
            files += len(chunk)
            streamed += weight
        else:
            units.append([index])
            files, streamed = len(chunk), weight
    return units


def reference_subsample(stride: int, in_sequence, tasks: list[Task]) -> list[Task]:
    position: dict[str, int] = {}
    out: list[Task] = []
    for task in tasks:
        if task.decision != "decode" or not in_sequence(task.relpath):
            out.append(task)
            continue
        folder = posixpath.dirname(task.relpath)
        index = position.get(folder, 0)
        position[folder] = index + 1
        if index % stride:
            reason = f"video subsampling (every {stride}th frame kept)"
            task = replace(task, decision="", status=cat.STATUS_EXCLUDED, reason=reason)
        out.append(task)
    return out


def column_chunks(tasks: list[Task], size: int = CHUNK_FILES, max_bytes: int = CHUNK_BYTES) -> list[list[Task]]:
    starts = chunk_starts(read_weights(tasks_table(tasks)), size, max_bytes)
    return [tasks[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True)]


def random_tasks(seed: int, count: int, big: int) -> list[Task]:
    rng = random.Random(seed)
    tasks = []
    for i in range(count):
        decision = rng.choice(["decode", "decode", "video", ""])
        size = rng.choice([0, 1, 10, big // 3, big // 2, big, big + 1, 3 * big])
        offset = rng.choice([-1, -1, 512 * i])
        status = cat.STATUS_OK if decision else rng.choice([cat.STATUS_EXCLUDED, cat.STATUS_REJECTED])
        tasks.append(Task(f"d{i % 7}/f{i:05d}.png", size, decision, status, "" if decision else "why", offset=offset, order=count - i))
    return tasks


# ----------------------------------------------------------------------------- chunks and units


TRICKY = {
    "empty source": [],
    "one file over the byte limit": [Task("a.png", CHUNK_BYTES + 1, "decode")],
    "a file over the limit between others": [
        Task("a.png", 10, "decode"), Task("b.png", CHUNK_BYTES + 1, "decode"), Task("c.png", 10, "decode"),
    ],
    "exactly the limit, then one byte more": [
        Task("a.png", CHUNK_BYTES // 2, "decode"), Task("b.png", CHUNK_BYTES // 2, "decode"), Task("c.png", 1, "decode"),
    ],
    "excluded files weigh nothing": [
        Task(f"{i:03d}.txt", CHUNK_BYTES, "", cat.STATUS_EXCLUDED, "not an image file (.txt)") for i in range(3 * CHUNK_FILES + 5)
    ],
    "a rejected file over the limit": [
        Task("a.png", 10, "decode"), Task("huge.png", 5 * CHUNK_BYTES, "", cat.STATUS_REJECTED, "file too large"), Task("c.png", 10, "decode"),
    ],
    "files of zero bytes": [Task(f"{i:03d}.png", 0, "decode") for i in range(CHUNK_FILES + 1)],
}


@pytest.mark.parametrize("name", list(TRICKY))
def test_the_column_cut_equals_the_per_task_cut(name):
    tasks = TRICKY[name]
    assert column_chunks(tasks) == reference_chunks(tasks)


@pytest.mark.parametrize("seed", range(6))
def test_the_column_cut_and_units_equal_the_reference_on_random_lists(seed):
    big = 1000
    tasks = random_tasks(seed, 300 + 40 * seed, big)
    size = [1, 3, 64][seed % 3]
    expected = reference_chunks(tasks, size, big)
    assert column_chunks(tasks, size, big) == expected
    table = tasks_table(tasks)
    starts = chunk_starts(read_weights(table), size, big)
    files = np.diff(starts).tolist()
    rng = random.Random(seed)
    todo = sorted(rng.sample(range(len(expected)), len(expected) * 2 // 3))  # a resumed run: gaps
    streamed = per_chunk(np.where((table.column("decision").to_numpy() > 0) & (table.column("offset").to_numpy() < 0), table.column("size").to_numpy(), 0), starts)
    for per_unit in (1, 5, 64, 200):
        assert unit_plan(files, streamed, todo, per_unit) == reference_units(expected, todo, per_unit, "tar")
        assert unit_plan(files, [0] * len(files), todo, per_unit) == reference_units(expected, todo, per_unit, "folder")


def test_a_compressed_tar_unit_streams_at_most_the_chunk_bytes():
    tasks = [Task(f"{i:03d}.png", CHUNK_BYTES // 3, "decode") for i in range(12)]
    chunks = reference_chunks(tasks, 2)
    files, streamed = [len(c) for c in chunks], [sum(t.size for t in c) for c in chunks]
    units = unit_plan(files, streamed, list(range(len(chunks))), 1000)
    assert units == reference_units(chunks, list(range(len(chunks))), 1000, "tar")
    assert all(sum(streamed[i] for i in unit) <= CHUNK_BYTES for unit in units) and len(units) == 6


def test_the_weights_count_only_files_to_read():
    table = tasks_table([Task("a.png", 7, "decode"), Task("b.txt", 9, "", cat.STATUS_EXCLUDED, "x"), Task("c.mp4", 5, "video")])
    assert read_weights(table).tolist() == [7, 0, 5]
    assert chunk_starts(read_weights(tasks_table([]))).tolist() == [0] and per_chunk(np.zeros(0), np.array([0])) == []


def test_a_tar_source_is_cut_in_archive_order(tmp_path):
    archive = tmp_path / "shuffled.tar"
    names = [f"d/{i:03d}.png" for i in range(20)]
    random.Random(3).shuffle(names)
    with tarfile.open(archive, "w") as tf:
        for i, name in enumerate(names):
            data = bytes(100 + i)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    table, _ = plan_source(folder_manifest(), archive, 1 << 30)
    tasks = table_tasks(table)
    assert [t.relpath for t in tasks] == names and [t.order for t in tasks] == sorted(t.order for t in tasks)
    assert column_chunks(tasks, 4, 350) == reference_chunks(tasks, 4, 350)


# ----------------------------------------------------------------------------- the video stride


def test_the_column_stride_equals_the_per_task_stride():
    manifest = replace(folder_manifest(), video_stride=3, sequence_globs=("**/seq*/**",))
    names = (
        [f"a/seq1/{i:03d}.png" for i in range(7)]
        + ["a/seq1/sub/000.png", "a/seq1/sub/001.png", "a/seq1/zz.png", "a/seq1/zz.txt"]
        + [f"b/seq2/{i:03d}.png" for i in range(5)]
        + ["c/other/000.png", "c/other/001.png", "seqtop.png"]
    )
    names.sort()  # a sub-folder's frames come between the folder's own: counted apart
    tasks = [
        Task(n, 10, "decode" if n.endswith(".png") else "", cat.STATUS_OK if n.endswith(".png") else cat.STATUS_EXCLUDED, "" if n.endswith(".png") else "not an image")
        for n in names
    ]
    tasks[2] = replace(tasks[2], decision="", status=cat.STATUS_REJECTED, reason="empty file (0 bytes)")
    flags = [t.decision == "decode" and manifest.in_sequence(t.relpath) for t in tasks]
    got = table_tasks(subsample_sequences(manifest, tasks_table(tasks, flags)))
    expected = reference_subsample(3, manifest.in_sequence, tasks)
    assert got == expected
    assert sum(t.reason.startswith("video subsampling") for t in got) == 4 + 1 + 3  # a/seq1, its sub, b/seq2


def test_no_stride_keeps_the_table_as_it_is():
    table = tasks_table([Task("seq/000.png", 10, "decode")], [True])
    assert subsample_sequences(folder_manifest(), table) is table


# ----------------------------------------------------------------------------- work units


def test_a_task_survives_the_columns_and_a_unit_pickles_its_rows_alone(tmp_path):
    tasks = [
        Task("é/a b.png", 12, "decode", occurrence=0, order=4, offset=1024),
        Task("x.mp4", 3, "video", order=2),
        Task("dup.png", 9, "", cat.STATUS_REJECTED, "duplicate member name", occurrence=2, order=9),
        Task("y.txt", 0, "", cat.STATUS_EXCLUDED, "not an image file (.txt)"),
    ] * 500
    table = tasks_table(tasks)
    assert table_tasks(table) == tasks
    starts = chunk_starts(read_weights(table), 64)
    job = SourceJob(folder_manifest(), tmp_path, "folder", policy_for(folder_manifest(), ImagePolicy()), tmp_path)
    plan = SourcePlan(job, table, starts, [0] * (len(starts) - 1), list(range(len(starts) - 1)))
    unit = plan.unit_tasks([3, 4, 7])
    assert unit.chunks() == [tasks[starts[i] : starts[i + 1]] for i in (3, 4, 7)]
    assert len(pickle.dumps(unit)) * 5 < len(pickle.dumps(table))  # not the whole table


def test_streamed_members_are_attached_and_a_damaged_one_rejects_its_row(tmp_path):
    archive = tmp_path / "a.tar.gz"
    members = {f"d/{i:02d}.png": bytes([i]) * (10 + i) for i in range(6)}
    with tarfile.open(archive, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    table, _ = plan_source(folder_manifest(), archive, 1 << 30)
    starts = chunk_starts(read_weights(table), 2)
    job = SourceJob(folder_manifest(), archive, "tar", policy_for(folder_manifest(), ImagePolicy()), tmp_path)
    plan = SourcePlan(job, table, starts, [2, 2, 2], [0, 2])
    units = PlannedUnits(plan, [[0], [2]])
    assert units.streamed_names() == {"d/00.png", "d/01.png", "d/04.png", "d/05.png"}
    pieces = list(with_tar_bytes(job, units))
    assert [[t.data for t in chunk] for piece in pieces for chunk in piece.chunks()] == [
        [members["d/00.png"], members["d/01.png"]], [members["d/04.png"], members["d/05.png"]],
    ]
    damaged = replace(pieces[0], data=(DamagedMember("damaged archive member (cut off)"), pieces[0].data[1]))
    first, second = damaged.chunks()[0]
    assert (first.decision, first.status, first.reason, first.data) == ("", cat.STATUS_REJECTED, "damaged archive member (cut off)", None)
    assert second.data == members["d/01.png"]


def test_units_of_a_folder_carry_no_bytes(tmp_path):
    table = tasks_table([Task(f"{i}.png", 5, "decode") for i in range(10)])
    job = SourceJob(folder_manifest(), tmp_path, "folder", policy_for(folder_manifest(), ImagePolicy()), tmp_path)
    plan = SourcePlan(job, table, chunk_starts(read_weights(table), 4), [4, 4, 2], [0, 1, 2])
    pieces = list(with_tar_bytes(job, PlannedUnits(plan, [[0, 1], [2]])))
    assert [p.data for p in pieces] == [None, None] and [p.lengths for p in pieces] == [(4, 4), (2,)]
    assert isinstance(pieces[0], UnitTasks) and Path(job.root) == tmp_path


# ----------------------------------------------------------------------------- the summary


def catalog_summary(build: Path, source: str) -> tuple[int, int, int, int, int, str]:
    """(found, ok, excluded, rejected, matched, damaged) counted over the catalog's rows."""
    rows = [r for r in cat.read_catalog(build).to_pylist() if r["source"] == source]
    excluded = [r for r in rows if r["status"] == cat.STATUS_EXCLUDED]
    ok = [r for r in rows if r["status"] in (cat.STATUS_OK, cat.STATUS_DUPLICATE)]
    matched = {r["relpath"] for r in rows if r["status"] != cat.STATUS_EXCLUDED or r["reason"].startswith("video subsampling")}
    damaged = [r["reason"] for r in rows if r["relpath"] == DAMAGED_INDEX and r["status"] == cat.STATUS_REJECTED]
    return len(rows), len(ok), len(excluded), len(rows) - len(ok) - len(excluded), len(matched), (damaged or [""])[-1]


@pytest.mark.parametrize("workers", [1, 2])
def test_the_summary_counts_what_the_catalog_holds(tmp_path, workers):
    """Archive members named twice (one a non-image) land in different parts; the archive is
    cut short after them: the summary's counts equal the catalog's."""
    archive = tmp_path / "twice.tar"
    with tarfile.open(archive, "w") as tf:
        for i in range(150):
            name = ["d/same.png", "d/notes.txt", f"d/{i:03d}.png"][min(i % 50, 2)]
            data = encode(thermal_frame(16, 16, seed=i)) if name.endswith(".png") else b"text"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    whole = archive.read_bytes()
    archive.write_bytes(whole[: len(whole) * 9 // 10 + 100])  # cut inside a member
    config = IngestConfig(sources=(("folder", archive),), build=tmp_path / "b", execution=ExecutionOptions(workers=workers, progress=False))
    summary = ingest(config).sources[0]
    found, ok, excluded, rejected, matched, damaged = catalog_summary(tmp_path / "b", summary.source)
    assert (summary.found, summary.ok, summary.excluded, summary.rejected) == (found, ok, excluded, rejected)
    assert (summary.matched, summary.damaged) == (matched, damaged)
    assert damaged.startswith("damaged archive") and excluded == 1 and 100 < matched < found  # a repeat of the .txt is rejected
    assert len(cat.part_paths(tmp_path / "b")) > 1 or workers == 1


def test_empty_sources_plan_no_chunk_and_write_no_part(tmp_path):
    (tmp_path / "empty").mkdir()
    tarfile.open(tmp_path / "empty.tar.gz", "w:gz").close()
    sources = (("folder:a", tmp_path / "empty"), ("folder:b", tmp_path / "empty.tar.gz"))
    table, _ = plan_source(folder_manifest(), tmp_path / "empty.tar.gz", 1 << 30)
    assert table.num_rows == 0 and chunk_starts(read_weights(table)).tolist() == [0]
    summary = ingest(IngestConfig(sources=sources, build=tmp_path / "b", execution=ExecutionOptions(workers=2, progress=False)))
    assert [(s.found, s.matched, s.reused_chunks) for s in summary.sources] == [(0, 0, 0), (0, 0, 0)]
    assert cat.part_paths(tmp_path / "b") == []
