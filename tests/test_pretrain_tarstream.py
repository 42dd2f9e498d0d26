"""The loader's tar reader: every tar flavour tarfile writes, wanted members only, damage found."""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
import tarfile

import pytest

from pretrain.tarstream import TarFormatError, tar_members

LONG = "deep/" * 30 + "frame_with_a_name_longer_than_a_ustar_field.png"


def build_tar(members: list[tuple[str, bytes]], fmt: int, extras: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        if extras:
            folder = tarfile.TarInfo("a_folder")
            folder.type = tarfile.DIRTYPE
            tar.addfile(folder)
            link = tarfile.TarInfo("a_link.png")
            link.type, link.linkname = tarfile.SYMTYPE, "x.png"
            tar.addfile(link)
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


MEMBERS = [
    ("s0001.png", b"\x89PNG" + bytes(1000)),
    ("s0001.json", b'{"uid": "s0001"}'),
    ("s0002.png", b"P" * 512),  # exactly one block: no padding
    ("s0002.cls", b"3"),
    ("s0003.png", b""),  # empty member
    (LONG, b"long name payload"),
    ("dir/sub/s0004.png", bytes(range(256)) * 7),
]


class PipeOnly:
    """A stream with read() only: no peek, no seek (an HTTP body, a pipe)."""

    def __init__(self, data: bytes) -> None:
        self._buffer = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._buffer.read(min(size, 700) if size > 0 else size)  # short reads too


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_reads_what_tarfile_wrote_in_every_format(fmt):
    members = MEMBERS if fmt != tarfile.USTAR_FORMAT else [m for m in MEMBERS if m[0] != LONG]
    data = build_tar(members, fmt)
    wanted = [(n, p) for n, p in members if n.endswith(".png")]
    for stream in (io.BytesIO(data), PipeOnly(data), io.BytesIO(gzip.compress(data))):
        got = list(tar_members(stream, lambda name: name.endswith(".png")))
        assert got == wanted  # the symlink named .png and the folder are not regular files
    assert list(tar_members(io.BytesIO(data), lambda name: True)) == members


def test_pax_size_and_path_records_apply_to_the_next_member():
    big_name = "ü" * 120 + ".png"  # non-ASCII and long: tarfile writes a pax header
    data = build_tar([(big_name, b"x" * 10), ("b.png", b"y")], tarfile.PAX_FORMAT, extras=False)
    assert list(tar_members(io.BytesIO(data), lambda n: True)) == [(big_name, b"x" * 10), ("b.png", b"y")]


def test_cut_short_anywhere_is_an_error_not_a_clean_end():
    data = build_tar(MEMBERS, tarfile.GNU_FORMAT)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        infos = tar.getmembers()
    cuts = [m.offset + 100 for m in infos] + [m.offset_data + 1 for m in infos if m.size > 1]
    for cut in cuts:  # inside every header, inside every payload
        with pytest.raises(TarFormatError, match="cut short"):
            list(tar_members(io.BytesIO(data[:cut]), lambda n: True))
    # cut exactly at a member boundary: no end-of-archive block
    single = build_tar(MEMBERS[:2], tarfile.GNU_FORMAT, extras=False)
    first_member_end = 512 + 1024  # header + 1004 bytes padded to 1024
    with pytest.raises(TarFormatError, match="end-of-archive"):
        list(tar_members(io.BytesIO(single[:first_member_end]), lambda n: True))


def test_junk_after_the_data_is_a_damaged_header():
    data = build_tar(MEMBERS[:2], tarfile.GNU_FORMAT, extras=False)
    first_member_end = 512 + 1024
    junk = data[:first_member_end] + b"\x37" * 4096
    got = []
    with pytest.raises(TarFormatError, match="checksum"):
        for member in tar_members(io.BytesIO(junk), lambda n: True):
            got.append(member)
    assert got == MEMBERS[:1]  # what came before the damage was read


def test_bzip2_and_xz_shards_read_like_gzip_ones():
    import bz2
    import lzma

    data = build_tar(MEMBERS, tarfile.PAX_FORMAT)
    expected = list(tar_members(io.BytesIO(data), lambda n: True))
    for packed in (bz2.compress(data), lzma.compress(data)):
        assert list(tar_members(io.BytesIO(packed), lambda n: True)) == expected
        assert list(tar_members(PipeOnly(packed), lambda n: True)) == expected


def test_a_damaged_pax_record_is_an_error_not_a_hang():
    data = bytearray(build_tar([("é" * 3 + ".png", b"abc")], tarfile.PAX_FORMAT, extras=False))
    path = data.index(b" path=")
    digits = path
    while data[digits - 1 : digits].isdigit():
        digits -= 1
    for length in (b"0", b"9", b"x"):  # zero (would loop), too short, not a number
        damaged = bytearray(data)
        damaged[digits:path] = length.rjust(path - digits, b"0")
        with pytest.raises(TarFormatError, match="pax"):
            list(tar_members(io.BytesIO(bytes(damaged)), lambda n: True))


def test_a_lone_zero_block_before_more_data_is_an_error():
    first = build_tar(MEMBERS[:1], tarfile.GNU_FORMAT, extras=False)
    second = build_tar(MEMBERS[2:3], tarfile.GNU_FORMAT, extras=False)
    lone_zero = first[: 512 + 1024] + bytes(512) + second  # one zero block, then a tar
    with pytest.raises(TarFormatError, match="lone zero block"):
        list(tar_members(io.BytesIO(lone_zero), lambda n: True))
    concatenated = first + second  # `cat a.tar b.tar`: tarfile would read a.tar only
    assert list(tar_members(io.BytesIO(concatenated), lambda n: True)) == MEMBERS[:1]


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")
@pytest.mark.parametrize(
    "options",
    [["--format=gnu", "--sparse"], ["--format=posix", "--sparse", "--sparse-version=1.0"],
     ["--format=posix", "--sparse", "--sparse-version=0.1"]],
)  # fmt: skip
def test_sparse_members_are_refused_not_misread(tmp_path, options):
    folder = tmp_path / "in"
    folder.mkdir()
    with open(folder / "hole.png", "wb") as handle:
        handle.seek(2_000_000)
        handle.write(b"end")
    archive = tmp_path / "sparse.tar"
    subprocess.run(["tar", "cf", str(archive), *options, "-C", str(folder), "hole.png"], check=True)
    with pytest.raises(TarFormatError, match="sparse"):
        list(tar_members(io.BytesIO(archive.read_bytes()), lambda n: True))
