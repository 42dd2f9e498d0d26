"""Shard stage: format, determinism, resume, 16-bit, splitting; on a small real-image build."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from inf590k.build import catalog as cat
from inf590k.build.dedupe.config import DedupeConfig
from inf590k.build.dedupe.stage import dedupe
from inf590k.build.ingest import IngestConfig, ingest
from inf590k.build.shard import ShardConfig
from inf590k.execution.units import ExecutionOptions
from tests.builders import build_dataset, make_build, shard_dataset


@pytest.fixture(scope="module")
def built(tmp_path_factory, ir_samples) -> Path:
    return make_build(tmp_path_factory.mktemp("shardbuild"), ir_samples)


def tar_members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def read_samples(path: Path) -> list[dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return list(samples.values())


def test_shard_format(built, tmp_path):
    out = tmp_path / "ds"
    summary = shard_dataset(ShardConfig(build=built, out=out, execution=ExecutionOptions(workers=1, progress=False)))
    kept = [r for r in cat.read_catalog(built).to_pylist() if r["status"] == "ok"]
    assert summary.samples == len(kept) == 9 and summary.written == summary.shards
    info = json.loads((out / "data" / "_info.json").read_text())
    split = info["splits"]["train"]
    assert set(info) == {"name", "splits", "sources", "members"} and split["name"] == "train"
    assert split["num_samples"] == len(kept) == sum(split["shard_lengths"])
    assert {Path(f).parent.name for f in split["filenames"]} == {r["res_bin"] for r in kept}
    assert json.loads((out / "metadata" / "sizes.json").read_text()) == {
        f"data/{f}": n for f, n in zip(split["filenames"], split["shard_lengths"], strict=True)
    }
    classes = {s["id"]: s["class_id"] for s in info["sources"]}
    assert classes == {"alpha": 0, "beta": 1}
    json_types = None
    for filename, length in zip(split["filenames"], split["shard_lengths"], strict=True):
        tar_path = out / "data" / filename
        sidecar_path = (out / "metadata" / "shards" / filename).with_suffix(".parquet")
        members = tar_members(tar_path)
        assert len(members) == 3 * length
        for member in members:
            assert (
                member.mtime,
                member.uid,
                member.gid,
                member.uname,
                member.gname,
                member.mode,
            ) == (
                1_700_000_000,
                0,
                0,
                "",
                "",
                0o644,
            )
        names = [m.name for m in members]
        for i in range(0, len(names), 3):  # a sample's members sit together, sorted
            uid = names[i].rsplit(".", 1)[0]
            assert names[i : i + 3] == [f"{uid}.cls", f"{uid}.json", f"{uid}.png"]
        sidecar = pq.read_table(sidecar_path).to_pylist()
        assert [r["uid"] for r in sidecar] == [n.rsplit(".", 1)[0] for n in names[::3]]
        for sample, row in zip(read_samples(tar_path), sidecar, strict=True):
            meta = json.loads(sample["json"])
            assert meta["uid"] == row["uid"] and "." not in "".join(meta)
            assert not {"status", "reason", "split"} & set(meta)  # same for every sample
            types = {k: type(v).__name__ for k, v in meta.items()}
            json_types = json_types or types
            assert types == json_types  # same keys, same JSON types in every sample
            assert int(sample["cls"]) == classes[row["source"]]
            image = cv2.imdecode(np.frombuffer(sample["png"], np.uint8), cv2.IMREAD_UNCHANGED)
            assert image.ndim == 2 and image.dtype == np.uint8
            assert image.shape == (row["height"], row["width"])
        stats = json.loads(sidecar_path.with_name(tar_path.stem + "_stats.json").read_text())
        assert stats["sha256"] == hashlib.sha256(tar_path.read_bytes()).hexdigest()
    if shutil.which("sha256sum"):
        check = subprocess.run(
            ["sha256sum", "-c", "metadata/SHA256SUMS"], cwd=out, capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
    lines = (out / "metadata" / "SHA256SUMS").read_text().splitlines()
    assert len(lines) == 2 * len(split["filenames"]) + 1  # tars, sidecars, the catalog


def test_pixels_round_trip_and_16bit(built, tmp_path):
    """`.png` is always the 8-bit view; --keep-16bit adds the raw frame as `.npy`, exactly."""
    from inf590k.build.rows import load_stored_pixels

    rows = {r["uid"]: r for r in cat.read_catalog(built).to_pylist()}
    shard_dataset(ShardConfig(build=built, out=tmp_path / "ds8", execution=ExecutionOptions(workers=1, progress=False)))
    shard_dataset(
        ShardConfig(build=built, out=tmp_path / "ds16", keep_16bit=True, execution=ExecutionOptions(workers=1, progress=False))
    )
    raw_frames = {}
    for tar_path in sorted((tmp_path / "ds16").glob("data/*/*.tar")):
        for sample in read_samples(tar_path):
            uid = json.loads(sample["json"])["uid"]
            image = cv2.imdecode(np.frombuffer(sample["png"], np.uint8), cv2.IMREAD_UNCHANGED)
            assert image.dtype == np.uint8
            np.testing.assert_array_equal(image, load_stored_pixels(built, rows[uid]))
            if "npy" in sample:
                raw = np.load(io.BytesIO(sample["npy"]))
                np.testing.assert_array_equal(
                    raw, load_stored_pixels(built, rows[uid], keep_16bit=True)
                )
                raw_frames[rows[uid]["relpath"]] = raw.dtype
    assert raw_frames == {"deep_Misc_120.png": np.uint16, "deep_iraytek-54.png": np.uint16}
    info = json.loads((tmp_path / "ds16" / "data" / "_info.json").read_text())
    assert info["members"] == ["cls", "json", "npy", "png"]
    for tar_path in sorted((tmp_path / "ds8").glob("data/*/*.tar")):
        for sample in read_samples(tar_path):
            assert set(sample) == {"cls", "json", "png"}


def sums(out: Path) -> str:
    return (out / "metadata" / "SHA256SUMS").read_text()


def test_byte_identical_for_any_worker_count(built, tmp_path):
    one = shard_dataset(
        ShardConfig(build=built, out=tmp_path / "a", max_count=3, execution=ExecutionOptions(workers=1, progress=False))
    )
    two = shard_dataset(
        ShardConfig(build=built, out=tmp_path / "b", max_count=3, execution=ExecutionOptions(workers=2, progress=False))
    )
    assert one.shards == two.shards >= 3
    assert sums(tmp_path / "a") == sums(tmp_path / "b")
    for tar_path in sorted((tmp_path / "a").glob("data/*/*.tar")):
        assert (
            tar_path.read_bytes()
            == (tmp_path / "b" / tar_path.relative_to(tmp_path / "a")).read_bytes()
        )
    assert (tmp_path / "a" / "data" / "_info.json").read_text() == (
        tmp_path / "b" / "data" / "_info.json"
    ).read_text()


def test_resume_redoes_only_unfinished_shards(built, tmp_path):
    config = ShardConfig(build=built, out=tmp_path / "ds", max_count=2, execution=ExecutionOptions(workers=1, progress=False))
    first = shard_dataset(config)
    reference = sums(config.out)
    tars = sorted(config.out.glob("data/*/*.tar"))
    stats = sorted(config.out.glob("metadata/shards/*/*_stats.json"))
    stats[0].unlink()  # killed before its marker
    tars[1].write_bytes(tars[1].read_bytes()[:1000])  # truncated, marker left behind
    (tars[2].parent / (tars[2].name + ".tmp")).write_bytes(b"half")  # a killed run's temp file
    again = shard_dataset(config)
    assert (again.written, again.reused) == (2, first.shards - 2)
    assert sums(config.out) == reference
    assert not list(config.out.rglob("*.tmp"))


def test_changed_plan_replaces_stale_shards(built, tmp_path):
    out = tmp_path / "ds"
    shard_dataset(ShardConfig(build=built, out=out, max_count=1, execution=ExecutionOptions(workers=1, progress=False)))
    many = len(list(out.glob("data/*/*.tar")))
    summary = shard_dataset(
        ShardConfig(build=built, out=out, max_count=100, seed=5, execution=ExecutionOptions(workers=1, progress=False))
    )
    assert len(list(out.glob("data/*/*.tar"))) == summary.shards < many
    assert len(list(out.glob("metadata/shards/*/*_stats.json"))) == summary.shards
    assert len(list(out.glob("metadata/shards/*/*.parquet"))) == summary.shards


def test_max_size_cuts_shards(built, tmp_path):
    small = shard_dataset(
        ShardConfig(build=built, out=tmp_path / "s", max_size=700_000, execution=ExecutionOptions(workers=1, progress=False))
    )
    big = shard_dataset(ShardConfig(build=built, out=tmp_path / "b", execution=ExecutionOptions(workers=1, progress=False)))
    assert small.shards > big.shards and small.samples == big.samples
    for tar_path in (tmp_path / "s").glob("data/*/*.tar"):
        assert tar_path.stat().st_size <= 700_000 or len(read_samples(tar_path)) == 1


def test_bad_input(built, tmp_path):
    with pytest.raises(ValueError, match="max-count"):
        shard_dataset(ShardConfig(build=built, out=tmp_path / "x", max_count=0))
    with pytest.raises(ValueError, match="png-level"):
        shard_dataset(ShardConfig(build=built, out=tmp_path / "x", png_level=12))
    unbinned = tmp_path / "unbinned"
    shutil.copytree(built, unbinned)
    table = cat.read_catalog(unbinned)
    table = table.set_column(
        table.schema.get_field_index("res_bin"), "res_bin", pa_strings(table.num_rows)
    )
    cat.write_catalog(unbinned, table)
    with pytest.raises(ValueError, match="inf590k bin"):
        shard_dataset(ShardConfig(build=unbinned, out=tmp_path / "x"))


def test_failed_shard_run_leaves_no_temp_files(tmp_path, ir_samples):
    build = make_build(tmp_path / "own", ir_samples)
    kept = [r for r in cat.read_catalog(build).to_pylist() if r["status"] == "ok"]
    damaged = tmp_path / "own" / kept[0]["source"].split(":")[-1] / kept[0]["relpath"]
    damaged.write_bytes(b"not an image any more")
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="changed after ingest"):
        shard_dataset(ShardConfig(build=build, out=out, max_count=2, execution=ExecutionOptions(workers=2, progress=False)))
    assert not list(out.rglob("*.tmp"))


def pa_strings(n: int):
    import pyarrow as pa

    return pa.array([""] * n, type=pa.string())


def test_sample_json_fills_nulls_by_type():
    from inf590k.dataset.layout import sample_json

    row = cat.empty_row()
    row.update(uid="u", source="s", relpath="r", status="ok")
    meta = json.loads(sample_json(row))
    assert meta["license"] == "" and meta["width"] == -1 and meta["entropy"] == -1.0
    assert meta["crop_box"] == [] and meta["tags"] == ""
    assert set(meta) == set(cat.COLUMN_NAMES) - {"status", "reason", "split"}
    assert io.BytesIO(sample_json(row)).read() == sample_json(row)


def test_build_runs_all_stages_like_the_single_stages(built, tmp_path):
    from inf590k.build.pipeline import BuildConfig
    from inf590k.dataset.verify import VerifyConfig, verify

    sources = tuple(
        (f"folder:{name}", built.parent / name) for name in ("alpha", "beta")
    )  # the folders make_build ingested
    summary = build_dataset(
        BuildConfig(
            ingest=IngestConfig(sources=sources, build=tmp_path / "build", execution=ExecutionOptions(workers=1, progress=False)),
            out=tmp_path / "ds",
            dedupe=DedupeConfig(build=Path("ignored"), contact_groups=0),
            shard=ShardConfig(build=Path("ignored"), out=Path("ignored"), execution=ExecutionOptions(workers=1, progress=False)),
        )
    )
    shard_dataset(ShardConfig(build=built, out=tmp_path / "stagewise", execution=ExecutionOptions(workers=1, progress=False)))
    assert sums(tmp_path / "ds") == sums(tmp_path / "stagewise")
    assert summary.shard.samples == 9 and summary.dedupe.kept == 9
    assert str(summary).startswith("build: 10 files -> 9 kept (1 duplicate) -> 9 samples")
    assert verify(VerifyConfig(dataset=tmp_path / "ds", execution=ExecutionOptions(workers=1, progress=False))).ok


def test_dedupe_against_a_built_dataset(built, tmp_path):
    """Incremental build: a new source already present in a published dataset is dropped."""
    shard_dataset(ShardConfig(build=built, out=tmp_path / "published", execution=ExecutionOptions(workers=1, progress=False)))
    new_build = tmp_path / "new"
    ingest(
        IngestConfig(sources=(("folder:beta", built.parent / "beta"),), build=new_build, execution=ExecutionOptions(workers=1, progress=False))
    )
    summary = dedupe(
        DedupeConfig(build=new_build, against=(tmp_path / "published",), contact_groups=0)
    )
    rows = cat.read_catalog(new_build).to_pylist()
    assert len(rows) == 5 and summary.outside_matches == 5 and summary.kept == 0
    assert all(
        r["status"] == "duplicate" and r["reason"].startswith("already in published/") for r in rows
    )


def test_summary_line_says_1_shard(tmp_path):
    from inf590k.build.shard import ShardSummary

    line = str(ShardSummary(shards=1, written=1, reused=0, samples=1, bytes=0, seconds=1.0, out=tmp_path))
    assert line.startswith("shard: 1 sample in 1 shard of ")
