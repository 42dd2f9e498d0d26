"""Dedupe: exact (pixel sha256) and near (pHash Hamming radius) duplicate groups.

Only rows with status `ok` take part. Edges: equal `pixel_sha256` (exact), and pHash distance
<= radius (near; optionally confirmed by dHash distance <= dhash_max). Groups are the
connected components of those edges. The kept image of a group is fixed by a rule that never
depends on row order or worker count: largest width*height, then source priority (the
`priority` list first, in its order, then every other source alphabetically), then uid.
Every other member gets status `duplicate`, `dup_group` and a reason naming the kept uid and
its pHash distance to it. Those decisions (uid, status, reason, dup_group of every member of
a group, and of every match with outside data) go to BUILD/dedupe/decisions.parquet; the
catalog parts stay as ingest wrote them, so a re-run starts from ingest's rows and the result
is the same however often it runs.

`against` paths mark matches with outside data as duplicates: another build folder or a
built dataset (its shard sidecars) for incremental builds, or a plain folder of evaluation
images (decontamination). A whole group goes when one of its members matches.

Default radius 8: see docs/dedupe-radius.md for the measurement on real IR frames.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from inf590k.build import catalog as cat
from inf590k.build import lineage
from inf590k.build.dedupe.config import (
    DEFAULT_RADIUS,
    DedupeConfig,
    Fingerprints,
    OutsideSet,
    _Groups,
    _Match,
)
from inf590k.build.dedupe.features import FeatureConfig, embed, similar_pairs
from inf590k.build.dedupe.prints import fingerprints_of_rows, load_outside_set
from inf590k.build.dedupe.search import cross_radius_pairs, radius_pairs
from inf590k.build.dedupe.sheet import write_contact_sheet, write_report
from inf590k.build.rows import load_stored_pixels
from inf590k.execution.progress import stage_progress
from inf590k.fsutil import plural

REPORT_DIRNAME = "dedupe"


@dataclass
class DedupeSummary:
    candidates: int  # ok rows before dedupe
    groups: int  # groups with 2+ members
    exact_duplicates: int
    near_duplicates: int
    outside_matches: int  # rows removed because of --against
    kept: int
    seconds: float
    report: Path | None = None
    feature_duplicates: int | None = None  # with --feature-model: joined by encoder features only
    feature_threshold: float = 0.0

    @property
    def warnings(self) -> list[str]:
        """A line when encoder features fold most images together (they do not tell them apart)."""
        if not self.feature_duplicates or self.feature_duplicates * 2 <= self.candidates:
            return []
        return [
            f"warning: feature similarity alone folded {self.feature_duplicates} of {self.candidates} "
            "images into duplicates: the encoder's features do not separate the images (an untrained "
            "or collapsed model); pass a pretrained export to --feature-model, or raise "
            f"--feature-threshold (now {self.feature_threshold})"
        ]

    def __str__(self) -> str:
        features = (
            f" + {self.feature_duplicates} by encoder features"
            if self.feature_duplicates is not None
            else ""
        )
        line = (
            f"dedupe: {plural(self.candidates, 'image')} -> {self.kept} kept; "
            f"{plural(self.groups, 'group')}, {self.exact_duplicates} exact + "
            f"{self.near_duplicates} near (pHash){features} duplicates, "
            f"{self.outside_matches} matched --against data ({self.seconds:.1f} s)"
        )
        return "\n".join([line, *self.warnings])


# ----------------------------------------------------------------------------- grouping

REPORT_COLUMNS = ("uid", "source", "width", "height")  # what the keep rule and the report read
DEDUPE_COLUMNS = ("pixel_sha256", "phash", "dhash", *REPORT_COLUMNS)  # what dedupe reads of its rows
DEDUPE_STEPS = ("read", "grouped", "decided", "report")  # what its progress bar names


def _near_edges(prints: Fingerprints, radius: int, dhash_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate index pairs within the pHash radius (and dHash confirmation when on).

    Only rows with a pHash take part. Rows sharing a key are joined to the key's first row;
    the search runs on distinct keys.
    """
    rows = np.flatnonzero(prints.hashed)  # [H]
    if dhash_max >= 0:
        keys = np.stack([prints.phash[rows], prints.dhash[rows]], axis=1)  # [H, 2]
        unique, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        unique_phash = unique[:, 0].copy()
        del keys, unique
    else:
        unique_phash, first, inverse = np.unique(
            prints.phash[rows], return_index=True, return_inverse=True
        )
    same_i = first[inverse.ravel()]  # [H]
    del inverse
    same_j = np.flatnonzero(same_i != np.arange(len(same_i)))  # a row joined to itself: no edge
    same_i = same_i[same_j]
    ui, uj, _ = radius_pairs(unique_phash, radius)
    i, j = first[ui], first[uj]
    del ui, uj
    if dhash_max >= 0:
        confirmed = np.bitwise_count(prints.dhash[rows[i]] ^ prints.dhash[rows[j]]) <= dhash_max
        i, j = i[confirmed], j[confirmed]
    return rows[np.concatenate([same_i, i])], rows[np.concatenate([same_j, j])]


