"""Dedupe stage: groups, keep rule, order independence, --against, report; on real IR frames."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from inf590k.build import catalog as cat
from inf590k.build.dedupe.config import DedupeConfig
from inf590k.build.dedupe.stage import dedupe
from inf590k.build.ingest import IngestConfig, ingest
from inf590k.execution.units import ExecutionOptions
from inf590k.inputs.imageio import ImagePolicy


def catalog_row(uid: str, source: str, phash: int, *, pixels: str = "", size=(64, 64), status="ok"):
    row = cat.empty_row()
    row.update(
        uid=uid,
        source=source,
        relpath=f"{uid}.png",
        status=status,
        pixel_sha256=pixels or f"sha-{uid}",
        phash=f"{phash:016x}",
        dhash=f"{phash:016x}",
        width=size[0],
        height=size[1],
    )
    return row


def write_rows(build: Path, rows: list[dict], parts: int = 1) -> None:
    for index in range(parts):
        cat.write_parquet_atomic(
            cat.rows_to_table(rows[index::parts]),
            cat.catalog_dir(build) / f"part-x-{index:04d}.parquet",
        )


def by_uid(build: Path) -> dict[str, dict]:
    return {row["uid"]: row for row in cat.read_catalog(build).to_pylist()}


SYNTHETIC = [
    catalog_row("a1", "beta", 0x0F0F_0000_0000_0000, size=(64, 64)),
    catalog_row("a2", "alpha", 0x0F0F_0000_0000_0003, size=(64, 64)),  # distance 2 from a1
    catalog_row("a3", "alpha", 0x0F0F_0000_0000_00FF, size=(32, 32)),  # distance 8 from a1
    catalog_row("b1", "alpha", 0xFFFF_FFFF_0000_0000, pixels="same"),
    catalog_row(
        "b2", "beta", 0x1234_5678_9ABC_DEF0, pixels="same", size=(128, 64)
    ),  # exact, larger
    catalog_row("c1", "alpha", 0xAAAA_AAAA_AAAA_AAAA),  # alone
    catalog_row("d1", "alpha", 0x0F0F_0000_0000_0000, status="rejected"),  # never takes part
]


def test_groups_keep_rule_and_counts(tmp_path):
    write_rows(tmp_path, SYNTHETIC)
    summary = dedupe(DedupeConfig(build=tmp_path, contact_groups=0))
    rows = by_uid(tmp_path)
    # a-group: a1/a2 tie on size, alphabetical source priority keeps alpha's a2
    assert rows["a2"]["status"] == "ok"
    assert rows["a1"]["status"] == rows["a3"]["status"] == "duplicate"
    assert rows["a1"]["reason"] == "near duplicate of a2 (pHash distance 2)"
    assert rows["a3"]["reason"] == "near duplicate of a2 (pHash distance 6)"
    assert rows["a1"]["dup_group"] == rows["a2"]["dup_group"] == rows["a3"]["dup_group"] >= 0
    # b-group: exact pixels; the larger image is kept whatever its source
    assert rows["b2"]["status"] == "ok" and rows["b1"]["reason"] == "duplicate of b2 (exact pixels)"
    assert rows["c1"]["dup_group"] == -1 and rows["c1"]["status"] == "ok"
    assert rows["d1"]["status"] == "rejected" and rows["d1"]["dup_group"] == -1
    assert (summary.candidates, summary.kept, summary.groups) == (6, 3, 2)
    assert (summary.exact_duplicates, summary.near_duplicates) == (1, 2)
    counts = cat.status_counts(cat.read_catalog(tmp_path))
    assert sum(c["found"] for c in counts.values()) == len(SYNTHETIC)
    report = json.loads((tmp_path / "dedupe" / "report.json").read_text())
    assert [len(g["members"]) for g in report["groups"]] == [3, 2]
    assert {m["uid"]: m["phash_distance_to_kept"] for m in report["groups"][0]["members"]} == {
        "a2": 0,
        "a1": 2,
        "a3": 6,
    }


def test_priority_and_radius_options(tmp_path):
    write_rows(tmp_path, SYNTHETIC)
    dedupe(DedupeConfig(build=tmp_path, radius=4, priority=("beta",), contact_groups=0))
    rows = by_uid(tmp_path)
    assert rows["a1"]["status"] == "ok"  # beta preferred now
    assert rows["a2"]["reason"] == "near duplicate of a1 (pHash distance 2)"
    assert rows["a3"]["status"] == "ok" and rows["a3"]["dup_group"] == -1  # 8 > radius 4


def test_result_independent_of_row_order_and_reruns(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for index in range(300):
        code = int(rng.integers(0, 2**40)) if index % 3 else 7 << (index % 50)
        rows.append(catalog_row(f"u{index:04d}", f"s{index % 4}", code, size=(64 + index % 5, 64)))
    write_rows(tmp_path / "one", rows, parts=1)
    shuffled = [rows[i] for i in rng.permutation(len(rows))]
    write_rows(tmp_path / "two", shuffled, parts=7)
    dedupe(DedupeConfig(build=tmp_path / "one", contact_groups=0))
    dedupe(DedupeConfig(build=tmp_path / "two", contact_groups=0))
    dedupe(DedupeConfig(build=tmp_path / "two", contact_groups=0))  # a re-run changes nothing
    first, second = cat.read_catalog(tmp_path / "one"), cat.read_catalog(tmp_path / "two")
    assert first.equals(second)
    assert (tmp_path / "one" / "dedupe" / "report.json").read_text() == (
        tmp_path / "two" / "dedupe" / "report.json"
    ).read_text()
    assert "duplicate" in first.column("status").to_pylist()


def test_against_another_build(tmp_path):
    write_rows(tmp_path / "old", [catalog_row("old1", "alpha", 0xFFFF_FFFF_0000_0000)])
    write_rows(tmp_path / "new", SYNTHETIC)
    summary = dedupe(
        DedupeConfig(build=tmp_path / "new", against=(tmp_path / "old",), contact_groups=0)
    )
    rows = by_uid(tmp_path / "new")
    assert rows["b1"]["reason"] == "already in old/old1 (pHash distance 0)"
    assert rows["b2"]["reason"] == "in a group with b1: already in old/old1 (pHash distance 0)"
    assert rows["b2"]["status"] == "duplicate"
    assert summary.outside_matches == 2


def test_bad_input_says_what_to_do(tmp_path):
    write_rows(tmp_path, SYNTHETIC)
    with pytest.raises(ValueError, match="--radius"):
        dedupe(DedupeConfig(build=tmp_path, radius=40))
    with pytest.raises(FileNotFoundError, match="--against"):
        dedupe(DedupeConfig(build=tmp_path, against=(tmp_path / "missing",)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no readable images"):
        dedupe(DedupeConfig(build=tmp_path, against=(tmp_path / "empty",)))
    with pytest.raises(ValueError, match="the build itself"):
        dedupe(DedupeConfig(build=tmp_path, against=(tmp_path,)))
    with pytest.raises(FileNotFoundError, match="inf590k ingest"):
        dedupe(DedupeConfig(build=tmp_path / "nothing"))


# ----------------------------------------------------------------------------- real frames

ORIGINALS = [
    "hit-uav/normal_xml/JPEGImages/0_60_30_0_01609.jpg",
    "hit-uav/normal_xml/JPEGImages/1_90_40_0_04880.jpg",
    "hit-uav/normal_xml/JPEGImages/1_130_80_0_04043.jpg",
    "roadscene/cropinfrared/FLIR_04208.jpg",
    "roadscene/cropinfrared/FLIR_07583.jpg",
    "sirst-v2/mixed/iraytek-54.png",
    "sirst-v2/mixed/S20210527_S7_74.png",
    "sirst/images/Misc_120.png",
]


def plant_copies(ir_samples: Path, orig: Path, copies: Path) -> dict[str, str]:
    """Originals in one folder; exact, 0.5x, JPEG q80 and 16-bit copies in another."""
    orig.mkdir()
    copies.mkdir()
    for rel in ORIGINALS:
        shutil.copy(ir_samples / rel, orig / Path(rel).name)
    names = [Path(rel).name for rel in ORIGINALS]
    grey = [cv2.imread(str(orig / n), cv2.IMREAD_GRAYSCALE) for n in names]
    shutil.copy(orig / names[0], copies / f"exact_{names[0]}")
    cv2.imwrite(
        str(copies / "half.png"),
        cv2.resize(grey[1], None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA),
    )
    cv2.imwrite(str(copies / "q80.jpg"), grey[3], [cv2.IMWRITE_JPEG_QUALITY, 80])
    cv2.imwrite(str(copies / "deep.png"), grey[5].astype(np.uint16) * 40 + 7000)
    return {
        f"exact_{names[0]}": names[0],
        "half.png": names[1],
        "q80.jpg": names[3],
        "deep.png": names[5],
    }


def test_planted_copies_of_real_frames_join_their_originals(tmp_path, ir_samples):
    expected = plant_copies(ir_samples, tmp_path / "orig", tmp_path / "copies")
    build = tmp_path / "build"
    ingest(
        IngestConfig(sources=(("folder:orig", tmp_path / "orig"), ("folder:copies", tmp_path / "copies")), build=build, policy=ImagePolicy(), execution=ExecutionOptions(workers=1, progress=False))
    )
    summary = dedupe(DedupeConfig(build=build, priority=("orig",)))
    rows = {(r["source"], r["relpath"]): r for r in cat.read_catalog(build).to_pylist()}
    originals = [r for (s, _), r in rows.items() if s == "orig"]
    assert all(r["status"] == "ok" for r in originals)  # kept: larger, or preferred source
    groups = [r["dup_group"] for r in originals if r["dup_group"] >= 0]
    assert len(groups) == len(set(groups)) == 4  # distinct frames never share a group
    for copy_name, orig_name in expected.items():
        copy, original = rows[("copies", copy_name)], rows[("orig", orig_name)]
        assert copy["status"] == "duplicate", copy_name
        assert copy["dup_group"] == original["dup_group"] >= 0, copy_name
        assert original["uid"] in copy["reason"]
    assert summary.exact_duplicates == 1 and summary.near_duplicates == 3
    sheet = cv2.imread(str(build / "dedupe" / "contact_sheet.png"), cv2.IMREAD_GRAYSCALE)
    assert sheet.shape[0] >= 4 * 112 and sheet.std() > 10


def test_decontamination_against_an_evaluation_folder(tmp_path, ir_samples):
    expected = plant_copies(ir_samples, tmp_path / "train", tmp_path / "eval")
    build = tmp_path / "build"
    ingest(
        IngestConfig(sources=(("folder:train", tmp_path / "train"),), build=build, execution=ExecutionOptions(workers=1, progress=False))
    )
    summary = dedupe(DedupeConfig(build=build, against=(tmp_path / "eval",), contact_groups=0))
    rows = {r["relpath"]: r for r in cat.read_catalog(build).to_pylist()}
    for eval_name, train_name in expected.items():
        assert rows[train_name]["status"] == "duplicate"
        assert rows[train_name]["reason"].startswith(f"decontamination: matches eval/{eval_name}")
    assert summary.outside_matches == 4 and summary.kept == len(ORIGINALS) - 4
    assert pq.read_table(build / "catalog").num_rows == len(ORIGINALS)


def test_rows_without_hashes_never_join_a_group(tmp_path):
    rows = [catalog_row(f"n{i}", "alpha", 0) for i in range(3)]
    for row in rows:
        row.update(phash=None, dhash=None, pixel_sha256=None)
    write_rows(tmp_path, rows + [catalog_row("z", "alpha", 0)])
    summary = dedupe(DedupeConfig(build=tmp_path, contact_groups=0))
    assert summary.kept == 4 and summary.groups == 0
    assert {r["dup_group"] for r in by_uid(tmp_path).values()} == {-1}


def test_summary_line_says_1_group():
    from inf590k.build.dedupe.stage import DedupeSummary

    line = str(DedupeSummary(candidates=2, groups=1, exact_duplicates=1, near_duplicates=0,
                             outside_matches=0, kept=1, seconds=0.0))
    assert line.startswith("dedupe: 2 images -> 1 kept; 1 group, 1 exact + 0 near (pHash) duplicates")
