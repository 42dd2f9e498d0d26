"""Two-process DDP on the CPU (gloo) through torchrun and `python -m pretrain`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict

import pytest

from pretrain import checkpoint as ckpt
from tests.conftest import REPO_ROOT
from tests.shardkit import make_dataset


@pytest.mark.slow
def test_two_ranks_read_disjoint_shards_and_stay_identical(tmp_path):
    dataset = make_dataset(tmp_path / "ds", num_shards=4, per_shard=8)
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "pretrain",
        "--shards", str(dataset.root), "--model", "mae_vit_tiny", "--out", str(out),
        "--steps", "4", "--batch-size", "4", "--workers", "1", "--no-resampled",
        "--shuffle-buffer", "8", "--shuffle-initial", "4", "--lr", "1e-3", "--device", "cpu",
        "--no-progress", "--log-every", "1", "--ckpt-every", "2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]

    reads: dict[tuple[int, int], set[str]] = defaultdict(set)  # (pass, rank) -> shards
    pattern = r"rank (\d+) worker \d+ pass (\d+) reads (\S+)"
    for rank, pass_index, url in re.findall(pattern, done.stderr):
        reads[int(pass_index), int(rank)].add(url)
    assert reads[0, 0] and reads[0, 1]
    for pass_index in {p for p, _ in reads}:  # within each pass, the ranks' shards are disjoint
        assert not reads[pass_index, 0] & reads[pass_index, 1]
    assert reads[0, 0] | reads[0, 1] == {str(p) for p in dataset.shards}

    state = ckpt.load(ckpt.latest_checkpoint(out))
    assert state["step"] == 4 and state["world_size"] == 2 and len(state["ranks"]) == 2
    digests = [rank["param_sha256"] for rank in state["ranks"]]
    assert digests[0] == digests[1]  # parameters identical on both ranks after 4 steps
    assert digests[0] == ckpt.parameter_digest(ckpt.model_from_state(state))
    first = ckpt.load(ckpt.list_checkpoints(out)[0])
    assert first["ranks"][0]["param_sha256"] != digests[0]  # and they did train
    assert state["counters"]["images"] == 4 * 4 * 2
