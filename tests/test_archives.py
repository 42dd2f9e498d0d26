"""Damaged and hostile archives: a row with the reason for what is damaged, every other member
catalogued, never a traceback; members over the size cap are rejected unread."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from cli import main
from inf590k import catalog as cat
from inf590k.imageio import ImagePolicy
from inf590k.ingest import IngestConfig, chunked, ingest, plan_source
from inf590k.manifest import folder_manifest
from inf590k.sources import DAMAGED_INDEX
from tests.test_imageio import encode, thermal_frame

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
    config = IngestConfig(
        sources=(("folder", root),),
        build=build,
        workers=1,
        progress=False,
        policy=ImagePolicy(**policy),
    )
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
    elif kind in ("truncated .zip", "truncated .tar.bz2"):  # nothing readable: one row
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
    assert [t.relpath for t in tasks] == list(shuffled)
    chunks = chunked(tasks, size=64, max_bytes=3 * len(members["d/000.png"]))
    assert max(len(c) for c in chunks) <= 3
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
    archive = cut_in_half(write_zip(tmp_path / "a.zip", frames()))
    summary = ingest(
        IngestConfig(sources=(("folder", archive),), build=tmp_path / "b", workers=1, progress=False)
    )
    [warning] = summary.warnings
    assert "damaged archive" in warning and "re-download" in warning
    assert "sources show" not in warning and "layout" not in warning
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    summary = ingest(
        IngestConfig(
            sources=(("folder:mine", tmp_path / "empty"),), build=tmp_path / "c", workers=1, progress=False
        )
    )
    [warning] = summary.warnings
    assert "sources show" not in warning
    assert "check that the path holds infrared images" in warning and str(tmp_path / "c" / "catalog") in warning
