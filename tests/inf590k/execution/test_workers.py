"""Worker pools die with their command: no orphaned worker, forkserver or resource tracker
after SIGKILL or SIGTERM of the main process; SIGTERM is handled like Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inf590k.execution.local import InlineExecutor, LocalExecutor, make_executor
from tests.conftest import REPO_ROOT

REPO = REPO_ROOT
POOL_SCRIPT = """
import sys, time
from inf590k.execution.local import LocalExecutor, sigterm_as_interrupt
from tests.conftest import REPO_ROOT
with sigterm_as_interrupt(), LocalExecutor(2) as pool:
    print("started", flush=True)
    list(pool.map(time.sleep, [(60,)] * 4))
"""


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (Linux /proc)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    living = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            living.add(pid)
    return living


def start_pool() -> tuple[subprocess.Popen, set[int]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", POOL_SCRIPT], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.time() + 60
    below: set[int] = set()
    while time.time() < deadline and len(below) < 4:  # forkserver, tracker, 2 workers
        below = descendants(proc.pid)
        time.sleep(0.1)
    assert len(below) >= 4, f"pool did not start: {below}"
    time.sleep(0.5)
    return proc, descendants(proc.pid)


def wait_gone(pids: set[int], seconds: float = 10.0) -> set[int]:
    deadline = time.time() + seconds
    while time.time() < deadline and alive(pids):
        time.sleep(0.1)
    return alive(pids)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_no_process_outlives_a_killed_main_process(sig):
    proc, below = start_pool()
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert not wait_gone(below), "worker, forkserver or resource tracker left running"
    if sig == signal.SIGTERM:  # handled like Ctrl-C: KeyboardInterrupt, not a plain death
        assert proc.returncode != -signal.SIGTERM
        assert b"KeyboardInterrupt" in proc.stderr.read()


def test_executors_return_results_in_order():
    with LocalExecutor(2) as pool:
        assert list(pool.map(pow, [(2, i) for i in range(8)], window=3)) == [2**i for i in range(8)]
        assert pool.submit(pow, 3, 2).result() == 9
    inline = make_executor(1)
    assert isinstance(inline, InlineExecutor)
    assert list(inline.map(pow, [(2, 3), (3, 2)])) == [8, 9]
    with pytest.raises(ZeroDivisionError):
        inline.submit(divmod, 1, 0).result()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_of_ingest_is_like_ctrl_c_and_leaves_no_process(tmp_path):
    from tests.builders import make_frames

    make_frames(tmp_path / "src", 3000)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    build = tmp_path / "b"
    command = [
        sys.executable,
        "-c",
        "from cli import main; main()",
        "ingest",
        "--build",
        str(build),
        "--source",
        f"folder={tmp_path / 'src'}",
        "--workers",
        "2",
    ]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline and not list((build / "catalog").glob("part-*.parquet")):
        time.sleep(0.05)
    below = descendants(proc.pid)
    assert len(below) >= 3 and proc.poll() is None, "ingest should still be running"
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 1 and "Aborted!" in output
    assert not wait_gone(below)
    parts = {p.name: p.stat().st_mtime_ns for p in (build / "catalog").glob("*")}
    time.sleep(1)
    assert {p.name: p.stat().st_mtime_ns for p in (build / "catalog").glob("*")} == parts
    assert (build / "lineage" / "ingest.running").exists()  # dedupe will refuse until re-run
