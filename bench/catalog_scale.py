"""Memory and CPU per catalogue row of dedupe, bin and shard at catalogue sizes that no image
corpus written on this machine reaches, and what they project for 590K and 5M rows.

    python bench/catalog_scale.py [--rows 200000 1000000] [--workers 0] [--no-shard]

`bench/build_scale.py` measures the whole build on synthetic images, but ingest and the PNG
encoding keep it to tens of thousands of rows here, where the per-row memory slope is noise.
This bench writes the catalogue directly, as ingest would leave it (parts of at most 200K
rows per source, `sources.json`, the ingest record), for 9 sources:

- 445 resolutions of skewed frequency (Zipf-like): 400 small frames (short side 16-120 px), so
  that shard's PNG encoding stays cheap, and 45 rare ones of short side 256-800 (small bins);
  every row's file is a hard link to its resolution's one PNG, so shard re-reads and checks
  real files (size and sha256) without a corpus on disk;
- 3% exact copies (the pixel sha256 of another row) and 3% near copies (its pHash with 1-4 bits
  flipped), 5% excluded and 1% rejected rows;
- pHash and dHash otherwise uniform 64-bit codes, uids like `src3/r017/f00001234.png`.

Then dedupe, bin and shard (`--workers` pool workers) each run in a fresh process, and per stage
it prints: the main process's CPU ms per row, its wall time, and its peak RSS above a process
that only imports the toolkit, per row, at each size and as the slope between the sizes.

Projection: the main process's peak at N rows = imports + its peak above the imports at the
larger size + slope x (N - rows), for 590,700 and 5,000,000 rows. Goal (issue 22): 5M rows in
8 GB in any one process, i.e. under ~1.5 KB per row above the imports.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from catalog_rows import frame_columns  # bench/catalog_rows.py: this script's folder is on the path
from peak import peak_rss

REPO = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, REPO)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))

SOURCES = 9
RESOLUTIONS = 445
LARGE_RESOLUTIONS = 45
LINKS_PER_FILE = 50_000
PART_ROWS = 200_000  # rows per catalogue part: ingest's PART_FILES
TARGETS = {"590K": 590_700, "5M": 5_000_000}
GOAL_BYTES = 8 * 10**9
STAGES = ("dedupe", "bin", "shard")


# ----------------------------------------------------------------------------- the catalogue


def _resolutions(rng: np.random.Generator) -> np.ndarray:
    """[RESOLUTIONS, 2] distinct (width, height): small frames first (the frequent ones), then
    LARGE_RESOLUTIONS of short side 256-800 (the rarest: their bins are the small bins)."""

    def draw(count: int, low: int, high: int) -> list[tuple[int, int]]:
        found: set[tuple[int, int]] = set()
        while len(found) < count:
            short = int(rng.integers(low, high + 1))
            aspect = float(rng.choice([1.0, 1.25, 4 / 3, 1.5, 16 / 9, 2.0, 2.4])) * float(rng.uniform(0.95, 1.05))
            found.add((round(short * aspect), short))
        return sorted(found)

    small = draw(RESOLUTIONS - LARGE_RESOLUTIONS, 16, 120)
    large = draw(LARGE_RESOLUTIONS, 256, 800)
    return np.array(small + large, dtype=np.int32)


def _frame_files(root: Path, sizes: np.ndarray, rng: np.random.Generator) -> list[tuple[int, str]]:
    """One noisy 8-bit PNG per resolution under root/frames: (bytes, sha256) of each."""
    import cv2

    folder = root / "frames"
    folder.mkdir(parents=True)
    facts = []
    for index, (width, height) in enumerate(sizes.tolist()):
        ramp = np.add.outer(np.arange(height), np.arange(width)) % 256
        pixels = (ramp + rng.integers(0, 24, (height, width))).clip(0, 255).astype(np.uint8)  # [H, W]
        ok, encoded = cv2.imencode(".png", pixels)
        assert ok
        data = encoded.tobytes()
        (folder / f"r{index:03d}.png").write_bytes(data)
        facts.append((len(data), hashlib.sha256(data).hexdigest()))
    return facts


def _hex(values: np.ndarray, digits: int) -> list[str]:
    return [f"{v:0{digits}x}" for v in values.tolist()]


def _random_sha(rng: np.random.Generator, rows: int) -> np.ndarray:
    return np.array([rng.bytes(32).hex() for _ in range(rows)], dtype=object)


def make_catalog(build: Path, sources_root: Path, rows: int, seed: int = 0) -> None:
    """The catalogue of `rows` synthetic rows in `build`, ingest's record included."""
    import pyarrow as pa

    from inf590k.build import catalog as cat
    from inf590k.build import lineage
    from inf590k.build.ingest_parts import commit_part, part_schema
    from inf590k.dataset.layout import CATALOG_SCHEMA
    from inf590k.inputs.imageio import ImagePolicy

    rng = np.random.default_rng(seed)
    sizes = _resolutions(rng)
    files = _frame_files(sources_root, sizes, rng)
    weights = 1.0 / np.arange(1, RESOLUTIONS + 1) ** 1.1
    resolution = rng.choice(RESOLUTIONS, size=rows, p=weights / weights.sum())  # [N]
    source = np.arange(rows) % SOURCES
    status = np.full(rows, cat.STATUS_OK, dtype=object)
    draw = rng.random(rows)
    status[draw < 0.05] = cat.STATUS_EXCLUDED
    status[(draw >= 0.05) & (draw < 0.06)] = cat.STATUS_REJECTED
    ok = status == cat.STATUS_OK
    phash = rng.integers(0, 2**63, rows, dtype=np.int64).astype(np.uint64) * np.uint64(2) + rng.integers(0, 2, rows).astype(np.uint64)
    dhash = rng.integers(0, 2**63, rows, dtype=np.int64).astype(np.uint64)
    pixel = _random_sha(rng, rows)
    ok_rows = np.flatnonzero(ok)
    copies = rng.choice(ok_rows, size=int(0.06 * len(ok_rows)), replace=False)
    originals = rng.choice(ok_rows, size=len(copies))
    exact, near = copies[: len(copies) // 2], copies[len(copies) // 2 :]
    pixel[exact] = pixel[originals[: len(exact)]]
    phash[exact], dhash[exact] = phash[originals[: len(exact)]], dhash[originals[: len(exact)]]
    flips = np.zeros(len(near), dtype=np.uint64)
    for _ in range(4):  # 1-4 distinct-or-repeated bit flips: distance <= 4
        bit = rng.integers(0, 64, len(near)).astype(np.uint64)
        flips |= np.where(rng.random(len(near)) < 0.8, np.uint64(1) << bit, np.uint64(0))
    phash[near] = phash[originals[len(exact) :]] ^ flips
    dhash[near] = dhash[originals[len(exact) :]]

    names = [f"src{s}" for s in range(SOURCES)]
    relpath = [f"r{r:03d}/f{i:08d}.png" for i, r in enumerate(resolution.tolist())]
    width, height = sizes[resolution, 0], sizes[resolution, 1]
    file_bytes = np.array([files[r][0] for r in range(RESOLUTIONS)], dtype=np.int64)[resolution]
    file_sha = np.array([files[r][1] for r in range(RESOLUTIONS)], dtype=object)[resolution]
    kept = lambda values: [v if k else None for v, k in zip(values, ok.tolist(), strict=True)]  # noqa: E731
    columns = {
        "uid": [f"{names[s]}/{p}" for s, p in zip(source.tolist(), relpath, strict=True)],
        "source": [names[s] for s in source.tolist()],
        "relpath": relpath,
        "frame": np.full(rows, -1, np.int32),
        "split": ["train"] * rows,
        "license": ["CC BY 4.0"] * rows,
        "modality": ["lwir"] * rows,
        "tags": [[]] * rows,
        "status": status.tolist(),
        "reason": ["" if k else "not an infrared frame" for k in ok.tolist()],
        "file_bytes": file_bytes,
        "file_sha256": file_sha.tolist(),
        "pixel_sha256": kept(pixel.tolist()),
        **frame_columns(width, height),
        "entropy": (6 + (np.arange(rows) % 100) / 50).astype(np.float32),
        "phash": kept(_hex(phash, 16)),
        "dhash": kept(_hex(dhash, 16)),
        "dup_group": np.full(rows, -1, np.int64),
        "res_bin": [None] * rows,
    }
    table = pa.table({f.name: pa.array(columns[f.name], f.type) for f in CATALOG_SCHEMA})
    del columns
    policy = ImagePolicy()
    recorded = {}
    links = _Links(sources_root / "frames")
    for index, name in enumerate(names):
        root = sources_root / name
        mine = table.filter(pa.array(source == index)).sort_by("uid")
        for start in range(0, mine.num_rows, PART_ROWS):
            part = mine.slice(start, PART_ROWS)
            chunk = start // PART_ROWS
            commit_part(build, name, [chunk], part.cast(part_schema([chunk])))
        for relpath_of_row in mine.column("relpath").to_pylist():
            target = root / relpath_of_row
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(links.next_file(int(relpath_of_row[1:4])), target)
        recorded[name] = {
            "root": str(root.resolve()), "kind": "folder", "signature": f"bench-{seed}-{index}",
            "policy": policy.__dict__ | {}, "name": name, "license": "CC BY 4.0", "modality": "lwir",
            "citation": "", "homepage": "",
        }
    cat.write_sources(build, recorded)
    lineage.finish(build, "ingest", {"bench": "catalog_scale", "rows": rows}, _IngestFacts(rows))


class _Links:
    """A resolution's frame file to hard-link next: a copy of it every LINKS_PER_FILE links (a
    file system caps the links of one file, ext4 at 65,000)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.made: dict[int, int] = {}

    def next_file(self, resolution: int) -> Path:
        made = self.made.get(resolution, 0)
        self.made[resolution] = made + 1
        original = self.folder / f"r{resolution:03d}.png"
        if made % LINKS_PER_FILE == 0 and made:
            shutil.copyfile(original, self.folder / f"r{resolution:03d}-{made // LINKS_PER_FILE}.png")
        return original if made < LINKS_PER_FILE else self.folder / f"r{resolution:03d}-{made // LINKS_PER_FILE}.png"


class _IngestFacts:
    """What the ingest record keeps of a summary: its counts."""

    def __init__(self, rows: int) -> None:
        self.lineage_counts = {"rows": rows}

    def __str__(self) -> str:
        return f"ingest: {self.lineage_counts['rows']} synthetic catalogue rows (bench)"


# ----------------------------------------------------------------------------- in a child


def run_child(stage: str, root: Path, workers: int) -> None:
    """One stage (or only the imports) in this process; its figures as JSON."""
    from inf590k.build.bins import BinConfig, bin_catalog
    from inf590k.build.dedupe.config import DedupeConfig
    from inf590k.build.dedupe.stage import dedupe
    from inf590k.build.shard import ShardConfig, shard
    from inf590k.execution.units import ExecutionOptions

    build = root / "build"
    execution = ExecutionOptions(workers=workers, progress=False)
    run = {
        "dedupe": lambda: dedupe(DedupeConfig(build=build, contact_groups=0, progress=False)),
        "bin": lambda: bin_catalog(BinConfig(build=build, progress=False)),
        "shard": lambda: shard(ShardConfig(build=build, out=root / "dataset", execution=execution)),
    }
    started, cpu = time.perf_counter(), time.process_time()
    summary = run[stage]() if stage != "imports" else None
    print(json.dumps({
        "wall": time.perf_counter() - started,
        "main_cpu": time.process_time() - cpu,  # this process only (workers are other processes)
        "main_rss": peak_rss(),
        "summary": str(summary).splitlines()[0] if summary is not None else "",
    }))


def child(stage: str, root: Path, workers: int) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", stage, "--root", str(root), "--workers", str(workers)],
        capture_output=True, text=True, check=False,
    )
    if done.returncode:
        raise SystemExit(f"{stage} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- driver


def measure(rows: int, stages: tuple[str, ...], workers: int, keep: Path | None) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"catalog-scale-{rows}-", dir=keep))
    try:
        started = time.perf_counter()
        make_catalog(root / "build", root / "sources", rows)
        print(f"  {rows}: catalogue written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        figures = {}
        for stage in stages:
            figures[stage] = child(stage, root, workers)
            print(f"  {rows}: {stage} {figures[stage]['wall']:.1f} s: {figures[stage]['summary']}", file=sys.stderr)
        return figures
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


def report(results: dict[int, dict], imports: dict, stages: tuple[str, ...]) -> None:
    small, large = sorted(results)
    base = imports["main_rss"]
    print(f"\nimports alone: peak RSS {base / 2**20:.0f} MB")
    print(f"{'stage':8}{'rows':>9}{'wall s':>9}{'main CPU ms/row':>17}{'main peak':>11}{'above imports/row':>19}")
    for rows in (small, large):
        for stage in stages:
            s = results[rows][stage]
            print(f"{stage:8}{rows:>9}{s['wall']:>9.1f}{1000 * s['main_cpu'] / rows:>17.4f}"
                  f"{s['main_rss'] / 2**20:>9.0f} MB{(s['main_rss'] - base) / rows:>17.0f} B")
    print(f"\nper further row (slope {small} -> {large}) and the main process projected "
          f"(imports + peak above them at {large} + slope x further rows); goal 5M rows < 8 GB:")
    for stage in stages:
        a, b = results[small][stage], results[large][stage]
        slope = max(0.0, (b["main_rss"] - a["main_rss"]) / (large - small))
        projected = {name: b["main_rss"] + slope * (n - large) for name, n in TARGETS.items()}
        verdict = "within" if projected["5M"] < GOAL_BYTES else "OVER"
        print(f"  {stage:8}{slope:>7.0f} B/row   590K ~{projected['590K'] / 1e9:.2f} GB   "
              f"5M ~{projected['5M'] / 1e9:.2f} GB ({verdict} 8 GB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs=2, default=(200_000, 1_000_000))
    parser.add_argument("--workers", type=int, default=0, help="shard's pool workers (0: one per core)")
    parser.add_argument("--no-shard", action="store_true", help="dedupe and bin only (no tars written)")
    parser.add_argument("--keep", type=Path, default=None, help="folder for the builds (default: temp)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args.root, args.workers)
        return
    stages = STAGES[:2] if args.no_shard else STAGES
    imports = child("imports", Path(tempfile.gettempdir()), args.workers)
    results = {rows: measure(rows, stages, args.workers, args.keep) for rows in sorted(args.rows)}
    report(results, imports, stages)


if __name__ == "__main__":
    main()
