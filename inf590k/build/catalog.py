"""The catalog: one Parquet row per scanned file, the contract between the build stages.

Layout inside a build directory::

    BUILD/catalog/part-<source>-<chunk>.parquet   what ingest found: one part per work unit of
                                                  many chunks (the chunks it covers in its footer)
    BUILD/dedupe/decisions.parquet                dedupe's decisions: uid, status, reason, dup_group
    BUILD/bins/assign.parquet                     bin's: uid, res_bin
    BUILD/sources.json                            source id -> root path, manifest digest

Ingest writes the parts once; dedupe and bin write their own small column files keyed by uid
instead of rewriting the catalogue. `read_catalog` joins the three: the rows as every stage
after bin sees them. `read_ingested` reads the parts alone, only the columns asked for.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from inf590k.dataset.layout import CATALOG_SCHEMA, COLUMN_NAMES  # noqa: F401 - the catalog's columns are the sidecars'
from inf590k.fsutil import open_new, write_text_atomic

CATALOG_DIRNAME = "catalog"
SOURCES_FILENAME = "sources.json"
DECISIONS_PATH = "dedupe/decisions.parquet"  # relative to the build folder
BIN_ASSIGN_PATH = "bins/assign.parquet"
DECISION_COLUMNS = ("status", "reason", "dup_group")  # what dedupe decides per uid
BIN_COLUMNS = ("res_bin",)

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


def _not_a_link(path: Path) -> Path:
    """A catalog file as the stage wrote it: a link planted under its name is never followed."""
    if path.is_symlink():
        raise ValueError(
            f"{path} is a link, not a file a stage wrote: remove it and run the stage that writes it again"
        )
    return path


def part_paths(build: Path) -> list[Path]:
    return sorted(_not_a_link(p) for p in catalog_dir(build).glob("part-*.parquet"))


def decision_paths(build: Path) -> list[Path]:
    """The column files of dedupe and bin that exist (they join the catalog by uid)."""
    paths = [Path(build) / rel for rel in (DECISIONS_PATH, BIN_ASSIGN_PATH)]
    return [p for p in paths if _not_a_link(p).is_file()]


def _no_catalog(build: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"no catalog in {build}: run `inf590k ingest --build {build} --source ID=PATH` first"
    )


def read_ingested(
    build: Path, columns: Iterable[str] | None = None, statuses: Iterable[str] | None = None
) -> pa.Table:
    """The parts as ingest wrote them (no later decision), only `columns`, sorted by uid;
    `statuses`: only the rows of these (dropped part by part, before the sort).
    One columnar read of the whole folder: a part's other columns are never decoded."""
    parts = part_paths(build)
    if not parts:
        raise _no_catalog(build)
    names = list(COLUMN_NAMES) if columns is None else list(dict.fromkeys(["uid", *columns]))
    schema = pa.schema([CATALOG_SCHEMA.field(n) for n in names])
    wanted = None if statuses is None else pa.array(list(statuses), type=pa.string())
    read = names if wanted is None else list(dict.fromkeys([*names, "status"]))
    tables = (pq.read_table(p, columns=read, schema=CATALOG_SCHEMA) for p in parts)
    if wanted is not None:
        tables = (t.filter(pc.is_in(t.column("status"), value_set=wanted)) for t in tables)
    table = _sorted_by_uid(t.select(names).cast(schema) for t in tables)
    twice = _repeated_uid(table.column("uid"))
    if twice is not None:
        raise ValueError(
            f"the catalog of {build} holds row {twice} twice (two parts cover the same files): "
            "remove the part ingest did not write and run `inf590k ingest` again"
        )
    return table


def _sorted_by_uid(tables: Iterable[pa.Table]) -> pa.Table:
    """`tables` joined, in uid order, one column at a time: the order is found on the uid
    column alone and each unsorted column is let go as its sorted copy is made, so at most
    one column is held twice. (The joined table is this function's alone: an argument would
    be held by the caller until the call returns.)"""
    table = pa.concat_tables(tables)
    schema = table.schema
    order = pc.sort_indices(table.column("uid"))  # [N]
    columns = []
    for name in schema.names:
        whole = table.column(name).combine_chunks()  # `take` would join the chunks itself
        table = table.drop_columns([name])  # the parts' copy goes before the sorted one is made
        columns.append(whole.take(order))
        del whole
        pa.default_memory_pool().release_unused()  # the unsorted column: back to the system now
    return pa.Table.from_arrays(columns, schema=schema)


