"""Damaged and hostile archives: a row with the reason for what is damaged, every other member
catalogued, never a traceback; members over the size cap are rejected unread."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from cli import main
from inf590k.build import catalog as cat
from inf590k.build.ingest import IngestConfig, ingest
from inf590k.build.ingest_plan import chunk_starts, plan_source, read_weights
from inf590k.build.rows import load_stored_pixels
from inf590k.execution.units import ExecutionOptions
from inf590k.inputs.imageio import ImagePolicy
from inf590k.inputs.manifest import folder_manifest
from inf590k.inputs.sources import DAMAGED_INDEX, list_entries
from tests.images import encode, thermal_frame

FRAMES = 20


def frames() -> dict[str, bytes]:
    return {f"d/{i:03d}.png": encode(thermal_frame(48, 64, seed=i)) for i in range(FRAMES)}


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def cut_in_half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def bad_crc_zip(tmp_path: Path) -> Path:
    path = write_zip(tmp_path / "crc.zip", frames())
    with zipfile.ZipFile(path) as archive:
        info = archive.infolist()[5]
    data = bytearray(path.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + 10] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def rows(build: Path) -> list[dict]:
    return pq.read_table(build / "catalog").to_pylist()


def run(build: Path, root: Path, **policy) -> None:
    config = IngestConfig(sources=(("folder", root),), build=build, policy=ImagePolicy(**policy), execution=ExecutionOptions(workers=1, progress=False))
    ingest(config)


DAMAGED = {
    "zip with a bad CRC": lambda tmp: bad_crc_zip(tmp),
    "truncated .zip": lambda tmp: cut_in_half(write_zip(tmp / "a.zip", frames())),
    "truncated .tar": lambda tmp: cut_in_half(write_tar(tmp / "a.tar", frames())),
    "truncated .tar.gz": lambda tmp: cut_in_half(write_tar(tmp / "a.tar.gz", frames(), "w:gz")),
    "truncated .tar.bz2": lambda tmp: cut_in_half(write_tar(tmp / "a.tar.bz2", frames(), "w:bz2")),
    "truncated .tar.xz": lambda tmp: cut_in_half(write_tar(tmp / "a.tar.xz", frames(), "w:xz")),
}


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_damaged_archives_get_rows_with_reasons_and_reruns_do_not_crash(tmp_path, kind):
    archive = DAMAGED[kind](tmp_path)
    result = CliRunner().invoke(
        main,
        [
            "ingest",
            "--build",
            str(tmp_path / "b"),
            "--source",
            f"folder={archive}",
            "--workers",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "Aborted" not in result.output
    catalogued = rows(tmp_path / "b")
    rejected = [r for r in catalogued if r["status"] == cat.STATUS_REJECTED]
    assert rejected and all("damaged archive" in r["reason"] for r in rejected)
    assert all("\n" not in r["reason"] for r in rejected)
    ok = [r for r in catalogued if r["status"] == cat.STATUS_OK]
    if kind == "zip with a bad CRC":
        assert [r["relpath"] for r in rejected] == ["d/005.png"] and "CRC" in rejected[0]["reason"]
        assert len(ok) == FRAMES - 1
    elif kind == "truncated .tar.bz2":  # nothing readable: one row
        assert [r["relpath"] for r in catalogued] == [DAMAGED_INDEX]
    else:  # the members before the cut are kept, the cut one and the end get a row each
        assert len(ok) >= FRAMES // 3
        assert {r["relpath"] for r in rejected} >= {DAMAGED_INDEX}
    again = CliRunner().invoke(
        main,
        [
            "ingest",
            "--build",
            str(tmp_path / "b"),
            "--source",
            f"folder={archive}",
            "--workers",
            "2",
        ],
    )
    assert again.exit_code == 0, again.output
    assert rows(tmp_path / "b") == catalogued


def test_members_over_the_size_cap_are_rejected_unread(tmp_path):
    members = frames()
    members["d/huge.png"] = b"\x89PNG" + bytes(3 << 20)  # 3 MB of zeros: compresses well
    archive = write_zip(tmp_path / "a.zip", members)
    run(tmp_path / "b", archive, max_file_bytes=1 << 20)
    huge = next(r for r in rows(tmp_path / "b") if r["relpath"] == "d/huge.png")
    assert huge["status"] == cat.STATUS_REJECTED
    assert huge["reason"].startswith("file too large (3 MB > 1 MB): not read")
    assert huge["file_bytes"] == 3 << 20 + 4 or huge["file_bytes"] > 3 << 20


def test_tar_members_are_chunked_in_archive_order(tmp_path):
    """One forward pass fills each chunk: member order in the tar does not change what is held."""
    members = frames()
    shuffled = dict(sorted(members.items(), key=lambda item: hash(item[0]) % 7))
    archive = write_tar(tmp_path / "shuffled.tar", shuffled)
    tasks, _ = plan_source(folder_manifest(), archive, 1 << 30)
    assert tasks.column("relpath").to_pylist() == list(shuffled)
    starts = chunk_starts(read_weights(tasks), size=64, max_bytes=3 * len(members["d/000.png"]))
    assert max(np.diff(starts)) <= 3
    run(tmp_path / "b", archive)
    assert sorted(r["relpath"] for r in rows(tmp_path / "b")) == sorted(members)


def test_special_files_as_source_root_do_not_hang(tmp_path):
    import os

    fifo = tmp_path / "pipe.zip"
    os.mkfifo(fifo)
    link = tmp_path / "zero.tar"
    link.symlink_to("/dev/zero")
    for root in (fifo, link):
        result = CliRunner().invoke(
            main, ["ingest", "--build", str(tmp_path / "b"), "--source", f"folder={root}"]
        )
        assert result.exit_code == 1 and "not a regular file or folder" in result.output


def test_zero_kept_warning_names_the_next_step_for_archives_and_folders(tmp_path):
    archive = write_zip(tmp_path / "a.zip", frames())
    archive.write_bytes(archive.read_bytes()[:40])  # cut inside its first member
    summary = ingest(
        IngestConfig(sources=(("folder", archive),), build=tmp_path / "b", execution=ExecutionOptions(workers=1, progress=False))
    )
    [warning] = summary.warnings
    assert "damaged archive" in warning and "re-download" in warning
    assert "sources show" not in warning and "layout" not in warning
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    summary = ingest(
        IngestConfig(sources=(("folder:mine", tmp_path / "empty"),), build=tmp_path / "c", execution=ExecutionOptions(workers=1, progress=False))
    )
    [warning] = summary.warnings
    assert "sources show" not in warning
    assert (
        "check that the path holds infrared images" in warning
        and str(tmp_path / "c" / "catalog") in warning
    )


# ----------------------------------------------------------------------------- a zip without its index


def cut_inside_member(path: Path, index: int) -> Path:
    """Cut a zip 60 bytes into the data of its `index`-th member: the members before it are
    whole, the central directory is gone."""
    with zipfile.ZipFile(path) as archive:
        info = archive.infolist()[index]
    path.write_bytes(path.read_bytes()[: info.header_offset + 30 + len(info.filename) + 60])
    return path


class Unseekable(io.RawIOBase):
    """A write-only stream: zipfile then writes each member's sizes after its data (flag bit 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.buffer = io.BytesIO()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # noqa: ANN001 - bytes-like
        return self.buffer.write(data)


