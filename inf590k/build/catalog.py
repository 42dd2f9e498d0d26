"""The catalog: one Parquet row per scanned file, the contract between the build stages.

Layout inside a build directory::

    BUILD/catalog/part-<source>-<chunk>.parquet   one file per ingest chunk (resumable)
    BUILD/sources.json                            source id -> root path, manifest digest

`pyarrow.parquet.read_table(BUILD / "catalog")` reads the whole catalog. Later stages
(dedupe, bin) rewrite the parts with `write_catalog`, never dropping a row.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from inf590k.dataset.layout import CATALOG_SCHEMA, COLUMN_NAMES  # noqa: F401 - the catalog's columns are the sidecars'
from inf590k.fsutil import open_new, write_text_atomic

CATALOG_DIRNAME = "catalog"
SOURCES_FILENAME = "sources.json"

# Row status values. Counts always add up: found = ok + excluded + rejected + duplicate.
STATUS_OK = "ok"
STATUS_EXCLUDED = "excluded"  # a manifest or folder rule says this file is not an IR image
STATUS_REJECTED = "rejected"  # an IR candidate that could not be used (corrupt, too small, ...)
STATUS_DUPLICATE = "duplicate"  # set by dedupe: a kept image of the same group exists
STATUSES = (STATUS_OK, STATUS_EXCLUDED, STATUS_REJECTED, STATUS_DUPLICATE)



def catalog_dir(build: Path) -> Path:
    return Path(build) / CATALOG_DIRNAME


def empty_row() -> dict:
    """A row with every column present, nulls where a stage has not filled it in yet."""
    row: dict = {name: None for name in COLUMN_NAMES}
    row.update(frame=-1, tags=[], reason="", dup_group=-1)
    return row


def rows_to_table(rows: Iterable[dict]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=CATALOG_SCHEMA)


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write a Parquet file so that a reader (or a resumed run) never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open_new(tmp) as handle:  # never through a link planted under the temporary name
        pq.write_table(table, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def part_paths(build: Path) -> list[Path]:
    return sorted(catalog_dir(build).glob("part-*.parquet"))


def read_catalog(build: Path) -> pa.Table:
    """The whole catalog, rows in a fixed order (by uid), whatever order parts were written."""
    parts = part_paths(build)
    if not parts:
        raise FileNotFoundError(
            f"no catalog in {build}: run `inf590k ingest --build {build} --source ID=PATH` first"
        )
    table = pa.concat_tables(pq.read_table(p, schema=CATALOG_SCHEMA) for p in parts)
    return table.sort_by("uid")


def write_catalog(build: Path, table: pa.Table) -> None:
    """Rewrite the catalog in place (used by dedupe and bin): each part keeps its rows.

    Every row is kept: a part is rewritten with the rows of `table` that have its uids, so
    ingest's resume markers (the part files) survive later stages.
    """
    table = table.cast(CATALOG_SCHEMA)
    uids = table.column("uid").to_pylist()
    index_of = {uid: i for i, uid in enumerate(uids)}
    if len(index_of) != len(uids):
        raise ValueError("write_catalog: the catalog holds a uid twice; re-run `inf590k ingest`")
    parts = part_paths(build)
    seen = 0
    for path in parts:
        uids = pq.read_table(path, columns=["uid"]).column("uid").to_pylist()
        missing = [uid for uid in uids if uid not in index_of]
        if missing:
            raise ValueError(f"write_catalog would drop row {missing[0]} of {path.name}")
        write_parquet_atomic(table.take([index_of[uid] for uid in uids]), path)
        seen += len(uids)
    if seen != table.num_rows:
        raise ValueError(f"write_catalog: table has {table.num_rows} rows, parts hold {seen}")


def status_counts(table: pa.Table) -> dict[str, dict[str, int]]:
    """{source: {found, ok, excluded, rejected, duplicate}} from a catalog table."""
    counts: dict[str, dict[str, int]] = {}
    for source, status in zip(
        table.column("source").to_pylist(), table.column("status").to_pylist(), strict=True
    ):
        per_source = counts.setdefault(source, {"found": 0, **{s: 0 for s in STATUSES}})
        per_source["found"] += 1
        per_source[status] += 1
    return counts


def read_sources(build: Path) -> dict[str, dict]:
    path = Path(build) / SOURCES_FILENAME
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def write_sources(build: Path, sources: dict[str, dict]) -> None:
    write_text_atomic(Path(build) / SOURCES_FILENAME, json.dumps(sources, indent=2, sort_keys=True))
