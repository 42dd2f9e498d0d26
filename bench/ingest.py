"""Ingest throughput against a bare decode + pHash + sha256 loop over the same files.

    python bench/ingest.py [--count 1500] [--workers 2]
    python bench/ingest.py --hostile

Prints images/s of: the bare loop (cv2.imdecode + imagehash.phash + hashlib.sha256),
`inf590k ingest` with one worker, and with N workers; then the ratios against the targets
(single-worker ingest >= 0.8x the bare loop; N workers >= 0.8 * N x one worker).

The machine may be shared, so the three runs are interleaved for --rounds rounds (the order
rotates each round): rates are medians over rounds, and each ratio is the median of the
rounds' own ratios (runs of one round, next to each other, see about the same load).

`--executor ray` instead prints `inf590k ingest --executor ray` against the local pool at N
workers on the same files (target >= 0.8x); Ray is started once, before the timed runs.

`--hostile` instead writes four hostile sources and prints the peak RSS of
`inf590k ingest --workers 1` on each (one process: the whole process tree), against the
target of 1 GiB: an 11000x11000 Radiance HDR named .png, an 11000x11000 float32 deflate TIFF,
a zip member inflating to 1.1 GB, and a 300 MB tar whose members are not in sorted order.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from statistics import median

import cv2
import imagehash
import numpy as np
from PIL import Image

REPO = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, REPO)
# worker processes start from a fresh interpreter (forkserver): they find this checkout too
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))

from inf590k.ingest import IngestConfig, ingest  # noqa: E402


def thermal_jpeg(index: int, rng: np.random.Generator) -> bytes:
    """A 640x512 IR-like 8-bit JPEG: smooth background, warm blobs, column noise."""
    yy, xx = np.mgrid[0:512, 0:640].astype(np.float32)
    phase = rng.uniform(0, 6.28, 3)
    frame = 90 + 35 * np.sin(xx / 97 + phase[0]) + 25 * np.cos(yy / 71 + phase[1])
    for _ in range(4):
        cx, cy, r = rng.uniform(0, 640), rng.uniform(0, 512), rng.uniform(8, 40)
        frame += 90 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    frame += rng.normal(0, 2.5, 640)[None, :] + rng.normal(0, 2, frame.shape)
    ok, buf = cv2.imencode(".jpg", np.clip(frame, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def make_corpus(root: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = root / f"seq{i // 500:02d}" / f"frame_{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(thermal_jpeg(i, rng))
        paths.append(path)
    return paths


def bare_loop(paths: list[Path]) -> float:
    started = time.perf_counter()
    for path in paths:
        data = path.read_bytes()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        imagehash.phash(Image.fromarray(image))
        hashlib.sha256(data).hexdigest()
    return len(paths) / (time.perf_counter() - started)


def interleaved(runs: dict[str, Callable[[], float]], rounds: int) -> list[dict[str, float]]:
    """Each run once per round, in an order that rotates every round (no run always goes
    first, after the same neighbour, or into a warm cache); one {name: rate} per round."""
    names = list(runs)
    results = []
    for index in range(rounds):
        shift = index % len(names)
        order = names[shift:] + names[:shift]
        results.append({name: runs[name]() for name in order})
    return results


def ingest_rate(root: Path, build: Path, workers: int, count: int, executor: str = "local") -> float:
    shutil.rmtree(build, ignore_errors=True)
    started = time.perf_counter()
    ingest(IngestConfig(sources=(("folder", root),), build=build, workers=workers, progress=False, executor=executor))
    return count / (time.perf_counter() - started)


def ray_against_local(root: Path, tmp: Path, workers: int, count: int, rounds: int) -> None:
    """Ray executor against the local pool at `workers`, on a Ray of `workers` CPUs."""
    import ray

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        results = interleaved({
            "local": lambda: ingest_rate(root, tmp / "local", workers, count),
            "ray": lambda: ingest_rate(root, tmp / "ray", workers, count, "ray"),
        }, rounds)
    finally:
        ray.shutdown()
    local, on_ray = (median([r[name] for r in results]) for name in ("local", "ray"))
    ratio = median([r["ray"] / r["local"] for r in results])
    print(f"frames: {count} x 640x512 8-bit JPEG, median of {rounds} interleaved rounds")
    print(f"ingest, local pool, {workers} workers: {local:8.1f} img/s")
    print(f"ingest, Ray, {workers} CPUs:           {on_ray:8.1f} img/s   ratio {ratio:.2f}x local pool (target >= 0.80)")


# ----------------------------------------------------------------------------- hostile input

BOMB_SIDE = 11000
GIB = 1 << 30


def radiance_hdr(path: Path, side: int = BOMB_SIDE) -> None:
    """A valid run-length encoded Radiance HDR of side x side black pixels (~7.7 MB)."""
    runs = bytearray()
    left = side
    while left:
        count = min(127, left)
        runs += bytes((128 + count, 0))
        left -= count
    scanline = bytes((2, 2, side >> 8, side & 0xFF)) + bytes(runs) * 4
    with open(path, "wb") as handle:
        handle.write(f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {side} +X {side}\n".encode())
        for _ in range(side):
            handle.write(scanline)


FLOAT_TIFF_SCRIPT = """
import sys
from PIL import Image
side = int(sys.argv[2])
Image.new("F", (side, side), 0.5).save(sys.argv[1], format="TIFF", compression="tiff_adobe_deflate")
"""


def float_tiff(path: Path, side: int = BOMB_SIDE) -> None:
    """An 11000x11000 float32 deflate TIFF (~1.5 MB), written by a child process."""
    subprocess.run([sys.executable, "-c", FLOAT_TIFF_SCRIPT, str(path), str(side)], check=True)


def zip_bomb(path: Path, inflated: int = 1_100_000_000) -> None:
    """A zip whose one PNG-named member inflates to 1.1 GB (written in blocks)."""
    block = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("frames/big.png", "w", force_zip64=True) as member:
            member.write(b"\x89PNG\r\n\x1a\n")
            written = 8
            while written < inflated:
                member.write(block[: min(len(block), inflated - written)])
                written += len(block)


def shuffled_tar(path: Path, total: int = 300 << 20, member: int = 1 << 20) -> None:
    """A ~300 MB tar of ~1 MB noise PNGs stored in shuffled (not sorted) member order."""
    rng = np.random.default_rng(0)
    images = [cv2.imencode(".png", rng.integers(0, 256, (1000, 1000), dtype=np.uint8))[1].tobytes() for _ in range(8)]
    count = total // member
    order = rng.permutation(count)
    with tarfile.open(path, "w") as archive:
        for index in order:
            data = images[index % len(images)]
            info = tarfile.TarInfo(f"frames/{index:05d}.png")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


HOSTILE = {
    "11000x11000 Radiance HDR named .png": ("hdr", lambda d: radiance_hdr(d / "frame.png")),
    "11000x11000 float32 deflate TIFF": ("tif", lambda d: float_tiff(d / "frame.tif")),
    "zip member inflating to 1.1 GB": ("zip", lambda d: zip_bomb(d / "bomb.zip")),
    "300 MB tar, shuffled member order": ("tar", lambda d: shuffled_tar(d / "shuffled.tar")),
}


def peak_rss_of_ingest(source: Path, build: Path) -> tuple[int, str]:
    """Peak RSS (bytes) of `inf590k ingest --workers 1` on one source, and its summary line."""
    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-c", "from cli import main; main()", "ingest", "--build", str(build),
               "--source", f"folder={source}", "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, _, usage = os.wait4(proc.pid, 0)
    return usage.ru_maxrss * 1024, output.strip().splitlines()[0] if output.strip() else ""


def first_reasons(build: Path) -> str:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(build / "catalog", columns=["status", "reason"]).to_pylist()
    except (OSError, ValueError):
        return ""
    return "; ".join(sorted({r["reason"] for r in rows if r["status"] == "rejected"}))[:160]


def hostile(tmp: Path) -> None:
    print("peak RSS of `inf590k ingest --workers 1` (target <= 1 GiB each):")
    for label, (name, make) in HOSTILE.items():
        folder = tmp / name
        folder.mkdir()
        make(folder)
        source = next(folder.iterdir()) if name in ("zip", "tar") else folder
        peak, line = peak_rss_of_ingest(source, tmp / f"build-{name}")
        verdict = "ok" if peak <= GIB else "OVER"
        print(f"  {label:38s} {peak / 2**20:7.0f} MiB  {verdict}   [{line}]")
        reasons = first_reasons(tmp / f"build-{name}")
        if reasons:
            print(f"  {'':38s} {reasons}")
        shutil.rmtree(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (>= 3); medians are printed")
    parser.add_argument("--hostile", action="store_true", help="peak memory on hostile input instead")
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="ray: Ray executor against the local pool instead")
    args = parser.parse_args()
    if args.rounds < 3 and not args.hostile:
        parser.error("--rounds: at least 3 (a median of fewer runs is one noisy run)")
    if args.hostile:
        with tempfile.TemporaryDirectory(prefix="inf590k-hostile-") as tmp:
            hostile(Path(tmp))
        return
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="inf590k-bench-") as tmp:
        root = Path(tmp) / "frames"
        paths = make_corpus(root, args.count)
        if args.executor == "ray":
            ray_against_local(root, Path(tmp), args.workers, args.count, args.rounds)
            return
        runs = {
            "bare": lambda: bare_loop(paths),
            "single": lambda: ingest_rate(root, Path(tmp) / "b1", 1, args.count),
            "multi": lambda: ingest_rate(root, Path(tmp) / "bn", args.workers, args.count),
        }
        rounds = interleaved(runs, args.rounds)
    bare, single, multi = (median([r[name] for r in rounds]) for name in ("bare", "single", "multi"))
    single_ratio = median([r["single"] / r["bare"] for r in rounds])
    multi_ratio = median([r["multi"] / r["single"] for r in rounds])
    print(f"frames: {args.count} x 640x512 8-bit JPEG, median of {args.rounds} interleaved rounds")
    print(f"bare loop (imdecode + phash + sha256): {bare:8.1f} img/s")
    print(f"ingest, 1 worker:                      {single:8.1f} img/s   ratio {single_ratio:.2f}x bare (target >= 0.80)")
    print(f"ingest, {args.workers} workers:                     {multi:8.1f} img/s   ratio {multi_ratio:.2f}x 1 worker (target >= {0.8 * args.workers:.2f})")


if __name__ == "__main__":
    main()
