"""Stage lineage and the build-folder lock: a stage never runs on a missing, unfinished or
stale upstream, two commands never share a build folder, a failed command leaves nothing."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

import inf590k.build.ingest as ingest_module
from cli import main
from inf590k.build import catalog as cat
from inf590k.build import lineage, locks
from inf590k.build.bins import BinConfig, bin_catalog
from inf590k.build.dedupe.config import DedupeConfig
from inf590k.build.dedupe.stage import dedupe
from inf590k.build.ingest import IngestConfig, ingest
from inf590k.build.pipeline import BuildConfig
from inf590k.build.shard import ShardConfig
from inf590k.execution.units import ExecutionOptions
from tests.builders import build_dataset, make_frames, shard_dataset


def run_ingest(build: Path, *sources: tuple[str, Path], drop: tuple[str, ...] = (), **policy):
    from inf590k.inputs.imageio import ImagePolicy

    return ingest(
        IngestConfig(sources=tuple(sources), build=build, policy=ImagePolicy(**policy), drop_sources=drop, execution=ExecutionOptions(workers=1, progress=False))
    )


def run_dedupe(build: Path):
    return dedupe(DedupeConfig(build=build, radius=0, contact_groups=0))  # the frames look alike


def run_shard(build: Path, out: Path):
    return shard_dataset(ShardConfig(build=build, out=out, execution=ExecutionOptions(workers=1, progress=False)))


@pytest.fixture
def frames(tmp_path) -> Path:
    make_frames(tmp_path / "frames", 70)  # two ingest chunks
    return tmp_path / "frames"


def test_killed_ingest_blocks_the_later_stages_until_it_finishes(tmp_path, frames, monkeypatch):
    build = tmp_path / "b"
    original = ingest_module.commit_part
    written = []

    def killed_after_one(*args):
        if written:
            raise KeyboardInterrupt  # as if killed between two chunks
        written.append(args)
        return original(*args)

    monkeypatch.setattr(ingest_module, "commit_part", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        run_ingest(build, ("folder", frames))
    monkeypatch.setattr(ingest_module, "commit_part", original)
    assert len(cat.part_paths(build)) == 1
    for stage in (lambda: run_dedupe(build), lambda: bin_catalog(BinConfig(build=build))):
        with pytest.raises(
            ValueError, match=r"`inf590k ingest` on .* did not finish.*inf590k ingest --build"
        ):
            stage()
    run_ingest(build, ("folder", frames))
    assert run_dedupe(build).candidates == 70


def test_shard_refuses_a_catalog_dedupe_has_not_seen(tmp_path, frames):
    build = tmp_path / "b"
    run_ingest(build, ("folder", frames))
    with pytest.raises(ValueError, match="`inf590k dedupe` has not run.*inf590k dedupe --build"):
        bin_catalog(BinConfig(build=build))
    with pytest.raises(ValueError, match="`inf590k dedupe` has not run"):
        run_shard(build, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_ingest_after_dedupe_makes_the_later_stages_stale(tmp_path, frames):
    build = tmp_path / "b"
    run_ingest(build, ("folder", frames))
    run_dedupe(build)
    bin_catalog(BinConfig(build=build))
    run_ingest(build, ("folder", frames))  # nothing changed: the later stages stay fresh
    assert lineage.stale_stages(build) == []
    copies = tmp_path / "copies"
    make_frames(copies, 3)  # the same pixels as three frames of `frames`
    run_ingest(build, ("folder", frames), ("folder:copies", copies))
    assert lineage.stale_stages(build) == ["dedupe", "bin"]
    with pytest.raises(ValueError, match="`inf590k dedupe` on .* is stale .*ingest.* ran after it"):
        run_shard(build, tmp_path / "ds")
    with pytest.raises(ValueError, match="is stale"):
        bin_catalog(BinConfig(build=build))
    assert run_dedupe(build).exact_duplicates == 3
    bin_catalog(BinConfig(build=build))
    assert run_shard(build, tmp_path / "ds").samples == 70


def test_a_second_command_on_a_busy_build_folder_fails_at_once_or_waits(tmp_path, frames):
    build = tmp_path / "b"
    build.mkdir()
    other = os.open(build / lineage.LOCK_FILENAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(other, fcntl.LOCK_EX)
    os.write(
        other, json.dumps({"pid": 4242, "command": "inf590k ingest", "started": "now"}).encode()
    )
    try:
        result = CliRunner().invoke(
            main, ["ingest", "--build", str(build), "--source", f"folder={frames}"]
        )
        assert result.exit_code == 1
        assert result.output.count("\n") == 1
        assert (
            "in use by process 4242 (`inf590k ingest`" in result.output
            and "--wait" in result.output
        )
        assert not cat.part_paths(build)

        threading.Timer(0.5, lambda: fcntl.flock(other, fcntl.LOCK_UN)).start()
        with locks.lock_wait(True):
            assert run_ingest(build, ("folder", frames)).sources[0].found == 70
    finally:
        os.close(other)


def test_a_failed_command_leaves_no_empty_folders(tmp_path, frames):
    runner = CliRunner()
    build = tmp_path / "b"
    for args in (
        ["ingest", "--build", build, "--source", f"nosuch={frames}"],
        ["ingest", "--build", build, "--source", f"folder={tmp_path / 'missing'}"],
        ["dedupe", "--build", build],
        ["bin", "--build", build],
        ["shard", "--build", build, "--out", tmp_path / "ds"],
    ):
        result = runner.invoke(main, [str(a) for a in args])
        assert result.exit_code != 0 and "Traceback" not in result.output
        assert not build.exists(), args
    run_ingest(build, ("folder", frames))
    result = runner.invoke(main, ["dedupe", "--build", str(build), "--radius", "99"])
    assert result.exit_code == 1
    assert not (build / "dedupe").exists()


def test_build_path_that_is_a_file_or_inside_a_source(tmp_path, frames):
    runner = CliRunner()
    (tmp_path / "file").write_text("x")
    result = runner.invoke(
        main, ["ingest", "--build", str(tmp_path / "file"), "--source", f"folder={frames}"]
    )
    assert result.exit_code == 1 and "is a file" in result.output and result.output.count("\n") == 1
    inside = frames / "build"
    result = runner.invoke(main, ["ingest", "--build", str(inside), "--source", f"folder={frames}"])
    assert result.exit_code == 1 and "catalogue itself" in result.output
    assert not inside.exists()


def test_drop_source_shrinks_the_build_and_stales_later_stages(tmp_path, frames):
    build = tmp_path / "b"
    extra = tmp_path / "extra"
    make_frames(extra, 4)
    run_ingest(build, ("folder", frames), ("folder:extra", extra))
    run_dedupe(build)
    summary = run_ingest(build, ("folder", frames))
    assert summary.earlier_sources == ("extra",)
    assert "also in the build from earlier runs: extra" in str(summary)
    assert lineage.stale_stages(build) == []

    summary = run_ingest(build, drop=("extra",))
    assert set(cat.read_catalog(build).column("source").to_pylist()) == {"folder"}
    assert "extra" not in cat.read_sources(build)
    assert lineage.stale_stages(build) == ["dedupe"]
    with pytest.raises(ValueError, match="--drop-source extra: not in .* holds: folder"):
        run_ingest(build, drop=("extra",))
    result = CliRunner().invoke(main, ["ingest", "--build", str(build), "--drop-source", "folder"])
    assert result.exit_code == 0, result.output
    assert not cat.part_paths(build)


def test_build_reruns_exactly_the_stale_stages(tmp_path, frames):
    build, out = tmp_path / "b", tmp_path / "ds"

    def build_once(**bins):
        return build_dataset(
            BuildConfig(
                ingest=IngestConfig(sources=(("folder", frames),), build=build, execution=ExecutionOptions(workers=1, progress=False)),
                out=out,
                dedupe=DedupeConfig(build=build, radius=0, contact_groups=0),
                bins=BinConfig(build=build, **bins),
                shard=ShardConfig(build=build, out=out, execution=ExecutionOptions(workers=1, progress=False)),
            )
        )

    first = build_once()
    assert first.rerun == ("dedupe", "bin", "shard")
    again = build_once()
    assert again.rerun == ()
    assert "up to date" in str(again.dedupe) and again.shard.samples == first.shard.samples
    assert str(again).startswith("build: 70 files -> 70 kept")
    changed = build_once(short_edges=(100,))
    assert changed.rerun == ("bin", "shard")


def test_the_ingest_command_to_rerun_names_folder_sources_as_given(tmp_path, frames):
    from inf590k.build.lineage import rerun_command

    build = tmp_path / "build"
    run_ingest(build, ("folder", frames), ("folder:copies", frames))
    command = rerun_command(build, "ingest")
    assert f"--source folder={frames}" in command  # runnable as printed
    assert f"--source folder:copies={frames}" in command and " copies=" not in command
