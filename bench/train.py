"""Training throughput: images/s, MFU and data-wait fraction of the real loop with its loader.

On a CUDA GPU: `dugi_mae_base`, batch 256, bf16, the loader's workers over 640x512 PNG shards
(targets: MFU >= 40%, data wait < 5%). Without one it runs a CPU smoke test of the same path
on a tiny model and says so (MFU n/a). Both print the projection: CPU cores per GPU needed to
feed `dugi_mae_base` at --target-img-s (default 5600: one H100 at 45% MFU) from the loader's
measured rate per core (one thread, the real stream with its bicubic crop).

    python bench/train.py [--model dugi_mae_base] [--batch-size 256] [--steps 60] [--workers 12]
                          [--target-img-s 5600]

`--figure threads` (CPU): a `pretrain` step of dugi_mae_tiny with the threads `pretrain` chooses
(pretrain.threads: usable cores less the loader workers) against torch's default, on this
machine as it is ("idle") and under load (a second process spinning every usable core), with
the default/chosen ratio of each (medians of --thread-steps logged steps, the first two left out).

    python bench/train.py --figure threads [--thread-steps 12] [--thread-workers 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loader import ours, write_shards  # noqa: E402  (sibling script in bench/)

from pretrain.config import (  # noqa: E402
    DataConfig,
    RunConfig,
    config_from_options,
    parse_model_args,
)
from pretrain.distributed import resolve_precision  # noqa: E402
from pretrain.models import create_model  # noqa: E402
from pretrain.threads import plan_threads, usable_cores  # noqa: E402
from pretrain.train import pretrain  # noqa: E402
from pretrain.validation import Validator  # noqa: E402

TORCH_DEFAULT_THREADS = torch.get_num_threads()  # before anything sets it: torch's own choice


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
    parser.add_argument("--figure", choices=["throughput", "threads"], default="throughput")
    parser.add_argument("--thread-steps", type=int, default=12)
    parser.add_argument("--thread-workers", type=int, default=1)
    known, rest = parser.parse_known_args()
    if known.figure == "threads":
        threads_figure(known.thread_steps, known.thread_workers)
        return
    sys.argv = [sys.argv[0], *rest]
    throughput_figure()


def throughput_figure() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--model", default="dugi_mae_base" if cuda else "mae_vit_tiny")
    parser.add_argument("--batch-size", type=int, default=256 if cuda else 16)
    parser.add_argument("--steps", type=int, default=60 if cuda else 12)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument(
        "--target-img-s",
        type=float,
        default=5600.0,
        help="images/s one GPU takes (dugi_mae_base, H100, 45%% MFU)",
    )
    parser.add_argument(
        "--loader-images", type=int, default=640, help="images timed for the loader's per-core rate"
    )
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
        per_core = loader_rate(urls, args.loader_images)
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
    print(f"loader: {per_core:.1f} images/s per core (1 thread, bicubic crop, median of 3)")
    print(
        f"projection: {math.ceil(args.target_img_s / per_core)} cores per GPU to feed "
        f"dugi_mae_base at {args.target_img_s:.0f} images/s "
        f"({args.target_img_s / per_core:.1f} at 100% loader efficiency)"
    )
    validation_share(args.model, options.get("model_args", []), args.batch_size, images_per_s)


def validation_share(
    model_name: str, model_args: list[str], batch_size: int, train_images_per_s: float
) -> None:
    """The validation pass's cost as a share of training time, at the default --val-samples
    and --val-every: one pass (median of 3, after a warm-up) over that many crops, against
    --val-every steps at the loop's measured images/s (goal: under 3%)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = create_model(model_name, **parse_model_args(tuple(model_args))).to(device)
    samples, every = DataConfig().val_samples, RunConfig().val_every
    rng = np.random.default_rng(0)
    shape = (samples, 1, *model.config.image_hw)
    images = torch.from_numpy(rng.integers(0, 256, shape, dtype=np.uint8))  # [N, 1, H, W]
    validator = Validator(images, model.config, batch_size)
    amp = resolve_precision("auto", device)
    validator.evaluate(model, amp, 0)  # warm-up (allocator, kernels)
    seconds = statistics.median(validator.evaluate(model, amp, 0).seconds for _ in range(3))
    passes = 1 if validator.shared_pass else 2
    print(
        f"validation: {samples} images, {passes} forward pass(es) ({model.config.masking} "
        f"masking), {seconds:.2f} s per pass, batch {batch_size}"
    )
    for batch in dict.fromkeys((batch_size, DataConfig().batch_size)):
        training = every * batch / train_images_per_s  # seconds of --val-every steps
        print(
            f"validation cost at --val-every {every}, batch {batch}: {100 * seconds / training:.2f}% "
            f"of training time (goal < 3%){'' if batch == batch_size else ' (from the images/s above)'}"
        )


def loader_rate(urls: list[str], images: int) -> float:
    """The stream's images/s on one core: median of 3 in-process runs (bench/loader.py's (a))."""
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return statistics.median(ours(urls, images) for _ in range(3))
    finally:
        torch.set_num_threads(torch_threads)


# ----------------------------------------------------------------------------- threads figure


def _spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def spinning(cores: int) -> Iterator[None]:
    """A second process keeping `cores` cores busy (a forked busy loop per core), as another
    job on a shared machine would."""
    context = multiprocessing.get_context("fork")
    spinners = [context.Process(target=_spin, daemon=True) for _ in range(cores)]
    for spinner in spinners:
        spinner.start()
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.terminate()
            spinner.join()


def step_times(urls: list[str], samples: int, threads: int, workers: int, steps: int,
               out: Path) -> list[float]:  # fmt: skip
    """Seconds per step of a CPU `pretrain` of dugi_mae_tiny (batch 16, 224 px) run with
    `threads` torch threads beside `workers` loader processes: every step is logged, its time
    being batch / images-per-second; the first two (start-up, first shard) are left out."""
    batch = 16
    options = dict(
        shards=urls, samples_per_epoch=samples, model="dugi_mae_tiny", batch_size=batch,
        workers=workers, threads=threads, steps=steps, epochs=100, warmup_epochs=1,
        out=str(out), log_every=1, ckpt_every=10**9, progress=False, device="cpu",
        shuffle_buffer=64, shuffle_initial=16,
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):  # the run's own lines: not the figure's
        result = pretrain(config_from_options(options))
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    return [batch / r["images_per_s"] for r in records[2:]]


def threads_figure(steps: int, workers: int) -> None:
    """Median step time with the chosen threads and with torch's default, idle and loaded."""
    cores = usable_cores()
    chosen = plan_threads(workers).threads
    print(f"CPU pretrain step, dugi_mae_tiny, batch 16, {workers} loader worker(s), "
          f"{cores} usable cores; threads: chosen {chosen}, torch's default "
          f"{TORCH_DEFAULT_THREADS}; median of {steps - 2} steps")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        urls = make_shards(Path(tmp) / "shards", 4, 16)
        for load in ("idle", "loaded"):
            spin = spinning(cores) if load == "loaded" else contextlib.nullcontext()
            medians = {}
            with spin:
                for name, threads in (("chosen", chosen), ("default", TORCH_DEFAULT_THREADS)):
                    out = Path(tmp) / f"{load}-{name}"
                    medians[name] = statistics.median(
                        step_times(urls, 64, threads, workers, steps, out)
                    )
            print(f"{load:>6}: chosen {1000 * medians['chosen']:.0f} ms/step, default "
                  f"{1000 * medians['default']:.0f} ms/step, ratio default/chosen "
                  f"{medians['default'] / medians['chosen']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
