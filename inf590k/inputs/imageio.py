"""Decode one image file once and derive everything the catalog needs from it.

The stored form of every image is one channel: 8-bit by default (16-bit sources are
stretched with a recorded policy), or the raw 16-bit pixels when the builder keeps them.
Hashes and entropy are always computed on the normalised 8-bit view, never on raw 16-bit
data (Pillow clips 16-bit to 8-bit in `convert('L')`, so every raw thermal frame would get
the same pHash).
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from dataclasses import dataclass, replace

import cv2
import numpy as np

from inf590k.inputs.headers import (
    DEFAULT_MAX_PIXELS,
    OPENCV_PIXEL_LIMIT,
    RejectedImage,
    check_before_decode,
)


@dataclass(frozen=True)
class ImagePolicy:
    """How a decoded file becomes a stored 1-channel image (one field per CLI option)."""

    stretch_low: float = 1.0  # percentile mapped to 0 when a 16-bit frame becomes 8-bit
    stretch_high: float = 99.0  # percentile mapped to 255
    min_side: int = 20  # reject when BOTH sides are shorter than this (after cropping)
    max_pixels: int = DEFAULT_MAX_PIXELS  # header check before decoding: decompression bombs
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
    note: str = ""  # kept with a remark (bytes after the end marker, more TIFF pages)

    @property
    def width(self) -> int:
        return int(self.view8.shape[1])

    @property
    def height(self) -> int:
        return int(self.view8.shape[0])


# ----------------------------------------------------------------------------- headers
#
# The size of every format OpenCV decodes is read here before decoding, the way OpenCV's
# decoder reads it (libjpeg, libpng behind OpenCV's own chunk reader, libtiff, OpenJPEG, and
# OpenCV's BMP, PxM, PAM, PFM, HDR, GIF and Sun raster readers). A header the decoder could
# read differently (a TIFF tag given twice, a JPEG marker the walk does not know, a JPEG 2000
# box out of place) is refused, never decoded on a guess. They are hand-written because no
# library offers OpenCV's reading of a header without decoding (cv2 has no header call, and
# Pillow reads several formats differently from OpenCV, which is what let headers lie).
#
# Each parser also bounds what decoding will allocate (`decode_bytes`): the frame OpenCV
# returns plus the decoder's own full-size buffers, from the sample size and count the header
# gives, or a conservative bytes-per-pixel figure where it gives none.


# --- PNG: OpenCV reads the chunks itself (allocating each one's declared length), then libpng


# --- JPEG: the marker walk of libjpeg(-turbo)'s read_markers, up to the first scan


# --- TIFF: the first image directory as libtiff reads it


# --- BMP and the other fixed binary headers OpenCV reads itself


# --- text headers: PxM, PAM, PFM (OpenCV's own tokenizers), Radiance HDR (fgets + sscanf)


# --- JPEG 2000: OpenJPEG takes the size from the codestream's SIZ marker


# --- the dispatch: the formats OpenCV decodes, by the signatures its decoders check



@functools.lru_cache(maxsize=1)
def _message_file() -> int:
    """A file descriptor that receives what libjpeg writes to stderr while decoding."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("libjpeg-messages")
    return os.dup(tempfile.TemporaryFile().fileno())


def _imdecode_reporting(data: bytes) -> tuple[np.ndarray | None, str]:
    """cv2.imdecode, and what the decoder library printed (libjpeg reports "Corrupt JPEG
    data" for bit flips and cut scans, yet returns an image)."""
    sink = _message_file()
    os.lseek(sink, 0, os.SEEK_SET)
    os.ftruncate(sink, 0)
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(sink, 2)
    try:
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    size = os.lseek(sink, 0, os.SEEK_CUR)
    messages = os.pread(sink, min(size, 4096), 0).decode("utf-8", "replace") if size else ""
    return array, messages


def decode_with_note(data: bytes, policy: ImagePolicy) -> tuple[np.ndarray, str]:
    """Decode with OpenCV, unchanged depth and channels: [H, W] or [H, W, C], and a note for
    the catalog ('' if none). The header is read first, for every format, the way the decoder
    will read it, and checked against the pixel cap and the decode byte limit
    (`check_before_decode`); a header that cannot be read so is not decoded."""
    info, note = check_before_decode(data, policy.max_pixels)
    if info.format == "JPEG":
        array, messages = _imdecode_reporting(data)
        corrupt = next((line for line in messages.splitlines() if "Corrupt JPEG data" in line), "")
        if corrupt:
            raise RejectedImage(f"corrupt JPEG ({corrupt.strip()})")
    else:
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.size == 0:
        limit = int(os.environ.get(OPENCV_PIXEL_LIMIT, DEFAULT_MAX_PIXELS))
        if info.pixels > limit:
            raise RejectedImage(
                f"{info.width}x{info.height} pixels exceed OpenCV's limit {OPENCV_PIXEL_LIMIT}={limit}: "
                "set it in the environment"
            )
        raise RejectedImage("not a decodable image (corrupt, truncated or wrong format)")
    if array.shape[0] * array.shape[1] > policy.max_pixels:
        raise RejectedImage(f"decompression bomb: {array.shape[1]}x{array.shape[0]} pixels")
    return array, note


def decode(data: bytes, policy: ImagePolicy) -> np.ndarray:
    """Decode with OpenCV, unchanged depth and channels: [H, W] or [H, W, C]."""
    return decode_with_note(data, policy)[0]


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


def crop_borders(
    grey: np.ndarray, policy: ImagePolicy
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
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
            raise RejectedImage("constant image (every pixel is 0: a blank image)")
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
        values = grey.astype(np.float64)  # our own copy: partitioned in place, not copied again
        low, high = np.percentile(
            values, [policy.stretch_low, policy.stretch_high], overwrite_input=True
        )
    span = max(float(high) - float(low), 1e-9)
    scaled = (grey.astype(np.float32) - np.float32(low)) * np.float32(255.0 / span)
    view = np.clip(scaled + 0.5, 0, 255).astype(np.uint8)
    return view, f"p{policy.stretch_low:g}-p{policy.stretch_high:g} stretch {low:g}..{high:g}"


def process_image_bytes(data: bytes, policy: ImagePolicy) -> ProcessedImage:
    """One decode: grey check, border crop, 8-bit view; raises RejectedImage with a reason."""
    array, note = decode_with_note(data, policy)
    processed = process_array(array, policy)
    return replace(processed, note=note) if note else processed


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
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise RejectedImage("non-finite pixel values (NaN or Inf)")
    array = supported_dtype(array)
    grey, spread = to_grey(array, policy)
    cropped, crop_box = crop_borders(grey, policy)
    height, width = cropped.shape
    if height < policy.min_side and width < policy.min_side:
        raise RejectedImage(f"too small ({width}x{height}: both sides < {policy.min_side} px)")
    low, high, _, _ = cv2.minMaxLoc(cropped)
    if low == high:  # stretched, it would be stored all black
        blank = ": a blank image" if low == 0 else ""
        raise RejectedImage(f"constant image (every pixel is {low:g}{blank})")
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


