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
from inf590k.build.dedupe.search import cross_radius_pairs, hex_to_codes, radius_pairs
from inf590k.build.dedupe.sheet import write_contact_sheet, write_report
from inf590k.build.rows import load_stored_pixels
from inf590k.dataset.layout import read_sidecars
from inf590k.execution.progress import stage_progress
from inf590k.fsutil import plural
from inf590k.inputs.fingerprint import fingerprint
from inf590k.inputs.headers import RejectedImage
from inf590k.inputs.imageio import ImagePolicy, process_image_bytes

REPORT_DIRNAME = "dedupe"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".webp")


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


# ----------------------------------------------------------------------------- fingerprints


def _codes(hex_values: Iterable[str | None]) -> np.ndarray:
    return hex_to_codes([h if h else "0" for h in hex_values])


def fingerprints_of_rows(table: pa.Table) -> Fingerprints:
    rows = table.select(["uid", "pixel_sha256", "phash", "dhash"]).to_pydict()
    return Fingerprints(
        labels=tuple(rows["uid"]),
        pixel_sha256=tuple(rows["pixel_sha256"]),
        phash=_codes(rows["phash"]),
        dhash=_codes(rows["dhash"]),
    )


def _fingerprints_of_folder(folder: Path) -> tuple[Fingerprints, int]:
    """Hash evaluation images the way ingest hashes (same decode, crop and 8-bit view)."""
    policy = ImagePolicy(allow_colour=True)  # benchmark images may be stored as RGB
    labels, digests, phashes, dhashes, skipped = [], [], [], [], 0
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            found = fingerprint(process_image_bytes(path.read_bytes(), policy).view8)
        except (RejectedImage, OSError, ValueError):
            skipped += 1
            continue
        labels.append(path.relative_to(folder).as_posix())
        digests.append(found.pixel_sha256)
        phashes.append(found.phash)
        dhashes.append(found.dhash)
    prints = Fingerprints(tuple(labels), tuple(digests), _codes(phashes), _codes(dhashes))
    return prints, skipped


# what dedupe reads of the catalog (the feature model alone reads whole rows)
FINGERPRINT_COLUMNS = ("status", "pixel_sha256", "phash", "dhash")
DEDUPE_COLUMNS = (*FINGERPRINT_COLUMNS, "source", "width", "height")
DEDUPE_STEPS = ("read", "grouped", "decided", "report")  # what its progress bar names


def _ok_rows(table: pa.Table) -> pa.Table:
    return table.filter(pa.compute.equal(table.column("status"), cat.STATUS_OK))


def load_outside_set(path: Path) -> OutsideSet:
    """A build folder (its catalog), a built dataset (its shard sidecars) or an image folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--against {path}: no such file or folder")
    if cat.part_paths(path):
        rows = _ok_rows(cat.read_catalog(path, columns=FINGERPRINT_COLUMNS))
        return OutsideSet(fingerprints_of_rows(rows), f"already in {path.name or path}")
    if (path / "data" / "_info.json").is_file():  # a dataset folder: its shards' sidecar rows
        return OutsideSet(fingerprints_of_rows(read_sidecars(path)), f"already in {path.name or path}")
    if path.is_dir():
        prints, skipped = _fingerprints_of_folder(path)
        if not prints.labels:
            raise ValueError(f"--against {path}: no readable images, shard sidecars or catalog")
        return OutsideSet(prints, f"decontamination: matches {path.name or path}", skipped)
    raise ValueError(f"--against {path}: expected a build folder, a dataset or an image folder")


# ----------------------------------------------------------------------------- grouping


def _near_edges(
    prints: Fingerprints, radius: int, dhash_max: int, hashed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate index pairs within the pHash radius (and dHash confirmation when on).

    Only rows with a pHash (`hashed`, [N] bool) take part.
    """
    rows = np.flatnonzero(hashed)
    prints = Fingerprints(
        tuple(prints.labels[r] for r in rows),
        tuple(prints.pixel_sha256[r] for r in rows),
        prints.phash[rows],
        prints.dhash[rows],
    )
    if dhash_max >= 0:
        keys = np.stack([prints.phash, prints.dhash], axis=1)  # [N, 2]
        unique, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        unique_phash = unique[:, 0].copy()
    else:
        unique_phash, first, inverse = np.unique(
            prints.phash, return_index=True, return_inverse=True
        )
    inverse = inverse.ravel()
    # rows sharing a key are joined to the key's first row; the search runs on distinct keys
    same_i, same_j = first[inverse], np.arange(len(inverse))
    ui, uj, _ = radius_pairs(unique_phash, radius)
    i, j = first[ui], first[uj]
    if dhash_max >= 0:
        confirmed = np.bitwise_count(prints.dhash[i] ^ prints.dhash[j]) <= dhash_max
        i, j = i[confirmed], j[confirmed]
    return rows[np.concatenate([same_i, i])], rows[np.concatenate([same_j, j])]


