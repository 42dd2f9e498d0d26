"""Exactness of the Hamming radius search (every layout) against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from inf590k.build.dedupe import designs, keysearch
from inf590k.build.dedupe import search as hamming
from inf590k.build.dedupe.designs import (
    affine_plane_layout,
    affine_plane_lines,
    all_pairs_layout,
    multi_index_layout,
    plan_search,
    recursive_layout,
    recursive_table_count,
)
from inf590k.build.dedupe.keysearch import permute_bits
from inf590k.build.dedupe.search import (
    brute_force_pairs,
    cross_radius_pairs,
    hex_to_codes,
    radius_pairs,
)


def random_codes(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)


def flip_bits(rng: np.random.Generator, codes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each code with counts[i] distinct random bits flipped."""
    order = np.argsort(rng.random((len(codes), 64)), axis=1)  # [N, 64] random bit orders
    chosen = np.arange(64)[None, :] < counts[:, None]  # [N, 64] the first counts[i] of them
    flips = np.where(chosen, np.uint64(1) << order.astype(np.uint64), np.uint64(0))
    return codes ^ np.bitwise_or.reduce(flips, axis=1)


def planted_codes(n: int, radius: int, seed: int) -> np.ndarray:
    """Random 64-bit codes plus copies at distances 0..radius+2 (inside and just outside R)."""
    rng = np.random.default_rng(seed)
    codes = random_codes(rng, n)
    sources, targets = rng.integers(0, n, n // 5), rng.integers(0, n, n // 5)
    codes[targets] = flip_bits(rng, codes[sources], rng.integers(0, radius + 3, n // 5))
    return codes


def clustered_codes(n: int, seed: int, cluster: int = 8, max_flips: int = 10) -> np.ndarray:
    """Codes a few flipped bits from fewer centres whose bits are biased (like infrared pHashes
    of similar scenes): skewed buckets, exact duplicates (0 flips) and near pairs."""
    rng = np.random.default_rng(seed)
    bias = rng.uniform(0.15, 0.85, 64)
    bits = rng.random((max(1, n // cluster), 64)) < bias  # [C, 64]
    centres = (bits.astype(np.uint64) << np.arange(64, dtype=np.uint64)).sum(
        axis=1, dtype=np.uint64
    )
    members = centres[rng.integers(0, len(centres), n)]
    return flip_bits(rng, members, rng.integers(0, max_flips + 1, n))


def assert_same_pairs(found, expected) -> None:
    for got, want in zip(found, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def assert_brute_force(codes: np.ndarray, radius: int, **kwargs) -> int:
    expected = brute_force_pairs(codes, radius)
    assert_same_pairs(radius_pairs(codes, radius, **kwargs), expected)
    return len(expected[0])


# ----------------------------------------------------------------------------- layouts


def test_affine_plane_lines_meet_once() -> None:
    classes = affine_plane_lines()
    assert len(classes) == 9
    masks = [sum(1 << b for b in line) for lines in classes for line in lines]  # 72 lines
    for lines in classes:  # each class partitions the 64 positions
        assert sorted(b for line in lines for b in line) == list(range(64))
    for a, b in itertools.combinations(range(64), 2):
        pair = (1 << a) | (1 << b)
        assert sum(mask & pair == pair for mask in masks) == 1


def uncovered(error_sets: np.ndarray, layout) -> np.ndarray:
    """Error sets (as bit masks) that no key of the layout avoids."""
    masks = np.array([t.mask for t in layout.tables], dtype=np.uint64)
    missed = np.ones(len(error_sets), dtype=bool)
    for mask in masks:
        missed &= (error_sets & mask) != 0
    return error_sets[missed]


def test_affine_layout_covers_random_and_spread_error_sets() -> None:
    layout = affine_plane_layout()
    assert (layout.num_tables, layout.key_bits, layout.max_radius) == (504, 24, 8)
    rng = np.random.default_rng(0)
    for size in range(1, 9):
        errors = flip_bits(rng, np.zeros(100_000, dtype=np.uint64), np.full(100_000, size))
        assert len(uncovered(errors, layout)) == 0
    # a conic {(x, x^2)}: 8 points, no three on a line, the most spread-out error set
    conic = sum(1 << (8 * x + designs._gf8_mul(x, x)) for x in range(8))
    assert len(uncovered(np.array([conic], dtype=np.uint64), layout)) == 0
    # these 9 bits touch 6 lines of every class, leaving 2 clean: radius 8 is the limit
    nine = sum(1 << b for b in (12, 22, 24, 28, 30, 31, 38, 45, 49))
    assert len(uncovered(np.array([nine], dtype=np.uint64), layout)) == 1


@pytest.mark.slow
def test_affine_layout_covers_every_error_set_of_8_bits() -> None:
    """Exhaustive up to the plane's symmetry: the layout is invariant under affine maps, which
    take any 3 non-collinear points to (0,0), (1,0), (0,1); collinear sets lie on one line."""
    fixed = [0, 8, 1]  # bits of (0,0), (1,0), (0,1)
    others = np.array([b for b in range(64) if b not in fixed], dtype=np.uint64)
    base = np.uint64(sum(1 << b for b in fixed))
    layout = affine_plane_layout()
    for first in range(len(others)):  # the smallest of the 5 other points, in slices
        rest = others[first + 1 :]
        combos = np.array(list(itertools.combinations(range(len(rest)), 4)), dtype=np.int64)
        if not len(combos):
            continue
        errors = base | (np.uint64(1) << others[first])
        errors = errors | np.bitwise_or.reduce(np.uint64(1) << rest[combos], axis=1)
        assert len(uncovered(errors, layout)) == 0


@pytest.mark.parametrize("width", [6, 11, 16])
def test_recursive_designs_cover_exhaustively(width: int) -> None:
    for radius in range(0, min(width, 6)):
        for key_bits in range(0, width - radius + 1):
            count = recursive_table_count(width, radius, key_bits)
            if not np.isfinite(count):
                continue
            layout = recursive_layout(radius, key_bits, positions=range(width))
            assert layout.num_tables <= count
            assert all(bin(t.mask).count("1") == key_bits for t in layout.tables)
            sets = [sum(1 << b for b in e) for e in itertools.combinations(range(width), radius)]
            assert len(uncovered(np.array(sets, dtype=np.uint64), layout)) == 0


def test_plan_follows_size_and_radius() -> None:
    assert plan_search(1_000_000, 8).blocks is not None  # multi-index hashing up to a few M
    assert plan_search(10_000_000, 8).name == affine_plane_layout().name
    assert plan_search(10_000_000, 4).num_tables == 56  # one class of lines for radius <= 5
    assert plan_search(200, 20).key_bits == 0  # a handful of codes: brute force
    assert plan_search(10_000_000, 40).key_bits == 0  # no covering beats brute force there
    with pytest.raises(ValueError, match="radius"):
        plan_search(10, 64)


def test_permute_bits_round_trip_keeps_distances() -> None:
    rng = np.random.default_rng(5)
    dest = tuple(rng.permutation(64).tolist())
    for n in (100, 40_000):  # the byte tables and the 16-bit tables
        codes = random_codes(rng, n)
        moved = permute_bits(codes, dest)
        np.testing.assert_array_equal(permute_bits(moved, keysearch._inverse(dest)), codes)
        np.testing.assert_array_equal(
            np.bitwise_count(moved[1:] ^ moved[:-1]), np.bitwise_count(codes[1:] ^ codes[:-1])
        )
    one = permute_bits(np.array([1 << 5], dtype=np.uint64), dest)
    assert int(one[0]) == 1 << dest[5]


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("radius", [0, 1, 3, 6, 8, 10, 13])
def test_planned_search_equals_brute_force(radius: int) -> None:
    codes = planted_codes(4000, radius, seed=radius)
    assert assert_brute_force(codes, radius) > 100  # the planted pairs are really there


def use_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scatter byte-key tables in buckets (as from 1M codes on); buckets of a few thousand codes
    hold a handful, so the scattering thresholds come down too."""
    monkeypatch.setattr(keysearch, "BUCKETED_CODES", 0)
    monkeypatch.setattr(keysearch, "SCATTERED_ROWS", 8)
    monkeypatch.setattr(keysearch, "WRITER_ROUNDS", 2)


def planned_layouts() -> list:
    """Each distinct (radius, layout) the planner picks for 100K-10M codes; byte-key layouts
    also with their bucketed tables."""
    chosen = {}
    for n in (100_000, 1_000_000, 10_000_000):
        for radius in (2, 5, 6, 8):
            layout = plan_search(n, radius)
            chosen.setdefault((radius, layout.describe()), layout)
    params = []
    for (radius, name), layout in chosen.items():
        for bucketed in (False, True) if layout.views else (False,):
            ident = f"r{radius}-{name}" + ("-bucketed" if bucketed else "")
            params.append(pytest.param(radius, layout, bucketed, id=ident))
    return params


@pytest.mark.parametrize(("radius", "layout", "bucketed"), planned_layouts())
def test_layouts_chosen_for_large_n_equal_brute_force(
    radius: int, layout, bucketed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The layouts the planner picks at 100K-10M codes, run on a couple of thousand codes."""
    assert layout.key_bits > 0
    if bucketed:
        use_buckets(monkeypatch)
    for codes in (planted_codes(1500, radius, seed=7), clustered_codes(1500, seed=8)):
        assert_brute_force(codes, radius, layout=layout)


@pytest.mark.parametrize("radius", [0, 2, 5, 8, 9, 12])
def test_other_layouts_at_each_radius(radius: int) -> None:
    codes = np.concatenate([planted_codes(1500, radius, seed=11), clustered_codes(1500, seed=12)])
    layouts = [
        all_pairs_layout(),
        recursive_layout(radius, max(1, 14 - radius)),
        multi_index_layout(1_000_000, radius),
    ]
    if radius <= 8:
        layouts.append(affine_plane_layout())
    for layout in layouts:
        assert_brute_force(codes, radius, layout=layout)


@pytest.mark.parametrize("bucketed", [False, True], ids=["sorted", "bucketed"])
def test_long_and_heavy_runs_take_their_own_paths(
    monkeypatch: pytest.MonkeyPatch, bucketed: bool
) -> None:
    """Clustered codes share keys in long runs: shifted compares stop at SHORT_RUN (sorted
    tables) and scattering after WRITER_ROUNDS (bucketed ones), the rest of a run is listed,
    and runs over HEAVY_RUN are searched again on their other bits."""
    searches = []

    class CountingSearch(keysearch._Search):
        def __init__(self, *args, **kwargs) -> None:
            searches.append(len(args[0]))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(hamming, "_Search", CountingSearch)  # the first search
    monkeypatch.setattr(keysearch, "_Search", CountingSearch)  # searches of heavy runs
    if bucketed:
        use_buckets(monkeypatch)
    monkeypatch.setattr(keysearch, "SHORT_RUN", 3)
    monkeypatch.setattr(keysearch, "WRITER_ROUNDS", 2)
    monkeypatch.setattr(keysearch, "HEAVY_RUN", 40)
    codes = clustered_codes(2000, seed=3, cluster=250, max_flips=6)
    for radius, layout in ((5, affine_plane_layout(5)), (8, recursive_layout(8, 16))):
        searches.clear()
        assert assert_brute_force(codes, radius, layout=layout) > 1000
        assert len(searches) > 1 and max(searches[1:]) > 40  # heavy runs were searched again


def test_adversarial_inputs() -> None:
    rng = np.random.default_rng(4)
    base = random_codes(rng, 1)
    # all codes equal: every pair at distance 0, searched once
    same = np.repeat(base, 300)
    i, j, dist = radius_pairs(same, 8)
    assert len(i) == 300 * 299 // 2 and not dist.any()
    assert len(radius_pairs(same, 0)[0]) == 300 * 299 // 2
    # codes at exactly r and r + 1 bits from one code, and from each other
    for radius in (1, 4, 8):
        counts = np.array([radius] * 200 + [radius + 1] * 200)
        codes = np.concatenate([base, flip_bits(rng, np.repeat(base, 400), counts)])
        found = radius_pairs(codes, radius, layout=plan_search(10_000_000, radius))
        assert_same_pairs(found, brute_force_pairs(codes, radius))
        assert ((found[0] == 0) & (found[2] == radius)).sum() == 200  # exactly r: all found
    # radius 0 keeps only duplicates; the largest radius keeps every pair
    codes = np.concatenate([random_codes(rng, 500), base, base])
    assert radius_pairs(codes, 0)[0].tolist() == [500]
    assert len(radius_pairs(codes[:200], 63)[0]) == len(brute_force_pairs(codes[:200], 63)[0])
    assert_brute_force(codes[:200], 63)


def test_threads_do_not_change_the_result() -> None:
    codes = np.concatenate([planted_codes(2000, 8, seed=9), clustered_codes(2000, seed=10)])
    layout = affine_plane_layout()
    assert_same_pairs(
        radius_pairs(codes, 8, threads=1, layout=layout),
        radius_pairs(codes, 8, threads=3, layout=layout),
    )


CROSS_LAYOUTS = [None, affine_plane_layout(), recursive_layout(8, 12), multi_index_layout(10**6, 8)]


@pytest.mark.parametrize("layout", CROSS_LAYOUTS)
def test_cross_pairs_equal_brute_force(layout) -> None:
    rng = np.random.default_rng(3)
    db = np.concatenate([planted_codes(4000, 8, seed=4), clustered_codes(1000, seed=5)])
    queries = db[rng.integers(0, len(db), 300)] ^ np.uint64(0b1011)  # distance 3 from a db code
    queries = np.concatenate([queries, random_codes(rng, 300), db[:50], db[:5]])  # equal codes too
    qi, di, dist = cross_radius_pairs(queries, db, 8, layout=layout)
    full = np.bitwise_count(queries[:, None] ^ db[None, :])  # [Q, N]
    want_q, want_d = np.nonzero(full <= 8)
    np.testing.assert_array_equal(qi, want_q)
    np.testing.assert_array_equal(di, want_d)
    np.testing.assert_array_equal(dist, full[want_q, want_d])
    assert len(qi) >= 355


@pytest.mark.parametrize(("num_queries", "num_db"), [(20_000, 300), (300, 20_000)])
def test_cross_pairs_index_the_larger_side(num_queries: int, num_db: int) -> None:
    """A small set against a large one (dedupe --against a test set): multi-index tables on
    the side that makes probing cheap, either way round, still equal to brute force."""
    rng = np.random.default_rng(6)
    large = planted_codes(max(num_queries, num_db), 8, seed=7)
    small = large[rng.integers(0, len(large), 100)] ^ np.uint64(0b111)  # distance 3
    small = np.concatenate([small, random_codes(rng, 100)])
    queries, db = (large, small) if num_queries > num_db else (small, large)
    _, how = hamming._plan_cross(len(queries), len(db), 8)
    side = "queries" if len(queries) > len(db) else "db"
    assert how == f"multi-index, tables on {side}"
    qi, di, dist = cross_radius_pairs(queries, db, 8)
    full = np.bitwise_count(queries[:, None] ^ db[None, :])  # [Q, D]
    want_q, want_d = np.nonzero(full <= 8)
    np.testing.assert_array_equal(qi, want_q)
    np.testing.assert_array_equal(di, want_d)
    np.testing.assert_array_equal(dist, full[want_q, want_d])
    assert len(qi) >= 100
    # 10M codes against a test set probes tables on the test set; 10M against 10M searches jointly
    assert hamming._plan_cross(10_000_000, 1000, 8)[1] == "multi-index, tables on db"
    assert hamming._plan_cross(10_000_000, 10_000_000, 8)[1] == "joint"


def test_hex_codes_and_distance_values() -> None:
    codes = hex_to_codes(["ffffffffffffffff", "fffffffffffffff0", "0000000000000000"])
    i, j, dist = radius_pairs(codes, 4)
    assert (i.tolist(), j.tolist(), dist.tolist()) == ([0], [1], [4])


def test_byte_order_strides_and_read_only_input() -> None:
    codes = planted_codes(600, 8, seed=13)
    expected = brute_force_pairs(codes, 8)
    assert_same_pairs(radius_pairs(codes.astype(">u8"), 8), expected)  # big-endian storage
    strided = np.repeat(codes, 2)[::2]  # a non-contiguous view
    assert_same_pairs(radius_pairs(strided, 8), expected)
    frozen = codes.copy()
    frozen.flags.writeable = False
    assert_same_pairs(radius_pairs(frozen, 8, layout=affine_plane_layout()), expected)


def test_empty_and_bad_input() -> None:
    i, j, dist = radius_pairs(np.empty(0, dtype=np.uint64), 8)
    assert len(i) == len(j) == len(dist) == 0
    assert len(radius_pairs(np.array([7], dtype=np.uint64), 8)[0]) == 0
    assert (
        len(cross_radius_pairs(np.empty(0, dtype=np.uint64), np.arange(3, dtype=np.uint64), 8)[0])
        == 0
    )
    with pytest.raises(TypeError, match="uint64"):
        radius_pairs(np.arange(10), 8)
    with pytest.raises(TypeError, match="uint64"):
        radius_pairs(np.zeros((2, 2), dtype=np.uint64), 8)
    with pytest.raises(TypeError, match="uint64"):
        cross_radius_pairs(np.arange(3, dtype=np.uint64), np.arange(3.0), 8)
    with pytest.raises(ValueError, match="radius"):
        radius_pairs(np.arange(10, dtype=np.uint64), 64)
    with pytest.raises(ValueError, match="radius"):
        radius_pairs(np.arange(10, dtype=np.uint64), -1)
    with pytest.raises(TypeError, match="integer"):
        radius_pairs(np.arange(10, dtype=np.uint64), 8.5)
    with pytest.raises(ValueError, match="covers radius <= 8"):
        radius_pairs(np.arange(10, dtype=np.uint64), 9, layout=affine_plane_layout())


@pytest.mark.slow
def test_sampled_codes_equal_brute_force_at_200k() -> None:
    """200K uniform and clustered codes through the 10M layout: the pairs of 2,000 sampled codes
    equal a brute-force scan of those codes against all others."""
    codes = np.concatenate([planted_codes(100_000, 8, seed=20), clustered_codes(100_000, seed=21)])
    i, j, dist = radius_pairs(codes, 8, layout=plan_search(10_000_000, 8))
    sample = np.random.default_rng(22).choice(len(codes), 2000, replace=False)
    full = np.bitwise_count(codes[sample, None] ^ codes[None, :])  # [S, N]
    rows, cols = np.nonzero(full <= 8)
    rows = sample[rows]
    keep = rows != cols
    first, second = np.minimum(rows, cols)[keep], np.maximum(rows, cols)[keep]
    want = set(zip(first.tolist(), second.tolist(), strict=True))
    in_sample = np.isin(i, sample) | np.isin(j, sample)
    got = set(zip(i[in_sample].tolist(), j[in_sample].tolist(), strict=True))
    assert got == want and len(want) > 2000
    np.testing.assert_array_equal(dist, np.bitwise_count(codes[i] ^ codes[j]))


@pytest.mark.parametrize("skewed", [False, True], ids=["spread", "one-bucket"])
def test_radix_lookup_equals_searchsorted(skewed: bool) -> None:
    """The lookup of codes in their sorted distinct set (top-bit buckets, then a vectorised
    binary search) equals np.searchsorted, also when every code falls in one bucket."""
    rng = np.random.default_rng(30)
    codes = random_codes(rng, 200_000)
    if skewed:  # the same top 40 bits: one bucket of 200K codes, a full binary search
        codes = (codes & np.uint64((1 << 24) - 1)) | np.uint64(0xABCDEF0123 << 24)
    table = np.unique(codes)
    assert len(table) >= hamming.RADIX_LOOKUP_CODES
    wanted = np.concatenate([table[rng.integers(0, len(table), 300_000)], table[[0, -1]]])
    found = hamming._lookup(table, wanted)
    np.testing.assert_array_equal(found, np.searchsorted(table, wanted))
    assert found.dtype == np.int64


@pytest.mark.parametrize("radius", [5, 8])
def test_first_key_check_equals_a_check_of_every_earlier_key(radius: int) -> None:
    """The affine layouts decide which table reports a pair from the clean lines of each class
    in one pass; that must be exactly "no earlier table's key is avoided", in any bit order."""
    from inf590k.build.dedupe.designs import _bytes_first

    layout = affine_plane_layout(radius)
    first_key = keysearch._FirstKey.of(layout)
    assert first_key is not None and keysearch._FirstKey.of(recursive_layout(8, 16)) is None
    masks = np.array([t.mask for t in layout.tables], dtype=np.uint64)
    rng = np.random.default_rng(31)
    reported = checked = 0
    for j in rng.choice(np.arange(1, len(layout.tables)), 12, replace=False).tolist():
        table = layout.tables[j]
        diffs = flip_bits(rng, np.zeros(3000, dtype=np.uint64), rng.integers(0, 11, 3000))
        diffs &= ~np.uint64(table.mask)  # the pairs table j meets: its key avoided
        for dest in (table.dest, _bytes_first(layout.views[table.view], table.key_bytes[:1])):
            moved = permute_bits(diffs, dest)
            expected = np.zeros(len(diffs), dtype=bool)
            expected[keysearch._none_matching(moved, permute_bits(masks[:j], dest))] = True
            found = first_key.is_first(moved, j, dest)
            np.testing.assert_array_equal(found, expected)
            reported, checked = reported + int(found.sum()), checked + len(found)
    assert 0 < reported < checked  # both outcomes occur


@pytest.mark.parametrize("bucketed", [False, True], ids=["sorted", "bucketed"])
def test_clustered_codes_through_the_10m_layout_with_the_first_key_check(
    monkeypatch: pytest.MonkeyPatch, bucketed: bool
) -> None:
    """Clustered codes (exact duplicates, near pairs met by many tables, skewed keys) through
    the 10M-code layout, every table's pairs going through the one-pass first-key check."""
    calls = []
    real = keysearch._FirstKey.is_first

    def counted(self, diff, j, dest):
        calls.append(len(diff))
        return real(self, diff, j, dest)

    monkeypatch.setattr(keysearch._FirstKey, "is_first", counted)
    monkeypatch.setattr(keysearch, "FIRST_KEY_ROWS", 0)
    if bucketed:
        use_buckets(monkeypatch)
    codes = np.concatenate([clustered_codes(2500, seed=32, cluster=4), planted_codes(500, 8, 33)])
    assert assert_brute_force(codes, 8, layout=plan_search(10_000_000, 8)) > 1000
    assert len(calls) > 400 and sum(calls) > 10_000
