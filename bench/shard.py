"""Shard writing speed vs a bare loop on the same images, in one run.

    python bench/shard.py                           # the real samples in ../shared/ir-samples
    python bench/shard.py --samples DIR --repeat 3

Baseline: a bare single-process loop that reads each kept file, decodes it with OpenCV,
converts it to grey, encodes a PNG with cv2.imencode (the shard writer's PNG parameters) and
appends it to a tar with tarfile. `inf590k shard` (one worker, to compare like with like) does
the same work plus what the format needs: the stored-pixel re-read (crop, stretch), the sample
JSON and class, fixed tar headers, sha256, fsync + rename, sidecar parquet and stats.
Target: >= 0.85x.
The best of --repeat runs is reported for each (the machine may be shared).
"""

from __future__ import annotations

import argparse
import io
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from inf590k import catalog as cat
from inf590k.bins import BinConfig, bin_catalog
from inf590k.dedupe import DedupeConfig, dedupe
from inf590k.ingest import IngestConfig, ingest
from inf590k.shard import ShardConfig, png_params, shard
from inf590k.synth import SynthConfig, synthesize

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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=Path, default=REPO_ROOT.parent / "shared" / "ir-samples")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--synth", type=int, default=400, help="synthetic 640x512 frames added to the real ones")
    parser.add_argument("--png-level", type=int, default=1)
    parser.add_argument("--max-count", type=int, default=10_000, help="samples per shard")
    args = parser.parse_args()
    if not args.samples.is_dir():
        raise SystemExit(f"{args.samples} not found: pass --samples DIR (a folder of IR images)")

    with tempfile.TemporaryDirectory(prefix="bench-shard-") as scratch:
        build = Path(scratch) / "build"
        # the real frames plus distinct synthetic ones (copies would be deduplicated away)
        synth_root = Path(scratch) / "synth"
        synthesize(SynthConfig(layout="hit_uav", out=synth_root, count=args.synth))
        sources = (("folder:real", args.samples), ("folder:synth", synth_root))
        ingest(IngestConfig(sources=sources, build=build, progress=False))
        dedupe(DedupeConfig(build=build))
        bin_catalog(BinConfig(build=build))
        table = cat.read_catalog(build)
        rows = [r for r in table.to_pylist() if r["status"] == "ok"]
        megapixels = sum(r["width"] * r["height"] for r in rows) / 1e6
        print(
            f"{len(rows)} kept images ({megapixels:.1f} Mpx) from {args.samples.name}, PNG level {args.png_level}"
        )

        bare, ours, ours_parallel = [], [], []
        for attempt in range(args.repeat):
            bare.append(bare_loop(build, rows, Path(scratch) / f"bare{attempt}", args.png_level))
            for workers, times in ((1, ours), (0, ours_parallel)):
                out = Path(scratch) / f"ds{attempt}-{workers}"
                config = ShardConfig(
                    build=build,
                    out=out,
                    workers=workers,
                    png_level=args.png_level,
                    max_count=args.max_count,
                    progress=False,
                )
                started = time.perf_counter()
                shard(config)
                times.append(time.perf_counter() - started)
                shutil.rmtree(out)
        bare_rate, ours_rate = len(rows) / min(bare), len(rows) / min(ours)
        print(f"bare loop (cv2.imencode + tarfile, 1 process): {bare_rate:.0f} img/s")
        print(f"inf590k shard, 1 worker:                       {ours_rate:.0f} img/s")
        print(
            f"inf590k shard, all cores:                      {len(rows) / min(ours_parallel):.0f} img/s"
        )
        print(f"ratio (1 worker vs bare loop): {ours_rate / bare_rate:.2f}x (target >= 0.85x)")
        parallel_rate = len(rows) / min(ours_parallel)
        print(f"ratio (all cores vs bare loop): {parallel_rate / bare_rate:.2f}x")


if __name__ == "__main__":
    main()
