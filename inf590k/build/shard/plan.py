"""The shard plan: which kept row goes to which shard, in which order, and the sources table.

Deterministic: the plan is computed up front from the catalog alone: uids of a bin sorted,
then shuffled by a generator seeded from (seed, bin); each bin is cut into shards of
near-equal length, all within 2x of the shortest (unless that one is under
--min-shard-length) and their count a multiple of --shard-multiple, never by what a worker
did. A shard's plan digest covers everything that decides its bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from inf590k.build import catalog as cat
from inf590k.dataset.layout import (
    sample_json,
)
from inf590k.execution.units import ExecutionOptions

# ----------------------------------------------------------------------------- constants

FORMAT_VERSION = 3  # bump when the bytes of a sample change for the same catalog row


MIN_SHARD_LENGTH = 16  # samples: balancing never cuts every shard below this for one small bin


SAMPLE_OVERHEAD_BYTES = 4096  # 3 tar headers + JSON + PNG headers, per sample (estimate)


@dataclass(frozen=True)
class ShardConfig:
    """One field per `inf590k shard` option."""

    build: Path
    out: Path
    max_count: int = 10_000  # samples per shard
    max_size: int = 1_000_000_000  # bytes per shard, counted as raw pixels + overhead: a bound
    shard_multiple: int = 1  # shard count a multiple of this (ranks x loader workers)
    min_shard_length: int = MIN_SHARD_LENGTH  # shortest shard the 2x balance may cut to
    keep_16bit: bool = False  # add the raw 16-bit frame (.npy) to rows whose file was 16-bit
    png_level: int = 1  # zlib level of cv2.imencode: encoding dominates the build
    seed: int = 0  # sample order inside each bin
    split: str = "train"
    name: str = "inf590k"  # the dataset name in _info.json
    execution: ExecutionOptions = field(default_factory=ExecutionOptions)


@dataclass(frozen=True)
class ShardJob:
    """Everything one worker needs to write one shard."""

    build: Path
    out: Path
    relpath: str  # "<bin>/<bin>-000000.tar", relative to data/ (as _info.json names it)
    rows: tuple[dict, ...]  # catalog rows in tar order
    classes: tuple[int, ...]  # class id per row (the .cls member)
    jsons: tuple[bytes, ...]  # the .json member per row
    keep_16bit: bool
    png_level: int
    plan: str  # digest of everything that decides the tar bytes


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


def _pixel_bytes(row: Mapping, keep_16bit: bool) -> int:
    pixels = int(row["width"]) * int(row["height"])
    raw = 2 * pixels if keep_16bit and row.get("bit_depth") == 16 else 0  # the .npy member
    return pixels + raw + SAMPLE_OVERHEAD_BYTES


def even_runs(rows: list[dict], count: int) -> list[list[dict]]:
    """`count` consecutive runs whose lengths differ by at most one."""
    base, extra = divmod(len(rows), count)
    runs, start = [], 0
    for index in range(count):
        length = base + (index < extra)
        runs.append(rows[start : start + length])
        start += length
    return runs


def _limit_count(rows: list[dict], max_count: int, max_size: int, keep_16bit: bool) -> int:
    """The fewest shards that keep every shard of a bin within the count and size limits."""
    count = max(1, math.ceil(len(rows) / max_count))
    while count < len(rows) and any(
        sum(_pixel_bytes(r, keep_16bit) for r in run) > max_size for run in even_runs(rows, count)
    ):
        count += 1
    return count


def _shortest(by_bin: Mapping[str, list[dict]], counts: Mapping[str, int]) -> int:
    return min(len(rows) // counts[b] for b, rows in by_bin.items())


def _cap_lengths(by_bin: Mapping[str, list[dict]], counts: dict[str, int], min_length: int) -> None:
    """Split bins until no shard is over twice the shortest one (if that one holds min_length+).

    A bin of n split into the fewest shards of at most 2m holds more than m per shard, so the
    shortest shard stays the shortest and every length lands within 2x of it.
    """
    shortest = _shortest(by_bin, counts)
    if shortest < min_length:
        return  # shrinking every shard to fit that bin would make them all tiny
    for bin_name, rows in by_bin.items():
        counts[bin_name] = max(counts[bin_name], math.ceil(len(rows) / (2 * shortest)))


def _round_to_multiple(
    by_bin: Mapping[str, list[dict]], counts: dict[str, int], multiple: int
) -> None:
    """Extra shards, one at a time, to the bin whose shards are longest now."""
    samples = sum(len(rows) for rows in by_bin.values())
    target = math.ceil(sum(counts.values()) / multiple) * multiple
    if target > samples:
        raise ValueError(
            f"--shard-multiple {multiple} needs {target} shards but there are only {samples} "
            "samples: lower --shard-multiple"
        )
    while sum(counts.values()) < target:
        splittable = [b for b in sorted(by_bin) if counts[b] < len(by_bin[b])]
        longest = max(splittable, key=lambda b: len(by_bin[b]) / counts[b])
        counts[longest] += 1


def shard_counts(
    by_bin: Mapping[str, list[dict]],
    max_count: int,
    max_size: int,
    keep_16bit: bool,
    multiple: int,
    min_length: int = MIN_SHARD_LENGTH,
) -> dict[str, int]:
    """Shards per bin: within the limits, lengths within 2x, total a multiple of `multiple`.

    Shards are shortened to within twice the shortest bin's shard, unless that shard holds
    fewer than `min_length` samples: then that bin stays one short shard (see `short_bins`).
    """
    counts = {b: _limit_count(rows, max_count, max_size, keep_16bit) for b, rows in by_bin.items()}
    while True:
        before = dict(counts)
        _cap_lengths(by_bin, counts, min_length)
        _round_to_multiple(by_bin, counts, multiple)
        if counts == before:
            return counts


def short_bins(lengths_by_bin: Mapping[str, list[int]]) -> str:
    """One summary line naming the bins whose shards stay under half the longest, else ""."""
    longest = max(max(lengths) for lengths in lengths_by_bin.values())
    short = {
        b: lengths for b, lengths in sorted(lengths_by_bin.items()) if 2 * min(lengths) < longest
    }
    if not short:
        return ""
    shortest = min(min(lengths) for lengths in short.values())
    names = ", ".join(f"{b} ({sum(lengths)})" for b, lengths in short.items())
    bins = "bin is" if len(short) == 1 else f"{len(short)} bins are"
    return (
        f"note: shards not within 2x: {bins} under half the longest shard ({longest}): {names}; "
        f"--min-shard-length {shortest} shortens every shard to within 2x of them"
    )


def _kept_rows(build: Path, catalog: pa.Table | None = None) -> dict[str, list[dict]]:
    """Kept rows by resolution bin, from `catalog` (the build's, read when not given)."""
    table = cat.read_catalog(build) if catalog is None else catalog
    table = table.filter(pa.compute.equal(table.column("status"), cat.STATUS_OK))
    rows = table.to_pylist()  # sorted by uid (read_catalog)
    unbinned = [r["uid"] for r in rows if not r["res_bin"]]
    if unbinned:
        raise ValueError(
            f"{len(unbinned)} kept rows have no resolution bin (e.g. {unbinned[0]}): "
            f"run `inf590k bin --build {build}` first"
        )
    by_bin: dict[str, list[dict]] = {}
    for row in rows:
        by_bin.setdefault(row["res_bin"], []).append(row)
    return by_bin


def _check_options(config: ShardConfig) -> None:
    if config.max_count < 1 or config.max_size < 1:
        raise ValueError("--max-count and --max-size must be positive")
    if config.shard_multiple < 1:
        raise ValueError(f"--shard-multiple must be 1 or more, got {config.shard_multiple}")
    if config.min_shard_length < 1:
        raise ValueError(f"--min-shard-length must be 1 or more, got {config.min_shard_length}")
    if not 0 <= config.png_level <= 9:
        raise ValueError(f"--png-level must be 0..9, got {config.png_level}")


def plan_shards(
    config: ShardConfig,
    classes: Mapping[str, int] | None = None,
    by_bin: dict[str, list[dict]] | None = None,
) -> list[ShardJob]:
    """The full, deterministic shard plan of a build (independent of workers and of `out`).

    `classes`: class id per source (the sources table); default: ids in sorted source order.
    `by_bin`: the kept rows by bin, when the caller has read them already. The options are
    checked by the caller (`shard`).
    """
    if by_bin is None:
        by_bin = _kept_rows(Path(config.build))
    if classes is None:
        sources = sorted({r["source"] for rows in by_bin.values() for r in rows})
        classes = {s: i for i, s in enumerate(sources)}
    shuffled = {}
    for bin_name in sorted(by_bin):
        rows = by_bin[bin_name]
        order = _bin_rng(config.seed, bin_name).permutation(len(rows))
        shuffled[bin_name] = [rows[i] for i in order]
    counts = shard_counts(
        shuffled,
        config.max_count,
        config.max_size,
        config.keep_16bit,
        config.shard_multiple,
        config.min_shard_length,
    )
    jobs = []
    for bin_name in sorted(shuffled):
        for index, shard_rows in enumerate(even_runs(shuffled[bin_name], counts[bin_name])):
            relpath = f"{bin_name}/{bin_name}-{index:06d}.tar"
            shard_classes = tuple(classes[r["source"]] for r in shard_rows)
            jsons = tuple(sample_json(r) for r in shard_rows)
            plan = hashlib.sha256(
                json.dumps(
                    [FORMAT_VERSION, config.keep_16bit, config.png_level, relpath, shard_classes],
                ).encode()
                + b"".join(jsons)
            ).hexdigest()
            jobs.append(
                ShardJob(
                    build=Path(config.build),
                    out=Path(config.out),
                    relpath=relpath,
                    rows=tuple(shard_rows),
                    classes=shard_classes,
                    jsons=jsons,
                    keep_16bit=config.keep_16bit,
                    png_level=config.png_level,
                    plan=plan,
                )
            )
    return jobs
