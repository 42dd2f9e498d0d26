"""Re-reading the source files of a shard's rows, each checked against what ingest catalogued."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from inf590k.build import catalog as cat
from inf590k.build.rows import load_stored_pixels, stored_form
from inf590k.inputs.imageio import ImagePolicy, decode, stretch_to_8bit
from inf590k.inputs.sources import SourceReader, root_kind

# ----------------------------------------------------------------------------- constants

READ_BATCH = 256  # files read at once from folder and zip sources (bounds memory)


# ----------------------------------------------------------------------------- source files

class SourceChanged(RuntimeError):
    """A source file is missing, unreadable or not the one ingest catalogued; one line."""


def _read_source(root: Path, source: str, relpaths: list[str]) -> dict[str, bytes]:
    """`SourceReader.read_many`, its failures as one SourceChanged line naming the file."""
    try:
        with SourceReader(root) as reader:
            found = reader.read_many(relpaths)
    except (OSError, ValueError) as error:
        name = getattr(error, "filename", None) or root
        reason = getattr(error, "strerror", None) or str(error)
        raise SourceChanged(
            f"cannot read {name} of source {source!r} ({reason}): restore it, or re-run "
            "`inf590k ingest` for that source (then dedupe, bin and shard)"
        ) from None
    missing = [r for r in relpaths if r not in found]
    if missing:
        raise SourceChanged(
            f"{missing[0]} is no longer in source {source!r} ({root}): restore it, or re-run "
            "`inf590k ingest` for that source (then dedupe, bin and shard)"
        )
    return found


def _source_kind(root: Path, source: str) -> str:
    try:
        return root_kind(root)
    except (OSError, ValueError) as error:
        raise SourceChanged(f"source {source!r}: {error}") from None


def check_unchanged(row: Mapping, data: bytes, digests: dict[str, str]) -> None:
    """The file `shard` re-read must be the one ingest catalogued: same size, same sha256
    (`digests` caches a file's digest for the other frames of a video). A file edited, swapped
    or grown since would otherwise ship under its old row (hashes, dedupe decision, crop)."""
    if len(data) != row["file_bytes"]:
        change = f"{len(data)} bytes, ingest read {row['file_bytes']}"
    else:
        key = row["relpath"]
        if key not in digests:
            digests[key] = hashlib.sha256(data).hexdigest()
        if digests[key] == row["file_sha256"]:
            return
        change = "same size, other content: its sha256 differs"
    # ingest notices a change by size and mtime: a file rewritten with both kept needs a touch
    raise SourceChanged(
        f"{row['source']}/{row['relpath']} changed after ingest ({change}): restore the file, "
        "or `touch` it and re-run `inf590k build` (or ingest, dedupe, bin and shard) so ingest "
        "reads it again"
    )


def _read_files(build: Path, rows: tuple[dict, ...]) -> Iterator[tuple[dict, bytes]]:
    """(row, file bytes) in row order, each checked against its row (`check_unchanged`); one
    pass per tar source, small batches otherwise."""
    recorded = cat.read_sources(build)
    whole_tar: dict[str, dict[str, bytes]] = {}  # a (compressed) tar is read in one pass
    digests: dict[str, dict[str, str]] = {}
    for start in range(0, len(rows), READ_BATCH):
        batch = rows[start : start + READ_BATCH]
        by_source: dict[str, dict[str, bytes]] = {}
        for source in sorted({r["source"] for r in batch}):
            if source in whole_tar:
                by_source[source] = whole_tar[source]
                continue
            root = Path(recorded[source]["root"])
            if _source_kind(root, source) == "tar":
                everything = [r["relpath"] for r in rows if r["source"] == source]
                by_source[source] = whole_tar[source] = _read_source(root, source, everything)
            else:
                wanted = [r["relpath"] for r in batch if r["source"] == source]
                by_source[source] = _read_source(root, source, wanted)
        for row in batch:
            data = by_source[row["source"]][row["relpath"]]
            check_unchanged(row, data, digests.setdefault(row["source"], {}))
            yield row, data


class _PixelLoader:
    """`ingest.load_stored_pixels`, with each source's policy read once per shard, not per row.

    Returns (8-bit view, raw 16-bit frame or None): the raw frame only with keep_16bit and a
    16-bit file. Still images are decoded once for both; video frames go through ingest.
    """

    def __init__(self, build: Path, keep_16bit: bool) -> None:
        self.build = build
        self.keep_16bit = keep_16bit
        recorded = cat.read_sources(build)
        self.policies = {s: ImagePolicy(**info["policy"]) for s, info in recorded.items()}

    def __call__(self, row: dict, data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
        policy = self.policies[row["source"]]
        if row["frame"] is not None and row["frame"] >= 0:
            stored = load_stored_pixels(self.build, row, keep_16bit=self.keep_16bit, data=data)
        else:
            stored = stored_form(decode(data, policy), row, policy, self.keep_16bit)
        if stored.dtype == np.uint16:  # only with keep_16bit: the 8-bit view from the same pixels
            return stretch_to_8bit(stored, policy)[0], stored
        return stored, None
