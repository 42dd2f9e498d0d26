"""A progress bar that moves per sample while worker processes do the work, and one that moves
per step of a stage that works in one process on columns (dedupe, bin).

Workers call `tick()` after each sample; in a pool they send the ticks through a queue that
`SampleProgress` hands to each worker at start (`SampleProgress.worker_init`), and a thread in
the parent moves the bar. In the parent itself (one worker) `tick()` moves the bar directly.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.context import BaseContext

from tqdm import tqdm

_sink: Callable[[int], None] | None = None  # where tick() reports, in this process


def connect(sink: Callable[[int], None] | None) -> None:
    """Route this process's ticks to `sink` (a queue's put in a worker, a bar in the parent)."""
    global _sink
    _sink = sink


def _connect_queue(queue) -> None:  # pool initializer: runs once in every worker
    connect(queue.put)


def tick(samples: int = 1) -> None:
    if _sink is not None:
        _sink(samples)


class SampleProgress:
    """`with SampleProgress(total, desc, enabled, context) as progress:` then pass
    `progress.worker_init` to the pool as its initializer (context: the pool's)."""

    def __init__(
        self, total: int, desc: str, enabled: bool, context: BaseContext | None, unit: str = "img"
    ) -> None:
        # nothing to do (a finished folder): no "0img" bar
        self.bar = tqdm(total=total, unit=unit, desc=desc, disable=not enabled or total == 0)
        self.queue = context.SimpleQueue() if context is not None else None
        self._thread: threading.Thread | None = None

    @property
    def worker_init(self) -> Callable[[], None] | None:
        """The pool initializer that routes a worker's ticks to this bar (None: no pool)."""
        return functools.partial(_connect_queue, self.queue) if self.queue is not None else None

    def _drain(self) -> None:
        while (samples := self.queue.get()) is not None:
            self.bar.update(samples)

    def __enter__(self) -> SampleProgress:
        if self.queue is not None:
            self._thread = threading.Thread(target=self._drain, daemon=True)
            self._thread.start()
        connect(self.bar.update)  # work done in this process moves the bar directly
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        connect(None)
        if self.queue is not None and exc_type is None:
            self.queue.put(None)
            self._thread.join(timeout=5)
            self.queue.close()
        # Interrupted: a worker killed in the middle of a tick may hold the queue's lock, so
        # nothing is put (it could block for ever); the daemon drain thread ends with us.
        self.bar.close()


class StageSteps:
    """A bar of a stage's named steps: `advance(name)` when the step `name` is done."""

    def __init__(self, desc: str, steps: tuple[str, ...], enabled: bool) -> None:
        self.steps = steps
        self.bar = tqdm(total=len(steps), unit="step", desc=desc, disable=not enabled)
        self.bar.set_postfix_str(steps[0] if steps else "", refresh=False)

    def advance(self, done: str) -> None:
        if done not in self.steps:
            raise ValueError(f"unknown step {done!r} of {self.bar.desc}: one of {self.steps}")
        upcoming = self.steps[self.steps.index(done) + 1 :]
        self.bar.set_postfix_str(upcoming[0] if upcoming else "done", refresh=False)
        self.bar.update(1)


@contextmanager
def stage_progress(desc: str, enabled: bool, steps: tuple[str, ...]) -> Iterator[StageSteps]:
    """`with stage_progress("dedupe", enabled, ("read", ...)) as bar: ... bar.advance("read")`"""
    steps_bar = StageSteps(desc, steps, enabled)
    try:
        yield steps_bar
    finally:
        steps_bar.bar.close()
