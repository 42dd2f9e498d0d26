"""Where a probe runs: the device, and torch's threads beside data-loader workers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class ProbeError(ValueError):
    """Bad probe options; the message says what to change."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ProbeError(f"--device {name}: no CUDA device here; use --device cpu or auto")
    return device


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's total)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def intra_op_threads(workers: int) -> int:
    """Threads for torch's operators beside `workers` decoding processes: the cores left over
    (at least 1), and never more than torch was already given (OMP_NUM_THREADS, a caller's
    set_num_threads): threads and workers on the same cores only take turns."""
    return max(1, min(torch.get_num_threads(), available_cores() - workers))


@contextmanager
def torch_threads(workers: int) -> Iterator[int]:
    """Run a block with `intra_op_threads(workers)` threads, restoring the count after."""
    before = torch.get_num_threads()
    threads = intra_op_threads(workers)
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
