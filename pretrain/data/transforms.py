"""Decoding and augmentation of one sample: the PNG crop decoder's boxes, RandomResizedCrop
(bicubic, antialiased, as torchvision's interpolation=3) and the flip.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from pretrain.config import DataConfig
from pretrain.data.pngcrop import check_pixels, decode_box, decode_png, max_png_bytes, read_header

# Crops of at least this many pixels are resized by `resize_bicubic_packed` (faster there;
# below it torch's fixed cost per call dominates).
PACKED_RESIZE_PIXELS = 40_000


def decode_ir_png(data: bytes, max_pixels: int) -> np.ndarray:
    """PNG bytes -> [H, W] uint8 or uint16 (gray; colour PNGs are converted). The size is
    checked against `max_pixels` before anything is inflated."""
    return decode_png(data, max_pixels)


NPY_HEADER_BYTES = 64 * 1024  # a `.npy` member's header at most (numpy reads up to 10,000)


def member_size_limit(config: DataConfig) -> int:
    """The most bytes a tar member the loader reads may hold: a PNG (or, with --raw16, a raw
    16-bit `.npy` frame) of --max-pixels pixels cannot legitimately be larger, so a shard
    claiming more is refused before anything is read."""
    npy = 2 * config.max_pixels + NPY_HEADER_BYTES if config.raw16 else 0
    return max(max_png_bytes(config.max_pixels), npy)


def decode_raw_npy(data: bytes, max_pixels: int) -> np.ndarray:
    """A `.npy` member (the raw frame kept by `shard --keep-16bit`) -> [H, W] uint16, exactly."""
    image = np.load(io.BytesIO(data), allow_pickle=False)
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"npy member holds {image.dtype} {image.shape}, not a [H, W] frame")
    if image.size > max_pixels:
        raise ValueError(f"{image.shape[1]}x{image.shape[0]} exceeds the {max_pixels}-pixel cap")
    return image


def stretch_range(image: np.ndarray) -> tuple[float, float]:
    """0.5/99.5 percentiles of a 16-bit frame (on a strided view: same answer, 16x cheaper)."""
    view = image[::4, ::4]
    low, high = np.percentile(view, (0.5, 99.5))
    return float(low), float(max(high, low + 1.0))


def to_uint8(image: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (image.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) with torchvision's RandomResizedCrop.get_params rules.

    Hand-written because torchvision's draws from torch's global RNG; this one takes a
    per-sample generator, which makes the stream reproducible and resumable."""
    area = height * width
    log_ratio = (np.log(ratio[0]), np.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = np.exp(rng.uniform(*log_ratio))
        w = int(round(np.sqrt(target_area * aspect)))
        h = int(round(np.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height  # fallback: central crop at the clamped aspect ratio
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_bicubic(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[h, w] uint8 -> [H, W] uint8, bicubic with antialiasing: torchvision's resize with
    interpolation=3 (BICUBIC), as MAE, InfMAE and DuGI-MAE crop (PIL bicubic is the same
    filter). OpenCV's INTER_CUBIC would alias on downscaling, changing the crops' entropy.
    torch's kernel is called directly: torchvision's wrapper adds ~30% here, same pixels.
    Large crops go through `resize_bicubic_packed` (same pixels, ~1.7x faster)."""
    if image.shape[0] * image.shape[1] >= PACKED_RESIZE_PIXELS:
        return resize_bicubic_packed(image, size)
    tensor = torch.from_numpy(image)[None, None]  # [1, 1, h, w] view, no copy
    resized = torch.nn.functional.interpolate(
        tensor, size=size, mode="bicubic", antialias=True, align_corners=False
    )
    return resized[0, 0].numpy()


def _resize_columns(image: np.ndarray, rows: int) -> np.ndarray:
    """[h, w] uint8 with w % 4 == 0 -> [rows, w]: a vertical-only resize that treats each run
    of 4 columns as the channels of one pixel (a free view), where torch's uint8 kernel is
    fastest."""
    height, width = image.shape
    packed = torch.from_numpy(image).view(height, width // 4, 4).permute(2, 0, 1)[None]
    out = torch.nn.functional.interpolate(  # [1, 4, rows, w/4], planar memory
        packed, size=(rows, width // 4), mode="bicubic", antialias=True, align_corners=False
    )
    planes = out[0].numpy()  # [4, rows, w/4]
    return cv2.merge(list(planes)).reshape(rows, width)  # interleave: ~8x torch's permute copy


def resize_bicubic_packed(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`resize_bicubic`, pixel for pixel, as two vertical-only passes on 4-channel views.

    torch resizes a 1-channel uint8 image at ~1/4 of its per-pixel speed on 4-channel
    images (profiled). The separable filter runs horizontally first, then vertically, each
    rounded to uint8 as torch and PIL do; the horizontal pass is a vertical one on the
    transposed crop. Padding rows/columns up to a multiple of 4 are independent channels:
    they never mix with real pixels and are cut off."""
    out_h, out_w = size
    height, width = image.shape
    transposed = np.zeros((width, -(-height // 4) * 4), np.uint8)  # [w, h rounded up to 4]
    transposed[:, :height] = cv2.transpose(image)
    across = cv2.transpose(_resize_columns(transposed, out_w))[:height]  # [h, W]
    padded_w = -(-out_w // 4) * 4
    if padded_w != out_w:
        across = np.pad(across, ((0, 0), (0, padded_w - out_w)))
    return np.ascontiguousarray(_resize_columns(np.ascontiguousarray(across), out_h)[:, :out_w])


def crop_flip(
    image: np.ndarray, size: tuple[int, int], rng: np.random.Generator, config: DataConfig
) -> np.ndarray:
    """RandomResizedCrop (bicubic) + horizontal flip of a decoded frame -> [H, W] uint8.

    16-bit frames are stretched to 8 bits (range of the whole frame) before the resize."""
    top, left, h, w = crop_box(image.shape[0], image.shape[1], rng, config)
    crop = image[top : top + h, left : left + w]
    if crop.dtype == np.uint16:
        crop = to_uint8(crop, *stretch_range(image))
    return resize_flip(crop, size, rng, config)


def crop_box(
    height: int, width: int, rng: np.random.Generator, config: DataConfig
) -> tuple[int, int, int, int]:
    return random_resized_crop_box(height, width, rng, (config.scale_min, config.scale_max))


def resize_flip(
    crop: np.ndarray, size: tuple[int, int], rng: np.random.Generator, config: DataConfig
) -> np.ndarray:
    """[h, w] uint8 crop -> [H, W] uint8: the bicubic resize, then the flip draw."""
    out = resize_bicubic(crop, size)
    if rng.random() < config.hflip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def crop_png(
    data: bytes, size: tuple[int, int], rng: np.random.Generator, config: DataConfig
) -> np.ndarray:
    """PNG bytes -> RandomResizedCrop + flip [H, W] uint8, decoding only the crop's rows and
    columns (pretrain.data.pngcrop). The same pixels and draws as `crop_flip(decode_ir_png(...))`:
    the box comes from the header's size before anything is inflated. A 16-bit frame is
    decoded whole: its 8-bit stretch takes the range of the whole frame."""
    header = read_header(data)
    check_pixels(header, config.max_pixels)
    if header.bit_depth == 16:
        frame = decode_box(data, header, (0, 0, header.height, header.width))
        return crop_flip(frame, size, rng, config)
    crop = decode_box(data, header, crop_box(header.height, header.width, rng, config))
    return resize_flip(crop, size, rng, config)


def as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
