"""Shard stream for pretraining: URL expansion, opening, webdataset tar reading, decoding, crops.

The stream is infinite and deterministic: for every (rank, worker) it is a pure function of the
seed, so a run can save how far each worker got (`WorkerPosition`) and a resumed run continues
exactly there. Each worker reads its shards in "passes" (one pass = its share of the shard list);
a pass has its own shard order and shuffle buffer, so resuming replays at most one pass of
bytes (without decoding) to reach the saved offset.
"""

from __future__ import annotations

import logging
import pickle
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from webdataset.tariterators import group_by_keys

from inf590k.dataset.layout import (
    SUMS_PATH,
)
from pretrain.config import DataConfig
from pretrain.data.index import shard_key
from pretrain.data.remote import (
    HashingReader,
    NetworkDisabledError,
    ShardUnreachableError,
    open_url,
    redact_url,
)
from pretrain.data.tarstream import tar_members
from pretrain.data.transforms import as_hw, crop_flip, crop_png, decode_raw_npy, member_size_limit

log = logging.getLogger(__name__)


@dataclass
class WorkerPosition:
    """How far one (logical) loader worker got; plain ints so it checkpoints with weights_only."""

    pass_index: int = 0  # which pass over the worker's shard share
    offset: int = 0  # samples of that pass already handed out (decoded or skipped as bad)
    bad_samples: int = 0  # undecodable samples skipped so far
    shard_errors: int = 0  # corrupt / truncated shards skipped so far

    def as_dict(self) -> dict[str, int]:
        return {
            "pass_index": self.pass_index,
            "offset": self.offset,
            "bad_samples": self.bad_samples,
            "shard_errors": self.shard_errors,
        }


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


