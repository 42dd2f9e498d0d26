"""One code path for 1 GPU, many GPUs, many nodes and CPU: torchrun's environment decides."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class DeviceError(ValueError):
    """A --device this machine cannot give; one line saying what to pass instead."""


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """`auto`: the local rank's GPU when CUDA is there, else the CPU; `gpu` is `cuda`. A GPU
    asked for on a machine without one is a DeviceError (one line), not torch's traceback."""
    name = preference.strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "gpu" or name.startswith("gpu:"):
        name = "cuda" + name[3:]
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise DeviceError(f"--device {preference!r}: choose auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {preference}: torch sees no CUDA GPU here; use --device cpu or auto"
            )
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"--device {preference}: this machine has {torch.cuda.device_count()} GPU(s)"
            )
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return device


def setup(device: str = "auto", backend: str = "auto") -> DistEnv:
    """Join the process group torchrun described (RANK, WORLD_SIZE, ...), if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if torch_device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend}
        if torch_device.type == "cuda":
            kwargs["device_id"] = torch_device
        dist.init_process_group(**kwargs)
    return DistEnv(rank, world_size, local_rank, torch_device)


def cleanup(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(env: DistEnv, value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank (checkpoint time only)."""
    if not env.distributed:
        return [value]
    values: list[Any] = [None] * env.world_size
    dist.all_gather_object(values, value)
    return values


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


# Dense bf16 peaks (FLOP/s) of known cards, matched against torch.cuda.get_device_name().
PEAK_BF16_FLOPS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
    ("RTX 4090", 165e12),
)


def peak_flops(device: torch.device, peak_tflops: float | None) -> float | None:
    if peak_tflops:
        return peak_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    choices = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
    if precision not in choices:
        raise ValueError(f"--precision {precision!r}: choose auto, bf16, fp16 or fp32")
    return choices[precision]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