def _exact_edges(digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row joined to the first row with the same pixel sha256 (`digests`: [N] codes, -1
    where none: no edge)."""
    rows = np.flatnonzero(digests >= 0)
    codes = digests[rows]
    first = np.full(int(codes.max()) + 1 if len(codes) else 0, len(digests), dtype=np.int64)
    np.minimum.at(first, codes, rows)
    joined = first[codes]  # [R]
    other = joined != rows  # the first row itself: no edge
    return joined[other], rows[other]


def priority_rank(sources: Iterable[str], priority: tuple[str, ...]) -> dict[str, int]:
    """Listed sources first in the given order, then the rest alphabetically."""
    rest = sorted(set(sources) - set(priority))
    return {source: rank for rank, source in enumerate([*priority, *rest])}


def keep_order(table: pa.Table, priority: tuple[str, ...]) -> np.ndarray:
    """Rank of each row by the keep rule (0 = keep first): area desc, priority, uid. Sorted
    as columns ([N] int64 keys), not as a Python tuple per row."""
    sources = table.column("source").combine_chunks().dictionary_encode()
    ranks = priority_rank(sources.dictionary.to_pylist(), priority)
    source_rank = np.array([ranks[s] for s in sources.dictionary.to_pylist()], dtype=np.int64)
    by_source = source_rank[sources.indices.to_numpy(zero_copy_only=False)]  # [N]
    width = pc.fill_null(table.column("width"), 0).to_numpy(zero_copy_only=False)
    height = pc.fill_null(table.column("height"), 0).to_numpy(zero_copy_only=False)
    area = width.astype(np.int64) * height.astype(np.int64)  # [N]
    uid_rank = np.empty(len(table), dtype=np.int64)
    uid_rank[pc.sort_indices(table.column("uid")).to_numpy()] = np.arange(len(table))
    order = np.lexsort((uid_rank, by_source, -area))  # last key sorts first
    rank = np.empty(len(table), dtype=np.int64)
    rank[order] = np.arange(len(table))
    return rank


def _components(n: int, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([N] component id, [N] component size) of the graph of edges (i, j) on n rows."""
    edges = (i.astype(np.int32), j.astype(np.int32)) if n < 1 << 31 else (i, j)
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), edges), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    del graph
    return labels, np.bincount(labels)[labels]


def _kept_members(
    candidates: pa.Table, labels: np.ndarray, sizes: np.ndarray, priority: tuple[str, ...]
) -> np.ndarray:
    """[N] the kept row of each row's component (itself when alone). The keep rule ranks the
    members of groups of 2+ only: their order among themselves is their order among all."""
    kept = np.arange(len(labels))
    multi = np.flatnonzero(sizes > 1)  # [M]
    if not len(multi):
        return kept
    rank = keep_order(candidates.take(pa.array(multi)), priority)  # [M], 0 = keep first
    component = labels[multi]
    best = np.full(int(labels.max()) + 1, len(multi), dtype=np.int64)
    np.minimum.at(best, component, rank)  # the lowest rank in each component
    by_rank = np.empty(len(multi), dtype=np.int64)
    by_rank[rank] = multi
    kept[multi] = by_rank[best[component]]
    return kept