def streamed_zip(path: Path, members: dict[str, bytes]) -> Path:
    stream = Unseekable()
    with zipfile.ZipFile(stream, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    path.write_bytes(stream.buffer.getvalue())
    return path


@pytest.mark.parametrize(
    "written", ["sizes in the local headers", "sizes after the data (streamed)"]
)
def test_a_cut_zip_keeps_every_intact_member(tmp_path, written):
    """17 whole members before the cut: 17 kept, the cut one and the lost index get a row each."""
    make = write_zip if written.startswith("sizes in") else streamed_zip
    archive = cut_inside_member(make(tmp_path / "cut.zip", frames()), 17)
    run(tmp_path / "b", archive)
    catalogued = {r["relpath"]: r for r in rows(tmp_path / "b")}
    ok = sorted(name for name, r in catalogued.items() if r["status"] == cat.STATUS_OK)
    assert ok == [f"d/{i:03d}.png" for i in range(17)]
    assert catalogued["d/017.png"]["status"] == cat.STATUS_REJECTED
    assert catalogued["d/017.png"]["reason"].startswith("damaged archive member (cut off")
    index = catalogued[DAMAGED_INDEX]["reason"]
    assert "17 members read from their own headers, as zip -FF does" in index
    assert "cut inside member d/017.png" in index and "re-download" in index
    assert len(catalogued) == 19
    # the kept rows read back the member's bytes (through the rebuilt index)
    row = catalogued["d/016.png"]
    np.testing.assert_array_equal(
        load_stored_pixels(tmp_path / "b", row), thermal_frame(48, 64, seed=16)
    )


def test_a_zip_cut_just_before_its_index_keeps_every_member(tmp_path):
    archive = write_zip(tmp_path / "a.zip", frames())
    with zipfile.ZipFile(archive) as opened:
        last = opened.infolist()[-1]
    end = last.header_offset + 30 + len(last.filename) + last.compress_size
    archive.write_bytes(archive.read_bytes()[:end])
    run(tmp_path / "b", archive)
    catalogued = rows(tmp_path / "b")
    assert sum(r["status"] == cat.STATUS_OK for r in catalogued) == FRAMES
    [index] = [r for r in catalogued if r["status"] == cat.STATUS_REJECTED]
    assert (
        index["relpath"] == DAMAGED_INDEX
        and "the archive ends after member d/019.png" in index["reason"]
    )


def test_a_streamed_member_that_inflates_past_the_limit_is_not_inflated_further(
    tmp_path, monkeypatch
):
    """Finding the end of a member whose sizes follow its data means inflating it: bounded."""
    import inf590k.inputs.sources as sources
    import inf590k.inputs.zip_recovery as zip_recovery

    monkeypatch.setattr(zip_recovery, "RECOVERY_INFLATE_LIMIT", 1 << 20)
    members = {"d/000.png": frames()["d/000.png"], "d/big.png": bytes(3 << 20), "d/002.png": b"x"}
    archive = cut_inside_member(streamed_zip(tmp_path / "s.zip", members), 2)
    entries = {e.relpath: e.problem for e in sources.list_entries(archive)}
    assert entries["d/000.png"] == ""
    assert entries["d/big.png"].startswith("damaged archive member (it inflates past 1 MiB")
    assert "no end can be found for member d/big.png" in entries[DAMAGED_INDEX]
    assert "d/002.png" not in entries


def test_a_file_that_is_not_a_zip_gets_one_row(tmp_path):
    fake = tmp_path / "notes.zip"
    fake.write_bytes(b"these are notes, not an archive\n" * 10)
    [entry] = list_entries(fake)
    assert entry.relpath == DAMAGED_INDEX
    assert (
        "0 members read" in entry.problem
        and "unreadable data at offset 0 before its first member" in entry.problem
    )


def test_a_member_with_an_unsupported_compression_method_gets_a_row(tmp_path):
    archive = tmp_path / "m.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as opened:
        for name, data in list(frames().items())[:3]:
            opened.writestr(name, data)
        info = opened.infolist()[1]
    data = bytearray(archive.read_bytes())
    struct.pack_into("<H", data, info.header_offset + 8, 9)  # Deflate64: zipfile cannot read it
    for at in range(len(data) - 4):
        if (
            data[at : at + 4] == b"PK\x01\x02"
            and struct.unpack_from("<L", data, at + 42)[0] == info.header_offset
        ):
            struct.pack_into("<H", data, at + 10, 9)
    archive.write_bytes(bytes(data))
    run(tmp_path / "b", archive)
    catalogued = {r["relpath"]: r for r in rows(tmp_path / "b")}
    assert catalogued[info.filename]["status"] == cat.STATUS_REJECTED
    assert catalogued[info.filename]["reason"].startswith("unsupported archive member")
    assert sum(r["status"] == cat.STATUS_OK for r in catalogued.values()) == 2
