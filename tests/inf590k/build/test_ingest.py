"""Ingest: every file found gets a catalog row with a status and a reason; counts add up."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from inf590k.build import catalog as cat
from inf590k.build.ingest import IngestConfig, ingest
from inf590k.build.ingest_plan import plan_source, plan_sources, quick_signature
from inf590k.build.rows import load_stored_pixels, make_uid, table_tasks
from inf590k.execution.units import ExecutionOptions
from inf590k.inputs import sources as sources_module
from inf590k.inputs.imageio import ImagePolicy
from inf590k.inputs.manifest import manifest_for_source, resolve_manifests
from inf590k.inputs.sources import listing_units
from tests.builders import make_frames, tricky_tree
from tests.conftest import REPO_ROOT
from tests.images import encode, png_with_header_size, thermal_frame


def run(build: Path, *sources: tuple[str, Path], workers: int = 1, manifests=(), **policy):
    config = IngestConfig(sources=tuple(sources), build=build, manifests=tuple(manifests), policy=ImagePolicy(**policy), execution=ExecutionOptions(workers=workers, progress=False))
    return ingest(config)


def rows_by_relpath(build: Path) -> dict[str, dict]:
    return {row["relpath"]: row for row in pq.read_table(build / "catalog").to_pylist()}


def tree_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


# ----------------------------------------------------------------------------- real samples


@pytest.mark.parametrize(
    ("source", "folder", "expected"),
    [
        ("sirst", "sirst", {"ok": 100, "excluded": 25, "rejected": 0}),
        ("roadscene", "roadscene", {"ok": 100, "excluded": 16, "rejected": 0}),
        ("hit_uav", "hit-uav", {"ok": 60, "excluded": 16, "rejected": 0}),
        ("sirst_v2", "sirst-v2", {"ok": 25, "excluded": 25, "rejected": 0}),
    ],
)
def test_real_samples_per_status(tmp_path, ir_samples, source, folder, expected):
    summary = run(tmp_path / "build", (source, ir_samples / folder), workers=1)
    table = cat.read_catalog(tmp_path / "build")
    counts = Counter(table.column("status").to_pylist())
    assert {k: counts.get(k, 0) for k in expected} == expected
    found = sum(1 for p in (ir_samples / folder).rglob("*") if p.is_file())
    assert table.num_rows == found == summary.sources[0].found
    rows = table.to_pylist()
    assert all(r["reason"] for r in rows if r["status"] != "ok")
    ok_rows = [r for r in rows if r["status"] == "ok"]
    assert all(r["phash"] and len(r["phash"]) == 16 and r["pixel_sha256"] for r in ok_rows)
    assert all("." not in r["uid"] for r in rows)
    assert len({r["uid"] for r in rows}) == len(rows)


def test_sirst_masks_and_roadscene_visible_halves_are_excluded(tmp_path, ir_samples):
    run(tmp_path / "b", ("sirst", ir_samples / "sirst"), ("roadscene", ir_samples / "roadscene"))
    rows = rows_by_relpath(tmp_path / "b")
    assert rows["masks/Misc_1_pixels0.png"]["status"] == "excluded"
    assert rows["crop_HR_visible/FLIR_00006.jpg"]["status"] == "excluded"
    assert "visible" in rows["crop_LR_visible/FLIR_00006.jpg"]["reason"]
    assert rows["cropinfrared/FLIR_00006.jpg"]["status"] == "ok"
    rgba = [r for r in rows.values() if r["source"] == "sirst" and r["orig_channels"] == 4]
    assert len(rgba) == 5 and all(r["status"] == "ok" for r in rgba)


# ----------------------------------------------------------------------------- bad input


def make_bad_corpus(root: Path) -> dict[str, str]:
    """Files of every kind of trouble next to good 8- and 16-bit frames; name -> expected status."""
    root.mkdir(parents=True)
    good = encode(thermal_frame())
    expected = {}

    def put(name: str, data: bytes, status: str) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        expected[name] = status

    put("good.png", good, "ok")
    put("good16.png", encode(thermal_frame(seed=2).astype(np.uint16) * 40), "ok")
    put("good16.tiff", encode(thermal_frame(seed=4).astype(np.uint16) * 40, ".tiff"), "ok")
    put("rgb_disguised.png", encode(np.dstack([thermal_frame(seed=6)] * 3)), "ok")
    put("truncated.png", good[: len(good) // 2], "rejected")
    put("truncated.jpg", encode(thermal_frame(), ".jpg")[:400], "rejected")
    put("empty.png", b"", "rejected")
    put("text.png", b"hello, I am not a picture\n", "rejected")
    put("tiny.png", encode(np.full((1, 1), 80, np.uint8)), "rejected")
    put("bomb.png", png_with_header_size(100_000, 100_000), "rejected")
    put("colour.png", encode(np.dstack([thermal_frame(), 255 - thermal_frame(), np.zeros((120, 160), np.uint8)])), "rejected")
    put("visible/pair.png", good, "excluded")
    put("notes.txt", b"readme", "excluded")
    os.symlink("loop.png", root / "loop.png")
    expected["loop.png"] = "rejected"
    os.symlink("missing-target.png", root / "dangling.png")
    expected["dangling.png"] = "rejected"
    os.mkfifo(root / "pipe.png")
    expected["pipe.png"] = "rejected"
    os.symlink("..", root / "parent_link")
    expected["parent_link"] = "rejected"
    return expected


def test_bad_input_corpus_never_crashes_and_every_file_has_a_reason(tmp_path):
    corpus = tmp_path / "corpus"
    expected = make_bad_corpus(corpus)
    before = tree_snapshot(corpus)
    outside_before = sorted(os.listdir(tmp_path))
    summary = run(tmp_path / "build", ("folder", corpus), workers=1)
    rows = rows_by_relpath(tmp_path / "build")
    assert {name: rows[name]["status"] for name in expected} == expected
    assert len(rows) == len(expected) == summary.sources[0].found
    reasons = {name: rows[name]["reason"] for name in expected}
    assert "truncated PNG" in reasons["truncated.png"]
    assert "truncated JPEG" in reasons["truncated.jpg"]
    assert "empty" in reasons["empty.png"]
    assert "decompression bomb" in reasons["bomb.png"]
    assert "too small" in reasons["tiny.png"]
    assert "colour image" in reasons["colour.png"]
    assert "loop" in reasons["loop.png"]
    assert "not a regular file" in reasons["pipe.png"]
    assert rows["good16.png"]["bit_depth"] == 16 and "stretch" in rows["good16.png"]["normalisation"]
    assert rows["good16.tiff"]["bit_depth"] == 16
    assert rows["rgb_disguised.png"]["orig_channels"] == 3
    # Nothing written outside the build directory, and the source is untouched.
    assert tree_snapshot(corpus) == before
    assert sorted(os.listdir(tmp_path)) == sorted(outside_before + ["build"])


def make_archive_members() -> dict[str, bytes]:
    return {
        "data/ir/a.png": encode(thermal_frame(seed=1)),
        "data/ir/b.jpg": encode(thermal_frame(seed=2), ".jpg"),
        "data/visible/a.png": encode(thermal_frame(seed=1)),
        "../escape.png": encode(thermal_frame(seed=3)),
        "/abs/path.png": encode(thermal_frame(seed=4)),
    }


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_archives_are_read_in_place_and_unsafe_members_rejected(tmp_path, kind):
    members = make_archive_members()
    archive = tmp_path / f"src.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(archive, "w:gz" if kind.endswith("gz") else "w") as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    run(tmp_path / "build", ("folder", archive), workers=1)
    rows = rows_by_relpath(tmp_path / "build")
    assert rows["data/ir/a.png"]["status"] == rows["data/ir/b.jpg"]["status"] == "ok"
    assert rows["data/visible/a.png"]["status"] == "excluded"
    unsafe = [r for name, r in rows.items() if name not in ("data/ir/a.png", "data/ir/b.jpg", "data/visible/a.png")]
    assert len(unsafe) == 2 and all("unsafe archive member" in r["reason"] for r in unsafe)
    assert not (tmp_path / "escape.png").exists()
    assert sorted(os.listdir(tmp_path)) == ["build", archive.name]
    # Re-reading a row from the archive gives the pixels that were hashed.
    row = rows["data/ir/a.png"]
    np.testing.assert_array_equal(load_stored_pixels(tmp_path / "build", row), thermal_frame(seed=1))


# ----------------------------------------------------------------------------- rules


def test_sequence_stride_and_video_frames(tmp_path):
    manifest = tmp_path / "seq.yaml"
    manifest.write_text(
        "id: seqcam\nname: Sequence camera\ninclude: ['**/lwir/*.png', '**/*.mp4']\n"
        "sequence_globs: ['**/lwir/*.png']\nvideo_stride: 3\nexclude: [standard]\n"
    )
    root = tmp_path / "src"
    (root / "set00" / "lwir").mkdir(parents=True)
    for i in range(7):
        (root / "set00" / "lwir" / f"{i:05d}.png").write_bytes(encode(thermal_frame(seed=i)))
    writer = cv2.VideoWriter(str(root / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (160, 120))
    for i in range(10):
        writer.write(cv2.cvtColor(thermal_frame(seed=10 + i), cv2.COLOR_GRAY2BGR))
    writer.release()
    run(tmp_path / "build", ("seqcam", root), manifests=[manifest])
    rows = pq.read_table(tmp_path / "build" / "catalog").to_pylist()
    frames = sorted(r["relpath"] for r in rows if r["status"] == "ok" and r["frame"] == -1)
    assert frames == [f"set00/lwir/{i:05d}.png" for i in (0, 3, 6)]
    skipped = [r for r in rows if r["status"] == "excluded"]
    assert len(skipped) == 4 and all("subsampling" in r["reason"] for r in skipped)
    video = sorted(r["frame"] for r in rows if r["relpath"] == "clip.mp4")
    assert video == [0, 3, 6, 9]
    row = next(r for r in rows if r["relpath"] == "clip.mp4" and r["frame"] == 3)
    assert load_stored_pixels(tmp_path / "build", row).shape == (row["height"], row["width"])


def test_16bit_rows_reload_as_8bit_or_raw(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    raw = thermal_frame(seed=9).astype(np.uint16) * 60 + 1000
    (root / "raw.png").write_bytes(encode(raw))
    run(tmp_path / "build", ("folder", root))
    row = rows_by_relpath(tmp_path / "build")["raw.png"]
    view = load_stored_pixels(tmp_path / "build", row)
    assert view.dtype == np.uint8
    np.testing.assert_array_equal(load_stored_pixels(tmp_path / "build", row, keep_16bit=True), raw)


def test_uids_are_stable_unique_and_dot_free():
    assert make_uid("llvip", "infrared/train/010001.jpg") == make_uid("llvip", "infrared/train/010001.jpg")
    assert make_uid("a", "x/y.png") != make_uid("a", "x_y.png")
    assert "." not in make_uid("a", "some.dir/fi.le.png", frame=3)


def test_unknown_source_and_repeated_source_fail_clearly(tmp_path):
    with pytest.raises(Exception, match="unknown source id 'nope'"):
        run(tmp_path / "b", ("nope", tmp_path))
    with pytest.raises(ValueError, match="given twice"):
        run(tmp_path / "b", ("folder", tmp_path), ("folder", tmp_path))


# ----------------------------------------------------------------------------- parallel + resume


@pytest.mark.slow
def test_workers_one_and_two_give_identical_catalogs(tmp_path):
    make_frames(tmp_path / "src", 150)
    run(tmp_path / "b1", ("folder", tmp_path / "src"), workers=1)
    run(tmp_path / "b2", ("folder", tmp_path / "src"), workers=2)
    assert cat.read_catalog(tmp_path / "b1").equals(cat.read_catalog(tmp_path / "b2"))


INGEST_SCRIPT = """
import sys, time
from pathlib import Path
from inf590k.build.ingest import IngestConfig, ingest
from inf590k.execution.units import ExecutionOptions
import inf590k.build.ingest as ing
slow = float(sys.argv[3])
original = ing.process_chunk
def slowed(job, tasks):
    time.sleep(slow)
    return original(job, tasks)
