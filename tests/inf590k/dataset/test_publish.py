"""`inf590k publish`: the dataset folder is uploaded as it is (it already is the Hub layout),
read by the real `datasets` client; the card; fast one-line failures offline, unreachable or
unauthorised; uploads (against a fake Hub API) that resume where an interrupted run stopped.
Nothing here reaches huggingface.co."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from inf590k.build import catalog as cat
from inf590k.build.ingest import IngestConfig
from inf590k.build.pipeline import BuildConfig
from inf590k.build.shard import ShardConfig
from inf590k.dataset.publish import PublishConfig, PublishError, owned_files, publish, read_shards
from inf590k.dataset.report import ReportConfig, report
from inf590k.execution.units import ExecutionOptions
from inf590k.synth import SynthConfig, synthesize
from tests.builders import build_dataset
from tests.hubkit import GOOD_TOKEN


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """Two synthetic sources -> build -> a dataset with several bins, one with 3 shards."""
    root = tmp_path_factory.mktemp("publish")
    synthesize(SynthConfig(layout="sirst", out=root / "sirst", count=12, scale=0.5, workers=1))
    synthesize(
        SynthConfig(layout="roadscene", out=root / "rs", count=8, scale=0.5, seed=1, workers=1)
    )
    build, dataset = root / "build", root / "ds"
    build_dataset(
        BuildConfig(
            ingest=IngestConfig(sources=(("sirst", root / "sirst"), ("roadscene", root / "rs")), build=build, execution=ExecutionOptions(workers=1, progress=False)),
            out=dataset,
            shard=ShardConfig(build=build, out=dataset, max_count=4, execution=ExecutionOptions(workers=1, progress=False)),
        )
    )
    report(ReportConfig(dataset=dataset))
    return build, dataset


@pytest.fixture
def own_copy(built, tmp_path) -> Path:
    """A copy of the dataset folder that a test may publish (and so refresh) on its own."""
    return Path(shutil.copytree(built[1], tmp_path / "ds"))


def kept_per_bin(build: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in cat.read_catalog(build).to_pylist():
        if row["status"] == cat.STATUS_OK:
            counts[row["res_bin"]] = counts.get(row["res_bin"], 0) + 1
    return counts


def snapshot(folder: Path) -> dict[str, str]:
    """Every file of a folder and its content digest."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def closed_port() -> int:
    """A loopback port nothing listens on: bound, read, closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------- the folder


def test_dataset_folder_is_the_hub_layout(built):
    build, dataset = built
    assert {p.name for p in dataset.iterdir()} == {"README.md", "data", "metadata"}
    info = json.loads((dataset / "data" / "_info.json").read_text())["splits"]["train"]
    tars = sorted(str(p.relative_to(dataset)) for p in dataset.rglob("*.tar"))
    assert tars == sorted(f"data/{f}" for f in info["filenames"])
    assert info["num_samples"] == 20 == sum(info["shard_lengths"])
    check = subprocess.run(
        ["sha256sum", "-c", "metadata/SHA256SUMS"], cwd=dataset, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    catalog = pq.read_table(dataset / "metadata" / "catalog.parquet")
    assert catalog.num_rows == cat.read_catalog(build).num_rows == 72  # rejected rows, and the marker file of each synthetic tree
    sources = json.loads((dataset / "metadata" / "sources.json").read_text())
    assert {s["id"] for s in sources} == {"sirst", "roadscene"}
    for entry in sources:
        assert "root" not in entry and "signature" not in entry  # no local paths published
    for name in ("report.json", "resolution_hist.png", "entropy_hist.png", "sample_grid.png"):
        assert (dataset / "metadata" / "report" / name).stat().st_size > 0


def test_bad_input_is_one_clear_line(built, tmp_path):
    _, dataset = built
    with pytest.raises(PublishError, match="OWNER/NAME"):
        publish(PublishConfig(dataset=dataset, repo="no-owner", dry_run=True))
    with pytest.raises(PublishError, match="_info.json is missing"):
        publish(PublishConfig(dataset=tmp_path, repo="lab/x", dry_run=True))
    foreign = tmp_path / "foreign"
    shutil.copytree(dataset, foreign)
    (foreign / "metadata" / "files.json").unlink()
    with pytest.raises(PublishError, match="metadata/files.json"):
        publish(PublishConfig(dataset=foreign, repo="lab/x", dry_run=True))


def test_dry_run_changes_nothing(built, own_copy):
    before = snapshot(own_copy)
    (own_copy / "data" / "_info.json").write_text(
        (own_copy / "data" / "_info.json").read_text() + " "
    )  # the report is now older than the index
    before = snapshot(own_copy)
    summary = publish(PublishConfig(dataset=own_copy, repo="lab/x", dry_run=True))
    assert summary.dry_run and str(summary).startswith("publish (dry run): 20 samples")
    assert "refreshed" in str(summary)
    assert snapshot(own_copy) == before


def test_dry_run_refuses_a_shard_edited_after_shard(own_copy):
    tar = sorted(own_copy.glob("data/*/*.tar"))[-1]
    data = bytearray(tar.read_bytes())
    data[600] ^= 0xFF  # same size: the stats' size check alone passes it
    tar.write_bytes(bytes(data))
    with pytest.raises(PublishError, match="changed after it was written.*inf590k shard"):
        publish(PublishConfig(dataset=own_copy, repo="lab/x", dry_run=True))


def test_damaged_shard_is_refused(own_copy):
    tar = next(own_copy.glob("data/*/*.tar"))
    with open(tar, "ab") as handle:
        handle.write(b"\0" * 512)
    with pytest.raises(PublishError, match="inf590k verify"):
        read_shards(own_copy)


# ----------------------------------------------------------------------------- the card


def test_card_metadata_parses_with_huggingface_hub_and_datasets(built):
    """DatasetCard.validate() posts to the Hub; offline, the same YAML goes through the
    client-side parsers: huggingface_hub's DatasetCard/DatasetCardData and datasets' configs."""
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    build, dataset = built
    card = DatasetCard.load(dataset / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "other" and data["pretty_name"] == "inf590k"
    assert data["license_link"] == "metadata/LICENSES.md"
    assert (dataset / data["license_link"]).is_file()
    assert {"infrared", "thermal"} <= set(data["tags"])
    assert data["task_categories"] == ["image-feature-extraction"]
    assert data["size_categories"] == ["n<1K"]
    configs = MetadataConfigs.from_dataset_card_data(card.data)
    bins = sorted(kept_per_bin(build))
    assert sorted(configs) == sorted(["all", *bins])
    assert configs["all"]["default"] is True
    assert configs[bins[0]]["data_files"] == [{"split": "train", "path": f"data/{bins[0]}/*.tar"}]
    for source in ("sirst", "roadscene"):  # synth trees: the toolkit's citation, not the source's
        assert f"| {source} |" in card.text and "WACV 2021" not in card.text
    assert "Rendered by `inf590k synth`" in card.text and "synthetic" in card.text
    for needle in (
        "| config | samples |",
        "metadata/report/sample_grid.png",
        "streaming=True",
        "inf590k pretrain --shards https://huggingface.co/datasets/OWNER/NAME/resolve/main/"
        "data/_info.json",
    ):
        assert needle in card.text, needle


# ----------------------------------------------------------------------------- datasets reads it


def test_load_dataset_reads_every_config(built, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    build, dataset = built
    expected = kept_per_bin(build)
    expected["all"] = sum(expected.values())
    kept = {r["uid"]: r for r in cat.read_catalog(build).to_pylist() if r["status"] == "ok"}
    for name, count in expected.items():
        loaded = datasets.load_dataset(
            str(dataset), name=name, split="train", cache_dir=str(tmp_path / "cache")
        )
        assert loaded.num_rows == count, name
        assert isinstance(loaded.features["png"], datasets.Image)
        assert isinstance(loaded.features["cls"], datasets.ClassLabel)
        for example in loaded:
            row = kept[example["__key__"]]
            assert example["png"].size == (row["width"], row["height"])
            assert example["json"]["uid"] == row["uid"]
            assert loaded.features["cls"].int2str(example["cls"]) == row["source"]
            assert name == "all" or row["res_bin"] == name
        streamed = datasets.load_dataset(str(dataset), name=name, split="train", streaming=True)
        seen = 0
        for example in streamed:
            row = kept[example["__key__"]]
            assert example["png"].size == (row["width"], row["height"])
            seen += 1
        assert seen == count, name


# ----------------------------------------------------------------------------- failures


def test_offline_fails_fast_and_changes_nothing(own_copy, hub_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = snapshot(own_copy)
    started = time.perf_counter()
    with pytest.raises(PublishError) as error:
        publish(PublishConfig(dataset=own_copy, repo="lab/inf590k-mini"))
    assert time.perf_counter() - started < 10
    message = str(error.value)
    assert "HF_HUB_OFFLINE" in message and "--dry-run" in message and "\n" not in message
    assert snapshot(own_copy) == before


def test_unreachable_endpoint_fails_fast(own_copy, hub_env, capsys):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    before = snapshot(own_copy)
    started = time.perf_counter()
    with pytest.raises(PublishError) as error:
        publish(PublishConfig(dataset=own_copy, repo="lab/inf590k-mini", endpoint=endpoint))
    assert time.perf_counter() - started < 10
    message = str(error.value)
    assert f"cannot reach {endpoint}" in message and "re-run" in message and "\n" not in message
    assert GOOD_TOKEN not in message + "".join(capsys.readouterr())
    assert snapshot(own_copy) == before


def test_missing_token_says_how_to_log_in(own_copy, hub_env, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    endpoint = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(PublishError, match="set HF_TOKEN .* or run `hf auth login`"):
        publish(PublishConfig(dataset=own_copy, repo="lab/inf590k-mini", endpoint=endpoint))


def test_rejected_token_is_one_line(own_copy, hub_env, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token_for_tests")
    with pytest.raises(PublishError) as error:
        publish(PublishConfig(dataset=own_copy, repo="lab/inf590k-mini", endpoint=fake_hub))
    message = str(error.value)
    assert "HTTP 401" in message and "token was rejected" in message and "\n" not in message
    assert "hf_wrong_token_for_tests" not in message


class RecordingHub:
    """HfApi.create_repo / list_repo_tree / upload_folder against an in-memory repo.

    upload_folder selects files with huggingface_hub's own pattern filter, "stores" their
    sha256, and can be told to fail once on a given commit with the error the real client
    raises for a rejected commit (a 403 from the fake server through hf_raise_for_status).
    """

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.files: dict[str, str] = {}
        self.calls: list[dict] = []
        self.fail_on: str | None = None

    def create_repo(self, api, repo_id, **kwargs):
        from huggingface_hub.hf_api import RepoUrl

        self.calls.append({"call": "create_repo", "repo_id": repo_id, **kwargs})
        return RepoUrl(f"{self.endpoint}/datasets/{repo_id}", endpoint=self.endpoint)

    def list_repo_tree(self, api, repo_id, **kwargs):
        from huggingface_hub.hf_api import RepoFile

        assert kwargs["repo_type"] == "dataset" and kwargs["recursive"]
        for path, digest in self.files.items():
            yield RepoFile(
                path=path, size=1, oid="0" * 40, lfs={"size": 1, "oid": digest, "pointerSize": 130}
            )

    def upload_folder(
        self, api, *, repo_id, folder_path, allow_patterns, commit_message, repo_type
    ):
        from huggingface_hub.utils import filter_repo_objects, get_session, hf_raise_for_status

        self.calls.append(
            {
                "call": "upload_folder",
                "repo_id": repo_id,
                "repo_type": repo_type,
                "message": commit_message,
                "patterns": list(allow_patterns),
            }
        )
        if self.fail_on and self.fail_on in commit_message:
            self.fail_on = None
            hf_raise_for_status(
                get_session().post(f"{self.endpoint}/api/datasets/{repo_id}/commit")
            )
        folder = Path(folder_path)
        local = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
        for path in filter_repo_objects(local, allow_patterns=allow_patterns):
            self.files[path] = hashlib.sha256((folder / path).read_bytes()).hexdigest()

    def install(self, monkeypatch) -> None:
        from huggingface_hub import HfApi

        for name in ("create_repo", "list_repo_tree", "upload_folder"):
            method = getattr(self, name)
            monkeypatch.setattr(HfApi, name, lambda api, *a, _m=method, **k: _m(api, *a, **k))


def test_upload_resumes_after_a_rejected_commit(built, own_copy, hub_env, fake_hub, monkeypatch):
    build, dataset = built[0], own_copy
    (dataset / "notes.txt").write_text("mine, not the dataset's")  # never uploaded
    hub = RecordingHub(fake_hub)
    hub.install(monkeypatch)
    bins = sorted(kept_per_bin(build))
    hub.fail_on = f"bin {bins[1]}"
    config = PublishConfig(
        dataset=dataset,
        repo="lab/inf",
        private=True,
        endpoint=fake_hub,
    )

    with pytest.raises(PublishError) as error:
        publish(config)
    message = str(error.value)
    assert f"uploading bin {bins[1]}: HTTP 403" in message and "re-run" in message
    assert GOOD_TOKEN not in message
    created = hub.calls[0]
    assert created["call"] == "create_repo" and created["repo_type"] == "dataset"
    assert created["private"] is True and created["exist_ok"] is True
    first_bin = {p for p in hub.files}
    assert first_bin and all(p.startswith(f"data/{bins[0]}/") for p in first_bin)

    hub.calls.clear()
    summary = publish(config)
    uploads = [c for c in hub.calls if c["call"] == "upload_folder"]
    assert all(c["repo_type"] == "dataset" and c["repo_id"] == "lab/inf" for c in uploads)
    assert [c["message"].split(" (")[0] for c in uploads[:-1]] == [
        f"Add {n} shards of bin {b}"
        for b in bins[1:]
        for n in [len(list((dataset / "data" / b).glob("*.tar")))]
    ]
    assert uploads[-1]["message"] == "Dataset card and metadata"
    assert summary.skipped == len(first_bin) and summary.uploaded == 6 - len(first_bin)
    assert set(hub.files) == set(owned_files(dataset))  # the folder's own files, nothing else
    assert "notes.txt" not in hub.files and "README.md" in hub.files
    assert "lab/inf" in str(summary) and "\n" not in str(summary)

    hub.calls.clear()
    again = publish(config)
    assert again.uploaded == 0 and again.skipped == 6
    assert [c["message"] for c in hub.calls if c["call"] == "upload_folder"] == [
        "Dataset card and metadata"
    ]


# ----------------------------------------------------------------------------- streaming clients


def test_pretrain_streams_the_folder_over_http_and_locally(built):
    """`inf590k pretrain --shards .../data/_info.json`, the folder itself, or a shard pattern:
    every shard, and the epoch length from the index beside the shards."""
    import webdataset as wds

    from inf590k.dataset.serve import serve_folder
    from pretrain.data import DataConfig, epoch_samples, expand_shard_urls

    _, dataset = built
    info = json.loads((dataset / "data" / "_info.json").read_text())["splits"]["train"]
    assert expand_shard_urls([str(dataset)]) == [f"{dataset}/data/{n}" for n in info["filenames"]]
    with serve_folder(dataset) as base:  # the repo root, as .../resolve/main/ serves it
        expected = [f"{base}/data/{name}" for name in info["filenames"]]
        assert expand_shard_urls([f"{base}/data/_info.json"]) == expected
        pattern = expected[0].replace("000000.tar", "{000000..000000}.tar")
        assert expand_shard_urls([pattern]) == expected[:1]
        # the epoch is the samples of the shards selected (issue 12), not the whole index
        first_shard = info["shard_lengths"][0]
        assert epoch_samples(DataConfig(shards=(pattern,)), expected[:1]) == first_shard
        keys = [
            s["__key__"] for s in wds.WebDataset(expected, shardshuffle=False, empty_check=False)
        ]
    assert len(keys) == len(set(keys)) == 20


def test_timm_reads_the_index(built):
    import timm.data

    reader_set = timm.data.create_dataset(
        "wds/inf590k",
        root=str(built[1] / "data"),
        split="train",
        is_training=False,
        input_img_mode="L",
    )
    assert len(reader_set) == 20
    assert sum(1 for image, _ in reader_set if image.size[0] > 0 and image.mode == "L") == 20


def test_a_shard_edited_in_place_is_not_uploaded(own_copy, hub_env, fake_hub, monkeypatch):
    tar = sorted(own_copy.glob("data/*/*.tar"))[-1]
    data = bytearray(tar.read_bytes())
    data[600] ^= 0xFF  # same size: the stats' size check alone passes it
    tar.write_bytes(bytes(data))
    read_shards(own_copy)
    hub = RecordingHub(fake_hub)
    hub.install(monkeypatch)
    config = PublishConfig(dataset=own_copy, repo="lab/inf", endpoint=fake_hub)
    with pytest.raises(PublishError, match="changed after it was written.*inf590k shard"):
        publish(config)
    assert f"data/{tar.parent.name}/{tar.name}" not in hub.files
    assert "README.md" not in hub.files  # the card never describes a repo missing shards
