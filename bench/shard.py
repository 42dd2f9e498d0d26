"""Shard writing speed vs a bare loop on the same images, in one run.

    python bench/shard.py                           # the real samples in ../shared/ir-samples
    python bench/shard.py --samples DIR --repeat 9

Baseline: a bare single-process loop that reads each kept file, decodes it with OpenCV,
converts it to grey, encodes a PNG with cv2.imencode (the shard writer's PNG parameters) and
appends it to a tar with tarfile. `inf590k shard` (one worker, to compare like with like) does
the same work plus what the format needs: the stored-pixel re-read (crop, stretch), the sample
JSON and class, fixed tar headers, sha256, fsync + rename, sidecar parquet and stats.
Target: >= 0.85x.

Noise: after one untimed round (source files into the page cache, the pool's forkserver
started), the three runs (bare loop, 1 worker, all cores) are interleaved, in a rotated
order, --repeat times, and the median of each is reported (the machine may be shared); the
seconds of every run are printed too.

Fair parallelism: a shard is one worker's unit, and the samples here are few, so with the
writer's default --max-count (10,000) each resolution bin is one shard and the largest bin
(~80% of the pixels) alone bounds the all-cores time. A real corpus has many shards per bin;
the default --max-count here (128) cuts the largest bin into a few shards, like that. The
data-preparation stages are imported inside `prepare_build`: pool workers re-import this
script as their main module, and should pay what they pay under the `inf590k` command.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from inf590k.build import catalog as cat
from inf590k.build.shard import ShardConfig, shard
from inf590k.build.shard.tar import png_params
from inf590k.execution.units import ExecutionOptions

REPO_ROOT = Path(__file__).resolve().parents[1]


def bare_loop(build: Path, rows: list[dict], out: Path, level: int) -> float:
    """Read, decode, grey, encode PNG, one tar per bin: the least a writer must do. -> seconds."""
    roots = {s: Path(info["root"]) for s, info in cat.read_sources(build).items()}
    out.mkdir(parents=True, exist_ok=True)
    by_bin: dict[str, list[dict]] = {}
    for row in rows:
        by_bin.setdefault(row["res_bin"], []).append(row)
    started = time.perf_counter()
    for bin_name, bin_rows in sorted(by_bin.items()):
        with tarfile.open(out / f"{bin_name}.tar", "w") as tar:
            for row in bin_rows:
                data = (roots[row["source"]] / row["relpath"]).read_bytes()
                image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
                if image.ndim == 3:
                    image = cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2GRAY)
                png = cv2.imencode(".png", image, png_params(level))[1].tobytes()
                info = tarfile.TarInfo(f"{row['uid']}.png")
                info.size = len(png)
                tar.addfile(info, io.BytesIO(png))
    return time.perf_counter() - started


def prepare_build(samples: Path, synth: int, scratch: Path) -> Path:
    """A build of the real frames plus distinct synthetic ones (copies would be deduplicated)."""
    from inf590k.build.bins import BinConfig, bin_catalog
    from inf590k.build.dedupe.config import DedupeConfig
    from inf590k.build.dedupe.stage import dedupe
    from inf590k.build.ingest import IngestConfig, ingest
    from inf590k.synth import SynthConfig, synthesize

    build = scratch / "build"
    synth_root = scratch / "synth"
    synthesize(SynthConfig(layout="hit_uav", out=synth_root, count=synth))
    sources = (("folder:real", samples), ("folder:synth", synth_root))
    ingest(IngestConfig(sources=sources, build=build, execution=ExecutionOptions(progress=False)))
    dedupe(DedupeConfig(build=build))
    bin_catalog(BinConfig(build=build))
    return build


def shard_once(build: Path, out: Path, workers: int, args: argparse.Namespace) -> float:
    """One `inf590k shard` run into a new folder -> seconds."""
    config = ShardConfig(build=build, out=out, png_level=args.png_level, max_count=args.max_count, execution=ExecutionOptions(workers=workers, progress=False))
    started = time.perf_counter()
    shard(config)
    return time.perf_counter() - started


def timed_runs(runs: dict[str, Callable[[Path], float]], repeat: int, scratch: Path) -> dict:
    """{name: [seconds]}: the runs interleaved, their order rotated each repetition, after
    one untimed round."""
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for attempt in range(-1, repeat):  # -1: the untimed warm-up round
        shift = attempt % len(names)
        for name in names[shift:] + names[:shift]:
            out = scratch / f"{name}-{attempt}"
            seconds = runs[name](out)
            shutil.rmtree(out, ignore_errors=True)
            if attempt >= 0:
                times[name].append(seconds)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=Path, default=REPO_ROOT.parent / "shared" / "ir-samples")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved repetitions (median)")
    parser.add_argument(
        "--synth", type=int, default=400, help="synthetic 640x512 frames added to the real ones"
    )
    parser.add_argument("--png-level", type=int, default=1)
    parser.add_argument(
        "--max-count", type=int, default=128, help="samples per shard (see Fair parallelism)"
    )
    args = parser.parse_args()
    if not args.samples.is_dir():
        raise SystemExit(f"{args.samples} not found: pass --samples DIR (a folder of IR images)")
    if args.repeat < 1:
        raise SystemExit("--repeat must be 1 or more")

    with tempfile.TemporaryDirectory(prefix="bench-shard-") as folder:
        scratch = Path(folder)
        build = prepare_build(args.samples, args.synth, scratch)
        table = cat.read_catalog(build)
        rows = [r for r in table.to_pylist() if r["status"] == "ok"]
        megapixels = sum(r["width"] * r["height"] for r in rows) / 1e6
        print(
            f"{len(rows)} kept images ({megapixels:.1f} Mpx) from {args.samples.name}, PNG level "
            f"{args.png_level}, --max-count {args.max_count}, median of {args.repeat} interleaved runs"
        )
        times = timed_runs(
            {
                "bare": lambda out: bare_loop(build, rows, out, args.png_level),
                "one": lambda out: shard_once(build, out, 1, args),
                "all": lambda out: shard_once(build, out, 0, args),
            },
            args.repeat,
            scratch,
        )
        spread = "; ".join(f"{n} " + " ".join(f"{t:.2f}" for t in ts) for n, ts in times.items())
        print(f"seconds per run (bare, 1 worker, all cores): {spread}")
        rate = {name: len(rows) / statistics.median(seconds) for name, seconds in times.items()}
        print(f"bare loop (cv2.imencode + tarfile, 1 process): {rate['bare']:.0f} img/s")
        print(f"inf590k shard, 1 worker:                       {rate['one']:.0f} img/s")
        print(f"inf590k shard, all cores:                      {rate['all']:.0f} img/s")
        print(f"ratio (1 worker vs bare loop): {rate['one'] / rate['bare']:.2f}x (target >= 0.85x)")
        print(f"ratio (all cores vs bare loop): {rate['all'] / rate['bare']:.2f}x")


if __name__ == "__main__":
    main()