def _exact_edges(digests: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Each row joined to the first row with the same pixel sha256 (rows without one: none).
    `digests`: the [N] column itself (no Python string per row)."""
    if isinstance(digests, pa.ChunkedArray):
        digests = digests.combine_chunks()
    encoded = digests.dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False)  # [N], NaN where null
    del encoded
    pa.default_memory_pool().release_unused()  # the dictionary and its hash table
    rows = np.flatnonzero(~np.isnan(codes)) if codes.dtype.kind == "f" else np.arange(len(codes))
    codes = codes[rows].astype(np.int64)
    _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    return rows[first[inverse.ravel()]], rows


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
    width = pa.compute.fill_null(table.column("width"), 0).to_numpy(zero_copy_only=False)
    height = pa.compute.fill_null(table.column("height"), 0).to_numpy(zero_copy_only=False)
    area = width.astype(np.int64) * height.astype(np.int64)  # [N]
    uid_rank = np.empty(len(table), dtype=np.int64)
    uid_rank[pa.compute.sort_indices(table.column("uid")).to_numpy()] = np.arange(len(table))
    order = np.lexsort((uid_rank, by_source, -area))  # last key sorts first
    rank = np.empty(len(table), dtype=np.int64)
    rank[order] = np.arange(len(table))
    return rank


def group_rows(
    candidates: pa.Table,
    radius: int,
    dhash_max: int,
    priority: tuple[str, ...],
    extra_edges: tuple[np.ndarray, np.ndarray] | None = None,
    prints: Fingerprints | None = None,  # of `candidates`, when the caller has them
) -> _Groups:
    prints = fingerprints_of_rows(candidates) if prints is None else prints
    n = len(prints.labels)
    exact_i, exact_j = _exact_edges(candidates.column("pixel_sha256"))
    hashed = np.array([bool(h) for h in candidates.column("phash").to_pylist()], dtype=bool)
    near_i, near_j = _near_edges(prints, radius, dhash_max, hashed)
    extra_i, extra_j = extra_edges if extra_edges is not None else (near_i[:0], near_j[:0])
    rows = np.concatenate([exact_i, near_i, extra_i])
    cols = np.concatenate([exact_j, near_j, extra_j])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    rank = keep_order(candidates, priority)
    # the kept member of each component: the lowest keep rank among its members
    best = np.full(labels.max() + 1 if n else 0, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, labels, rank)
    by_rank = np.empty(n, dtype=np.int64)
    by_rank[rank] = np.arange(n)
    kept = by_rank[best[labels]]
    sizes = np.bincount(labels)[labels]
    digests = np.array(prints.pixel_sha256, dtype=object)
    exact = (digests == digests[kept]) & np.array([d is not None for d in digests], dtype=bool)
    return _Groups(labels=labels, kept=kept, sizes=sizes, exact=exact)


def _outside_matches(
    candidates: Fingerprints, outside: OutsideSet, radius: int, dhash_max: int
) -> dict[int, _Match]:
    matches: dict[int, _Match] = {}
    theirs = outside.fingerprints
    digest_to_label = dict(zip(theirs.pixel_sha256, theirs.labels, strict=True))
    for index, digest in enumerate(candidates.pixel_sha256):
        if digest in digest_to_label:
            matches[index] = _Match(f"{outside.reason}/{digest_to_label[digest]} (exact pixels)", 0)
    qi, di, dist = cross_radius_pairs(candidates.phash, theirs.phash, radius)
    if dhash_max >= 0:
        confirmed = np.bitwise_count(candidates.dhash[qi] ^ theirs.dhash[di]) <= dhash_max
        qi, di, dist = qi[confirmed], di[confirmed], dist[confirmed]
    for q, d, distance in zip(qi.tolist(), di.tolist(), dist.tolist(), strict=True):
        if q not in matches or distance < matches[q].distance:
            label = theirs.labels[d]
            matches[q] = _Match(f"{outside.reason}/{label} (pHash distance {distance})", distance)
    return matches


# ----------------------------------------------------------------------------- the stage


def _ingested_candidates(build: Path) -> pa.Table:
    """The rows ingest kept (a catalog of the earlier layout may still say `duplicate` for
    some: they take part again), only the columns dedupe needs."""
    table = cat.read_ingested(build, DEDUPE_COLUMNS)
    status = table.column("status")
    ok = pa.compute.or_(
        pa.compute.equal(status, cat.STATUS_OK), pa.compute.equal(status, cat.STATUS_DUPLICATE)
    )
    table = table.filter(ok)
    pa.default_memory_pool().release_unused()  # the unfiltered copy
    return table


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
        candidates = _ingested_candidates(build)
        bar.advance("read")
        outside = [load_outside_set(p) for p in config.against]
        feature_edges = _feature_edges(build, candidates, config) if config.feature_model else None
        prints = fingerprints_of_rows(candidates)  # once: labels and digests as Python strings
        groups = group_rows(candidates, config.radius, config.dhash_max, config.priority, feature_edges, prints)
        bar.advance("grouped")

        outside_match: dict[int, _Match] = {}
        for other in outside:
            for index, match in _outside_matches(
                prints, other, config.radius, config.dhash_max
            ).items():
                outside_match.setdefault(index, match)
        contaminated_groups = {int(groups.labels[i]) for i in outside_match}
        group_ids = _number_groups(groups, prints.labels)
        distances = np.bitwise_count(prints.phash ^ prints.phash[groups.kept]).astype(int)
        decided = _decide(groups, group_ids, distances, prints, outside_match, contaminated_groups, config, feature_edges is not None)
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
        groups=int(len(group_ids)),
        exact_duplicates=decided.exact,
        near_duplicates=decided.near,
        outside_matches=int(np.isin(groups.labels, list(contaminated_groups)).sum()),
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
    group_ids: dict[int, int],
    distances: np.ndarray,
    prints: Fingerprints,
    outside_match: dict[int, _Match],
    contaminated_groups: set[int],
    config: DedupeConfig,
    by_features: bool,
) -> _Decided:
    """The decision for every candidate in a group of 2+ or matched outside: its status, the
    reason in words and its group id (candidates alone are left out: ingest's row stands)."""
    uids, status, reason, dup_group = [], [], [], []
    exact = near = feature = 0
    involved = np.flatnonzero((groups.sizes > 1) | np.isin(groups.labels, list(contaminated_groups)))
    for index in involved.tolist():
        label = int(groups.labels[index])
        group = group_ids.get(label, -1)
        kept = int(groups.kept[index])
        if label in contaminated_groups:
            match = outside_match.get(index)
            why = match.reason if match else _contaminated_reason(index, groups, outside_match, prints)
        elif kept == index:
            uids.append(prints.labels[index])
            status.append(cat.STATUS_OK)
            reason.append("")
            dup_group.append(group)
            continue
        elif groups.exact[index]:
            exact += 1
            why = f"duplicate of {prints.labels[kept]} (exact pixels)"
        elif by_features and distances[index] > config.radius:
            feature += 1
            why = f"similar to {prints.labels[kept]} (encoder features; pHash distance {distances[index]})"
        else:
            near += 1
            why = f"near duplicate of {prints.labels[kept]} (pHash distance {distances[index]})"
        uids.append(prints.labels[index])
        status.append(cat.STATUS_DUPLICATE)
        reason.append(why)
        dup_group.append(group)
    table = pa.table(
        {
            "uid": pa.array(uids, type=pa.string()),
            "status": pa.array(status, type=pa.string()),
            "reason": pa.array(reason, type=pa.string()),
            "dup_group": pa.array(dup_group, type=pa.int64()),
        }
    )
    duplicates = sum(1 for s in status if s == cat.STATUS_DUPLICATE)
    return _Decided(table, exact, near, feature, duplicates)


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


def _contaminated_reason(
    index: int, groups: _Groups, outside_match: dict[int, _Match], prints: Fingerprints
) -> str:
    label = groups.labels[index]
    member = min(i for i in outside_match if groups.labels[i] == label)
    return f"in a group with {prints.labels[member]}: {outside_match[member].reason}"


def _number_groups(groups: _Groups, labels: tuple[str, ...]) -> dict[int, int]:
    """Component label -> dup_group id (0..G-1, ordered by the kept uid) for groups of 2+."""
    multi = sorted(
        {
            int(groups.labels[i]): labels[int(groups.kept[i])]
            for i in np.flatnonzero(groups.sizes > 1)
        }.items(),
        key=lambda item: item[1],
    )
    return {label: group_id for group_id, (label, _) in enumerate(multi)}


# ----------------------------------------------------------------------------- report


