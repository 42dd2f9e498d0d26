"""Shards read unchanged by three real clients: webdataset, Hugging Face datasets, timm."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from inf590k.build import catalog as cat
from inf590k.build.bins import BinConfig, bin_catalog
from inf590k.build.shard import ShardConfig
from inf590k.execution.units import ExecutionOptions
from tests.builders import make_build, shard_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, ir_samples) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("clients")
    build = make_build(root, ir_samples)
    table = cat.read_catalog(build)  # one source with tags, one without: schema inference trap
    tags = [["uav", "night"] if s == "beta" else [] for s in table.column("source").to_pylist()]
    table = table.set_column(table.schema.get_field_index("tags"), "tags", [tags])
    cat.write_catalog(build, table)
    bin_catalog(BinConfig(build=build))  # the stage that wrote the catalog last: `shard` checks it
    out = root / "ds"
    shard_dataset(ShardConfig(build=build, out=out, max_count=4, execution=ExecutionOptions(workers=1, progress=False)))
    return build, out


def split_info(out: Path) -> dict:
    return json.loads((out / "data" / "_info.json").read_text())["splits"]["train"]


def class_ids(out: Path) -> dict[str, int]:
    info = json.loads((out / "data" / "_info.json").read_text())
    return {s["id"]: s["class_id"] for s in info["sources"]}


def expected_samples(build: Path) -> dict[str, dict]:
    return {r["uid"]: r for r in cat.read_catalog(build).to_pylist() if r["status"] == "ok"}


def test_webdataset_reads_every_sample(dataset):
    import webdataset as wds

    build, out = dataset
    urls = [str(out / "data" / f) for f in split_info(out)["filenames"]]
    expected, classes = expected_samples(build), class_ids(out)
    seen = []
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        assert set(sample) >= {"__key__", "cls", "json", "png"}
        row = expected[sample["__key__"]]
        assert json.loads(sample["json"])["uid"] == row["uid"]
        assert int(sample["cls"]) == classes[row["source"]]
        image = cv2.imdecode(np.frombuffer(sample["png"], np.uint8), cv2.IMREAD_UNCHANGED)
        assert image.shape == (row["height"], row["width"])
        seen.append(sample["__key__"])
    assert sorted(seen) == sorted(expected)


def test_hugging_face_datasets_loads_the_tars(dataset, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    build, out = dataset
    files = [str(out / "data" / f) for f in split_info(out)["filenames"]]
    loaded = datasets.load_dataset(
        "webdataset", data_files={"train": files}, split="train", cache_dir=str(tmp_path / "cache")
    )
    expected = expected_samples(build)
    assert loaded.num_rows == split_info(out)["num_samples"] == len(expected)
    assert isinstance(loaded.features["png"], datasets.Image)
    tags = set()
    for example in loaded:
        row = expected[example["__key__"]]
        assert example["json"]["uid"] == row["uid"] and example["json"]["width"] == row["width"]
        assert example["png"].size == (row["width"], row["height"])
        assert isinstance(example["cls"], int)
        tags.add(example["json"]["tags"])
    assert tags == {"", "uav,night"}


def test_timm_reads_the_index(dataset):
    import timm.data

    build, out = dataset
    reader_set = timm.data.create_dataset(
        "wds/inf590k", root=str(out / "data"), split="train", is_training=False
    )
    assert len(reader_set) == split_info(out)["num_samples"]
    classes = sorted(class_ids(out)[r["source"]] for r in expected_samples(build).values())
    targets = []
    for image, target in reader_set:
        assert image.size[0] > 0 and image.mode == "RGB"
        targets.append(int(target))
    assert sorted(targets) == classes
