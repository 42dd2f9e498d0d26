"""The shard plan: which kept row goes to which shard, in which order, and the sources table.

Deterministic: the plan is computed up front from the catalog alone: uids of a bin sorted,
then shuffled by a generator seeded from (seed, bin); each bin is cut on its own into the
fewest shards of near-equal length within the targets (--shard-samples at most; --shard-bytes
passed by less than one sample at most), never by what a worker did: a bin smaller than the
targets is one short shard and never shortens the shards of other bins. The shard count is then raised to a
multiple of --shard-multiple if asked. A shard's plan digest covers everything that decides
its bytes.

Bytes are estimated from the rows before anything is encoded (`estimated_bytes`):
PNG_BYTES_PER_PIXEL per stored pixel for the 8-bit PNG, the raw frame (2 bytes per pixel and
an .npy header) where 16-bit frames are kept, and SAMPLE_OVERHEAD_BYTES per sample for the
tar headers, their padding and the JSON. The planning works on Arrow columns and numpy row
numbers (`plan_layout`: each shard's rows as indices into the catalog table), not one Python
dict per row; `jobs.py` writes the rows in shard order to the plan file.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from inf590k.build import catalog as cat
from inf590k.dataset.layout import (
    CATALOG_SCHEMA,
)
from inf590k.execution.units import ExecutionOptions
from inf590k.fsutil import available_cores

# ----------------------------------------------------------------------------- constants

FORMAT_VERSION = 3  # bump when the bytes of a sample change for the same catalog row


DEFAULT_SHARD_SAMPLES = 10_000  # samples per shard at most
DEFAULT_SHARD_BYTES = 1_000_000_000  # ~1 GB per shard: the Hugging Face Hub's advice


# The PNG of a stored 8-bit pixel (Up filter, Huffman-only; see tar.png_params): 0.16 to 0.67
# bytes per pixel in shards of the real sample frames and of synth, most 0.3-0.6. The upper
# middle, so a shard of noisy frames lands near its byte target and one of smooth frames under it.
PNG_BYTES_PER_PIXEL = 0.6


SAMPLE_OVERHEAD_BYTES = 3072  # 3 tar headers, their padding to 512 bytes, the ~700-byte JSON


NPY_HEADER_BYTES = 128  # numpy's .npy header of a 2-D uint16 frame




_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


def parse_size(text: str | int) -> int:
    """A byte count from `1000000000`, `1e9`, `1GB`, `500 MB` or `2GiB` (ValueError otherwise)."""
    if isinstance(text, int):
        if text < 1:
            raise ValueError(f"{text!r}: a size must be at least 1 byte")
        return text
    cleaned = str(text).strip().lower().replace(" ", "").replace("_", "")
    number = cleaned.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = cleaned[len(number) :]
    try:
        value = float(number) * _SIZE_UNITS[unit]
    except (ValueError, KeyError):
        raise ValueError(
            f"{text!r} is not a size: give bytes, e.g. 1000000000, 1e9, 1GB, 500MB or 2GiB"
        ) from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite size: give bytes, e.g. 1GB")
    if value < 1:
        raise ValueError(f"{text!r}: a size must be at least 1 byte")
    return int(value)


@dataclass(frozen=True)
class ShardConfig:
    """One field per `inf590k shard` option."""

    build: Path
    out: Path
    max_count: int = DEFAULT_SHARD_SAMPLES  # target samples per shard (--shard-samples)
    max_size: int = DEFAULT_SHARD_BYTES  # target bytes per shard, estimated (--shard-bytes)
    shard_multiple: int = 1  # shard count a multiple of this, if asked
    keep_16bit: bool = False  # add the raw 16-bit frame (.npy) to rows whose file was 16-bit
    png_level: int = 1  # zlib level of cv2.imencode: encoding dominates the build
    seed: int = 0  # sample order inside each bin
    split: str = "train"
    name: str = "inf590k"  # the dataset name in _info.json
    execution: ExecutionOptions = field(default_factory=ExecutionOptions)


@dataclass(frozen=True)
class PlannedShard:
    """One shard of the plan, before its rows are read: its catalog rows as indices."""

    relpath: str  # "<bin>/<bin>-000000.tar", relative to data/ (as _info.json names it)
    rows: np.ndarray  # (samples,) int64: row numbers in the catalog table, in tar order
    estimated_bytes: int  # of the tar, from the rows (`estimated_bytes`)


@dataclass(frozen=True)
class KeptSource:
    """What the sources table needs of one source's kept rows."""

    samples: int
    modality: str | None  # the most common non-empty value, the first seen on a tie
    license: str | None


# ----------------------------------------------------------------------------- sources table

