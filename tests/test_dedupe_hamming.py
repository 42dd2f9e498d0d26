"""Exactness of the multi-index Hamming search against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from inf590k.build.dedupe.search import (
    brute_force_pairs,
    cross_radius_pairs,
    hex_to_codes,
    plan_blocks,
    radius_pairs,
)


def planted_codes(n: int, radius: int, seed: int) -> np.ndarray:
    """Random 64-bit codes plus copies at distances 0..radius+2 (inside and just outside R)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    sources = rng.integers(0, n, n // 5)
    targets = rng.integers(0, n, n // 5)
    for source, target in zip(sources, targets, strict=True):
        flips = rng.choice(64, int(rng.integers(0, radius + 3)), replace=False)
        codes[target] = codes[source] ^ np.uint64(sum(1 << int(bit) for bit in flips))
    return codes


def assert_same_pairs(found, expected) -> None:
    for got, want in zip(found, expected, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("radius", [0, 1, 3, 6, 8, 10, 13])
def test_radius_pairs_equal_brute_force(radius: int) -> None:
    codes = planted_codes(4000, radius, seed=radius)
    expected = brute_force_pairs(codes, radius)
    assert len(expected[0]) > 100  # the planted pairs are really there
    assert_same_pairs(radius_pairs(codes, radius), expected)


@pytest.mark.slow
def test_larger_set_uses_wide_blocks_and_stays_exact() -> None:
    codes = planted_codes(30000, 8, seed=1)
    assert plan_blocks(30000, 30000, 8).num_blocks >= 3
    assert_same_pairs(radius_pairs(codes, 8), brute_force_pairs(codes, 8))


def test_skewed_codes_with_many_identical_values() -> None:
    rng = np.random.default_rng(2)
    base = rng.integers(0, 2**64 - 1, 20, dtype=np.uint64, endpoint=True)
    codes = base[rng.integers(0, 20, 3000)]  # 150 copies of each code on average
    found = radius_pairs(codes, 4)
    assert_same_pairs(found, brute_force_pairs(codes, 4))
    assert (found[2] == 0).sum() > 100_000


def test_cross_pairs_equal_brute_force() -> None:
    rng = np.random.default_rng(3)
    db = planted_codes(5000, 8, seed=4)
    queries = db[rng.integers(0, 5000, 300)] ^ np.uint64(0b1011)  # distance 3 from a db code
    queries = np.concatenate([queries, rng.integers(0, 2**63, 300, dtype=np.uint64)])
    qi, di, dist = cross_radius_pairs(queries, db, 8)
    full = np.bitwise_count(queries[:, None] ^ db[None, :])  # [Q, N]
    want_q, want_d = np.nonzero(full <= 8)
    np.testing.assert_array_equal(qi, want_q)
    np.testing.assert_array_equal(di, want_d)
    np.testing.assert_array_equal(dist, full[want_q, want_d])
    assert len(qi) >= 300


def test_hex_codes_and_distance_values() -> None:
    codes = hex_to_codes(["ffffffffffffffff", "fffffffffffffff0", "0000000000000000"])
    i, j, dist = radius_pairs(codes, 4)
    assert (i.tolist(), j.tolist(), dist.tolist()) == ([0], [1], [4])


def test_empty_and_bad_input() -> None:
    i, j, dist = radius_pairs(np.empty(0, dtype=np.uint64), 8)
    assert len(i) == len(j) == len(dist) == 0
    with pytest.raises(TypeError, match="uint64"):
        radius_pairs(np.arange(10), 8)
    with pytest.raises(ValueError, match="radius"):
        radius_pairs(np.arange(10, dtype=np.uint64), 64)
    with pytest.raises(ValueError, match="radius"):
        radius_pairs(np.arange(10, dtype=np.uint64), -1)
