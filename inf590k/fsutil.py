"""Small file-system helpers every build stage shares."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def write_bytes_atomic(path: Path, data: bytes, fsync: bool = False) -> None:
    """Write via `name.tmp` + rename, so a reader or a resumed run never sees half a file.

    The temporary file is created anew (O_EXCL after removing any leftover), so a link planted
    under its name is replaced, never followed; the rename replaces a link at `path` itself."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open_new(tmp) as handle:
        handle.write(data)
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str, fsync: bool = False) -> None:
    """`write_bytes_atomic` of UTF-8 text."""
    write_bytes_atomic(path, text.encode(), fsync)


def open_new(path: Path) -> BinaryIO:
    """`path` opened for writing as a new file: a leftover file or link of that name is
    removed first, and O_EXCL never follows a link planted in between."""
    Path(path).unlink(missing_ok=True)
    return open(path, "xb")


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file read in blocks (shards and videos need not fit in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def plural(count: int, word: str, words: str | None = None) -> str:
    """`1 duplicate`, `2 duplicates` (thousands separated)."""
    return f"{count:,} {word if count == 1 else (words or word + 's')}"
