"""Decode one image file once and derive everything the catalog needs from it.

The stored form of every image is one channel: 8-bit by default (16-bit sources are
stretched with a recorded policy), or the raw 16-bit pixels when the builder keeps them.
Hashes and entropy are always computed on the normalised 8-bit view, never on raw 16-bit
data (Pillow clips 16-bit to 8-bit in `convert('L')`, so every raw thermal frame would get
the same pHash).
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
from dataclasses import dataclass

import cv2
import imagehash
import numpy as np
from PIL import Image

JPEG_SIGNATURE = b"\xff\xd8"
JPEG_END = b"\xff\xd9"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class RejectedImage(Exception):
    """The file is an IR candidate that cannot be used; the message is the catalog reason."""


@dataclass(frozen=True)
class ImagePolicy:
    """How a decoded file becomes a stored 1-channel image (one field per CLI option)."""

    stretch_low: float = 1.0  # percentile mapped to 0 when a 16-bit frame becomes 8-bit
    stretch_high: float = 99.0  # percentile mapped to 255
    min_side: int = 20  # reject when BOTH sides are shorter than this (after cropping)
    max_pixels: int = 100_000_000  # header check before decoding: decompression bombs
    max_file_bytes: int = 256 << 20  # larger files and archive members are rejected unread
    grey_tolerance: float = 16.0  # mean per-pixel channel spread (8-bit levels) still "grey"
    allow_colour: bool = False  # keep true-colour files (converted to grey) instead of rejecting
    crop_zero_borders: bool = True
    border_width: int = 0  # a fixed frame cut from each side first (manifest `border`)


@dataclass(frozen=True)
class ProcessedImage:
    pixels: np.ndarray  # [H, W] uint8, or uint16 for 16-bit sources: the cropped grey frame
    view8: np.ndarray  # [H, W] uint8: the normalised view that is hashed and stored by default
    orig_width: int
    orig_height: int
    orig_channels: int
    orig_dtype: str
    bit_depth: int
    grey_diff: float  # mean channel spread of 3-channel files, 0 for 1-channel ones
    normalisation: str
    crop_box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the original frame

    @property
    def width(self) -> int:
        return int(self.view8.shape[1])

    @property
    def height(self) -> int:
        return int(self.view8.shape[0])


@dataclass(frozen=True)
class ImageFingerprint:
    pixel_sha256: str
    phash: str  # 16 hex digits, imagehash's 64-bit pHash (DC term kept)
    dhash: str
    entropy: float  # bits, 256-bin histogram of the 8-bit view


PHASH_SIZE = 32  # imagehash's pHash: hash_size 8 x highfreq_factor 4


def png_header_size(data: bytes) -> tuple[int, int] | None:
    if data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    return None


def jpeg_header_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the first start-of-frame marker of a JPEG."""
    offset, end = 2, len(data)
    while offset + 9 < end:
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = int.from_bytes(data[offset + 5 : offset + 7], "big")
            width = int.from_bytes(data[offset + 7 : offset + 9], "big")
            return width, height
        offset += 2 + length
    return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the file header without decoding pixels; None if unknown.

    PNG and JPEG headers are parsed directly (microseconds); other formats through Pillow's
    lazy open.
    """
    if data.startswith(PNG_SIGNATURE):
        return png_header_size(data)
    if data.startswith(JPEG_SIGNATURE):
        size = jpeg_header_size(data)
        if size is not None:
            return size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Image.DecompressionBombError as err:
        raise RejectedImage(f"decompression bomb ({err})") from err
    except Exception:  # noqa: BLE001 - Pillow raises many types; OpenCV gets its own try
        return None


def check_complete(data: bytes) -> None:
    """Reject files whose end is missing: OpenCV silently grey-fills truncated JPEGs."""
    if not data:
        raise RejectedImage("empty file (0 bytes)")
    if data.startswith(JPEG_SIGNATURE) and JPEG_END not in data[-4096:]:
        raise RejectedImage("truncated JPEG (no end-of-image marker)")
    if data.startswith(PNG_SIGNATURE) and b"IEND" not in data[-64:]:
        raise RejectedImage("truncated PNG (no IEND chunk)")


def decode(data: bytes, policy: ImagePolicy) -> np.ndarray:
    """Decode with OpenCV, unchanged depth and channels: [H, W] or [H, W, C]."""
    check_complete(data)
    size = header_size(data)
    if size is not None and size[0] * size[1] > policy.max_pixels:
        raise RejectedImage(
            f"decompression bomb: header says {size[0]}x{size[1]} "
            f"> {policy.max_pixels} pixels (raise --max-pixels to allow)"
        )
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.size == 0:
        raise RejectedImage("not a decodable image (corrupt, truncated or wrong format)")
    if array.shape[0] * array.shape[1] > policy.max_pixels:
        raise RejectedImage(f"decompression bomb: {array.shape[1]}x{array.shape[0]} pixels")
    return array


def channel_spread(bgr: np.ndarray) -> float:
    """Mean over pixels of (max - min) across channels, in 8-bit levels (subsampled)."""
    sample = bgr[::4, ::4]
    spread = sample.max(axis=2).astype(np.float32) - sample.min(axis=2)
    scale = 255.0 / 65535.0 if bgr.dtype == np.uint16 else 1.0
    return float(spread.mean()) * scale


def to_grey(array: np.ndarray, policy: ImagePolicy) -> tuple[np.ndarray, float]:
    """One channel from 1, 2 (grey + alpha), 3 or 4 (BGRA) channels; rejects true colour."""
    if array.ndim == 2:
        return array, 0.0
    channels = array.shape[2]
    if channels == 1:
        return array[:, :, 0], 0.0
    if channels == 2:  # grey + alpha
        return array[:, :, 0], 0.0
    bgr = array[:, :, :3]
    spread = channel_spread(bgr)
    if spread > policy.grey_tolerance and not policy.allow_colour:
        raise RejectedImage(
            f"colour image (mean channel spread {spread:.1f} > {policy.grey_tolerance:g} levels)"
        )
    return cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2GRAY), spread


def has_zero_edge(grey: np.ndarray) -> bool:
    """Whether an outer row or column is entirely zero (the usual case is a cheap no)."""
    return not (grey[0].any() and grey[-1].any() and grey[:, 0].any() and grey[:, -1].any())


def crop_borders(grey: np.ndarray, policy: ImagePolicy) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Cut the manifest's fixed frame, then rows/columns that are entirely zero at the edges."""
    height, width = grey.shape
    b = policy.border_width
    if b and (width <= 2 * b or height <= 2 * b):
        raise RejectedImage(f"smaller ({width}x{height}) than its {b}-px border")
    x0, y0, x1, y1 = b, b, width - b, height - b
    if policy.crop_zero_borders and has_zero_edge(grey[y0:y1, x0:x1]):
        inner = grey[y0:y1, x0:x1]
        rows = np.flatnonzero(inner.max(axis=1))
        cols = np.flatnonzero(inner.max(axis=0))
        if rows.size == 0:
            raise RejectedImage("blank image (all pixels zero)")
        y0, y1 = y0 + int(rows[0]), y0 + int(rows[-1]) + 1
        x0, x1 = x0 + int(cols[0]), x0 + int(cols[-1]) + 1
    return grey[y0:y1, x0:x1], (x0, y0, x1, y1)


