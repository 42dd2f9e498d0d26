"""Shard planning (counts and time) and shard writing speed vs their baselines, in one run.

    python bench/shard.py                           # the real samples in ../shared/ir-samples
    python bench/shard.py --samples DIR --repeat 9
    python bench/shard.py --plan-only               # only the planning figures (no images)
    python bench/shard.py --plan-memory 200000 1000000  # the driver's memory and CPU per row

Planning, on synthetic catalogs (Arrow columns, no image files):
- Shard counts of a 590,000-frame plan (640x512) with a smallest bin of 15, 16 and 100 images:
  the former rule (every shard within 2x of the smallest bin's, --min-shard-length 16),
  computed here, against the planner's (each bin on its own to its targets).
- Seconds to plan --plan-rows kept rows (default 60,000, three resolution bins): the former
  planner (one dict per row, `json.dumps` per row, counts by Python loops), kept here as
  `former_plan`, against `plan_shards`; median of --repeat runs, interleaved.

Driver (--plan-memory ROWS...): a build folder of ROWS synthetic kept rows over 445 resolution
bins of skewed sizes (no image files); a fresh child process runs everything `inf590k shard`'s
main process does (catalog read, planning, the plan file, each job pickled as the pool would,
the index files), the workers replaced by the pickling. Printed: peak RSS above a child that
only imported (VmHWM, bytes per row) and CPU seconds (all threads, ms per row), and their
ratio to the baseline: a child that only reads the catalog (`read_catalog`) and writes its
copy, the least the command must do. Targets: <= ~1 KB per row, so that 5M rows fit in 8 GB;
the driver's CPU a small share of a build.

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
import hashlib
import io
import json
import math
import pickle
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
from catalog_rows import frame_columns  # bench/catalog_rows.py: this script's folder is on the path
from peak import peak_rss

from inf590k.build import catalog as cat
from inf590k.build.shard import ShardConfig, shard
from inf590k.build.shard.jobs import plan_shards
from inf590k.build.shard.plan import (
    FORMAT_VERSION,
    _bin_rng,
    estimated_bytes,
    kept_by_bin,
    shard_counts,
)
from inf590k.build.shard.tar import png_params
from inf590k.dataset.layout import CATALOG_SCHEMA, sample_json
from inf590k.execution.units import ExecutionOptions

REPO_ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- planning


def synthetic_catalog(bins: dict[str, tuple[int, int, int]]) -> pa.Table:
    """Kept rows built column by column: {bin: (rows, width, height)}, 9 sources."""
    names = [n for n, (rows, _, _) in bins.items() for _ in range(rows)]
    rows = len(names)
    index = np.arange(rows)
    width = np.concatenate([np.full(n, w, np.int32) for n, w, _ in bins.values()])
    height = np.concatenate([np.full(n, h, np.int32) for n, _, h in bins.values()])
    columns = {
        "uid": [f"src{i % 9}-frame{i:08d}" for i in index],
        "source": [f"src{i % 9}" for i in index],
        "relpath": [f"seq{i // 1000:04d}/frame{i:08d}.png" for i in index],
        "frame": np.full(rows, -1, np.int32),
        "split": ["train"] * rows,
        "license": ["CC BY 4.0"] * rows,
        "modality": ["lwir"] * rows,
        "tags": [["day"]] * rows,
        "status": [cat.STATUS_OK] * rows,
        "reason": [""] * rows,
        "file_bytes": (width.astype(np.int64) * height * 0.7).astype(np.int64),
        "file_sha256": [hashlib.sha256(str(i).encode()).hexdigest() for i in index],
        "pixel_sha256": [hashlib.sha256(f"p{i}".encode()).hexdigest() for i in index],
        **frame_columns(width, height),
        "entropy": (6 + (index % 100) / 50).astype(np.float32),
        "phash": [f"{i:016x}" for i in index],
        "dhash": [f"{i * 7:016x}" for i in index],
        "dup_group": np.full(rows, -1, np.int64),
        "res_bin": names,
    }
    return pa.table({f.name: pa.array(columns[f.name], f.type) for f in CATALOG_SCHEMA})


def former_counts(sizes: dict[str, int], sample_bytes: int, max_count: int, max_size: int) -> dict[str, int]:
    """Shards per bin under the former rule (bins of equal samples, --min-shard-length 16):
    the fewest within the limits, then every bin cut to within 2x of the shortest shard."""
    counts = {b: max(math.ceil(n / max_count), math.ceil(n * sample_bytes / max_size)) for b, n in sizes.items()}
    while True:
        shortest = min(n // counts[b] for b, n in sizes.items())
        if shortest < 16:
            return counts
        capped = {b: max(counts[b], math.ceil(n / (2 * shortest))) for b, n in sizes.items()}
        if capped == counts:
            return counts
        counts = capped


def count_figures(frames: int) -> None:
    """Shard counts of a `frames`-frame plan with a small bin, former rule vs the planner's."""
    config = ShardConfig(build=Path("."), out=Path("."))
    print(f"shard counts, {frames:,} frames at 640x512 + a smallest bin at 320x256 "
          f"(--shard-samples {config.max_count:,}, --shard-bytes {config.max_size:,}):")  # fmt: skip
    big = synthetic_catalog({"big": (frames, 640, 512)})
    for small in (15, 16, 100):
        sizes = {"big": frames, "small": small}
        former = former_counts(sizes, 640 * 512 + 4096, config.max_count, config.max_size)
        table = pa.concat_tables([big, synthetic_catalog({"small": (small, 320, 256)})])
        estimates = {b: estimated_bytes(t, False) for b, t in kept_by_bin(Path("."), table).items()}
        now = shard_counts(estimates, config.max_count, config.max_size)
        longest = math.ceil(frames / now["big"])
        print(f"  smallest bin {small:>3}: former rule {sum(former.values()):>6,} shards "
              f"(of {frames // former['big']} samples), now {sum(now.values()):>4,} shards (of "
              f"{longest:,} samples, ~{int(estimates['big'][:longest].sum()) / 1e9:.2f} GB); "
              f"{sum(former.values()) / sum(now.values()):.0f}x fewer")  # fmt: skip


