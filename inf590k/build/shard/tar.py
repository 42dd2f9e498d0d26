"""The shard writer's tar bytes: PNG encoding, deterministic ustar/PAX members, a hashing file.

Tar members have a fixed mtime, uid/gid 0, empty owner names and mode 0644, sorted per sample,
so any worker count, and a second run from scratch, writes byte-identical tars: the same bytes
as Python's `tarfile` writes for them (tests/ check it), built directly for speed.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

import cv2
import numpy as np

# ----------------------------------------------------------------------------- constants

FIXED_MTIME = 1_700_000_000  # 2023-11-14; any constant works, 0 upsets some tar tools


FLUSH_EVERY = 32 << 20  # bytes between background fdatasync calls while a tar is written


# ----------------------------------------------------------------------------- members

def raw_npy(pixels: np.ndarray) -> bytes:
    """The raw frame as a .npy file: `numpy.load(io.BytesIO(data))` gives it back exactly."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(pixels), allow_pickle=False)
    return buffer.getvalue()


def png_params(level: int) -> list[int]:
    """cv2.imencode flags of the shards' PNGs: Up filter, Huffman-only deflate, zlib `level`.

    Chosen by bench/png.py (tables in docs/png-parameters.md). The Up filter on every row is
    what lets the loader decode only a crop's rows and columns (pretrain/data/pngcrop.py); with it,
    Huffman-only streams inflate ~20% faster there than RLE ones on real IR frames for 2%
    more bytes, and encode fastest. For libpng (OpenCV) it decodes ~1.6x faster than the
    adaptive default. Standard PNG, read by every decoder."""
    return [
        cv2.IMWRITE_PNG_COMPRESSION, level,
        cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP,
        cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
    ]  # fmt: skip


def encode_png(pixels: np.ndarray, level: int) -> bytes:
    """1-channel lossless PNG (8- or 16-bit) with OpenCV: ~2x faster than Pillow here."""
    ok, encoded = cv2.imencode(".png", pixels, png_params(level))
    if not ok:
        raise RuntimeError(f"PNG encoding failed for a {pixels.dtype} {pixels.shape} image")
    return encoded.tobytes()


def _tar_member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = FIXED_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


# The fixed fields of a ustar header after the size: mtime, checksum placeholder, type,
# linkname, magic, empty uname/gname/devmajor/devminor/prefix, padding (name, mode and
# ids come before).
_USTAR_MODE_IDS = b"0000644\0" + b"0000000\0" * 2


_USTAR_TAIL = (
    b"%011o\0" % FIXED_MTIME
    + b" " * 8
    + tarfile.REGTYPE
    + tarfile.NUL * 100
    + tarfile.POSIX_MAGIC
    + tarfile.NUL * (32 + 32 + 8 + 8 + 155 + 12)
)


_USTAR_MAX_SIZE = 8**11  # what 11 octal digits hold


def tar_header(name: str, size: int) -> bytes:
    """A member's header: the bytes `tarfile` writes for `_tar_member(name, size)` (PAX format,
    empty device fields for a regular file, as current Python does).

    Short ASCII names (every uid here) get a plain ustar block, built directly: tarfile's
    generic path costs as much as writing the member. Anything else goes through tarfile.
    """
    if not (name.isascii() and len(name) <= 100 and size < _USTAR_MAX_SIZE):
        return _tar_member(name, size).tobuf(
            tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"
        )
    encoded = name.encode()
    block = b"".join(
        (
            encoded,
            tarfile.NUL * (100 - len(encoded)),
            _USTAR_MODE_IDS,
            b"%011o\0" % size,
            _USTAR_TAIL,
        )
    )
    checksum = b"%06o\0" % sum(block)  # over the block with 8 spaces as its checksum field
    return block[:148] + checksum + block[155:]


def tar_member_bytes(name: str, payload: bytes) -> list[bytes]:
    """A member as `tarfile.addfile` writes it to a PAX archive: header, payload, padding."""
    return [
        tar_header(name, len(payload)),
        payload,
        tarfile.NUL * (-len(payload) % tarfile.BLOCKSIZE),
    ]


def tar_end(size: int) -> bytes:
    """What `TarFile.close` appends to an archive of `size` bytes: two zero blocks, then
    zeros up to a whole record."""
    end = size + 2 * tarfile.BLOCKSIZE
    return tarfile.NUL * (2 * tarfile.BLOCKSIZE + -end % tarfile.RECORDSIZE)


def add_sample(
    tar: BinaryIO | _HashingFile,
    uid: str,
    cls: int,
    json_bytes: bytes,
    png: bytes,
    raw: bytes | None = None,
) -> None:
    """A sample's members, sorted by extension (cls, json, npy, png), next to each other.

    The tar bytes are built here and written at once (the same bytes as `TarFile.addfile`,
    without its per-member copy loop of 16 KiB writes); `tar_end` closes the archive.
    """
    members = [("cls", str(cls).encode()), ("json", json_bytes), ("npy", raw), ("png", png)]
    parts = [
        part
        for extension, payload in members
        if payload is not None
        for part in tar_member_bytes(f"{uid}.{extension}", payload)
    ]
    tar.write(b"".join(parts))


class _HashingFile:
    """A write-only file that hashes what passes through, off the encoding thread.

    `write` hands each buffer to a writer thread (sha256 and file writes release the GIL)
    and waits only for the buffer before it: hashing and writing one sample overlap the PNG
    encoding of the next, with at most one buffer in flight. Every FLUSH_EVERY bytes the
    writer starts an fdatasync in a third thread, so the final fsync before the rename is
    short. Use as a context manager: leaving it waits for the threads (also on errors).
    """

    def __init__(self, handle: io.BufferedWriter) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0  # bytes handed to write(), in order
        self._unflushed = 0  # touched by the writer thread only
        self._writer = ThreadPoolExecutor(1)
        self._syncer = ThreadPoolExecutor(1)
        self._writing: Future | None = None
        self._syncing: Future | None = None

    def write(self, data: bytes) -> int:
        self._wait_for_write()
        self.size += len(data)
        self._writing = self._writer.submit(self._write, data)
        return len(data)

    def _write(self, data: bytes) -> None:  # on the writer thread
        self.digest.update(data)
        self.handle.write(data)
        self._unflushed += len(data)
        if self._unflushed >= FLUSH_EVERY and (self._syncing is None or self._syncing.done()):
            self.handle.flush()
            self._syncing = self._syncer.submit(os.fdatasync, self.handle.fileno())
            self._unflushed = 0

    def _wait_for_write(self) -> None:
        """Block until the buffer in flight is written; its error is raised here."""
        if self._writing is not None:
            writing, self._writing = self._writing, None
            writing.result()

    def _wait_for_threads(self) -> None:
        try:
            self._wait_for_write()
        finally:
            self._writer.shutdown()
            self._syncer.shutdown()  # waits for an fdatasync in progress

    def sync(self) -> None:
        """Everything written is hashed and on disk when this returns."""
        self._wait_for_threads()
        if self._syncing is not None:
            self._syncing.result()
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def __enter__(self) -> _HashingFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        try:
            self._wait_for_threads()  # before the caller closes the file under the writer
        except Exception:
            if exc_type is None:
                raise  # else the body's error is the one to report, not the writer's echo of it
