"""The loader's tar reader: every tar flavour tarfile writes, wanted members only, damage found."""

from __future__ import annotations

import functools
import gzip
import io
import shutil
import subprocess
import tarfile
import tracemalloc

import numpy as np
import pytest

from pretrain.data.tarstream import BLOCK, TarFormatError, tar_members

BIG = 1 << 30  # no member of these tests comes near it
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
        got = list(tar_members(stream, lambda name: name.endswith(".png"), max_size=BIG))
        assert got == wanted  # the symlink named .png and the folder are not regular files
    assert list(tar_members(io.BytesIO(data), lambda name: True, max_size=BIG)) == members


def test_pax_size_and_path_records_apply_to_the_next_member():
    big_name = "ü" * 120 + ".png"  # non-ASCII and long: tarfile writes a pax header
    data = build_tar([(big_name, b"x" * 10), ("b.png", b"y")], tarfile.PAX_FORMAT, extras=False)
    assert list(tar_members(io.BytesIO(data), lambda n: True, max_size=BIG)) == [
        (big_name, b"x" * 10),
        ("b.png", b"y"),
    ]


def test_cut_short_anywhere_is_an_error_not_a_clean_end():
    data = build_tar(MEMBERS, tarfile.GNU_FORMAT)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        infos = tar.getmembers()
    cuts = [m.offset + 100 for m in infos] + [m.offset_data + 1 for m in infos if m.size > 1]
    for cut in cuts:  # inside every header, inside every payload
        with pytest.raises(TarFormatError, match="cut short"):
            list(tar_members(io.BytesIO(data[:cut]), lambda n: True, max_size=BIG))
    # cut exactly at a member boundary: no end-of-archive block
    single = build_tar(MEMBERS[:2], tarfile.GNU_FORMAT, extras=False)
    first_member_end = 512 + 1024  # header + 1004 bytes padded to 1024
    with pytest.raises(TarFormatError, match="end-of-archive"):
        list(tar_members(io.BytesIO(single[:first_member_end]), lambda n: True, max_size=BIG))


def test_junk_after_the_data_is_a_damaged_header():
    data = build_tar(MEMBERS[:2], tarfile.GNU_FORMAT, extras=False)
    first_member_end = 512 + 1024
    junk = data[:first_member_end] + b"\x37" * 4096
    got = []
    with pytest.raises(TarFormatError, match="checksum"):
        for member in tar_members(io.BytesIO(junk), lambda n: True, max_size=BIG):
            got.append(member)
    assert got == MEMBERS[:1]  # what came before the damage was read


def test_bzip2_and_xz_shards_read_like_gzip_ones():
    import bz2
    import lzma

    data = build_tar(MEMBERS, tarfile.PAX_FORMAT)
    expected = list(tar_members(io.BytesIO(data), lambda n: True, max_size=BIG))
    for packed in (bz2.compress(data), lzma.compress(data)):
        assert list(tar_members(io.BytesIO(packed), lambda n: True, max_size=BIG)) == expected
        assert list(tar_members(PipeOnly(packed), lambda n: True, max_size=BIG)) == expected


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
            list(tar_members(io.BytesIO(bytes(damaged)), lambda n: True, max_size=BIG))


def test_a_lone_zero_block_before_more_data_is_an_error():
    first = build_tar(MEMBERS[:1], tarfile.GNU_FORMAT, extras=False)
    second = build_tar(MEMBERS[2:3], tarfile.GNU_FORMAT, extras=False)
    lone_zero = first[: 512 + 1024] + bytes(512) + second  # one zero block, then a tar
    with pytest.raises(TarFormatError, match="lone zero block"):
        list(tar_members(io.BytesIO(lone_zero), lambda n: True, max_size=BIG))
    concatenated = first + second  # `cat a.tar b.tar`: tarfile would read a.tar only
    assert list(tar_members(io.BytesIO(concatenated), lambda n: True, max_size=BIG)) == MEMBERS[:1]


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
        list(tar_members(io.BytesIO(archive.read_bytes()), lambda n: True, max_size=BIG))


# ---------------------------------------------------------------- hostile shards


