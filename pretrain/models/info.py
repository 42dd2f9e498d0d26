"""`inf590k model-info`: parameters and forward GFLOPs per part of a named model."""

from __future__ import annotations

from typing import Any

import torch

from pretrain.models.configs import build_config
from pretrain.models.mae import MODEL_PARTS, MaskedAutoencoder


def model_info(name: str, image_size: int | None = None, in_chans: int = 1) -> dict[str, Any]:
    """Parameters and forward FLOPs of one image, per part (encoder, ddg, decoder) and in total,
    at `image_size` (default: the model's pretraining size, 64 for the tiny models).

    The FLOPs are those a pretraining step executes (masked input: the encoder computes only
    what the loss can see). Built on the meta device: nothing is allocated, so large models are
    cheap to inspect.
    """
    if image_size is None:
        image_size = build_config(name).image_hw[0]
    if image_size <= 0:
        raise ValueError(f"image_size={image_size} must be a positive multiple of 16")
    config = build_config(name, img_size=image_size, in_chans=in_chans)
    with torch.device("meta"):
        model = MaskedAutoencoder(config)
    params = {
        part: sum(p.numel() for p in getattr(model, part).parameters())
        if getattr(model, part) is not None
        else 0
        for part in MODEL_PARTS
    }
    params["total"] = sum(p.numel() for p in model.parameters())
    flops = model.flops_by_part()
    flops["total"] = sum(flops.values())
    return dict(name=name, image_size=image_size, in_chans=in_chans, params=params, flops=flops)


def format_model_info(info: dict[str, Any]) -> str:
    """A plain-text table of `model_info`'s result."""
    size = info["image_size"]
    chans = info.get("in_chans", 1)
    lines = [
        f"{info['name']} at {size}x{size}x{chans}, masked pretraining forward pass of one image",
        f"{'part':<10}{'params (M)':>12}{'GFLOPs':>10}{'GMACs':>9}",
    ]
    for part in (*MODEL_PARTS, "other", "total"):
        params = info["params"].get(part)
        flops = info["flops"][part]
        params_text = f"{params / 1e6:12.2f}" if params is not None else f"{'':12}"
        lines.append(f"{part:<10}{params_text}{flops / 1e9:10.2f}{flops / 2e9:9.2f}")
    return "\n".join(lines)
