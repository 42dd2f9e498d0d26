"""Model step-time benchmark.

CPU (always): forward + backward of our `mae_vit_base` against Hugging Face transformers'
`ViTMAEForPreTraining` at the same configuration (ViT-B/16, 224, 1 channel, mask 0.75,
decoder 512 x 8, fp32), alternating in one process; prints both and the ratio (target <= 1.0).
Then `dugi_mae_base` relative to `mae_vit_base` (target <= 1.3x: its conv stages compute only
at the visible positions in pretraining).
CUDA (when available): bf16 images/s and model FLOP utilisation of `mae_vit_base` and
`dugi_mae_base` at batch 256, with the card's name.

    python bench/model.py [--steps 3] [--batch 8] [--gpu-batch 256] [--gpu-steps 20] [--no-compile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain.models import IR_MEAN, IR_STD, create_model  # noqa: E402


def hf_vitmae(channels: int = 1) -> torch.nn.Module:
    """transformers' ViTMAEForPreTraining built from config (no download), MAE-B sizes."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    config = ViTMAEConfig(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        image_size=224, patch_size=16, num_channels=channels, mask_ratio=0.75,
        decoder_hidden_size=512, decoder_num_hidden_layers=8, decoder_num_attention_heads=16,
        decoder_intermediate_size=2048, layer_norm_eps=1e-6,
    )
    config._attn_implementation = "sdpa"
    return ViTMAEForPreTraining(config)


def crops(batch: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Random 8-bit crops [N, 1, 224, 224] and their normalised images (masking reads the crops)."""
    pixels = torch.randint(0, 256, (batch, 1, 224, 224), dtype=torch.uint8, device=device)
    return (pixels.float() / 255 - IR_MEAN) / IR_STD, pixels


def ours_step(model: torch.nn.Module, imgs: torch.Tensor, pixels: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss, _, _ = model(imgs, pixels)
        loss.backward()

    return step


def hf_step(model: torch.nn.Module, imgs: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(pixel_values=imgs).loss.backward()

    return step


def alternate(steps: dict[str, Callable[[], None]], repeats: int, warmup: int = 1) -> dict:
    """Median seconds per call of each step function, run in turn so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for index in range(warmup + repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def cpu_bench(steps: int, batch: int) -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    imgs, pixels = crops(batch)
    ours = create_model("mae_vit_base").train()
    theirs = hf_vitmae().train()
    dugi = create_model("dugi_mae_base").train()
    print(f"CPU fp32, {torch.get_num_threads()} threads, batch {batch}, median of {steps} steps "
          "(forward + backward)")
    result = alternate(
        {"ours": ours_step(ours, imgs, pixels), "hf": hf_step(theirs, imgs),
         "dugi": ours_step(dugi, imgs, pixels)},
        steps,
    )
    print(f"  mae_vit_base (ours)                : {result['ours']:.3f} s/step")
    print(f"  ViTMAEForPreTraining (transformers): {result['hf']:.3f} s/step")
    print(f"  ratio ours / transformers          : {result['ours'] / result['hf']:.3f}x "
          "(target <= 1.0)")
    print(f"  dugi_mae_base                      : {result['dugi']:.3f} s/step = "
          f"{result['dugi'] / result['ours']:.3f}x mae_vit_base (target <= 1.3x)")


def peak_bf16_flops(device_name: str) -> float | None:
    """Dense bf16 peak of known cards (FLOP/s); None when unknown."""
    for key, peak in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
                      ("A10", 125e12), ("L4", 121e12)):
        if key in device_name:
            return peak
    return None


def gpu_bench(batch: int, steps: int, compile_model: bool, peak_tflops: float | None) -> None:
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peak = peak_tflops * 1e12 if peak_tflops else peak_bf16_flops(name)
    print(f"CUDA bf16 on {name}, batch {batch}, {steps} steps"
          + (", torch.compile" if compile_model else ""))
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    imgs, pixels = crops(batch, device)
    for model_name in ("mae_vit_base", "dugi_mae_base"):
        model = create_model(model_name).to(device).train()
        flops_per_step = 3 * model.flops_per_image() * batch  # forward + backward ~ 3x forward
        optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        runner = torch.compile(model) if compile_model else model

        def step(runner: torch.nn.Module = runner, optimiser=optimiser) -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, _, _ = runner(imgs, pixels)
            loss.backward()
            optimiser.step()
            optimiser.zero_grad(set_to_none=True)

        for _ in range(5):
            step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / steps
        line = f"  {model_name:<14}: {batch / seconds:8.0f} img/s, {seconds * 1e3:7.1f} ms/step"
        if peak:
            line += f", MFU {flops_per_step / seconds / peak:6.1%} (peak {peak / 1e12:.0f} TFLOP/s)"
        print(line + (" (target >= 45% MFU)" if model_name == "mae_vit_base" else ""))
        del model, runner, optimiser
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed CPU steps per model")
    parser.add_argument("--batch", type=int, default=8, help="CPU batch size")
    parser.add_argument("--gpu-batch", type=int, default=256)
    parser.add_argument("--gpu-steps", type=int, default=20)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="torch.compile the models for the GPU part (default on)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="bf16 peak of the card when it is not a known one")
    parser.add_argument("--skip-cpu", action="store_true", help="only the CUDA part")
    args = parser.parse_args()
    if args.steps < 1 or args.batch < 1:
        parser.error("--steps and --batch must be >= 1")
    if not args.skip_cpu:
        cpu_bench(args.steps, args.batch)
    if torch.cuda.is_available():
        gpu_bench(args.gpu_batch, args.gpu_steps, args.compile, args.peak_tflops)
    else:
        print("CUDA: no GPU here, images/s and MFU not measured")


if __name__ == "__main__":
    main()
