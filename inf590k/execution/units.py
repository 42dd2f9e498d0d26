"""One way to run a stage's work units: inline, in a local process pool, or as Ray tasks.

Ingest (chunks of files), shard (one tar each) and verify (one shard each) hand their units
to `run_units` with one `ExecutionOptions` record; none of these options changes a byte of
what a stage writes. Workers move the progress bar per sample or file (`progress.tick`); Ray
workers cannot reach this process, so there the bar moves per returned unit.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from inf590k.execution.local import (
    InlineExecutor,
    LocalExecutor,
    pool_start_method,
    sigterm_as_interrupt,
)
from inf590k.execution.progress import SampleProgress
from inf590k.execution.ray_cluster import EXECUTORS, RayExecutor
from inf590k.fsutil import available_cores


@dataclass(frozen=True)
class ExecutionOptions:
    """Where a stage's work units run: the options every stage shares."""

    workers: int = 0  # processes (0: one per core the process may use)
    executor: str = "local"  # "local" (a process pool) or "ray" (see execution/ray_cluster.py)
    ray_address: str | None = None  # a Ray cluster; None: RAY_ADDRESS, else a Ray started here
    progress: bool = True  # a progress bar on stderr

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"--executor {self.executor!r}: choose one of {', '.join(EXECUTORS)}")
        if self.workers < 0:
            raise ValueError(f"--workers {self.workers}: give 0 (one per core) or more")

    def worker_count(self, units: int) -> int:
        """Processes for `units` work units: no more than there are units, at least one."""
        return min(self.workers or available_cores(), max(1, units))


@dataclass
class UnitRun:
    """The executor a stage's units run on, and the bar they move."""

    executor: InlineExecutor | LocalExecutor | RayExecutor
    bar: SampleProgress
    # samples a finished unit stands for, where its worker could not tick the bar (Ray)
    count: Callable[[Any, Any], int] | None = None

    def map(self, fn: Callable[..., Any], units: Iterable[tuple], window: int = 0) -> Iterator[Any]:
        """`fn(*unit)` for each unit, results in unit order."""
        if self.count is None:
            yield from self.executor.map(fn, units, window)
            return
        pending: list[tuple] = []

        def remembered() -> Iterator[tuple]:
            for unit in units:
                pending.append(unit)
                yield unit

        for result in self.executor.map(fn, remembered(), window):
            self.bar.bar.update(self.count(pending.pop(0), result))
            yield result

    @property
    def on_cluster(self) -> bool:
        return isinstance(self.executor, RayExecutor)


@contextmanager
def run_units(
    options: ExecutionOptions,
    *,
    preload: tuple[str, ...],
    label: str,
    total: int,
    units: int,
    unit: str = "img",
    initializer: Callable[[], None] | None = None,
    count: Callable[[Any, Any], int] | None = None,
) -> Iterator[UnitRun]:
    """Within the block, `run.map(fn, units)` runs `units` work units: in this process for one
    worker, else in a local pool (forkserver-started, `preload` imported once, workers die
    with this process) or on Ray. SIGTERM acts as Ctrl-C: an interrupted pool kills its
    workers. `total`: samples (or files) on the bar, counted in `unit`s; `count(unit, result)`:
    what a finished unit adds to the bar when its worker could not tick it (Ray)."""
    workers = options.worker_count(units)
    kind = options.executor if units else "local"
    in_pool = kind == "local" and workers > 1
    context = multiprocessing.get_context(pool_start_method()) if in_pool else None
    with SampleProgress(total, label, options.progress, context, unit) as bar, sigterm_as_interrupt():
        init = _chained(initializer, bar.worker_init)
        if kind == "ray":
            executor = RayExecutor(workers, options.ray_address, initializer)
        elif in_pool:
            executor = LocalExecutor(workers, preload, init)
        else:
            executor = InlineExecutor()
        with executor:
            yield UnitRun(executor, bar, count if kind == "ray" else None)


def _chained(*initializers: Callable[[], None] | None) -> Callable[[], None] | None:
    chosen = [i for i in initializers if i is not None]
    if len(chosen) <= 1:
        return chosen[0] if chosen else None
    return _Chain(tuple(chosen))


@dataclass(frozen=True)
class _Chain:
    """Several pool initializers as one (picklable: pools send it to each worker)."""

    initializers: tuple[Callable[[], None], ...]

    def __call__(self) -> None:
        for initializer in self.initializers:
            initializer()
