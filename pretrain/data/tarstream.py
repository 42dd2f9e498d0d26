"""Read the members of a tar stream that the loader wants, skipping the others unread.

Python's `tarfile` in stream mode (what webdataset reads shards with) builds a TarInfo per
member and copies each payload through 10 KiB buffers: ~0.5 ms per 640x512 sample, a quarter
of the loader's cost once decoding reads only the crop (profiled, docs/loader.md). This reader
takes one 512-byte header and one read per member and seeks past unwanted ones in local files.

Handled: ustar/GNU/POSIX headers (the `prefix` field, GNU long names `L`, pax `path`/`size`
records), base-256 sizes, gzip-, bzip2- and xz-compressed shards (what `tarfile`'s `r|*`
reads, concatenated streams too). A member is read as `tarfile` reads it (the same names, the
same payloads: tests compare both on fuzzed archives); where the two could disagree this reader
fails instead (sparse members, a pax header giving every member one path, two long names for
one member).

A shard is untrusted input, so
- memory is bounded whatever it holds: a member the loader does not use is skipped by seeking
  (local files) or read and dropped in 1 MiB blocks (HTTP, pipes, compressed shards); a member
  it uses may not exceed `max_size` (the caller derives it from its pixel cap), checked before
  anything is read; extended headers are capped at 1 MiB, an xz stream's dictionary at 256 MiB;
- every damage ends in TarFormatError with one line naming it, never in a decompressor's or
  the standard library's error: every header's checksum and numeric fields are checked, pax
  records parsed strictly, the end-of-archive marker must be two zero blocks and a stream must
  end with it (a shard cut short, padded with junk, holding a lone zero block or a damaged pax
  header fails instead of ending "cleanly" as `tarfile` lets it). Errors of the stream
  underneath (a network failure, a read deadline) pass through unchanged.
"""

from __future__ import annotations

import bz2
import io
import lzma
import os
import re
import stat
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
DISCARD_CHUNK = 1 << 20  # bytes per read when dropping a member a stream cannot seek past
COMPRESSED_CHUNK = 1 << 16  # compressed bytes handed to a decompressor per call
MAX_EXTENDED = 1 << 20  # largest pax / GNU long-name header: it holds names, not data
XZ_MEMORY_LIMIT = 256 << 20  # xz -9 needs 65 MiB; a hostile header may ask for 4 GiB
MAGIC_BYTES = 6

REGULAR = (b"0", b"\0", b"7")  # regular file, old-style regular file, contiguous file
# Types `tarfile` knows that carry no data whatever their size field says (links, devices,
# folders, FIFOs); any type it does not know is skipped by its size, as here.
NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")
LONG_NAME, LONG_LINK, SPARSE = b"L", b"K", b"S"  # GNU extensions
PAX, PAX_SOLARIS, PAX_GLOBAL = b"x", b"X", b"g"
EXTENDED = (LONG_NAME, LONG_LINK, PAX, PAX_SOLARIS, PAX_GLOBAL)
# Global pax records `tarfile` would apply to every later member: refused, not guessed at.
GLOBAL_REFUSED = ("path", "size", "hdrcharset")

# The numeric fields of a header besides the size; `tarfile` stops reading at a header where
# one of them is not a number, so this reader fails there rather than read on.
NUMERIC_FIELDS = (
    ("mode", 100, 8),
    ("uid", 108, 8),
    ("gid", 116, 8),
    ("mtime", 136, 12),
    ("devmajor", 329, 8),
    ("devminor", 337, 8),
)
SIZE_FIELD = ("size", 124, 12)
BASE_256 = (0x80, 0xFF)  # a first byte marking a big-endian binary number (0xFF: negative)
OCTAL = re.compile(rb" *[0-7]* *(?:\0|\Z)")  # an octal field, up to its first NUL
# The numeric fields as tarfile, GNU tar and the shard writer write them (mode, uid, gid, size,
# mtime: 7 or 11 octal digits and a NUL or space; device numbers the same or all NUL): one
# match per header instead of a parse per field, the hot path of the loader's reads.
PLAIN_NUMBERS = re.compile(rb"(?:[0-7]{7}[ \0]){3}(?:[0-7]{11}[ \0]){2}")  # bytes 100-148
PLAIN_DEVICES = re.compile(rb"(?:[0-7]{7}[ \0]|\0{8}){2}")  # bytes 329-345

COMPRESSIONS = (  # magic bytes -> name, as tarfile's "r|*" detects them
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
)


class TarFormatError(ValueError):
    """The stream is not a readable tar here (damaged header, cut short, hostile sizes)."""


# ---------------------------------------------------------------------------- opening


