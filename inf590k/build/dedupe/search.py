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

import functools
import itertools
import math
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from inf590k.fsutil import available_cores

CODE_BITS = 64
ALL_POSITIONS = tuple(range(CODE_BITS))
MAX_DESIGN_RADIUS = 12  # above it the recursive designs need more tables than brute force costs
MAX_KEY_BITS = 40
MAX_BLOCK_BITS = 24  # multi-index bucket tables have 2**bits entries; 24 bits = 16M
MULTI_INDEX_CODES = 4_000_000  # beyond, multi-index buckets fill and memory grows: not planned
CANDIDATE_CHUNK = 8_000_000  # multi-index candidates expanded at once (bounds memory)
BUCKETED_CODES = 1 << 20  # from this many codes, tables of byte keys scatter inside buckets
SCATTERED_ROWS = 256  # smaller buckets are grouped by sorting instead
WRITER_ROUNDS = 3  # rounds of "last writer wins" per bucket before sorting what is left
SHORT_RUN = 16  # runs up to this long are paired by shifted compares; longer ones by expansion
HEAVY_RUN = 2048  # longer runs share a key: they are searched again on their other bits
PAIR_CHUNK = 4_000_000  # candidate pairs expanded or compared at once (bounds memory)
_LITTLE_ENDIAN = sys.byteorder == "little"

# Costs that choose the layout (seconds on one core of the 2-core development machine, from
# per-table timings at 20K-10M codes; only their ratios matter)
_SORTED_TABLE_S, _SORTED_CODE_S = 5e-4, 30e-9  # byte-key table, sorted
_BUCKETED_TABLE_S, _BUCKETED_CODE_S = 8e-3, 18e-9  # byte-key table, scattered in buckets
_OWN_TABLE_S, _OWN_CODE_S = 1.5e-3, 55e-9  # table that permutes and sorts the codes itself
_CANDIDATE_S = 40e-9  # per candidate pair that shares a key by chance
_MULTI_INDEX_S = 9e-9  # per probe or candidate of multi-index hashing
_MULTI_INDEX_MASK_S = 2e-5  # per probed mask of multi-index hashing (Python, small arrays)
_BRUTE_S = 12e-9  # per pair of brute force

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]  # (first, second, distance)


# ----------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class KeyTable:
    """One exact-match key: the codes' bits permuted so that the key takes the top bits.

    `dest[b]` is where bit b of a code goes. A key made of whole bytes of a shared view
    (`view` >= 0, `key_bytes` = those bytes, the lead byte first) is searched with the other
    tables of its lead byte, from one copy of the view bucketed by that byte (see `_Search`).
    """

    dest: tuple[int, ...]
    key_bits: int
    mask: int  # the key's positions in code bit space
    view: int = -1
    key_bytes: tuple[int, ...] | None = None


@dataclass(frozen=True)
class BlockPlan:
    """Multi-index hashing: the 64 bits split in blocks, each probed within its own radius."""

    offsets: tuple[int, ...]
    widths: tuple[int, ...]
    radii: tuple[int, ...]

    @property
    def num_blocks(self) -> int:
        return len(self.widths)


@dataclass(frozen=True)
class SearchLayout:
    name: str
    key_bits: int
    max_radius: int  # the largest radius whose pairs the keys are sure to meet
    tables: tuple[KeyTable, ...]
    views: tuple[tuple[int, ...], ...] = ()  # shared bit permutations (dest per bit)
    blocks: BlockPlan | None = None  # multi-index hashing instead of exact keys

    @property
    def num_tables(self) -> int:
        return self.blocks.num_blocks if self.blocks else len(self.tables)

    def describe(self) -> str:
        if self.blocks:
            b = self.blocks
            return f"{self.name}: {b.num_blocks} blocks of {b.widths} bits, probe radii {b.radii}"
        if self.key_bits == 0:
            return f"{self.name} (brute force)"
        return f"{self.name}: {self.num_tables} tables of {self.key_bits}-bit keys"


def _mask_of(positions: Sequence[int]) -> int:
    return sum(1 << p for p in positions)


