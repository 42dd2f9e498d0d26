"""Exact Hamming radius search over 64-bit codes (pHash / dHash).

Why hand-written: faiss `IndexBinaryFlat.range_search` is exact but brute force (quadratic: ~190 s
for 600K codes on two threads), and faiss's hash indexes (`IndexBinaryHash`,
`IndexBinaryMultiHash`) are approximate. Dedupe needs the *same pairs as brute force* at 10M
codes, so this module implements exact searches vectorised with numpy; docs/dedupe-search.md
has the design and the measurements.

Above a few million codes the search uses a covering design of exact keys. A *key* is a set of
bit positions, and a layout's keys are such that every set of `radius` positions misses at
least one key entirely. Two codes within the radius differ in at most `radius` positions, so
they agree on every bit of some key. Each key is a table: codes agreeing on it are candidates,
each checked with a full 64-bit popcount, so no pair within the radius is missed and none
outside it is returned. A pair is reported only by the first table whose key it agrees on:
each table streams its own verified pairs and no set of all candidates is ever built.

Layouts (chosen by `plan_search` from the number of codes and the radius):

- `affine_plane_layout`: the 64 positions are the points of the affine plane over GF(8), with its
  72 lines in 9 parallel classes of 8 lines. Keys: every 3 parallel lines (9 x 56 keys of 24 bits)
  for a radius up to 8, or the 56 of one class up to 5.
- `recursive_layout`: keys of any width for any radius and any set of positions, built by
  splitting the positions in halves and dividing the errors between them.
- `multi_index_layout`: multi-index hashing (blocks probed within a radius); the cheapest up to a
  few million codes, but its time grows as N^1.8.
- `all_pairs_layout`: brute force, for a huge radius or a handful of codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inf590k.build.dedupe.designs import (
    _BRUTE_S,
    MULTI_INDEX_CODES,
    PAIR_CHUNK,
    Pairs,
    SearchLayout,
    _check_radius,
    _multi_index_estimate,
    _plan_blocks,
    estimated_seconds,
    plan_search,
)
from inf590k.build.dedupe.keysearch import (
    _Search,
    _triangle_pairs,
)
from inf590k.build.dedupe.multi_index import (
    _multi_index_cross,
)
from inf590k.fsutil import available_cores

RADIX_LOOKUP_CODES = 1 << 16  # from this many codes, lookups go through a table of top bits


# ----------------------------------------------------------------------------- public interface


def _as_codes(codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.dtype.kind != "u" or codes.dtype.itemsize != 8 or codes.ndim != 1:
        raise TypeError(f"expected a 1-D uint64 array of codes, got {codes.dtype} {codes.shape}")
    return np.ascontiguousarray(codes, dtype=np.uint64)  # native byte order, contiguous


def hex_to_codes(hex_strings: list[str] | np.ndarray) -> np.ndarray:
    """16-hex-char imagehash strings -> uint64 codes, [N]."""
    return np.array([int(h, 16) for h in hex_strings], dtype=np.uint64)


def default_threads() -> int:
    return available_cores()


@dataclass(frozen=True)
class _Groups:
    """Equal codes collapsed: unique[u] is at rows order[start[u] : start[u] + count[u]]."""

    unique: np.ndarray
    order: np.ndarray
    start: np.ndarray
    count: np.ndarray

    @classmethod
    def of(cls, codes: np.ndarray) -> _Groups:
        if not len(codes):
            empty = np.empty(0, dtype=np.int64)
            return cls(codes[:0], empty, empty, empty)
        order = np.argsort(codes, kind="stable")
        ordered = codes[order]
        start = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
        count = np.diff(np.append(start, len(codes)))
        return cls(ordered[start], order, start, count)

    def ids(self, codes: np.ndarray) -> np.ndarray:
        """Index in `unique` of each code, all of which must be there, [len(codes)] int64."""
        return _lookup(self.unique, codes)


def _lookup(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Index of each of `codes` in the sorted distinct `table` (every code is in it).

    `np.searchsorted` on millions of random codes misses the cache at each of its ~23 dependent
    steps (30 s for 14M codes among 10M). Here a table of ~N/2 top-bit buckets narrows each code
    to a couple of entries, and the binary search inside the buckets runs for all codes at once,
    step by step: its loads are independent, so they overlap (about 15x faster at 10M codes).
    """
    if len(table) < RADIX_LOOKUP_CODES or not len(codes):
        return np.searchsorted(table, codes)
    bits = int(np.ceil(np.log2(len(table)))) - 1
    shift = np.uint64(64 - bits)
    index_type = np.int32 if len(table) < 1 << 31 else np.int64
    tops = np.arange((1 << bits) + 1, dtype=np.uint64)
    bounds = np.searchsorted(table >> shift, tops).astype(index_type)  # [2**bits + 1]
    del tops
    top = (codes >> shift).astype(np.intp)
    low = bounds[top].astype(np.int64)  # table[low] <= code < table[high], or high = low + 1
    top += 1
    high = bounds[top].astype(np.int64)
    del top, bounds
    active = np.flatnonzero(high - low > 1)
    while len(active):
        lo, hi = low[active], high[active]
        mid = (lo + hi) >> 1
        right = table[mid] <= codes[active]
        lo = np.where(right, mid, lo)
        hi = np.where(right, hi, mid)
        low[active], high[active] = lo, hi
        active = active[hi - lo > 1]
    return low