@dataclass
class ShardStream(torch.utils.data.IterableDataset):
    """Infinite batches `(images [B, 1, H, W] uint8, position [6] int64)` for one process.

    position = (logical_worker, pass_index, offset, bad_samples, shard_errors, batches) of the
    batch's worker after it. Workers are split by node (rank) then by loader worker; in
    `resampled` mode each worker draws shards with replacement, otherwise each pass is a seeded
    permutation of the list cut into disjoint per-(rank, worker) shares.
    """

    urls: list[str]
    config: DataConfig
    image_size: tuple[int, int]  # (H, W) of the crops
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    num_workers: int = 1  # logical workers (max(1, DataLoader workers))
    first_worker: int = 0  # logical id played by physical worker 0 (continues the round-robin)
    positions: list[dict[str, int]] = field(default_factory=list)  # per logical worker
    shard_lengths: dict[str, int] = field(default_factory=dict)  # shard_key(url) -> samples
    shard_sums: dict[str, str] = field(default_factory=dict)  # shard_key(url) -> sha256
    exclude: frozenset[str] = frozenset()  # sample keys (uids) held out: never trained on

    def __post_init__(self) -> None:
        super().__init__()
        self._failed: dict[int, list[str]] = {}  # worker -> shards that failed (resampled)
        # worker -> shards whose bytes were checked against their sha256 (True: they match)
        self._checked: dict[int, dict[str, bool]] = {}
        self._opened: dict[int, list[int]] = {}  # worker -> [shards opened so far]
        self.image_size = as_hw(self.image_size)
        shares = self.world_size * self.num_workers
        if not self.config.resampled and len(self.urls) < shares:
            raise ValueError(
                f"{len(self.urls)} shards cannot be split over {self.world_size} ranks x "
                f"{self.num_workers} workers (a rank without shards stalls DDP); "
                "use --resampled, fewer --workers, or more shards"
            )

    # -- per-worker pieces
    def _logical_worker(self) -> int:
        info = torch.utils.data.get_worker_info()
        physical = 0 if info is None else info.id
        return (physical + self.first_worker) % self.num_workers

    def pass_shards(self, worker: int, pass_index: int) -> list[str]:
        """The shards one worker reads in one pass, in order.

        Hand-written instead of webdataset's ResampledShards / split_by_node / split_by_worker:
        those keep their epoch counter inside the object and read the worker id themselves,
        so a saved position could not be replayed (and the round-robin not be continued).
        Resampled draws are weighted by shard length (when _info.json gives them all), so
        every sample is equally likely however unevenly the shards are filled."""
        shares = self.world_size * self.num_workers
        share = self.rank * self.num_workers + worker
        if self.config.resampled:
            rng = random.Random(_seed(self.seed, self.rank, worker, pass_index, 11))
            # at least a few draws per pass, so a pass's failure share means something
            count = max(len(self.urls) // shares, min(len(self.urls), 8))
            return rng.choices(self.urls, weights=self._draw_weights(), k=count)
        order = list(self.urls)
        random.Random(_seed(self.seed, pass_index, 13)).shuffle(order)  # same on every rank
        return order[share::shares]

    def _draw_weights(self) -> list[int] | None:
        lengths = [self.shard_lengths.get(shard_key(url)) for url in self.urls]
        if any(n is None for n in lengths) or not any(lengths):
            return None  # unknown lengths: uniform over shards
        return lengths  # type: ignore[return-value]

    def _drawable(self) -> set[str]:
        """Shards a resampled pass can draw (a weight of 0 is never drawn)."""
        weights = self._draw_weights() or [1] * len(self.urls)
        return {url for url, weight in zip(self.urls, weights, strict=True) if weight}

    def _pass_samples(self, urls: list[str]) -> int | None:
        """Samples in a pass's shards, if _info.json gives every length."""
        lengths = [self.shard_lengths.get(shard_key(url)) for url in urls]
        return None if any(n is None for n in lengths) else sum(lengths)  # type: ignore[arg-type]

    # Tar members the stream reads; the others (.json, .cls) are skipped unread (profiled:
    # reading and grouping them cost ~10% of a sample's time besides the PNG decode).
    members: tuple[str, ...] = (".png",)

    def _wanted(self, name: str) -> bool:
        return name.endswith(self.members) or (self.config.raw16 and name.endswith(".npy"))

    def _raw_samples(
        self, urls: list[str], worker_id: int, stats: WorkerPosition
    ) -> Iterator[dict[str, Any]]:
        """Raw samples of a pass's shards. A shard that cannot be opened (after its retries),
        is corrupt, ends early or stalls past --read-deadline is skipped and counted; when more
        than --max-shard-failures of the pass's shards fail without giving a sample, the run
        stops, naming them."""
        current = {"url": "", "failed": False, "count": 0}
        # A resampled pass draws from the whole list (the same shard maybe twice, another not
        # at all): its share counts against every shard it may draw, and a failed shard stays
        # failed for the worker's later passes, so each one is tried before the run stops.
        resampled = self.config.resampled
        distinct = len(set(self.urls)) if resampled else len(set(urls))
        failed = self._failed.setdefault(worker_id, []) if resampled else []
        stats_opened = self._opened.setdefault(worker_id, [0])
        checked = self._checked.setdefault(worker_id, {})

        def fail(url: str, reason: str) -> None:
            stats.shard_errors += 1
            log.warning("skipping shard %s: %s", redact_url(url), reason)
            if current["count"]:
                return  # it gave samples before failing: counted, but it is not lost
            failed.append(url)
            if len(failed) > self.config.max_shard_failures * distinct:
                names = ", ".join(redact_url(u) for u in failed[:3])
                more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
                raise ShardUnreachableError(
                    f"{len(failed)} of the {distinct} shards of a pass failed (more than "
                    f"--max-shard-failures {self.config.max_shard_failures:g}): {names}{more}; "
                    f"last: {reason.split('; ')[0]}; check them with `inf590k verify` or the network"
                )

        def skip_corrupt(exn: Exception) -> bool:
            if isinstance(exn, ShardUnreachableError):
                raise exn
            if not current["failed"]:
                current["failed"] = True
                fail(current["url"], _one_line(exn))
            return True

        def check_length(url: str) -> None:
            # A shard cut at a sample boundary and padded with zero blocks (or a tar that ends
            # before a second one concatenated to it) reads "cleanly" as a shorter tar;
            # _info.json's shard_lengths catch it.
            expected = self.shard_lengths.get(shard_key(url))
            if not current["failed"] and expected is not None and current["count"] < expected:
                fail(url, f"ended after {current['count']} of {expected} samples")

        def check_sum(url: str, stream: HashingReader) -> None:
            matches = stream.matches()
            checked[url] = matches
            if not matches:
                current["failed"] = True
                stats.shard_errors += 1
                log.warning(
                    "shard %s does not match its sha256 in %s (replaced or corrupt): its "
                    "samples of this pass were read, it is not read again; run `inf590k verify`",
                    redact_url(url),
                    SUMS_PATH,
                )

        def opened() -> Iterator[dict[str, Any]]:
            for url in urls:
                if url in failed or checked.get(url) is False:  # not retried, not read again
                    continue
                log.info(
                    "rank %d worker %d pass %d reads %s",
                    self.rank,
                    worker_id,
                    stats.pass_index,
                    redact_url(url),
                )
                current.update(url=url, failed=False, count=0)
                try:
                    stream = open_url(url, self.config)
                except NetworkDisabledError:
                    raise
                except ShardUnreachableError as exc:
                    current["failed"] = True
                    fail(url, str(exc))
                    continue
                stats_opened[0] += 1
                expected = self.shard_sums.get(shard_key(url))
                if expected and url not in checked:  # each shard once per worker: amortised
                    stream = HashingReader(stream, expected)
                try:
                    yield {"url": url, "stream": stream}
                    if isinstance(stream, HashingReader) and not current["failed"]:
                        check_sum(url, stream)
                finally:
                    stream.close()
                check_length(url)

        def counted(samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            for sample in samples:
                if sample.get("__url__") == current["url"]:
                    current["count"] += 1
                yield sample

        limit = member_size_limit(self.config)
        files = _tar_files(opened(), self._wanted, limit, handler=skip_corrupt)
        return counted(group_by_keys(files, handler=skip_corrupt))

    def _pass(self, worker: int, stats: WorkerPosition) -> Iterator[tuple[int, dict[str, Any]]]:
        """(offset, raw sample) of one shuffled pass."""
        urls = self.pass_shards(worker, stats.pass_index)
        raw = self._raw_samples(urls, worker, stats)
        rng = random.Random(_seed(self.seed, self.rank, worker, stats.pass_index, 17))
        initial = self.config.shuffle_initial
        pass_samples = self._pass_samples(urls)
        if pass_samples is not None:  # never wait for a buffer larger than the pass's data
            initial = max(1, min(initial, pass_samples // 2))
        shuffled = bounded_shuffle(
            iter(raw), self.config.shuffle_buffer, initial, rng, self.config.shuffle_bytes
        )
        return enumerate(shuffled)

    def decode(self, sample: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        if self.config.raw16 and "npy" in sample:
            raw = decode_raw_npy(sample["npy"], self.config.max_pixels)
            return crop_flip(raw, self.image_size, rng, self.config)
        if "png" not in sample:
            raise ValueError(f"sample {sample.get('__key__')} has no .png member")
        return crop_png(sample["png"], self.image_size, rng, self.config)

    def samples(self, worker: int, stats: WorkerPosition) -> Iterator[np.ndarray]:
        """Decoded crops forever, advancing `stats` (position and counters) as it goes."""
        while True:
            start, produced = stats.offset, 0
            opened_before = self._opened.get(worker, [0])[0]
            for offset, sample in self._pass(worker, stats):
                if offset < start:  # resume: replay bytes up to the saved offset, no decoding
                    continue
                stats.offset = offset + 1
                if sample.get("__key__") in self.exclude:  # the validation set's
                    continue
                rng = np.random.default_rng(
                    [self.seed, self.rank, worker, stats.pass_index, offset]
                )
                try:
                    image = self.decode(sample, rng)
                except Exception as exc:  # any bad sample is skipped and counted
                    stats.bad_samples += 1
                    log.warning("skipping sample %s: %s", sample.get("__key__"), exc)
                    continue
                produced += 1
                yield image
            drawn_failed_only = (
                self.config.resampled
                and self._opened.get(worker, [0])[0] == opened_before
                and bool(self._drawable() - set(self._failed.get(worker, [])))
            )
            if produced == 0 and start == 0 and not drawn_failed_only:
                raise ShardUnreachableError(
                    f"worker {worker} of rank {self.rank} read no usable sample in a whole pass "
                    f"over {len(self.pass_shards(worker, stats.pass_index))} shards; "
                    "check the shards with `inf590k verify`"
                )
            stats.pass_index, stats.offset = stats.pass_index + 1, 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if torch.utils.data.get_worker_info() is None:
            yield from self._batches()
            return
        try:
            yield from self._batches()
        except Exception as exc:  # noqa: BLE001 - handed to the main process, raised there
            log.debug("loader worker failed", exc_info=True)
            yield WorkerFailure.of(exc)  # type: ignore[misc]

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cv2.setNumThreads(1)  # one decode thread per loader worker; workers give parallelism
        worker = self._logical_worker()
        saved = self.positions[worker] if worker < len(self.positions) else {}
        stats = WorkerPosition(**saved)
        batches = 0
        stream = self.samples(worker, stats)
        height, width = self.image_size
        while True:
            batch = np.empty((self.config.batch_size, 1, height, width), np.uint8)  # [B, 1, H, W]
            for i in range(self.config.batch_size):
                batch[i, 0] = next(stream)
            batches += 1
            position = torch.tensor(
                [
                    worker,
                    stats.pass_index,
                    stats.offset,
                    stats.bad_samples,
                    stats.shard_errors,
                    batches,
                ],
                dtype=torch.int64,
            )
            yield torch.from_numpy(batch), position


def bounded_shuffle(
    data: Iterator[dict[str, Any]],
    size: int,
    initial: int,
    rng: random.Random,
    max_bytes: int,
) -> Iterator[dict[str, Any]]:
    """webdataset's `_shuffle` (the same draws from `rng`, so the same order while the buffer
    stays under `max_bytes`), with the buffer also bounded in bytes: a shard of huge members
    cannot make a worker hold `size` of them."""
    initial = min(initial, size)
    buffer: list[dict[str, Any]] = []
    held = 0

    def add(sample: dict[str, Any]) -> None:
        nonlocal held
        buffer.append(sample)
        held += _sample_bytes(sample)

    def pick() -> dict[str, Any]:
        nonlocal held
        index = rng.randint(0, len(buffer) - 1)
        sample = buffer[index]
        buffer[index] = buffer[-1]
        buffer.pop()
        held -= _sample_bytes(sample)
        return sample

    for sample in data:
        add(sample)
        if len(buffer) < size and held < max_bytes:
            try:
                add(next(data))
            except StopIteration:
                pass
        if len(buffer) >= initial or held >= max_bytes:
            yield pick()
    while buffer:
        yield pick()


def _sample_bytes(sample: dict[str, Any]) -> int:
    return sum(len(v) for v in sample.values() if isinstance(v, bytes | bytearray))


def _tar_files(
    sources: Iterator[dict[str, Any]],
    wanted: Callable[[str], bool],
    max_size: int,
    handler: Callable[[Exception], bool],
) -> Iterator[dict[str, Any]]:
    """webdataset's file samples ({"fname", "data", "__url__"}) of each opened shard, read by
    pretrain.data.tarstream (~10x less time per member than tarfile's stream mode, profiled), and
    an empty dict after each shard, which makes `group_by_keys` hand out the shard's last
    sample before the next shard is opened. A wanted member over `max_size` bytes fails its
    shard unread. An error in a shard goes to `handler`, which skips the rest of that shard
    or raises."""
    for source in sources:
        try:
            for name, data in tar_members(source["stream"], wanted, max_size=max_size):
                yield {"fname": name, "data": data, "__url__": source["url"]}
            yield {}
        except Exception as exc:  # noqa: BLE001 - the handler decides (skip or stop)
            if not handler(exc):
                return


def _one_line(exc: BaseException) -> str:
    """An exception as one line (webdataset appends the stream object and URL to its args)."""
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return " ".join(text.split())[:300]


@dataclass(frozen=True)
class WorkerFailure:
    """An exception of a loader worker, sent as an item so the main process raises it as is:
    the DataLoader would wrap it in a page of worker traceback instead."""

    error: BaseException

    @classmethod
    def of(cls, exc: BaseException) -> WorkerFailure:
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001 - unpicklable exceptions travel as their text
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        return cls(exc)
