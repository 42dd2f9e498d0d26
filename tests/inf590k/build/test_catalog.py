"""The catalog at scale: few large parts written by the ingest workers, decisions of dedupe and
bin in their own column files, one reader that joins them, and a no-op build that reads
neither files nor catalog."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import inf590k.build.ingest as ingest_module
from inf590k.build import catalog as cat
from inf590k.build import ingest_parts, ingest_plan, lineage
from inf590k.build.bins import BinConfig, bin_catalog
from inf590k.build.dedupe.config import DedupeConfig
from inf590k.build.dedupe.stage import dedupe
from inf590k.build.ingest import IngestConfig, ingest
from inf590k.build.ingest_plan import listing_fingerprint
from inf590k.build.pipeline import BuildConfig
from inf590k.build.shard import ShardConfig
from inf590k.execution import progress
from inf590k.execution.units import ExecutionOptions
from tests.builders import build_dataset, make_frames
from tests.images import encode, thermal_frame

QUIET = ExecutionOptions(workers=1, progress=False)


def run_ingest(build: Path, root: Path, workers: int = 1):
    execution = ExecutionOptions(workers=workers, progress=False)
    return ingest(IngestConfig(sources=(("folder", root),), build=build, execution=execution))


def part_bytes(build: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in cat.part_paths(build)}


@pytest.fixture
def frames(tmp_path) -> Path:
    make_frames(tmp_path / "frames", 200)  # four chunks of 64 files
    (tmp_path / "frames" / "notes.txt").write_text("not an image")
    return tmp_path / "frames"


# ----------------------------------------------------------------------------- parts


def test_a_part_covers_many_chunks_and_says_which(tmp_path, frames, monkeypatch):
    monkeypatch.setattr(ingest_plan, "UNITS_PER_WORKER", 1)  # one unit: one part
    build = tmp_path / "b"
    summary = run_ingest(build, frames)
    parts = cat.part_paths(build)
    assert len(parts) == 1
    assert ingest_parts.chunks_of_part(parts[0]) == [0, 1, 2, 3]
    assert pq.read_metadata(parts[0]).num_rows == 201 == summary.sources[0].found
    assert not list(cat.catalog_dir(build).glob(".part-*"))  # committed: no temporary left


def test_parts_are_few_whatever_the_worker_count(tmp_path, frames):
    run_ingest(tmp_path / "one", frames, workers=1)
    run_ingest(tmp_path / "two", frames, workers=2)
    for build, workers in ((tmp_path / "one", 1), (tmp_path / "two", 2)):  # not one per chunk
        assert len(cat.part_paths(build)) <= ingest_plan.UNITS_PER_WORKER * workers
    assert ingest_module.files_per_unit(590_000, 16) == 9_219  # 64 parts at 590K on 16 cores
    assert ingest_module.files_per_unit(50_000_000, 16) == ingest_plan.PART_FILES
    assert cat.read_catalog(tmp_path / "one").equals(cat.read_catalog(tmp_path / "two"))


def test_a_half_written_part_is_never_believed(tmp_path, frames):
    build = tmp_path / "b"
    run_ingest(build, frames)
    whole = cat.read_catalog(build)
    first = cat.part_paths(build)[0]
    chunks = ingest_parts.chunks_of_part(first)
    # as if killed: the part was never committed, its worker left a truncated temporary file
    half = ingest_module.temporary_part(build, "folder", chunks[0])
    half.write_bytes(first.read_bytes()[:100])
    first.unlink()
    (build / "lineage" / "ingest.running").write_text("{}")
    summary = run_ingest(build, frames)
    assert summary.sources[0].reused_chunks == 4 - len(chunks)
    assert not half.exists()
    assert cat.read_catalog(build).equals(whole)


def test_a_changed_source_is_redone_alone(tmp_path, frames):
    make_frames(tmp_path / "few", 3)
    build = tmp_path / "b"
    sources = (("folder:a", tmp_path / "few"), ("folder:a-b", frames))
    ingest(IngestConfig(sources=sources, build=build, execution=QUIET))
    assert ingest_module.done_chunks(build, "a") == {0}
    assert ingest_module.done_chunks(build, "a_b") == {0, 1, 2, 3}
    (tmp_path / "few" / "cam0" / "extra.png").write_bytes(encode(thermal_frame(48, 64, seed=77)))
    again = ingest(IngestConfig(sources=sources, build=build, execution=QUIET))
    assert [s.reused_chunks for s in again.sources] == [0, 4]  # a redone, a_b untouched
    assert [s.found for s in again.sources] == [4, 201]


def test_read_ingested_reads_only_the_columns_asked(tmp_path, frames):
    build = tmp_path / "b"
    run_ingest(build, frames)
    table = cat.read_ingested(build, ["status", "width"])
    assert table.column_names == ["uid", "status", "width"]
    assert table.column("uid").to_pylist() == sorted(table.column("uid").to_pylist())
    with pytest.raises(FileNotFoundError, match="no catalog"):
        cat.read_ingested(tmp_path / "empty", ["status"])
    with pytest.raises(KeyError):
        cat.read_ingested(build, ["no_such_column"])


# ----------------------------------------------------------------------------- decisions


def make_duplicates(root: Path) -> None:
    root.mkdir()
    for i in range(6):
        (root / f"{i}.png").write_bytes(encode(thermal_frame(48, 64, seed=i % 3)))  # 3 pairs
    (root / "big.png").write_bytes(encode(thermal_frame(96, 128, seed=9)))


def test_dedupe_and_bin_write_their_own_columns_and_leave_the_parts(tmp_path):
    make_duplicates(tmp_path / "src")
    build = tmp_path / "b"
    run_ingest(build, tmp_path / "src")
    before = part_bytes(build)
    summary = dedupe(DedupeConfig(build=build, radius=0, contact_groups=0, progress=False))
    bin_catalog(BinConfig(build=build, progress=False))
    assert part_bytes(build) == before
    decisions = pq.read_table(build / cat.DECISIONS_PATH)
    assert set(decisions.column_names) == {"uid", "status", "reason", "dup_group"}
    assert decisions.num_rows == 6  # the members of the three groups, the lone frame not
    joined = cat.read_catalog(build)
    status = joined.column("status").to_pylist()
    assert status.count("duplicate") == 3 == summary.candidates - summary.kept
    assert set(cat.read_ingested(build, ["status"]).column("status").to_pylist()) == {"ok"}
    bins = dict(zip(joined.column("status").to_pylist(), joined.column("res_bin").to_pylist(), strict=False))
    assert bins["duplicate"] == "" and bins["ok"].startswith("s")
    assert pq.read_table(build / cat.BIN_ASSIGN_PATH).num_rows == 4
    # columns alone, joined the same way
    assert cat.read_catalog(build, ["status"]).column("status").to_pylist() == status


def test_a_decision_of_a_file_ingest_no_longer_keeps_does_not_count(tmp_path):
    make_duplicates(tmp_path / "src")
    build = tmp_path / "b"
    run_ingest(build, tmp_path / "src")
    dedupe(DedupeConfig(build=build, radius=0, contact_groups=0, progress=False))
    table = cat.read_ingested(build)
    decisions = pq.read_table(build / cat.DECISIONS_PATH).to_pylist()
    rejected = [d["uid"] for d in decisions if d["status"] == "duplicate"][:2]
    assert len(rejected) == 2
    rows = [
        {**row, "status": "rejected", "reason": "corrupt"} if row["uid"] in rejected else row
        for row in table.to_pylist()
    ]
    for path in cat.part_paths(build):  # as a later ingest would have written them
        keep = set(pq.read_table(path, columns=["uid"]).column("uid").to_pylist())
        cat.write_parquet_atomic(cat.rows_to_table([r for r in rows if r["uid"] in keep]), path)
    joined = {r["uid"]: r for r in cat.read_catalog(build).to_pylist()}
    assert all(joined[u]["status"] == "rejected" and joined[u]["reason"] == "corrupt" for u in rejected)


def test_an_edited_decision_file_stops_shard(tmp_path, frames):
    build = tmp_path / "b"
    run_ingest(build, frames)
    dedupe(DedupeConfig(build=build, radius=0, contact_groups=0, progress=False))
    bin_catalog(BinConfig(build=build, progress=False))
    assert lineage.problem(build, "bin") == ""
    assign = pq.read_table(build / cat.BIN_ASSIGN_PATH)
    cat.write_parquet_atomic(assign.slice(1), build / cat.BIN_ASSIGN_PATH)
    assert "bins/assign.parquet was edited" in lineage.problem(build, "bin")
    with pytest.raises(lineage.LineageError, match="changed after `inf590k bin`"):
        lineage.require(build, "shard")


def decided_build(tmp_path: Path) -> Path:
    make_duplicates(tmp_path / "src")
    build = tmp_path / "b"
    run_ingest(build, tmp_path / "src")
    dedupe(DedupeConfig(build=build, radius=0, contact_groups=0, progress=False))
    bin_catalog(BinConfig(build=build, progress=False))
    return build


def test_an_edited_decision_file_is_not_taken_by_a_re_run_bin(tmp_path):
    """bin re-run by hand after dedupe's file was edited (duplicates made kept) would record
    the edit as its input, and shard would ship the duplicates."""
    build = decided_build(tmp_path)
    decisions = pq.read_table(build / cat.DECISIONS_PATH)
    kept = decisions.set_column(1, "status", pa.array(["ok"] * decisions.num_rows))
    cat.write_parquet_atomic(kept, build / cat.DECISIONS_PATH)
    with pytest.raises(lineage.LineageError, match="changed after `inf590k dedupe`.*decisions.parquet was edited"):
        bin_catalog(BinConfig(build=build, progress=False))
    assert "dedupe" in lineage.stale_stages(build)
    dedupe(DedupeConfig(build=build, radius=0, contact_groups=0, progress=False))  # writes it again
    assert pq.read_table(build / cat.DECISIONS_PATH).equals(decisions)
    assert lineage.problem(build, "bin") == ""


def test_a_part_replaced_after_bin_is_refused_by_every_re_run(tmp_path):
    """Another valid Parquet under a part's name: neither dedupe nor ingest (which keeps the
    parts it finds) takes it as the catalog."""
    build = decided_build(tmp_path)
    part = cat.part_paths(build)[0]
    other = cat.read_ingested(build).slice(0, 2)
    cat.write_parquet_atomic(other.replace_schema_metadata(pq.read_schema(part).metadata), part)
    for rerun in (
        lambda: dedupe(DedupeConfig(build=build, radius=0, contact_groups=0, progress=False)),
        lambda: run_ingest(build, tmp_path / "src"),
    ):
        with pytest.raises(lineage.LineageError, match=f"changed after `inf590k ingest`.*{part.name} was edited"):
            rerun()
    part.unlink()  # as the message advises: ingest redoes it
    run_ingest(build, tmp_path / "src")
    assert cat.read_ingested(build, ["status"]).num_rows == 7


def test_a_part_no_ingest_wrote_is_refused(tmp_path):
    build = decided_build(tmp_path)
    part = cat.part_paths(build)[0]
    planted = part.with_name(part.name.replace("000000", "000099"))
    planted.write_bytes(part.read_bytes())  # the same chunks again: every uid twice
    with pytest.raises(lineage.LineageError, match=f"{planted.name} was added.*remove"):
        run_ingest(build, tmp_path / "src")
    with pytest.raises(lineage.LineageError, match="gained part files after ingest"):
        lineage.require(build, "shard")


@pytest.mark.parametrize("edit", ["ghost", "twice", "types", "status", "missing"])
def test_a_decision_file_not_as_dedupe_writes_it_is_one_line(tmp_path, edit):
    build = decided_build(tmp_path)
    path = build / cat.DECISIONS_PATH
    table = pq.read_table(path)
    if edit == "ghost":  # a uid the catalog does not hold: a decision of a removed row, ignored
        table = pa.concat_tables([table, table.slice(0, 1).set_column(0, "uid", pa.array(["gone"]))])
    elif edit == "twice":
        table = pa.concat_tables([table, table.slice(0, 1)])
    elif edit == "types":
        table = table.set_column(1, "status", pa.array(range(table.num_rows), pa.int64()))
    elif edit == "status":
        table = table.set_column(1, "status", pa.array(["kept"] * table.num_rows))
    else:
        table = table.drop_columns(["dup_group"])
    pq.write_table(table, path)
    if edit == "ghost":
        assert "gone" not in cat.read_catalog(build, ["status"]).column("uid").to_pylist()
        return
    expected = {"twice": "uid .* twice", "types": "column status", "status": "status 'kept'", "missing": "column dup_group"}
    with pytest.raises(ValueError, match=f"not as `inf590k dedupe` writes it \\({expected[edit]}.*run `inf590k dedupe"):
        cat.read_catalog(build)


def test_links_planted_as_catalog_files_are_refused(tmp_path):
    build = decided_build(tmp_path)
    part = cat.part_paths(build)[0]
    (tmp_path / "elsewhere.parquet").write_bytes(part.read_bytes())
    part.unlink()
    part.symlink_to(tmp_path / "elsewhere.parquet")
    with pytest.raises(ValueError, match=f"{part.name} is a link"):
        cat.read_catalog(build, ["status"])
    with pytest.raises(ValueError, match="is a link"):
        run_ingest(build, tmp_path / "src")
    part.unlink()
    assign = build / cat.BIN_ASSIGN_PATH
    assign.rename(tmp_path / "assign.parquet")
    assign.symlink_to(tmp_path / "assign.parquet")
    with pytest.raises(ValueError, match="assign.parquet is a link"):
        cat.decision_paths(build)


def test_two_parts_holding_the_same_rows_are_refused(tmp_path):
    make_duplicates(tmp_path / "src")
    build = tmp_path / "b"
    run_ingest(build, tmp_path / "src")
    part = cat.part_paths(build)[0]
    part.with_name("part-folder-000007.parquet").write_bytes(part.read_bytes())
    with pytest.raises(ValueError, match="holds row .* twice"):
        cat.read_ingested(build, ["status"])


def test_read_catalog_reads_only_the_columns_asked_of_every_file(tmp_path, monkeypatch):
    build = decided_build(tmp_path)
    full = cat.read_catalog(build)
    asked: dict[str, set[str]] = {}
    read_table = pq.read_table

    def recording(path, columns=None, **kwargs):
        asked.setdefault(Path(path).parent.name, set()).update(columns or ["every column"])
        return read_table(path, columns=columns, **kwargs)

    monkeypatch.setattr(pq, "read_table", recording)
    widths = cat.read_catalog(build, ["width"])
    assert widths.column_names == ["uid", "width"]
    assert asked == {"catalog": {"uid", "width", "status"}, "dedupe": {"uid", "status"}}
    assert widths.column("width").equals(full.column("width"))
    asked.clear()
    bins = cat.read_catalog(build, ["res_bin"])
    assert asked["bins"] == {"uid", "res_bin"} and "reason" not in asked["dedupe"]
    assert bins.column("res_bin").equals(full.column("res_bin"))


def as_earlier_layout(build: Path) -> None:
    """The build folder as the earlier toolkit left it: dedupe's statuses inside the parts
    (rewritten after ingest's record), its and bin's records naming no file of their own."""
    table = cat.read_catalog(build)
    for path in cat.decision_paths(build):
        path.unlink()
    for path in cat.part_paths(build):
        keep = set(pq.read_table(path, columns=["uid"]).column("uid").to_pylist())
        rows = table.filter(pa.array([u in keep for u in table.column("uid").to_pylist()]))
        cat.write_parquet_atomic(rows.replace_schema_metadata(pq.read_schema(path).metadata), path)
    for stage in ("dedupe", "bin"):
        record = lineage.read_record(build, stage)
        lineage._rewrite_catalog(build, record, lineage.catalog_contents(build))


def test_a_build_folder_of_the_earlier_layout_is_read_and_re_run(tmp_path):
    build = decided_build(tmp_path)
    statuses = cat.read_catalog(build, ["status"])
    as_earlier_layout(build)
    assert cat.read_catalog(build, ["status"]).to_pylist() == statuses.to_pylist()  # statuses read from the parts
    assert lineage.problem(build, "bin") == ""
    dedupe(DedupeConfig(build=build, radius=2, contact_groups=0, progress=False))  # other options
    bin_catalog(BinConfig(build=build, progress=False))
    lineage.require(build, "shard")  # dedupe's old rewrite of the parts is not taken for an edit
    assert cat.read_catalog(build, ["status"]).to_pylist() == statuses.to_pylist()
    part = cat.part_paths(build)[0]
    pq.write_table(pq.read_table(part).slice(1), part)  # now in the new layout: an edit is one
    with pytest.raises(lineage.LineageError, match=f"{part.name} was edited"):
        lineage.require(build, "shard")


# ----------------------------------------------------------------------------- no-op build


def build_config(build: Path, frames: Path, out: Path) -> BuildConfig:
    return BuildConfig(
        ingest=IngestConfig(sources=(("folder", frames),), build=build, execution=QUIET),
        out=out,
        dedupe=DedupeConfig(build=build, radius=0, contact_groups=0),
        shard=ShardConfig(build=build, out=out, execution=QUIET),
    )


def test_a_no_op_build_lists_nothing_and_reads_no_catalog(tmp_path, frames, monkeypatch):
    build, out = tmp_path / "b", tmp_path / "ds"
    first = build_dataset(build_config(build, frames, out))
    records = {p.name: p.read_bytes() for p in (build / "lineage").iterdir()}

    def refuse(*args, **kwargs):
        raise AssertionError("a no-op build must not list, plan or read the catalog")

    for name in ("list_entries", "plan_source", "plan_sources", "list_part", "summarize_parts", "catalog_counts"):
        for module in (ingest_module, ingest_plan):  # where it is defined and where it is called
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(cat, "read_ingested", refuse)
    monkeypatch.chdir(tmp_path)
    again = build_dataset(build_config(build, frames, Path("ds")))  # --out given relative
    assert again.rerun == () and again.up_to_date and not first.up_to_date
    assert str(again).endswith("[up to date: nothing changed, nothing re-run]")
    assert str(again.ingest.sources[0]) == str(first.ingest.sources[0]).split(" [")[0] + " [resumed: 4 chunks already done]"
    assert again.found == first.found == 201
    assert {p.name: p.read_bytes() for p in (build / "lineage").iterdir()} == records


@pytest.mark.parametrize("change", ["added", "removed", "rewritten", "renamed"])
def test_a_changed_source_file_is_noticed(tmp_path, frames, change):
    build = tmp_path / "b"
    first = run_ingest(build, frames)
    before = listing_fingerprint(frames)
    target = frames / "cam0" / "00000.png"
    if change == "added":
        (frames / "cam1" / "new.png").write_bytes(encode(thermal_frame(48, 64, seed=999)))
    elif change == "removed":
        target.unlink()
    elif change == "rewritten":  # same size, other bytes and time
        data = bytearray(target.read_bytes())
        data[-20] ^= 0xFF
        target.write_bytes(bytes(data))
        os.utime(target, ns=(1, 1))
    else:
        target.rename(frames / "cam0" / "renamed.png")
    assert listing_fingerprint(frames) != before
    again = run_ingest(build, frames)
    assert again.changed
    expected = {"added": 202, "removed": 200, "rewritten": 201, "renamed": 201}[change]
    assert again.sources[0].found == expected == cat.read_catalog(build).num_rows
    assert first.sources[0].found == 201


def test_listing_fingerprint_of_an_archive_and_of_a_missing_root(tmp_path):
    archive = tmp_path / "a.tar"
    archive.write_bytes(b"x" * 10)
    before = listing_fingerprint(archive)
    archive.write_bytes(b"y" * 11)
    assert listing_fingerprint(archive) != before
    with pytest.raises(FileNotFoundError):
        listing_fingerprint(tmp_path / "missing.tar")


def test_paths_in_recorded_options_are_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = lineage.config_options(ShardConfig(build=Path("b"), out=Path("ds")), ("build",))
    absolute = lineage.config_options(ShardConfig(build=tmp_path / "b", out=tmp_path / "ds"), ("build",))
    assert relative == absolute and relative["out"] == str(tmp_path / "ds")


# ----------------------------------------------------------------------------- progress


def test_ingest_ticks_files_it_reads_not_the_excluded(tmp_path, frames, monkeypatch):
    ticks: list[int] = []
    monkeypatch.setattr(progress, "tick", lambda samples=1: ticks.append(samples))
    run_ingest(tmp_path / "b", frames)
    assert sum(ticks) == 200  # notes.txt is excluded while planning: not on the bar


def test_stage_steps_move_one_named_step_at_a_time(capsys):
    with progress.stage_progress("dedupe", True, ("read", "grouped")) as bar:
        bar.advance("read")
        assert bar.bar.n == 1
        with pytest.raises(ValueError, match="unknown step 'nope'"):
            bar.advance("nope")
        bar.advance("grouped")
    assert "dedupe" in capsys.readouterr().err
    with progress.stage_progress("bin", False, ("read",)) as quiet:
        quiet.advance("read")
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- joins as columns


def joined_row_by_row(rows: list[dict], decisions: dict[str, dict], bins: dict[str, str]) -> list[dict]:
    """The join's rule one row at a time: an earlier layout's duplicate is ok again, then a
    decision counts for an ok row, then a bin for a row still ok."""
    joined = []
    for row in sorted(rows, key=lambda r: r["uid"]):
        row = dict(row, dup_group=-1, res_bin="")
        if row["status"] == cat.STATUS_DUPLICATE:
            row.update(status=cat.STATUS_OK, reason="")
        if row["status"] == cat.STATUS_OK and row["uid"] in decisions:
            row.update(decisions[row["uid"]])
        if row["status"] == cat.STATUS_OK and row["uid"] in bins:
            row["res_bin"] = bins[row["uid"]]
        joined.append(row)
    return joined


def test_read_catalog_joins_as_the_row_by_row_rule(tmp_path):
    statuses = ["ok", "duplicate", "rejected", "excluded", "ok", "ok", "duplicate", "ok"]
    rows = []
    for index, status in enumerate(statuses):
        row = cat.empty_row()
        row.update(uid=f"s/{index:02d}", source="s", relpath=f"{index:02d}.png", status=status,
                   reason=None if index == 7 else ("" if status == "ok" else "why"), dup_group=3)
        rows.append(row)
    for index in range(2):
        cat.write_parquet_atomic(cat.rows_to_table(rows[index::2]), cat.catalog_dir(tmp_path) / f"part-s-{index:06d}.parquet")
    decisions = {
        "s/00": {"status": "duplicate", "reason": "duplicate of s/04 (exact pixels)", "dup_group": 0},
        "s/04": {"status": "ok", "reason": "", "dup_group": 0},
        "s/02": {"status": "duplicate", "reason": "a rejected row keeps ingest's word", "dup_group": 1},
        "s/06": {"status": "duplicate", "reason": None, "dup_group": 1},
        "gone": {"status": "duplicate", "reason": "a file no longer listed", "dup_group": 2},
    }
    bins = {"s/04": "s0-255_r100-114", "s/00": "s0-255_r100-114", "s/05": "s256-383_r100-114"}
    decided = pa.table({"uid": list(decisions), **{c: [d[c] for d in decisions.values()] for c in cat.DECISION_COLUMNS}})
    cat.write_columns(tmp_path, cat.DECISIONS_PATH, decided.cast(pa.schema([cat.CATALOG_SCHEMA.field(n) for n in ["uid", *cat.DECISION_COLUMNS]])))
    assign = pa.table({"uid": list(bins), "res_bin": pa.array(list(bins.values())).dictionary_encode()})
    cat.write_columns(tmp_path, cat.BIN_ASSIGN_PATH, assign)
    expected = joined_row_by_row(rows, decisions, bins)
    assert cat.read_catalog(tmp_path).to_pylist() == expected
    assert cat.read_catalog(tmp_path, ["status", "res_bin"]).to_pylist() == [
        {"uid": r["uid"], "status": r["status"], "res_bin": r["res_bin"]} for r in expected
    ]
