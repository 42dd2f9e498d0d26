"""Covering designs for exact Hamming radius search: sets of bit positions (keys) such that
any two codes within the radius agree on every bit of at least one key; the layouts, and the
plan that picks the cheapest for a number of codes and a radius (docs/dedupe-search.md).
"""

from __future__ import annotations

import functools
import itertools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CODE_BITS = 64


ALL_POSITIONS = tuple(range(CODE_BITS))


MAX_DESIGN_RADIUS = 12  # above it the recursive designs need more tables than brute force costs


MAX_KEY_BITS = 40


MAX_BLOCK_BITS = 24  # multi-index bucket tables have 2**bits entries; 24 bits = 16M


MULTI_INDEX_CODES = 4_000_000  # beyond, multi-index buckets fill and memory grows: not planned


CANDIDATE_CHUNK = 8_000_000  # multi-index candidates expanded at once (bounds memory)


BUCKETED_CODES = 1 << 20  # from this many codes, tables of byte keys scatter inside buckets


SCATTERED_ROWS = 256  # smaller buckets are grouped by sorting instead


WRITER_ROUNDS = 4  # rounds of "last writer wins" per bucket before sorting what is left


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


def _check_radius(radius: int) -> None:
    if isinstance(radius, bool) or not isinstance(radius, int | np.integer):
        raise TypeError(f"radius must be an integer, got {radius!r}")
    if not 0 <= radius < CODE_BITS:
        raise ValueError(f"radius must be in 0..{CODE_BITS - 1}, got {radius}")


def _empty_pairs() -> Pairs:
    empty = np.empty(0, dtype=np.uint64)
    return empty, empty, np.empty(0, dtype=np.int8)


def _concat(found: list[Pairs]) -> Pairs:
    found = [f for f in found if len(f[0])]
    if not found:
        return _empty_pairs()
    first, second, dist = zip(*found, strict=True)
    return np.concatenate(first), np.concatenate(second), np.concatenate(dist)


def _ordered(a: np.ndarray, b: np.ndarray, dist: np.ndarray) -> Pairs:
    return np.minimum(a, b), np.maximum(a, b), dist.astype(np.int8)
