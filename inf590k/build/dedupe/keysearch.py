"""The search by exact-match keys: per key, codes agreeing on its bits are grouped (sorted, or
scattered in buckets at 10M codes), every candidate pair checked with a full popcount, each pair
reported by the first key it agrees on; runs sharing a key are searched again on other bits.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from inf590k.build.dedupe.designs import (
    _LITTLE_ENDIAN,
    ALL_POSITIONS,
    BUCKETED_CODES,
    CODE_BITS,
    HEAVY_RUN,
    PAIR_CHUNK,
    SCATTERED_ROWS,
    SHORT_RUN,
    WRITER_ROUNDS,
    KeyTable,
    Pairs,
    SearchLayout,
    _bytes_first,
    _concat,
    _empty_pairs,
    _ordered,
    plan_search,
)
from inf590k.build.dedupe.multi_index import _multi_index_pairs


@functools.lru_cache(maxsize=4096)
def _byte_luts(dest: tuple[int, ...]) -> np.ndarray:
    """[8, 256] uint64: where the bits of each value of each byte go under `dest`."""
    values = np.arange(256, dtype=np.uint64)
    luts = np.zeros((8, 256), dtype=np.uint64)
    for bit, to in enumerate(dest):
        luts[bit // 8] |= ((values >> np.uint64(bit % 8)) & np.uint64(1)) << np.uint64(to)
    return luts


def _native(index: int, count: int) -> int:
    """Column of the little-endian byte/word `index` in a native-order view."""
    return index if _LITTLE_ENDIAN else count - 1 - index


def permute_bits(codes: np.ndarray, dest: Sequence[int]) -> np.ndarray:
    """Codes with bit b moved to bit dest[b] (a new array)."""
    luts = _byte_luts(tuple(dest))
    out = np.zeros(len(codes), dtype=np.uint64)
    looked_up = np.empty(len(codes), dtype=np.uint64)
    if len(codes) >= 1 << 15:  # 16-bit tables (2 MB) halve the lookups on large arrays
        low = np.arange(1 << 16) & 0xFF
        high = np.arange(1 << 16) >> 8
        words = np.ascontiguousarray(codes).view(np.uint16).reshape(-1, 4)
        for w in range(4):
            table = luts[2 * w][low] | luts[2 * w + 1][high]
            np.take(table, words[:, _native(w, 4)], out=looked_up, mode="clip")
            out |= looked_up
        return out
    bytes_ = np.ascontiguousarray(codes).view(np.uint8).reshape(-1, 8)
    for b in range(8):
        np.take(luts[b], bytes_[:, _native(b, 8)], out=looked_up, mode="clip")
        out |= looked_up
    return out


def _inverse(dest: Sequence[int]) -> tuple[int, ...]:
    inverse = [0] * CODE_BITS
    for bit, to in enumerate(dest):
        inverse[to] = bit
    return tuple(inverse)


def _triangle_pairs(
    first: np.ndarray, length: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every (first + a, first + b), a < b < length, of each run, in chunks of about PAIR_CHUNK
    pairs (one run at most per chunk beyond that), made as they are consumed."""
    counts = length * (length - 1) // 2
    ends = np.cumsum(counts)
    start_run = 0
    while start_run < len(first):
        base = ends[start_run - 1] if start_run else 0
        stop_run = int(np.searchsorted(ends, base + PAIR_CHUNK, side="right"))
        stop_run = max(stop_run, start_run + 1)
        run_counts = counts[start_run:stop_run]
        total = int(run_counts.sum())
        run = np.repeat(np.arange(start_run, stop_run), run_counts)
        local = np.arange(total, dtype=np.int64) - np.repeat(
            np.cumsum(run_counts) - run_counts, run_counts
        )
        # local = b (b - 1) / 2 + a: solve for b, then correct the float rounding
        b = ((1 + np.sqrt(1 + 8 * local.astype(np.float64))) // 2).astype(np.int64)
        b -= b * (b - 1) // 2 > local
        b += (b + 1) * b // 2 <= local
        a = local - b * (b - 1) // 2
        yield first[run] + a, first[run] + b
        start_run = stop_run


class _Search:
    """All pairs within `radius` among distinct `codes`, as code values (first < second)."""

    def __init__(
        self,
        codes: np.ndarray,
        radius: int,
        positions: Sequence[int] = ALL_POSITIONS,
        layout: SearchLayout | None = None,
        keep: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.codes = codes
        self.radius = radius
        self.positions = tuple(positions)
        self.layout = layout or plan_search(len(codes), radius, self.positions)
        if radius > self.layout.max_radius:
            raise ValueError(
                f"layout {self.layout.name!r} covers radius <= {self.layout.max_radius}"
            )
        self.keep = keep
        self.masks = np.array([t.mask for t in self.layout.tables], dtype=np.uint64)
        # earlier keys are tried in a fixed shuffled order: neighbouring tables share key lines,
        # so a near pair that misses one tends to miss the next few too
        self._check_order = np.random.default_rng(0).permutation(len(self.masks))
        self._first_key = _FirstKey.of(self.layout)  # a faster check for the affine keys
        self._scratch = threading.local()
        groups = {(t.view, t.key_bytes[0]) for t in self.layout.tables if t.key_bytes is not None}
        self._views = _SharedViews(codes, self.layout.views, [view for view, _ in groups])

    def _buffers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """This thread's [n - 1] work arrays (neighbour xor, same-key flags), reused across
        tables: allocating them per table at 10M codes costs more in page faults than the scan."""
        scratch = self._scratch
        if getattr(scratch, "size", -1) < n:
            scratch.size = n
            scratch.diff = np.empty(n, dtype=np.uint64)
            scratch.same = np.empty(n, dtype=bool)
        return scratch.diff[: max(n - 1, 0)], scratch.same[: max(n - 1, 0)]

    def run(self, threads: int) -> Pairs:
        if len(self.codes) < 2 or self.radius == 0:  # distinct codes differ in >= 1 bit
            return _empty_pairs()
        if self.layout.blocks:
            pairs = _multi_index_pairs(self.codes, self.radius, self.layout.blocks, threads)
            return self._kept(pairs)
        if self.layout.key_bits == 0:
            return self._brute_force()
        groups: dict[tuple[int, int], list[int]] = {}
        jobs: list[Callable[[], Pairs]] = []
        for j, table in enumerate(self.layout.tables):
            if table.key_bytes is None:
                jobs.append(functools.partial(self._own_table, j))
            else:
                groups.setdefault((table.view, table.key_bytes[0]), []).append(j)
        # a view's groups run one after the other, so its permuted codes are shared and freed
        for (view, lead), members in sorted(groups.items()):
            jobs.append(functools.partial(self._byte_key_group, view, lead, members))
        # numpy releases the GIL in sorts, takes and ufuncs, so threads share the work (processes
        # would copy the codes); each pair is reported by one fixed table, so the thread count
        # never changes the result
        with ThreadPoolExecutor(max(1, threads)) as pool:
            return _concat(list(pool.map(lambda job: job(), jobs)))

    def _brute_force(self) -> Pairs:
        found = []
        chunk = max(1, PAIR_CHUNK // len(self.codes))
        for start in range(0, len(self.codes), chunk):
            block = self.codes[start : start + chunk]
            dist = np.bitwise_count(block[:, None] ^ self.codes[None, :])  # [chunk, N]
            rows, cols = np.nonzero(dist <= self.radius)
            upper = cols > rows + start
            rows, cols = rows[upper], cols[upper]
            found.append(_ordered(block[rows], self.codes[cols], dist[rows, cols]))
        return self._kept(_concat(found))

    def _kept(self, pairs: Pairs) -> Pairs:
        if self.keep is None or not len(pairs[0]):
            return pairs
        keep = self.keep(pairs[0], pairs[1])
        return pairs[0][keep], pairs[1][keep], pairs[2][keep]

    def _own_table(self, j: int) -> Pairs:
        """One table with its own permutation: sort the permuted codes, pair the equal keys."""
        table = self.layout.tables[j]
        values = permute_bits(self.codes, table.dest)
        values.sort()
        pairs = self._pairs_in_runs(values, table.key_bits, table.dest, table.mask)
        return self._report(j, pairs, table.dest)

    def _byte_key_group(self, view: int, lead: int, members: list[int]) -> Pairs:
        """Tables whose keys are 3 bytes of one view and share the lead byte.

        The view is sorted once with the lead byte on top, which buckets the codes by it. With
        few codes each table reorders the bytes (its key on top) and sorts; with many, equal
        keys are found inside the buckets without sorting (`_scattered_table`).
        """
        view_dest = self.layout.views[view]
        group_dest = _bytes_first(view_dest, (lead,))
        values = _reorder_bytes(self._views.acquire(view), view_dest, group_dest)
        self._views.release(view)
        values.sort()  # [n], bucketed by the lead byte
        found = []
        if len(values) < BUCKETED_CODES:  # per-bucket calls would cost more than a sort
            for j in members:
                table = self.layout.tables[j]
                keyed = _reorder_bytes(values, group_dest, table.dest)
                keyed.sort()
                pairs = self._pairs_in_runs(keyed, table.key_bits, table.dest, table.mask)
                found.append(self._report(j, pairs, table.dest))
            return _concat(found)
        bounds = np.searchsorted(values, np.arange(256, dtype=np.uint64) << np.uint64(56))
        bounds = np.append(bounds, len(values)).tolist()  # [257]
        buckets = [(s, e) for s, e in itertools.pairwise(bounds) if e - s > 1]
        for j in members:
            pairs = self._scattered_table(self.layout.tables[j], values, group_dest, buckets)
            found.append(self._report(j, pairs, group_dest))
        return _concat(found)

    def _scattered_table(
        self,
        table: KeyTable,
        values: np.ndarray,
        group_dest: Sequence[int],
        buckets: list[tuple[int, int]],
    ) -> Pairs:
        """Pairs of one 3-byte key among `values` bucketed by its lead byte, found by scattering.

        Inside a bucket the other two key bytes form a 16-bit key. Every row writes its index
        into a 2**16-entry table and reads back the last writer: one row of each key wins and
        the rows that lost pair with it. The next round among the losers pairs the keys held by
        three rows, and so on; rows left after WRITER_ROUNDS (keys of many rows) are grouped by
        sorting. The table stays in cache: at 10M codes this is about half the cost of sorting.
        """
        # the table's key bytes 6 and 5 (under the lead byte 7), as columns of `values`
        second, third = (_native(group_dest[_first_bit(table.dest, b)] // 8, 8) for b in (6, 5))

        def key16(part: np.ndarray) -> np.ndarray:  # [rows] the two bytes as one index
            columns = part.view(np.uint8).reshape(-1, 8)
            return (columns[:, second].astype(np.intp) << 8) | columns[:, third]

        slots = np.empty(1 << 16, dtype=np.int64)  # last writer per key; never needs clearing
        local = np.arange(max((e - s for s, e in buckets), default=0), dtype=np.int64)
        found, rest = [], []
        for start, end in buckets:
            if end - start < SCATTERED_ROWS:  # too small for per-bucket calls: sorted below
                rest.append(np.arange(start, end))
                continue
            bucket = values[start:end]  # in cache from here on
            keys = key16(bucket)
            rows = local[: end - start]
            for round_ in range(WRITER_ROUNDS):  # round 1 on all rows, then on the losers
                slots[keys] = rows
                winner = slots[keys]
                lost = (winner != rows).nonzero()[0]  # 1-D: skips flatnonzero's Python wrapper
                rows = rows[lost] if round_ else lost  # round 1: rows == local, so lost are rows
                winner, keys = winner[lost], keys[lost]
                a, b = bucket[rows], bucket[winner]
                dist = np.bitwise_count(a ^ b)
                hit = (dist <= self.radius).nonzero()[0]  # few: indices beat a boolean mask
                if len(hit):
                    found.append((a[hit], b[hit], dist[hit]))
                if not len(rows):
                    break
            if len(rows):
                rest.append(rows + start)
        if rest:  # small buckets, and keys of more rows than rounds (clustered): sort the rest
            rest_rows = np.concatenate(rest)
            rest_values = values[rest_rows]
            keys = (rest_values >> np.uint64(56)) << np.uint64(16)
            keys |= key16(rest_values).astype(np.uint64)
            found.append(self._rows_by_key(values, rest_rows, keys, group_dest, table.mask))
        return _concat(found)

    def _verified_rows(self, values: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray) -> Pairs:
        """Row pairs within the radius, as values (in the values' bit order)."""
        a, b = values[rows_a], values[rows_b]
        dist = np.bitwise_count(a ^ b)
        hit = dist <= self.radius
        return a[hit], b[hit], dist[hit]

    def _rows_by_key(
        self,
        values: np.ndarray,
        rows: np.ndarray,
        keys: np.ndarray,
        dest: Sequence[int],
        key_mask: int,
    ) -> Pairs:
        """All verified pairs among `rows` that share a key (keys < 2**32, rows < 2**32)."""
        packed = np.sort((keys << np.uint64(32)) | rows.astype(np.uint64))
        rows = (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)
        same = (packed[1:] >> np.uint64(32)) == (packed[:-1] >> np.uint64(32))
        starts = np.flatnonzero(np.concatenate([[True], ~same]))
        lengths = np.diff(np.append(starts, len(rows)))
        runs = lengths > 1
        first, length = starts[runs], lengths[runs]
        heavy = length > HEAVY_RUN
        found = []
        for p, q in _triangle_pairs(first[~heavy], length[~heavy]):
            found.append(self._verified_rows(values, rows[p], rows[q]))
        for start, size in zip(first[heavy].tolist(), length[heavy].tolist(), strict=True):
            found.append(self._heavy_run(values[rows[start : start + size]], dest, key_mask))
        return _concat(found)

    def _heavy_run(self, run_values: np.ndarray, dest: Sequence[int], key_mask: int) -> Pairs:
        """Codes sharing a key: searched again on the positions outside it (not quadratically).

        Returns pairs in the bit order `dest`, like the other verified pairs."""
        run_codes = permute_bits(run_values, _inverse(dest))
        free = [p for p in self.positions if not key_mask >> p & 1]
        a, b, dist = _Search(run_codes, self.radius, free).run(threads=1)
        return permute_bits(a, dest), permute_bits(b, dest), dist

    def _pairs_in_runs(
        self, values: np.ndarray, key_bits: int, dest: Sequence[int], key_mask: int
    ) -> Pairs:
        """Verified pairs of sorted `values` with equal top `key_bits`, in their bit order `dest`.

        Neighbours are compared first (most runs are pairs); runs of three or more get shifted
        compares up to SHORT_RUN, longer runs have their remaining pairs listed, and runs over
        HEAVY_RUN are searched again on the positions outside the key (not quadratically).
        """
        diff, same = self._buffers(len(values))  # [n - 1] each
        np.bitwise_xor(values[1:], values[:-1], out=diff)
        np.less(diff, np.uint64(1 << (CODE_BITS - key_bits)), out=same)  # i, i + 1 share the key
        pos = np.flatnonzero(same)
        if not len(pos):
            return _empty_pairs()
        dist = np.bitwise_count(diff[pos])
        hit = dist <= self.radius
        verified = [(pos[hit], pos[hit] + 1, dist[hit])]
        inner = pos[:-1][np.diff(pos) == 1]  # i whose run reaches i + 2
        found = []
        if len(inner):
            breaks = np.flatnonzero(np.diff(inner) != 1)
            run_first = inner[np.concatenate([[0], breaks + 1])]
            run_length = inner[np.concatenate([breaks, [len(inner) - 1]])] - run_first + 3
            heavy = run_length > HEAVY_RUN
            if heavy.any():
                first, length = run_first[heavy], run_length[heavy]
                p, q, d = verified[0]
                keep = ~_inside(p, first, length)
                verified[0] = (p[keep], q[keep], d[keep])
                inner = inner[~_inside(inner, first, length)]
                for start, size in zip(first.tolist(), length.tolist(), strict=True):
                    found.append(self._heavy_run(values[start : start + size], dest, key_mask))
            long_runs = ~heavy & (run_length > SHORT_RUN + 1)
            verified += self._shift_passes(values, same, inner)
            for p, q in _triangle_pairs(run_first[long_runs], run_length[long_runs]):
                far = q - p > SHORT_RUN  # nearer pairs came from the shifted compares
                p, q = p[far], q[far]
                d = np.bitwise_count(values[p] ^ values[q])
                hit = d <= self.radius
                verified.append((p[hit], q[hit], d[hit]))
        p = np.concatenate([v[0] for v in verified])
        q = np.concatenate([v[1] for v in verified])
        found.append((values[p], values[q], np.concatenate([v[2] for v in verified])))
        return _concat(found)

    def _shift_passes(self, values: np.ndarray, same: np.ndarray, idx: np.ndarray) -> list[Pairs]:
        """Pairs (i, i + s), s = 2..SHORT_RUN, for the i whose run reaches i + s."""
        verified = []
        shift = 2
        while len(idx) and shift <= SHORT_RUN:
            dist = np.bitwise_count(values[idx] ^ values[idx + shift])
            hit = dist <= self.radius
            verified.append((idx[hit], idx[hit] + shift, dist[hit]))
            idx = idx[idx + shift < len(same)]
            idx = idx[same[idx + shift]]
            shift += 1
        return verified

    def _report(self, j: int, pairs: Pairs, dest: Sequence[int]) -> Pairs:
        """Table j's verified pairs (bit order `dest`) that no earlier table's key matches, as
        codes: each pair is reported by the first table whose key it agrees on."""
        a, b, dist = pairs
        if len(a) >= FIRST_KEY_ROWS and j and self._first_key is not None:
            keep = self._first_key.is_first(a ^ b, j, dest).nonzero()[0]
            a, b, dist = a[keep], b[keep], dist[keep]
        elif len(a) and j:
            earlier = self._check_order[self._check_order < j]  # the earlier tables, shuffled
            earlier = permute_bits(self.masks[earlier], dest)  # [j] their keys, in this order
            keep = _none_matching(a ^ b, earlier)
            a, b, dist = a[keep], b[keep], dist[keep]
        if not len(a):
            return _empty_pairs()
        inverse = _inverse(dest)
        return self._kept(_ordered(permute_bits(a, inverse), permute_bits(b, inverse), dist))


def _none_matching(diff: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Indices of the differences that share a bit with every mask (no key equal).

    Masks are tried one at a time and matched rows leave at once: near pairs, which many keys
    match, leave after a few masks, so a table that meets them again pays little. The last
    few rows are tested against all remaining masks together.
    """
    pending = np.arange(len(diff))
    rest = diff
    for start, mask in enumerate(masks):
        if len(pending) <= 64:
            remaining = masks[start:]
            matched = ((rest[:, None] & remaining[None, :]) == 0).any(axis=1)  # [rows]
            return pending[~matched]
        missed = (rest & mask) != 0
        if not missed.all():
            pending, rest = pending[missed], rest[missed]
    return pending


FIRST_KEY_ROWS = 256  # fewer verified pairs are checked key by key (no lookup tables to build)


_BYTE_COUNTS = (0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F)  # SWAR popcount


class _FirstKey:
    """Which table reports a pair, in one pass, for layouts whose keys are every 3 bytes of
    each view (the affine plane: a view's bytes are the lines of a parallel class).

    A difference avoids a key when its 3 lines are clean (no differing bit), so the first
    table whose key it avoids is in the first view with at least 3 clean lines, and is the
    triple of its 3 lowest. The clean lines of 8 views are found at once, one bit each, by
    looking up each byte of the difference; this replaces a check per earlier table, which
    near pairs (met by many tables) made the second largest cost on clustered codes.
    """

    def __init__(self, layout: SearchLayout) -> None:
        self._views = len(layout.views)
        # [view, line] the line's positions in code bit space
        self._lines = [
            [sum(1 << p for p in range(CODE_BITS) if view[p] // 8 == line) for line in range(8)]
            for view in layout.views
        ]
        self._table_view = [t.view for t in layout.tables]
        self._table_lines = [sum(1 << b for b in t.key_bytes or ()) for t in layout.tables]
        self._cached: dict[tuple[int, ...], np.ndarray] = {}  # lookup tables per bit order

    @classmethod
    def of(cls, layout: SearchLayout) -> _FirstKey | None:
        """The check for `layout`, or None unless its tables are, in order, every triple of
        bytes (ascending) of each view in turn."""
        triples = list(itertools.combinations(range(8), 3))
        wanted = [(v, t) for v in range(len(layout.views)) for t in triples]
        found = [(t.view, t.key_bytes) for t in layout.tables]
        return cls(layout) if layout.views and found == wanted else None

    def _luts(self, dest: tuple[int, ...]) -> np.ndarray:
        """[groups of 8 views, 8 bytes, 256] uint64: bit 8 v + l is set when line l of view
        8 g + v has no bit among those set in that byte value (in the bit order `dest`)."""
        if dest not in self._cached:  # threads may both build one: the same array, harmless
            self._cached[dest] = self._built_luts(dest)
        return self._cached[dest]

    def _built_luts(self, dest: tuple[int, ...]) -> np.ndarray:
        lines = permute_bits(np.array(self._lines, dtype=np.uint64).reshape(-1), dest)  # [8 V]
        groups = -(-self._views // 8)
        bit = np.uint64(1) << np.arange(8 * self._views, dtype=np.uint64) % np.uint64(64)
        values = np.arange(256, dtype=np.uint64)[:, None]  # [256, 1]
        luts = np.zeros((groups, 8, 256), dtype=np.uint64)
        for byte in range(8):
            line_bits = (lines >> np.uint64(8 * byte)) & np.uint64(0xFF)  # [8 V]
            clean = np.where(values & line_bits[None, :], np.uint64(0), bit[None, :])  # [256, 8 V]
            for group in range(groups):
                luts[group, byte] = np.bitwise_or.reduce(clean[:, 64 * group : 64 * group + 64], 1)
        return luts

    def is_first(self, diff: np.ndarray, j: int, dest: Sequence[int]) -> np.ndarray:
        """[pairs] whether table j is the first whose key avoids each difference (given in
        the bit order `dest`; table j's key does avoid it)."""
        view = self._table_view[j]
        luts = self._luts(tuple(dest))
        columns = np.ascontiguousarray(diff).view(np.uint8).reshape(-1, 8)  # [pairs, 8]
        first = np.ones(len(diff), dtype=bool)
        for group in range(view // 8 + 1):
            clean = luts[group, 0][columns[:, _native(0, 8)]]  # [pairs] clean lines, 8 views
            for byte in range(1, 8):
                clean &= luts[group, byte][columns[:, _native(byte, 8)]]
            earlier = 8 if group < view // 8 else view % 8  # views before table j's, here
            if earlier:
                counts = clean - ((clean >> np.uint64(1)) & np.uint64(_BYTE_COUNTS[0]))
                counts = (counts & np.uint64(_BYTE_COUNTS[1])) + (
                    (counts >> np.uint64(2)) & np.uint64(_BYTE_COUNTS[1])
                )
                counts = (counts + (counts >> np.uint64(4))) & np.uint64(_BYTE_COUNTS[2])
                # a byte of count >= 3 gets its top bit from adding 125 (counts are <= 8)
                three = (counts + np.uint64(0x7D7D7D7D7D7D7D7D)) & np.uint64(0x8080808080808080)
                first &= (three & np.uint64((1 << (8 * earlier)) - 1)) == 0
        own = ((clean >> np.uint64(8 * (view % 8))) & np.uint64(0xFF)).astype(np.intp)
        first &= _LOWEST_THREE[own] == self._table_lines[j]  # no earlier triple of its view
        return first


def _lowest_three_bits() -> np.ndarray:
    """[256] each byte value with all but its 3 lowest set bits cleared."""
    lowest = np.zeros(256, dtype=np.int64)
    for value in range(256):
        bits = [b for b in range(8) if value >> b & 1][:3]
        lowest[value] = sum(1 << b for b in bits)
    return lowest


_LOWEST_THREE = _lowest_three_bits()


def _reorder_bytes(values: np.ndarray, dest: Sequence[int], new_dest: Sequence[int]) -> np.ndarray:
    """`values` in bit order `dest` moved to `new_dest`, which differs by whole bytes only."""
    source = [0] * 8  # new byte p comes from byte source[p]
    for bit in range(CODE_BITS):
        source[_native(new_dest[bit] // 8, 8)] = _native(dest[bit] // 8, 8)
    columns = np.take(values.view(np.uint8).reshape(-1, 8), source, axis=1)  # [n, 8]
    return columns.view(np.uint64).reshape(-1)


class _SharedViews:
    """Each view's permuted codes, computed once by its first group and freed after its last."""

    def __init__(self, codes: np.ndarray, views: Sequence[Sequence[int]], users: list[int]) -> None:
        self._codes, self._views = codes, views
        self._users = {view: users.count(view) for view in set(users)}
        self._lock = threading.Lock()
        self._arrays: dict[int, Future] = {}

    def acquire(self, view: int) -> np.ndarray:
        with self._lock:
            future = self._arrays.get(view)
            first = future is None
            if first:
                future = self._arrays[view] = Future()
        if first:
            try:
                future.set_result(permute_bits(self._codes, self._views[view]))
            except BaseException as error:
                future.set_exception(error)
        return future.result()

    def release(self, view: int) -> None:
        with self._lock:
            self._users[view] -= 1
            if not self._users[view]:
                del self._arrays[view]


def _first_bit(dest: Sequence[int], byte: int) -> int:
    """A code bit that `dest` sends into `byte`."""
    return next(bit for bit, to in enumerate(dest) if to // 8 == byte)


def _inside(positions: np.ndarray, first: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Whether each position lies in one of the runs [first, first + length - 1) (sorted)."""
    run = np.searchsorted(first, positions, side="right") - 1
    return (run >= 0) & (positions < first[np.maximum(run, 0)] + length[np.maximum(run, 0)] - 1)


