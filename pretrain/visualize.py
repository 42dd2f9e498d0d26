"""Reconstruction grids: input | masked input | prediction (visible patches pasted back)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from pretrain import checkpoint as ckpt
from pretrain.data import decode_ir_png, stretch_range, to_uint8

MASK_GREY = 96  # 8-bit value painted over masked patches


def _to_u8(x: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] normalised -> [N, H, W] uint8 (first channel)."""
    from pretrain.models import IR_MEAN, IR_STD

    pixels = (x[:, 0].float() * IR_STD + IR_MEAN) * 255.0
    return pixels.clamp(0, 255).round().to(torch.uint8).cpu().numpy()


@torch.no_grad()
def reconstruct(model: nn.Module, images: torch.Tensor) -> dict[str, np.ndarray]:
    """Run the masked autoencoder on uint8 images [N, 1, H, W]; each result is [N, H, W] uint8.

    RNG state is forked so a grid drawn during training leaves the run's random stream as is."""
    from pretrain.train import normalise

    config = model.config
    device = next(model.parameters()).device
    pixels = images.to(device)  # uint8 [N, 1, H, W]: entropy and grey masking read them
    x = normalise(pixels, config.in_chans)  # [N, C, H, W]
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        _, pred, mask = model(x, pixels)  # [N, L, p*p*C], [N, L] (1 = masked)
    model.train(was_training)
    pred = pred.float()
    if config.norm_pix_loss:  # the decoder predicts per-patch normalised pixels
        target = model.patchify(x).float()  # [N, L, p*p*C]
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        pred = pred * (var + 1.0e-6) ** 0.5 + mean
    patch_pixels = pred.shape[-1]
    mask_map = model.unpatchify(mask.float().unsqueeze(-1).expand(-1, -1, patch_pixels))
    prediction = model.unpatchify(pred)  # [N, C, H, W]
    pasted = x * (1 - mask_map) + prediction * mask_map
    masked = _to_u8(x)
    masked[mask_map[:, 0].cpu().numpy() > 0.5] = MASK_GREY
    return {"input": _to_u8(x), "masked": masked, "prediction": _to_u8(pasted)}


def grid_image(parts: dict[str, np.ndarray], gap: int = 2) -> np.ndarray:
    """One row per image, columns input | masked | prediction, white gaps -> [rows, cols] uint8."""
    columns = [parts["input"], parts["masked"], parts["prediction"]]
    n, height, width = columns[0].shape
    out = np.full((n * (height + gap) - gap, 3 * (width + gap) - gap), 255, np.uint8)
    for row in range(n):
        for col, images in enumerate(columns):
            top, left = row * (height + gap), col * (width + gap)
            out[top : top + height, left : left + width] = images[row]
    return out


def save_grid(model: nn.Module, images: torch.Tensor, path: Path) -> Path:
    """Write the reconstruction grid of uint8 images [N, 1, H, W] as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), grid_image(reconstruct(model, images))):
        raise OSError(f"could not write {path}; check the folder is writable")
    return path


def load_image(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """Any 8/16-bit grey or colour image -> [1, 1, H, W] uint8: resize short side, centre crop."""
    data = Path(path).read_bytes()
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        image = decode_ir_png(data, max_pixels=200_000_000)
    else:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError(f"cannot decode {path}; give a PNG, JPEG or TIFF image")
    if image.dtype == np.uint16:
        image = to_uint8(image, *stretch_range(image))
    out_h, out_w = size
    scale = max(out_h / image.shape[0], out_w / image.shape[1])
    resized_hw = (
        max(out_h, round(image.shape[0] * scale)),
        max(out_w, round(image.shape[1] * scale)),
    )
    image = cv2.resize(image, (resized_hw[1], resized_hw[0]), interpolation=cv2.INTER_AREA)
    top, left = (resized_hw[0] - out_h) // 2, (resized_hw[1] - out_w) // 2
    crop = np.ascontiguousarray(image[top : top + out_h, left : left + out_w])
    return torch.from_numpy(crop)[None, None]


def model_from_checkpoint(checkpoint_file: Path | str) -> tuple[nn.Module, dict]:
    """Rebuild the model a training checkpoint holds (weights_only loading)."""
    state = ckpt.load(checkpoint_file)
    return ckpt.model_from_state(state).eval(), state


def visualize_checkpoint(checkpoint_file: Path | str, image: Path | str, out: Path | str) -> Path:
    """`inf590k visualize CKPT --image PATH --out PNG`: one image's reconstruction grid."""
    model, _ = model_from_checkpoint(checkpoint_file)
    images = load_image(Path(image), model.config.image_hw)
    return save_grid(model, images, Path(out))
