"""Near-duplicate search benchmark: multi-index hashing vs faiss IndexBinaryFlat.

    python bench/dedupe.py                     # 1M codes, radius 8, faiss timed on 200K
    python bench/dedupe.py --faiss-full        # faiss on the full 1M too (several minutes)
    python bench/dedupe.py --measure-radius ../shared/ir-samples   # the default-radius table

Baseline: faiss `IndexBinaryFlat.range_search` (exact, brute force). Without --faiss-full the
faiss time on N codes is extrapolated quadratically from a timed subset; the output says so.
The identical-pair-set check always runs on a 50K subset with planted near pairs.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np

from inf590k.build.dedupe.search import plan_blocks, radius_pairs

DEFAULT_RADIUS = 8


def planted_codes(n: int, radius: int, seed: int, planted_fraction: float = 0.05) -> np.ndarray:
    """Uniform random 64-bit codes, plus copies of some codes at distances 0..radius+2."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    planted = int(n * planted_fraction)
    sources = rng.integers(0, n, planted)
    targets = rng.integers(0, n, planted)
    flips = np.zeros(planted, dtype=np.uint64)
    counts = rng.integers(0, radius + 3, planted)
    for bit_round in range(radius + 2):
        bits = rng.integers(0, 64, planted).astype(np.uint64)
        flips ^= np.where(counts > bit_round, np.uint64(1) << bits, np.uint64(0))
    codes[targets] = codes[sources] ^ flips
    return codes


def faiss_pairs(codes: np.ndarray, radius: int) -> tuple[set[tuple[int, int]], float]:
    import faiss

    index = faiss.IndexBinaryFlat(64)
    vectors = codes.view(np.uint8).reshape(-1, 8)  # [N, 8]; Hamming distance ignores byte order
    started = time.perf_counter()
    index.add(vectors)
    lims, _, labels = index.range_search(vectors, radius + 1)  # faiss keeps distance < radius
    seconds = time.perf_counter() - started
    queries = np.repeat(np.arange(len(codes)), np.diff(lims).astype(np.int64))
    upper = labels > queries
    return set(zip(queries[upper].tolist(), labels[upper].tolist(), strict=True)), seconds


def mih_pairs(codes: np.ndarray, radius: int) -> tuple[set[tuple[int, int]], float]:
    started = time.perf_counter()
    i, j, _ = radius_pairs(codes, radius)
    seconds = time.perf_counter() - started
    return set(zip(i.tolist(), j.tolist(), strict=True)), seconds


def run_benchmark(args: argparse.Namespace) -> None:
    import faiss

    faiss.omp_set_num_threads(args.threads)
    codes = planted_codes(args.n, args.radius, seed=0)
    plan = plan_blocks(args.n, args.n, args.radius)
    print(
        f"codes: {args.n:,} (5% planted copies at distance 0..{args.radius + 2}), radius {args.radius}"
    )
    print(f"plan: {plan.num_blocks} blocks of {plan.widths} bits, probe radii {plan.radii}")

    started = time.perf_counter()
    i, _, _ = radius_pairs(codes, args.radius)
    mih_seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"multi-index hashing: {len(i):,} pairs in {mih_seconds:.1f} s (peak RSS {peak_mb:.0f} MB)"
    )

    if args.faiss_full:
        _, faiss_seconds = faiss_pairs(codes, args.radius)
        how = f"measured on all {args.n:,} codes"
    else:
        subset = min(args.faiss_subset, args.n)
        _, subset_seconds = faiss_pairs(codes[:subset], args.radius)
        faiss_seconds = subset_seconds * (args.n / subset) ** 2
        how = f"EXTRAPOLATED quadratically from {subset_seconds:.1f} s on {subset:,} codes"
    print(
        f"faiss IndexBinaryFlat range_search ({args.threads} threads): {faiss_seconds:.1f} s, {how}"
    )
    print(
        f"speed-up vs faiss: {faiss_seconds / mih_seconds:.1f}x (target >= 5x; time target <= 60 s)"
    )

    check = planted_codes(args.check_n, args.radius, seed=1)
    want, _ = faiss_pairs(check, args.radius)
    got, _ = mih_pairs(check, args.radius)
    same = (
        "IDENTICAL"
        if got == want
        else f"DIFFERENT (missing {len(want - got)}, extra {len(got - want)})"
    )
    print(f"pair sets on {args.check_n:,} codes: {len(got):,} vs faiss {len(want):,}: {same}")
    if got != want:
        raise SystemExit(1)


