"""Two-process DDP on the CPU (gloo) through torchrun and `python -m pretrain`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter, defaultdict

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


# Run by torchrun on each of 2 ranks: the loader over very unequal shards, 2 workers a rank,
# one gloo all-reduce per step as DDP does; each rank writes the samples it trained on.
EPOCH_SCRIPT = r"""
import json, sys
import numpy as np
import torch
import torch.distributed as dist
from pretrain.config import DataConfig
from pretrain.data import ShardStream, expected_lengths, make_loader, read_info

class Labelled(ShardStream):
    def decode(self, sample, rng):  # the sample's number as two pixels instead of a crop
        number = int(sample["__key__"].rsplit("_", 1)[1]) + 100 * int(sample["__key__"][2:5])
        return np.array([[number // 256, number % 256]], np.uint8)

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
info = read_info(sys.argv[1])
config = DataConfig(batch_size=int(sys.argv[3]), workers=2, resampled=False,
                    shuffle_buffer=8, shuffle_initial=2)
stream = Labelled(urls=list(info.filenames), config=config, image_size=(1, 2), seed=4,
                  rank=rank, world_size=world, num_workers=2,
                  shard_lengths=expected_lengths(info))
steps, seen = int(sys.argv[4]), []
for step, (images, position) in enumerate(make_loader(stream, 2, False)):
    if step == steps:
        break
    dist.all_reduce(torch.ones(1))  # a rank without a batch would hang here
    seen += [int(a) * 256 + int(b) for a, b in images[:, 0, 0].tolist()]
json.dump(seen, open(f"{sys.argv[2]}/rank{rank}.json", "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_unequal_shards_give_every_rank_and_worker_equal_epochs(tmp_path):
    """Shards of 50, 3, 1 and 20 samples over 2 ranks x 2 workers: 74 samples in windows of
    ceil(74 / 4) = 19 per worker, so an epoch is 38 samples per rank. Two epochs run without
    a hang, and each epoch reads every sample once, the 2 samples of padding twice."""
    from tests.shardkit import make_mixed_dataset

    data = make_mixed_dataset(
        tmp_path / "ds", [("b", {"s": n}) for n in (50, 3, 1, 20)], height=4, width=4
    )
    script = tmp_path / "epoch.py"
    script.write_text(EPOCH_SCRIPT)
    batch, epochs = 19, 2  # a batch is one worker's window: each step one window
    steps = epochs * 2  # per rank: 2 workers' windows per epoch
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(script), str(data.info_path), str(tmp_path), str(batch), str(steps),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [len(s) for s in seen] == [steps * batch] * 2  # equal steps on both ranks
    numbers = {100 * shard + i for shard, n in enumerate((50, 3, 1, 20)) for i in range(n)}
    per_epoch = 2 * batch  # samples per rank per epoch
    for epoch in range(epochs):
        read = Counter(
            n for s in seen for n in s[epoch * per_epoch : (epoch + 1) * per_epoch]
        )
        assert set(read) == numbers  # every sample in the epoch
        assert sum(read.values()) == 76 and sorted(read.values())[-3:] == [1, 2, 2]


@pytest.mark.slow
def test_pretrain_over_unequal_shards_without_resampling_runs_on_both_ranks(tmp_path):
    """`pretrain` under torchrun, 2 ranks x 2 workers, over shards of 50, 3, 1 and 20 samples
    (a rank's share of shards would be 4 or 70 samples): past an epoch, no hang, and the
    samples drawn on both ranks counted in the record."""
    from tests.shardkit import make_mixed_dataset

    data = make_mixed_dataset(
        tmp_path / "ds", [("b", {"s": n}) for n in (50, 3, 1, 20)], height=32, width=32
    )
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "pretrain",
        "--shards", str(data.root), "--model", "mae_vit_tiny", "--model-args", "img_size=32",
        "--out", str(out), "--steps", "12", "--batch-size", "4", "--workers", "2",
        "--no-resampled", "--shuffle-buffer", "8", "--shuffle-initial", "4", "--lr", "1e-3",
        "--device", "cpu", "--no-progress", "--log-every", "4", "--ckpt-every", "12",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    state = ckpt.load(ckpt.latest_checkpoint(out))
    assert state["step"] == 12 and state["record"]["total_steps"] == 12
    # 12 steps x 8 images > one epoch of 4 windows of 19 (76 samples): the second pass began
    assert re.search(r"rank 1 worker \d pass 1 reads", done.stderr)
    assert state["record"]["mixture"]["drawn"]["sources"] == {"s": 12 * 4 * 2}
    assert "drawn: sources s 100.0%" in done.stdout + done.stderr