def _most_common(values: pa.ChunkedArray | pa.Array, sources: pa.ChunkedArray | pa.Array) -> dict[str, str]:
    """Per source, its most common non-empty value, the one seen first on a tie (rows in
    order): `Counter.most_common` of each source's values, by Arrow group-by."""
    position = pa.array(np.arange(len(values)))
    table = pa.table({"source": sources, "value": values, "position": position})
    table = table.filter(pc.fill_null(pc.not_equal(table.column("value"), ""), False))
    grouped = table.group_by(["source", "value"], use_threads=False).aggregate(
        [("position", "count"), ("position", "min")]
    )
    best: dict[str, tuple[int, int, str]] = {}
    for source, value, count, first in zip(
        *(grouped.column(c).to_pylist() for c in ("source", "value", "position_count", "position_min")), strict=True
    ):
        key = (-count, first, value)
        if source not in best or key < best[source]:
            best[source] = key
    return {source: value for source, (_, _, value) in best.items()}


def kept_sources(catalog: pa.Table, kept: np.ndarray) -> dict[str, KeptSource]:
    """Samples, most common modality and licence of each source over the `kept` rows
    ((rows,) indices into `catalog`, in the order that breaks ties)."""
    rows = catalog.select(["source", "modality", "license"]).take(pa.array(kept))
    sources = rows.column("source")
    counted = pc.value_counts(sources.combine_chunks()) if len(sources) else []
    modality = _most_common(rows.column("modality"), sources)
    license_text = _most_common(rows.column("license"), sources)
    return {
        entry["values"]: KeptSource(entry["counts"], modality.get(entry["values"]), license_text.get(entry["values"]))
        for entry in (counted.to_pylist() if len(sources) else [])
    }


def source_kind(source_id: str, recorded: Mapping, modality: str | None) -> str:
    """ "synthetic" (made by `inf590k synth`), "self-collected" (a folder source) or "public"."""
    if modality == "synthetic":
        return "synthetic"
    if source_id == "folder" or recorded.get("license") == "user-provided":
        return "self-collected"
    return "public"


def known_license_link(license_text: str | None) -> str | None:
    """A URL for the licences whose text names them exactly; None otherwise."""
    links = {
        "CC BY 4.0": "https://creativecommons.org/licenses/by/4.0/",
        "CC BY-SA 4.0": "https://creativecommons.org/licenses/by-sa/4.0/",
        "CC BY-NC 4.0": "https://creativecommons.org/licenses/by-nc/4.0/",
        "CC BY-NC-SA 4.0": "https://creativecommons.org/licenses/by-nc-sa/4.0/",
        "CC0 1.0": "https://creativecommons.org/publicdomain/zero/1.0/",
        "MIT": "https://opensource.org/license/mit",
    }
    return links.get((license_text or "").strip())


def sources_table(
    kept: Mapping[str, KeptSource], recorded: Mapping[str, dict], previous: list[dict]
) -> list[dict]:
    """The sources table: class ids of `previous` kept, new sources numbered after them.

    Licence and modality come from the kept rows themselves (frames made by `synth` say
    `synthetic` and carry the synth licence), names and citations from the build's record of
    the manifest unless the frames are synthetic. Sources of `previous` without samples now
    keep their row (samples 0) so that their id is never given to another source.
    """
    by_id = {entry["id"]: dict(entry, samples=0) for entry in previous}
    next_id = max((int(e["class_id"]) for e in previous), default=-1) + 1
    for source in sorted(kept):
        facts = recorded.get(source, {})
        modality = kept[source].modality or facts.get("modality")
        kind = source_kind(source, facts, modality)
        license_text = kept[source].license or facts.get("license")
        if kind == "synthetic":
            name = f"Synthetic infrared frames in the {source} folder layout"
            citation = "Rendered by `inf590k synth`: procedural frames, no real recording."
            homepage = ""
        else:
            name = facts.get("name") or source
            citation = facts.get("citation") or ""
            homepage = facts.get("homepage") or ""
        entry = by_id.get(source) or {"id": source, "class_id": next_id}
        if source not in by_id:
            next_id += 1
        entry.update(
            name=name,
            kind=kind,
            license=license_text or "unknown",
            license_link=facts.get("license_link") or known_license_link(license_text),
            modality=modality or "unknown",
            citation=citation,
            homepage=homepage,
            samples=kept[source].samples,
        )
        by_id[source] = entry
    return sorted(by_id.values(), key=lambda e: int(e["class_id"]))


# ----------------------------------------------------------------------------- planning