def measure_radius(samples: Path) -> None:
    """pHash/dHash distances of edited copies vs distinct frames of the real samples."""
    import cv2

    from inf590k.inputs.fingerprint import fingerprint
    from inf590k.inputs.headers import RejectedImage
    from inf590k.inputs.imageio import ImagePolicy, process_array

    policy = ImagePolicy()
    paths = sorted(p for p in samples.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    paths = [p for p in paths if "visible" not in p.parent.name and "mask" not in str(p)]

    def codes_of(array: np.ndarray) -> tuple[int, int]:
        found = fingerprint(process_array(array, policy).view8)
        return int(found.phash, 16), int(found.dhash, 16)

    def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
        return cv2.imdecode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], 0)

    def resized(image: np.ndarray, scale: float) -> np.ndarray:
        return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)

    def deep(image: np.ndarray) -> np.ndarray:  # a raw-like 14-bit frame with sensor noise
        noise = np.random.default_rng(0).integers(0, 24, image.shape)
        return (image.astype(np.uint16) * 40 + 7000 + noise).astype(np.uint16)

    edits = {
        "JPEG q80": lambda a: jpeg(a, 80),
        "JPEG q50": lambda a: jpeg(a, 50),
        "resize 0.75x": lambda a: resized(a, 0.75),
        "resize 0.5x": lambda a: resized(a, 0.5),
        "resize 0.5x + JPEG q80": lambda a: jpeg(resized(a, 0.5), 80),
        "16-bit copy (x40 + 7000 + noise)": deep,
    }
    originals, distances = [], {name: [] for name in edits}
    for path in paths:
        try:
            view = process_array(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), policy).view8
        except (RejectedImage, cv2.error, AttributeError):
            continue
        base = codes_of(view)
        originals.append(base)
        for name, edit in edits.items():
            copy = codes_of(edit(view))
            distances[name].append(
                (bin(copy[0] ^ base[0]).count("1"), bin(copy[1] ^ base[1]).count("1"))
            )
    phashes = np.array([p for p, _ in originals], dtype=np.uint64)
    upper = np.triu_indices(len(phashes), 1)
    distinct = np.bitwise_count(phashes[:, None] ^ phashes[None, :])[upper]
    radii = (4, 6, 8, 10, 12)
    print(
        f"{len(originals)} images from {samples.name}; pHash (imagehash, DC kept) on the 8-bit view\n"
    )
    print("| copy | n | mean | max | " + " | ".join(f"<= {r}" for r in radii) + " |")
    print("|---|---|---|---|" + "---|" * len(radii))
    for name, pairs in distances.items():
        d = np.array([p for p, _ in pairs])
        cells = " | ".join(f"{(d <= r).mean() * 100:.1f}%" for r in radii)
        print(f"| {name} | {len(d)} | {d.mean():.2f} | {d.max()} | {cells} |")
    cells = " | ".join(f"{int((distinct <= r).sum())}" for r in radii)
    print(
        f"| distinct pairs (count, of {len(distinct)}) | | {distinct.mean():.1f} | min {distinct.min()} | {cells} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--radius", type=int, default=DEFAULT_RADIUS)
    parser.add_argument("--threads", type=int, default=2, help="faiss OpenMP threads")
    parser.add_argument("--faiss-full", action="store_true", help="time faiss on all N codes")
    parser.add_argument("--faiss-subset", type=int, default=200_000)
    parser.add_argument("--check-n", type=int, default=50_000)
    parser.add_argument(
        "--measure-radius", type=Path, metavar="SAMPLES", help="print the radius table"
    )
    args = parser.parse_args()
    if args.measure_radius:
        measure_radius(args.measure_radius)
    else:
        run_benchmark(args)


if __name__ == "__main__":
    main()
