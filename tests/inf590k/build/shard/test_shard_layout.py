"""The dataset folder as the Hub repo: ownership, strays, edited JSON, downloaded copies,
stable class ids, 16-bit members read alike by every client, --shard-multiple, the card."""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from inf590k.build import catalog as cat
from inf590k.build.bins import BinConfig, bin_catalog
from inf590k.build.ingest import IngestConfig, ingest
from inf590k.build.shard import ShardConfig
from inf590k.dataset.verify import VerifyConfig, verify
from inf590k.execution.units import ExecutionOptions
from tests.builders import make_build, shard_dataset


@pytest.fixture(scope="module")
def built(tmp_path_factory, ir_samples) -> Path:
    return make_build(tmp_path_factory.mktemp("layout"), ir_samples)


@pytest.fixture(scope="module")
def dataset16(built, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds16") / "ds"
    shard_dataset(ShardConfig(build=built, out=out, keep_16bit=True, execution=ExecutionOptions(workers=1, progress=False)))
    return out


def run_verify(dataset: Path):
    return verify(VerifyConfig(dataset=dataset, execution=ExecutionOptions(workers=1, progress=False)))


def tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# ----------------------------------------------------------------------------- ownership


def test_foreign_folder_is_refused_untouched(built, tmp_path):
    out = tmp_path / "mine"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "draft.tmp").write_text("my notes")
    (out / "backup").mkdir()
    (out / "backup" / "backup-000001.tar").write_bytes(b"my backup")
    before = tree(out)
    with pytest.raises(
        ValueError, match=r"--out .* did not write \(e.g. backup/backup-000001.tar\)"
    ):
        shard_dataset(ShardConfig(build=built, out=out, execution=ExecutionOptions(workers=1, progress=False)))
    assert tree(out) == before


def test_own_folder_keeps_user_files_and_drops_only_its_stale_files(built, tmp_path):
    out = tmp_path / "ds"
    shard_dataset(ShardConfig(build=built, out=out, max_count=1, execution=ExecutionOptions(workers=1, progress=False)))
    many = sorted(out.glob("data/*/*.tar"))
    (out / "notes.txt").write_text("mine")
    (out / "data" / many[0].parent.name / "mine-000009.tar").write_bytes(b"mine too")
    summary = shard_dataset(ShardConfig(build=built, out=out, max_count=100, execution=ExecutionOptions(workers=1, progress=False)))
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "data" / many[0].parent.name / "mine-000009.tar").read_bytes() == b"mine too"
    assert len(list(out.glob("data/*/*-0*.tar"))) == summary.shards + 1 < len(many) + 1
    report = run_verify(out)  # the user's files are strays for verify, nothing else
    assert sorted(p.split(":")[0] for p in report.problems) == sorted(
        ["notes.txt", f"data/{many[0].parent.name}/mine-000009.tar"]
    )


def test_planned_file_that_is_not_ours_is_refused(built, tmp_path):
    out = tmp_path / "ds"
    shard_dataset(ShardConfig(build=built, out=out, execution=ExecutionOptions(workers=1, progress=False)))
    owned = json.loads((out / "metadata" / "files.json").read_text())
    owned["files"].remove("metadata/LICENSES.md")
    (out / "metadata" / "files.json").write_text(json.dumps(owned))
    (out / "metadata" / "LICENSES.md").write_text("the user's own file")
    with pytest.raises(ValueError, match="metadata/LICENSES.md exists but"):
        shard_dataset(ShardConfig(build=built, out=out, execution=ExecutionOptions(workers=1, progress=False)))
    assert (out / "metadata" / "LICENSES.md").read_text() == "the user's own file"


def test_rerun_is_byte_identical(built, tmp_path):
    out = tmp_path / "ds"
    shard_dataset(ShardConfig(build=built, out=out, execution=ExecutionOptions(workers=1, progress=False)))
    first = tree(out)
    again = shard_dataset(ShardConfig(build=built, out=out, execution=ExecutionOptions(workers=1, progress=False)))
    assert again.written == 0 and tree(out) == first


# ----------------------------------------------------------------------------- verify


def test_verify_reports_a_stray_parquet_and_unexpected_files(dataset16, tmp_path):
    copy = Path(shutil.copytree(dataset16, tmp_path / "ds"))
    bin_dir = next(copy.glob("data/*/"))
    (bin_dir / "extra.parquet").write_bytes(b"PAR1")
    (copy / "metadata" / "old.json").write_text("{}")
    report = run_verify(copy)
    assert not report.ok
    assert any(
        p.startswith(f"data/{bin_dir.name}/extra.parquet: a file that does not belong")
        for p in report.problems
    )
    assert any(
        p.startswith("metadata/old.json: a file that does not belong") for p in report.problems
    )


