"""Loader throughput per worker: our stream vs webdataset `.decode("l")` + torchvision.

Both read the same 640x512 8-bit PNG shards in one process with one thread, crop to 224
with RandomResizedCrop(scale 0.2-1) + horizontal flip and batch; the ratio is ours / stock.

    python bench/loader.py [--images 600] [--shards 'dir/640x512/shard-{000000..000003}.tar']
"""

from __future__ import annotations

import argparse
import io
import tarfile
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import webdataset as wds
from torchvision.transforms import v2

from pretrain.data import DataConfig, ShardStream, expand_shard_urls

BATCH = 64


def thermal_frame(rng: np.random.Generator, height: int = 512, width: int = 640) -> np.ndarray:
    """Smooth background, hot blobs, sensor noise: compresses like a real 8-bit IR frame."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frame = 0.35 + 0.15 * xx / width + 0.1 * yy / height
    for _ in range(4):
        cy, cx, sigma = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(15, 80)
        frame += rng.uniform(0.1, 0.4) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    frame += rng.normal(0, 0.015, frame.shape).astype(np.float32)
    return (np.clip(frame, 0, 1) * 255).astype(np.uint8)


def write_shards(folder: Path, shards: int, per_shard: int) -> list[str]:
    rng = np.random.default_rng(0)
    urls = []
    for index in range(shards):
        path = folder / "640x512" / f"shard-{index:06d}.tar"
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                uid = f"bench{index:03d}_{i:05d}"
                png = cv2.imencode(".png", thermal_frame(rng), [cv2.IMWRITE_PNG_COMPRESSION, 3])[1]
                for name, payload in (
                    (f"{uid}.cls", b"0"),
                    (f"{uid}.json", b'{"uid": "%s"}' % uid.encode()),
                    (f"{uid}.png", png.tobytes()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        urls.append(str(path))
    return urls


def ours(urls: list[str], images: int) -> float:
    config = DataConfig(batch_size=BATCH, workers=0, resampled=False, shuffle_buffer=200,
                        shuffle_initial=50)  # fmt: skip
    stream = iter(ShardStream(urls=urls, config=config, image_size=224))
    next(stream)  # warm-up: first shard open, buffers filled
    start = time.perf_counter()
    for _ in range(images // BATCH):
        batch, _ = next(stream)
    assert batch.shape == (BATCH, 1, 224, 224)
    return (images // BATCH) * BATCH / (time.perf_counter() - start)


def stock(urls: list[str], images: int) -> float:
    transform = v2.Compose(
        [v2.RandomResizedCrop(224, scale=(0.2, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    )

    def to_tensor(gray: np.ndarray) -> torch.Tensor:
        return transform(torch.from_numpy(gray)[None])  # [1, 224, 224] uint8

    dataset = (
        wds.WebDataset(urls, shardshuffle=False, empty_check=False)
        .repeat()
        .shuffle(200, initial=50)
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
    assert tuple(batch.shape) == (BATCH, 1, 224, 224)
    return (images // BATCH) * BATCH / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--shards", default=None, help="existing 640x512 shards (default: synth)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        urls = expand_shard_urls(args.shards) if args.shards else write_shards(Path(tmp), 4, 200)
        # Alternate and repeat so background load on a shared machine hits both alike.
        ours_runs, stock_runs = [], []
        for _ in range(2):
            ours_runs.append(ours(urls, args.images))
            stock_runs.append(stock(urls, args.images))
    ours_rate, stock_rate = max(ours_runs), max(stock_runs)
    print(f"images: {args.images} per run, 640x512 8-bit PNG -> 224x224, batch {BATCH}, 1 thread")
    print(f"pretrain.data stream : {ours_rate:7.1f} images/s per worker")
    print(f"wds decode('l') + tv : {stock_rate:7.1f} images/s per worker")
    print(f"ratio: {ours_rate / stock_rate:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