def _cross_rows(
    start_a: np.ndarray, count_a: np.ndarray, start_b: np.ndarray, count_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into a group order) of every member pair of group pairs (a, b)."""
    sizes = count_a * count_b
    single = sizes == 1  # most pairs join two distinct codes: no expansion
    if single.all():
        return start_a, start_b
    if single.any():
        many = ~single
        rows_a, rows_b = _cross_rows(start_a[many], count_a[many], start_b[many], count_b[many])
        return (
            np.concatenate([start_a[single], rows_a]),
            np.concatenate([start_b[single], rows_b]),
        )
    pair = np.repeat(np.arange(len(sizes)), sizes)
    local = np.arange(int(sizes.sum()), dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return start_a[pair] + local // count_b[pair], start_b[pair] + local % count_b[pair]


def _sorted_rows(
    i: np.ndarray, j: np.ndarray, codes_i: np.ndarray, codes_j: np.ndarray, ordered: bool = True
) -> Pairs:
    """(i, j, distance) sorted by (i, j); ordered=False first swaps each pair so that i < j."""
    if not len(i):
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.int8)
    first, second = (i, j) if ordered else (np.minimum(i, j), np.maximum(i, j))
    key = first.astype(np.uint64) << np.uint64(32)
    key |= second.astype(np.uint64)
    del first, second
    key.sort()
    i = (key >> np.uint64(32)).astype(np.int64)
    j = (key & np.uint64(0xFFFFFFFF)).astype(np.int64)
    del key
    return i, j, np.bitwise_count(codes_i[i] ^ codes_j[j]).astype(np.int8)


def radius_pairs(
    codes: np.ndarray, radius: int, threads: int = 0, layout: SearchLayout | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair i < j with popcount(codes[i] ^ codes[j]) <= radius.

    Returns (i, j, distance) arrays sorted by (i, j): exactly the brute-force pair set. Equal
    codes are searched once; each group of k equal codes adds its k (k - 1) / 2 pairs at distance
    0 to the result, so callers that want a small result pass distinct codes (as dedupe does).
    `layout` overrides the planned layout (tests use it to run the large-N layouts on few codes).
    """
    codes = _as_codes(codes)
    _check_radius(radius)
    if len(codes) >= 1 << 32:
        raise ValueError(f"at most 2**32 - 1 codes, got {len(codes)}")
    groups = _Groups.of(codes)
    a, b, _ = _Search(groups.unique, radius, layout=layout).run(threads or default_threads())
    ua = groups.ids(a)
    del a  # the result can hold millions of pairs: drop each copy once used
    ub = groups.ids(b)
    del b
    if len(groups.unique) == len(codes):  # all distinct: one row per code
        rows_a, rows_b = groups.order[ua], groups.order[ub]
    else:
        pa, pb = _cross_rows(groups.start[ua], groups.count[ua], groups.start[ub], groups.count[ub])
        dup = np.flatnonzero(groups.count > 1)  # pairs inside a group of equal codes
        pairs = list(_triangle_pairs(groups.start[dup], groups.count[dup]))  # part of the result
        pa = np.concatenate([pa, *(p for p, _ in pairs)])
        pb = np.concatenate([pb, *(q for _, q in pairs)])
        rows_a, rows_b = groups.order[pa], groups.order[pb]
    del ua, ub
    return _sorted_rows(rows_a, rows_b, codes, codes, ordered=False)


