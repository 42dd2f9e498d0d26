"""Near-duplicate search benchmark: the exact covering-design search vs faiss IndexBinaryFlat.

    python bench/dedupe.py                        # 1M codes, radius 8, uniform and clustered
    python bench/dedupe.py --codes 10000000       # 10M too: time and peak RSS against 1M
    python bench/dedupe.py --distribution clustered --codes 10000000
    python bench/dedupe.py --faiss-full           # faiss on all 1M codes (several minutes)
    python bench/dedupe.py --measure-radius ../shared/ir-samples   # the default-radius table

Each search runs in a fresh process on codes saved to a temporary file, so its time, CPU time
(user + system, steadier than wall time on a shared machine) and peak RSS are its own; the
load average printed beside them says how much of the cores other jobs took.
Distributions: `uniform` (random codes, 5% planted copies at distance 0..radius+2) and
`clustered` (codes a few bits from 1/16 as many centres with biased bits, as infrared pHashes
of similar scenes are, plus 6% planted copies: skewed buckets, exact and near duplicates, and
~15x the pairs). Beyond 1M codes, the pairs of 2,000 sampled codes are checked against a faiss
brute-force scan of all codes.

Baseline: faiss `IndexBinaryFlat.range_search` (exact, brute force) at 1M uniform codes.
Without --faiss-full its time is extrapolated quadratically from a timed subset; the output
says so. The identical-pair-set check always runs on a 50K subset with planted near pairs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from peak import peak_rss  # bench/peak.py: this script's folder is on the path

from inf590k.build.dedupe.designs import plan_search
from inf590k.build.dedupe.search import default_threads, radius_pairs

DEFAULT_RADIUS = 8
BASE_CODES = 1_000_000
SAMPLED_CODES = 2_000


def flip_bits(rng: np.random.Generator, codes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Codes with up to counts[i] random bits flipped (a bit drawn twice flips back)."""
    flips = np.zeros(len(codes), dtype=np.uint64)
    for round_ in range(int(counts.max(initial=0))):
        bits = rng.integers(0, 64, len(codes)).astype(np.uint64)
        flips ^= np.where(counts > round_, np.uint64(1) << bits, np.uint64(0))
    return codes ^ flips


def plant_copies(rng: np.random.Generator, codes: np.ndarray, radius: int, fraction: float) -> None:
    """Overwrite a fraction of the codes with copies of others at distances 0..radius+2."""
    planted = int(len(codes) * fraction)
    sources = rng.integers(0, len(codes), planted)
    targets = rng.integers(0, len(codes), planted)
    counts = rng.integers(0, radius + 3, planted)
    codes[targets] = flip_bits(rng, codes[sources], counts)