def test_verify_reports_json_edited_inside_a_tar_with_redone_checksums(dataset16, tmp_path):
    copy = Path(shutil.copytree(dataset16, tmp_path / "ds"))
    info = json.loads((copy / "data" / "_info.json").read_text())["splits"]["train"]
    name = info["filenames"][0]
    path = copy / "data" / name
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in members:
            if member.name.endswith(".json"):
                meta = json.loads(data)
                meta["width"] += 1
                data = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    sums = copy / "metadata" / "SHA256SUMS"
    sums.write_text(
        re.sub(
            rf"^\w+  data/{re.escape(name)}$",
            f"{digest}  data/{name}",
            sums.read_text(),
            flags=re.M,
        )
    )
    stats_path = (copy / "metadata" / "shards" / name).with_name(Path(name).stem + "_stats.json")
    stats = json.loads(stats_path.read_text())
    stats.update(bytes=path.stat().st_size, sha256=digest)
    stats_path.write_text(json.dumps(stats))
    report = run_verify(copy)
    assert any("JSON disagrees with its sidecar row" in p for p in report.problems), report.problems
    assert not any("sha256 mismatch" in p for p in report.problems)


def test_verify_passes_on_a_copy_as_hf_download_leaves_it(dataset16, tmp_path):
    copy = tmp_path / "download"
    for path in dataset16.rglob("*"):  # hf download: files only, fresh mtimes, its own extras
        if path.is_file():
            target = copy / path.relative_to(dataset16)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    (copy / ".gitattributes").write_text("*.tar filter=lfs diff=lfs merge=lfs -text\n")
    meta = copy / ".cache" / "huggingface" / "download" / "data"
    meta.mkdir(parents=True)
    (meta / "x.tar.metadata").write_text("abc\n123\n")
    report = run_verify(copy)
    assert report.ok, report.problems
    assert report.samples == 9


# ----------------------------------------------------------------------------- class ids


def test_class_ids_stay_when_a_build_adds_a_source(built, tmp_path):
    out = tmp_path / "ds"
    shard_dataset(ShardConfig(build=built, out=out, execution=ExecutionOptions(workers=1, progress=False)))
    first = json.loads((out / "data" / "_info.json").read_text())["sources"]
    assert [(s["id"], s["class_id"]) for s in first] == [("alpha", 0), ("beta", 1)]
    # a second build: a new source whose id sorts first, then the two earlier ones
    aardvark = tmp_path / "aardvark"
    aardvark.mkdir()
    shutil.copy(built.parent / "beta" / "FLIR_04208.jpg", aardvark / "other.jpg")
    grown = tmp_path / "grown"
    from inf590k.build.bins import BinConfig, bin_catalog
    from inf590k.build.dedupe.config import DedupeConfig
    from inf590k.build.dedupe.stage import dedupe

    ingest(
        IngestConfig(sources=(
                ("folder:aardvark", aardvark),
                ("folder:alpha", built.parent / "alpha"),
                ("folder:beta", built.parent / "beta"),
            ), build=grown, execution=ExecutionOptions(workers=1, progress=False))
    )
    table = cat.read_catalog(grown)  # keep the copy apart from dedupe: a sample of its own
    dedupe(DedupeConfig(build=grown, contact_groups=0, priority=("aardvark",)))
    bin_catalog(BinConfig(build=grown))
    shard_dataset(ShardConfig(build=grown, out=out, execution=ExecutionOptions(workers=1, progress=False)))
    info = json.loads((out / "data" / "_info.json").read_text())
    ids = {s["id"]: s["class_id"] for s in info["sources"]}
    assert ids["alpha"] == 0 and ids["beta"] == 1 and ids["aardvark"] == 2
    assert table.num_rows > 0
    card = (out / "README.md").read_text()
    assert "'0': alpha" in card and "'1': beta" in card and "'2': aardvark" in card
    for tar_path in out.glob("data/*/*.tar"):
        rows = pq.read_table(
            (out / "metadata" / "shards" / tar_path.relative_to(out / "data")).with_suffix(
                ".parquet"
            )
        ).to_pylist()
        with tarfile.open(tar_path) as tar:
            classes = [int(tar.extractfile(m).read()) for m in tar if m.name.endswith(".cls")]
        assert classes == [ids[r["source"]] for r in rows]


