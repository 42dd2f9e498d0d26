"""kill -9 in the middle of a shard, re-run: the same SHA256SUMS as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from inf590k.build.shard import ShardConfig
from inf590k.dataset.verify import VerifyConfig, verify
from inf590k.execution.units import ExecutionOptions
from tests.builders import make_build, shard_dataset
from tests.conftest import REPO_ROOT

# shard with one worker, slowed down per sample so that a kill lands inside a tar
SLOW_SHARD = """
import sys, time
from pathlib import Path
import inf590k.build.shard.stage as sh
original = sh.add_sample
def slowed(*args):
    time.sleep(0.15)
    original(*args)
sh.add_sample = slowed
from inf590k.execution.units import ExecutionOptions
sh.shard(sh.ShardConfig(build=Path(sys.argv[1]), out=Path(sys.argv[2]), max_count=3, execution=ExecutionOptions(workers=1, progress=False)))
"""


@pytest.mark.slow
def test_kill_mid_shard_then_resume(tmp_path, ir_samples):
    build = make_build(tmp_path, ir_samples)
    config = ShardConfig(build=build, out=tmp_path / "reference", max_count=3, execution=ExecutionOptions(workers=1, progress=False))
    shard_dataset(config)
    reference = (config.out / "metadata" / "SHA256SUMS").read_text()

    out = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_SHARD, str(build), str(out)],
        cwd=REPO_ROOT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not list(out.glob("metadata/shards/*/*_stats.json")) and time.monotonic() < deadline:
        assert process.poll() is None, "the shard run ended before it could be killed"
        time.sleep(0.02)
    time.sleep(0.2)  # into the next shard's samples
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert list(out.glob("data/*/*.tar.tmp")), "the kill should land inside a tar"
    assert not (out / "metadata" / "SHA256SUMS").exists()

    resumed = shard_dataset(ShardConfig(build=build, out=out, max_count=3, execution=ExecutionOptions(workers=2, progress=False)))
    assert resumed.reused >= 1 and resumed.written >= 1
    assert (out / "metadata" / "SHA256SUMS").read_text() == reference
    assert not list(out.rglob("*.tmp"))
    assert verify(VerifyConfig(dataset=out, execution=ExecutionOptions(workers=1, progress=False))).ok