def group_rows(
    candidates: pa.Table,
    radius: int,
    dhash_max: int,
    priority: tuple[str, ...],
    extra_edges: tuple[np.ndarray, np.ndarray] | None = None,
    prints: Fingerprints | None = None,  # of `candidates`, when the caller has them
) -> _Groups:
    """The groups of `candidates` (uid, source, width, height; and the fingerprint columns
    when `prints` is not given): components of exact, near and `extra_edges`, each with its
    kept row."""
    prints = fingerprints_of_rows(candidates) if prints is None else prints
    exact_i, exact_j = _exact_edges(prints.digests)
    near_i, near_j = _near_edges(prints, radius, dhash_max)
    extra_i, extra_j = extra_edges if extra_edges is not None else (near_i[:0], near_j[:0])
    labels, sizes = _components(
        len(prints.labels),
        np.concatenate([exact_i, near_i, extra_i]),
        np.concatenate([exact_j, near_j, extra_j]),
    )
    kept = _kept_members(candidates, labels, sizes, priority)
    exact = (prints.digests >= 0) & (prints.digests == prints.digests[kept])
    return _Groups(labels=labels, kept=kept, sizes=sizes, exact=exact)


def _exact_matches(digests: pa.ChunkedArray | pa.Array, outside: OutsideSet) -> tuple[np.ndarray, np.ndarray]:
    """(candidate rows, outside rows) of equal pixel sha256: for a digest the outside set
    holds twice, its last row. A row without a digest matches nothing."""
    theirs = outside.pixel_sha256
    last_first = _as_array(theirs.take(pa.array(np.arange(len(theirs) - 1, -1, -1))))  # index_in finds the first
    at = pc.fill_null(pc.index_in(digests, value_set=last_first, skip_nulls=True), -1)  # [N]
    at = at.to_numpy().astype(np.int64)
    rows = np.flatnonzero(at >= 0)
    return rows, len(theirs) - 1 - at[rows]


def _as_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One array of a column's chunks (a value set, or a column written as one chunk)."""
    if isinstance(values, pa.ChunkedArray):
        return pa.concat_arrays(values.chunks) if values.num_chunks else pa.array([], values.type)
    return values


def _outside_matches(
    candidates: Fingerprints,
    exact: tuple[np.ndarray, np.ndarray],
    outside: OutsideSet,
    radius: int,
    dhash_max: int,
) -> dict[int, _Match]:
    """Candidate row -> its match in `outside`: equal pixels, else the nearest pHash (the first
    outside row of that distance). Only rows with a pHash are compared by pHash."""
    theirs = outside.fingerprints
    ours, mine = np.flatnonzero(candidates.hashed), np.flatnonzero(theirs.hashed)
    qi, di, dist = cross_radius_pairs(candidates.phash[ours], theirs.phash[mine], radius)
    qi, di = ours[qi], mine[di]
    if dhash_max >= 0:
        confirmed = np.bitwise_count(candidates.dhash[qi] ^ theirs.dhash[di]) <= dhash_max
        qi, di, dist = qi[confirmed], di[confirmed], dist[confirmed]
    named = np.unique(np.concatenate([exact[1], di]))
    label = dict(zip(named.tolist(), theirs.labels.take(pa.array(named)).to_pylist(), strict=True))
    matches: dict[int, _Match] = {}
    for index, row in zip(exact[0].tolist(), exact[1].tolist(), strict=True):
        matches[index] = _Match(f"{outside.reason}/{label[row]} (exact pixels)", 0)
    for q, d, distance in zip(qi.tolist(), di.tolist(), dist.tolist(), strict=True):
        if q not in matches or distance < matches[q].distance:
            matches[q] = _Match(f"{outside.reason}/{label[d]} (pHash distance {distance})", distance)
    return matches


