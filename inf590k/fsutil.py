"""Small file-system helpers every build stage shares."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def write_text_atomic(path: Path, text: str, fsync: bool = False) -> None:
    """Write via `name.tmp` + rename, so a reader or a resumed run never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)


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