class _Prepended(io.RawIOBase):
    """`head` then the rest of `stream`: a stream that cannot seek, after its first bytes."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        super().__init__()
        self._head, self._stream = head, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            count = min(len(buffer), len(self._head))
            buffer[:count], self._head = self._head[:count], self._head[count:]
            return count
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _Decompressed(io.RawIOBase):
    """The data of a gzip, bzip2 or xz stream (concatenated streams too), inflated a bounded
    block at a time. Damage in the compressed data is a TarFormatError; an error of the stream
    underneath passes through as it is.

    Hand-written over the decompressor objects rather than gzip.GzipFile, bz2.BZ2File and
    lzma.LZMAFile: those raise five unrelated error types (BadGzipFile, EOFError, OSError,
    zlib.error, LZMAError) that cannot be told from the network's, and LZMAFile cannot cap the
    memory a hostile xz header asks for."""

    def __init__(self, raw: IO[bytes], kind: str) -> None:
        super().__init__()
        self._raw, self._kind = raw, kind
        self._decompressor = self._new()
        self._input = b""  # compressed bytes the decompressor has not taken yet (zlib's tail)

    def _new(self) -> Any:
        if self._kind == "gzip":
            return zlib.decompressobj(wbits=31)  # gzip wrapper: header, CRC-32 and length checked
        if self._kind == "bzip2":
            return bz2.BZ2Decompressor()
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=XZ_MEMORY_LIMIT)

    def readable(self) -> bool:
        return True

    def _needs_input(self) -> bool:
        if self._kind == "gzip":
            return not self._input
        return bool(self._decompressor.needs_input)

    def readinto(self, buffer: Any) -> int:
        while True:
            if self._decompressor.eof:  # a stream ended: another may follow it
                rest = self._decompressor.unused_data or self._raw.read(COMPRESSED_CHUNK)
                if not rest:
                    return 0
                self._decompressor, self._input = self._new(), rest
            elif self._needs_input():
                data = self._raw.read(COMPRESSED_CHUNK)
                if not data:
                    raise TarFormatError(f"{self._kind} stream cut short (no end-of-stream marker)")
                self._input += data
            try:
                out = self._decompressor.decompress(self._input, len(buffer))
            except (zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
                raise TarFormatError(f"damaged {self._kind} data ({exc})") from None
            self._input = self._decompressor.unconsumed_tail if self._kind == "gzip" else b""
            if out:
                buffer[: len(out)] = out
                return len(out)


def decompressed(stream: IO[bytes]) -> IO[bytes]:
    """The stream itself, or a reader of its data for gzip/bzip2/xz-compressed shards."""
    if _seekable(stream):  # local files: read the magic, then go back
        head = stream.read(MAGIC_BYTES)
        stream.seek(-len(head), io.SEEK_CUR)
    else:  # pipes, HTTP: read the magic, then hand it back in front of the rest
        head = stream.read(MAGIC_BYTES)
        stream = io.BufferedReader(_Prepended(head, stream), BLOCK * 128)  # type: ignore[assignment]
    for magic, kind in COMPRESSIONS:
        if head.startswith(magic):
            return io.BufferedReader(_Decompressed(stream, kind), COMPRESSED_CHUNK)  # type: ignore[return-value]
    return stream


def _seekable(stream: IO[bytes]) -> bool:
    seekable = getattr(stream, "seekable", None)  # webdataset's pipe streams have no seekable()
    return bool(seekable and seekable())


def _bytes_left(stream: IO[bytes]) -> int | None:
    """How many bytes a seekable stream holds from here (a local file, bytes in memory), None
    for the others."""
    if not _seekable(stream):
        return None
    here = stream.tell()
    try:
        info = os.fstat(stream.fileno())
    except (OSError, AttributeError, io.UnsupportedOperation):  # in memory: BytesIO
        end = stream.seek(0, io.SEEK_END)
        stream.seek(here)
        return end - here
    return info.st_size - here if stat.S_ISREG(info.st_mode) else None


# ---------------------------------------------------------------------------- headers


def _field(header: bytes, start: int, length: int) -> bytes:
    return header[start : start + length].split(b"\0", 1)[0]


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")  # as tarfile decodes names


def _number(header: bytes, field: tuple[str, int, int], offset: int) -> int:
    """A numeric field: octal text, or GNU base-256 (0x80 then the value, 0xFF negative)."""
    name, start, length = field
    if header[start] in BASE_256:
        value = int.from_bytes(header[start + 1 : start + length], "big")
        return value - 256 ** (length - 1) if header[start] == 0xFF else value
    if not OCTAL.match(header, start, start + length):
        shown = header[start : start + length].split(b"\0", 1)[0]
        raise TarFormatError(
            f"damaged tar header at byte {offset} (its {name} field {shown!r} is not a number)"
        )
    text = _field(header, start, length).strip()
    return int(text, 8) if text else 0


def _header_size(header: bytes, offset: int) -> int:
    """The size field, after checking every numeric field is a number."""
    if PLAIN_NUMBERS.fullmatch(header, 100, 148) and PLAIN_DEVICES.fullmatch(header, 329, 345):
        return int(header[124:135], 8)
    for name, start, length in NUMERIC_FIELDS:
        if header[start] not in BASE_256 and not OCTAL.match(header, start, start + length):
            _number(header, (name, start, length), offset)  # raises, naming the field
    return _number(header, SIZE_FIELD, offset)


def _checksum_ok(header: bytes) -> bool:
    stored = header[148:156].split(b"\0", 1)[0].strip()
    try:
        expected = int(stored, 8)
    except ValueError:
        return False
    unsigned = sum(header) - sum(header[148:156]) + 8 * 32  # the field counts as 8 spaces
    if expected == unsigned:
        return True
    signed = sum(b - 256 if b > 127 else b for b in header[:148] + header[156:]) + 8 * 32
    return expected == signed  # some old tars sum signed bytes (tarfile accepts both)


def _pax_records(payload: bytes, offset: int) -> dict[str, str]:
    """`"%d key=value\\n"` records of a pax extended header; TarFormatError if malformed
    (nothing checksums a pax payload, and a bad length would otherwise loop forever)."""
    records, position = {}, 0
    while position < len(payload):
        if payload[position] == 0:  # NUL padding after the last record
            break
        space = payload.find(b" ", position)
        digits = payload[position:space] if space > position else b""
        length = int(digits) if digits.isdigit() else 0
        end = position + length
        if length <= len(digits) + 1 or end > len(payload) or payload[end - 1 : end] != b"\n":
            raise TarFormatError(f"damaged pax header at byte {offset} (a record at {position})")
        key, equals, value = payload[space + 1 : end - 1].partition(b"=")
        if not key or not equals:
            raise TarFormatError(f"damaged pax header at byte {offset} (a record at {position})")
        records[_text(key)] = _text(value)
        position = end
    return records


class _Pending:
    """The extended headers read for the next member (a GNU long name, pax records), and the
    rules `tarfile` applies them by; where it would pick one of two by nesting order, this
    refuses instead."""

    def __init__(self) -> None:
        self.long_name: str | None = None
        self.pax: dict[str, str] | None = None
        self.offset = -1  # where the first of them starts; -1: none read

    def __bool__(self) -> bool:
        return self.offset >= 0

    def add(self, kind: bytes, payload: bytes, offset: int) -> None:
        if self.offset < 0:  # any extended header, global ones too, needs a header after it
            self.offset = offset
        if kind == LONG_LINK:  # a link's target: nothing the loader reads
            return
        if kind == PAX_GLOBAL:
            records = _pax_records(payload, offset)
            applied = [key for key in records if key in GLOBAL_REFUSED or _sparse_key(key)]
            if applied:
                raise TarFormatError(
                    f"a global pax header at byte {offset} sets {applied[0]!r} for every "
                    "member: not supported in shards"
                )
            return
        if kind == LONG_NAME:
            if self.long_name is not None:
                raise TarFormatError(f"two GNU long names for one member (byte {offset})")
            self.long_name = _text(payload.split(b"\0", 1)[0])
        else:
            if self.pax is not None:
                raise TarFormatError(f"two pax headers for one member (byte {offset})")
            self.pax = _pax_records(payload, offset)
        if self.long_name is not None and self.pax is not None and "path" in self.pax:
            raise TarFormatError(f"a GNU long name and a pax path for one member (byte {offset})")

    def name(self, short_name: bytes, header: bytes) -> str:
        if self.pax is not None and "path" in self.pax:
            return self.pax["path"].rstrip("/")
        if self.long_name is not None:
            return self.long_name
        return _header_name(short_name, header)

    def size(self, header_size: int) -> int:
        """The member's size: a pax `size` record overrides the header's field."""
        if self.pax is None or "size" not in self.pax:
            return header_size
        value = self.pax["size"]
        if not (value.isascii() and value.isdigit()):
            raise TarFormatError(f"damaged pax header at byte {self.offset} (size {value!r})")
        return int(value)

    def sparse(self) -> bool:
        return self.pax is not None and any(_sparse_key(key) for key in self.pax)


def _header_name(short_name: bytes, header: bytes) -> str:
    """The name a header holds: its ustar prefix (if any), "/", its name field."""
    if header[345]:
        return _text(_field(header, 345, 155) + b"/" + short_name)
    return _text(short_name)


def _sparse_key(key: str) -> bool:
    return key.startswith("GNU.sparse.")


# ---------------------------------------------------------------------------- reading


class _Source:
    """The (decompressed) stream with the position and end this reader keeps track of."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = decompressed(stream)
        self.end = _bytes_left(self.stream)  # in tar bytes; known for local uncompressed shards
        self.offset = 0  # of the next header, in tar bytes

    def read_exact(self, size: int, what: str) -> bytes:
        data = self.stream.read(size)
        if len(data) != size:
            raise TarFormatError(f"tar cut short in {what} ({len(data)} of {size} bytes)")
        return data

    def skip(self, size: int, position: int, name: str, offset: int) -> None:
        """Pass `size` bytes from tar byte `position` (of member `name`, whose header is at
        `offset`) without holding them: seek where the end is known, else read and drop them
        a block at a time."""
        if size <= 0:
            return
        if self.end is not None:  # a local file: tar bytes are file bytes
            if position + size > self.end:
                raise TarFormatError(
                    f"tar cut short in member {_shown(name)} at byte {offset}: it claims "
                    f"{size:,} bytes, {max(0, self.end - position):,} are left"
                )
            self.stream.seek(size, io.SEEK_CUR)
            return
        while size:
            chunk = self.stream.read(min(size, DISCARD_CHUNK))
            if not chunk:
                raise TarFormatError(
                    f"tar cut short in member {_shown(name)} at byte {offset} "
                    f"({size:,} bytes missing)"
                )
            size -= len(chunk)