# ----------------------------------------------------------------------------- 16-bit clients


def expected_views(dataset: Path) -> dict[str, np.ndarray]:
    views = {}
    for tar_path in dataset.glob("data/*/*.tar"):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if member.name.endswith(".png"):
                    data = np.frombuffer(tar.extractfile(member).read(), np.uint8)
                    views[member.name[:-4]] = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    return views


def test_16bit_dataset_reads_as_the_8bit_view_in_every_client(dataset16, tmp_path, monkeypatch):
    import datasets
    import timm.data
    import webdataset as wds

    views = expected_views(dataset16)
    assert all(v.dtype == np.uint8 for v in views.values())
    shards = sorted(str(p) for p in dataset16.glob("data/*/*.tar"))
    raw_seen = 0
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False).decode("l"):
        expected = views[sample["__key__"]]
        np.testing.assert_allclose(sample["png"] * 255.0, expected, atol=0.51)
        if "npy" in sample:
            assert sample["npy"].dtype == np.uint16 and sample["npy"].shape == expected.shape
            raw_seen += 1
    assert raw_seen == 2
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    loaded = datasets.load_dataset(str(dataset16), split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.num_rows == len(views)
    for example in loaded:
        np.testing.assert_array_equal(np.asarray(example["png"]), views[example["__key__"]])
        if example["npy"] is not None:
            assert (
                np.asarray(example["npy"], dtype=np.uint16).shape == views[example["__key__"]].shape
            )
    reader = timm.data.create_dataset(
        "wds/inf590k",
        root=str(dataset16 / "data"),
        split="train",
        is_training=False,
        input_img_mode="L",
    )
    images = sorted(np.asarray(image).tobytes() for image, _ in reader)
    assert images == sorted(v.tobytes() for v in views.values())


def test_loader_reads_the_raw_member_losslessly_when_asked(dataset16):
    from pretrain.data import decode_raw_npy

    for tar_path in dataset16.glob("data/*/*.tar"):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if member.name.endswith(".npy"):
                    data = tar.extractfile(member).read()
                    raw = decode_raw_npy(data, 10**8)
                    np.testing.assert_array_equal(raw, np.load(io.BytesIO(data)))
                    assert raw.dtype == np.uint16
    with pytest.raises(ValueError, match="not a"):
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((2, 2, 3), np.uint8))
        decode_raw_npy(buffer.getvalue(), 10**8)


# ----------------------------------------------------------------------------- shard count


def test_shard_multiple_in_a_real_build(built, tmp_path):
    summary = shard_dataset(
        ShardConfig(build=built, out=tmp_path / "ds", shard_multiple=4, execution=ExecutionOptions(workers=1, progress=False))
    )
    assert summary.shards % 4 == 0 and run_verify(tmp_path / "ds").ok


# ----------------------------------------------------------------------------- the card


