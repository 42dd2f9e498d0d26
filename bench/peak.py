"""The peak resident memory of this process, for the benches' child processes."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss() -> int:
    """This process's peak resident bytes: VmHWM, which starts afresh at exec (ru_maxrss keeps
    the parent's peak across fork and exec, so a child would report its parent's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
