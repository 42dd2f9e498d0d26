"""verify: a clean dataset passes; each kind of damage is reported, naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from inf590k.build.shard import ShardConfig
from inf590k.dataset.verify import VerifyConfig, verify
from inf590k.execution.units import ExecutionOptions
from tests.builders import make_build, shard_dataset


@pytest.fixture(scope="module")
def clean_dataset(tmp_path_factory, ir_samples) -> Path:
    root = tmp_path_factory.mktemp("verify")
    build = make_build(root, ir_samples)
    out = root / "ds"
    shard_dataset(ShardConfig(build=build, out=out, max_count=3, execution=ExecutionOptions(workers=1, progress=False)))
    return out


@pytest.fixture
def dataset(clean_dataset, tmp_path) -> Path:
    copy = tmp_path / "ds"
    shutil.copytree(clean_dataset, copy)
    return copy


def first_tar(dataset: Path) -> tuple[Path, str]:
    name = json.loads((dataset / "data" / "_info.json").read_text())["splits"]["train"][
        "filenames"
    ][0]
    return dataset / "data" / name, f"data/{name}"


def run(dataset: Path, workers: int = 1):
    return verify(VerifyConfig(dataset=dataset, execution=ExecutionOptions(workers=workers, progress=False)))


def test_clean_dataset_passes(clean_dataset):
    report = run(clean_dataset, workers=2)
    assert report.ok, report.problems
    assert report.samples == 9 and report.shards >= 3
    assert str(report).startswith("verify: OK")


def test_flipped_byte(dataset):
    path, name = first_tar(dataset)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    report = run(dataset)
    assert not report.ok
    assert any(p.startswith(f"{name}: sha256 mismatch") for p in report.problems)


def test_missing_shard(dataset):
    path, name = first_tar(dataset)
    path.unlink()
    report = run(dataset)
    assert f"{name}: missing shard" in report.problems


def test_truncated_shard(dataset):
    path, name = first_tar(dataset)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    report = run(dataset)
    assert any(p.startswith(f"{name}: sha256 mismatch") for p in report.problems)
    assert any(p.startswith(name) and "truncated" in p for p in report.problems)


def test_missing_sidecars(dataset):
    path, name = first_tar(dataset)
    sidecars = dataset / "metadata" / "shards" / path.parent.name
    (sidecars / f"{path.stem}.parquet").unlink()
    (sidecars / f"{path.stem}_stats.json").unlink()
    report = run(dataset)
    assert f"{name}: missing sidecar {path.stem}.parquet" in report.problems
    assert f"{name}: missing sidecar {path.stem}_stats.json" in report.problems


def test_count_mismatch(dataset):
    info_path = dataset / "data" / "_info.json"
    info = json.loads(info_path.read_text())
    split = info["splits"]["train"]
    split["shard_lengths"][0] += 1
    split["num_samples"] += 1
    info_path.write_text(json.dumps(info))
    report = run(dataset)
    name = "data/" + split["filenames"][0]
    assert any(p.startswith(f"{name}: count mismatch") for p in report.problems)
    assert any(p.startswith("metadata/sizes.json") for p in report.problems)


def test_not_a_dataset(tmp_path):
    report = run(tmp_path)
    assert not report.ok and "data/_info.json: missing" in report.problems[0]


def test_summary_lines_say_1_shard_and_1_problem(tmp_path):
    from inf590k.dataset.verify import VerifyReport

    assert str(VerifyReport(tmp_path, shards=1, samples=1)) == f"verify: OK, 1 shard, 1 sample in {tmp_path}"
    assert str(VerifyReport(tmp_path, problems=["x"])).startswith("verify: 1 problem in ")