def stretch_to_8bit(grey: np.ndarray, policy: ImagePolicy) -> tuple[np.ndarray, str]:
    """The 8-bit view: unchanged for uint8, percentile stretch for deeper data."""
    if grey.dtype == np.uint8:
        return grey, "none"
    if grey.dtype == np.uint16:
        counts = np.bincount(grey.ravel(), minlength=65536)
        cdf = np.cumsum(counts) / grey.size
        low = int(np.searchsorted(cdf, policy.stretch_low / 100.0))
        high = int(np.searchsorted(cdf, policy.stretch_high / 100.0))
    else:
        values = grey.astype(np.float64)
        low, high = np.percentile(values, [policy.stretch_low, policy.stretch_high])
    span = max(float(high) - float(low), 1e-9)
    scaled = (grey.astype(np.float32) - np.float32(low)) * np.float32(255.0 / span)
    view = np.clip(scaled + 0.5, 0, 255).astype(np.uint8)
    return view, f"p{policy.stretch_low:g}-p{policy.stretch_high:g} stretch {low:g}..{high:g}"


def process_image_bytes(data: bytes, policy: ImagePolicy) -> ProcessedImage:
    """One decode: grey check, border crop, 8-bit view; raises RejectedImage with a reason."""
    return process_array(decode(data, policy), policy)


