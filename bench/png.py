"""PNG parameters for the shard writer: decode time, size and encode time per (filter, strategy,
level) on real IR frames and synthetic 640x512, 1280x1024 and 16-bit frames.

The shard writer picks decode speed first (the loader's cost), then size, then encode speed;
docs/png-parameters.md holds the table this prints. Decode is timed twice: OpenCV
(`cv2.imdecode`, what every client uses) and the loader's own decoder (pretrain/data/pngcrop.py,
whole frames; it reads Up-filtered rows itself and hands any other PNG to OpenCV).

    python bench/png.py [--samples DIR] [--frames 24] [--reps 3]
    python bench/png.py --loader [--reps 9]    # Up filter: which strategy for the loader
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from pretrain.data import DataConfig, crop_box
from pretrain.data.pngcrop import decode_box, decode_png, read_header

REPO_ROOT = Path(__file__).resolve().parents[1]

FILTERS = {
    "none": cv2.IMWRITE_PNG_FILTER_NONE,
    "sub": cv2.IMWRITE_PNG_FILTER_SUB,
    "up": cv2.IMWRITE_PNG_FILTER_UP,
    "avg": cv2.IMWRITE_PNG_FILTER_AVG,
    "paeth": cv2.IMWRITE_PNG_FILTER_PAETH,
    "adaptive": cv2.IMWRITE_PNG_ALL_FILTERS,  # libpng's default heuristic (mostly Paeth)
}
STRATEGIES = {
    "default": cv2.IMWRITE_PNG_STRATEGY_DEFAULT,
    "filtered": cv2.IMWRITE_PNG_STRATEGY_FILTERED,
    "rle": cv2.IMWRITE_PNG_STRATEGY_RLE,
    "huffman": cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
}
LEVELS = (1, 3, 6)


def thermal_frame(
    rng: np.random.Generator, height: int, width: int, bits: int = 8, noise: float = 0.015
) -> np.ndarray:
    """Smooth background, hot blobs, sensor noise: compresses like a real IR frame."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frame = 0.35 + 0.15 * xx / width + 0.1 * yy / height
    for _ in range(4):
        cy, cx, sigma = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(15, 80)
        sigma *= width / 640
        frame += rng.uniform(0.1, 0.4) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    frame += rng.normal(0, noise, frame.shape).astype(np.float32)
    top = 255 if bits == 8 else 16383  # 14-bit radiometric counts in a 16-bit PNG
    return (np.clip(frame, 0, 1) * top).astype(np.uint8 if bits == 8 else np.uint16)


