"""How many threads torch's operators get: the cores this process may use (its affinity mask,
capped by its cgroup's CPU quota) less the loader workers that decode beside them, at least one;
`--threads N` overrides (OMP_NUM_THREADS does not: it only sets torch's count at start-up,
which this policy replaces). Threads and workers on the same cores only take turns: on a busy 2-core
machine a tiny model's step is 10x slower with 2 threads beside a worker than with 1.

    plan = plan_threads(workers=4)          # ThreadPlan(threads=1, workers=4, cores=2, ...)
    with torch_threads(4) as threads: ...   # set for a block, the count before restored after
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_MEMBERSHIP = Path("/proc/self/cgroup")


def _read_limit(folder: Path) -> float | None:
    """CPUs per period one cgroup folder allows: v2 `cpu.max` ("max 100000" or "QUOTA PERIOD"),
    v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` (-1: none); None when unlimited or unreadable."""
    try:
        if (folder / "cpu.max").is_file():
            quota, _, period = (folder / "cpu.max").read_text().strip().partition(" ")
            if quota == "max":
                return None
            return int(quota) / int(period or 100_000)
        quota_us = int((folder / "cpu.cfs_quota_us").read_text())
        period_us = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError, ZeroDivisionError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def cgroup_cpu_limit(
    root: Path = CGROUP_ROOT, membership: Path = CGROUP_MEMBERSHIP
) -> float | None:
    """The tightest CPU quota on the way from this process's cgroup up to the root (a container's
    own cgroup shows as "/"), in CPUs; None when no quota applies or none can be read."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            base = root  # v2: one unified hierarchy
        elif "cpu" in controllers.split(","):
            base = root / controllers  # v1: the cpu controller's own mount, e.g. cpu,cpuacct
        else:
            continue
        folder = base / path.strip().lstrip("/")
        while True:
            limit = _read_limit(folder)
            if limit is not None:
                limits.append(limit)
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return min(limits) if limits else None


def usable_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by its cgroup's quota (rounded
    down: a quota of 1.5 CPUs keeps 1 thread busy without being throttled), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, math.floor(quota))
    return max(1, cores)


def local_processes() -> int:
    """Training processes sharing this machine's cores (torchrun's LOCAL_WORLD_SIZE)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass(frozen=True)
class ThreadPlan:
    threads: int  # torch's intra-op threads
    workers: int  # loader processes beside them
    cores: int  # cores this process may use
    chosen_by: str = "cores"  # "cores" (the policy) or "--threads"

    def __str__(self) -> str:
        """`1 torch thread, 4 loader workers (2 usable cores)`."""
        threads = f"{self.threads} torch thread{'s' if self.threads != 1 else ''}"
        workers = f"{self.workers} loader worker{'s' if self.workers != 1 else ''}"
        source = "" if self.chosen_by == "cores" else f", as {self.chosen_by} asks"
        # an explicit count is kept, but said when it oversubscribes: the threads take turns
        crowded = ": more than the cores, they take turns" if self.oversubscribed else ""
        cores = f"{self.cores} usable core{'s' * (self.cores != 1)}"
        return f"{threads}, {workers} ({cores}{source}){crowded}"

    @property
    def oversubscribed(self) -> bool:
        """More threads than the cores left beside the workers hold, as only --threads asks."""
        return self.chosen_by != "cores" and self.threads > max(1, self.cores - self.workers)


def plan_threads(workers: int, requested: int | None = None, processes: int = 1) -> ThreadPlan:
    """`requested` threads (--threads), else this process's share of the usable cores
    (`processes` of them on this machine) less its `workers`, at least 1."""
    if requested is not None and requested < 1:
        raise ValueError(f"--threads {requested}: give 1 or more (or leave it out to choose)")
    if workers < 0:
        raise ValueError(f"--workers {workers}: give 0 or more")
    cores = usable_cores()
    if requested is not None:
        return ThreadPlan(requested, workers, cores, "--threads")
    return ThreadPlan(max(1, cores // max(1, processes) - workers), workers, cores)


def intra_op_threads(workers: int, requested: int | None = None) -> int:
    """The threads `plan_threads` gives one process beside `workers` loader processes."""
    return plan_threads(workers, requested).threads


@contextmanager
def torch_threads(workers: int, requested: int | None = None) -> Iterator[int]:
    """Run a block with `intra_op_threads(workers, requested)` threads, restoring the count
    after (a library call leaves the caller's setting as it found it)."""
    before = torch.get_num_threads()
    threads = intra_op_threads(workers, requested)
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
