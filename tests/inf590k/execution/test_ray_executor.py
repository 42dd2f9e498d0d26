"""The build on Ray: same work units, same bytes as the local pool, retries, resume, no Ray."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import types
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from inf590k.build import ingest as ingest_module
from inf590k.build import rows as rows_module
from inf590k.build.bins import BinConfig, bin_catalog
from inf590k.build.dedupe.config import DedupeConfig
from inf590k.build.dedupe.stage import dedupe
from inf590k.build.ingest import IngestConfig, ingest
from inf590k.build.shard import ShardConfig
from inf590k.build.shard import stage as shard_module
from inf590k.execution.ray_cluster import INSTALL_HINT, RayExecutor, RayMissing, open_executor
from inf590k.execution.units import ExecutionOptions
from inf590k.inputs.sources import SourceReader
from tests.builders import ALPHA, BETA, shard_dataset
from tests.builders import build_dataset as build_with_card
from tests.conftest import REPO_ROOT
from tests.shardkit import closed_port

ray = pytest.importorskip("ray")
REPO = REPO_ROOT

FRAMES = [*ALPHA, *BETA]  # the real frames of the shard tests


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray with 2 CPUs for the module (it takes seconds to start)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def units_by_value():
    """Ray workers cannot import this test module: its functions travel by value."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def sources(tmp_path_factory, ir_samples: Path) -> dict[str, Path]:
    """A folder, a gzip tar (streamed in one pass) and a plain tar (read in place)."""
    root = tmp_path_factory.mktemp("sources")
    folder = root / "alpha"
    folder.mkdir()
    for rel in FRAMES[:5]:
        shutil.copy(ir_samples / rel, folder / Path(rel).name)
    (folder / "notes.txt").write_text("not an image\n")  # an excluded row
    for name, mode in (("beta.tar.gz", "w:gz"), ("gamma.tar", "w")):
        with tarfile.open(root / name, mode) as archive:
            for rel in FRAMES[3:]:
                archive.add(ir_samples / rel, arcname=f"frames/{Path(rel).name}")
    return {
        "folder:alpha": folder,
        "folder:beta": root / "beta.tar.gz",
        "folder:gamma": root / "gamma.tar",
    }


def build_dataset(root: Path, sources: dict[str, Path], executor: str) -> tuple[Path, Path]:
    """Ingest -> dedupe -> bin -> shard with `executor` at 2 workers; (build, dataset)."""
    build, out = root / "build", root / "dataset"
    ingest(
        IngestConfig(sources=tuple(sources.items()), build=build, execution=ExecutionOptions(workers=2, progress=False, executor=executor))
    )
    dedupe(DedupeConfig(build=build, contact_groups=0))
    bin_catalog(BinConfig(build=build))
    shard_dataset(
        ShardConfig(build=build, out=out, max_count=3, execution=ExecutionOptions(workers=2, progress=False, executor=executor))
    )
    return build, out


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file's bytes; a shard's stats without its timing (it differs between any two runs)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name.endswith("_stats.json"):
            stats = json.loads(data)
            stats.pop("seconds", None)
            data = json.dumps(stats, sort_keys=True).encode()
        files[str(path.relative_to(folder))] = data
    return files


def catalog_bytes(build: Path) -> dict[str, bytes]:
    return tree_bytes(build / "catalog")


@pytest.fixture(scope="module")
def local_result(tmp_path_factory, sources) -> tuple[Path, Path]:
    return build_dataset(tmp_path_factory.mktemp("local"), sources, "local")


@pytest.fixture(scope="module")
def local_catalog(tmp_path_factory, sources) -> dict[str, bytes]:
    """The catalog right after ingest with the local pool (dedupe and bin change it later)."""
    build = tmp_path_factory.mktemp("local-ingest") / "build"
    ingest(IngestConfig(sources=tuple(sources.items()), build=build, execution=ExecutionOptions(workers=2, progress=False)))
    return catalog_bytes(build)


def assert_same_build(built: tuple[Path, Path], expected: tuple[Path, Path]) -> None:
    (build, out), (local_build, local_out) = built, expected
    assert catalog_bytes(build) == catalog_bytes(local_build)
    ours, theirs = tree_bytes(out), tree_bytes(local_out)
    assert sorted(ours) == sorted(theirs)
    assert any(name.endswith(".tar") for name in ours)
    differ = [name for name in ours if ours[name] != theirs[name]]
    assert differ == []


# ----------------------------------------------------------------------------- without Ray