def test_card_snippets_run_as_written(dataset16, tmp_path, monkeypatch):
    """Every python block of the card runs once its placeholders name a local copy."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    card = (dataset16 / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        code = block.replace("OWNER/NAME", str(dataset16)).replace("PATH/TO/COPY", str(dataset16))
        if "npy_bytes" in code:
            namespace["npy_bytes"] = next(
                tar.extractfile(m).read()
                for p in dataset16.glob("data/*/*.tar")
                for tar in [tarfile.open(p)]
                for m in tar
                if m.name.endswith(".npy")
            )
            namespace["sample"] = {"npy": np.load(io.BytesIO(namespace["npy_bytes"])).tolist()}
        exec(compile(code, "card", "exec"), namespace)  # noqa: S102 - the card's own snippets
    assert 'decode("l")' in card and 'input_img_mode="L"' in card
    assert "license_link: metadata/LICENSES.md" in card


# ----------------------------------------------------------------------------- synthetic frames


def test_synthetic_frames_are_never_presented_as_the_real_source(built, tmp_path):
    """Rows whose catalog modality is `synthetic` (made by `inf590k synth` in KAIST's layout)
    keep their own licence: the card and _info.json never show KAIST's name or licence."""
    build = Path(shutil.copytree(built, tmp_path / "build"))
    recorded = cat.read_sources(build)
    recorded["beta"].update(
        name="KAIST Multispectral Pedestrian Dataset",
        license="CC BY-NC-SA",
        citation="Hwang, Park, Kim, Choi, Kweon. CVPR 2015.",
        modality="lwir",
    )
    cat.write_sources(build, recorded)
    table = cat.read_catalog(build)
    is_beta = [s == "beta" for s in table.column("source").to_pylist()]
    for column, value in (("modality", "synthetic"), ("license", "CC0 1.0")):
        values = [
            value if beta else v
            for beta, v in zip(is_beta, table.column(column).to_pylist(), strict=True)
        ]
        table = table.set_column(table.schema.get_field_index(column), column, [values])
    cat.write_catalog(build, table)
    bin_catalog(BinConfig(build=build))  # the stage that wrote the catalog last: `shard` checks it
    out = tmp_path / "ds"
    shard_dataset(ShardConfig(build=build, out=out, execution=ExecutionOptions(workers=1, progress=False)))
    beta = next(
        s
        for s in json.loads((out / "data" / "_info.json").read_text())["sources"]
        if s["id"] == "beta"
    )
    assert beta["modality"] == "synthetic" and beta["license"] == "CC0 1.0"
    assert "KAIST" not in beta["name"]
    card = (out / "README.md").read_text()
    assert "CC BY-NC-SA" not in card and "Hwang" not in card and "KAIST" not in card
    assert "1 synthetic source" in card and "1 self-collected folder" in card
    assert "public source:" not in card and "public sources" not in card


def test_damaged_index_is_one_line_for_report_and_publish(dataset16, tmp_path):
    from inf590k.dataset.publish import PublishConfig, PublishError, publish
    from inf590k.dataset.report import ReportConfig, report

    copy = Path(shutil.copytree(dataset16, tmp_path / "ds"))
    (copy / "data" / "_info.json").write_text("{bad")
    with pytest.raises(ValueError, match=r"_info.json is not valid JSON .*re-run `inf590k shard`"):
        report(ReportConfig(dataset=copy))
    with pytest.raises(PublishError, match="is not valid JSON"):
        publish(PublishConfig(dataset=copy, repo="lab/x", dry_run=True))
    (copy / "data" / "_info.json").write_text((dataset16 / "data" / "_info.json").read_text())
    (copy / "metadata" / "sources.json").unlink()
    assert "metadata/sources.json: missing (`inf590k shard` writes it)" in run_verify(copy).problems


# ----------------------------------------------------------------------------- progress


class RecordingBar:
    """Stands in for tqdm: records every update the bar receives."""

    made: list[RecordingBar] = []

    def __init__(self, total: int, **kwargs) -> None:
        self.total, self.updates = total, []
        RecordingBar.made.append(self)

    def update(self, n: int) -> None:
        self.updates.append(n)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("workers", [1, 2])
def test_shard_and_verify_bars_move_per_sample(built, tmp_path, monkeypatch, workers):
    import inf590k.execution.progress

    monkeypatch.setattr(inf590k.execution.progress, "tqdm", RecordingBar)
    RecordingBar.made.clear()
    out = tmp_path / "ds"
    summary = shard_dataset(ShardConfig(build=built, out=out, max_count=4, execution=ExecutionOptions(workers=workers, progress=False)))
    verify(VerifyConfig(dataset=out, execution=ExecutionOptions(workers=workers, progress=False)))
    shard_bar, verify_bar = RecordingBar.made
    for bar in (shard_bar, verify_bar):
        assert bar.total == summary.samples == 9
        assert bar.updates == [1] * 9  # one step per sample, not one per shard


def test_a_changed_plan_drops_the_stale_report_an_unchanged_one_keeps_it(built, tmp_path):
    from inf590k.dataset.report import ReportConfig, report

    out = tmp_path / "ds"
    shard_dataset(ShardConfig(build=built, out=out, execution=ExecutionOptions(workers=1, progress=False)))
    report(ReportConfig(dataset=out, grid_samples=4))
    shard_dataset(ShardConfig(build=built, out=out, execution=ExecutionOptions(workers=1, progress=False)))
    assert (out / "metadata" / "report" / "report.json").exists()
    assert "metadata/report/sample_grid.png" in (out / "README.md").read_text()
    shard_dataset(ShardConfig(build=built, out=out, max_count=2, execution=ExecutionOptions(workers=1, progress=False)))
    assert not list((out / "metadata" / "report").glob("*"))
    card = (out / "README.md").read_text()
    assert "sample_grid.png" not in card and "Run `inf590k report FOLDER`" in card
    assert run_verify(out).ok
