"""Detection-probe benchmark: fine-tuning images/s of our detector against torchvision's own.

CPU (always): one fine-tuning step (forward with losses, backward, AdamW) of the probe's
Faster R-CNN on `dugi_mae_base` (its four maps + FPN 256, torchvision's RPN and RoI heads)
against torchvision's `fasterrcnn_resnet50_fpn` (weights=None, weights_backbone=None: no
download) at the same input size, batch and boxes, alternating in one process; prints both
rates and the ratio (ours / torchvision's images/s). Threads: the probe's rule (every core
torch was given, none left for loader workers here).
CUDA (when available): bf16 autocast images/s of both at the GPU size (M3FD's 1024 px).

    python bench/probe.py [--img-size 384] [--batch 2] [--steps 3] [--gpu-img-size 1024]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain.probe.detector import build_detector  # noqa: E402
from pretrain.probe.head import build_backbone, encoder_spec  # noqa: E402
from pretrain.probe.runtime import intra_op_threads  # noqa: E402

NUM_CLASSES = 6  # M3FD's


def ours(img_size: int) -> torch.nn.Module:
    maps = build_backbone(encoder_spec("scratch", "dugi_mae_base"))
    return build_detector(maps, NUM_CLASSES, img_size, head_dim=256, in_chans=1)


def torchvision_reference(img_size: int) -> torch.nn.Module:
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    return fasterrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=NUM_CLASSES + 1,
        min_size=img_size,
        max_size=img_size,
    )


def batch_of(
    batch: int, img_size: int, channels: int, device: torch.device
) -> tuple[list[torch.Tensor], list[dict]]:
    """Grey frames of M3FD's aspect (4:3, longer side img_size) with 6 boxes each, the same
    pixels and boxes for both models (replicated to 3 channels for the RGB one)."""
    generator = torch.Generator().manual_seed(0)
    height = img_size * 3 // 4
    images, targets = [], []
    for _ in range(batch):
        grey = torch.rand(1, height, img_size, generator=generator)
        corners = torch.rand(6, 2, generator=generator) * torch.tensor(
            [img_size * 0.8, height * 0.8]
        )
        sizes = 8 + torch.rand(6, 2, generator=generator) * img_size / 6
        boxes = torch.cat([corners, corners + sizes], dim=1)
        images.append(grey.expand(channels, -1, -1).to(device))
        targets.append(
            dict(
                boxes=boxes.to(device),
                labels=torch.randint(1, NUM_CLASSES + 1, (6,), generator=generator).to(device),
            )
        )
    return images, targets


def step_of(
    model: torch.nn.Module, images: list, targets: list, bf16: bool = False
) -> Callable[[], None]:
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step() -> None:
        with torch.autocast(images[0].device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = sum(model(images, targets).values())
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    return step


def alternate(
    steps: dict[str, Callable[[], None]],
    repeats: int,
    warmup: int = 1,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Median seconds per call of each step, run in turn so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for index in range(warmup + repeats):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def report(result: dict[str, float], batch: int) -> None:
    rates = {name: batch / seconds for name, seconds in result.items()}
    print(
        f"  probe Faster R-CNN on dugi_mae_base : {rates['ours']:7.2f} images/s "
        f"({result['ours']:.2f} s/step)"
    )
    print(
        f"  fasterrcnn_resnet50_fpn (torchvision): {rates['torchvision']:7.2f} images/s "
        f"({result['torchvision']:.2f} s/step)"
    )
    print(
        f"  ratio ours / torchvision             : {rates['ours'] / rates['torchvision']:.2f}x "
        "images/s"
    )


def cpu_bench(img_size: int, batch: int, steps: int) -> None:
    torch.set_num_threads(intra_op_threads(0))
    torch.manual_seed(0)
    device = torch.device("cpu")
    grey, targets = batch_of(batch, img_size, 1, device)
    rgb, _ = batch_of(batch, img_size, 3, device)
    print(
        f"CPU fp32, {torch.get_num_threads()} threads, {img_size} px (longer side), batch "
        f"{batch}, median of {steps} fine-tuning steps after 1 untimed"
    )
    result = alternate(
        {
            "ours": step_of(ours(img_size), grey, targets),
            "torchvision": step_of(torchvision_reference(img_size), rgb, targets),
        },
        steps,
    )
    report(result, batch)


def gpu_bench(img_size: int, batch: int, steps: int) -> None:
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    grey, targets = batch_of(batch, img_size, 1, device)
    rgb, _ = batch_of(batch, img_size, 3, device)
    print(
        f"CUDA bf16 autocast on {torch.cuda.get_device_name(device)}, {img_size} px, batch "
        f"{batch}, median of {steps} steps after 3 untimed"
    )
    result = alternate(
        {
            "ours": step_of(ours(img_size).to(device), grey, targets, bf16=True),
            "torchvision": step_of(
                torchvision_reference(img_size).to(device), rgb, targets, bf16=True
            ),
        },
        steps,
        warmup=3,
        sync=torch.cuda.synchronize,
    )
    report(result, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--img-size", type=int, default=384, help="CPU input, longer side")
    parser.add_argument("--batch", type=int, default=2, help="CPU batch")
    parser.add_argument("--steps", type=int, default=3, help="timed CPU steps per model")
    parser.add_argument("--gpu-img-size", type=int, default=1024)
    parser.add_argument("--gpu-batch", type=int, default=8)
    parser.add_argument("--gpu-steps", type=int, default=20)
    parser.add_argument("--skip-cpu", action="store_true", help="only the CUDA part")
    args = parser.parse_args()
    if min(args.steps, args.batch, args.gpu_steps, args.gpu_batch) < 1 or args.img_size % 32:
        parser.error("steps and batches must be >= 1, sizes multiples of 32")
    if not args.skip_cpu:
        cpu_bench(args.img_size, args.batch, args.steps)
    if torch.cuda.is_available():
        gpu_bench(args.gpu_img_size, args.gpu_batch, args.gpu_steps)
    else:
        print("CUDA: no GPU here, bf16 images/s not measured")


if __name__ == "__main__":
    main()
