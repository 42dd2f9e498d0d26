"""Ingest throughput against a bare decode + pHash + sha256 loop over the same files.

    python bench/ingest.py [--count 1500] [--workers 2]

Prints images/s of: the bare loop (cv2.imdecode + imagehash.phash + hashlib.sha256),
`inf590k ingest` with one worker, and with N workers; then the ratios against the targets
(single-worker ingest >= 0.8x the bare loop; N workers >= 0.8 * N x one worker).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import imagehash
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def ingest_rate(root: Path, build: Path, workers: int, count: int) -> float:
    shutil.rmtree(build, ignore_errors=True)
    started = time.perf_counter()
    ingest(IngestConfig(sources=(("folder", root),), build=build, workers=workers, progress=False))
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each is kept")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="inf590k-bench-") as tmp:
        root = Path(tmp) / "frames"
        paths = make_corpus(root, args.count)
        bare, single, multi = 0.0, 0.0, 0.0
        for _ in range(args.rounds):  # alternate so machine noise hits all three alike
            bare = max(bare, bare_loop(paths))
            single = max(single, ingest_rate(root, Path(tmp) / "b1", 1, args.count))
            multi = max(multi, ingest_rate(root, Path(tmp) / "bn", args.workers, args.count))
    print(f"frames: {args.count} x 640x512 8-bit JPEG")
    print(f"bare loop (imdecode + phash + sha256): {bare:8.1f} img/s")
    print(f"ingest, 1 worker:                      {single:8.1f} img/s   ratio {single / bare:.2f}x bare (target >= 0.80)")
    print(f"ingest, {args.workers} workers:                     {multi:8.1f} img/s   ratio {multi / single:.2f}x 1 worker (target >= {0.8 * args.workers:.2f})")


if __name__ == "__main__":
    main()
