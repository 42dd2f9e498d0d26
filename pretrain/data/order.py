"""The order samples are read in: each rank's and loader worker's window of an epoch's shard
sequence (equal steps everywhere), and the shuffle buffer bounded in samples and bytes.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

from webdataset.tariterators import base_plus_ext

log = logging.getLogger(__name__)

# (shard URL, first sample, stop): what a worker reads of one shard in a pass (stop None:
# to the shard's end)
Window = tuple[str, int, int | None]


def sample_window(
    order: list[str], lengths: list[int], share: int, shares: int, rotation: int = 0
) -> list[Window]:
    """Share `share` of `shares` equal windows over the shards `order` read as one sequence
    of sum(lengths) samples starting at sample `rotation`: ceil(total / shares) samples each,
    (shard, first, stop) pieces in order (stop None: the whole shard). The windows run on past
    the end into the start again (padding by repeats), so every window has the same length
    and every sample is in one of them."""
    total = sum(lengths)
    per_share = -(-total // shares)
    pieces: list[Window] = []
    position = share * per_share + rotation
    stop = position + per_share
    while position < stop:
        begin = position % total
        end = min(begin + stop - position, total)
        offset = 0
        for url, length in zip(order, lengths, strict=True):
            first, last = max(begin, offset), min(end, offset + length)
            if first < last:  # a whole shard is read without counting its samples
                whole = first == offset and last == offset + length
                pieces.append((url, 0, None) if whole else (url, first - offset, last - offset))
            offset += length
        position += end - begin
    return pieces


class SampleWindow:
    """A tar reader's `wanted` for one shard's samples first..stop-1: counts samples by their
    key (what `group_by_keys` groups by) and wants only those members of the window; `seen`
    is the samples of the whole shard, checked against its length."""

    def __init__(self, first: int, stop: int | None, wanted: Callable[[str], bool]) -> None:
        self.first, self.stop, self.wanted = first, stop, wanted
        self.key: str | None = None
        self.seen = 0

    def __call__(self, name: str) -> bool:
        key, _ = base_plus_ext(name)
        if key is None or key != self.key:
            self.key = key
            self.seen += 1
        index = self.seen - 1
        in_window = index >= self.first and (self.stop is None or index < self.stop)
        return in_window and self.wanted(name)


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
