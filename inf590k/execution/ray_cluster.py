"""The build stages on a Ray cluster: a second `Executor` with the same work units.

`RayExecutor` runs each work unit (an ingest chunk, a shard job) as a Ray task instead of in a
local process: the units, their results and the completion markers the stages write (catalog
parts, finished shards) are the same, so a build is byte-identical with either executor and a
killed run resumes with either. A task whose worker dies is run again (`max_retries`): units
write their outputs atomically, so a second run of one gives the same bytes.

Sources and outputs must sit on a filesystem every node sees at the same path (NFS, Lustre, a
mounted bucket): tasks read sources and write shards themselves; the driver (the command)
plans and writes catalog parts from rows, never holding an image.

`ray` is an optional dependency (`pip install 'inf590k[ray]'`); it is imported only here.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from inf590k.execution.local import InlineExecutor, LocalExecutor, bounded_results, make_executor

EXECUTORS = ("local", "ray")
TASK_RETRIES = 3  # reruns of a unit whose worker process or node died
# read by the workers' OpenCV at import: the command's value must reach them on every node
FORWARDED_ENV = ("OPENCV_IO_MAX_IMAGE_PIXELS",)
INSTALL_HINT = "--executor ray needs Ray: pip install 'inf590k[ray]' (or `make install`)"

_initialized: set[str] = set()  # initializers already run in this worker process


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A HOST:PORT address must accept a connection (Ray itself retries for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", "local": Ray resolves them
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise RuntimeError(
            f"cannot reach the Ray cluster at {address} ({err.strerror or err}): start it with "
            "`ray start --head`, or drop --ray-address and RAY_ADDRESS to use a local Ray"
        ) from err


@contextmanager
def keep_sigterm_handler() -> Iterator[None]:
    """ray.init replaces the SIGTERM handler (exit with a C++ stack dump): keep the command's,
    where SIGTERM is Ctrl-C and the executor cancels its tasks."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


class RayMissing(RuntimeError):
    """Ray is not installed."""


def import_ray() -> Any:
    try:
        import ray  # Ray is optional (the `ray` extra)
    except ImportError as err:
        raise RayMissing(INSTALL_HINT) from err
    return ray


def unit_error(err: BaseException) -> BaseException:
    """The error a unit raised, as the local pool raises it (not Ray's traceback text); a
    worker that cannot import the toolkit gets a line saying what to install where."""
    cause = err
    while getattr(cause, "cause", None) is not None and cause is not cause.cause:
        cause = cause.cause
    missing = cause.args[0] if cause.args and isinstance(cause.args[0], ImportError) else cause
    if isinstance(missing, ImportError):
        return RuntimeError(
            f"a Ray worker cannot import {missing.name or missing}: install inf590k "
            "(pip install 'inf590k[ray]', the same version) on every node of the cluster"
        )
    return cause if isinstance(cause, Exception) else err


def run_unit(initializer: Callable[[], None] | None, fn: Callable[..., Any], *args: Any) -> Any:
    """In a Ray worker: the stage's per-process initializer once, then the unit."""
    if initializer is not None:
        name = f"{initializer.__module__}.{initializer.__qualname__}"
        if name not in _initialized:
            initializer()
            _initialized.add(name)
    return fn(*args)


def stream_unit(fn: Callable[..., Iterator[Any]], *args: Any) -> Iterator[Any]:
    """In a Ray worker: the items of a generator, each put in the object store as it comes."""
    for item in fn(*args):  # noqa: UP028 - Ray calls send(): a plain iterator has none
        yield item


