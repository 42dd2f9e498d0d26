"""An `_info.json` read by `pretrain` is someone else's file: no name in it runs a command,
reaches another host or leaves the index's folder, and no number in it is believed when it
cannot be true. Served over loopback HTTP, as `file://` and as a local folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from inf590k.dataset.serve import serve_folder
from pretrain.__main__ import main
from pretrain.data import expand_shard_urls, index_member_url, read_info


def hostile_copy(dataset: Path, tmp_path: Path, change) -> Path:
    copy = Path(shutil.copytree(dataset, tmp_path / "hostile"))
    path = copy / "data" / "_info.json"
    info = json.loads(path.read_text())
    change(info["splits"]["train"])
    path.write_text(json.dumps(info))
    return copy


def pipe_name(marker: Path) -> str:
    return f"pipe:id > {marker}; cat shard.tar"


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "pwned"


def test_a_pipe_name_in_a_served_index_runs_nothing(synthetic_build, tmp_path, marker, capsys):
    folder = hostile_copy(
        synthetic_build[1], tmp_path, lambda s: s["filenames"].__setitem__(0, pipe_name(marker))
    )
    with serve_folder(folder) as base:
        url = f"{base}/data/_info.json"
        with pytest.raises(ValueError, match="not a plain relative path") as error:
            read_info(url)
        assert "\n" not in str(error.value)
        code = main(
            [
                "--shards",
                url,
                "--out",
                str(tmp_path / "run"),
                "--model",
                "mae_vit_tiny",
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--workers",
                "0",
                "--no-progress",
            ]
        )
    assert code == 1 and "not a plain relative path" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("form", ["folder", "file-url", "index-path"])
def test_a_pipe_name_in_a_local_index_runs_nothing(synthetic_build, tmp_path, marker, form):
    folder = hostile_copy(
        synthetic_build[1], tmp_path, lambda s: s["filenames"].__setitem__(0, pipe_name(marker))
    )
    spec = {
        "folder": str(folder),
        "file-url": (folder / "data" / "_info.json").as_uri(),
        "index-path": str(folder / "data" / "_info.json"),
    }[form]
    with pytest.raises(ValueError, match="not a plain relative path"):
        expand_shard_urls([spec])
    assert not marker.exists()


@pytest.mark.parametrize(
    "name",
    [
        "http://evil.example/x.tar",
        "//evil.example/x.tar",
        "/etc/x.tar",
        "../../x.tar",
        "a/../../x.tar",
        "file:///etc/x.tar",
        "x.tar?y=1",
        "c:x.tar",
        "bin/x.json",
    ],
)
def test_index_names_stay_inside_the_index_folder(name):
    with pytest.raises(ValueError):
        index_member_url("https://huggingface.co/datasets/o/n/resolve/main/data/_info.json", name)


def test_index_names_resolve_beside_the_index():
    index = "https://huggingface.co/datasets/o/n/resolve/main/data/_info.json"
    assert index_member_url(index, "b/b-000000.tar") == (
        "https://huggingface.co/datasets/o/n/resolve/main/data/b/b-000000.tar"
    )
    assert index_member_url("ds/data/_info.json", "b/b-0.tar") == "ds/data/b/b-0.tar"
    with pytest.raises(ValueError, match="pipe:"):
        index_member_url("pipe:cat ds/_info.json", "b/b-0.tar")


@pytest.mark.parametrize(
    ("lie", "field"),
    [
        (lambda s: s.update(num_samples=s["num_samples"] * 1000), "num_samples"),
        (lambda s: s["shard_lengths"].__setitem__(0, 0), "shard_lengths"),
        (lambda s: s["shard_lengths"].__setitem__(0, -3), "shard_lengths"),
        (lambda s: s["shard_lengths"].__setitem__(0, "lots"), "'lots'"),
        (lambda s: s.update(filenames=[s["filenames"][0]] * len(s["filenames"])), "more than once"),
    ],
)
def test_index_lies_stop_pretrain_in_one_line_naming_the_field(
    synthetic_build, tmp_path, lie, field, capsys
):
    folder = hostile_copy(synthetic_build[1], tmp_path, lie)
    code = main(
        [
            "--shards",
            str(folder),
            "--out",
            str(tmp_path / "run"),
            "--model",
            "mae_vit_tiny",
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and field in error[-1] and "_info.json" in error[-1]
    assert not (tmp_path / "run").exists()


def test_an_index_without_shards_is_named_as_such(synthetic_build, tmp_path):
    folder = hostile_copy(
        synthetic_build[1],
        tmp_path,
        lambda s: s.update(filenames=[], shard_lengths=[], num_samples=0),
    )
    with pytest.raises(ValueError, match="lists no shards"):
        read_info(str(folder / "data" / "_info.json"))


def edited_copy(dataset: Path, tmp_path: Path, relpath: str, change) -> Path:
    copy = Path(shutil.copytree(dataset, tmp_path / "edited"))
    path = copy / relpath
    if relpath.endswith(".json"):
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
    else:
        path.write_text(change(path.read_text()))
    return copy


def permissive(sources: list[dict]) -> None:
    for entry in sources:
        entry["license"] = "CC0-1.0"


@pytest.mark.parametrize(
    ("relpath", "change", "field"),
    [
        ("data/_info.json", lambda info: permissive(info["sources"]), "field sources"),
        (
            "metadata/sizes.json",
            lambda sizes: sizes.update({k: v + 1 for k, v in sizes.items()}),
            "metadata/sizes.json says",
        ),
        (
            "metadata/SHA256SUMS",
            lambda text: "".join(line + "\n" for line in text.splitlines() if ".tar" not in line),
            "not listed in metadata/SHA256SUMS",
        ),
    ],
)
def test_the_index_is_checked_against_its_sidecars(
    synthetic_build, tmp_path, relpath, change, field
):
    folder = edited_copy(synthetic_build[1], tmp_path, relpath, change)
    with pytest.raises(ValueError, match=field):
        read_info(str(folder / "data" / "_info.json"))
    with serve_folder(folder) as base:
        with pytest.raises(ValueError, match=field):
            read_info(f"{base}/data/_info.json")


def test_an_intact_index_carries_the_shards_sums(synthetic_build):
    info = read_info(str(synthetic_build[1] / "data" / "_info.json"))
    sums = dict(
        line.split("  ")[::-1]
        for line in (synthetic_build[1] / "metadata" / "SHA256SUMS").read_text().splitlines()
    )
    assert info.sums and all(sums[f"data/{name}"] == digest for name, digest in info.sums.items())


def test_a_shard_replaced_under_its_sums_is_reported_and_not_read_again(
    synthetic_build, tmp_path, caplog
):
    """Two shards swapped in place (both valid tars, SHA256SUMS unchanged): training warns once
    per shard, counts them, and no worker reads them again in later passes."""
    import itertools

    from pretrain.data import DataConfig, loader_for

    folder = Path(shutil.copytree(synthetic_build[1], tmp_path / "swapped"))
    tars = sorted((folder / "data").rglob("*.tar"), key=lambda p: p.stat().st_size)
    first, second = tars[-1], tars[-2]
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b), second.write_bytes(a)
    config = DataConfig(
        shards=(str(folder),),
        batch_size=2,
        workers=0,
        shuffle_buffer=4,
        shuffle_initial=2,
        resampled=True,
        max_shard_failures=1.0,
    )
    info = read_info(str(folder / "data" / "_info.json"), config=config)
    loader, tracker = loader_for(
        config,
        16,
        seed=0,
        rank=0,
        world_size=1,
        pin_memory=False,
        urls=list(info.filenames),
        info=info,
    )
    with caplog.at_level("WARNING"):
        for _, position in itertools.islice(loader, 60):
            tracker.update(position)
    warned = [
        r.getMessage() for r in caplog.records if "does not match its sha256" in r.getMessage()
    ]
    assert sorted({w.split()[1] for w in warned}) == sorted([str(first), str(second)])
    assert len(warned) == 2 and tracker.totals()["shard_errors"] == 2


def test_the_shuffle_buffer_is_bounded_in_bytes_and_unchanged_below_its_budget():
    import random

    from webdataset.filters import _shuffle

    from pretrain.data import bounded_shuffle

    samples = [{"__key__": str(i), "png": bytes(100)} for i in range(500)]
    ours = list(bounded_shuffle(iter(samples), 64, 16, random.Random(3), 1 << 30))
    theirs = list(_shuffle(iter(samples), 64, 16, rng=random.Random(3)))
    assert [s["__key__"] for s in ours] == [s["__key__"] for s in theirs]

    held, peak = [], 0

    def counted():
        for sample in samples:
            held.append(sample["__key__"])
            yield sample

    for sample in bounded_shuffle(counted(), 64, 16, random.Random(3), 1000):
        held.remove(sample["__key__"])
        peak = max(peak, len(held) + 1)
    assert peak <= 12  # 1000 bytes of 100-byte samples (+ the one that crossed the budget)