def _key_first(key: Sequence[int], positions: Sequence[int]) -> tuple[int, ...]:
    """A permutation sending the key to the top bits, the other free positions next, then the
    positions outside `positions`."""
    free_rest = [p for p in positions if p not in set(key)]
    fixed = [p for p in range(CODE_BITS) if p not in set(positions)]
    dest = [0] * CODE_BITS
    for rank, bit in enumerate([*key, *free_rest, *fixed]):
        dest[bit] = CODE_BITS - 1 - rank
    return tuple(dest)


def _bytes_first(view: Sequence[int], top: Sequence[int]) -> tuple[int, ...]:
    """`view` followed by a byte reordering that puts bytes `top` first (top[0] highest)."""
    order = [*(b for b in range(8) if b not in top), *reversed(top)]
    new_byte = {old: new for new, old in enumerate(order)}
    return tuple(8 * new_byte[view[b] // 8] + view[b] % 8 for b in range(CODE_BITS))


def all_pairs_layout() -> SearchLayout:
    identity = tuple(range(CODE_BITS))
    return SearchLayout("all pairs", 0, CODE_BITS - 1, (KeyTable(identity, 0, 0),))


def _gf8_mul(a: int, b: int) -> int:
    """Multiplication in GF(8) = GF(2)[x] / (x^3 + x + 1)."""
    product = 0
    for bit in range(3):
        if b >> bit & 1:
            product ^= a << bit
    for bit in (4, 3):
        if product >> bit & 1:
            product ^= 0b1011 << (bit - 3)
    return product


def affine_plane_lines() -> list[list[list[int]]]:
    """The 9 parallel classes of AG(2, 8), each 8 lines of 8 bit positions.

    Bit 8x + y is the point (x, y). Class m < 8 holds the lines y + m*x = c; class 8 the lines
    x = c. Any two points lie on exactly one line.
    """
    classes = []
    for slope in range(9):
        lines: list[list[int]] = [[] for _ in range(8)]
        for x, y in itertools.product(range(8), range(8)):
            label = x if slope == 8 else y ^ _gf8_mul(slope, x)
            lines[label].append(8 * x + y)
        classes.append(lines)
    return classes


def affine_plane_layout(radius: int = 8) -> SearchLayout:
    """Keys of 3 parallel lines, 24 bits each: 504 keys (all 9 classes) that cover every radius
    up to 8, or the 56 keys of one class for a radius up to 5.

    Why it covers: r <= 8 differing positions leave 3 clean lines in a class whose lines they
    touch at most 5 times. In a class, r points on t lines make sum(n_l - 1) = r - t
    "collisions"; every pair of points shares exactly one line, so the C(r, 2) pairs are spread
    over the 9 classes and some class holds ceil(C(r, 2) / 9) of them. For r = 8 that is 4 pairs,
    which need at least 3 collisions (2 collisions give at most 3 pairs), so t <= 5; r = 7 gives
    3 pairs, so 2 collisions and t <= 5; r = 6 gives 2 pairs, so t <= 5. With r <= 5, every
    class has t <= 5, so one class is enough.
    """
    _check_radius(radius)
    if radius > 8:
        raise ValueError(f"3 parallel lines of AG(2,8) cover radius <= 8, got {radius}")
    classes = affine_plane_lines()[: 1 if radius <= 5 else 9]
    views, tables = [], []
    for class_index, lines in enumerate(classes):
        view = [0] * CODE_BITS
        for label, line in enumerate(lines):
            for rank, bit in enumerate(line):
                view[bit] = 8 * label + rank  # line `label` becomes byte `label` of the view
        views.append(tuple(view))
        for triple in itertools.combinations(range(8), 3):
            dest = _bytes_first(view, triple)
            mask = _mask_of([bit for label in triple for bit in lines[label]])
            tables.append(KeyTable(dest, 24, mask, class_index, triple))
    if len(classes) == 1:
        return SearchLayout(
            "affine plane AG(2,8), 3 lines of one class", 24, 5, tuple(tables), tuple(views)
        )
    name = "affine plane AG(2,8), 3 parallel lines"
    return SearchLayout(name, 24, 8, tuple(tables), tuple(views))


@functools.cache
def _design_counts(width: int, radius: int) -> np.ndarray:
    """[width + 1]: tables of the recursive design for keys of k bits among `width` positions
    that avoid any `radius` of them (inf: impossible). See `_design_keys`."""
    radius = min(radius, width)
    counts = np.full(width + 1, np.inf)
    counts[0] = 1.0
    if radius == 0:
        counts[:] = 1.0
        return counts
    if width == 1:
        return counts
    counts[1:] = _split_plan(width, radius)[0][1:]
    counts[width - radius + 1 :] = np.inf
    return counts


@functools.cache
def _split_plan(width: int, radius: int) -> tuple[np.ndarray, dict]:
    """Best way to cover `radius` errors among `width` positions split in halves A | B.

    If A holds e errors, B holds at most radius - e. The range 0..radius of e is cut into
    intervals [lo, hi]; for each, keys are K_A | K_B with K_A from the design for `hi` errors on
    A and K_B from the design for `radius - lo` errors on B. Returns the table count per key
    width and, per (lo, k), the chosen (hi, k_A).
    """
    half = width // 2
    other = width - half
    best_after: dict[int, np.ndarray] = {radius + 1: np.zeros(width + 1)}
    choice: dict[tuple[int, int], tuple[int, int]] = {}
    for lo in range(radius, -1, -1):
        best = np.full(width + 1, np.inf)
        best_hi = np.zeros(width + 1, dtype=np.int64)
        best_k1 = np.zeros(width + 1, dtype=np.int64)
        right = _design_counts(other, radius - lo)
        for hi in range(lo, radius + 1):
            left = _design_counts(half, hi)
            term = np.full(width + 1, np.inf)
            term_k1 = np.zeros(width + 1, dtype=np.int64)
            for k1 in np.flatnonzero(np.isfinite(left)):
                window = slice(k1, k1 + other + 1)
                product = left[k1] * right
                better = product < term[window]
                term[window] = np.where(better, product, term[window])
                term_k1[window] = np.where(better, k1, term_k1[window])
            total = term + best_after[hi + 1]
            better = total < best
            best = np.where(better, total, best)
            best_hi = np.where(better, hi, best_hi)
            best_k1 = np.where(better, term_k1, best_k1)
        best_after[lo] = best
        for k in range(width + 1):
            choice[lo, k] = (int(best_hi[k]), int(best_k1[k]))
    return best_after[0], choice


def _design_keys(width: int, radius: int, key_bits: int) -> list[tuple[int, ...]]:
    """Keys (positions 0..width-1) such that any `radius` positions miss at least one key."""
    radius = min(radius, width)
    if key_bits <= 0:
        return [()]
    if not np.isfinite(_design_counts(width, radius)[key_bits]):
        raise ValueError(f"no {key_bits}-bit keys avoid {radius} of {width} positions")
    if radius == 0:
        return [tuple(range(key_bits))]
    half = width // 2
    _, choice = _split_plan(width, radius)
    keys: dict[tuple[int, ...], None] = {}  # ordered, without repeats
    lo = 0
    while lo <= radius:
        hi, left_bits = choice[lo, key_bits]
        left = _design_keys(half, hi, left_bits)
        right = _design_keys(width - half, radius - lo, key_bits - left_bits)
        for a, b in itertools.product(left, right):
            keys[(*a, *(half + p for p in b))] = None
        lo = hi + 1
    return list(keys)


def recursive_layout(
    radius: int, key_bits: int, positions: Sequence[int] = ALL_POSITIONS
) -> SearchLayout:
    """Keys of `key_bits` bits among `positions`, covering any `radius` differing positions."""
    return _recursive_layout(radius, key_bits, tuple(positions))


@functools.lru_cache(maxsize=256)  # heavy runs of one table ask for the same layout again
def _recursive_layout(radius: int, key_bits: int, positions: tuple[int, ...]) -> SearchLayout:
    tables = []
    for local_key in _design_keys(len(positions), radius, key_bits):
        key = [positions[p] for p in local_key]
        tables.append(KeyTable(_key_first(key, positions), key_bits, _mask_of(key)))
    return SearchLayout("recursive halving", key_bits, radius, tuple(tables))


def ball_volume(bits: int, radius: int) -> int:
    return sum(math.comb(bits, r) for r in range(radius + 1))


def _plan_blocks(num_probes: int, num_table: int, radius: int) -> tuple[float, BlockPlan]:
    """Multi-index hashing's block count with the lowest cost when `num_probes` codes probe
    tables of `num_table` uniform codes, and that cost in probes + candidates:
    P * sum_i V(w_i, t_i) * (1 + T / 2**w_i), plus building the tables.

    Pigeonhole: with m blocks and probe radii summing to radius - m + 1, two codes within the
    radius differ in at most t_i bits in some block i."""
    best: tuple[float, BlockPlan] | None = None
    min_blocks = math.ceil(CODE_BITS / MAX_BLOCK_BITS)
    for m in range(min_blocks, max(min_blocks, min(radius + 1, CODE_BITS // 4)) + 1):
        widths = [CODE_BITS // m + (1 if i < CODE_BITS % m else 0) for i in range(m)]
        offsets = [sum(widths[:i]) for i in range(m)]
        need = max(0, radius - m + 1)
        radii = [need // m + (1 if i < need % m else 0) for i in range(m)]
        cost = sum(
            num_probes * ball_volume(w, t) * (1.0 + num_table / 2.0**w)
            for w, t in zip(widths, radii, strict=True)
        )
        cost += m * (num_table + 2.0 ** max(widths))
        plan = BlockPlan(tuple(offsets), tuple(widths), tuple(radii))
        if best is None or cost < best[0]:
            best = (cost, plan)
    assert best is not None
    return best


def multi_index_layout(num_codes: int, radius: int) -> SearchLayout:
    """Multi-index hashing (Norouzi et al.) with the block count chosen for `num_codes`: the
    fastest up to a few million codes, but its blocks stop at 24 bits, so beyond that its
    buckets fill and its time grows as N^1.8."""
    _check_radius(radius)
    plan = _plan_blocks(num_codes, num_codes, radius)[1]
    return SearchLayout("multi-index hashing", min(plan.widths), radius, (), (), plan)


def recursive_table_count(width: int, radius: int, key_bits: int) -> float:
    return float(_design_counts(width, radius)[key_bits])


def _estimate(kind: str, tables: int, key_bits: int, n: int) -> float:
    pairs = n * (n - 1) / 2
    if kind == "all pairs":
        return pairs * _BRUTE_S
    if kind == "affine":
        sorted_ = _SORTED_TABLE_S + n * _SORTED_CODE_S
        per_table = min(sorted_, _BUCKETED_TABLE_S + n * _BUCKETED_CODE_S)
    else:
        per_table = _OWN_TABLE_S + n * _OWN_CODE_S
    return tables * (per_table + pairs / 2.0**key_bits * _CANDIDATE_S)


def _multi_index_estimate(num_probes: int, num_table: int, radius: int) -> float:
    cost, plan = _plan_blocks(num_probes, num_table, radius)
    masks = sum(ball_volume(w, t) for w, t in zip(plan.widths, plan.radii, strict=True))
    return cost * _MULTI_INDEX_S + masks * _MULTI_INDEX_MASK_S


def estimated_seconds(layout: SearchLayout, num_codes: int) -> float:
    """Rough single-core seconds of a search of `num_codes` uniform codes with `layout`."""
    if layout.blocks:
        return _multi_index_estimate(num_codes, num_codes, layout.max_radius)
    if layout.key_bits == 0:
        kind = "all pairs"
    else:
        kind = "affine" if layout.views else "recursive"
    return _estimate(kind, layout.num_tables, layout.key_bits, num_codes)


def plan_search(
    num_codes: int, radius: int, positions: Sequence[int] = ALL_POSITIONS
) -> SearchLayout:
    """The layout with the lowest estimated time for `num_codes` distinct codes."""
    _check_radius(radius)
    positions = tuple(positions)
    width = len(positions)
    options = [(_estimate("all pairs", 1, 0, num_codes), "all pairs", 0)]
    if positions == ALL_POSITIONS and radius <= 8:
        tables = 56 if radius <= 5 else 504
        options.append((_estimate("affine", tables, 24, num_codes), "affine", 24))
    if positions == ALL_POSITIONS and 0 < radius and num_codes <= MULTI_INDEX_CODES:
        options.append((_multi_index_estimate(num_codes, num_codes, radius), "multi-index", 0))
    if radius <= MAX_DESIGN_RADIUS and radius < width:
        counts = _design_counts(width, radius)
        for key_bits in range(1, min(width - radius, MAX_KEY_BITS) + 1):
            if np.isfinite(counts[key_bits]):
                seconds = _estimate("recursive", int(counts[key_bits]), key_bits, num_codes)
                options.append((seconds, "recursive", key_bits))
    _, kind, key_bits = min(options)
    if kind == "affine":
        return affine_plane_layout(radius)
    if kind == "multi-index":
        return multi_index_layout(num_codes, radius)
    if kind == "recursive":
        return recursive_layout(radius, key_bits, positions)
    return all_pairs_layout()


# ----------------------------------------------------------------------------- bit permutations


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


# ----------------------------------------------------------------------------- the search


def _empty_pairs() -> Pairs:
    empty = np.empty(0, dtype=np.uint64)
    return empty, empty, np.empty(0, dtype=np.int8)


def _concat(found: list[Pairs]) -> Pairs:
    found = [f for f in found if len(f[0])]
    if not found:
        return _empty_pairs()
    first, second, dist = zip(*found, strict=True)
    return np.concatenate(first), np.concatenate(second), np.concatenate(dist)


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
            for _ in range(WRITER_ROUNDS):  # round 1 on all rows, then on the losers
                slots[keys] = rows
                winner = slots[keys]
                lost = np.flatnonzero(winner != rows)
                rows, winner, keys = rows[lost], winner[lost], keys[lost]
                a, b = bucket[rows], bucket[winner]
                dist = np.bitwise_count(a ^ b)
                hit = dist <= self.radius
                if hit.any():
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
        if len(a) and j:
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


def _ordered(a: np.ndarray, b: np.ndarray, dist: np.ndarray) -> Pairs:
    return np.minimum(a, b), np.maximum(a, b), dist.astype(np.int8)


# ----------------------------------------------------------------------------- multi-index hashing


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
        self.starts = (np.cumsum(counts) - counts).astype(np.int64)  # [2**w]


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
    tasks = []
    for offset, width, block_radius in zip(plan.offsets, plan.widths, plan.radii, strict=True):
        table = _BucketTable(codes, _block_values(codes, offset, width), width)
        tasks.append((table, np.arange(len(codes), dtype=np.int64), [0]))
        for top, masks in _masks_by_top_bit(width, block_radius).items():
            # a pair (a, a ^ mask) is probed only from the side whose top mask bit is clear,
            # so each unordered pair is expanded once per mask
            clear = np.flatnonzero((table.sorted_values >> top) & 1 == 0)
            tasks.append((table, clear, masks.tolist()))
    with ThreadPoolExecutor(max(1, threads)) as pool:
        results = pool.map(lambda task: _probe_block(*task, radius=radius), tasks)
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


# ----------------------------------------------------------------------------- public interface


def _check_radius(radius: int) -> None:
    if isinstance(radius, bool) or not isinstance(radius, int | np.integer):
        raise TypeError(f"radius must be an integer, got {radius!r}")
    if not 0 <= radius < CODE_BITS:
        raise ValueError(f"radius must be in 0..{CODE_BITS - 1}, got {radius}")


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
        return np.searchsorted(self.unique, codes)


def _cross_rows(
    start_a: np.ndarray, count_a: np.ndarray, start_b: np.ndarray, count_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into a group order) of every member pair of group pairs (a, b)."""
    sizes = count_a * count_b
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