def _repeated_uid(uids: pa.ChunkedArray) -> str | None:
    """A uid that occurs twice in sorted `uids` (None when each is once)."""
    if len(uids) < 2:
        return None
    same = pc.equal(uids.slice(1), uids.slice(0, len(uids) - 1))  # [N-1], neighbours
    at = pc.index(same, True).as_py()
    return None if at < 0 else uids[at].as_py()


WRITERS = {DECISIONS_PATH: "dedupe", BIN_ASSIGN_PATH: "bin"}


def read_decisions(build: Path, relpath: str, columns: tuple[str, ...]) -> pa.Table | None:
    """A stage's column file, refused (ValueError, one line) unless it is as the stage writes
    it: these columns and types, each uid once, statuses the catalog knows."""
    path = _not_a_link(Path(build) / relpath)
    if not path.is_file():
        return None
    schema = pa.schema([CATALOG_SCHEMA.field("uid"), *(CATALOG_SCHEMA.field(c) for c in columns)])
    found = pq.read_schema(path)
    wrong = [f.name for f in schema if found.get_field_index(f.name) < 0 or not _same_type(found.field(f.name).type, f.type)]
    table = None if wrong else pq.read_table(path, columns=list(schema.names)).select(schema.names)
    problem = f"column {wrong[0]} missing or of another type" if wrong else _decisions_problem(table)
    if problem:
        stage = WRITERS.get(relpath, "dedupe")
        raise ValueError(
            f"{path} is not as `inf590k {stage}` writes it ({problem}): delete it and run "
            f"`inf590k {stage} --build {build}` again"
        )
    return table.cast(schema)


def _same_type(found: pa.DataType, expected: pa.DataType) -> bool:
    """`found` holds `expected`'s values (bin writes its names dictionary-encoded)."""
    return found == expected or (pa.types.is_dictionary(found) and found.value_type == expected)


def _decisions_problem(table: pa.Table) -> str:
    uids = table.column("uid")
    if uids.null_count:
        return "a row without a uid"
    twice = _repeated_uid(uids.sort())
    if twice is not None:
        return f"uid {twice} twice"
    if "status" in table.column_names:
        unknown = set(pc.unique(table.column("status")).to_pylist()) - set(STATUSES)
        if unknown:
            return f"status {sorted(map(str, unknown))[0]!r}"
    return ""


def _set_column(table: pa.Table, name: str, values: pa.Array | pa.ChunkedArray) -> pa.Table:
    index = table.schema.get_field_index(name)
    return table.set_column(index, name, values.cast(table.schema.field(name).type))


def _apply(table: pa.Table, decisions: pa.Table, where: pa.Array) -> pa.Table:
    """`table` with the columns of `decisions` taken over for the uids it names, on the rows
    `where` ([N] bool) allows. Column to column: no Python object per row."""
    at = pc.index_in(table.column("uid"), value_set=decisions.column("uid"))  # [N], null: none
    rows = pc.and_(pc.is_valid(at), where)  # [N] bool: the rows that take a decision
    taken = decisions.take(pc.filter(at, rows))  # [R]: their decisions, in row order
    if not len(taken):
        return table
    rows = pa.concat_arrays(rows.chunks) if isinstance(rows, pa.ChunkedArray) else rows
    for name in decisions.column_names[1:]:
        if name in table.column_names:
            new = taken.column(name).cast(table.schema.field(name).type).combine_chunks()
            table = _set_column(table, name, pc.replace_with_mask(table.column(name), rows, new))
    return table


def _reset_dedupe(table: pa.Table) -> pa.Table:
    """Before dedupe's decisions apply: no row is a duplicate (a catalog of the earlier layout
    held dedupe's statuses in its parts)."""
    if "status" in table.column_names:
        was = pc.fill_null(pc.equal(table.column("status"), STATUS_DUPLICATE), False)  # [N]
        if pc.any(was).as_py():
            table = _set_column(table, "status", pc.if_else(was, STATUS_OK, table.column("status")))
            if "reason" in table.column_names:
                table = _set_column(table, "reason", pc.if_else(was, "", table.column("reason")))
    if "dup_group" in table.column_names:
        table = _set_column(table, "dup_group", pa.array(np.full(len(table), -1, dtype=np.int64)))
    return table