class RayExecutor:
    """Work units as Ray tasks, on the cluster at `address` or on a Ray started here.

    `workers`: CPUs of the Ray started here; on a cluster, the cluster's CPUs decide (the
    number of units in flight follows them).
    """

    def __init__(
        self,
        workers: int,
        address: str | None = None,
        initializer: Callable[[], None] | None = None,
    ) -> None:
        ray = import_ray()
        self._ray = ray
        self._started_here = False
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or None
            options: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "logging_level": logging.WARNING,  # not "Started a local Ray instance"
            }
            if address:
                check_reachable(address)
                options["address"] = address
            else:
                options["num_cpus"] = max(1, workers)
            with keep_sigterm_handler():
                try:
                    ray.init(**options)
                except (ConnectionError, SystemExit) as err:  # Ray exits when it gives up
                    raise RuntimeError(
                        f"cannot connect to the Ray cluster at {address}: check `ray status` there"
                    ) from err
            self._started_here = True
        self.workers = max(1, int(ray.cluster_resources().get("CPU", workers)))
        self._initializer = initializer
        env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
        runtime_env = {"env_vars": env} if env else None
        self._unit = ray.remote(run_unit).options(
            max_retries=TASK_RETRIES, retry_exceptions=False, runtime_env=runtime_env
        )
        self._stream = ray.remote(stream_unit).options(
            num_returns="streaming",
            max_retries=TASK_RETRIES,
            runtime_env=runtime_env,
            _generator_backpressure_num_objects=2 * self.workers,
        )
        self._in_flight: set[Any] = set()  # refs of submitted units not yet returned

    def _submit_ref(self, fn: Callable[..., Any], args: Iterable[Any]) -> Any:
        ref = self._unit.remote(self._initializer, fn, *args)
        self._in_flight.add(ref)
        return ref

    def _result(self, ref: Any) -> Any:
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as err:
            raise unit_error(err) from None
        finally:
            self._in_flight.discard(ref)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        ref = self._submit_ref(fn, args)
        future = ref.future()
        future.add_done_callback(lambda _: self._in_flight.discard(ref))
        return future

    def map(self, fn: Callable[..., Any], items: Iterable[Any], window: int = 0) -> Iterator[Any]:
        """`fn(*item)` for each item as a task, results in order; at most `window` (default 2
        per cluster CPU) in flight. An item may hold object refs (from `stream`): a task gets
        their values, fetched by its own node."""
        window = window or 2 * self.workers
        return bounded_results(lambda item: self._submit_ref(fn, item), items, window, self._result)

    def stream(self, fn: Callable[..., Iterator[Any]], *args: Any) -> Iterator[Any]:
        """Run the generator `fn(*args)` in a worker; yield a reference to each item, which
        stays in the cluster's object store (the driver never holds it): hand them to `map`.
        One pass over a compressed archive, read where the archive is."""
        return iter(self._stream.remote(fn, *args))

    def close(self, cancel: bool = False) -> None:
        """Wait for submitted units; `cancel`: stop them. A Ray started here is shut down."""
        in_flight = list(self._in_flight)
        try:
            if cancel:
                for ref in in_flight:
                    self._ray.cancel(ref, force=True)
            elif in_flight:
                self._ray.wait(in_flight, num_returns=len(in_flight))
        finally:
            self._in_flight.clear()
            if self._started_here:
                self._ray.shutdown()
                self._started_here = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(cancel=exc_type is not None)


def open_executor(
    kind: str,
    workers: int,
    preload: tuple[str, ...] = (),
    initializer: Callable[[], None] | None = None,
    address: str | None = None,
) -> InlineExecutor | LocalExecutor | RayExecutor:
    """The executor a stage was asked for: `local` (a process pool, or the calling process for
    one worker) or `ray` (`address`, else RAY_ADDRESS, else a Ray started for the command)."""
    if kind == "local":
        return make_executor(workers, preload, initializer)
    if kind == "ray":
        return RayExecutor(workers, address, initializer)
    raise ValueError(f"--executor {kind!r}: choose one of {', '.join(EXECUTORS)}")


@contextmanager
def shared_session(kind: str, workers: int, address: str | None = None) -> Iterator[None]:
    """One Ray for several stages (`build`): started (or connected) before them and shut
    down after; each stage's RayExecutor finds it running and leaves it up. A no-op for
    other executors."""
    if kind != "ray":
        yield
        return
    with RayExecutor(workers, address):
        yield
