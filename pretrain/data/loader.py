"""The process's DataLoader over a `ShardStream`: worker errors raised in the main process as
one line, and the tracker of each worker's position (what a checkpoint saves).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

from pretrain.config import DataConfig
from pretrain.data.index import (
    DatasetInfo,
    expand_shard_urls,
    expected_lengths,
    scan_sources,
    shard_key,
)
from pretrain.data.mixture import Mixture, add_counts, plan_mixture
from pretrain.data.stream import ShardStream, WorkerFailure, WorkerPosition, _seed

log = logging.getLogger(__name__)

HEAD = 6  # position fields before the per-label counts (see ShardStream)


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, as torch's DataLoader counts them)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def loader_workers(requested: int) -> int:
    """`--workers`, capped at the usable cores with a one-line note: more loader processes
    than cores only compete for them (and torch warns about it at every epoch)."""
    cores = usable_cores()
    if requested <= cores:
        return requested
    log.warning(
        "--workers %d: this machine lets the process use %d cores, so %d loader processes are used",
        requested,
        cores,
        cores,
    )
    return cores


class StreamLoader(torch.utils.data.DataLoader):
    """DataLoader whose workers' errors reach the caller as with `--workers 0`: one line."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        for item in super().__iter__():
            if isinstance(item, WorkerFailure):
                raise item.error
            yield item


def make_loader(stream: ShardStream, workers: int, pin_memory: bool) -> torch.utils.data.DataLoader:
    """DataLoader over already-batched items; workers take batches in round-robin order."""
    return StreamLoader(
        stream,
        batch_size=None,
        # Its own generator: starting an iterator would otherwise draw from the global torch
        # RNG and shift the model's random stream after a resume.
        generator=torch.Generator().manual_seed(stream.seed),
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )


class StreamTracker:
    """Main-process view of the workers' positions, fed with each consumed batch's position,
    and the count of the samples consumed per source and per bin (what training drew)."""

    def __init__(
        self,
        num_workers: int,
        positions: list[dict[str, int]] | None = None,
        batches: int = 0,
        mixture: Mixture | None = None,
        drawn: dict[str, dict[str, int]] | None = None,
    ) -> None:
        self.num_workers = num_workers
        self.positions = (
            [dict(p) for p in positions]
            if positions
            else [WorkerPosition().as_dict() for _ in range(num_workers)]
        )
        self.batches = batches  # micro-batches consumed by the training loop
        self.labels = (
            (mixture.sources, mixture.bins) if mixture is not None else ((), ())
        )  # what the counts after HEAD in a position name
        self.drawn: dict[str, dict[str, int]] = add_counts({}, drawn or {})

    def update(self, position: torch.Tensor) -> None:
        values = [int(v) for v in position.tolist()]
        worker, pass_index, offset, bad, errors, _ = values[:HEAD]
        self.positions[worker] = {
            "pass_index": pass_index,
            "offset": offset,
            "bad_samples": bad,
            "shard_errors": errors,
        }
        self.batches += 1
        sources, bins = self.labels
        counts = values[HEAD:]
        if len(counts) == len(sources) + len(bins):
            add_counts(
                self.drawn,
                {
                    "sources": dict(zip(sources, counts[: len(sources)], strict=True)),
                    "bins": dict(zip(bins, counts[len(sources) :], strict=True)),
                },
            )

    @property
    def first_worker(self) -> int:
        return self.batches % self.num_workers

    def totals(self) -> dict[str, int]:
        return {
            "bad_samples": sum(p["bad_samples"] for p in self.positions),
            "shard_errors": sum(p["shard_errors"] for p in self.positions),
        }

    def state(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "batches": self.batches,
            "positions": [dict(p) for p in self.positions],
            "drawn": {kind: dict(table) for kind, table in self.drawn.items()},
        }


def loader_for(
    config: DataConfig,
    image_size: int | tuple[int, int],
    *,
    seed: int,
    rank: int,
    world_size: int,
    pin_memory: bool,
    resume_state: dict[str, Any] | None = None,
    urls: list[str] | None = None,
    info: DatasetInfo | None = None,
    exclude: frozenset[str] = frozenset(),
    mixture: Mixture | None = None,
) -> tuple[torch.utils.data.DataLoader, StreamTracker]:
    """The process's DataLoader and the tracker that must see each batch it consumes;
    samples whose key is in `exclude` (the held-out set) are passed over. `mixture`: the
    sampling weights (default: planned from `config.mix` / `config.mix_bin`)."""
    urls = urls if urls is not None else expand_shard_urls(config.shards, config.split, config)
    if mixture is None:
        mixture = mixture_for(config, urls, info)
    workers = loader_workers(config.workers)
    num_workers = max(1, workers)
    positions, batches = None, 0
    if resume_state and resume_state.get("num_workers") == num_workers:
        positions, batches = resume_state["positions"], int(resume_state["batches"])
    elif resume_state:
        log.warning(
            "saved data position is for %s workers, not %s: the stream restarts with a new seed",
            resume_state.get("num_workers"),
            num_workers,
        )
        seed = _seed(seed, int(resume_state.get("batches", 0)))
    drawn = resume_state.get("drawn") if resume_state else None
    tracker = StreamTracker(num_workers, positions, batches, mixture, drawn)
    stream = ShardStream(
        urls=urls,
        config=config,
        image_size=image_size,
        seed=seed,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        first_worker=tracker.first_worker,
        positions=[dict(p) for p in tracker.positions],
        shard_lengths=expected_lengths(info),
        shard_sums=dict(info.sums) if info is not None else {},
        exclude=exclude,
        mixture=mixture,
    )
    return make_loader(stream, workers, pin_memory), tracker


def mixture_for(config: DataConfig, urls: list[str], info: DatasetInfo | None) -> Mixture:
    """The mixture of --mix / --mix-bin over the shards `urls` (checked: one ValueError line).
    The sources are _info.json's; where it lists none, --mix counts them in the shards."""
    sources = info.sources if info is not None else ()
    if config.mix and not sources:
        sources = scan_sources(urls, config)
    return plan_mixture(
        config.mix,
        config.mix_bin,
        [shard_key(url) for url in urls],
        expected_lengths(info),
        sources,
    )


StreamFactory = Callable[..., tuple[torch.utils.data.DataLoader, StreamTracker]]
