"""Training throughput: images/s, MFU and data-wait fraction of the real loop with its loader.

On a CUDA GPU: `dugi_mae_base`, batch 256, bf16, the loader's workers over 640x512 PNG shards
(targets: MFU >= 40%, data wait < 5%). Without one it runs a CPU smoke test of the same path
on a tiny model and says so (MFU n/a).

    python bench/train.py [--model dugi_mae_base] [--batch-size 256] [--steps 60] [--workers 12]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loader import write_shards  # noqa: E402  (sibling script in bench/)

from pretrain.train import config_from_options, pretrain  # noqa: E402


def _write(args: tuple[str, int, int]) -> list[str]:
    folder, index, per_shard = args
    urls = write_shards(Path(folder) / f"part{index}", 1, per_shard)
    return urls


def make_shards(folder: Path, shards: int, per_shard: int) -> list[str]:
    """PNG encoding is slow: one process per shard."""
    with ProcessPoolExecutor(max_workers=min(shards, os.cpu_count() or 1)) as pool:
        parts = pool.map(_write, [(str(folder), i, per_shard) for i in range(shards)])
    return [url for part in parts for url in part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--model", default="dugi_mae_base" if cuda else "mae_vit_tiny")
    parser.add_argument("--batch-size", type=int, default=256 if cuda else 16)
    parser.add_argument("--steps", type=int, default=60 if cuda else 12)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()
    log_every = max(1, args.steps // 6)
    with tempfile.TemporaryDirectory() as tmp:
        shard_count = max(4, args.workers)
        urls = make_shards(Path(tmp) / "shards", shard_count, 64 if cuda else 16)
        options = dict(
            shards=urls, samples_per_epoch=shard_count * (64 if cuda else 16),
            model=args.model, batch_size=args.batch_size, workers=args.workers,
            steps=args.steps, epochs=100, warmup_epochs=1, out=str(Path(tmp) / "run"),
            log_every=log_every, ckpt_every=10**9, compile=args.compile,
            peak_tflops=args.peak_tflops, progress=False, shuffle_buffer=256,
            shuffle_initial=64,
        )  # fmt: skip
        if not cuda:
            options["model_args"] = ["img_size=224"]
        result = pretrain(config_from_options(options))
        records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    steady = records[1:] or records  # the first interval holds start-up and compilation
    images_per_s = sum(r["images_per_s"] for r in steady) / len(steady)
    wait = sum(r["data_wait"] for r in steady) / len(steady)
    mfus = [r["mfu"] for r in steady if r["mfu"] is not None]
    card = torch.cuda.get_device_name() if cuda else "CPU (no CUDA GPU: smoke test only)"
    print(f"card: {card}")
    print(f"model {args.model}, batch {args.batch_size}, {args.workers} loader workers, "
          f"{'bf16' if cuda else 'fp32'}, {args.steps} steps, compile={args.compile}")  # fmt: skip
    print(f"images/s: {images_per_s:.1f}")
    print(f"MFU: {100 * sum(mfus) / len(mfus):.1f}% (target >= 40%)" if mfus else "MFU: n/a")
    print(f"data wait: {100 * wait:.1f}% of step time (target < 5%)")


if __name__ == "__main__":
    main()