def with_checksum(header: bytes | bytearray) -> bytes:
    """A 512-byte header with its checksum recomputed (a lie that passes the checksum)."""
    block = bytearray(header)
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def lying_header(name: str, size_field: bytes, kind: bytes = b"0") -> bytes:
    """A ustar header whose 12-byte size field holds `size_field` as it is."""
    info = tarfile.TarInfo(name)
    header = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    header[124:136] = size_field.ljust(12, b"\0")
    header[156:157] = kind
    return with_checksum(header)


class Generated(io.RawIOBase):
    """A non-seekable stream of `head`, then `filler` zero bytes made on the fly (never held),
    then `tail`: a huge shard served over HTTP without a huge test fixture."""

    def __init__(self, head: bytes, filler: int, tail: bytes = b"") -> None:
        super().__init__()
        self._parts = [memoryview(head), filler, memoryview(tail)]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._parts:
            part = self._parts[0]
            if isinstance(part, int):
                count = min(len(buffer), part)
                buffer[:count] = bytes(count)
                self._parts[0] = part - count
            else:
                count = min(len(buffer), len(part))
                buffer[:count] = part[:count]
                self._parts[0] = part[count:]
            if count:
                return count
            self._parts.pop(0)
        return 0


def peak_bytes(run) -> int:
    """Peak Python allocations while `run()` runs (tracemalloc sees every bytes object)."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def one_png_tar() -> bytes:
    return build_tar([("s0001.png", b"\x89PNG" + bytes(100))], tarfile.USTAR_FORMAT, extras=False)


def test_an_unused_huge_member_is_skipped_in_bounded_memory():
    """A 200 MiB `.json` member on a stream that cannot seek (HTTP) is read and dropped a block
    at a time: the reader never holds it (it held all of it before)."""
    size = 200 << 20
    head = lying_header("s0000.json", b"%011o\0" % size)
    stream = Generated(head, size, one_png_tar())
    got: list = []

    def read() -> None:
        got.extend(
            tar_members(io.BufferedReader(stream), lambda n: n.endswith(".png"), max_size=BIG)
        )

    assert peak_bytes(read) < 8 << 20
    assert [name for name, _ in got] == ["s0001.png"]


@pytest.mark.parametrize(
    "size_field, reason",
    [
        (b"-1", "size field b'-1' is not a number"),  # int(b"-1", 8) == -1: read to EOF before
        (b"\xff" * 12, "negative size -1"),  # GNU base-256 -1
        (b"\x80" + b"\xff" * 11, "claims"),  # base-256 2^88 - 1: OverflowError before
        (b"0x10", "is not a number"),
        (b"7777777777\x007", "claims"),  # 1 GiB: over the limit of a wanted member
    ],
)
def test_lying_sizes_are_a_reader_error_not_an_allocation(size_field, reason):
    data = lying_header("s0000.png", size_field) + bytes(4096)
    for stream in (io.BytesIO(data), Generated(data, 0)):
        with pytest.raises(TarFormatError, match=reason):
            list(tar_members(io.BufferedReader(stream) if isinstance(stream, Generated) else stream,
                             lambda n: True, max_size=1 << 20))  # fmt: skip


def test_a_wanted_member_over_the_limit_is_refused_before_it_is_read():
    size = 300 << 20  # claimed; the stream holds only a few bytes of it
    data = lying_header("s0000.png", b"%011o\0" % size) + bytes(1000)

    def read() -> None:
        with pytest.raises(
            TarFormatError, match=r"member 's0000.png' at byte 0 claims 314,572,800"
        ):
            list(tar_members(Generated(data, 0), lambda n: True, max_size=50 << 20))

    assert peak_bytes(read) < 4 << 20


def test_a_skipped_member_running_past_a_local_file_names_it(tmp_path):
    path = tmp_path / "cut.tar"
    path.write_bytes(
        lying_header("s0000.json", b"\x80" + bytes(6) + b"\x01" + bytes(4)) + bytes(512)
    )
    with open(path, "rb") as handle, pytest.raises(TarFormatError, match=r"s0000.json.*claims"):
        list(tar_members(handle, lambda n: n.endswith(".png"), max_size=BIG))


def test_headers_tarfile_stops_at_are_errors_here():
    """tarfile ends an archive quietly at a header whose mtime or mode is not a number (it
    would lose the rest of the shard); this reader names the field."""
    data = bytearray(build_tar(MEMBERS[:3], tarfile.USTAR_FORMAT, extras=False))
    second = 512 + 1024  # the header after the first member
    data[second + 136 : second + 148] = b"not a date\0\0"
    data[second : second + 512] = with_checksum(data[second : second + 512])
    with pytest.raises(TarFormatError, match=r"byte 1536 \(its mtime field"):
        list(tar_members(io.BytesIO(bytes(data)), lambda n: True, max_size=BIG))


def test_links_and_folders_carry_no_data_whatever_their_size_says():
    """tarfile reads no data after a symlink or folder header even if its size field is not
    zero: the next header follows at once. Reading the size as data would misalign the tar."""
    data = bytearray(build_tar(MEMBERS[:2], tarfile.USTAR_FORMAT))
    folder = 0  # build_tar puts the folder first, then the symlink
    data[folder + 124 : folder + 136] = b"%011o\0" % 4096
    data[folder : folder + 512] = with_checksum(data[folder : folder + 512])
    got = list(tar_members(io.BytesIO(bytes(data)), lambda n: True, max_size=BIG))
    assert got == MEMBERS[:2] == tarfile_members(bytes(data))


def tar_with_global_header(records: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, pax_headers=records
    ) as tar:
        info = tarfile.TarInfo(MEMBERS[0][0])
        info.size = len(MEMBERS[0][1])
        tar.addfile(info, io.BytesIO(MEMBERS[0][1]))
    return buffer.getvalue()


def test_global_pax_headers_naming_every_member_are_refused():
    commented = tar_with_global_header({"comment": "git archive writes one of these"})
    assert list(tar_members(io.BytesIO(commented), lambda n: True, max_size=BIG)) == MEMBERS[:1]
    renaming = tar_with_global_header({"path": "one/name/for/every/member.png"})
    assert tarfile_members(renaming)[0][0] == "one/name/for/every/member.png"  # tarfile's guess
    with pytest.raises(TarFormatError, match="global pax header at byte 0 sets 'path'"):
        list(tar_members(io.BytesIO(renaming), lambda n: True, max_size=BIG))


def test_an_extended_header_without_a_member_after_it_is_an_error():
    data = build_tar([("é.png", b"abc")], tarfile.PAX_FORMAT, extras=False)
    pax_only = data[:1024] + bytes(1024)  # the pax header, then the end of the archive
    with pytest.raises(TarFormatError, match="extended header at byte 0 has no member"):
        list(tar_members(io.BytesIO(pax_only), lambda n: True, max_size=BIG))


def with_xz_dictionary(packed: bytes, code: int) -> bytes:
    """An xz stream whose (first) block header asks for another LZMA2 dictionary size; its
    CRC fixed. Compressing with a real 1.5 GiB dictionary would take the test's memory."""
    import zlib

    header_size = (packed[12] + 1) * 4  # the block header follows the 12-byte stream header
    header = bytearray(packed[12 : 12 + header_size])
    lzma2 = header.index(b"\x21\x01")  # filter id LZMA2, 1 byte of properties
    header[lzma2 + 2] = code  # dictionary size (2 | code & 1) << (code // 2 + 11)
    header[-4:] = zlib.crc32(bytes(header[:-4])).to_bytes(4, "little")
    return packed[:12] + bytes(header) + packed[12 + header_size :]