def cross_radius_pairs(
    queries: np.ndarray,
    db: np.ndarray,
    radius: int,
    threads: int = 0,
    layout: SearchLayout | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (q, d) with popcount(queries[q] ^ db[d]) <= radius, sorted by (q, d).

    The cheapest of three by estimate: brute force (a small side), multi-index hashing with
    its tables on one side and the other probing them (one side much smaller than the
    other), or a search of both sides together that keeps the pairs with one code on each
    side. `layout` forces multi-index hashing (tables on db) or the joint search.
    """
    queries, db = _as_codes(queries), _as_codes(db)
    _check_radius(radius)
    if max(len(queries), len(db)) >= 1 << 32:
        raise ValueError("at most 2**32 - 1 codes on each side")
    if not len(queries) or not len(db):
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.int8)
    threads = threads or default_threads()
    if layout is None:
        layout, how = _plan_cross(len(queries), len(db), radius)
        if how == "brute force":
            return _cross_brute_force(queries, db, radius)
        if how == "multi-index, tables on db":
            q, d = _multi_index_cross(queries, db, radius, layout.blocks, threads)
            return _sorted_rows(q, d, queries, db)
        if how == "multi-index, tables on queries":
            d, q = _multi_index_cross(db, queries, radius, layout.blocks, threads)
            return _sorted_rows(q, d, queries, db)
    elif layout.blocks:
        q, d = _multi_index_cross(queries, db, radius, layout.blocks, threads)
        return _sorted_rows(q, d, queries, db)
    union = _Groups.of(np.concatenate([queries, db]))
    # the stable sort puts a group's query rows (< len(queries)) before its db rows
    is_query = (union.order < len(queries)).astype(np.int64)
    queries_in = np.add.reduceat(is_query, union.start)
    db_in = union.count - queries_in

    def mixed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ua, ub = union.ids(a), union.ids(b)
        return ((queries_in[ua] > 0) & (db_in[ub] > 0)) | ((db_in[ua] > 0) & (queries_in[ub] > 0))

    a, b, _ = _Search(union.unique, radius, layout=layout, keep=mixed).run(threads)
    ua, ub = union.ids(a), union.ids(b)
    both = np.flatnonzero((queries_in > 0) & (db_in > 0))  # a code on both sides: distance 0
    group_q = np.concatenate([ua, ub, both])
    group_d = np.concatenate([ub, ua, both])
    q_rows, d_rows = _cross_rows(
        union.start[group_q],
        queries_in[group_q],
        union.start[group_d] + queries_in[group_d],
        db_in[group_d],
    )
    q = union.order[q_rows]
    d = union.order[d_rows] - len(queries)
    return _sorted_rows(q, d, queries, db)


def _plan_cross(num_queries: int, num_db: int, radius: int) -> tuple[SearchLayout, str]:
    """The cheapest way to search queries against db, and the layout it uses."""
    joint = plan_search(num_queries + num_db, radius)
    options = [
        (num_queries * num_db * _BRUTE_S, "brute force", joint),
        (estimated_seconds(joint, num_queries + num_db), "joint", joint),
    ]
    if radius > 0:
        for probes, table, how in (
            (num_queries, num_db, "multi-index, tables on db"),
            (num_db, num_queries, "multi-index, tables on queries"),
        ):
            if table > MULTI_INDEX_CODES:  # its buckets fill and its memory grows
                continue
            plan = _plan_blocks(probes, table, radius)[1]
            layout = SearchLayout("multi-index hashing", min(plan.widths), radius, (), (), plan)
            options.append((_multi_index_estimate(probes, table, radius), how, layout))
    _, how, layout = min(options, key=lambda option: option[0])
    return layout, how


def _cross_brute_force(queries: np.ndarray, db: np.ndarray, radius: int) -> Pairs:
    found_q, found_d = [], []
    chunk = max(1, PAIR_CHUNK // max(1, len(db)))
    for start in range(0, len(queries), chunk):
        dist = np.bitwise_count(queries[start : start + chunk, None] ^ db[None, :])  # [chunk, D]
        rows, cols = np.nonzero(dist <= radius)
        found_q.append(rows + start)
        found_d.append(cols)
    q = np.concatenate(found_q) if found_q else np.empty(0, dtype=np.int64)
    d = np.concatenate(found_d) if found_d else np.empty(0, dtype=np.int64)
    return _sorted_rows(q, d, queries, db)


def brute_force_pairs(
    codes: np.ndarray, radius: int, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference all-pairs search (quadratic; for tests and small sets)."""
    codes = _as_codes(codes)
    out_i, out_j, out_d = [], [], []
    for start in range(0, len(codes), chunk):
        block = codes[start : start + chunk]
        dist = np.bitwise_count(block[:, None] ^ codes[None, :])  # [chunk, N]
        rows, cols = np.nonzero(dist <= radius)
        rows = rows + start
        upper = cols > rows
        out_i.append(rows[upper].astype(np.int64))
        out_j.append(cols[upper].astype(np.int64))
        out_d.append(dist[rows[upper] - start, cols[upper]].astype(np.int8))
    if not out_i:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.int8)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)
