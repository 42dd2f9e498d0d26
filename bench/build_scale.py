"""The build at two corpus sizes, and what that projects for 590K and 5M images on 16 cores.

    python bench/build_scale.py [--sizes 5000 20000] [--scale 0.5] [--workers 0]

Writes 9 synthetic sources (`inf590k synth` layouts, their planted byte-identical copies and
broken files included) of about SIZE/9 frames each, then runs ingest, dedupe, bin and shard,
each in a process of its own, and a no-op `build` (everything up to date) after them. Per
stage it prints:

- CPU ms per catalog row: in the stage's main process (serial: planning, committing, the
  whole of dedupe and bin) and in its workers (parallel);
- the share of the build's wall time spent on one core: the seconds in which the main process
  worked while no worker did (planning before a pool starts, committing after it, dedupe and
  bin, which have no pool), sampled from /proc every 0.1 s; and, as an upper bound, the main
  processes' whole CPU time over the wall;
- peak RSS of the main process and of any one worker, and the main process's peak per row
  above the RSS of the imports alone;
- the growth of serial CPU per row from the smaller size to the larger (1.0: linear), and
  the line through the two sizes: seconds fixed + ms per further row.

Then the no-op build's time (the `run_build` call, and the whole process with its imports), and
the projection to 16 cores: per stage its single-core phases on the line through the two sizes,
then the longer of the workers' CPU x N / 16 (at the larger size's rate) and the driver's other
CPU (its line through the two sizes; a driver slower than its workers counts as on one core),
and the main process's RSS as imports + per-row x N (bench/catalog_scale.py measures that at 200K-1M rows). Goals:
single-core share < 10%; no-op < 2 s; 590K < 10 min and 5M < 90 min on 16 cores; < 16 GB in
any process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from peak import peak_rss  # bench/peak.py: this script's folder is on the path

REPO = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, REPO)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))

LAYOUTS = ("sirst", "nudt_sirst", "irstd1k", "roadscene", "llvip", "flir_adas_v2", "kaist", "m3fd", "msrs")
STAGES = ("ingest", "dedupe", "bin", "shard")
TARGETS = {"590K": 590_700, "5M": 5_000_000}
CORES = 16


# ----------------------------------------------------------------------------- in a child


class Descendants:
    """CPU seconds and peak RSS of this process's descendants (pool workers are the
    forkserver's children, which this process never reaps: read from /proc while they run)."""

    def __init__(self, every: float = 0.1) -> None:
        self.cpu: dict[int, float] = {}
        self.rss: dict[int, int] = {}
        self.every = every
        self.own_cpu = 0.0
        self.timeline: list[tuple[float, float, float]] = []  # (wall, main CPU, workers' CPU)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Descendants:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        self._mark()
        while not self._stop.wait(self.every):
            self.sample()
            self._mark()
        self.own_cpu = time.thread_time()  # this thread's reading of /proc: not the stage's

    def _mark(self) -> None:
        main = time.process_time() - time.thread_time()  # the stage's threads, not this one
        self.timeline.append((time.perf_counter(), main, sum(self.cpu.values())))

    def alone_seconds(self, busy: float = 0.5, idle: float = 0.25) -> float:
        """Wall seconds in which the main process worked (>= `busy` of a core) while no worker
        did (< `idle` of a core in all): the single-core phases, sampled every `every` s."""
        alone = 0.0
        for (t0, m0, w0), (t1, m1, w1) in itertools.pairwise(self.timeline):
            span = t1 - t0
            if span > 0 and (m1 - m0) / span >= busy and (w1 - w0) / span < idle:
                alone += span
        return alone

    def sample(self) -> None:
        parents: dict[int, int] = {}
        ticks: dict[int, float] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid = int(entry.name)
            parents[pid] = int(fields[1])
            ticks[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        me = os.getpid()
        for pid in ticks:
            ancestor = parents.get(pid)
            while ancestor and ancestor != me:
                ancestor = parents.get(ancestor)
            if ancestor != me:
                continue
            self.cpu[pid] = max(self.cpu.get(pid, 0.0), ticks[pid])
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
                self.rss[pid] = max(self.rss.get(pid, 0), peak)
            except (OSError, IndexError):
                pass


def _configs(root: Path, workers: int):
    from inf590k.build.bins import BinConfig
    from inf590k.build.dedupe.config import DedupeConfig
    from inf590k.build.ingest import IngestConfig
    from inf590k.build.pipeline import BuildConfig
    from inf590k.build.shard import ShardConfig
    from inf590k.execution.units import ExecutionOptions

    build, out = root / "build", root / "dataset"
    execution = ExecutionOptions(workers=workers, progress=False)
    sources = tuple((layout, root / "sources" / layout) for layout in LAYOUTS)
    ingest = IngestConfig(sources=sources, build=build, execution=execution)
    dedupe = DedupeConfig(build=build, contact_groups=12, progress=False)
    bins = BinConfig(build=build, progress=False)
    shard = ShardConfig(build=build, out=out, execution=execution)
    return {
        "ingest": ingest, "dedupe": dedupe, "bin": bins, "shard": shard,
        "build": BuildConfig(ingest=ingest, out=out, dedupe=dedupe, bins=bins, shard=shard, execution=execution),
    }


def run_child(stage: str, root: Path, workers: int) -> None:
    """One stage (or `imports`, or the no-op `build`) in this process; its figures as JSON."""
    import pyarrow.parquet as pq

    from inf590k.build import catalog as cat
    from inf590k.build.bins import bin_catalog
    from inf590k.build.dedupe.stage import dedupe
    from inf590k.build.ingest import ingest
    from inf590k.build.pipeline import run_build
    from inf590k.build.shard import shard

    functions = {"ingest": ingest, "dedupe": dedupe, "bin": bin_catalog, "shard": shard, "build": run_build}
    started, cpu = time.perf_counter(), time.process_time()
    with Descendants() as workers_seen:
        if stage != "imports":
            functions[stage](_configs(root, workers)[stage])
    wall = time.perf_counter() - started
    main_cpu = time.process_time() - cpu - workers_seen.own_cpu
    alone = workers_seen.alone_seconds() if workers_seen.cpu else min(wall, main_cpu)  # no pool: all
    rows = sum(pq.read_metadata(part).num_rows for part in cat.part_paths(root / "build"))  # footers
    print(json.dumps({
        "wall": wall, "main_cpu": main_cpu, "worker_cpu": sum(workers_seen.cpu.values()), "alone": alone,
        "beside": max(0.0, main_cpu - alone),  # the driver's CPU while its workers work
        "main_rss": peak_rss(),
        "worker_rss": max(workers_seen.rss.values(), default=0), "rows": rows,
    }))


def child(stage: str, root: Path, workers: int) -> dict:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--child", stage, "--root", str(root), "--workers", str(workers)],
        capture_output=True, text=True, check=False,
    )
    if done.returncode:
        raise SystemExit(f"{stage} failed:\n{done.stdout}\n{done.stderr}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["process_wall"] = time.perf_counter() - started
    return figures


# ----------------------------------------------------------------------------- driver


def make_sources(root: Path, size: int, scale: float) -> int:
    from inf590k.synth.config import SynthConfig
    from inf590k.synth.layouts import synthesize

    frames = 0
    for index, layout in enumerate(LAYOUTS):
        summary = synthesize(SynthConfig(layout=layout, out=root / "sources" / layout, count=max(1, size // len(LAYOUTS)), seed=index, scale=scale))
        frames += summary.ir_images
    return frames


def measure(size: int, scale: float, workers: int, keep: Path | None) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"build-scale-{size}-", dir=keep))
    started = time.perf_counter()
    frames = make_sources(root, size, scale)
    print(f"  {size}: {frames} frames written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    stages = {}
    for stage in STAGES:
        stages[stage] = child(stage, root, workers)
        print(f"  {size}: {stage} {stages[stage]['wall']:.1f} s", file=sys.stderr)
    noop = child("build", root, workers)
    if keep is None:
        shutil.rmtree(root)
    return {"frames": frames, "stages": stages, "noop": noop, "rows": stages["shard"]["rows"]}


def mb(value: float) -> str:
    return f"{value / 2**20:.0f} MB"


def rss_per_row(results: dict[int, dict], stage: str, key: str) -> float:
    """Bytes of peak RSS each further row costs: the slope between the two sizes."""
    small, large = (results[size]["stages"][stage] for size in sorted(results))
    return max(0.0, (large[key] - small[key]) / max(1, large["rows"] - small["rows"]))


def line_fit(results: dict[int, dict], stage: str, key: str) -> tuple[float, float]:
    """(seconds fixed, seconds per further row) of a stage's figure `key`: the line through
    the two sizes (a fixed cost, such as reading manifests or starting a pool, is not
    multiplied by N)."""
    small, large = (results[size]["stages"][stage] for size in sorted(results))
    slope = max(0.0, (large[key] - small[key]) / max(1, large["rows"] - small["rows"]))
    return max(0.0, large[key] - slope * large["rows"]), slope


def projected_stage(results: dict[int, dict], stage: str, rows: int, cores: int) -> tuple[float, float]:
    """(wall seconds, of which on one core) of a stage at `rows` rows on `cores` cores.

    Its single-core phases (the main process working while no worker does: `alone`) grow on the
    line through the two sizes. In the rest the workers share the work and the driver works
    beside them (its CPU outside the single-core phases): the phase lasts the longer of the
    workers' CPU / cores and the driver's CPU, and counts as on one core when the driver is
    the longer (the workers then wait for it).
    """
    large = results[max(results)]["stages"][stage]
    fixed, slope = line_fit(results, stage, "alone")  # seconds
    serial = fixed + slope * rows
    driver_fixed, driver_slope = line_fit(results, stage, "beside")
    driver = driver_fixed + driver_slope * rows
    workers = large["worker_cpu"] / large["rows"] * rows / cores
    return serial + max(driver, workers), serial + (driver if driver > workers else 0.0)


def report(results: dict[int, dict], imports: dict) -> None:
    small, large = sorted(results)
    base = imports["main_rss"]
    print(f"\nimports alone: RSS {mb(base)}, {imports['process_wall']:.2f} s for a process to start and import")
    print(f"{'stage':8}{'size':>7}{'rows':>8}{'wall s':>8}{'one-core s':>11}{'serial ms/row':>15}"
          f"{'worker ms/row':>15}{'main RSS':>10}{'worker RSS':>12}")
    for size in (small, large):
        result = results[size]
        for stage in STAGES:
            s = result["stages"][stage]
            rows = max(1, s["rows"])
            print(f"{stage:8}{size:>7}{rows:>8}{s['wall']:>8.1f}{s['alone']:>11.2f}{1000 * s['main_cpu'] / rows:>15.3f}"
                  f"{1000 * s['worker_cpu'] / rows:>15.3f}{mb(s['main_rss']):>10}{mb(s['worker_rss']):>12}")
    print("\n(one-core s: wall seconds in which the main process worked while no worker did, sampled "
          "every 0.1 s; dedupe and bin have no workers: all of their CPU)")
    print("\npeak RSS per further row (slope between the sizes), main process / a worker "
          "(bench/catalog_scale.py measures the main process at 200K-1M rows):")
    for stage in STAGES:
        print(f"  {stage:8}{rss_per_row(results, stage, 'main_rss'):>8.0f} B{rss_per_row(results, stage, 'worker_rss'):>8.0f} B")
    print("\nserial CPU per row, larger / smaller size (1.0 = linear):")
    for stage in STAGES:
        a, b = results[small]["stages"][stage], results[large]["stages"][stage]
        ratio = (b["main_cpu"] / b["rows"]) / max(1e-9, a["main_cpu"] / a["rows"])
        fixed, slope = line_fit(results, stage, "main_cpu")
        print(f"  {stage:8}{ratio:.2f}   (fit: {fixed:.2f} s fixed + {1000 * slope:.4f} ms per further row)")
    for size in (small, large):
        stages = results[size]["stages"]
        wall = sum(s["wall"] for s in stages.values())
        alone = sum(s["alone"] for s in stages.values())
        driver = sum(min(s["main_cpu"], s["wall"]) for s in stages.values())
        print(f"\n{size}: build wall {wall:.1f} s, on one core {alone:.1f} s = {100 * alone / wall:.1f}% "
              f"(goal < 10%); main processes' CPU {driver:.1f} s = {100 * driver / wall:.1f}% of the wall")
        noop = results[size]["noop"]
        print(f"{size}: no-op build {noop['wall']:.2f} s in run_build, {noop['process_wall']:.2f} s with "
              f"the interpreter and imports (goal < 2 s); main RSS {mb(noop['main_rss'])}")
    stages = results[large]["stages"]
    print(f"\nprojection on {CORES} cores from the {large} figures: per stage the single-core phases on the "
          f"line through the two sizes, then the longer of worker CPU x N / {CORES} and the driver's "
          f"other CPU x N; frames as synthesized here (scale {ARGS.scale}: ingest and shard CPU grow "
          "with pixels), workers never short of work, disks keep up")
    for name, n in TARGETS.items():
        walls = {stage: projected_stage(results, stage, n, CORES) for stage in STAGES}
        total = sum(w for w, _ in walls.values())
        serial = sum(one for _, one in walls.values())
        parts = ", ".join(f"{stage} {w / 60:.1f}" for stage, (w, _) in walls.items())
        peak = max(stages[st]["main_rss"] + rss_per_row(results, st, "main_rss") * (n - stages[st]["rows"]) for st in STAGES)
        print(f"  {name}: {total / 60:.1f} min ({parts} min), of which on one core "
              f"{serial / 60:.1f} min ({100 * serial / total:.0f}%); largest main process "
              f"~{peak / 2**30:.1f} GB (goal: 590K < 10 min, 5M < 90 min, < 16 GB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=(5000, 20000))
    parser.add_argument("--scale", type=float, default=0.5, help="synth frame scale (1.0: 640x512 and the like)")
    parser.add_argument("--workers", type=int, default=0, help="0: one per core")
    parser.add_argument("--keep", type=Path, default=None, help="folder for the corpora (default: temp)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)
    global ARGS
    ARGS = parser.parse_args()
    if ARGS.child:
        run_child(ARGS.child, ARGS.root, ARGS.workers)
        return
    imports = child("imports", Path(tempfile.gettempdir()), ARGS.workers)
    results = {size: measure(size, ARGS.scale, ARGS.workers, ARGS.keep) for size in ARGS.sizes}
    report(results, imports)


ARGS: argparse.Namespace

if __name__ == "__main__":
    main()
