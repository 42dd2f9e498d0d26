"""The plan file and the small jobs: the same plan digests as the row-by-row planner, rows
read back exactly, an edited or linked plan file refused, resume decided without the JSON,
and the index inputs (counts, sources) equal to their row-by-row forms."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from inf590k.build import catalog as cat
from inf590k.build.shard import ShardConfig
from inf590k.build.shard import jobs as jobs_module
from inf590k.build.shard import stage as stage_module
from inf590k.build.shard.jobs import (
    PLAN_PATH,
    PlanChanged,
    plan_file,
    plan_shards,
    read_plan_message,
)
from inf590k.build.shard.plan import (
    FORMAT_VERSION,
    _bin_rng,
    estimated_bytes,
    even_runs,
    kept_sources,
    shard_counts,
)
from inf590k.build.shard.stage import catalog_counts, reason_class
from inf590k.dataset.layout import CATALOG_SCHEMA, sample_json
from inf590k.execution.units import ExecutionOptions
from tests.builders import make_build, shard_dataset


def catalog_table(sizes: dict[str, int], seed: int = 0) -> pa.Table:
    """Kept rows of several bins and sources (uids unsorted), plus rows that are not kept."""
    generator = np.random.default_rng(seed)
    rows = []
    for bin_name, count in sizes.items():
        for index in generator.permutation(count):
            rows.append({
                "uid": f"{'abc'[index % 3]}-{bin_name}-{index:05d}",
                "source": ["alpha", "beta", "gamma"][index % 3],
                "relpath": f"{bin_name}/{index}.png",
                "status": cat.STATUS_OK,
                "reason": "",
                "width": 64 + index % 7,
                "height": 48,
                "bit_depth": 16 if index % 5 == 0 else 8,
                "entropy": float(index) / 7,
                "tags": ["day", f"t{index % 4}"],
                "crop_box": [0, 0, 64, 48],
                "modality": ["lwir", "mwir"][index % 2] if index % 4 else None,
                "license": "CC BY 4.0",
                "res_bin": bin_name,
            })  # fmt: skip
    rows.append({"uid": "z-dup", "source": "alpha", "relpath": "d.png", "status": cat.STATUS_DUPLICATE,
                 "reason": "duplicate of a-x (phash 2)", "res_bin": ""})  # fmt: skip
    rows.append({"uid": "z-small", "source": "beta", "relpath": "s.png", "status": cat.STATUS_REJECTED,
                 "reason": "too small (12x9 < 32)", "res_bin": None})  # fmt: skip
    return cat.rows_to_table(rows)


def former_digests(table: pa.Table, config: ShardConfig) -> list[tuple[str, str]]:
    """(relpath, plan digest) per shard, planned row by row as the former planner did."""
    rows = [r for r in table.to_pylist() if r["status"] == cat.STATUS_OK]
    classes = {s: i for i, s in enumerate(sorted({r["source"] for r in rows}))}
    by_bin: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: r["uid"]):
        by_bin.setdefault(row["res_bin"], []).append(row)
    shuffled = {b: [rs[i] for i in _bin_rng(config.seed, b).permutation(len(rs))] for b, rs in by_bin.items()}
    estimates = {b: estimated_bytes(cat.rows_to_table(rs), config.keep_16bit) for b, rs in shuffled.items()}
    counts = shard_counts(estimates, config.max_count, config.max_size, config.shard_multiple)
    digests = []
    for bin_name in sorted(shuffled):
        for index, shard_rows in enumerate(even_runs(shuffled[bin_name], counts[bin_name])):
            relpath = f"{bin_name}/{bin_name}-{index:06d}.tar"
            shard_classes = tuple(classes[r["source"]] for r in shard_rows)
            header = json.dumps([FORMAT_VERSION, config.keep_16bit, config.png_level, relpath, shard_classes])
            jsons = b"".join(sample_json(r) for r in shard_rows)
            digests.append((relpath, hashlib.sha256(header.encode() + jsons).hexdigest()))
    return digests


@pytest.mark.parametrize("options", [{"max_count": 40}, {"max_count": 25, "keep_16bit": True, "seed": 3},
                                     {"max_count": 1000, "shard_multiple": 7, "png_level": 4}])  # fmt: skip
def test_plan_digests_are_those_of_the_row_by_row_planner(tmp_path, options):
    table = catalog_table({"s0-255_r100-114": 130, "s256-383_r115-149": 61, "s768-up_r150-199": 3})
    config = ShardConfig(build=tmp_path, out=tmp_path / "ds", **options)
    jobs = plan_shards(config, None, table)
    assert [(j.relpath, j.plan) for j in jobs] == former_digests(table, config)
    kept = [r for r in table.to_pylist() if r["status"] == cat.STATUS_OK]
    read_back = [row for job in jobs for row in job.rows]
    assert sorted(read_back, key=lambda r: r["uid"]) == sorted(kept, key=lambda r: r["uid"])
    assert all(job.table.schema == CATALOG_SCHEMA for job in jobs)
    assert jobs[0].jsons == tuple(sample_json(r) for r in jobs[0].rows)


def test_a_job_pickles_small_whatever_its_rows(tmp_path):
    table = catalog_table({"a": 2000, "b": 5})
    jobs = plan_shards(ShardConfig(build=tmp_path, out=tmp_path / "ds", max_count=1000), None, table)
    sizes = [len(pickle.dumps(job)) for job in jobs]
    assert [len(j) for j in jobs] == [1000, 1000, 5]
    assert max(sizes) < 1200 and max(sizes) - min(sizes) < 64  # names and digests, no rows


def test_an_edited_plan_file_is_refused_before_its_rows_are_read(tmp_path):
    jobs = plan_shards(ShardConfig(build=tmp_path, out=tmp_path / "ds", max_count=50), None, catalog_table({"a": 120}))
    path = tmp_path / PLAN_PATH
    data = bytearray(path.read_bytes())
    job = jobs[1]
    data[job.offset + job.length - 9] ^= 1  # one bit inside the second shard's rows
    path.write_bytes(bytes(data))
    assert len(jobs[0].rows) == 40  # the other shards' bytes are untouched
    with pytest.raises(PlanChanged, match=r"rows of a/a-000001\.tar are not those planned"):
        _ = job.table
    path.write_bytes(bytes(data[: job.offset + 10]))
    with pytest.raises(PlanChanged, match="shorter than planned"):
        _ = jobs[2].table


def test_a_link_in_place_of_the_plan_file_is_not_followed(tmp_path):
    jobs = plan_shards(ShardConfig(build=tmp_path, out=tmp_path / "ds", max_count=50), None, catalog_table({"a": 60}))
    path = plan_file(tmp_path)
    elsewhere = tmp_path / "elsewhere.arrow"
    path.rename(elsewhere)
    path.symlink_to(elsewhere)
    with pytest.raises(OSError):
        read_plan_message(path, jobs[0].offset, jobs[0].length)
    planned_again = plan_shards(ShardConfig(build=tmp_path, out=tmp_path / "ds", max_count=50), None, catalog_table({"a": 60}))
    assert not path.is_symlink() and elsewhere.read_bytes() != b""  # the link replaced, its target kept
    assert [j.rows_digest for j in planned_again] == [j.rows_digest for j in jobs]


# ----------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def built(tmp_path_factory, ir_samples) -> Path:
    return make_build(tmp_path_factory.mktemp("jobsbuild"), ir_samples)


def one_worker(build: Path, out: Path, **options) -> ShardConfig:
    return ShardConfig(build=build, out=out, execution=ExecutionOptions(workers=1, progress=False), **options)


def test_a_finished_folder_is_decided_without_a_worker_and_the_plan_file_removed(built, tmp_path, monkeypatch):
    config = one_worker(built, tmp_path / "ds", max_count=3)
    first = shard_dataset(config)
    assert not (built / PLAN_PATH).exists() and not (built / PLAN_PATH).parent.exists()
    stats = sorted(config.out.glob("metadata/shards/*/*_stats.json"))
    assert all(set(json.loads(p.read_text())) >= {"plan", "rows"} for p in stats)

    def no_worker(job):
        raise AssertionError(f"{job.relpath} was sent to a worker")

    monkeypatch.setattr(stage_module, "write_shard", no_worker)
    again = shard_dataset(config)  # the rows digests of a second read of the catalog match
    assert (again.written, again.reused) == (0, first.shards)


def test_shards_of_a_marker_without_the_rows_digest_are_kept_not_rewritten(built, tmp_path):
    config = one_worker(built, tmp_path / "ds", max_count=3)
    first = shard_dataset(config)
    reference = (config.out / "metadata" / "SHA256SUMS").read_text()
    tars = {p: p.stat().st_mtime_ns for p in config.out.glob("data/*/*.tar")}
    for path in config.out.glob("metadata/shards/*/*_stats.json"):  # as an earlier version wrote it
        stats = json.loads(path.read_text())
        del stats["rows"]
        path.write_text(json.dumps(stats, indent=1))
    again = shard_dataset(config)
    assert (again.written, again.reused) == (0, first.shards)
    assert {p: p.stat().st_mtime_ns for p in tars} == tars
    assert (config.out / "metadata" / "SHA256SUMS").read_text() == reference
    assert all("rows" in json.loads(p.read_text()) for p in config.out.glob("metadata/shards/*/*_stats.json"))


def test_a_failed_run_removes_the_plan_file_and_the_catalog_copy(built, tmp_path, monkeypatch):
    def broken(job):
        raise RuntimeError("worker failed")

    monkeypatch.setattr(stage_module, "write_shard", broken)
    with pytest.raises(RuntimeError, match="worker failed"):
        stage_module.shard(one_worker(built, tmp_path / "ds"))
    assert not (built / PLAN_PATH).exists()
    assert not list((tmp_path / "ds").rglob("*.tmp"))


# ----------------------------------------------------------------------------- index inputs


def counts_row_by_row(table: pa.Table) -> dict:
    """metadata/counts.json as the former stage counted it, one row at a time."""
    counts: dict[str, dict] = {}
    for row in table.to_pylist():
        per_source = counts.setdefault(row["source"], {"found": 0, **{s: 0 for s in cat.STATUSES}})
        per_source["found"] += 1
        per_source[row["status"]] += 1
        if row["status"] != cat.STATUS_OK:
            reasons = per_source.setdefault("reasons", {}).setdefault(row["status"], {})
            kind = reason_class(row["reason"])
            reasons[kind] = reasons.get(kind, 0) + 1
    for per_source in counts.values():
        per_source.setdefault("reasons", {})
    return dict(sorted(counts.items()))


def test_catalog_counts_are_the_row_by_row_counts_key_order_included():
    statuses = [cat.STATUS_REJECTED, cat.STATUS_OK, cat.STATUS_DUPLICATE, cat.STATUS_EXCLUDED]
    reasons = ["too small (3x3)", "duplicate of x-1", "not infrared: colour", None, "", "corrupt/truncated",
               "too small (9x9)", "odd \u2028 text with \"quotes\""]  # fmt: skip
    rows = []
    for index in range(300):
        status = statuses[(index * 7) % 4]
        rows.append({"uid": f"u{index:04d}", "source": ["zeta", "alpha", "mid"][index % 3], "relpath": f"{index}.png",
                     "status": status, "reason": "" if status == cat.STATUS_OK else reasons[(index * 5) % len(reasons)]})  # fmt: skip
    table = cat.rows_to_table(rows)
    assert json.dumps(catalog_counts(table)) == json.dumps(counts_row_by_row(table))


def test_kept_sources_take_the_most_common_value_and_the_first_on_a_tie():
    table = cat.rows_to_table([
        {"uid": f"u{i}", "source": source, "relpath": f"{i}", "status": cat.STATUS_OK, "modality": modality, "license": license_text}
        for i, (source, modality, license_text) in enumerate([
            ("a", "mwir", None), ("a", "lwir", "MIT"), ("a", "lwir", ""), ("a", "mwir", "MIT"),
            ("b", None, None), ("b", "", "CC0 1.0"), ("c", "nir", "x"),
        ])
    ])  # fmt: skip
    order = np.array([3, 1, 0, 2, 4, 5, 6])  # the order that breaks ties: mwir first for "a"
    found = kept_sources(table, order)
    assert {s: (k.samples, k.modality, k.license) for s, k in found.items()} == {
        "a": (4, "mwir", "MIT"), "b": (2, None, "CC0 1.0"), "c": (1, "nir", "x")
    }
    rows = table.take(pa.array(order)).to_pylist()
    for source, kept in found.items():  # as Counter.most_common over the rows in that order
        values = Counter(r["modality"] for r in rows if r["source"] == source and r["modality"])
        assert kept.modality == (values.most_common(1)[0][0] if values else None)


def test_reason_class_keeps_the_kind_only():
    assert reason_class("too small (12x9 < 32)") == "too small"
    assert re.fullmatch(r"unspecified", reason_class(None))
    assert os.sep not in reason_class("corrupt/truncated")


def test_a_link_in_place_of_the_plan_folder_gets_nothing_elsewhere_removed(built, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("plan.arrow", "plan.arrow.tmp"):
        (elsewhere / name).write_text("not ours")
    link = built / Path(PLAN_PATH).parent
    link.symlink_to(elsewhere, target_is_directory=True)
    try:
        with pytest.raises(ValueError, match="is a link"):
            stage_module.shard(one_worker(built, tmp_path / "ds"))
        assert sorted(p.name for p in elsewhere.iterdir()) == ["plan.arrow", "plan.arrow.tmp"]
        assert (elsewhere / "plan.arrow").read_text() == "not ours" and link.is_symlink()
    finally:
        link.unlink()


@pytest.mark.parametrize("planted", ["file as the folder", "folder as the file"])
def test_a_file_or_folder_planted_where_the_plan_goes_is_refused_in_one_line_and_kept(tmp_path, planted):
    path = plan_file(tmp_path)
    if planted == "file as the folder":
        path.parent.write_text("not ours")
    else:
        (path / "inside").mkdir(parents=True)
    with pytest.raises(ValueError, match="remove it and run again"):
        plan_shards(ShardConfig(build=tmp_path, out=tmp_path / "ds", max_count=50), None, catalog_table({"a": 60}))
    if planted == "file as the folder":
        assert path.parent.read_text() == "not ours"
    else:
        assert (path / "inside").is_dir()


def test_a_link_swapped_in_for_the_plan_folder_after_its_check_is_not_written_through(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "plan.arrow").write_text("not ours")
    real = jobs_module._plan_folder

    def checked_then_swapped(path: Path) -> Path:
        folder = real(path)
        folder.rmdir()
        folder.symlink_to(elsewhere, target_is_directory=True)
        return folder

    monkeypatch.setattr(jobs_module, "_plan_folder", checked_then_swapped)
    with pytest.raises(OSError):
        plan_shards(ShardConfig(build=tmp_path, out=tmp_path / "ds", max_count=50), None, catalog_table({"a": 60}))
    assert [p.name for p in elsewhere.iterdir()] == ["plan.arrow"] and (elsewhere / "plan.arrow").read_text() == "not ours"


def test_the_plan_folder_is_refused_as_the_dataset_folder(built):
    with pytest.raises(ValueError, match="plan file"):
        stage_module.shard(one_worker(built, built / Path(PLAN_PATH).parent))
    assert not (built / PLAN_PATH).parent.exists()
