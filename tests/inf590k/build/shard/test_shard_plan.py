"""The shard plan: each bin cut on its own to the sample and byte targets, the byte estimate,
the JSON members built by column, determinism and compact jobs."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from inf590k.build import catalog as cat
from inf590k.build.shard import ShardConfig
from inf590k.build.shard import sample_json as sample_json_module
from inf590k.build.shard.jobs import plan_shards
from inf590k.build.shard.plan import (
    NPY_HEADER_BYTES,
    PNG_BYTES_PER_PIXEL,
    SAMPLE_OVERHEAD_BYTES,
    bin_shard_count,
    estimated_bytes,
    even_runs,
    kept_by_bin,
    parse_size,
    run_bounds,
    shard_counts,
)
from inf590k.build.shard.sample_json import sample_jsons
from inf590k.dataset.layout import sample_json
from inf590k.execution.units import ExecutionOptions
from tests.builders import make_build, shard_dataset


def catalog_rows(count: int, bin_name: str, width: int = 64, height: int = 64, **extra) -> list[dict]:
    return [
        {
            "uid": f"{bin_name}-{index:05d}",
            "source": "alpha" if index % 3 else "beta",
            "relpath": f"{bin_name}/{index}.png",
            "status": cat.STATUS_OK,
            "width": width,
            "height": height,
            "bit_depth": 8,
            "res_bin": bin_name,
            **extra,
        }
        for index in range(count)
    ]


def uniform(count: int, each: int = 1000) -> np.ndarray:
    return np.full(count, each, dtype=np.int64)


def lengths_of(counts: dict[str, int], sizes: dict[str, int]) -> dict[str, list[int]]:
    return {b: [len(r) for r in even_runs(list(range(sizes[b])), counts[b])] for b in sizes}


# ----------------------------------------------------------------------------- counts


def test_a_small_bin_is_one_short_shard_and_never_shortens_the_others():
    sizes = {"big": 71, "mid": 30, "one": 1}
    counts = shard_counts({b: uniform(n) for b, n in sizes.items()}, max_count=40, max_size=10**9)
    assert counts == {"big": 2, "mid": 1, "one": 1}
    assert lengths_of(counts, sizes) == {"big": [36, 35], "mid": [30], "one": [1]}


@pytest.mark.parametrize("small", [1, 15, 16, 100])
def test_the_smallest_bin_does_not_set_the_shard_count(small):
    """The old 2x rule gave 590K frames 18,439 shards for a 16-image bin; now ~60 + 1."""
    counts = shard_counts({"big": uniform(590_000), "small": uniform(small)}, 10_000, 10**12)
    assert counts == {"big": 59, "small": 1}


def test_byte_target_gives_the_fewest_shards_within_it():
    estimates = uniform(1000, each=300_000)  # 300 KB samples, 1 GB -> 3,333 per shard
    assert bin_shard_count(estimates, 10_000, 10**9) == 1
    assert bin_shard_count(estimates, 10_000, 50_000_000) == 6  # 167: over by < 1 sample
    assert bin_shard_count(estimates, 10_000, 49_000_000) == 7
    varied = np.random.default_rng(0).integers(1_000, 2_000_000, 997)
    for target in (5_000_000, 37_000_000, 300_000_000):
        count = bin_shard_count(varied, 10_000, target)
        limit = target + varied.max()  # over the target by less than one sample at most
        runs = np.add.reduceat(varied, run_bounds(len(varied), count)[:-1])
        assert runs.max() < limit
        assert count >= math.ceil(varied.sum() / target)
        fewer = np.add.reduceat(varied, run_bounds(len(varied), count - 1)[:-1])
        assert count == math.ceil(varied.sum() / target) or fewer.max() >= limit


def test_one_sample_over_the_byte_target_does_not_cut_its_bin_to_single_samples():
    estimates = np.array([5_000] + [10] * 99, dtype=np.int64)
    assert bin_shard_count(estimates, 100, 1_000) == 6  # what the total needs
    assert bin_shard_count(np.array([5_000], dtype=np.int64), 100, 1_000) == 1
    assert bin_shard_count(np.array([], dtype=np.int64), 100, 1_000) == 0


def test_shard_multiple_rounds_the_total_up_from_the_longest_bins():
    sizes = {"big": 71, "mid": 30, "one": 1}
    estimates = {b: uniform(n) for b, n in sizes.items()}
    counts = shard_counts(estimates, max_count=40, max_size=10**9, multiple=8)
    assert sum(counts.values()) == 8 and counts["one"] == 1
    assert max(max(v) for v in lengths_of(counts, sizes).values()) <= 15
    with pytest.raises(ValueError, match="--shard-multiple"):
        shard_counts(estimates, max_count=40, max_size=10**9, multiple=200)


def test_run_bounds_cover_every_row_once():
    assert run_bounds(10, 3).tolist() == [0, 4, 7, 10]
    assert even_runs(list("abcdefg"), 3) == [list("abc"), list("de"), list("fg")]


# ----------------------------------------------------------------------------- byte estimate


def test_estimate_counts_png_raw_frame_and_overhead():
    rows = catalog_rows(2, "b", width=640, height=512)
    rows[1]["bit_depth"] = 16
    table = cat.rows_to_table(rows)
    png = math.ceil(640 * 512 * PNG_BYTES_PER_PIXEL) + SAMPLE_OVERHEAD_BYTES
    assert estimated_bytes(table, keep_16bit=False).tolist() == [png, png]
    raw = 2 * 640 * 512 + NPY_HEADER_BYTES
    assert estimated_bytes(table, keep_16bit=True).tolist() == [png, png + raw]


@pytest.mark.parametrize(
    ("text", "size"),
    [("1GB", 10**9), ("500 MB", 5 * 10**8), ("2GiB", 2 * 2**30), ("1e9", 10**9), ("4096", 4096),
     (77, 77), ("1.5kb", 1500), ("1e30", int(1e30))],
)  # fmt: skip
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "big", "1XB", "0", "-5MB", "nan", "inf GB", 0, -5, "0.5"])
def test_parse_size_refuses_what_is_not_a_size(text):
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_parse_size_says_an_overflowing_size_is_not_finite():
    """1e999 reads as infinity: said as such, not as 'at least 1 byte'."""
    with pytest.raises(ValueError, match="not a finite size"):
        parse_size("1e999")


# ----------------------------------------------------------------------------- JSON by column


def test_sample_jsons_are_sample_json_byte_for_byte():
    rows = catalog_rows(6, "b")
    rows[0].update(tags=["day", "ünïcode", 'q"uote'], crop_box=[0, 1, 64, 65], entropy=0.1)
    rows[1].update(grey_diff=float("nan"), entropy=float("inf"), license="CC BY 4.0")
    rows[2].update(grey_diff=float("-inf"), relpath="weird\\path\n\x01/雪.png", frame=7)
    rows[3].update(tags=[], normalisation=None, dup_group=12, file_bytes=2**40)
    rows[4].update(crop_box=None, tags=None, phash="00ff", orig_dtype="uint16")
    table = cat.rows_to_table(rows)
    expected = [sample_json(row) for row in table.to_pylist()]
    assert sample_jsons(table) == expected
    assert json.loads(expected[0])["tags"] == 'day,ünïcode,q"uote'  # the row really varied
    assert sample_jsons(table.slice(0, 0)) == []


HOSTILE_TEXT = ["", 'a"b', "back\\slash", "\x00\x1f\x7f", "\u2028\u2029", "😀 non-BMP", "</script>", "\ue000", "tab\t"]


def test_sample_jsons_of_hostile_text_and_extreme_integers():
    """Control characters, quotes, non-BMP characters, line separators, a null tag inside a
    list, the largest and smallest integers: as json writes them (a null tag is left out)."""
    rows = catalog_rows(len(HOSTILE_TEXT), "b")
    for index, (row, text) in enumerate(zip(rows, HOSTILE_TEXT, strict=True)):
        row.update(relpath=text, license=text, normalisation=text, tags=[text, "x"])
        row.update(file_bytes=[2**63 - 1, -(2**63)][index % 2], width=[2**31 - 1, -(2**31)][index % 2])
    rows[0]["tags"] = ["a", None, "b"]
    table = cat.rows_to_table(rows)
    expected = [sample_json(row) for row in table.to_pylist()]
    assert sample_jsons(table) == expected
    assert json.loads(expected[0])["tags"] == "a,b"
    assert [json.loads(j)["relpath"] for j in expected] == HOSTILE_TEXT


def test_sample_json_array_joins_to_the_members_in_order():
    table = cat.rows_to_table(catalog_rows(50, "b"))
    expected = [sample_json(row) for row in table.to_pylist()]
    array = sample_json_module.sample_json_array(table)
    assert array.to_pylist() == expected
    assert bytes(sample_json_module.joined_bytes(array.slice(7, 20))) == b"".join(expected[7:27])
    assert bytes(sample_json_module.joined_bytes(sample_json_module.sample_json_array(table.slice(0, 0)))) == b""
    with pytest.raises(ValueError, match="nulls"):
        sample_json_module.joined_bytes(pa.array([b"x", None], pa.binary()))


def test_sample_jsons_floats_of_every_magnitude_match_json():
    rng = np.random.default_rng(7)
    exponents = rng.integers(-45, 38, 3000)
    floats = (rng.random(3000) * 10.0 ** exponents).astype(np.float32).tolist()
    floats += [0.0, -0.0, 1e-4, 9.999e-5, 1e15, 1e16, 123456.0, -7.0, 2.0**-149, 3.4e38]
    rows = catalog_rows(len(floats), "b")
    for row, value in zip(rows, floats, strict=True):
        row.update(entropy=value, grey_diff=-value)
    rows[0]["crop_box"] = [0, None, 5, 5]  # a null inside a list: JSON null
    table = cat.rows_to_table(rows)
    assert sample_jsons(table) == [sample_json(row) for row in table.to_pylist()]


# ----------------------------------------------------------------------------- plans of a build


def synthetic_catalog(sizes: dict[str, int]) -> pa.Table:
    rows = [r for b, n in sizes.items() for r in catalog_rows(n, b)]
    rows.append({**catalog_rows(1, "dropped")[0], "status": "duplicate", "res_bin": ""})
    return cat.rows_to_table(rows)


def test_plan_is_deterministic_and_jobs_carry_only_their_rows(tmp_path):
    catalog = synthetic_catalog({"a": 500, "b": 1})
    config = ShardConfig(build=tmp_path, out=tmp_path / "ds", max_count=100)
    first = plan_shards(config, None, catalog)
    second = plan_shards(config, None, catalog.take(np.arange(501, -1, -1)))
    assert [(j.relpath, j.rows_digest, j.plan) for j in first] == [(j.relpath, j.rows_digest, j.plan) for j in second]
    assert [len(j) for j in first] == [100] * 5 + [1]
    assert sorted(u for j in first for u in j.table.column("uid").to_pylist()) == sorted(
        r["uid"] for r in catalog.to_pylist() if r["status"] == cat.STATUS_OK
    )
    assert [json.loads(m)["uid"] for m in first[0].jsons] == [r["uid"] for r in first[0].rows]
    whole, one = len(pickle.dumps(first[0])), len(pickle.dumps(first[-1]))
    assert whole < 100 * one  # a job pickles its own rows, not its bin's
    other_seed = plan_shards(ShardConfig(build=tmp_path, out=tmp_path, max_count=100, seed=1), None, catalog)
    assert other_seed[0].plan != first[0].plan


def test_unbinned_kept_rows_are_refused(tmp_path):
    rows = catalog_rows(3, "a")
    rows[1]["res_bin"] = None
    with pytest.raises(ValueError, match=r"1 kept rows have no resolution bin .*inf590k bin"):
        kept_by_bin(tmp_path, cat.rows_to_table(rows))


def test_real_build_shards_each_bin_to_the_target(tmp_path, ir_samples):
    built = make_build(tmp_path / "b", ir_samples)
    by_bin = kept_by_bin(built)
    summary = shard_dataset(
        ShardConfig(build=built, out=tmp_path / "ds", max_count=3, execution=ExecutionOptions(workers=1, progress=False))
    )
    info = json.loads((tmp_path / "ds" / "data" / "_info.json").read_text())["splits"]["train"]
    per_bin: dict[str, list[int]] = {}
    for name, length in zip(info["filenames"], info["shard_lengths"], strict=True):
        per_bin.setdefault(name.split("/")[0], []).append(length)
    assert {b: sum(v) for b, v in per_bin.items()} == {b: t.num_rows for b, t in by_bin.items()}
    assert {b: len(v) for b, v in per_bin.items()} == {
        b: math.ceil(t.num_rows / 3) for b, t in by_bin.items()
    }
    assert summary.bins == len(by_bin) and summary.shards == len(info["filenames"])
    tars = {name: (tmp_path / "ds" / "data" / name).stat().st_size for name in info["filenames"]}
    estimates = {j.relpath: j.estimated_bytes for j in plan_shards(ShardConfig(build=built, out=Path("x"), max_count=3))}
    for name, size in tars.items():  # the estimate is of the right order for real frames
        assert 0.25 * size < estimates[name] < 4 * size, (name, size, estimates[name])