def supported_dtype(array: np.ndarray) -> np.ndarray:
    """uint8, uint16 and float32 stay; other depths (int16, float64, ...) become float32,
    which OpenCV's colour conversion and the percentile stretch both take."""
    if array.dtype in (np.uint8, np.uint16, np.float32):
        return array
    return array.astype(np.float32)


def process_array(array: np.ndarray, policy: ImagePolicy) -> ProcessedImage:
    """A decoded frame ([H, W] or [H, W, C], OpenCV channel order) to its stored form."""
    orig_height, orig_width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    dtype = array.dtype
    array = supported_dtype(array)
    grey, spread = to_grey(array, policy)
    cropped, crop_box = crop_borders(grey, policy)
    height, width = cropped.shape
    if height < policy.min_side and width < policy.min_side:
        raise RejectedImage(f"too small ({width}x{height}: both sides < {policy.min_side} px)")
    view8, normalisation = stretch_to_8bit(cropped, policy)
    pixels = cropped if cropped.dtype == np.uint16 else view8
    return ProcessedImage(
        pixels=np.ascontiguousarray(pixels),
        view8=np.ascontiguousarray(view8),
        orig_width=int(orig_width),
        orig_height=int(orig_height),
        orig_channels=int(channels),
        orig_dtype=str(dtype),
        bit_depth=int(np.dtype(dtype).itemsize * 8),
        grey_diff=float(spread),
        normalisation=normalisation,
        crop_box=crop_box,
    )


def entropy_bits(view8: np.ndarray) -> float:
    """Shannon entropy of the 256-bin intensity histogram, in bits."""
    counts = cv2.calcHist([view8], [0], None, [256], [0, 256]).ravel()
    p = counts[counts > 0] / view8.size
    return float(-(p * np.log2(p)).sum())


def pixel_digest(view8: np.ndarray) -> str:
    """sha256 of the stored 8-bit pixels, with the shape so a reshaped copy differs."""
    digest = hashlib.sha256(f"{view8.shape[0]}x{view8.shape[1]}:".encode())
    digest.update(np.ascontiguousarray(view8).data)
    return digest.hexdigest()


def hash_hex(image_hash: imagehash.ImageHash) -> str:
    """The same 16 hex digits as str(image_hash), without imagehash's per-bit Python loop."""
    return np.packbits(image_hash.hash.ravel()).tobytes().hex()


def fingerprint(view8: np.ndarray) -> ImageFingerprint:
    """pHash and dHash (imagehash) and entropy of the 8-bit view.

    Both hashes start from one Pillow LANCZOS reduction to 32x32, the first step of
    imagehash's pHash: pHash of that 32x32 image equals pHash of the full view bit for bit
    (Pillow returns a same-size resize as a copy), and dHash is taken of it too, which spares
    a second full-frame LANCZOS pass (a third of the hashing time).
    """
    thumb = Image.fromarray(view8).resize((PHASH_SIZE, PHASH_SIZE), Image.Resampling.LANCZOS)
    return ImageFingerprint(
        pixel_sha256=pixel_digest(view8),
        phash=hash_hex(imagehash.phash(thumb)),
        dhash=hash_hex(imagehash.dhash(thumb)),
        entropy=entropy_bits(view8),
    )
