"""Read a source root in place: a folder, a .zip, or a .tar / .tar.gz / .tgz / .tar.bz2 / .tar.xz.

Archives are never extracted: members are read as bytes. Every entry found gets a
`SourceEntry`, including the ones that cannot be read (their `problem` says why), so the
catalog accounts for every file.
"""

from __future__ import annotations

import errno
import functools
import io
import lzma
import os
import posixpath
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from inf590k.fsutil import plural

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# What the standard library raises on a damaged archive (cut short, bad CRC, corrupt stream).
ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,
)
DAMAGED_INDEX = "[archive index]"  # relpath of the row that stands for an unreadable archive part


class DamagedMember(OSError):
    """An archive member that cannot be read back (bad CRC, cut off); the message is the reason."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "damaged archive member"


def damage_reason(err: BaseException) -> str:
    """One line for the catalog (tarfile's open error lists every method it tried)."""
    text = " ".join(str(err).split()) or type(err).__name__
    if "could not be opened successfully" in text:
        return "it cannot be opened: cut short, or not a tar archive"
    return text[:200]


@dataclass(frozen=True)
class SourceEntry:
    relpath: str  # posix path inside the root or archive
    size: int
    problem: str = ""  # non-empty: the entry cannot be read, and why
    mtime: int = 0  # modification time (ns for folders, s for archive members): resume checks
    occurrence: int = 0  # > 0: a later archive member with the same name (its own row)
    order: int = 0  # position in the archive (tar members are read in this order)
    offset: int = -1  # where the data starts in an uncompressed tar (read in place), else -1


def root_kind(root: Path) -> str:
    """'folder', 'zip' or 'tar'; raises FileNotFoundError / ValueError with what to do."""
    root = Path(root)
    if root.is_dir():
        return "folder"
    if not root.exists():
        raise FileNotFoundError(f"source path {root} does not exist: pass a folder or an archive")
    if not stat.S_ISREG(root.stat().st_mode):  # a FIFO or a device would block or never end
        raise ValueError(
            f"source path {root} is not a regular file or folder: pass a folder or an archive"
        )
    name = root.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    raise ValueError(f"{root} is neither a folder nor a .zip/.tar(.gz/.bz2/.xz) archive")


def unsafe_member_path(name: str) -> str:
    """Why an archive member name must not be used ('' when it is safe)."""
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "unsafe archive member: absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "unsafe archive member: '..' in path"
    return ""


def _walk_folder(root: Path) -> Iterator[SourceEntry]:
    def on_error(err: OSError) -> None:  # an unreadable folder still gets a row
        rel = os.path.relpath(err.filename, root).replace(os.sep, "/")
        if rel != ".":
            pending.append(SourceEntry(rel, 0, f"unreadable folder ({err.strerror})"))

    pending: list[SourceEntry] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        yield from pending
        pending.clear()
        for dirname in list(dirnames):
            full = os.path.join(dirpath, dirname)
            if os.path.islink(full):
                dirnames.remove(dirname)  # a linked folder could loop; give it a row instead
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                yield SourceEntry(rel, 0, "symbolic link to a folder (not followed)")
        for filename in filenames:
            full = os.path.join(dirpath, filename)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            yield _folder_entry(full, rel)
    yield from pending


def _folder_entry(full: str, rel: str) -> SourceEntry:
    try:
        info = os.stat(full)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return SourceEntry(rel, 0, "symbolic link loop")
        if os.path.islink(full):
            return SourceEntry(rel, 0, "broken symbolic link")
        return SourceEntry(rel, 0, f"unreadable ({err.strerror})")
    if not stat.S_ISREG(info.st_mode):
        return SourceEntry(rel, 0, "not a regular file")
    if not os.access(full, os.R_OK):
        return SourceEntry(rel, info.st_size, "unreadable (permission denied)", info.st_mtime_ns)
    return SourceEntry(rel, info.st_size, mtime=info.st_mtime_ns)


def _list_zip(root: Path) -> Iterator[SourceEntry]:
    try:
        archive = zipfile.ZipFile(root)
    except ARCHIVE_ERRORS as err:  # cut before its central directory, or not a zip at all
        try:
            yield from _list_recovered_zip(root, damage_reason(err))
        except OSError as unreadable:
            problem = f"damaged archive: the zip cannot be read ({damage_reason(unreadable)}); re-download it"
            yield SourceEntry(DAMAGED_INDEX, 0, problem)
        return
    with archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            problem = unsafe_member_path(info.filename)
            if not problem and info.flag_bits & 0x1:
                problem = "encrypted archive member"
            stamp = int("".join(f"{part:02d}" for part in info.date_time))
            # Zips made on Windows may use backslashes: match manifests on the posix form.
            yield SourceEntry(info.filename.replace("\\", "/"), info.file_size, problem, stamp)


def _tar_member_problem(member: tarfile.TarInfo) -> str:
    problem = unsafe_member_path(member.name)
    if problem:
        return problem
    if member.issym() or member.islnk():
        return "link inside archive (not followed)"
    if not member.isfile():
        return "not a regular file"
    return ""


def _check_tar_end(archive: tarfile.TarFile, root: Path) -> None:
    """An uncompressed tar cut at a member boundary reads as complete: tarfile stops at the
    end of the file quietly. A whole one ends with two zero blocks after its last member."""
    end = archive.offset + 2 * tarfile.BLOCKSIZE
    if isinstance(archive.fileobj, io.BufferedReader) and end > root.stat().st_size:
        raise tarfile.ReadError("cut short: no end-of-archive marker")


def _list_tar(root: Path) -> Iterator[SourceEntry]:
    """Members in archive order; a damaged stream ends the listing with one row that says so."""
    last = ""
    try:
        with tarfile.open(root, mode="r:*") as archive:
            plain = isinstance(archive.fileobj, io.BufferedReader)
            for member in archive:
                if member.isdir():
                    continue
                last = member.name
                offset = member.offset_data if plain and member.isfile() else -1
                problem = _tar_member_problem(member)
                yield SourceEntry(
                    member.name, member.size, problem, int(member.mtime), offset=offset
                )
            _check_tar_end(archive, root)
    except ARCHIVE_ERRORS as err:
        where = f"after member {last}" if last else "before its first member"
        problem = (
            f"damaged archive ({damage_reason(err)}) {where}: any members after it are lost; "
            "re-download the archive"
        )
        yield SourceEntry(DAMAGED_INDEX, 0, problem)


def list_entries(root: Path) -> list[SourceEntry]:
    """Every file under a root (folder or archive), sorted by path; unreadable ones flagged."""
    kind = root_kind(root)
    if kind == "folder":
        entries = _walk_folder(Path(root))
    elif kind == "zip":
        entries = _list_zip(Path(root))
    else:
        entries = _list_tar(Path(root))
    in_order = [replace(entry, order=index) for index, entry in enumerate(entries)]
    return flag_name_problems(sorted(in_order, key=lambda entry: (entry.relpath, entry.order)))


def flag_name_problems(entries: list[SourceEntry]) -> list[SourceEntry]:
    """Names that cannot be used as they are keep a row, with the reason.

    Non-UTF-8 names (surrogate escapes from the file system or a tar) become readable text;
    a member name an archive holds twice gets its own row (occurrence 1, 2, ...), since only
    one copy can be read back by name.
    """
    flagged: list[SourceEntry] = []
    seen: dict[str, int] = {}
    for entry in entries:
        try:
            entry.relpath.encode("utf-8")
        except UnicodeEncodeError:
            text = entry.relpath.encode("utf-8", "surrogateescape").decode(
                "utf-8", "backslashreplace"
            )
            entry = replace(entry, relpath=text, problem="file name is not valid UTF-8 (rename it)")
        count = seen.get(entry.relpath, 0)
        seen[entry.relpath] = count + 1
        if count:
            entry = replace(
                entry,
                occurrence=count,
                problem="duplicate member name in the archive (only one copy can be read)",
            )
        flagged.append(entry)
    return flagged


# ----------------------------------------------------------------------------- a zip without its index
#
# A .zip cut short (or with a damaged end) has lost its central directory, the index zipfile
# reads; every member before the damage still has its own local header. As `zip -FF` does,
# the local headers are read one after another, and an index is rebuilt from them in memory
# so that zipfile itself reads the members (decompression, CRC checks, zip64). The scan is
# hand-written because zipfile has no reader for local headers (and reading the archive as a
# stream instead would re-read it from the start for every member asked for).

LOCAL_HEADER = struct.Struct(
    "<4s5H3L2H"
)  # signature, versions, flags, method, time, date, crc, sizes
CENTRAL_HEADER = struct.Struct("<4s4B4HL2L5H2L")
END_RECORD = struct.Struct("<4s4H2LH")
ZIP64_END_RECORD = struct.Struct("<4sQ2H2L4Q")
ZIP64_LOCATOR = struct.Struct("<4sLQL")
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
ZIP32_MAX = 0xFFFFFFFF


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


def _list_recovered_zip(root: Path, reason: str) -> Iterator[SourceEntry]:
    """Every member whose local header survives (a cut one with its reason), then one row
    that says what is damaged and what is lost."""
    recovery = recover_zip(root)
    for member in recovery.members:
        if member.name.endswith("/"):
            continue
        problem = member.problem or unsafe_member_path(member.name)
        if not problem and member.flags & 0x1:
            problem = "encrypted archive member"
        yield SourceEntry(member.name.replace("\\", "/"), member.size, problem, member.stamp)
    read = sum(not member.problem for member in recovery.members)
    problem = (
        f"damaged archive: the zip index (central directory) cannot be read ({reason}); "
        f"{plural(read, 'member')} read from their own headers, as zip -FF does{recovery.lost}; "
        "re-download the archive or repair it (zip -FF)"
    )
    yield SourceEntry(DAMAGED_INDEX, root.stat().st_size, problem)


class SourceReader:
    """Reads file bytes from a root; archives stay open for the reader's lifetime.

    `read_many` returns members in one forward pass for compressed tars (random access into a
    .tar.gz re-decompresses from the start).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.kind = root_kind(self.root)
        self._zip: zipfile.ZipFile | None = None
        self._zip_names: dict[str, str] = {}  # posix relpath -> member name as stored

    def __enter__(self) -> SourceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def read(self, relpath: str) -> bytes:
        return self.read_many([relpath])[relpath]

    def read_many(self, relpaths: Iterable[str]) -> dict[str, bytes]:
        """Bytes of each file; DamagedMember for a member that cannot be read back."""
        wanted = list(dict.fromkeys(relpaths))
        for relpath in wanted:
            problem = unsafe_member_path(relpath)
            if problem:
                raise ValueError(f"{relpath}: {problem}")
        if self.kind == "folder":
            return {rel: (self.root / rel).read_bytes() for rel in wanted}
        if self.kind == "zip":
            return {rel: self._read_zip_member(rel) for rel in wanted}
        found = {}
        for name, payload in self._iter_tar(set(wanted)):
            if isinstance(payload, BaseException):
                raise payload
            found[name] = payload
        return found

    def read_at(self, offset: int, size: int) -> bytes:
        """`size` bytes at `offset` of an uncompressed tar: one member, read in place."""
        with open(self.root, "rb") as handle:
            handle.seek(offset)
            data = handle.read(size)
        if len(data) != size:
            raise DamagedMember(f"damaged archive member (cut off: {len(data)} of {size} bytes)")
        return data

    def _read_zip_member(self, relpath: str) -> bytes:
        try:
            if self._zip is None:
                self._zip = open_zip(self.root)
                self._zip_names = {name.replace("\\", "/"): name for name in self._zip.namelist()}
            return self._zip.read(self._zip_names.get(relpath, relpath))
        except ARCHIVE_ERRORS as err:
            raise DamagedMember(f"damaged archive member ({damage_reason(err)})") from err
        except NotImplementedError as err:  # a compression method or feature zipfile lacks
            raise DamagedMember(f"unsupported archive member ({err})") from err

    def _iter_tar(self, wanted: set[str]) -> Iterator[tuple[str, bytes | DamagedMember]]:
        """(name, bytes) of the wanted members in archive order, one pass; (name,
        DamagedMember) for a member whose data is cut or corrupt, and for every wanted member
        the pass never reached because the archive is damaged before it."""
        wanted = set(wanted)
        try:
            with tarfile.open(self.root, mode="r:*") as archive:
                for member in archive:
                    if member.name not in wanted or not member.isfile():
                        continue
                    wanted.discard(member.name)
                    yield member.name, _read_tar_member(archive, member)
                    if not wanted:
                        return
        except ARCHIVE_ERRORS as err:
            reason = f"damaged archive before this member ({damage_reason(err)})"
            for name in sorted(wanted):
                yield name, DamagedMember(reason)
            return
        if wanted:
            raise FileNotFoundError(f"{self.root}: no member {sorted(wanted)[0]}")

    def iter_tar_bytes(self, wanted: set[str]) -> Iterator[tuple[str, bytes | DamagedMember]]:
        """Stream the requested members of a tar archive in archive order (one pass)."""
        return self._iter_tar(set(wanted))


def _read_tar_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes | DamagedMember:
    try:
        handle = archive.extractfile(member)
        data = handle.read() if handle is not None else b""
    except ARCHIVE_ERRORS as err:
        return DamagedMember(f"damaged archive member ({damage_reason(err)})")
    if len(data) != member.size:
        return DamagedMember(
            f"damaged archive member (cut off: {len(data)} of {member.size} bytes)"
        )
    return data


def member_suffix(relpath: str) -> str:
    return posixpath.splitext(relpath)[1].lower()
