"""Loader throughput per core: our stream vs stock webdataset + torchvision vs a bare decode loop.

In one run, interleaved, --reps times each (medians), one thread, 640x512 8-bit frames (the real
frames of ../shared/ir-samples, else synthetic ones) cropped to 224 with RandomResizedCrop
(scale 0.2-1, bicubic) + horizontal flip, batches of 64:

  (a) ours:  PNGs written by the shard writer (`encode_png`), read by `pretrain.data.ShardStream`;
  (b) stock: the same frames written with OpenCV's default PNG parameters, read by webdataset
             `.decode("l")` + torchvision v2 RandomResizedCrop + RandomHorizontalFlip;
  (c) bare:  a loop that only decodes our PNGs (`cv2.imdecode`, whole frames), in memory.

It prints images/s per core of each, `ratio: X.XXx` (a / b, target >= 2.0x), `codec bound:
Y.YYx` (a / c, target >= 0.85x) and the memory of one loader worker. The loader does not call
`cv2.imdecode`: it decodes only each crop's rows and columns (pretrain/pngcrop.py), so two more
bare loops show how far it is from its own decoder: whole frames, and the same crop boxes alone.

    python bench/loader.py [--images 1280] [--reps 3]
    python bench/loader.py --profile     # where (a)'s time goes: ms per sample, by function
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import multiprocessing
import pstats
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
import webdataset as wds
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parent))

from png import loader_decode_ms, real_frames, thermal_frame  # noqa: E402  (sibling script)

from inf590k.build.shard.tar import encode_png  # noqa: E402
from pretrain.data import DataConfig, ShardStream, loader_for  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
BATCH = 64
SIZE = 224
SHUFFLE = dict(shuffle_buffer=256, shuffle_initial=64)


def frames_for(samples: Path | None, count: int) -> list[np.ndarray]:
    """Real 640x512 frames if the folder has them, else synthetic thermal frames."""
    frames = real_frames(samples, 10**6) if samples and samples.is_dir() else []
    if not frames:
        rng = np.random.default_rng(0)
        frames = [thermal_frame(rng, 512, 640) for _ in range(min(count, 64))]
    return [frames[i % len(frames)] for i in range(count)]


def write_tar(path: Path, pngs: list[bytes], prefix: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i, png in enumerate(pngs):
            uid = f"{prefix}_{i:05d}"
            for name, payload in (
                (f"{uid}.cls", b"0"),
                (f"{uid}.json", b'{"uid": "%s"}' % uid.encode()),
                (f"{uid}.png", png),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def write_shards(
    folder: Path, shards: int, per_shard: int, encode: Callable[[np.ndarray], bytes] | None = None
) -> list[str]:
    """`shards` tars of `per_shard` 640x512 frames under folder/640x512/ (bench/train.py too)."""
    encode = encode or (lambda frame: encode_png(frame, 1))
    frames = frames_for(REPO_ROOT.parent / "shared" / "ir-samples", shards * per_shard)
    urls = []
    for index in range(shards):
        path = folder / "640x512" / f"shard-{index:06d}.tar"
        chunk = frames[index * per_shard : (index + 1) * per_shard]
        write_tar(path, [encode(f) for f in chunk], f"bench{index:03d}")
        urls.append(str(path))
    return urls


def opencv_default_png(frame: np.ndarray) -> bytes:
    return cv2.imencode(".png", frame)[1].tobytes()


def our_stream(urls: list[str]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(a)'s batches in this process, after a warm-up batch (first shard open, buffer filled)."""
    config = DataConfig(batch_size=BATCH, workers=0, resampled=False, **SHUFFLE)
    stream = iter(ShardStream(urls=urls, config=config, image_size=SIZE))
    next(stream)
    return stream


