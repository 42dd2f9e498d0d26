"""Held-out images (--val-samples: the first images of their shards) in an epoch cut into
equal windows per rank and loader worker: a window of only held-out images is not a broken
shard, and no worker is starved of training images for good."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest

from pretrain.config import DataConfig
from pretrain.data.index import expected_lengths, read_info
from pretrain.data.order import sample_window
from pretrain.data.stream import MAX_EMPTY_PASSES, ShardStream, WorkerPosition
from tests.shardkit import make_dataset

RANKS, WORKERS = 2, 2


def streams(root: Path, urls: list[str], exclude: frozenset[str]) -> list[tuple[ShardStream, int]]:
    """(stream of a rank, logical worker) for every share of 2 ranks x 2 workers."""
    info = read_info(str(root / "_info.json"))
    config = DataConfig(shards=(str(root),), batch_size=1, resampled=False, workers=WORKERS)
    return [
        (
            ShardStream(urls=urls, config=config, image_size=16, rank=rank, world_size=RANKS,
                        num_workers=WORKERS, shard_lengths=expected_lengths(info), exclude=exclude),
            worker,
        )
        for rank in range(RANKS)
        for worker in range(WORKERS)
    ]  # fmt: skip


def test_a_window_of_held_out_images_passes_on_to_the_next_epoch(tmp_path):
    """One shard of 4 images, the first held out, 4 shares of one image each: the share whose
    window is the held-out image still trains (on later passes), the held-out image never."""
    data = make_dataset(tmp_path, num_shards=1, per_shard=4)
    held = data.uids[0][0]
    for stream, worker in streams(tmp_path, [str(p) for p in data.shards], frozenset([held])):
        stats = WorkerPosition()
        labels = list(itertools.islice(stream.samples(worker, stats), 5))
        assert len(labels) == 5
        assert stats.pass_index < MAX_EMPTY_PASSES


def test_every_image_held_out_is_said_as_such(tmp_path):
    data = make_dataset(tmp_path, num_shards=1, per_shard=1)
    exclude = frozenset(data.uids[0])
    for stream, worker in streams(tmp_path, [str(p) for p in data.shards], exclude)[:1]:
        with pytest.raises(ValueError, match="every image is held out for validation"):
            next(stream.samples(worker, WorkerPosition()))


@pytest.mark.parametrize("rotation", [0, 1, 7, 16])
def test_rotated_windows_are_equal_and_cover_every_sample(rotation):
    order, lengths, shares = ["a", "b", "c"], [5, 1, 11], 4
    windows = [sample_window(order, lengths, share, shares, rotation) for share in range(shares)]
    read = Counter()
    for window in windows:
        count = 0
        for url, first, stop in window:
            stop = lengths[order.index(url)] if stop is None else stop
            read.update((url, i) for i in range(first, stop))
            count += stop - first
        assert count == -(-sum(lengths) // shares)
    assert set(read) == {(u, i) for u, n in zip(order, lengths, strict=True) for i in range(n)}
    assert sum(read.values()) - len(read) == shares * 5 - sum(lengths)  # the padding repeats