def test_without_ray_one_line_says_how_to_install(monkeypatch, tmp_path: Path, ir_samples) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(RayMissing, match=r"pip install 'inf590k\[ray\]'"):
        open_executor("ray", 2)
    folder = tmp_path / "alpha"
    folder.mkdir()
    shutil.copy(ir_samples / FRAMES[0], folder / "frame.jpg")
    result = CliRunner().invoke(
        cli.main,
        [
            "ingest",
            "--source",
            f"folder:alpha={folder}",
            "--build",
            str(tmp_path / "b"),
            "--executor",
            "ray",
        ],
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: {INSTALL_HINT}"]
    assert not (tmp_path / "b").exists()  # refused before any work
    with pytest.raises(RayMissing, match="pip install"):  # the library refuses too
        ingest(
            IngestConfig(sources=(("folder:alpha", folder),), build=tmp_path / "c", execution=ExecutionOptions(workers=2, progress=False, executor="ray"))
        )


def test_unknown_executor_is_refused(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="choose one of local, ray"):
        open_executor("dask", 2)
    result = CliRunner().invoke(
        cli.main, ["shard", "--build", "b", "--out", "o", "--executor", "dask"]
    )
    assert result.exit_code == 2 and "'dask' is not one of 'local', 'ray'" in result.output


def test_local_executor_is_the_default(tmp_path: Path) -> None:
    assert IngestConfig(sources=(), build=tmp_path).execution.executor == "local"
    assert ShardConfig(build=tmp_path, out=tmp_path).execution.executor == "local"
    with open_executor("local", 1) as executor:
        assert executor.workers == 1


def test_unreachable_cluster_is_one_line(monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():
        pytest.skip("a Ray is already connected in this process")
    address = f"127.0.0.1:{closed_port()}"
    with pytest.raises(RuntimeError, match=f"cannot reach the Ray cluster at {address}"):
        RayExecutor(2, address)
    assert not ray.is_initialized()


# ----------------------------------------------------------------------------- on a local Ray


@pytest.mark.slow
def test_ray_build_is_byte_identical_to_local_pool(
    local_ray, tmp_path, sources, local_result
) -> None:
    assert_same_build(build_dataset(tmp_path, sources, "ray"), local_result)


@pytest.mark.slow
def test_driver_reads_no_archive_member(
    local_ray, monkeypatch, tmp_path, sources, local_catalog
) -> None:
    """The command plans and writes rows only: a gzip tar is streamed by a Ray worker."""

    def refuse(*args, **kwargs):
        raise AssertionError("the driver read image bytes")

    for name in ("read", "read_many", "read_at", "iter_tar_bytes"):
        monkeypatch.setattr(SourceReader, name, refuse)  # this process only, not the workers
    monkeypatch.setattr(rows_module, "process_image_bytes", refuse)
    build = tmp_path / "build"
    ingest(
        IngestConfig(sources=tuple(sources.items()), build=build, execution=ExecutionOptions(workers=2, progress=False, executor="ray"))
    )
    assert catalog_bytes(build) == local_catalog


def kill_first_attempt(unit: Callable, marker: Path) -> Callable:
    """A work unit whose first run SIGKILLs its own worker process (the marker says it did)."""

    def run(*args):
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return unit(*args)

    return run


@pytest.mark.slow
def test_worker_killed_during_a_task_is_retried(
    local_ray, units_by_value, monkeypatch, tmp_path, sources, local_result
) -> None:
    ingest_kill, shard_kill = tmp_path / "ingest-killed", tmp_path / "shard-killed"
    monkeypatch.setattr(
        ingest_module, "process_unit", kill_first_attempt(ingest_module.process_unit, ingest_kill)
    )
    monkeypatch.setattr(
        shard_module, "write_shard", kill_first_attempt(shard_module.write_shard, shard_kill)
    )
    built = build_dataset(tmp_path / "run", sources, "ray")
    assert ingest_kill.exists() and shard_kill.exists()  # each stage lost a worker once
    assert int(ingest_kill.read_text()) != os.getpid()  # ... a worker, not this process
    assert_same_build(built, local_result)


@pytest.mark.slow
def test_run_killed_midway_resumes_with_either_executor(
    local_ray, tmp_path, sources, local_result
) -> None:
    """Completion markers are shared: a half-done build of one executor is finished by the other."""
    build, out = build_dataset(tmp_path, sources, "ray")
    parts = sorted((build / "catalog").glob("part-*.parquet"))
    shards = sorted(out.rglob("*.tar"))
    assert len(parts) > 1 and len(shards) > 1
    for lost in (*parts[::2], *shards[::2]):  # as if killed before these were written
        lost.unlink()
    ingest(IngestConfig(sources=tuple(sources.items()), build=build, execution=ExecutionOptions(workers=2, progress=False)))
    dedupe(DedupeConfig(build=build, contact_groups=0))
    bin_catalog(BinConfig(build=build))
    shard_dataset(ShardConfig(build=build, out=out, max_count=3, execution=ExecutionOptions(workers=2, progress=False)))
    assert_same_build((build, out), local_result)
    for lost in shards[1::2]:  # and the other way round
        lost.unlink()
    summary = shard_dataset(
        ShardConfig(build=build, out=out, max_count=3, execution=ExecutionOptions(workers=2, progress=False, executor="ray"))
    )
    assert summary.written == len(shards[1::2])
    assert_same_build((build, out), local_result)


def count_to(n: int):
    yield from range(n)


@pytest.mark.slow
def test_executor_interface(local_ray, units_by_value) -> None:
    with open_executor("ray", 2) as executor:
        assert isinstance(executor, RayExecutor) and executor.workers == 2
        assert executor.submit(pow, 2, 10).result() == 1024
        assert list(executor.map(pow, ((n, 2) for n in range(7)), window=2)) == [
            n * n for n in range(7)
        ]
        refs = list(executor.stream(count_to, 3))
        assert list(executor.map(pow, ((ref, 3) for ref in refs))) == [0, 1, 8]
        with pytest.raises(ZeroDivisionError) as raised:  # not retried; raised as a local pool does
            list(executor.map(divmod, [(1, 0)]))
        assert type(raised.value) is ZeroDivisionError and "\n" not in str(raised.value)
    assert ray.is_initialized()  # a Ray the command did not start is left running


@pytest.mark.slow
def test_worker_without_the_code_is_one_line(local_ray, monkeypatch) -> None:
    ghost = types.ModuleType("ghost_stage")  # importable here, not in the Ray workers
    exec("def unit(x):\n    return x\n", ghost.__dict__)
    monkeypatch.setitem(sys.modules, "ghost_stage", ghost)
    with open_executor("ray", 2) as executor:
        with pytest.raises(
            RuntimeError, match="cannot import ghost_stage: install inf590k"
        ) as raised:
            list(executor.map(ghost.unit, [(1,)]))
    assert "\n" not in str(raised.value)


def ray_daemons() -> set[int]:
    """Pids of running Ray node processes (raylet, GCS server)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() in (
                "raylet",
                "gcs_server",
            ):
                pids.add(int(entry.name))
        except OSError:
            pass
    return pids


@pytest.mark.slow
def test_cli_starts_and_stops_its_own_ray(tmp_path: Path, sources, local_catalog) -> None:
    """Without --ray-address or RAY_ADDRESS the command starts a local Ray and stops it."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [
        sys.executable,
        "-c",
        "from cli import main; main()",
        "ingest",
        "--build",
        str(tmp_path / "build"),
        "--workers",
        "2",
    ]
    for source, root in sources.items():
        command += ["--source", f"{source}={root}"]
    before = ray_daemons()
    done = subprocess.run(
        [*command, "--executor", "ray"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert ray_daemons() <= before  # the command's own Ray is gone with it
    assert catalog_bytes(tmp_path / "build") == local_catalog
    assert "Traceback" not in done.stderr


def test_cli_ray_address_option_and_env(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # the command writes the card into --out after the stage
    seen = {}
    monkeypatch.setattr(
        cli.build, "run_stage", lambda func, config, wait=False: seen.setdefault("config", config)
    )
    CliRunner().invoke(
        cli.main,
        [
            "shard",
            "--build",
            "b",
            "--out",
            "o",
            "--executor",
            "ray",
            "--ray-address",
            "10.0.0.1:6379",
        ],
    )
    assert (seen["config"].execution.executor, seen["config"].execution.ray_address) == ("ray", "10.0.0.1:6379")
    seen.clear()
    CliRunner().invoke(
        cli.main,
        ["shard", "--build", "b", "--out", "o", "--executor", "ray"],
        env={"RAY_ADDRESS": "10.0.0.2:6379"},
    )
    assert seen["config"].execution.ray_address == "10.0.0.2:6379"


@pytest.fixture
def no_running_ray():
    """No Ray up before the test (the module's one is restarted after it)."""
    was_running = ray.is_initialized()
    ray.shutdown()
    yield
    ray.shutdown()
    if was_running:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)


@pytest.mark.slow
def test_build_on_ray_starts_one_ray_for_all_stages(
    no_running_ray, monkeypatch, tmp_path, sources, local_result
) -> None:
    from inf590k.build.pipeline import BuildConfig

    starts = []
    real_init = ray.init

    def counted_init(*args, **kwargs):
        starts.append(kwargs)
        return real_init(*args, **kwargs)

    monkeypatch.setattr(ray, "init", counted_init)
    build, out = tmp_path / "build", tmp_path / "dataset"
    summary = build_with_card(
        BuildConfig(
            ingest=IngestConfig(sources=tuple(sources.items()), build=build, execution=ExecutionOptions(workers=2, progress=False, executor="ray")),
            out=out,
            dedupe=DedupeConfig(build=build, contact_groups=0),
            shard=ShardConfig(build=build, out=out, max_count=3, execution=ExecutionOptions(workers=2, progress=False, executor="ray")),
        )
    )  # fmt: skip
    assert len(starts) == 1, starts  # ingest and shard ran on the same Ray
    assert not ray.is_initialized()  # the Ray started for the command is shut down after it
    assert summary.shard.samples > 0
    assert_same_build((build, out), local_result)