# ----------------------------------------------------------------------------- the stage


def _ingested_candidates(build: Path) -> pa.Table:
    """The rows ingest kept (a catalog of the earlier layout may still say `duplicate` for
    some: they take part again), only the columns dedupe needs."""
    return cat.read_ingested(build, DEDUPE_COLUMNS, statuses=(cat.STATUS_OK, cat.STATUS_DUPLICATE))


def _candidate_prints(
    build: Path, outside: list[OutsideSet]
) -> tuple[pa.Table, Fingerprints, list[tuple[np.ndarray, np.ndarray]]]:
    """The candidates' report columns, their fingerprints and their exact matches in each
    outside set. The hash strings are let go here, before the search."""
    candidates = _ingested_candidates(build)
    prints = fingerprints_of_rows(candidates)
    exact = [_exact_matches(candidates.column("pixel_sha256"), other) for other in outside]
    candidates = candidates.select(list(REPORT_COLUMNS))
    pa.default_memory_pool().release_unused()  # the digest and hash strings
    return candidates, prints, exact


@lineage.stage("dedupe", ignore=("build", "contact_groups", "feature_device", "progress"))
def dedupe(config: DedupeConfig) -> DedupeSummary:
    """Mark duplicate rows in the catalog of `config.build`; write the report."""
    if not 0 <= config.radius <= 32:
        raise ValueError(
            f"--radius must be in 0..32 (default {DEFAULT_RADIUS}), got {config.radius}"
        )
    started = time.perf_counter()
    build = Path(config.build)
    for path in config.against:
        if Path(path).resolve() == build.resolve():
            raise ValueError(f"--against {path} is the build itself: pass another build or dataset")
    with stage_progress("dedupe", config.progress, DEDUPE_STEPS) as bar:
        outside = [load_outside_set(p) for p in config.against]
        candidates, prints, exact_outside = _candidate_prints(build, outside)
        bar.advance("read")
        feature_edges = _feature_edges(build, candidates, config) if config.feature_model else None
        groups = group_rows(candidates, config.radius, config.dhash_max, config.priority, feature_edges, prints)
        bar.advance("grouped")

        outside_match: dict[int, _Match] = {}
        for other, exact in zip(outside, exact_outside, strict=True):
            for index, match in _outside_matches(prints, exact, other, config.radius, config.dhash_max).items():
                outside_match.setdefault(index, match)
        contaminated = np.isin(groups.labels, [int(groups.labels[i]) for i in outside_match])  # [N]
        group_ids = _number_groups(groups, prints.labels)
        distances = np.bitwise_count(prints.phash ^ prints.phash[groups.kept])  # [N] uint8
        decided = _decide(groups, group_ids, distances, prints, outside_match, contaminated, config, feature_edges is not None)
        lineage.mark_running(build, "dedupe")
        cat.write_columns(build, cat.DECISIONS_PATH, decided.table)
        bar.advance("decided")

        report_dir = build / REPORT_DIRNAME
        report = write_report(
            report_dir, config, candidates, groups, group_ids, distances, outside, outside_match
        )
        if config.contact_groups > 0:
            write_contact_sheet(report_dir / "contact_sheet.png", build, report, config.contact_groups)
        bar.advance("report")
    return DedupeSummary(
        candidates=len(candidates),
        groups=int((group_ids >= 0).sum()),
        exact_duplicates=decided.exact,
        near_duplicates=decided.near,
        outside_matches=int(contaminated.sum()),
        kept=len(candidates) - decided.duplicates,
        seconds=time.perf_counter() - started,
        report=report_dir / "report.json",
        feature_duplicates=decided.feature if config.feature_model else None,
        feature_threshold=config.feature_threshold,
    )


@dataclass
class _Decided:
    table: pa.Table  # uid, status, reason, dup_group of the rows dedupe changed
    exact: int
    near: int
    feature: int
    duplicates: int


