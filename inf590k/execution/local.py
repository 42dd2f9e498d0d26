"""Worker pools of the build stages (ingest, shard): an executor interface, a local process pool.

A stage cuts its work into picklable work units (a function and its arguments) and hands them
to an `Executor`: `submit` one unit, or `map` an iterable of units in order with a bounded
number in flight, then `close`. `LocalExecutor` runs them in processes forked from a
forkserver; `InlineExecutor` in the calling process (one worker). Another backend (a cluster
scheduler) implements the same three methods with the same work units.

Processes never outlive the command:
- every worker watches the main process (a pidfd, or polling where there is none) and exits
  at once when it dies, even by SIGKILL; on Linux PR_SET_PDEATHSIG also covers the worker's
  direct parent (the forkserver);
- the main process treats SIGTERM like Ctrl-C (KeyboardInterrupt), and an interrupted
  executor kills its workers instead of waiting for their current unit;
- workers ignore SIGINT: Ctrl-C in a terminal reaches the whole process group, and the main
  process alone decides (no traceback per worker).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import select
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, Protocol

PR_SET_PDEATHSIG = 1
PARENT_POLL_SECONDS = 0.5


class Executor(Protocol):
    """What a build stage needs from a worker pool."""

    workers: int

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future: ...

    def map(
        self, fn: Callable[..., Any], items: Iterable[Any], window: int = 0
    ) -> Iterator[Any]: ...

    def close(self, cancel: bool = False) -> None: ...


# ----------------------------------------------------------------------------- in the worker


def _set_parent_death_signal() -> None:
    """Linux: the kernel sends SIGKILL to this process when its parent exits."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _wait_for_exit(pid: int) -> None:
    """Block until process `pid` has exited."""
    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # no pidfd (old kernel, not Linux): poll
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                pass
            threading.Event().wait(PARENT_POLL_SECONDS)
    poller = select.poll()
    poller.register(descriptor, select.POLLIN)
    while not poller.poll():
        pass


def watch_main_process(main_pid: int) -> None:
    """Exit this process as soon as `main_pid` is gone (a daemon thread waits for it)."""

    def watch() -> None:
        _wait_for_exit(main_pid)
        os._exit(1)

    threading.Thread(target=watch, name="watch-main-process", daemon=True).start()


def _init_worker(main_pid: int, initializer: Callable[[], None] | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _set_parent_death_signal()
    watch_main_process(main_pid)
    if initializer is not None:
        initializer()


# ----------------------------------------------------------------------------- in the main process


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt like Ctrl-C (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def bounded_results(
    submit: Callable[[Any], Any],
    items: Iterable[Any],
    window: int,
    result: Callable[[Any], Any] = Future.result,
) -> Iterator[Any]:
    """Results in item order, with at most `window` units submitted and not yet returned
    (Executor.map submits everything at once: a whole tar archive would sit in memory).
    `submit` returns a handle (a Future by default) and `result` waits for its value."""
    pending: deque[Any] = deque()
    for item in items:
        pending.append(submit(item))
        if len(pending) >= window:
            yield result(pending.popleft())
    while pending:
        yield result(pending.popleft())


class InlineExecutor:
    """Runs work units in the calling process (one worker: no pool to start)."""

    workers = 1

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as err:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(err)
        return future

    def map(self, fn: Callable[..., Any], items: Iterable[Any], window: int = 0) -> Iterator[Any]:
        return (fn(*item) for item in items)

    def close(self, cancel: bool = False) -> None:
        pass

    def __enter__(self) -> InlineExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pool_start_method() -> str:
    """How LocalExecutor starts its workers (queues handed to them must use the same)."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class LocalExecutor:
    """A process pool on this machine, forked from a forkserver that imported `preload` once.

    Plain fork would copy the caller's threads' locks (OpenCV's pool, torch, tqdm) and can
    deadlock; spawn would re-import OpenCV/pyarrow in every worker of every run.
    """

    def __init__(
        self,
        workers: int,
        preload: tuple[str, ...] = (),
        initializer: Callable[[], None] | None = None,
    ) -> None:
        self.workers = workers
        context = multiprocessing.get_context(pool_start_method())
        if context.get_start_method() == "forkserver":
            context.set_forkserver_preload(["inf590k.execution.local", *preload])
        self._pool = ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(os.getpid(), initializer),
        )

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self._pool.submit(fn, *args)

    def map(self, fn: Callable[..., Any], items: Iterable[Any], window: int = 0) -> Iterator[Any]:
        """`fn(*item)` for each item, results in order; at most `window` (default 2 per
        worker) submitted ahead of the one being returned."""
        window = window or 2 * self.workers
        return bounded_results(lambda item: self._pool.submit(fn, *item), items, window)

    def close(self, cancel: bool = False) -> None:
        """Wait for the workers to finish; `cancel`: drop queued units and kill the workers."""
        if cancel:
            processes = list((self._pool._processes or {}).values())  # noqa: SLF001
            self._pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                if process.is_alive():
                    process.kill()
            for process in processes:
                process.join(timeout=5)
        else:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(cancel=exc_type is not None)


def make_executor(
    workers: int, preload: tuple[str, ...] = (), initializer: Callable[[], None] | None = None
) -> InlineExecutor | LocalExecutor:
    """A local pool of `workers` processes, or the calling process itself for one worker
    (`initializer` is for pool workers only: it does not change the caller)."""
    if workers <= 1:
        return InlineExecutor()
    return LocalExecutor(workers, preload, initializer)
