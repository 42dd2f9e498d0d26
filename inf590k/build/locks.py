"""Locks of the build folder (a lock file, re-entrant in one process, naming its holder) and of
a dataset folder (flock on the folder itself); `--wait` waits instead of failing. The kernel
drops a lock when its process dies.
"""

from __future__ import annotations

import contextvars
import fcntl
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILENAME = ".lock"


# Whether a stage waits for the build folder's lock (`--wait`) instead of failing at once.
WAIT_FOR_LOCK: contextvars.ContextVar[bool] = contextvars.ContextVar("wait_for_lock", default=False)


# Build folders this process holds the lock of (resolved path -> depth): `build` runs the
# stages one after another under one lock.
_HELD: dict[str, tuple[int, int]] = {}


class LineageError(ValueError):
    """A stage cannot start on this build folder; the message names what to run first."""


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def command_line() -> str:
    return shlex.join(["inf590k", *sys.argv[1:]]) if sys.argv else "inf590k"


def _holder(handle_path: Path) -> str:
    try:
        described = json.loads(handle_path.read_text())
        return (
            f"process {described['pid']} (`{described['command']}`, since {described['started']})"
        )
    except (OSError, ValueError, KeyError):
        return "another process"


def _lock(descriptor: int) -> bool:
    """An exclusive flock on `descriptor`: waits under `--wait`, else False when it is held."""
    flags = fcntl.LOCK_EX if WAIT_FOR_LOCK.get() else fcntl.LOCK_EX | fcntl.LOCK_NB
    try:
        fcntl.flock(descriptor, flags)
    except BlockingIOError:
        return False
    return True


def held_here(build: Path) -> bool:
    """This process holds the build folder's lock (an outer stage of `build` does)."""
    return str(Path(build).resolve()) in _HELD


@contextmanager
def build_lock(build: Path, stage: str) -> Iterator[None]:
    """Exclusive lock of a build folder (re-entrant in one process); fails at once when busy,
    or waits when WAIT_FOR_LOCK is set (`--wait`). The kernel drops it when the process dies."""
    build = Path(build)
    key = str(build.resolve())
    if key in _HELD:
        descriptor, depth = _HELD[key]
        _HELD[key] = (descriptor, depth + 1)
        try:
            yield
        finally:
            descriptor, depth = _HELD[key]
            _HELD[key] = (descriptor, depth - 1)
        return
    lock_path = build / LOCK_FILENAME
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if not _lock(descriptor):
            raise LineageError(
                f"build folder {build} is in use by {_holder(lock_path)}: wait for it to finish, "
                "or pass --wait"
            )
        described = {
            "pid": os.getpid(),
            "command": command_line(),
            "stage": stage,
            "started": now(),
        }
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(described).encode(), 0)
        _HELD[key] = (descriptor, 1)
        try:
            yield
        finally:
            del _HELD[key]
    finally:
        os.close(descriptor)


@contextmanager
def folder_lock(folder: Path, what: str) -> Iterator[None]:
    """Exclusive lock of a folder itself (flock on its descriptor: no lock file inside, as a
    dataset folder holds its own files only); created if missing, and removed again if the
    block fails and leaves it empty. Fails at once when busy, or waits under `--wait`."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if not _lock(descriptor):
            raise LineageError(
                f"{what} {folder} is being written by another `inf590k` command: wait for it to "
                "finish, or pass --wait"
            )
        yield
    except BaseException:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise
    finally:
        os.close(descriptor)


@contextmanager
def lock_wait(wait: bool) -> Iterator[None]:
    """Within the block, stages wait for a busy build folder instead of failing."""
    token = WAIT_FOR_LOCK.set(wait)
    try:
        yield
    finally:
        WAIT_FOR_LOCK.reset(token)