def _bin_rng(seed: int, bin_name: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}/{bin_name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def estimated_bytes(table: pa.Table, keep_16bit: bool) -> np.ndarray:
    """The estimated tar bytes of each row's sample (see the module's docstring). -> (rows,)"""
    width = table.column("width").to_numpy(zero_copy_only=False).astype(np.int64)
    height = table.column("height").to_numpy(zero_copy_only=False).astype(np.int64)
    pixels = width * height
    estimate = np.ceil(pixels * PNG_BYTES_PER_PIXEL).astype(np.int64) + SAMPLE_OVERHEAD_BYTES
    if keep_16bit:
        sixteen = pc.fill_null(pc.equal(table.column("bit_depth"), 16), False)
        raw = sixteen.to_numpy(zero_copy_only=False)
        estimate += np.where(raw, 2 * pixels + NPY_HEADER_BYTES, 0)
    return estimate


def run_bounds(rows: int, count: int) -> np.ndarray:
    """Start offsets of `count` consecutive runs whose lengths differ by at most one, and the
    end: (count + 1,). The first `rows % count` runs are the longer ones."""
    base, extra = divmod(rows, count)
    lengths = np.full(count, base, dtype=np.int64)
    lengths[:extra] += 1
    return np.concatenate([[0], np.cumsum(lengths)])


def even_runs(rows: list, count: int) -> list[list]:
    """`count` consecutive runs of `rows` whose lengths differ by at most one."""
    bounds = run_bounds(len(rows), count)
    return [rows[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]


def _largest_run(estimates: np.ndarray, count: int) -> int:
    """Estimated bytes of the largest of `count` even runs."""
    return int(np.add.reduceat(estimates, run_bounds(len(estimates), count)[:-1]).max())


def bin_shard_count(estimates: np.ndarray, max_count: int, max_size: int) -> int:
    """The fewest even shards of one bin (rows in shard order) within both targets.

    A shard may pass the byte target by less than its largest sample (as a writer that closes
    a shard after the sample that crosses the target), so one sample over the target does not
    cut its bin into shards of one. Starts from what the totals need; while a run is over (a
    run of large frames), doubles the count, then bisects back to a count whose one-fewer is
    over: a few numpy passes over the bin.
    """
    rows = len(estimates)
    if rows == 0:
        return 0
    limit = max_size + int(estimates.max())
    count = max(1, math.ceil(rows / max_count), math.ceil(int(estimates.sum()) / max_size))
    count = min(count, rows)

    def fits(shards: int) -> bool:
        return _largest_run(estimates, shards) < limit

    if fits(count):
        return count
    low, high = count, min(rows, 2 * count)  # low: over the target
    while not fits(high):
        low, high = high, min(rows, 2 * high)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def _round_to_multiple(sizes: Mapping[str, int], counts: dict[str, int], multiple: int) -> None:
    """Extra shards, one at a time, to the bin whose shards are longest now."""
    samples = sum(sizes.values())
    target = math.ceil(sum(counts.values()) / multiple) * multiple
    if target > samples:
        raise ValueError(
            f"--shard-multiple {multiple} needs {target} shards but there are only {samples} "
            "samples: lower --shard-multiple"
        )
    while sum(counts.values()) < target:
        splittable = [b for b in sorted(sizes) if counts[b] < sizes[b]]
        longest = max(splittable, key=lambda b: sizes[b] / counts[b])
        counts[longest] += 1


def shard_counts(
    estimates: Mapping[str, np.ndarray], max_count: int, max_size: int, multiple: int = 1
) -> dict[str, int]:
    """Shards per bin: each bin on its own within the targets, then the total raised to a
    multiple of `multiple`. `estimates`: estimated bytes per row of each bin, in shard order."""
    counts = {b: bin_shard_count(e, max_count, max_size) for b, e in estimates.items()}
    if multiple > 1:
        _round_to_multiple({b: len(e) for b, e in estimates.items()}, counts, multiple)
    return counts


def _sorted_by_uid(uids: pa.ChunkedArray) -> bool:
    """Whether `uids` ascend (as `read_catalog` gives them): one vectorized comparison."""
    if len(uids) < 2:
        return True
    return bool(pc.all(pc.less_equal(uids.slice(0, len(uids) - 1), uids.slice(1))).as_py())


def kept_rows_by_bin(build: Path, catalog: pa.Table) -> dict[str, np.ndarray]:
    """The kept rows of `catalog` by resolution bin, bins in name order, each bin's rows
    ((rows,) int64 indices into `catalog`) sorted by uid. No column but the row numbers is
    copied: the bins are dictionary codes, the uid order the catalog's own where it has one."""
    ok = pc.fill_null(pc.equal(catalog.column("status"), cat.STATUS_OK), False)
    kept = np.flatnonzero(ok.to_numpy(zero_copy_only=False))  # (kept,)
    bins = catalog.column("res_bin").take(pa.array(kept))
    unbinned = pc.fill_null(pc.equal(bins, ""), True)
    if pc.any(unbinned).as_py():
        first = catalog.column("uid")[int(kept[pc.index(unbinned, True).as_py()])].as_py()
        raise ValueError(
            f"{pc.sum(unbinned).as_py()} kept rows have no resolution bin (e.g. {first}): "
            f"run `inf590k bin --build {build}` first"
        )
    if not _sorted_by_uid(catalog.column("uid")):  # a table not read by read_catalog
        by_uid = pc.sort_indices(catalog.column("uid").take(pa.array(kept))).to_numpy()
        kept, bins = kept[by_uid], bins.take(pa.array(by_uid))
    encoded = pc.dictionary_encode(bins.combine_chunks())  # (kept,) codes, the names once
    names = encoded.dictionary.to_pylist()
    rank = np.argsort(np.array(names, dtype=object), kind="stable")  # name order: Python's
    code_rank = np.empty(len(names), np.int64)
    code_rank[rank] = np.arange(len(names))
    codes = code_rank[encoded.indices.to_numpy(zero_copy_only=False)]
    order = np.argsort(codes, kind="stable")  # by bin, uid order kept inside each bin
    ends = np.cumsum(np.bincount(codes, minlength=len(names)))
    starts = np.concatenate([[0], ends[:-1]])
    return {
        names[rank[index]]: kept[order[start:end]]
        for index, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True))
    }