def real_frames(samples: Path, count: int) -> list[np.ndarray]:
    """Grey 640x512 frames of the sample folder (hit-uav, roadscene)."""
    frames = []
    for path in sorted(samples.rglob("*")):
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is not None and image.shape == (512, 640):
            frames.append(image)
    step = max(1, len(frames) // count)
    return frames[::step][:count]


def frame_sets(samples: Path, count: int) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    synthetic = max(2, count // 4)
    return {
        "real 640x512": real_frames(samples, count),
        "synth 640x512": [thermal_frame(rng, 512, 640) for _ in range(synthetic)],
        "synth 1280x1024": [thermal_frame(rng, 1024, 1280) for _ in range(synthetic)],
        "synth 640x512 16-bit": [thermal_frame(rng, 512, 640, 16) for _ in range(synthetic)],
    }


def params(filter_name: str, strategy: str, level: int) -> list[int]:
    return [
        cv2.IMWRITE_PNG_COMPRESSION, level,
        cv2.IMWRITE_PNG_FILTER, FILTERS[filter_name],
        cv2.IMWRITE_PNG_STRATEGY, STRATEGIES[strategy],
    ]  # fmt: skip


def measure(
    frames: list[np.ndarray], flags: list[int], reps: int
) -> tuple[float, float, float, float]:
    """(OpenCV decode ms, loader decode ms, size / raw, encode ms) per frame, medians over
    `reps` timed passes."""
    encoded = [cv2.imencode(".png", f, flags)[1] for f in frames]
    raw = sum(f.nbytes for f in frames)
    ratio = sum(e.size for e in encoded) / raw
    as_bytes = [e.tobytes() for e in encoded]
    decode, loader, encode = [], [], []
    for _ in range(reps):
        start = time.perf_counter()
        for data in encoded:
            cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        decode.append((time.perf_counter() - start) / len(frames))
        start = time.perf_counter()
        for data in as_bytes:
            decode_png(data, 10**9)
        loader.append((time.perf_counter() - start) / len(frames))
        start = time.perf_counter()
        for frame in frames:
            cv2.imencode(".png", frame, flags)
        encode.append((time.perf_counter() - start) / len(frames))
    return (
        1e3 * statistics.median(decode),
        1e3 * statistics.median(loader),
        ratio,
        1e3 * statistics.median(encode),
    )


def loader_decode_ms(pngs: list[bytes]) -> tuple[float, float]:
    """(whole frame, crop box) ms per frame through the loader's decoder; boxes are drawn as
    the loader draws them (RandomResizedCrop, scale 0.2-1), the same for every variant."""
    start = time.perf_counter()
    for data in pngs:
        decode_png(data, 10**9)
    whole = (time.perf_counter() - start) / len(pngs)
    rng, config = np.random.default_rng(1), DataConfig()
    start = time.perf_counter()
    for data in pngs:
        header = read_header(data)
        decode_box(data, header, crop_box(header.height, header.width, rng, config))
    return 1e3 * whole, 1e3 * (time.perf_counter() - start) / len(pngs)


def loader_table(sets: dict[str, list[np.ndarray]], level: int, reps: int) -> None:
    """Up filter (the loader's fast path) x strategy, timed interleaved: whole / crop ms, size."""
    strategies = ("rle", "huffman", "default")
    print(f"| Up filter, level {level} | " + " | ".join(
        f"{name} ({len(frames)}): whole / crop ms, size" for name, frames in sets.items()
    ) + " |")  # fmt: skip
    print("|---" * (1 + len(sets)) + "|")
    cells: dict[str, list[str]] = {strategy: [] for strategy in strategies}
    for frames in sets.values():
        encoded = {
            s: [cv2.imencode(".png", f, params("up", s, level))[1].tobytes() for f in frames]
            for s in strategies
        }
        runs: dict[str, list[tuple[float, float]]] = {s: [] for s in strategies}
        for _ in range(reps):  # interleaved: background load hits every strategy alike
            for strategy in strategies:
                runs[strategy].append(loader_decode_ms(encoded[strategy]))
        raw = sum(f.nbytes for f in frames)
        for strategy in strategies:
            whole = statistics.median(r[0] for r in runs[strategy])
            crop = statistics.median(r[1] for r in runs[strategy])
            size = sum(len(p) for p in encoded[strategy]) / raw
            cells[strategy].append(f"{whole:.2f} / {crop:.2f}, {size:.3f}")
    for strategy in strategies:
        print(f"| {strategy} | " + " | ".join(cells[strategy]) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, default=REPO_ROOT.parent / "shared" / "ir-samples")
    parser.add_argument("--frames", type=int, default=24, help="real frames used")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--filters", default=",".join(FILTERS))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument(
        "--loader", action="store_true", help="the Up-filter strategies, loader's decoder only"
    )
    args = parser.parse_args()
    cv2.setNumThreads(1)
    sets = frame_sets(args.samples, args.frames)
    if not sets["real 640x512"]:
        raise SystemExit(f"no 640x512 frames in {args.samples}: pass --samples DIR")
    if args.loader:
        loader_table(sets, int(args.levels.split(",")[0]), args.reps)
        return
    levels = [int(v) for v in args.levels.split(",")]
    header = "| filter | strategy | level | " + " | ".join(
        f"{name} ({len(frames)}): decode ms OpenCV / loader, size, encode ms"
        for name, frames in sets.items()
    )
    print(header + " |")
    print("|---" * (3 + len(sets)) + "|")
    for filter_name in args.filters.split(","):
        for strategy in args.strategies.split(","):
            for level in levels:
                cells = []
                for frames in sets.values():
                    decode, loader, ratio, encode = measure(
                        frames, params(filter_name, strategy, level), args.reps
                    )
                    cells.append(f"{decode:.2f} / {loader:.2f}, {ratio:.3f}, {encode:.2f}")
                print(f"| {filter_name} | {strategy} | {level} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
