"""`inf590k shard --shard-samples N --shard-bytes SIZE`: targets per bin; bad sizes refused."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from cli import main
from inf590k.build.shard.plan import kept_by_bin
from tests.builders import make_build


@pytest.fixture(scope="module")
def built(tmp_path_factory, ir_samples):
    return make_build(tmp_path_factory.mktemp("shardcli"), ir_samples)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def lengths_per_bin(dataset) -> dict[str, list[int]]:
    split = json.loads((dataset / "data" / "_info.json").read_text())["splits"]["train"]
    per_bin: dict[str, list[int]] = {}
    for name, length in zip(split["filenames"], split["shard_lengths"], strict=True):
        per_bin.setdefault(name.split("/")[0], []).append(length)
    return per_bin


def test_shard_samples_cuts_each_bin_on_its_own(built, tmp_path):
    out = tmp_path / "ds"
    result = invoke("shard", "--build", built, "--out", out, "--workers", 1,
                    "--shard-samples", 2, "--shard-bytes", "500MB")  # fmt: skip
    assert result.exit_code == 0, result.output
    sizes = {b: t.num_rows for b, t in kept_by_bin(built).items()}
    per_bin = lengths_per_bin(out)
    assert {b: len(v) for b, v in per_bin.items()} == {b: math.ceil(n / 2) for b, n in sizes.items()}
    assert f"over {len(sizes)} bins" in result.output


def test_old_option_names_still_work(built, tmp_path):
    result = invoke("shard", "--build", built, "--out", tmp_path / "ds", "--workers", 1,
                    "--max-count", 100, "--max-size", 10**9)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert all(len(v) == 1 for v in lengths_per_bin(tmp_path / "ds").values())


@pytest.mark.parametrize("size", ["lots", "1XB", "0", "-1GB"])
def test_bad_shard_bytes_is_a_usage_error(built, tmp_path, size):
    result = invoke("shard", "--build", built, "--out", tmp_path / "ds", "--shard-bytes", size)
    assert result.exit_code == 2 and "--shard-bytes" in result.output and "size" in result.output
    assert not (tmp_path / "ds").exists()


def test_zero_samples_is_refused_in_one_line(built, tmp_path):
    result = invoke("shard", "--build", built, "--out", tmp_path / "ds", "--shard-samples", 0)
    assert result.exit_code != 0 and "--shard-samples" in result.output