def former_plan(table: pa.Table, config: ShardConfig) -> list[tuple]:
    """The former planner, as it was: one dict per row, counts by Python loops over row
    dicts, `sample_json` per row; (relpath, rows, classes, jsons, digest) per shard."""
    rows = table.filter(pa.compute.equal(table.column("status"), cat.STATUS_OK)).to_pylist()
    by_bin: dict[str, list[dict]] = {}
    for row in rows:
        by_bin.setdefault(row["res_bin"], []).append(row)
    classes = {s: i for i, s in enumerate(sorted({r["source"] for r in rows}))}
    shuffled = {}
    for bin_name in sorted(by_bin):
        order = _bin_rng(config.seed, bin_name).permutation(len(by_bin[bin_name]))
        shuffled[bin_name] = [by_bin[bin_name][i] for i in order]

    def pixel_bytes(row: dict) -> int:
        return int(row["width"]) * int(row["height"]) + 4096

    def runs(items: list, count: int) -> list[list]:
        base, extra = divmod(len(items), count)
        bounds = np.concatenate([[0], np.cumsum([base + (i < extra) for i in range(count)])])
        return [items[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    counts = {}
    for bin_name, items in shuffled.items():
        count = max(1, math.ceil(len(items) / config.max_count))
        while count < len(items) and any(
            sum(pixel_bytes(r) for r in run) > config.max_size for run in runs(items, count)
        ):
            count += 1
        counts[bin_name] = count
    shortest = min(len(items) // counts[b] for b, items in shuffled.items())
    if shortest >= 16:
        for bin_name, items in shuffled.items():
            counts[bin_name] = max(counts[bin_name], math.ceil(len(items) / (2 * shortest)))
    jobs = []
    for bin_name in sorted(shuffled):
        for index, shard_rows in enumerate(runs(shuffled[bin_name], counts[bin_name])):
            relpath = f"{bin_name}/{bin_name}-{index:06d}.tar"
            shard_classes = tuple(classes[r["source"]] for r in shard_rows)
            jsons = tuple(sample_json(r) for r in shard_rows)
            header = json.dumps([FORMAT_VERSION, False, 1, relpath, shard_classes]).encode()
            digest = hashlib.sha256(header + b"".join(jsons)).hexdigest()
            jobs.append((relpath, tuple(shard_rows), shard_classes, jsons, digest))
    return jobs


def plan_figures(rows: int, repeat: int) -> None:
    """Seconds to plan `rows` kept rows: the former planner vs `plan_shards` (same table)."""
    bins = {"s512-767_r115-149": (int(rows * 0.8), 640, 512),
            "s256-383_r115-149": (int(rows * 0.15), 320, 256),
            "s768-up_r150-199": (rows - int(rows * 0.8) - int(rows * 0.15), 1920, 1080)}  # fmt: skip
    table = synthetic_catalog(bins)
    scratch = tempfile.TemporaryDirectory(prefix="bench-shard-plan-")  # the plan file's build folder
    config = ShardConfig(build=Path(scratch.name), out=Path("."))

    def planner() -> int:
        return len(plan_shards(config, None, table))

    def former() -> int:
        return len(former_plan(table, config))

    times: dict[str, list[float]] = {"former": [], "planner": []}
    for attempt in range(repeat):
        for name, run in sorted({"former": former, "planner": planner}.items(), reverse=attempt % 2 == 1):
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    scratch.cleanup()
    former_s, now_s = (statistics.median(times[n]) for n in ("former", "planner"))
    print(f"planning {rows:,} kept rows ({len(bins)} bins), median of {repeat}: former planner "
          f"{former_s:.2f} s ({1e6 * former_s / rows:.0f} us/row), plan_shards {now_s:.2f} s "
          f"({1e6 * now_s / rows:.1f} us/row): {former_s / now_s:.1f}x faster; projected at "
          f"590,700 rows: {former_s * 590_700 / rows:.0f} s -> {now_s * 590_700 / rows:.1f} s")  # fmt: skip


# ----------------------------------------------------------------------------- the driver's memory

DRIVER_BINS = 445  # resolution bins of the memory figures


RESOLUTIONS = ((640, 512), (320, 256), (384, 288), (1920, 1080), (160, 120), (1280, 1024), (336, 256))


def skewed_bins(rows: int, count: int = DRIVER_BINS) -> dict[str, tuple[int, int, int]]:
    """{bin: (rows, width, height)}: `count` bins of Zipf-like sizes (one large, many small)."""
    weights = 1.0 / np.arange(1, count + 1) ** 1.2
    sizes = np.maximum(1, np.floor(weights / weights.sum() * rows)).astype(int)
    sizes[0] += rows - int(sizes.sum())
    return {
        f"b{index:03d}_{w}x{h}": (int(size), w, h)
        for index, (size, (w, h)) in enumerate(zip(sizes, (RESOLUTIONS * count)[:count], strict=True))
    }


DUPLICATE_EVERY = 33  # one row in this many is a duplicate (dedupe's decision file)


def write_synthetic_build(build: Path, rows: int, parts: int = 4) -> int:
    """A build folder as ingest, dedupe and bin leave it: `rows` synthetic rows in `parts`
    parquet parts, dedupe's decisions (one row in DUPLICATE_EVERY a duplicate) and bin's
    assignments of the kept rows. -> kept rows."""
    table = synthetic_catalog(skewed_bins(rows))
    bounds = np.linspace(0, rows, parts + 1).astype(int)
    for index, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        cat.write_parquet_atomic(table.slice(start, end - start), cat.catalog_dir(build) / f"part-{index:05d}.parquet")
    duplicate = np.arange(rows) % DUPLICATE_EVERY == DUPLICATE_EVERY - 1
    decisions = pa.table({
        "uid": table.column("uid"),
        "status": pa.array(np.where(duplicate, cat.STATUS_DUPLICATE, cat.STATUS_OK)),
        "reason": pa.array(np.where(duplicate, "duplicate of src0-frame00000000 (phash 3)", "")),
        "dup_group": pa.array(np.where(duplicate, 0, -1), pa.int64()),
    })  # fmt: skip
    cat.write_columns(build, cat.DECISIONS_PATH, decisions)
    kept = table.filter(pa.array(~duplicate))
    assign = pa.table({"uid": kept.column("uid"), "res_bin": kept.column("res_bin").dictionary_encode()})
    cat.write_columns(build, cat.BIN_ASSIGN_PATH, assign)
    return kept.num_rows


def bare_read_and_copy(build: Path, out: Path) -> int:
    """The least the main process must do: read the catalog, write its copy. -> rows."""
    import pyarrow.parquet as pq  # lazy: measured in the child

    catalog = cat.read_catalog(build)
    out.mkdir(parents=True)
    pq.write_table(catalog, out / "catalog.parquet")
    return int(pa.compute.sum(pa.compute.equal(catalog.column("status"), cat.STATUS_OK)).as_py())


def driver_child(mode: str, build: Path, out: Path) -> None:
    """In this (fresh) process: the shard stage's main-process work ("driver": the shards
    replaced by pickling each job) or the bare read and copy ("bare"); prints {rows, shards,
    peak_bytes, cpu_s, pickled} as JSON."""
    from inf590k.build.shard import stage  # lazy: the child measures above its imports

    imported = peak_rss()
    pickled = []

    def pickle_jobs(todo: list, config: ShardConfig):
        for job in todo:
            pickled.append(len(pickle.dumps(job)))
            yield {"shard": job.relpath, "count": len(job), "bytes": 0, "sha256": "0" * 64, "parquet_sha256": "0" * 64}

    stage._write_all = pickle_jobs
    usage = resource.getrusage(resource.RUSAGE_SELF)
    if mode == "bare":
        rows, shards = bare_read_and_copy(build, out), 0
    else:
        config = ShardConfig(build=build, out=out, execution=ExecutionOptions(progress=False))
        summary = stage._write_dataset(config, out, time.perf_counter())
        rows, shards = summary.samples, summary.shards
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    print(json.dumps({"rows": rows, "shards": shards, "peak_bytes": peak_rss() - imported,
                      "cpu_s": cpu, "pickled": sum(pickled)}))  # fmt: skip


def driver_figures(row_counts: list[int]) -> None:
    """Peak RSS and CPU per kept row of the shard stage's main process, against the bare read
    of the catalog and write of its copy (each in a fresh child; see the docstring)."""
    for rows in row_counts:
        with tempfile.TemporaryDirectory(prefix="bench-shard-driver-") as folder:
            build = Path(folder) / "build"
            write_synthetic_build(build, rows)
            found = {}
            for mode in ("bare", "driver"):
                command = [sys.executable, __file__, "--driver-child", mode, str(build), str(Path(folder) / mode)]
                found[mode] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        result, bare = found["driver"], found["bare"]
        per_row = result["peak_bytes"] / result["rows"]
        print(f"driver, {result['rows']:,} kept rows in {result['shards']:,} shards over {DRIVER_BINS} bins: "
              f"peak RSS above imports {result['peak_bytes'] / 2**20:.0f} MiB ({per_row:.0f} B/row, "
              f"5M rows ~{per_row * 5e6 / 2**30:.1f} GiB); CPU {result['cpu_s']:.2f} s "
              f"({1e3 * result['cpu_s'] / result['rows']:.4f} ms/row); jobs pickled "
              f"{result['pickled'] / 2**20:.1f} MiB")  # fmt: skip
        print(f"  bare catalog read + copy: {bare['peak_bytes'] / bare['rows']:.0f} B/row, "
              f"{1e3 * bare['cpu_s'] / bare['rows']:.4f} ms/row; driver vs bare: peak "
              f"{result['peak_bytes'] / bare['peak_bytes']:.2f}x, CPU {result['cpu_s'] / bare['cpu_s']:.2f}x")  # fmt: skip


# ----------------------------------------------------------------------------- writing


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
    parser.add_argument("--plan-rows", type=int, default=60_000, help="rows of the planning run")
    parser.add_argument("--plan-only", action="store_true", help="only the planning figures")
    parser.add_argument("--plan-memory", type=int, nargs="+", metavar="ROWS",
                        help="only the driver's memory and CPU per row at these kept-row counts")  # fmt: skip
    parser.add_argument("--driver-child", nargs=3, help=argparse.SUPPRESS)  # MODE BUILD OUT
    args = parser.parse_args()
    if args.driver_child:
        mode, build, out = args.driver_child
        driver_child(mode, Path(build), Path(out))
        return
    if args.plan_memory:
        driver_figures(args.plan_memory)
        return
    if args.repeat < 1:
        raise SystemExit("--repeat must be 1 or more")
    count_figures(590_000)
    plan_figures(args.plan_rows, args.repeat)
    if args.plan_only:
        return
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
