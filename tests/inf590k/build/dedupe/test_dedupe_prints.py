"""Dedupe's column paths (hashes parsed from bytes, digests as dictionary codes, groups and
decisions from arrays) agree with the plain per-row rules on awkward rows."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from inf590k.build import catalog as cat
from inf590k.build.dedupe.config import DedupeConfig
from inf590k.build.dedupe.prints import digest_codes, hex_codes
from inf590k.build.dedupe.stage import dedupe, group_rows
from tests.inf590k.build.dedupe.test_dedupe import by_uid, catalog_row, write_rows

AWKWARD_HEX = [
    "0f0f000000000003",
    None,
    "",
    "FFFFFFFFFFFFFFFF",  # upper case
    "AbCdEf0123456789",
    "0000000000000000",  # a hash of zero is still a hash
]
OTHER_SPELLINGS = ["ff", "0x1f", " 1f ", "0f0f_0000"]  # what int(h, 16) also reads


def reference_codes(values: list[str | None]) -> tuple[list[int], list[bool]]:
    return [int(h, 16) if h else 0 for h in values], [bool(h) for h in values]


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string()])
def test_hex_codes_read_what_int_reads(kind):
    for values in (AWKWARD_HEX, AWKWARD_HEX + OTHER_SPELLINGS, [None, None], []):
        codes, hashed = hex_codes(pa.array(values, type=kind))
        expected_codes, expected_hashed = reference_codes(values)
        assert codes.dtype == np.uint64 and codes.tolist() == expected_codes
        assert hashed.tolist() == expected_hashed


def test_hex_codes_of_chunks_slices_and_nulls_that_span_bytes():
    column = pa.chunked_array([pa.array(AWKWARD_HEX), pa.array(OTHER_SPELLINGS + AWKWARD_HEX)])
    codes, hashed = hex_codes(column)
    assert (codes.tolist(), hashed.tolist()) == reference_codes(column.to_pylist())
    sliced = pa.array(AWKWARD_HEX * 3).slice(4, 9)  # an offset into the buffers
    assert hex_codes(sliced)[0].tolist() == reference_codes(sliced.to_pylist())[0]
    # a null whose slot still holds 16 bytes (Arrow allows it): no hash, its bytes ignored
    data = pa.py_buffer(b"00000000000000ff" b"1234567890abcdef")
    offsets = pa.py_buffer(np.array([0, 16, 32], dtype=np.int32).tobytes())
    validity = pa.py_buffer(np.packbits([0, 1], bitorder="little").tobytes())
    spanning = pa.Array.from_buffers(pa.string(), 2, [validity, offsets, data], null_count=1)
    codes, hashed = hex_codes(spanning)
    assert codes.tolist() == [0, 0x1234567890ABCDEF] and hashed.tolist() == [False, True]


def test_hex_codes_refuse_what_int_refuses():
    with pytest.raises(ValueError):
        hex_codes(pa.array(["zz0000000000000g"]))
    with pytest.raises(ValueError):
        hex_codes(pa.array(["not hex"]))
    with pytest.raises(OverflowError):
        hex_codes(pa.array(["1" + "0" * 16]))  # 65 bits
    with pytest.raises(TypeError, match="hex strings"):
        hex_codes(pa.array([1, 2]))


def test_digest_codes_equal_for_equal_digests_across_chunks():
    column = pa.chunked_array([pa.array(["a", None, "", "b"]), pa.array(["b", "", None, "a", "c"])])
    codes = digest_codes(column)
    values = column.to_pylist()
    assert codes.dtype == np.int64
    for i, left in enumerate(values):
        assert (codes[i] == -1) == (left is None)
        for j, right in enumerate(values):
            if left is not None and right is not None:
                assert (codes[i] == codes[j]) == (left == right)


def sha(prefix: str, rest: str) -> str:
    return (prefix * 16)[:16] + (rest * 48)[:48]


def test_digest_codes_of_sha256_digests_tell_apart_digests_that_share_a_prefix():
    digests = [sha("a", "1"), sha("a", "2"), None, sha("b", "1"), sha("a", "1"), sha("A", "1"), sha("c", "3"), None]
    for column in (
        pa.array(digests),
        pa.chunked_array([pa.array(digests[:3]), pa.array(digests[3:])]),
        pa.array(digests + [""]),  # an empty digest is a value: the dictionary path
        pa.array(digests, type=pa.large_string()),
    ):
        codes = digest_codes(column)
        values = column.to_pylist()
        assert codes.dtype == np.int64 and len(codes) == len(values)
        for i, left in enumerate(values):
            assert (codes[i] == -1) == (left is None)
            for j, right in enumerate(values):
                if left is not None and right is not None:
                    assert (codes[i] == codes[j]) == (left == right), (left, right)


# ----------------------------------------------------------------------------- groups


def reference_groups(rows: list[dict], radius: int, dhash_max: int) -> tuple[list, list, list]:
    """The rules row by row: components of equal digests and of hashed rows within the
    radius; kept: largest area, then source alphabetically, then uid."""
    n = len(rows)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    phash = [int(r["phash"], 16) if r["phash"] else 0 for r in rows]
    dhash = [int(r["dhash"], 16) if r["dhash"] else 0 for r in rows]
    for i in range(n):
        for j in range(i + 1, n):
            same = rows[i]["pixel_sha256"] is not None and rows[i]["pixel_sha256"] == rows[j]["pixel_sha256"]
            near = (
                bool(rows[i]["phash"])
                and bool(rows[j]["phash"])
                and (phash[i] ^ phash[j]).bit_count() <= radius
                and (dhash_max < 0 or (dhash[i] ^ dhash[j]).bit_count() <= dhash_max)
            )
            if same or near:
                parent[root(i)] = root(j)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(root(i), []).append(i)
    kept = [0] * n
    for group in members.values():
        best = min(group, key=lambda i: (-rows[i]["width"] * rows[i]["height"], rows[i]["source"], rows[i]["uid"]))
        for i in group:
            kept[i] = best
    partition = sorted(sorted(g) for g in members.values())
    exact = [rows[i]["pixel_sha256"] is not None and rows[i]["pixel_sha256"] == rows[kept[i]]["pixel_sha256"] for i in range(n)]
    return partition, kept, exact


def awkward_rows() -> list[dict]:
    rows = [
        catalog_row("a0", "beta", 0x0F0F_0000_0000_0000),
        catalog_row("a1", "alpha", 0x0F0F_0000_0000_0003),
        catalog_row("a2", "alpha", 0x0F0F_0000_0000_00FF, size=(32, 32)),
        catalog_row("b0", "alpha", 0xFFFF_FFFF_0000_0000, pixels="same"),
        catalog_row("b1", "beta", 0x1234_5678_9ABC_DEF0, pixels="same", size=(128, 64)),
        catalog_row("e0", "alpha", 0x1111, pixels="e"),
        catalog_row("e1", "alpha", 0x2222_0000_0000_0000, pixels="e"),
    ]
    rows[1]["phash"] = rows[1]["phash"].upper()  # upper case
    rows[2]["phash"] = f"{0x0F0F_0000_0000_00FF:x}"  # 15 digits: no leading zero
    odd = [  # no pHash, empty pHash, no digest, empty digest: still grouped by what they have
        catalog_row("n0", "alpha", 0x0F0F_0000_0000_0000, pixels="z"),
        catalog_row("n1", "alpha", 0x0F0F_0000_0000_0000, pixels="z"),
        catalog_row("n2", "gamma", 0x0F0F_0000_0000_0001),
        catalog_row("n3", "gamma", 0x0F0F_0000_0000_0001),
        catalog_row("n4", "gamma", 0),
        catalog_row("n5", "gamma", 0),
    ]
    odd[0].update(phash=None, dhash=None)
    odd[1].update(phash="", dhash="")
    odd[2].update(pixel_sha256=None)
    odd[3].update(pixel_sha256="")
    odd[4].update(pixel_sha256="", phash=None)
    odd[5].update(pixel_sha256=None, phash=None, dhash=None)
    return rows + odd


@pytest.mark.parametrize(("radius", "dhash_max"), [(8, -1), (2, -1), (0, -1), (8, 1), (32, -1)])
def test_groups_agree_with_the_rules_row_by_row(radius, dhash_max):
    rows = awkward_rows()
    table = cat.rows_to_table(rows)
    groups = group_rows(table, radius, dhash_max, ())
    partition, kept, exact = reference_groups(rows, radius, dhash_max)
    found: dict[int, list[int]] = {}
    for index, label in enumerate(groups.labels.tolist()):
        found.setdefault(label, []).append(index)
    assert sorted(found.values()) == partition
    assert groups.kept.tolist() == kept
    assert groups.exact.tolist() == exact
    assert groups.sizes.tolist() == [len(found[label]) for label in groups.labels.tolist()]


def test_a_row_marked_duplicate_by_an_earlier_layout_takes_part_again(tmp_path):
    rows = awkward_rows()
    rows[1].update(status="duplicate", reason="near duplicate of a0 (pHash distance 2)", dup_group=7)
    write_rows(tmp_path, rows, parts=3)
    summary = dedupe(DedupeConfig(build=tmp_path, contact_groups=0, progress=False))
    found = by_uid(tmp_path)
    assert found["a1"]["status"] == "ok" and found["a1"]["reason"] == ""  # upper-case hash, kept
    assert found["a0"]["reason"] == "near duplicate of a1 (pHash distance 2)"
    assert found["a2"]["reason"] == "near duplicate of a1 (pHash distance 6)"
    assert found["n1"]["reason"] == "duplicate of n0 (exact pixels)"  # no pHash: digests alone
    for uid in ("n2", "n3"):  # no digest, an empty one: their pHash joins them to the a group
        assert found[uid]["reason"] == "near duplicate of a1 (pHash distance 1)"
    assert found["n5"]["status"] == "ok" and found["n5"]["dup_group"] == -1  # nothing to compare
    report = json.loads((tmp_path / "dedupe" / "report.json").read_text())
    assert summary.groups == len(report["groups"])
    assert sorted(r["uid"] for r in cat.read_catalog(tmp_path).to_pylist()) == sorted(r["uid"] for r in rows)


def test_rows_without_a_digest_or_phash_never_match_outside_rows_without_one(tmp_path):
    old = [catalog_row("o0", "alpha", 0), catalog_row("o1", "alpha", 0x5555)]
    old[0].update(pixel_sha256=None, phash=None, dhash=None)
    new = [catalog_row("m0", "beta", 0), catalog_row("m1", "beta", 0x5555, pixels=old[1]["pixel_sha256"])]
    new[0].update(pixel_sha256=None, phash=None, dhash=None)
    write_rows(tmp_path / "old", old)
    write_rows(tmp_path / "new", new)
    summary = dedupe(DedupeConfig(build=tmp_path / "new", against=(tmp_path / "old",), contact_groups=0, progress=False))
    found = by_uid(tmp_path / "new")
    assert found["m0"]["status"] == "ok"
    assert found["m1"]["reason"] == "already in old/o1 (exact pixels)"
    assert summary.outside_matches == 1


def test_sha256_digests_sharing_their_first_16_digits_are_not_exact_duplicates(tmp_path):
    """End to end: ingest-style digests (64 hex digits) whose first 16 digits collide are told
    apart by the whole digest, in the build and against another build; equal ones still meet."""
    twin, other = sha("7", "a"), sha("7", "b")  # same key, different digests
    far = [0x0000_0000_0000_0000, 0xFFFF_FFFF_FFFF_FFFF, 0x00FF_00FF_00FF_00FF, 0xF0F0_F0F0_F0F0_F0F0]
    rows = [
        catalog_row("p", "alpha", far[0], pixels=twin),
        catalog_row("q", "alpha", far[1], pixels=other),
        catalog_row("r", "alpha", far[2], pixels=twin.upper()),  # another spelling, another value
        catalog_row("s", "beta", far[3], pixels=sha("9", "c")),
        catalog_row("t", "beta", 0x1234_5678_9ABC_DEF0, pixels=sha("9", "c"), size=(32, 32)),
    ]
    write_rows(tmp_path / "new", rows, parts=2)
    write_rows(tmp_path / "old", [catalog_row("o1", "gamma", 0x0F0F_0F0F_0F0F_0F0F, pixels=sha("7", "c"))])
    summary = dedupe(DedupeConfig(build=tmp_path / "new", against=(tmp_path / "old",), contact_groups=0, progress=False))
    found = by_uid(tmp_path / "new")
    for uid in ("p", "q", "r"):  # each alone: neither grouped nor matched to o1
        assert (found[uid]["status"], found[uid]["dup_group"]) == ("ok", -1)
    assert found["s"]["status"] == "ok" and found["s"]["dup_group"] == found["t"]["dup_group"] >= 0
    assert found["t"]["reason"] == "duplicate of s (exact pixels)"
    assert summary.outside_matches == 0