def _decide(
    groups: _Groups,
    group_ids: np.ndarray,
    distances: np.ndarray,
    prints: Fingerprints,
    outside_match: dict[int, _Match],
    contaminated: np.ndarray,
    config: DedupeConfig,
    by_features: bool,
) -> _Decided:
    """The decision for every candidate in a group of 2+ or matched outside: its status, the
    reason in words and its group id (candidates alone are left out: ingest's row stands).
    Strings are made for those rows alone."""
    involved = np.flatnonzero((groups.sizes > 1) | contaminated)  # [D]
    kept = groups.kept[involved]
    kept_uids = prints.labels.take(pa.array(kept)).to_pylist()
    first_match = _first_match_per_group(groups, outside_match, prints)
    reason, duplicate = [], []
    exact = near = feature = 0
    rows = zip(involved.tolist(), kept.tolist(), kept_uids, distances[involved].tolist(), strict=True)
    for index, kept_index, kept_uid, distance in rows:
        if contaminated[index]:
            match = outside_match.get(index)
            why = match.reason if match else first_match[int(groups.labels[index])]
        elif kept_index == index:
            why = ""
        elif groups.exact[index]:
            exact += 1
            why = f"duplicate of {kept_uid} (exact pixels)"
        elif by_features and distance > config.radius:
            feature += 1
            why = f"similar to {kept_uid} (encoder features; pHash distance {distance})"
        else:
            near += 1
            why = f"near duplicate of {kept_uid} (pHash distance {distance})"
        reason.append(why)
        duplicate.append(bool(why))
    is_duplicate = np.array(duplicate, dtype=bool)
    table = pa.table(
        {
            "uid": _as_array(prints.labels.take(pa.array(involved, type=pa.int64()))),
            "status": pa.array(np.where(is_duplicate, cat.STATUS_DUPLICATE, cat.STATUS_OK).tolist(), type=pa.string()),
            "reason": pa.array(reason, type=pa.string()),
            "dup_group": pa.array(group_ids[groups.labels[involved]], type=pa.int64()),
        }
    )
    return _Decided(table, exact, near, feature, int(is_duplicate.sum()))


def _feature_edges(
    build: Path, candidates: pa.Table, config: DedupeConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of candidates whose encoder embeddings are more similar than the threshold."""
    by_uid = {row["uid"]: row for row in cat.read_rows(build, candidates.column("uid").to_pylist())}
    rows = [by_uid[uid] for uid in candidates.column("uid").to_pylist()]
    features = FeatureConfig(
        model_dir=Path(config.feature_model),
        threshold=config.feature_threshold,
        device=config.feature_device,
    )
    embeddings = embed((load_stored_pixels(build, row) for row in rows), len(rows), features)
    i, j, _ = similar_pairs(embeddings, config.feature_threshold)
    return i, j


def _first_match_per_group(
    groups: _Groups, outside_match: dict[int, _Match], prints: Fingerprints
) -> dict[int, str]:
    """Component -> the reason its other members go: the first member matched outside."""
    first: dict[int, int] = {}
    for index in sorted(outside_match):
        first.setdefault(int(groups.labels[index]), index)
    members = prints.labels.take(pa.array(list(first.values()), type=pa.int64())).to_pylist()
    return {
        label: f"in a group with {uid}: {outside_match[index].reason}"
        for (label, index), uid in zip(first.items(), members, strict=True)
    }


def _number_groups(groups: _Groups, labels: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """[components] dup_group id of each component: 0..G-1 for groups of 2+, ordered by the
    kept uid (compared as UTF-8 bytes, the order of Python's strings), -1 for one alone."""
    ids = np.full(int(groups.labels.max()) + 1 if len(groups.labels) else 0, -1, dtype=np.int64)
    multi = np.flatnonzero(groups.sizes > 1)
    components, first = np.unique(groups.labels[multi], return_index=True)
    kept_uids = labels.take(pa.array(groups.kept[multi[first]], type=pa.int64()))
    order = pc.sort_indices(kept_uids).to_numpy()
    ids[components[order]] = np.arange(len(order))
    return ids


# ----------------------------------------------------------------------------- report



