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
tar headers, their padding and the JSON. The planning works on Arrow columns (counts with
numpy, the JSON members built column by column by Arrow kernels, chunks of rows in parallel
threads), not one Python dict per row.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from inf590k.build import catalog as cat
from inf590k.build.shard.sample_json import parallel_sample_jsons, sample_jsons
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
class ShardJob:
    """Everything one worker needs to write one shard (an Arrow table pickles fast)."""

    build: Path
    out: Path
    relpath: str  # "<bin>/<bin>-000000.tar", relative to data/ (as _info.json names it)
    table: pa.Table  # catalog rows in tar order (CATALOG_SCHEMA)
    classes: tuple[int, ...]  # class id per row (the .cls member)
    keep_16bit: bool
    png_level: int
    plan: str  # digest of everything that decides the tar bytes
    estimated_bytes: int = 0  # of the tar, from the rows (`estimated_bytes`)

    @cached_property
    def jsons(self) -> tuple[bytes, ...]:
        """The .json member per row, made again where it is used (in the worker): the plan
        keeps only its digest, so the driver does not hold every sample's JSON."""
        return tuple(sample_jsons(self.table))

    @cached_property
    def rows(self) -> tuple[dict, ...]:
        """The rows as dicts, made where they are used (in the worker)."""
        return tuple(self.table.to_pylist())

    def __len__(self) -> int:
        return self.table.num_rows


# ----------------------------------------------------------------------------- sources table

def _most_common(values: Iterable[str | None]) -> str | None:
    counted = Counter(v for v in values if v)
    return counted.most_common(1)[0][0] if counted else None


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
    kept: Mapping[str, list[dict]], recorded: Mapping[str, dict], previous: list[dict]
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
        rows = kept[source]
        facts = recorded.get(source, {})
        modality = _most_common(r.get("modality") for r in rows) or facts.get("modality")
        kind = source_kind(source, facts, modality)
        license_text = _most_common(r.get("license") for r in rows) or facts.get("license")
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
            samples=len(rows),
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


def kept_by_bin(build: Path, catalog: pa.Table | None = None) -> dict[str, pa.Table]:
    """Kept rows by resolution bin, each sorted by uid, from `catalog` (read when not given)."""
    table = cat.read_catalog(build) if catalog is None else catalog
    table = table.select(list(CATALOG_SCHEMA.names)).cast(CATALOG_SCHEMA)
    table = table.filter(pc.equal(table.column("status"), cat.STATUS_OK))
    unbinned = pc.or_(pc.is_null(table.column("res_bin")), pc.equal(table.column("res_bin"), ""))
    unbinned = pc.fill_null(unbinned, True)
    if pc.any(unbinned).as_py():
        first = table.filter(unbinned).column("uid")[0].as_py()
        raise ValueError(
            f"{pc.sum(unbinned).as_py()} kept rows have no resolution bin (e.g. {first}): "
            f"run `inf590k bin --build {build}` first"
        )
    table = table.sort_by([("res_bin", "ascending"), ("uid", "ascending")])
    bins = table.column("res_bin").to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.concatenate([[True], bins[1:] != bins[:-1]]))
    ends = np.append(starts[1:], len(bins))
    return {
        str(bins[start]): table.slice(int(start), int(end - start))
        for start, end in zip(starts, ends, strict=True)
    }


def _check_options(config: ShardConfig) -> None:
    if config.max_count < 1 or config.max_size < 1:
        raise ValueError(
            "--shard-samples (--max-count) and --shard-bytes (--max-size) must be positive"
        )
    if config.shard_multiple < 1:
        raise ValueError(f"--shard-multiple must be 1 or more, got {config.shard_multiple}")
    if not 0 <= config.png_level <= 9:
        raise ValueError(f"--png-level must be 0..9, got {config.png_level}")


def _plan_digest(config: ShardConfig, relpath: str, classes: tuple[int, ...], jsons: Iterable[bytes]) -> str:
    header = json.dumps([FORMAT_VERSION, config.keep_16bit, config.png_level, relpath, classes])
    return hashlib.sha256(header.encode() + b"".join(jsons)).hexdigest()




def _planning_threads(config: ShardConfig) -> int:
    """Threads of the planning: the workers asked for, at most this machine's cores (the
    workers of a cluster are not here)."""
    return min(config.execution.workers or available_cores(), available_cores())


def _bin_jobs(
    config: ShardConfig, bin_name: str, rows: pa.Table, count: int, classes: Mapping[str, int], estimates: np.ndarray
) -> list[ShardJob]:
    """The jobs of one bin, its rows already in shard order. Each shard's sample JSON is made
    for its digest and let go (the worker makes it again): the driver holds the rows only."""
    class_ids = [classes[s] for s in rows.column("source").to_pylist()]
    bounds = run_bounds(rows.num_rows, count)
    spans = list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))
    tables = [rows.take(np.arange(start, end)) for start, end in spans]  # copies: a slice
    # pickles the whole bin
    relpaths = [f"{bin_name}/{bin_name}-{index:06d}.tar" for index in range(len(spans))]
    shard_classes = [tuple(class_ids[start:end]) for start, end in spans]

    def digest(index: int) -> str:
        jsons = parallel_sample_jsons(tables[index], 1)
        return _plan_digest(config, relpaths[index], shard_classes[index], jsons)

    threads = min(_planning_threads(config), len(spans))
    if threads > 1:  # Arrow's kernels release the GIL: the shards' JSON on several cores
        with ThreadPoolExecutor(threads) as pool:
            digests = list(pool.map(digest, range(len(spans))))
    else:
        digests = [digest(index) for index in range(len(spans))]
    return [
        ShardJob(
            build=Path(config.build),
            out=Path(config.out),
            relpath=relpaths[index],
            table=tables[index],
            classes=shard_classes[index],
            keep_16bit=config.keep_16bit,
            png_level=config.png_level,
            plan=digests[index],
            estimated_bytes=int(estimates[start:end].sum()),
        )
        for index, (start, end) in enumerate(spans)
    ]


def plan_shards(
    config: ShardConfig,
    classes: Mapping[str, int] | None = None,
    by_bin: Mapping[str, pa.Table] | None = None,
) -> list[ShardJob]:
    """The full, deterministic shard plan of a build (independent of workers and of `out`).

    `classes`: class id per source (the sources table); default: ids in sorted source order.
    `by_bin`: the kept rows by bin (`kept_by_bin`), when the caller has read them already.
    The options are checked by the caller (`shard`).
    """
    if by_bin is None:
        by_bin = kept_by_bin(Path(config.build))
    if classes is None:
        sources = sorted({s for rows in by_bin.values() for s in rows.column("source").to_pylist()})
        classes = {s: i for i, s in enumerate(sources)}
    shuffled = {}
    for bin_name in sorted(by_bin):
        rows = by_bin[bin_name]
        order = _bin_rng(config.seed, bin_name).permutation(rows.num_rows)
        shuffled[bin_name] = rows.take(order)
    estimates = {b: estimated_bytes(rows, config.keep_16bit) for b, rows in shuffled.items()}
    counts = shard_counts(estimates, config.max_count, config.max_size, config.shard_multiple)
    return [
        job
        for bin_name in sorted(shuffled)
        for job in _bin_jobs(
            config, bin_name, shuffled[bin_name], counts[bin_name], classes, estimates[bin_name]
        )
    ]
