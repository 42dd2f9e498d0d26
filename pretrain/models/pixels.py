"""The models' pixel scale: uint8 infrared frames <-> normalised inputs (InfMAE's constants)."""

from __future__ import annotations

import numpy as np
import torch

IR_MEAN = 0.425  # of 8-bit infrared frames scaled to [0, 1] (InfMAE / DuGI-MAE code)
IR_STD = 0.200


def normalise(images: torch.Tensor, in_chans: int) -> torch.Tensor:
    """[N, 1, H, W] uint8 -> [N, C, H, W] float, (x/255 - mean) / std (grey replicated to C)."""
    x = images.float().div_(255.0).sub_(IR_MEAN).div_(IR_STD)
    return x.expand(-1, in_chans, -1, -1) if in_chans != x.shape[1] else x


def to_pixels(x: torch.Tensor) -> np.ndarray:
    """The inverse of `normalise`: [N, C, H, W] normalised -> [N, H, W] uint8 (first channel)."""
    pixels = (x[:, 0].float() * IR_STD + IR_MEAN) * 255.0
    return pixels.clamp(0, 255).round().to(torch.uint8).cpu().numpy()