def planted_codes(n: int, radius: int, seed: int, planted_fraction: float = 0.05) -> np.ndarray:
    """Uniform random 64-bit codes, plus copies of some codes at distances 0..radius+2."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    plant_copies(rng, codes, radius, planted_fraction)
    return codes


def clustered_codes(n: int, radius: int, seed: int, cluster: int = 16) -> np.ndarray:
    """Codes 4..12 flipped bits from n / cluster centres whose bits are biased, plus 6% planted
    copies at distances 0..radius+2.

    Each centre bit is set with its own probability in 0.35..0.65, which puts unrelated codes
    31.0 bits apart on average, as the distinct real frames of docs/dedupe-radius.md are (31.2).
    """
    rng = np.random.default_rng(seed)
    bias = rng.uniform(0.35, 0.65, 64)
    centres = np.zeros(max(1, n // cluster), dtype=np.uint64)
    for bit in range(64):
        centres |= (rng.random(len(centres)) < bias[bit]).astype(np.uint64) << np.uint64(bit)
    codes = flip_bits(rng, centres[rng.integers(0, len(centres), n)], rng.integers(4, 13, n))
    plant_copies(rng, codes, radius, 0.06)
    return codes


DISTRIBUTIONS = {
    "uniform": ("random codes, 5% planted copies", planted_codes),
    "clustered": ("codes near 1/16 as many biased centres, 6% planted copies", clustered_codes),
}


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


def search_pairs(codes: np.ndarray, radius: int) -> set[tuple[int, int]]:
    i, j, _ = radius_pairs(codes, radius)
    return set(zip(i.tolist(), j.tolist(), strict=True))


def run_worker(path: Path, radius: int, threads: int) -> None:
    """One search in this process: reads the codes, writes the pairs, prints time and RSS."""
    codes = np.load(path)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    i, j, _ = radius_pairs(codes, radius, threads=threads)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    peak = peak_rss()
    np.savez(path.with_suffix(".pairs.npz"), i=i, j=j)
    print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_bytes": peak, "pairs": len(i)}))


def timed_search(codes: np.ndarray, radius: int, threads: int, folder: Path) -> dict:
    path = folder / f"codes-{len(codes)}.npy"
    np.save(path, codes)
    command = [sys.executable, __file__, "--worker", str(path)]
    command += ["--radius", str(radius), "--threads", str(threads)]
    finished = subprocess.run(command, check=True, capture_output=True, text=True)
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    pairs = np.load(path.with_suffix(".pairs.npz"))
    result["i"], result["j"] = pairs["i"], pairs["j"]
    path.unlink()
    return result


def sampled_check(codes: np.ndarray, found: dict, radius: int, threads: int) -> str:
    """The pairs of sampled codes against a faiss brute-force scan of all codes."""
    import faiss

    faiss.omp_set_num_threads(threads)
    sample = np.random.default_rng(1).choice(len(codes), SAMPLED_CODES, replace=False)
    index = faiss.IndexBinaryFlat(64)
    index.add(codes.view(np.uint8).reshape(-1, 8))
    lims, _, labels = index.range_search(codes[sample].view(np.uint8).reshape(-1, 8), radius + 1)
    rows = np.repeat(sample, np.diff(lims).astype(np.int64))
    other = rows != labels
    first, second = np.minimum(rows, labels)[other], np.maximum(rows, labels)[other]
    want = set(zip(first.tolist(), second.tolist(), strict=True))
    i, j = found["i"], found["j"]
    in_sample = np.isin(i, sample) | np.isin(j, sample)
    got = set(zip(i[in_sample].tolist(), j[in_sample].tolist(), strict=True))
    if got == want:
        return f"IDENTICAL ({len(want):,} pairs)"
    return f"DIFFERENT (missing {len(want - got)}, extra {len(got - want)})"


def bench_distribution(name: str, sizes: list[int], args: argparse.Namespace, folder: Path) -> dict:
    about, make = DISTRIBUTIONS[name]
    print(f"{name}: {about} at distance 0..{args.radius + 2}")
    results = {}
    for n in sizes:
        codes = make(n, args.radius, seed=0)
        result = timed_search(codes, args.radius, args.threads, folder)
        results[n] = result
        mb = result["peak_bytes"] / 2**20
        # the 1-minute load average as the search ends (its own threads included): on a shared
        # machine the wall time follows it, the CPU time much less
        load = os.getloadavg()[0]
        print(
            f"  {n:,} codes ({plan_search(n, args.radius).describe()}): {result['seconds']:.1f} s "
            f"({result['cpu']:.0f} s CPU, load {load:.1f}), peak RSS {mb:,.0f} MiB "
            f"({result['peak_bytes'] / n:.0f} B/code), {result['pairs']:,} pairs"
        )
        if n > BASE_CODES:
            check = sampled_check(codes, result, args.radius, args.threads)
            print(f"  pairs of {SAMPLED_CODES:,} sampled codes vs faiss brute force: {check}")
            if not check.startswith("IDENTICAL"):
                raise SystemExit(1)
    if len(sizes) > 1:
        small, large = results[sizes[0]], results[sizes[-1]]
        scale = math.log(sizes[-1] / sizes[0])
        time_ratio = large["seconds"] / small["seconds"]
        rss_ratio = large["peak_bytes"] / small["peak_bytes"]
        print(
            f"  {sizes[0]:,} -> {sizes[-1]:,}: time x{time_ratio:.1f} "
            f"(N^{math.log(time_ratio) / scale:.2f}), peak RSS x{rss_ratio:.1f} "
            f"(N^{math.log(rss_ratio) / scale:.2f}); target at 10M: <= 120 s, <= 2 GiB"
        )
    return results


def run_benchmark(args: argparse.Namespace) -> None:
    import faiss

    faiss.omp_set_num_threads(args.threads)
    sizes = sorted({BASE_CODES, args.codes}) if args.codes > BASE_CODES else [args.codes]
    names = list(DISTRIBUTIONS) if args.distribution == "both" else [args.distribution]
    print(
        f"radius {args.radius}, {args.threads} threads; each search runs in its own process "
        "(peak RSS: that process, codes included)"
    )
    with tempfile.TemporaryDirectory() as folder:
        found = {name: bench_distribution(name, sizes, args, Path(folder)) for name in names}

    base = sizes[0]
    codes = planted_codes(base, args.radius, seed=0)
    if args.faiss_full:
        _, faiss_seconds = faiss_pairs(codes, args.radius)
        how = f"measured on all {base:,} codes"
    else:
        subset = min(args.faiss_subset, base)
        _, subset_seconds = faiss_pairs(codes[:subset], args.radius)
        faiss_seconds = subset_seconds * (base / subset) ** 2
        how = f"EXTRAPOLATED quadratically from {subset_seconds:.1f} s on {subset:,} codes"
    print(
        f"faiss IndexBinaryFlat range_search ({args.threads} threads) on {base:,} uniform codes: "
        f"{faiss_seconds:.1f} s, {how}"
    )
    if "uniform" in found:
        ours = found["uniform"][base]["seconds"]
        print(f"speed-up vs faiss at {base:,} codes: {faiss_seconds / ours:.1f}x (target >= 5x)")

    check = planted_codes(args.check_n, args.radius, seed=1)
    want, _ = faiss_pairs(check, args.radius)
    got = search_pairs(check, args.radius)
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
    parser.add_argument("--codes", "--n", dest="codes", type=int, default=BASE_CODES)
    parser.add_argument("--radius", type=int, default=DEFAULT_RADIUS)
    parser.add_argument(
        "--distribution", choices=[*DISTRIBUTIONS, "both"], default="both", help="codes searched"
    )
    parser.add_argument(
        "--threads", type=int, default=default_threads(), help="search and faiss threads"
    )
    parser.add_argument("--faiss-full", action="store_true", help="time faiss on all 1M codes")
    parser.add_argument("--faiss-subset", type=int, default=200_000)
    parser.add_argument("--check-n", type=int, default=50_000)
    parser.add_argument(
        "--measure-radius", type=Path, metavar="SAMPLES", help="print the radius table"
    )
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # one timed search
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, args.radius, args.threads)
    elif args.measure_radius:
        measure_radius(args.measure_radius)
    else:
        run_benchmark(args)


if __name__ == "__main__":
    main()