@functools.cache
def damaged_compressed_shards() -> dict[str, bytes]:
    import bz2
    import lzma

    data = build_tar(MEMBERS, tarfile.GNU_FORMAT)
    gz, bz, xz = gzip.compress(data, mtime=0), bz2.compress(data), lzma.compress(data)
    flipped = bytearray(gz)
    flipped[len(gz) // 2] ^= 0x10
    return {
        "gzip cut": gz[: len(gz) // 2],  # EOFError before
        "gzip bit flip": bytes(flipped),  # zlib.error / BadGzipFile before
        "gzip bad header": gz[:3] + b"\xff" + gz[4:],
        "bzip2 cut": bz[: len(bz) // 2],
        "bzip2 damaged": bz[:20] + bytes(50) + bz[70:],  # OSError before
        "xz cut": xz[: len(xz) // 2],
        "xz damaged": xz[:40] + bytes(30) + xz[70:],  # LZMAError before
        "xz asking for a 1.5 GiB dictionary": with_xz_dictionary(xz, 37),
    }


@pytest.mark.parametrize("case", list(damaged_compressed_shards()))
def test_damaged_compressed_shards_end_in_the_readers_error(case):
    data = damaged_compressed_shards()[case]
    for stream in (io.BytesIO(data), PipeOnly(data)):
        with pytest.raises(TarFormatError) as info:
            list(tar_members(stream, lambda n: True, max_size=BIG))
        message = str(info.value)
        assert "\n" not in message and any(kind in message for kind in ("gzip", "bzip2", "xz"))


class FailingAfter(io.RawIOBase):
    """The first `count` bytes of `data`, then the network fails."""

    def __init__(self, data: bytes, count: int, error: Exception) -> None:
        super().__init__()
        self._data, self._left, self._error = io.BytesIO(data), count, error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._left <= 0:
            raise self._error
        chunk = self._data.read(min(len(buffer), self._left))
        self._left -= len(chunk)
        buffer[: len(chunk)] = chunk
        return len(chunk)


@pytest.mark.parametrize("error", [TimeoutError("read deadline"), ConnectionResetError("reset")])
def test_errors_of_the_stream_underneath_are_not_taken_for_damage(error):
    packed = gzip.compress(build_tar(MEMBERS, tarfile.GNU_FORMAT) + bytes(200_000), mtime=0)
    stream = io.BufferedReader(FailingAfter(packed, len(packed) // 2, error))
    with pytest.raises(type(error)):
        list(tar_members(stream, lambda n: True, max_size=BIG))


# ---------------------------------------------------------------- fuzzing against tarfile

HEADER_FIELDS = [(0, 100), (100, 8), (108, 8), (116, 8), (124, 12), (136, 12), (156, 1),
                 (157, 100), (257, 6), (329, 8), (337, 8), (345, 155)]  # fmt: skip


def fuzz_base(rng: np.random.Generator, fmt: int) -> bytes:
    names = ["s0.png", "s0.json", "dir/s1.png", "ü" * 60 + ".png", "deep/" * 25 + "x.cls", "e.png"]
    members = []
    for name in names:
        if fmt == tarfile.USTAR_FORMAT and name.startswith("ü"):
            continue
        size = int(rng.choice([0, 1, 100, 511, 512, 513, 1500]))
        members.append((name, rng.integers(0, 256, size, dtype=np.uint8).tobytes()))
    return build_tar(members, fmt)


def header_offsets(data: bytes) -> list[int]:
    """Every block that passes as a header (member, pax and long-name headers)."""
    found = []
    for offset in range(0, len(data) - BLOCK + 1, BLOCK):
        block = data[offset : offset + BLOCK]
        try:
            if any(block) and tarfile.nti(block[148:156]) in tarfile.calc_chksums(block):
                found.append(offset)
        except tarfile.HeaderError:
            pass
    return found


def lie_in_a_field(rng: np.random.Generator, data: bytes) -> bytes:
    """A header field set to a hostile value, its checksum fixed so only the lie is wrong."""
    offsets = header_offsets(data)
    if not offsets:
        return data
    offset = int(rng.choice(offsets))
    start, length = HEADER_FIELDS[int(rng.integers(0, len(HEADER_FIELDS)))]
    if length == 1:  # the type flag
        value = bytes([int(rng.choice(list(b"0125 7xXgLKSVM\0\xff")))])
    else:
        value = [
            b"%0*o\0" % (length - 1, int(rng.integers(0, 8 ** min(length - 1, 11)))),
            b"%0*o\0" % (length - 1, int(rng.integers(0, 2000))),  # a size off by a little
            b"-1", b"\xff" * length, b"\x80" + bytes(length - 2) + b"\x07", b" 12 ", b"abc/",
            rng.integers(0, 256, length, dtype=np.uint8).tobytes(),
        ][int(rng.integers(0, 8))]  # fmt: skip
    block = bytearray(data[offset : offset + BLOCK])
    block[start : start + length] = value[:length].ljust(length, b"\0")
    return data[:offset] + with_checksum(block) + data[offset + BLOCK :]


def mutate_tar(rng: np.random.Generator, data: bytes) -> bytes:
    kind = int(rng.integers(0, 6))
    damaged = bytearray(data)
    if kind == 0:  # bit flips anywhere
        for _ in range(int(rng.integers(1, 4))):
            damaged[int(rng.integers(0, len(damaged)))] ^= 1 << int(rng.integers(0, 8))
        return bytes(damaged)
    if kind == 1:  # cut anywhere
        return data[: int(rng.integers(0, len(data)))]
    if kind == 4:  # a block doubled or dropped
        block = int(rng.integers(0, len(data) // BLOCK)) * BLOCK
        if rng.integers(0, 2):
            damaged[block:block] = data[block : block + BLOCK]
        else:
            del damaged[block : block + BLOCK]
        return bytes(damaged)
    if kind == 5:  # a pax record's length or separator damaged (nothing checksums them)
        record = data.find(b" path=")
        if record < 0:
            return lie_in_a_field(rng, data)
        damaged[record - int(rng.integers(0, 4))] = int(rng.choice(list(b"0123456789 =\n\0x")))
        return bytes(damaged)
    return lie_in_a_field(rng, data)


def compress(rng: np.random.Generator, data: bytes) -> tuple[bytes, str]:
    import bz2
    import lzma

    which = int(rng.integers(0, 6))
    if which == 0:
        return gzip.compress(data, mtime=0), "r|gz"
    if which == 1:
        return bz2.compress(data), "r|bz2"
    if which == 2:
        return lzma.compress(data), "r|xz"
    return data, "r|"


def tarfile_members(data: bytes, mode: str = "r|") -> list[tuple[str, bytes]]:
    members = []
    with tarfile.open(fileobj=io.BytesIO(data), mode=mode) as tar:
        for info in tar:
            if info.isreg():
                members.append((info.name, tar.extractfile(info).read()))
    return members


def reference(data: bytes, mode: str) -> tuple[list[tuple[str, bytes]], bool]:
    """What tarfile's stream mode (webdataset's reader) yields, and whether it read to the end."""
    members: list[tuple[str, bytes]] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode=mode) as tar:
            for info in tar:
                if info.isreg():
                    members.append((info.name, tar.extractfile(info).read()))
    except Exception:  # noqa: BLE001 - any failure of the reference counts as one
        return members, False
    return members, True


def fuzz_tars(seed: int, count: int) -> dict[str, int]:
    """Every mutated tar either yields what tarfile yields, or fails with TarFormatError after
    yielding only members tarfile yields too (in order), whatever the stream type."""
    rng = np.random.default_rng(seed)
    outcomes = {"read": 0, "refused": 0}
    formats = (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT)
    for case in range(count):
        base = fuzz_base(rng, formats[case % 3])
        if rng.integers(0, 4):
            data, mode = compress(rng, mutate_tar(rng, base))
        else:  # the compressed stream itself damaged
            data, mode = compress(rng, base)
            data = mutate_tar(rng, data) if mode != "r|" else data
        expected, complete = reference(data, mode)
        for stream in (io.BytesIO(data), PipeOnly(data)):
            got: list[tuple[str, bytes]] = []
            try:
                got.extend(tar_members(stream, lambda n: True, max_size=BIG))
            except TarFormatError as exc:
                assert "\n" not in str(exc)
                assert got == expected[: len(got)], (seed, case, str(exc))
                outcomes["refused"] += 1
                continue
            assert complete and got == expected, (seed, case)
            outcomes["read"] += 1
    return outcomes


def test_fuzzed_tars_read_as_tarfile_reads_them_or_fail_with_the_readers_error():
    outcomes = fuzz_tars(seed=0, count=300)
    assert outcomes["read"] > 100 and outcomes["refused"] > 100  # both sides exercised


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fuzzed_tars_many(seed):
    fuzz_tars(seed=seed, count=3000)
