"""Forward FLOPs per model part, counted by torch.utils.flop_counter (for MFU and model-info)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def count_flops_by_part(
    model: nn.Module, inputs: tuple[Tensor, ...], parts: Iterable[str]
) -> dict[str, int]:
    """Forward FLOPs (2 per multiply-add) of `model(*inputs)` for each named child module.

    Attention runs through the math backend while counting: the counter has formulas for the
    matmuls it decomposes into, but none for the fused CPU attention kernel.
    Returns `{part: flops}` plus `"other"` for work outside the named parts.
    """
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(*inputs)
    by_module = counter.get_flop_counts()
    root = type(model).__name__
    flops = {part: sum(by_module.get(f"{root}.{part}", {}).values()) for part in parts}
    flops["other"] = counter.get_total_flops() - sum(flops.values())
    return flops