ing.process_chunk = slowed
ingest(IngestConfig(sources=(("folder", Path(sys.argv[1])),), build=Path(sys.argv[2]), execution=ExecutionOptions(workers=1, progress=False)))
"""


@pytest.mark.slow
def test_killed_ingest_resumes_without_redoing_work(tmp_path):
    make_frames(tmp_path / "src", 64 * 4 + 10)  # 5 chunks
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    build = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", INGEST_SCRIPT, str(tmp_path / "src"), str(build), "0.4"], env=env)
    deadline = time.time() + 120
    parts: list[Path] = []
    while time.time() < deadline and len(parts) < 2:
        parts = sorted((build / "catalog").glob("part-*.parquet"))
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= len(parts) < 5, "the run should be killed part-way"
    done_before = {p.name: p.stat().st_mtime_ns for p in parts}

    summary = run(build, ("folder", tmp_path / "src"))
    assert summary.sources[0].reused_chunks >= 2
    assert {p: (build / "catalog" / p).stat().st_mtime_ns for p in done_before} == done_before
    run(tmp_path / "whole", ("folder", tmp_path / "src"))
    assert cat.read_catalog(build).equals(cat.read_catalog(tmp_path / "whole"))
    assert not list((build / "catalog").glob("*.tmp"))


def test_changed_policy_redoes_a_source(tmp_path):
    make_frames(tmp_path / "src", 5)
    run(tmp_path / "b", ("folder", tmp_path / "src"))
    summary = run(tmp_path / "b", ("folder", tmp_path / "src"), min_side=100)
    assert summary.sources[0].reused_chunks == 0
    assert Counter(cat.read_catalog(tmp_path / "b").column("status").to_pylist()) == {"rejected": 5}


# ----------------------------------------------------------------------------- review fixes


def test_repeated_archive_member_names_get_their_own_rows(tmp_path):
    archive = tmp_path / "twice.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/img1.png", encode(thermal_frame(seed=1)))
        with pytest.warns(UserWarning):  # zipfile warns about the duplicate name
            zf.writestr("a/img1.png", encode(thermal_frame(seed=2)))
        zf.writestr("a/img2.png", encode(thermal_frame(seed=3)))
    summary = run(tmp_path / "b", ("folder", archive))
    table = cat.read_catalog(tmp_path / "b")
    rows = table.to_pylist()
    assert summary.sources[0].found == 3 == len({r["uid"] for r in rows})
    assert sorted(r["status"] for r in rows) == ["ok", "ok", "rejected"]
    assert any("duplicate member name" in r["reason"] for r in rows)


def test_non_utf8_file_names_are_rejected_not_fatal(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    (root / "good.png").write_bytes(encode(thermal_frame()))
    with open(os.path.join(os.fsencode(root), b"caf\xe9.png"), "wb") as handle:
        handle.write(encode(thermal_frame(seed=2)))
    run(tmp_path / "b", ("folder", root))
    rows = {r["relpath"]: r for r in cat.read_catalog(tmp_path / "b").to_pylist()}
    assert rows["good.png"]["status"] == "ok"
    assert rows["caf\\xe9.png"]["status"] == "rejected"
    assert "UTF-8" in rows["caf\\xe9.png"]["reason"]


def test_changed_source_files_are_re_ingested(tmp_path):
    root = tmp_path / "src"
    make_frames(root, 3)
    bad = root / "cam0" / "broken.png"
    bad.write_bytes(b"not a png")
    run(tmp_path / "b", ("folder", root))
    bad.unlink()
    (root / "cam1" / "new.png").write_bytes(encode(thermal_frame(48, 64, seed=99)))
    summary = run(tmp_path / "b", ("folder", root))
    relpaths = set(cat.read_catalog(tmp_path / "b").column("relpath").to_pylist())
    assert "cam1/new.png" in relpaths and "cam0/broken.png" not in relpaths
    assert summary.sources[0].reused_chunks == 0


def test_a_parallel_tar_ingest_keeps_few_chunks_in_flight(tmp_path, monkeypatch):
    """Members are read as chunks are consumed, not all before the first part is written."""
    import inf590k.build.ingest as ingest_module

    archive = tmp_path / "frames.tar"
    with tarfile.open(archive, "w") as tf:
        for i in range(64 * 6):
            data = encode(thermal_frame(24, 32, seed=i))
            info = tarfile.TarInfo(f"seq/{i:05d}.png")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    events: list[str] = []
    original_bytes, original_write = ingest_module.with_tar_bytes, ingest_module.commit_part

    def tracked_bytes(job, chunks):
        for chunk in original_bytes(job, chunks):
            events.append("read")
            yield chunk

    def tracked_write(*args):
        events.append("write")
        return original_write(*args)

    monkeypatch.setattr(ingest_module, "with_tar_bytes", tracked_bytes)
    monkeypatch.setattr(ingest_module, "commit_part", tracked_write)
    run(tmp_path / "b", ("folder", archive), workers=2)
    assert events.count("read") == events.count("write") == 6
    assert events.index("write") <= 4  # window of 2 x workers chunks


def test_zip_members_with_backslashes_match_manifest_globs(tmp_path):
    archive = tmp_path / "windows.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("data\\ir\\a.png", encode(thermal_frame(seed=1)))
        zf.writestr("data\\visible\\a.png", encode(thermal_frame(seed=1)))
    run(tmp_path / "b", ("folder", archive))
    rows = rows_by_relpath(tmp_path / "b")
    assert rows["data/ir/a.png"]["status"] == "ok"
    assert rows["data/visible/a.png"]["status"] == "excluded"
    np.testing.assert_array_equal(load_stored_pixels(tmp_path / "b", rows["data/ir/a.png"]), thermal_frame(seed=1))


def test_signed_and_double_frames_are_kept(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    signed = (thermal_frame(seed=4).astype(np.int16) - 100) * 20
    (root / "signed.tiff").write_bytes(encode(signed, ".tiff"))
    run(tmp_path / "b", ("folder", root))
    row = rows_by_relpath(tmp_path / "b")["signed.tiff"]
    assert row["status"] == "ok" and row["bit_depth"] == 16 and row["orig_dtype"] == "int16"


def test_summary_lines_say_1_file_and_1_chunk():
    from inf590k.build.ingest import IngestSummary, SourceSummary

    source = SourceSummary("sirst", "/x", found=1, ok=1, matched=1, reused_chunks=1)
    assert str(source).endswith("[resumed: 1 chunk already done]")
    assert "ingest: 1 file catalogued, " in str(IngestSummary([source], seconds=1.0, decoded=1))


# ----------------------------------------------------------------------------- hostile headers


def test_lying_headers_are_refused_by_ingest_with_a_reason(tmp_path, monkeypatch):
    """Each file's header says 64x64 to a careless reader; the decoder would make 640x512 of
    it. Under a 100,000-pixel cap ingest refuses every one before OpenCV decodes anything."""
    from inf590k.inputs import imageio
    from tests.images import HEADER_LIES, jpeg_damaged, os2_bmp, png_with_huge_text_chunk

    root = tmp_path / "hostile"
    root.mkdir()
    suffix = {"tiff": ".tif", "jpeg": ".jpg"}
    expected = {}
    for name, (make, reason) in HEADER_LIES.items():
        path = root / f"{name}{suffix.get(name.split('-')[0], '.png')}"
        path.write_bytes(make())
        expected[path.name] = reason.replace("\\", "")
    (root / "text-chunk-of-2-gib.png").write_bytes(png_with_huge_text_chunk())
    expected["text-chunk-of-2-gib.png"] = (
        "truncated PNG (its tEXt chunk at offset 33 claims 2147483632 bytes"
    )
    (root / "stray-byte.jpg").write_bytes(jpeg_damaged("stray byte between segments"))
    expected["stray-byte.jpg"] = "corrupt JPEG (byte 0x00 at offset 20 where a marker should start"
    (root / "os2.bmp").write_bytes(os2_bmp(thermal_frame(64, 64, seed=3)))

    decoded = []
    real_imdecode = cv2.imdecode
    monkeypatch.setattr(
        imageio.cv2, "imdecode", lambda *a: decoded.append(a[0].size) or real_imdecode(*a)
    )
    run(tmp_path / "build", ("folder", root), max_pixels=100_000)
    rows = rows_by_relpath(tmp_path / "build")
    for name, reason in expected.items():
        assert rows[name]["status"] == "rejected", name
        assert rows[name]["reason"].startswith(reason), (name, rows[name]["reason"])
    assert rows["os2.bmp"]["status"] == "ok" and (
        rows["os2.bmp"]["width"],
        rows["os2.bmp"]["height"],
    ) == (64, 64)
    assert len(decoded) == 1  # the OS/2 bitmap alone reached OpenCV


# ----------------------------------------------------------------------------- listing on the workers


def without_order(table) -> list:
    return [replace(task, order=0) for task in table_tasks(table)]  # archive order: tars only


@pytest.mark.parametrize("workers", [1, 2])
def test_listing_in_parts_equals_the_one_pass_plan(tmp_path, monkeypatch, workers):
    root = tmp_path / "src"
    tricky_tree(root)
    make_frames(root / "frames", 30)
    monkeypatch.setattr(sources_module, "LISTING_FILES", 3)  # many units, cut inside folders
    manifest = manifest_for_source("folder", resolve_manifests(()))
    one_pass = plan_source(manifest, root, 1 << 30)
    options = ExecutionOptions(workers=workers, progress=False)
    quicks, [(tasks, digest)] = plan_sources([(manifest, root)], ImagePolicy(max_file_bytes=1 << 30), options)
    assert quicks == [quick_signature(manifest, root, ImagePolicy(max_file_bytes=1 << 30))]
    assert (without_order(tasks), digest) == (without_order(one_pass[0]), one_pass[1])
    assert len(listing_units(root, 8)) > 8


def test_escaped_names_that_collide_across_units_are_flagged_as_in_one_pass(tmp_path, monkeypatch):
    root = tmp_path / "src"
    (root / "x\\xff").mkdir(parents=True)  # literally a backslash: the escaped form of the next
    (root / "x\\xff" / "f.png").write_bytes(encode(thermal_frame()))
    raw = os.path.join(os.fsencode(root), b"x\xff")
    os.mkdir(raw)
    with open(os.path.join(raw, b"f.png"), "wb") as handle:
        handle.write(encode(thermal_frame(seed=3)))
    monkeypatch.setattr(sources_module, "LISTING_FILES", 1)
    manifest = manifest_for_source("folder", resolve_manifests(()))
    assert len(listing_units(root, 8)) == 2
    _, [(tasks, digest)] = plan_sources([(manifest, root)], ImagePolicy(max_file_bytes=1 << 30), ExecutionOptions(workers=1, progress=False))
    one_pass = plan_source(manifest, root, 1 << 30)
    assert (table_tasks(tasks), digest) == (table_tasks(one_pass[0]), one_pass[1])
    assert tasks.column("occurrence").to_pylist() == [0, 1]


def test_symlinks_and_bad_files_give_the_same_catalog_for_one_and_two_workers(tmp_path):
    expected = make_bad_corpus(tmp_path / "corpus")
    make_frames(tmp_path / "corpus" / "frames", 70)
    run(tmp_path / "b1", ("folder", tmp_path / "corpus"), workers=1)
    run(tmp_path / "b2", ("folder", tmp_path / "corpus"), workers=2)
    one, two = cat.read_catalog(tmp_path / "b1"), cat.read_catalog(tmp_path / "b2")
    assert one.equals(two)
    statuses = {row["relpath"]: row["status"] for row in one.to_pylist()}
    assert {rel: statuses[rel] for rel in expected} == expected
    assert not any(rel.startswith("parent_link/") for rel in statuses)  # never followed


LISTING_KILL_SCRIPT = """
import sys, time
from pathlib import Path
from inf590k.build.ingest import IngestConfig, ingest
from inf590k.execution.units import ExecutionOptions
import inf590k.build.ingest_plan as ing
import inf590k.inputs.sources as src
src.LISTING_FILES = 8
original = ing.list_part
calls = []
def slowed(*args):
    calls.append(1)
    if len(calls) == 3:
        Path(sys.argv[3]).write_text("listing")
        time.sleep(60)
    return original(*args)
