"""The catalog parts ingest writes: their names, the chunks a part's footer says it covers,
the temporary name a worker writes under and the rename that commits it, and removal.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from inf590k.build import catalog as cat

ROW_GROUP_ROWS = 16_384  # rows a worker holds before it writes them to its part


CHUNKS_KEY = b"inf590k.chunks"  # a part's footer: the chunk indices (JSON list) it covers


def part_path(build: Path, source: str, chunk: int) -> Path:
    return cat.catalog_dir(build) / f"part-{source}-{chunk:06d}.parquet"


def temporary_part(build: Path, source: str, chunk: int) -> Path:
    """Where a worker writes a part until the driver commits it (a dot file: never read)."""
    return cat.catalog_dir(build) / f".part-{source}-{chunk:06d}.parquet.tmp"


def chunks_of_part(path: Path) -> list[int]:
    """The chunk indices a committed part covers: its footer says; a part of the earlier
    layout (one chunk each) by its name."""
    metadata = pq.read_schema(path).metadata or {}
    if CHUNKS_KEY in metadata:
        return [int(i) for i in json.loads(metadata[CHUNKS_KEY])]
    return [int(path.stem.rsplit("-", 1)[1])]


def done_chunks(build: Path, source: str) -> set[int]:
    """Chunks of `source` that committed parts cover (not those of a source whose id only
    starts the same: `flir` and `flir-adas`)."""
    done: set[int] = set()
    for path in source_parts(build, source):
        done.update(chunks_of_part(path))
    return done


def remove_temporary_parts(build: Path) -> None:
    """Parts a killed run left half written (never believed: only a commit names a part)."""
    for path in cat.catalog_dir(build).glob(".part-*.parquet.tmp"):
        path.unlink()


def part_schema(indices: list[int]) -> pa.Schema:
    return cat.CATALOG_SCHEMA.with_metadata({CHUNKS_KEY: json.dumps(indices).encode()})


def commit_part(build: Path, source: str, indices: list[int], result: pa.Table | int) -> None:
    """Make a finished unit's part visible under its name (atomic: a killed run leaves
    either no part or the whole part)."""
    final = part_path(build, source, indices[0])
    if isinstance(result, pa.Table):
        cat.write_parquet_atomic(result, final)
    else:
        os.replace(temporary_part(build, source, indices[0]), final)


def source_parts(build: Path, source: str) -> list[Path]:
    """The committed parts of `source` alone (`flir`'s, not `flir-adas`'s)."""
    prefix = f"part-{source}-"
    paths = cat.catalog_dir(build).glob(f"{prefix}*.parquet")
    return sorted(p for p in paths if p.stem[len(prefix) :].isdigit())


def remove_parts(build: Path, source: str) -> None:
    for stale in source_parts(build, source):
        stale.unlink()


def parts_state(build: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in cat.part_paths(build)}


def catalog_counts(build: Path) -> dict[str, int]:
    """Rows per source (later stages change statuses, never the rows)."""
    if not cat.part_paths(build):
        return {}
    sources = pq.read_table(cat.catalog_dir(build), columns=["source"]).column("source")
    counts = pc.value_counts(sources)  # a struct per distinct source: no Python object per row
    return dict(sorted(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)))