def _ok(table: pa.Table) -> pa.Array:
    """[N] bool: the rows whose status is ok (every row when status is not read)."""
    if "status" not in table.column_names:
        return pa.array(np.ones(len(table), dtype=bool))
    ok = pc.fill_null(pc.equal(table.column("status"), STATUS_OK), False)
    return pa.concat_arrays(ok.chunks) if isinstance(ok, pa.ChunkedArray) else ok


def join_decisions(build: Path, table: pa.Table) -> pa.Table:
    """Ingested rows -> the rows as dedupe and bin left them. A decision counts only where its
    stage could have made it (dedupe marks rows ingest kept; bin names kept rows), so a file
    an earlier dedupe saw but a later ingest rejected keeps ingest's word."""
    wanted = tuple(c for c in DECISION_COLUMNS if c in table.column_names)  # only those asked
    decisions = read_decisions(build, DECISIONS_PATH, wanted) if wanted else None
    if decisions is not None:
        table = _reset_dedupe(table)
        table = _apply(table, decisions, _ok(table))
    bins = read_decisions(build, BIN_ASSIGN_PATH, BIN_COLUMNS) if "res_bin" in table.column_names else None
    if bins is not None:
        table = _set_column(table, "res_bin", pa.repeat(pa.scalar("", pa.string()), len(table)))
        table = _apply(table, bins, _ok(table))
    return table


def read_rows(build: Path, uids: Iterable[str]) -> list[dict]:
    """The ingested rows of a few uids (every column), without reading the others' columns."""
    parts = part_paths(build)
    if not parts:
        raise _no_catalog(build)
    wanted = pa.array(sorted(set(uids)), type=pa.string())
    dataset = ds.dataset([str(p) for p in parts], schema=CATALOG_SCHEMA, format="parquet")
    return dataset.to_table(filter=pc.field("uid").isin(wanted)).to_pylist()


def read_catalog(build: Path, columns: Iterable[str] | None = None) -> pa.Table:
    """The catalog as the stages left it (ingest's rows joined with dedupe's and bin's decisions),
    rows in a fixed order (by uid), whatever order parts were written; `columns`: only these
    (and uid; status is read too where a decision depends on it)."""
    wanted = None if columns is None else list(dict.fromkeys(["uid", *columns]))
    needed = None if wanted is None else list(dict.fromkeys([*wanted, "status"]))
    table = join_decisions(build, read_ingested(build, needed))
    return table if wanted is None else table.select(wanted)


# Called with the build folder after `write_catalog`: lineage registers how the stage records
# take the rewrite (it imports this module, so this one cannot import it).
AFTER_WRITE_CATALOG: list[Callable[[Path], None]] = []


def write_catalog(build: Path, table: pa.Table) -> None:
    """Replace the catalog's rows by those of `table` (tools and tests), each part keeping its
    uids (ingest's resume markers survive), and drop the decision files, so `read_catalog`
    gives these rows back as they are. Every row is kept."""
    table = table.cast(CATALOG_SCHEMA)
    uids = table.column("uid")
    if pc.count_distinct(uids).as_py() != len(uids):
        raise ValueError("write_catalog: the catalog holds a uid twice; re-run `inf590k ingest`")
    seen = 0
    for path in part_paths(build):
        part_uids = pq.read_table(path, columns=["uid"]).column("uid")
        at = pc.index_in(part_uids, value_set=uids)
        if at.null_count:
            missing = part_uids.filter(pc.is_null(at))[0].as_py()
            raise ValueError(f"write_catalog would drop row {missing} of {path.name}")
        metadata = pq.read_schema(path).metadata
        write_parquet_atomic(table.take(at).replace_schema_metadata(metadata), path)
        seen += len(part_uids)
    if seen != table.num_rows:
        raise ValueError(f"write_catalog: table has {table.num_rows} rows, parts hold {seen}")
    for path in decision_paths(build):
        path.unlink()
    for hook in AFTER_WRITE_CATALOG:
        hook(build)


def write_columns(build: Path, relpath: str, table: pa.Table) -> Path:
    """A stage's decisions (uid + its columns), atomically, beside the catalog."""
    path = Path(build) / relpath
    write_parquet_atomic(table, path)
    return path


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