ing.list_part = slowed
ingest(IngestConfig(sources=(("folder", Path(sys.argv[1])),), build=Path(sys.argv[2]), execution=ExecutionOptions(workers=1, progress=False)))
"""


def kill_while_listing(tmp_path: Path, source: Path, build: Path) -> None:
    marker = tmp_path / "listing.marker"
    marker.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", LISTING_KILL_SCRIPT, str(source), str(build), str(marker)], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not marker.exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run should be killed while it lists"


@pytest.mark.slow
def test_an_ingest_killed_while_listing_resumes(tmp_path):
    source = tmp_path / "src"
    make_frames(source, 90)
    build = tmp_path / "killed"
    kill_while_listing(tmp_path, source, build)
    assert not list((build / "catalog").glob("part-*.parquet"))
    run(build, ("folder", source), workers=2)
    run(tmp_path / "whole", ("folder", source))
    assert cat.read_catalog(build).equals(cat.read_catalog(tmp_path / "whole"))

    (source / "cam1" / "new.png").write_bytes(encode(thermal_frame(48, 64, seed=5)))
    parts = {p.name: p.stat().st_mtime_ns for p in (build / "catalog").glob("part-*.parquet")}
    kill_while_listing(tmp_path, source, build)  # the re-listing of a changed source: no part lost
    assert {p.name: p.stat().st_mtime_ns for p in (build / "catalog").glob("part-*.parquet")} == parts
    summary = run(build, ("folder", source), workers=2)
    assert summary.sources[0].found == 91
    run(tmp_path / "whole2", ("folder", source))
    assert cat.read_catalog(build).equals(cat.read_catalog(tmp_path / "whole2"))
