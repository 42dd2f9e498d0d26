"""A zip whose central directory is gone or unreadable, read as `zip -FF` does: its members'
local headers one after another; an index is rebuilt in memory so that Python's zipfile still
reads every intact member, and the cut one is named.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

LOCAL_HEADER = struct.Struct(
    "<4s5H3L2H"
)  # signature, versions, flags, method, time, date, crc, sizes


CENTRAL_HEADER = struct.Struct("<4s4B4HL2L5H2L")


END_RECORD = struct.Struct("<4s4H2LH")


LOCAL_SIGNATURE = b"PK\x03\x04"


DESCRIPTOR_SIGNATURE = b"PK\x07\x08"


# what may follow the last member: the central directory, the end records, a signature block
INDEX_SIGNATURES = (
    b"PK\x01\x02",
    b"PK\x05\x06",
    b"PK\x06\x06",
    b"PK\x06\x07",
    b"PK\x05\x05",
    b"PK\x06\x08",
)


RECOVERY_INFLATE_LIMIT = 1 << 30  # a member whose sizes follow its data is inflated to find its end


@dataclass(frozen=True)
class LocalMember:
    """One member as its local header (and data descriptor) describe it."""

    raw_name: bytes
    flags: int
    method: int
    dos_time: int
    dos_date: int
    crc: int
    compressed: int
    size: int
    offset: int  # of its local header
    problem: str = ""  # non-empty: it cannot be read (cut off, bad CRC)

    @property
    def name(self) -> str:
        """The name as zipfile decodes it (UTF-8 when flag bit 11 says so, else cp437)."""
        return self.raw_name.decode("utf-8" if self.flags & 0x800 else "cp437", "surrogateescape")

    @property
    def stamp(self) -> int:
        """YYYYMMDDhhmmss, as listed for the members of an intact zip (ZipInfo.date_time)."""
        date, time = self.dos_date, self.dos_time
        parts = (
            (date >> 9) + 1980,
            (date >> 5) & 0xF,
            date & 0x1F,
            time >> 11,
            (time >> 5) & 0x3F,
            (time & 0x1F) * 2,
        )
        return int("".join(f"{part:02d}" for part in parts))


@dataclass(frozen=True)
class ZipRecovery:
    members: tuple[LocalMember, ...]
    lost: str  # what the scan could not reach, as a clause ('' when it met the index)
    index: bytes  # a central directory and end records for the readable members


def _zip64_field(extra: bytes) -> list[int] | None:
    """The 8-byte values of a zip64 extra field (id 1), None if there is none."""
    position = 0
    while position + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, position)
        if kind == 1:
            return list(
                struct.unpack_from(
                    f"<{min(length, len(extra) - position - 4) // 8}Q", extra, position + 4
                )
            )
        position += 4 + length
    return None


def _inflate_to_end(handle: BinaryIO, start: int) -> tuple[int, int, int] | str:
    """(compressed size, size, crc) of the deflate stream at `start`, decompressed in bounded
    pieces and thrown away; why not, if the file ends first or it inflates past the limit."""
    handle.seek(start)
    stream = zlib.decompressobj(-15)
    fed = size = crc = 0
    while not stream.eof:
        block = handle.read(1 << 20)
        if not block:
            return f"cut off: the archive ends {fed} bytes into it"
        fed += len(block)
        pending = block
        while pending and not stream.eof:
            out = stream.decompress(pending, 1 << 22)
            size, crc = size + len(out), zlib.crc32(out, crc)
            if size > RECOVERY_INFLATE_LIMIT:
                return f"it inflates past {RECOVERY_INFLATE_LIMIT >> 20} MiB, and its size is only in the lost index"
            pending = stream.unconsumed_tail
    return fed - len(stream.unused_data), size, crc


def _data_descriptor(
    handle: BinaryIO, end: int, compressed: int, wide: bool
) -> tuple[int, int] | None:
    """(crc, length) of the data descriptor at `end` (signature optional, sizes of 8 bytes
    in a zip64 member), None unless its compressed size is the one found by inflating."""
    handle.seek(end)
    tail = handle.read(24)
    signed = 4 if tail[:4] == DESCRIPTOR_SIGNATURE else 0
    width = 8 if wide else 4
    length = signed + 4 + 2 * width
    recorded = int.from_bytes(tail[signed + 4 : signed + 4 + width], "little")
    if len(tail) < length or recorded != compressed:
        return None
    return int.from_bytes(tail[signed : signed + 4], "little"), length


def _lost_after(members: list[LocalMember], what: str) -> str:
    where = f"after member {members[-1].name}" if members else "before its first member"
    return f"; {what} {where}: any members after it are lost"


def _local_header(
    handle: BinaryIO, offset: int, members: list[LocalMember]
) -> tuple[LocalMember, int, bool] | str:
    """(member, where its data starts, whether it is zip64) from the local header at
    `offset`; the clause saying why the scan stops there otherwise ('' at the index)."""
    handle.seek(offset)
    head = handle.read(LOCAL_HEADER.size)
    if head[:4] in INDEX_SIGNATURES:
        return ""
    if not head:
        return _lost_after(members, "the archive ends")
    if not (head.startswith(LOCAL_SIGNATURE) or LOCAL_SIGNATURE.startswith(head)):
        return _lost_after(members, f"unreadable data at offset {offset}")
    fields = LOCAL_HEADER.unpack(head) if len(head) == LOCAL_HEADER.size else None
    names = handle.read(fields[9] + fields[10]) if fields else b""
    if fields is None or len(names) < fields[9] + fields[10]:
        return _lost_after(members, f"it is cut inside a member header at offset {offset}")
    _, _, flags, method, dos_time, dos_date, crc, compressed, size, name_length, _ = fields
    zip64 = _zip64_field(names[name_length:])
    if zip64 and size == ZIP32_MAX:
        size = zip64.pop(0)
    if zip64 and compressed == ZIP32_MAX:
        compressed = zip64.pop(0)
    member = LocalMember(
        names[:name_length], flags, method, dos_time, dos_date, crc, compressed, size, offset
    )
    return member, offset + LOCAL_HEADER.size + len(names), zip64 is not None


def _delimit(
    handle: BinaryIO, member: LocalMember, start: int, wide: bool
) -> tuple[LocalMember, int | None]:
    """A member whose sizes follow its data (flag bit 3): its sizes and CRC found by inflating
    it, and the length of the data descriptor after it (None: its end cannot be found)."""
    if member.method != zipfile.ZIP_DEFLATED or member.flags & 0x1:
        why = f"its size is only in the lost index (compression method {member.method}, flags {member.flags:#x})"
        return replace(member, problem=f"damaged archive member ({why})"), None
    located = _inflate_to_end(handle, start)
    if isinstance(located, str):
        return replace(member, problem=f"damaged archive member ({located})"), None
    compressed, size, crc = located
    member = replace(member, compressed=compressed, size=size, crc=crc)
    descriptor = _data_descriptor(handle, start + compressed, compressed, wide)
    if descriptor is None:
        return member, 0
    recorded, length = descriptor
    return (
        replace(member, problem="damaged archive member (Bad CRC)") if recorded != crc else member
    ), length


def _scan_local_headers(handle: BinaryIO, size: int) -> tuple[list[LocalMember], str]:
    """Members from their local headers, from offset 0 on, and what the scan could not reach."""
    members: list[LocalMember] = []
    offset = 0
    while True:
        found = _local_header(handle, offset, members)
        if isinstance(found, str):
            return members, found
        member, start, wide = found
        descriptor = 0
        if member.flags & 0x8:
            member, descriptor = _delimit(handle, member, start, wide)
            if descriptor is None:
                members.append(member)
                what = (
                    "it is cut inside" if "cut off" in member.problem else "no end can be found for"
                )
                return members, f"; {what} member {member.name}: any members after it are lost"
        if start + member.compressed > size:
            cut = f"damaged archive member (cut off: {max(size - start, 0)} of {member.compressed} bytes)"
            members.append(replace(member, problem=cut))
            return (
                members,
                f"; it is cut inside member {member.name}: any members after it are lost",
            )
        members.append(member)
        offset = start + member.compressed + descriptor


def _rebuilt_index(members: list[LocalMember], start: int) -> bytes:
    """A central directory for the readable members and its end records (zip64 ones where a
    count, size or offset needs them), as if it stood at `start`, the end of the file."""
    records = []
    for member in members:
        values, large = [member.size, member.compressed, member.offset], []
        for index, value in enumerate(values):  # zip64 extra: only the fields that overflow
            if value >= ZIP32_MAX:
                large.append(value)
                values[index] = ZIP32_MAX
        extra = struct.pack(f"<HH{len(large)}Q", 1, 8 * len(large), *large) if large else b""
        header = CENTRAL_HEADER.pack(
            b"PK\x01\x02",
            45,
            3,
            45 if large else 20,
            0,
            member.flags,
            member.method,
            member.dos_time,
            member.dos_date,
            member.crc,
            values[1],
            values[0],
            len(member.raw_name),
            len(extra),
            0,
            0,
            0,
            0,
            values[2],
        )
        records.append(header + member.raw_name + extra)
    directory = b"".join(records)
    count, length = len(records), len(directory)
    tail = b""
    if count >= 0xFFFF or length >= ZIP32_MAX or start >= ZIP32_MAX:
        tail = ZIP64_END_RECORD.pack(b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, length, start)
        tail += ZIP64_LOCATOR.pack(b"PK\x06\x07", 0, start + length, 1)
    short = min(count, 0xFFFF)
    end = END_RECORD.pack(
        b"PK\x05\x06", 0, 0, short, short, min(length, ZIP32_MAX), min(start, ZIP32_MAX), 0
    )
    return directory + tail + end


@functools.lru_cache(maxsize=4)
def _recover(path: str, size: int, mtime_ns: int) -> ZipRecovery:
    with open(path, "rb") as handle:
        members, lost = _scan_local_headers(handle, size)
    readable = [m for m in members if not m.problem]
    return ZipRecovery(tuple(members), lost, _rebuilt_index(readable, size))


def recover_zip(root: Path) -> ZipRecovery:
    """The members of a zip whose index cannot be read, from their local headers (once per
    process and version of the file: every reader of the archive needs the rebuilt index)."""
    info = root.stat()
    return _recover(str(root), info.st_size, info.st_mtime_ns)


class _WithIndex(io.RawIOBase):
    """A zip whose index is gone, read-only, with a rebuilt index appended after its bytes."""

    def __init__(self, path: Path, index: bytes) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 - closed with this object
        self._size = os.fstat(self._file.fileno()).st_size
        self._index = index
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {
            io.SEEK_SET: 0,
            io.SEEK_CUR: self._position,
            io.SEEK_END: self._size + len(self._index),
        }[whence]
        self._position = max(base + offset, 0)
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer) -> int:  # noqa: ANN001 - a writable buffer
        view = memoryview(buffer).cast("B")
        if self._position < self._size:
            self._file.seek(self._position)
            count = self._file.readinto(view[: self._size - self._position])
        else:
            start = self._position - self._size
            chunk = self._index[start : start + len(view)]
            view[: len(chunk)] = chunk
            count = len(chunk)
        self._position += count
        return count

    def close(self) -> None:
        self._file.close()
        super().close()


def open_zip(root: Path) -> zipfile.ZipFile:
    """The archive's ZipFile; for one whose index cannot be read, one over its rebuilt index."""
    try:
        return zipfile.ZipFile(root)
    except zipfile.BadZipFile:
        return zipfile.ZipFile(_WithIndex(root, recover_zip(root).index))


ZIP64_END_RECORD = struct.Struct("<4sQ2H2L4Q")


ZIP64_LOCATOR = struct.Struct("<4sLQL")


ZIP32_MAX = 0xFFFFFFFF
