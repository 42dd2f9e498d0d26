"""Reconstruction grids: one row per image, labelled columns input | masked input |
reconstruction | reconstruction with the visible patches pasted back; `inf590k visualize`
names each row's image file above it.

Panels are drawn at least MIN_PANEL px on their short side (a tiny model's 64-px crops are
upsampled by whole factors, nearest neighbour, so patches stay visible as patches).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from pretrain import checkpoint as ckpt
from pretrain.data import decode_ir_png, stretch_range, to_uint8
from pretrain.models.pixels import normalise, to_pixels

MASK_GREY = 96  # 8-bit value painted over masked patches
MIN_PANEL = 224  # px, short side of each panel in a grid
MAX_ROWS = 8  # images per grid
HEADER = 32  # px of the label band above the columns
GAP = 4  # px between panels
ROW_LABEL = 22  # px of the band above each row that names its image (when names are given)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
FORMATS = "PNG, JPEG, TIFF or BMP"  # what load_image reads, as messages say it
COLUMNS = ("input", "masked", "reconstruction", "reconstruction + visible")


class VisualizeError(ValueError):
    """An input visualize cannot use; the message says what to pass instead."""


@torch.no_grad()
def reconstruct(model: nn.Module, images: torch.Tensor) -> dict[str, np.ndarray]:
    """Run the masked autoencoder on uint8 images [N, 1, H, W]; each result is [N, H, W] uint8.

    RNG state is forked so a grid drawn during training leaves the run's random stream as is."""

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
    masked = to_pixels(x)
    masked[mask_map[:, 0].cpu().numpy() > 0.5] = MASK_GREY
    return {
        "input": to_pixels(x),
        "masked": masked,
        "reconstruction": to_pixels(prediction),
        "pasted": to_pixels(pasted),
        "mask_ratio": np.asarray(float(mask.float().mean())),
    }


def _label(
    band: np.ndarray, text: str, left: int, width: int, scale: float = 0.7, centred: bool = True
) -> None:
    """Write `text` in band[:, left:left+width] (centred, or from its left), shrinking the font
    until it fits."""
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, 1
    (text_w, text_h), _ = cv2.getTextSize(text, font, scale, thickness)
    while text_w > width - 8 and scale > 0.3:
        scale -= 0.05
        (text_w, text_h), _ = cv2.getTextSize(text, font, scale, thickness)
    x = left + max(0, (width - text_w) // 2) if centred else left + 4
    cv2.putText(band, text, (x, (band.shape[0] + text_h) // 2), font, scale, 0, thickness, cv2.LINE_AA)


def grid_image(parts: dict[str, np.ndarray], row_names: Sequence[str] = ()) -> np.ndarray:
    """Rows of images, labelled columns input | masked | reconstruction | + visible -> uint8.

    With `row_names` (one per image), a band above each row names its image."""
    columns = [parts["input"], parts["masked"], parts["reconstruction"], parts["pasted"]]
    n, height, width = columns[0].shape
    if row_names and len(row_names) != n:
        raise ValueError(f"{len(row_names)} row names for {n} images")
    band = ROW_LABEL if row_names else 0
    factor = max(1, math.ceil(MIN_PANEL / min(height, width)))
    panel_h, panel_w = height * factor, width * factor
    rows_h = n * (band + panel_h + GAP) - GAP
    out = np.full((HEADER + rows_h, len(columns) * (panel_w + GAP) - GAP), 255, np.uint8)
    for row, name in enumerate(row_names):
        top = HEADER + row * (band + panel_h + GAP)
        _label(out[top : top + band], name, 0, out.shape[1], scale=0.5, centred=False)
    ratio = float(parts.get("mask_ratio", np.asarray(0.0)))
    labels = list(COLUMNS)
    labels[1] = f"masked ({100 * ratio:.0f}%)" if ratio else "masked"
    for col, (images, label) in enumerate(zip(columns, labels, strict=True)):
        left = col * (panel_w + GAP)
        _label(out[:HEADER], label, left, panel_w)
        for row in range(n):
            top = HEADER + row * (band + panel_h + GAP) + band
            panel = cv2.resize(images[row], (panel_w, panel_h), interpolation=cv2.INTER_NEAREST)
            out[top : top + panel_h, left : left + panel_w] = panel
    return out


def save_grid(
    model: nn.Module, images: torch.Tensor, path: Path, row_names: Sequence[str] = ()
) -> Path:
    """Write the reconstruction grid of uint8 images [N, 1, H, W] as a PNG (rows named by
    `row_names`, when given)."""
    path = Path(path)
    _check_png_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), grid_image(reconstruct(model, images), row_names)):
        raise OSError(f"could not write {path}; give a writable .png path")
    return path


def _check_png_path(path: Path) -> None:
    if path.suffix.lower() != ".png" or path.is_dir():
        raise VisualizeError(f"--out {path}: give the path of a .png file to write")


def load_image(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """Any 8/16-bit grey or colour image -> [1, 1, H, W] uint8: resize short side, centre crop."""
    path = Path(path)
    data = path.read_bytes()
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            image = decode_ir_png(data, max_pixels=200_000_000)
        else:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    except Exception as err:  # a damaged PNG fails inside the decoder
        raise VisualizeError(
            f"cannot decode {path} ({err}); give a {FORMATS} image"
        ) from err
    if image is None or image.size == 0:
        raise VisualizeError(f"cannot decode {path}; give a {FORMATS} image")
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


def image_files(paths: Sequence[Path | str]) -> list[Path]:
    """The images given: files as given, folders as their images in name order (all of them:
    the grid draws the first MAX_ROWS)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(p for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise VisualizeError(f"no image at {path}; give image files or a folder of images")
    if not files:
        raise VisualizeError(f"no image in {', '.join(map(str, paths))}; give {FORMATS} files")
    return files


def model_from_checkpoint(checkpoint_file: Path | str) -> tuple[nn.Module, dict]:
    """Rebuild the model a training checkpoint holds (weights_only loading)."""
    state = ckpt.load(checkpoint_file)
    return ckpt.model_from_state(state).eval(), state


def visualize_checkpoint(
    checkpoint_file: Path | str,
    image: Path | str | Sequence[Path | str],
    out: Path | str,
    device: str = "cpu",
) -> Path:
    """`inf590k visualize CKPT --image PATH [--image PATH ...] --out PNG`: a grid, one row per
    image (a folder gives its first images), MAX_ROWS rows at most."""
    paths = [image] if isinstance(image, (str, Path)) else list(image)
    files = image_files(paths)[:MAX_ROWS]
    _check_png_path(Path(out))
    model, _ = model_from_checkpoint(checkpoint_file)
    model.to(device)
    images = torch.cat([load_image(f, model.config.image_hw) for f in files])  # [N, 1, H, W]
    return save_grid(model, images, Path(out), [f.name for f in files])
