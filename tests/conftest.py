"""Shared fixtures: where the real infrared samples live, and small helpers."""

from __future__ import annotations

import os
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
        pytest.skip(f"real IR samples not found at {root}; set INF590K_SHARED to the shared/ folder")
    return root


@pytest.fixture(scope="module")
def torch_single_thread():
    """Small models run fastest on one thread; extra threads only contend on shared runners."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