def kept_by_bin(build: Path, catalog: pa.Table | None = None) -> dict[str, pa.Table]:
    """Kept rows by resolution bin, each sorted by uid, from `catalog` (read when not given)."""
    table = cat.read_catalog(build) if catalog is None else catalog
    table = table.select(list(CATALOG_SCHEMA.names)).cast(CATALOG_SCHEMA)
    return {b: table.take(pa.array(rows)) for b, rows in kept_rows_by_bin(build, table).items()}


def _check_options(config: ShardConfig) -> None:
    if config.max_count < 1 or config.max_size < 1:
        raise ValueError(
            "--shard-samples (--max-count) and --shard-bytes (--max-size) must be positive"
        )
    if config.shard_multiple < 1:
        raise ValueError(f"--shard-multiple must be 1 or more, got {config.shard_multiple}")
    if not 0 <= config.png_level <= 9:
        raise ValueError(f"--png-level must be 0..9, got {config.png_level}")


def plan_digest(
    keep_16bit: bool, png_level: int, relpath: str, classes: list[int], jsons: Iterable[bytes | memoryview]
) -> str:
    """Digest of everything that decides a shard's tar bytes: the format, the options, its
    name, each sample's class and JSON (`jsons`: the .json members one after the other, in
    pieces)."""
    header = json.dumps([FORMAT_VERSION, keep_16bit, png_level, relpath, classes])
    digest = hashlib.sha256(header.encode())
    for piece in jsons:
        digest.update(piece)
    return digest.hexdigest()


def planning_threads(config: ShardConfig) -> int:
    """Threads of the planning: the workers asked for, at most this machine's cores (the
    workers of a cluster are not here)."""
    return min(config.execution.workers or available_cores(), available_cores())


def plan_layout(config: ShardConfig, catalog: pa.Table, by_bin: Mapping[str, np.ndarray] | None = None) -> list[PlannedShard]:
    """The shards of a build, as row numbers of `catalog` (independent of workers and `out`):
    each bin's uid-sorted kept rows shuffled by its own generator, cut into `shard_counts`
    even runs. `by_bin`: `kept_rows_by_bin(catalog)` when the caller has it already."""
    if by_bin is None:
        by_bin = kept_rows_by_bin(Path(config.build), catalog)
    sizes = catalog.select(["width", "height", "bit_depth"])
    shuffled = {b: rows[_bin_rng(config.seed, b).permutation(len(rows))] for b, rows in by_bin.items()}
    estimates = {b: estimated_bytes(sizes.take(pa.array(rows)), config.keep_16bit) for b, rows in shuffled.items()}
    counts = shard_counts(estimates, config.max_count, config.max_size, config.shard_multiple)
    shards = []
    for bin_name in sorted(shuffled):
        bounds = run_bounds(len(shuffled[bin_name]), counts[bin_name]).tolist()
        for index, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            shards.append(PlannedShard(
                relpath=f"{bin_name}/{bin_name}-{index:06d}.tar",
                rows=shuffled[bin_name][start:end],
                estimated_bytes=int(estimates[bin_name][start:end].sum()),
            ))  # fmt: skip
    return shards