def ours(urls: list[str], images: int) -> float:
    stream = our_stream(urls)
    start = time.perf_counter()
    for _ in range(images // BATCH):
        batch, _ = next(stream)
    assert batch.shape == (BATCH, 1, SIZE, SIZE)
    return (images // BATCH) * BATCH / (time.perf_counter() - start)


def stock(urls: list[str], images: int) -> float:
    transform = v2.Compose(
        [
            v2.RandomResizedCrop(
                SIZE, scale=(0.2, 1.0), interpolation=v2.InterpolationMode.BICUBIC, antialias=True
            ),
            v2.RandomHorizontalFlip(),
        ]
    )

    def to_tensor(gray: np.ndarray) -> torch.Tensor:
        return transform(torch.from_numpy(gray)[None])  # [1, 224, 224] uint8

    dataset = (
        wds.WebDataset(urls, shardshuffle=False, empty_check=False)
        .repeat()
        .shuffle(SHUFFLE["shuffle_buffer"], initial=SHUFFLE["shuffle_initial"])
        .decode("l")
        .to_tuple("png")
        .map_tuple(to_tensor)
        .batched(BATCH)
    )
    stream = iter(dataset)
    next(stream)
    start = time.perf_counter()
    for _ in range(images // BATCH):
        (batch,) = next(stream)
    assert tuple(batch.shape) == (BATCH, 1, SIZE, SIZE)
    return (images // BATCH) * BATCH / (time.perf_counter() - start)


def bare(pngs: list[bytes], images: int) -> float:
    buffers = [np.frombuffer(p, np.uint8) for p in pngs]
    start = time.perf_counter()
    for data in itertools.islice(itertools.cycle(buffers), images):
        cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    return images / (time.perf_counter() - start)


def bare_own(pngs: list[bytes], images: int) -> tuple[float, float]:
    """images/s of the loader's decoder alone: (whole frames, the crop boxes the loader draws)
    (bench/png.py's timing loops)."""
    whole_ms, crop_ms = loader_decode_ms(list(itertools.islice(itertools.cycle(pngs), images)))
    return 1e3 / whole_ms, 1e3 / crop_ms


def profile_ours(urls: list[str], images: int, top: int = 14) -> None:
    """cProfile of (a): the functions that take most of a sample's time, in ms per sample."""
    stream = our_stream(urls)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(images // BATCH):
        next(stream)
    profiler.disable()
    samples = (images // BATCH) * BATCH
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (calls, _, own s, total s, _)
    rows = sorted(stats.items(), key=lambda item: -item[1][2])[:top]
    total = sum(own for _, _, own, _, _ in stats.values())
    print(f"(a) under cProfile: {1e3 * total / samples:.2f} ms per sample (profiler included)")
    print("  own ms/sample  calls/sample  function")
    for (path, line, name), (calls, _, own, _, _) in rows:
        where = f"{Path(path).name}:{line}" if line else ""
        print(f"  {1e3 * own / samples:13.3f}  {calls / samples:12.1f}  {name} {where}")


def png_members(url: str) -> list[bytes]:
    with tarfile.open(url) as tar:
        return [tar.extractfile(m).read() for m in tar if m.name.endswith(".png")]


def _smaps(pid: int) -> dict[str, int]:
    """Rss/Pss/Private of a process in kB (Linux)."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return fields


def worker_memory(urls: list[str], workers: int = 2) -> str:
    """RSS and private memory of each DataLoader worker after it delivered a few batches."""
    config = DataConfig(batch_size=BATCH, workers=workers, resampled=False, **SHUFFLE)
    loader, _ = loader_for(config, SIZE, seed=0, rank=0, world_size=1, pin_memory=False, urls=urls)
    iterator = iter(loader)
    for _ in range(4 * workers):
        next(iterator)
    pids = [child.pid for child in multiprocessing.active_children()]
    if not pids or not Path(f"/proc/{pids[0]}/smaps_rollup").exists():
        return "n/a (needs Linux /proc)"
    stats = [_smaps(pid) for pid in pids]
    rss = statistics.median(s["Rss"] for s in stats) / 1024
    private = statistics.median(s["Private_Clean"] + s["Private_Dirty"] for s in stats) / 1024
    iterator.close()
    return f"{rss:.0f} MiB RSS, {private:.0f} MiB private (median of {workers} workers)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1280, help="images per timed run")
    parser.add_argument("--reps", type=int, default=3, help="runs of each, interleaved")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--per-shard", type=int, default=160)
    parser.add_argument("--profile", action="store_true", help="profile (a) instead")
    args = parser.parse_args()
    if args.reps < 1 or args.images < BATCH:
        raise SystemExit(f"--reps >= 1 and --images >= {BATCH}")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        ours_urls = write_shards(Path(tmp) / "ours", args.shards, args.per_shard)
        if args.profile:
            profile_ours(ours_urls, args.images)
            return
        stock_urls = write_shards(
            Path(tmp) / "stock", args.shards, args.per_shard, opencv_default_png
        )
        pngs = [png for url in ours_urls for png in png_members(url)]
        runs: dict[str, list[float]] = {key: [] for key in ("a", "b", "c", "own", "crops")}
        for _ in range(args.reps):  # interleaved: background load hits all of them alike
            runs["a"].append(ours(ours_urls, args.images))
            runs["b"].append(stock(stock_urls, args.images))
            runs["c"].append(bare(pngs, args.images))
            own, crops = bare_own(pngs, args.images)
            runs["own"].append(own)
            runs["crops"].append(crops)
        memory = worker_memory(ours_urls)
    a, b, c, own, crops = (statistics.median(runs[k]) for k in ("a", "b", "c", "own", "crops"))
    print(
        f"{args.images} images per run, {args.reps} runs each (medians), 640x512 8-bit PNG -> "
        f"{SIZE}x{SIZE} bicubic RandomResizedCrop + flip, batch {BATCH}, 1 thread"
    )
    print(f"(a) ours  (shard writer PNGs, pretrain.data): {a:7.1f} images/s per core")
    print(f"(b) stock (OpenCV default PNGs, wds + tv)   : {b:7.1f} images/s per core")
    print(f"(c) bare cv2.imdecode of our PNGs           : {c:7.1f} images/s per core")
    print(f"    bare pretrain.pngcrop, whole frames     : {own:7.1f} images/s per core")
    print(f"    bare pretrain.pngcrop, the crop boxes   : {crops:7.1f} images/s per core")
    print(f"ratio: {a / b:.2f}x (a / b, target >= 2.0x)")
    print(f"codec bound: {a / c:.2f}x (a / c, target >= 0.85x)")
    print(
        f"against the loader's own decoder: {a / own:.2f}x its whole-frame decode, "
        f"{a / crops:.2f}x decoding the crops alone (the rest: resize, tar, shuffle, batch)"
    )
    png_mib = statistics.mean(len(p) for p in pngs) / 2**20
    default_buffer = DataConfig().shuffle_buffer
    print(
        f"loader memory per worker: {memory}, with a {SHUFFLE['shuffle_buffer']}-sample shuffle "
        f"buffer; the default {default_buffer}-sample buffer holds "
        f"~{png_mib * default_buffer:.0f} MiB of PNG bytes ({png_mib * 1024:.0f} KiB each)"
    )


if __name__ == "__main__":
    main()
