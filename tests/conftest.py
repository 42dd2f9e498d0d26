
"""Shared fixtures: where the real infrared samples live, and small helpers."""

from __future__ import annotations

import os
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The read-only `shared/` folder that sits beside the repository (override: INF590K_SHARED)."""
    return Path(os.environ.get("INF590K_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def ir_samples() -> Path:
    """Real infrared samples in their original folder layouts (sirst, roadscene, hit-uav, ...)."""
    root = shared_dir() / "ir-samples"
    if not root.is_dir():
        pytest.skip(
            f"real IR samples not found at {root}; set INF590K_SHARED to the shared/ folder"
        )
    return root


@pytest.fixture(scope="module")
def torch_single_thread():
    """Small models run fastest on one thread; extra threads only contend on shared runners."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_build(tmp_path_factory) -> tuple[Path, Path]:
    """(build folder, dataset folder) of two small synthetic sources built once per session:
    several bins, one of them in several shards. Read-only: copy it to change anything."""
    from inf590k.build.ingest import IngestConfig
    from inf590k.build.pipeline import BuildConfig
    from inf590k.build.shard import ShardConfig
    from inf590k.execution.units import ExecutionOptions
    from inf590k.synth import SynthConfig, synthesize
    from tests.builders import build_dataset

    root = tmp_path_factory.mktemp("synthetic-build")
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
    return build, dataset


@pytest.fixture
def dataset_copy(synthetic_build, tmp_path) -> Path:
    """A copy of the session's dataset folder that a test may change."""
    import shutil

    return Path(shutil.copytree(synthetic_build[1], tmp_path / "ds"))


@pytest.fixture
def build_copy(synthetic_build, tmp_path) -> tuple[Path, Path]:
    """Copies of the session's sources, build folder and dataset folder that a test may
    change; the build's recorded source roots point at the copies."""
    import shutil

    from inf590k.build import catalog as cat

    root = Path(shutil.copytree(synthetic_build[0].parent, tmp_path / "root"))
    build = root / "build"
    recorded = cat.read_sources(build)
    for info in recorded.values():
        info["root"] = str(root / Path(info["root"]).name)
    cat.write_sources(build, recorded)
    return build, root / "ds"


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """No cached login, no offline flag; the token comes from HF_TOKEN."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    from tests.hubkit import GOOD_TOKEN

    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)


@pytest.fixture
def fake_hub():
    """A stand-in Hub API on loopback (tests/hubkit.py); yields its URL."""
    from tests.hubkit import FakeHub

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
