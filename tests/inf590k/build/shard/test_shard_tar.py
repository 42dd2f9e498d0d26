"""The shards' tar bytes: headers built directly are the ones tarfile writes, and read back."""

from __future__ import annotations

import io
import tarfile

import pytest

from inf590k.build.shard.tar import FIXED_MTIME, _tar_member, add_sample, tar_end, tar_header

NAMES = ["a.png", "folder-sirst_00012-4cb62656.json", "x" * 100, "x" * 101, "é.cls", ""]
SIZES = [0, 1, 511, 512, 10**6, 8**11 - 1, 8**11]


@pytest.mark.parametrize("name", NAMES)
def test_tar_header_is_what_tarfile_writes(name) -> None:
    for size in SIZES:
        theirs = _tar_member(name, size).tobuf(
            tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"
        )
        if theirs[-512:][329:345] != b"\0" * 16:  # older tarfile: device numbers "0000000"
            pytest.skip("this Python's tarfile fills the device fields of regular files")
        assert tar_header(name, size) == theirs, (name, size)


def test_sample_members_read_back_with_tarfile() -> None:
    buffer = io.BytesIO()
    add_sample(buffer, "uid-1", 3, b'{"a":1}', b"png bytes", b"npy")
    buffer.write(tar_end(buffer.tell()))
    assert buffer.tell() % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(buffer.getvalue())) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["uid-1.cls", "uid-1.json", "uid-1.npy", "uid-1.png"]
        assert {(m.mode, m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {
            (0o644, FIXED_MTIME, 0, 0, "", "")
        }
        assert tar.extractfile(members[0]).read() == b"3"
        assert tar.extractfile(members[-1]).read() == b"png bytes"
