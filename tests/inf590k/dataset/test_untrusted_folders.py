"""A dataset folder or build folder may be someone else's (downloaded from the Hub, handed over):
no command deletes, writes, reads or uploads outside it, follows a planted link, or believes a
lie in its index files; `shard` never ships a source file that changed after ingest."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from inf590k.build import catalog as cat
from inf590k.build import lineage
from inf590k.build.locks import folder_lock
from inf590k.build.shard import ShardConfig
from inf590k.dataset.layout import (
    InfoError,
    UnsafePathError,
    check_relpath,
    dataset_file,
    read_splits,
)
from inf590k.dataset.publish import PublishConfig, PublishError, publish
from inf590k.dataset.report import ReportConfig, report
from inf590k.dataset.verify import VerifyConfig, verify
from inf590k.execution.units import ExecutionOptions
from inf590k.fsutil import write_text_atomic
from tests.builders import shard_dataset

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY-----\nnot really\n"


def run_verify(dataset: Path):
    return verify(VerifyConfig(dataset=dataset, execution=ExecutionOptions(workers=1, progress=False)))


def shard_config(build: Path, out: Path) -> ShardConfig:
    return ShardConfig(build=build, out=out, max_count=4, execution=ExecutionOptions(workers=1, progress=False))


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "name",
    ["../x", "/abs/x", "a/../../x", "", "a//b", "./a", "pipe:id", "a\\b", "x?y", "%2e%2e/x", "a b"],
)
def test_names_that_leave_the_folder_are_refused(name):
    with pytest.raises(UnsafePathError):
        check_relpath(name)


def test_plain_names_pass():
    assert check_relpath("s512-767_r115-149/s512-767_r115-149-000000.tar")


def test_links_on_the_way_are_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "ds" / "data").mkdir(parents=True)
    (tmp_path / "ds" / "data" / "bin").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        dataset_file(tmp_path / "ds", "data/bin/x.tar")
    assert dataset_file(tmp_path / "ds", "data/other/x.tar") == tmp_path / "ds/data/other/x.tar"


def test_shard_never_deletes_what_a_crafted_files_json_names_outside(build_copy, tmp_path):
    """files.json naming `../home/notes.txt` and an absolute path: refused in one line, and
    both files (and their folder) stay."""
    build, dataset = build_copy
    home = dataset.parent / "home"
    (home / "sub").mkdir(parents=True)
    notes, thesis = home / "notes.txt", home / "sub" / "thesis.tex"
    notes.write_text("my notes")
    thesis.write_text("my thesis")
    edit_json(
        dataset / "metadata" / "files.json",
        lambda index: index["files"].extend(["../home/notes.txt", str(thesis)]),
    )
    with pytest.raises(UnsafePathError, match="not a plain relative path"):
        shard_dataset(shard_config(build, dataset))
    assert notes.read_text() == "my notes" and thesis.read_text() == "my thesis"


def test_shard_never_writes_through_a_linked_folder_or_a_planted_temp_link(build_copy, tmp_path):
    build, dataset = build_copy
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (dataset / "README.md.tmp").symlink_to(victim)  # write_text_atomic's temporary name
    tar = next((dataset / "data").rglob("*.tar"))
    (tar.parent / (tar.name + ".tmp")).symlink_to(victim)
    tar.unlink()  # so that the shard is written again, through its .tmp name
    shard_dataset(shard_config(build, dataset))
    assert victim.read_text() == "keep me"
    assert tar.is_file() and not tar.is_symlink() and run_verify(dataset).ok

    elsewhere = tmp_path / "elsewhere"
    bin_folder = tar.parent
    bin_folder.rename(elsewhere)
    bin_folder.symlink_to(elsewhere)
    before = sorted(p.name for p in elsewhere.iterdir())
    with pytest.raises(UnsafePathError, match="symbolic link"):
        shard_dataset(shard_config(build, dataset))
    assert sorted(p.name for p in elsewhere.iterdir()) == before


def test_verify_and_publish_refuse_a_linked_file(dataset_copy, tmp_path):
    key = tmp_path / "id_rsa"
    key.write_bytes(SECRET)
    licences = dataset_copy / "metadata" / "LICENSES.md"
    licences.unlink()
    licences.symlink_to(key)
    checked = run_verify(dataset_copy)
    assert not checked.ok and "metadata/LICENSES.md: a symbolic link" in checked.problems[0]
    with pytest.raises(PublishError, match="symbolic link"):
        publish(PublishConfig(dataset=dataset_copy, repo="me/ds", dry_run=True))


def test_verify_and_publish_refuse_a_linked_bin_folder(dataset_copy, tmp_path):
    bin_folder = next(p for p in (dataset_copy / "data").iterdir() if p.is_dir())
    moved = bin_folder.rename(tmp_path / "other-disk")
    bin_folder.symlink_to(moved)
    checked = run_verify(dataset_copy)
    assert not checked.ok and f"data/{bin_folder.name}: a symbolic link" in checked.problems[0]
    with pytest.raises(PublishError, match="symbolic link"):
        publish(PublishConfig(dataset=dataset_copy, repo="me/ds", dry_run=True))


def test_report_never_writes_through_a_linked_report_folder(dataset_copy, tmp_path):
    mine = tmp_path / "my-report"
    mine.mkdir()
    (mine / "report.json").write_text('{"mine": true}')
    report_dir = dataset_copy / "metadata" / "report"
    if report_dir.exists():
        for path in report_dir.iterdir():
            path.unlink()
        report_dir.rmdir()
    report_dir.symlink_to(mine)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        report(ReportConfig(dataset=dataset_copy))
    assert json.loads((mine / "report.json").read_text()) == {"mine": True}


def test_report_replaces_a_planted_figure_link_instead_of_following_it(dataset_copy, tmp_path):
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"keep me")
    figure = dataset_copy / "metadata" / "report" / "resolution_hist.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    figure.unlink(missing_ok=True)
    figure.symlink_to(victim)
    report(ReportConfig(dataset=dataset_copy))
    assert victim.read_bytes() == b"keep me"
    assert not figure.is_symlink() and figure.read_bytes().startswith(b"\x89PNG")


def test_atomic_writes_replace_links_at_the_target(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "out.json").symlink_to(victim)
    (tmp_path / "out.json.tmp").symlink_to(victim)
    write_text_atomic(tmp_path / "out.json", "{}")
    assert victim.read_text() == "keep me" and (tmp_path / "out.json").read_text() == "{}"


# ----------------------------------------------------------------------------- index lies


def info_path(dataset: Path) -> Path:
    return dataset / "data" / "_info.json"


def train_split(info: dict) -> dict:
    return info["splits"]["train"]


@pytest.mark.parametrize(
    ("lie", "field"),
    [
        (lambda s: s.update(num_samples=s["num_samples"] * 1000), "num_samples"),
        (lambda s: s["shard_lengths"].__setitem__(0, 0), "shard_lengths"),
        (lambda s: s["shard_lengths"].__setitem__(0, -5), "shard_lengths"),
        (lambda s: s["shard_lengths"].__setitem__(0, "lots"), "shard_lengths"),
        (lambda s: s.update(filenames=[s["filenames"][0]] * len(s["filenames"])), "more than once"),
        (lambda s: s["filenames"].__setitem__(0, "../../etc/passwd.tar"), "filenames entry"),
        (lambda s: s.update(num_samples=0), "num_samples"),
    ],
)
def test_index_lies_are_one_line_naming_the_field(dataset_copy, lie, field):
    edit_json(info_path(dataset_copy), lambda info: lie(train_split(info)))
    with pytest.raises((InfoError, UnsafePathError)) as error:
        read_splits(json.loads(info_path(dataset_copy).read_text()))
    assert field in str(error.value) and "\n" not in str(error.value)
    checked = run_verify(dataset_copy)
    assert not checked.ok and field in checked.problems[0]


def test_verify_catches_licences_rewritten_in_the_index(dataset_copy):
    """Every licence set to CC0-1.0 in _info.json (and in the sources table, consistently): the
    sidecar rows, hashed in SHA256SUMS, still say otherwise."""

    def permissive(entries):
        for entry in entries:
            entry["license"] = "CC0-1.0"

    edit_json(info_path(dataset_copy), lambda info: permissive(info["sources"]))
    checked = run_verify(dataset_copy)
    assert any("field sources disagrees" in p and "CC0-1.0" in p for p in checked.problems)
    edit_json(dataset_copy / "metadata" / "sources.json", permissive)
    checked = run_verify(dataset_copy)
    assert not checked.ok
    assert any("its samples' rows say" in p for p in checked.problems), checked.problems


def test_verify_catches_sample_counts_rewritten_in_the_sources(dataset_copy):
    def double(entries):
        for entry in entries:
            entry["samples"] *= 2

    edit_json(info_path(dataset_copy), lambda info: double(info["sources"]))
    edit_json(dataset_copy / "metadata" / "sources.json", double)
    checked = run_verify(dataset_copy)
    assert any("sidecar rows hold" in p for p in checked.problems), checked.problems


# ----------------------------------------------------------------------------- sources changed


def kept_rows(build: Path) -> list[dict]:
    return [r for r in cat.read_catalog(build).to_pylist() if r["status"] == "ok"]


def source_file(build: Path, row: dict) -> Path:
    return Path(cat.read_sources(build)[row["source"]]["root"]) / row["relpath"]


def test_a_source_file_edited_in_place_after_ingest_is_not_shipped(build_copy, tmp_path):
    """Same size, other pixels (an inverted image): caught by its sha256, before any shard is
    renamed into place."""
    build, _ = build_copy
    row = kept_rows(build)[0]
    path = source_file(build, row)
    data = bytearray(path.read_bytes())
    data[-40] ^= 0xFF  # inside the image data: a valid file with other content
    path.write_bytes(bytes(data))
    out = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="changed after ingest.*sha256 differs") as error:
        shard_dataset(shard_config(build, out))
    assert row["relpath"] in str(error.value) and "\n" not in str(error.value)
    assert "`touch` it" in str(error.value)  # ingest goes by size and mtime: say how to redo it
    assert not list(out.rglob("*.tmp"))
    shipped = [
        p for p in out.rglob("*.parquet") if row["uid"] in pq.read_table(p)["uid"].to_pylist()
    ]
    assert not shipped


def test_a_grown_or_deleted_source_file_is_one_line(build_copy, tmp_path):
    build, _ = build_copy
    rows = kept_rows(build)
    grown = source_file(build, rows[0])
    grown.write_bytes(grown.read_bytes() + b"\0" * 100)
    with pytest.raises(RuntimeError, match="changed after ingest"):
        shard_dataset(shard_config(build, tmp_path / "a"))
    grown.write_bytes(grown.read_bytes()[:-100])
    source_file(build, rows[1]).unlink()
    with pytest.raises(RuntimeError, match="restore it") as error:
        shard_dataset(shard_config(build, tmp_path / "b"))
    assert "Errno" not in str(error.value) and rows[1]["relpath"] in str(error.value)


def test_a_catalogue_part_edited_after_bin_is_refused(build_copy, tmp_path):
    build, _ = build_copy
    part = cat.part_paths(build)[0]
    table = pq.read_table(part)
    licences = ["CC0-1.0"] * table.num_rows
    pq.write_table(
        table.set_column(table.schema.get_field_index("license"), "license", [licences]), part
    )
    with pytest.raises(lineage.LineageError, match=f"{part.name} was edited"):
        shard_dataset(shard_config(build, tmp_path / "ds"))
    assert "bin" in lineage.stale_stages(build)


def test_two_shard_runs_into_one_folder_do_not_race(build_copy, tmp_path):
    """A second writer of the same --out fails at once while the first holds the folder's lock
    (flock locks are per open file, so a second open in this process is a second writer)."""
    build, _ = build_copy
    out = tmp_path / "shared-out"
    out.mkdir()
    with folder_lock(out, "--out"):
        with pytest.raises(lineage.LineageError, match="is being written by another"):
            shard_dataset(shard_config(build, out))
    assert not any(out.iterdir())
    shard_dataset(shard_config(build, out))  # once free, it writes
    assert run_verify(out).ok


def test_report_decodes_only_what_ingest_would(tmp_path):
    """The sample grid reads someone else's PNGs: a chunk length of 2 GiB (OpenCV would
    allocate it first) or a header beyond the pixel cap is left out, a real PNG is drawn."""
    import struct
    import zlib

    import cv2
    import numpy as np

    from inf590k.dataset.report import _decode_bounded

    good = cv2.imencode(".png", np.full((8, 8), 7, np.uint8))[1].tobytes()
    text = b"tEXt"
    bomb = (
        good[:33]
        + struct.pack(">I", 0x7FFFFFF0)
        + text
        + b"k\0v"
        + struct.pack(">I", zlib.crc32(text + b"k\0v"))
        + good[33:]
    )
    huge = bytearray(good)
    huge[16:24] = struct.pack(">II", 200_000, 200_000)
    assert _decode_bounded(good).shape == (8, 8)
    assert _decode_bounded(bomb) is None and _decode_bounded(bytes(huge)) is None
