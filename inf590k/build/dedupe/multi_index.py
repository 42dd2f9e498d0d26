"""Multi-index hashing: the code split into blocks, each probed within its share of the radius;
the cheapest exact search up to a few million codes (its time grows as N^1.8).
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from inf590k.build.dedupe.designs import CANDIDATE_CHUNK, BlockPlan, Pairs, _concat, _ordered


def _block_values(codes: np.ndarray, offset: int, width: int) -> np.ndarray:
    return ((codes >> np.uint64(offset)) & np.uint64((1 << width) - 1)).astype(np.int64)


def _masks_by_top_bit(width: int, radius: int) -> dict[int, np.ndarray]:
    """Non-zero XOR masks of popcount <= radius, grouped by their highest set bit."""
    groups: dict[int, list[int]] = {}
    for r in range(1, radius + 1):
        for bits in itertools.combinations(range(width), r):
            groups.setdefault(max(bits), []).append(sum(1 << b for b in bits))
    return {top: np.array(masks, dtype=np.int64) for top, masks in sorted(groups.items())}


class _BucketTable:
    """Codes of one block sorted by block value, with a dense start/count table."""

    def __init__(self, codes: np.ndarray, values: np.ndarray, width: int) -> None:
        self.order = np.argsort(values, kind="stable")  # [N] code index by block value
        self.sorted_values = values[self.order]  # [N]
        self.sorted_codes = codes[self.order]  # [N]: verification reads these near-sequentially
        counts = np.bincount(values, minlength=1 << width)  # [2**w]
        self.counts = counts.astype(np.int32)
        index_type = np.int32 if len(values) < 1 << 31 else np.int64
        self.starts = (np.cumsum(counts) - counts).astype(index_type)  # [2**w]


def _bucket_candidates(
    table: _BucketTable, positions: np.ndarray, probes: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(position, table position) pairs whose block value equals the probe, in chunks of at
    most ~CANDIDATE_CHUNK pairs (bounds memory on skewed buckets)."""
    counts = table.counts[probes]
    hit = np.flatnonzero(counts)
    positions, probes, counts = positions[hit], probes[hit], counts[hit].astype(np.int64)
    ends = np.cumsum(counts)
    bounds = [0, len(counts)]
    if len(ends) and ends[-1] > CANDIDATE_CHUNK:
        cuts = np.searchsorted(ends, np.arange(CANDIDATE_CHUNK, ends[-1], CANDIDATE_CHUNK))
        bounds = [0, *np.unique(np.clip(cuts, 1, len(counts))).tolist(), len(counts)]
    chunks = []
    for a, b in itertools.pairwise(bounds):
        if b <= a:
            continue
        chunk_counts = counts[a:b]
        total = int(ends[b - 1] - (ends[a - 1] if a else 0))
        # position inside each bucket: 0..count-1, without a Python loop
        first = np.repeat(np.cumsum(chunk_counts) - chunk_counts, chunk_counts)
        within = np.arange(total, dtype=np.int64) - first
        table_positions = np.repeat(table.starts[probes[a:b]], chunk_counts) + within
        chunks.append((np.repeat(positions[a:b], chunk_counts), table_positions))
    return chunks


def _probe_block(
    table: _BucketTable, positions: np.ndarray, masks: list[int], radius: int
) -> list[Pairs]:
    """Verified (i, j, distance), i < j, for one block table and a list of XOR masks."""
    found = []
    values = table.sorted_values[positions]
    for mask in masks:
        for q_pos, t_pos in _bucket_candidates(table, positions, values ^ mask):
            dist = np.bitwise_count(table.sorted_codes[q_pos] ^ table.sorted_codes[t_pos])
            keep = np.flatnonzero(dist <= radius)
            qi, di = table.order[q_pos[keep]], table.order[t_pos[keep]]
            qi, di, dist = np.minimum(qi, di), np.maximum(qi, di), dist[keep].astype(np.int8)
            if mask == 0:  # equal block values meet each pair from both sides, and itself
                distinct = qi != di
                qi, di, dist = qi[distinct], di[distinct], dist[distinct]
            found.append((qi, di, dist))
    return found


def _multi_index_pairs(codes: np.ndarray, radius: int, plan: BlockPlan, threads: int) -> Pairs:
    """All pairs within `radius` among distinct `codes` by multi-index hashing, as codes."""
    tasks: list[tuple[_BucketTable, int, list[int]]] = []
    for offset, width, block_radius in zip(plan.offsets, plan.widths, plan.radii, strict=True):
        table = _BucketTable(codes, _block_values(codes, offset, width), width)
        tasks.append((table, -1, [0]))
        for top, masks in _masks_by_top_bit(width, block_radius).items():
            tasks.append((table, top, masks.tolist()))

    def probe(table: _BucketTable, top: int, masks: list[int]) -> list[Pairs]:
        # a pair (a, a ^ mask) is probed only from the side whose top mask bit is clear, so
        # each unordered pair is expanded once per mask; the positions are made here, by the
        # task (made up front, the 60-odd tasks' positions held ~250 B per code)
        if top < 0:
            positions = np.arange(len(codes), dtype=np.int64)
        else:
            positions = np.flatnonzero((table.sorted_values >> top) & 1 == 0)
        return _probe_block(table, positions, masks, radius)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        results = pool.map(lambda task: probe(*task), tasks)
        found = _concat([pairs for task_pairs in results for pairs in task_pairs])
    # a pair close in several blocks is found several times: keep one
    i, j, dist = found
    _, first = np.unique(i.astype(np.int64) * len(codes) + j, return_index=True)
    return _ordered(codes[i[first]], codes[j[first]], dist[first])


def _multi_index_cross(
    probes: np.ndarray, table_codes: np.ndarray, radius: int, plan: BlockPlan, threads: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every (p, t) with popcount(probes[p] ^ table_codes[t]) <= radius, by multi-index hashing
    with the tables on `table_codes` (one block at a time, which bounds memory)."""
    found_p, found_t = [], []
    for offset, width, block_radius in zip(plan.offsets, plan.widths, plan.radii, strict=True):
        table = _BucketTable(table_codes, _block_values(table_codes, offset, width), width)
        values = _block_values(probes, offset, width)
        if width > 18:  # a table beyond the cache: probe in block order, at nearby addresses
            order = np.argsort(values, kind="stable")
        else:
            order = np.arange(len(values))
        masks = [
            0,
            *(m for group in _masks_by_top_bit(width, block_radius).values() for m in group),
        ]

        def probe(mask: int, order=order, values=values[order], table=table) -> list:
            pairs = []
            for p_pos, t_pos in _bucket_candidates(table, np.arange(len(order)), values ^ mask):
                p = order[p_pos]
                dist = np.bitwise_count(probes[p] ^ table.sorted_codes[t_pos])
                keep = dist <= radius
                pairs.append((p[keep], table.order[t_pos[keep]]))
            return pairs

        with ThreadPoolExecutor(max(1, threads)) as pool:
            for pairs in pool.map(probe, (int(m) for m in masks)):
                for p, t in pairs:
                    found_p.append(p)
                    found_t.append(t)
    if not found_p:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    # a pair close in several blocks is found several times: keep one
    key = np.unique(np.concatenate(found_p) * np.int64(len(table_codes)) + np.concatenate(found_t))
    return key // len(table_codes), key % len(table_codes)