def _shown(name: str) -> str:
    """A member's name for a message: quoted, long ones shortened."""
    return repr(name if len(name) <= 80 else name[:40] + "..." + name[-37:])


def tar_members(
    stream: IO[bytes], wanted: Callable[[str], bool], *, max_size: int
) -> Iterator[tuple[str, bytes]]:
    """(name, payload) of each regular member whose name `wanted` accepts, in stream order.

    A wanted member larger than `max_size` bytes is a TarFormatError, raised before it is read.
    Ends at the end-of-archive block; raises TarFormatError on a damaged header or compressed
    stream, a cut, a hostile size, or a stream that ends without that block (a shard cut at a
    member boundary)."""
    source = _Source(stream)
    pending = _Pending()
    while True:
        offset = source.offset
        header = source.stream.read(BLOCK)
        if header == ZERO_BLOCK:
            if pending:
                raise TarFormatError(
                    f"an extended header at byte {pending.offset} has no member after it"
                )
            _end_of_archive(source.stream, offset)
            return
        if len(header) != BLOCK:
            where = "before its end-of-archive blocks" if not header else "in a header"
            raise TarFormatError(f"tar cut short {where} (byte {offset})")
        if not _checksum_ok(header):
            raise TarFormatError(f"damaged tar header at byte {offset} (bad checksum)")
        size = _header_size(header, offset)
        kind = header[156:157]
        if kind in EXTENDED:
            _check_size(size, MAX_EXTENDED, "an extended header", offset)
            source.offset += BLOCK + _padded(size)
            # all its blocks, as tarfile parses them: a name or records in the padding count
            pending.add(kind, source.read_exact(_padded(size), "an extended header"), offset)
            continue
        if kind == SPARSE or pending.sparse():
            raise TarFormatError(f"sparse tar member at byte {offset}: not supported in shards")
        short_name = _field(header, 0, 100)
        if pending:
            name, size = pending.name(short_name, header), pending.size(size)
            pending = _Pending()
        else:
            name = _header_name(short_name, header)
        if size < 0:
            raise TarFormatError(f"damaged tar header at byte {offset} (negative size {size})")
        regular = kind in REGULAR and not (kind == b"\0" and short_name.endswith(b"/"))
        if not regular and (kind in NO_DATA or kind == b"\0"):
            size = 0  # a link, device or folder: tarfile reads no data after it
        source.offset += BLOCK + _padded(size)
        if not regular or not wanted(name):
            source.skip(_padded(size), offset + BLOCK, name, offset)
            continue
        _check_size(size, max_size, f"member {_shown(name)}", offset)
        data = source.read_exact(size, f"member {_shown(name)}")
        source.skip(_padded(size) - size, offset + BLOCK + size, name, offset)
        yield name, data


def _padded(size: int) -> int:
    return size + -size % BLOCK


def _check_size(size: int, limit: int, what: str, offset: int) -> None:
    if size < 0:
        raise TarFormatError(f"damaged tar header at byte {offset} (negative size {size})")
    if size > limit:
        raise TarFormatError(
            f"{what} at byte {offset} claims {size:,} bytes, over the {limit:,}-byte limit"
        )


def _end_of_archive(stream: IO[bytes], offset: int) -> None:
    """The end marker is two zero blocks. A lone one followed by a header is two tars
    concatenated or a damaged one: `tarfile` would stop there and lose the rest."""
    second = stream.read(BLOCK)
    if second and second != ZERO_BLOCK:
        if len(second) < BLOCK and not second.strip(b"\0"):
            raise TarFormatError(f"tar cut short in its end-of-archive blocks (byte {offset})")
        raise TarFormatError(
            f"a lone zero block at byte {offset} with more data after it "
            "(concatenated or damaged tar)"
        )
