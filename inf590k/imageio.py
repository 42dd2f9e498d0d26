"""Decode one image file once and derive everything the catalog needs from it.

The stored form of every image is one channel: 8-bit by default (16-bit sources are
stretched with a recorded policy), or the raw 16-bit pixels when the builder keeps them.
Hashes and entropy are always computed on the normalised 8-bit view, never on raw 16-bit
data (Pillow clips 16-bit to 8-bit in `convert('L')`, so every raw thermal frame would get
the same pHash).
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import struct
import sys
import tempfile
import warnings
from dataclasses import dataclass, replace

DEFAULT_MAX_PIXELS = 100_000_000
OPENCV_PIXEL_LIMIT = "OPENCV_IO_MAX_IMAGE_PIXELS"
# OpenCV's own decoder limit, a backstop behind the header check; it is read when cv2 is
# imported, so it must be in the environment first (ingest raises it for its workers when
# --max-pixels is higher).
os.environ.setdefault(OPENCV_PIXEL_LIMIT, str(DEFAULT_MAX_PIXELS))

import cv2  # noqa: E402
import imagehash  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

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


@dataclass(frozen=True)
class HeaderInfo:
    """What a file header says before any pixel is decoded."""

    format: str
    width: int
    height: int
    pages: int = 1  # images in the file (multi-page TIFF); the first one is used


def _be(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset : offset + size], "big")


def _le(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset : offset + size], "little")


def tiff_header(data: bytes) -> HeaderInfo | None:
    """Width and height of the first page (tags 256/257) and the page count (IFD chain);
    classic and BigTIFF, either byte order, any compression, strips or tiles."""
    order = "little" if data[:2] == b"II" else "big"
    word = lambda offset, size: int.from_bytes(data[offset : offset + size], order)  # noqa: E731
    big = word(2, 2) == 43
    if big:
        entry_size, count_size, offset_size, first = 20, 8, 8, word(8, 8)
    else:
        entry_size, count_size, offset_size, first = 12, 2, 4, word(4, 4)
    value_offset = 4 + offset_size  # tag(2) + type(2) + count(4 or 8), then the value
    width = height = 0
    pages, offset, seen = 0, first, set()
    while 0 < offset < len(data) and offset not in seen and pages < 100_000:
        seen.add(offset)
        entries = word(offset, count_size)
        start = offset + count_size
        if pages == 0:
            for i in range(entries):
                entry = start + i * entry_size
                tag, kind = word(entry, 2), word(entry + 2, 2)
                if tag in (256, 257):
                    value = word(entry + value_offset, 2 if kind == 3 else (8 if kind == 16 else 4))
                    width, height = (value, height) if tag == 256 else (width, value)
        pages += 1
        offset = word(start + entries * entry_size, offset_size)
    if not (width and height):
        return None
    return HeaderInfo("TIFF", width, height, pages)


def _tokens(text: bytes) -> list[bytes]:
    """Whitespace-separated header fields with #-comments removed (PNM, PFM)."""
    lines = [line.split(b"#", 1)[0] for line in text.split(b"\n")]
    return b" ".join(lines).split()


def netpbm_header(data: bytes) -> HeaderInfo | None:
    """P1-P6 (PBM/PGM/PPM), P7 (PAM: WIDTH/HEIGHT lines), PF/Pf (PFM)."""
    head = data[:1024]
    if head[:2] == b"P7":
        fields = _tokens(head.split(b"ENDHDR", 1)[0])
        named = {fields[i]: fields[i + 1] for i in range(1, len(fields) - 1)}
        try:
            return HeaderInfo("PAM", int(named[b"WIDTH"]), int(named[b"HEIGHT"]))
        except (KeyError, ValueError):
            return None
    fields = _tokens(head)
    try:
        return HeaderInfo(fields[0].decode(), int(fields[1]), int(fields[2]))
    except (IndexError, ValueError, UnicodeDecodeError):
        return None


def radiance_header(data: bytes) -> HeaderInfo | None:
    """Radiance HDR: text lines up to an empty one, then e.g. `-Y 512 +X 640`."""
    head = data[:65536]
    end = head.find(b"\n\n")
    if end < 0:
        return None
    fields = head[end + 2 :].split(b"\n", 1)[0].split()
    if len(fields) != 4:
        return None
    try:
        first, second = int(fields[1]), int(fields[3])
    except ValueError:
        return None
    width, height = (second, first) if fields[0][1:] == b"Y" else (first, second)
    return HeaderInfo("Radiance HDR", width, height)


def exr_header(data: bytes) -> HeaderInfo | None:
    """OpenEXR: attributes (name, type, size, value) up to an empty name; `dataWindow`."""
    offset = 8
    while offset < min(len(data), 1 << 20):
        name_end = data.find(b"\0", offset)
        if name_end <= offset:
            return None
        type_end = data.find(b"\0", name_end + 1)
        size = _le(data, type_end + 1, 4)
        value = type_end + 5
        if data[offset:name_end] == b"dataWindow" and size == 16:
            x0, y0, x1, y1 = struct.unpack("<iiii", data[value : value + 16])
            return HeaderInfo("OpenEXR", x1 - x0 + 1, y1 - y0 + 1)
        offset = value + size
    return None


def webp_header(data: bytes) -> HeaderInfo | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        return HeaderInfo("WebP", _le(data, 24, 3) + 1, _le(data, 27, 3) + 1)
    if chunk == b"VP8L":
        bits = _le(data, 21, 4)
        return HeaderInfo("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8 ":
        return HeaderInfo("WebP", _le(data, 26, 2) & 0x3FFF, _le(data, 28, 2) & 0x3FFF)
    return None


def jpeg2000_header(data: bytes) -> HeaderInfo | None:
    if data.startswith(b"\xff\x4f\xff\x51"):  # raw codestream: SIZ marker segment
        width, height = _be(data, 8, 4) - _be(data, 16, 4), _be(data, 12, 4) - _be(data, 20, 4)
        return HeaderInfo("JPEG 2000", width, height)
    at = data.find(b"ihdr", 0, 4096)
    if at < 0:
        return None
    return HeaderInfo("JPEG 2000", _be(data, at + 8, 4), _be(data, at + 4, 4))


def header_info(data: bytes) -> HeaderInfo | None:
    """Format and size from the header of every format OpenCV decodes; None if unknown."""
    if data.startswith(PNG_SIGNATURE):
        size = png_header_size(data)
        return HeaderInfo("PNG", *size) if size else None
    if data.startswith(JPEG_SIGNATURE):
        size = jpeg_header_size(data)
        return HeaderInfo("JPEG", *size) if size else None
    if data[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return tiff_header(data)
    if data.startswith(b"BM") and len(data) >= 26:
        return HeaderInfo("BMP", abs(struct.unpack("<i", data[18:22])[0]), abs(struct.unpack("<i", data[22:26])[0]))
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return webp_header(data)
    if data[:1] == b"P" and data[1:2] in b"1234567Ff":
        return netpbm_header(data)
    if data.startswith((b"#?RADIANCE", b"#?RGBE")):
        return radiance_header(data)
    if data.startswith(b"\x76\x2f\x31\x01"):
        return exr_header(data)
    if data.startswith(b"\x00\x00\x00\x0cjP  ") or data.startswith(b"\xff\x4f\xff\x51"):
        return jpeg2000_header(data)
    if data.startswith((b"GIF87a", b"GIF89a")):
        return HeaderInfo("GIF", _le(data, 6, 2), _le(data, 8, 2))
    if data.startswith(b"\x59\xa6\x6a\x95"):
        return HeaderInfo("Sun raster", _be(data, 4, 4), _be(data, 8, 4))
    return None  # the caller asks Pillow once (also for headers the parsers above cannot read)


def _pillow_header(data: bytes) -> HeaderInfo | None:
    """Formats parsed above are the ones OpenCV reads; Pillow's lazy open covers the rest."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return HeaderInfo(image.format or "image", *image.size, getattr(image, "n_frames", 1))
    except Image.DecompressionBombError as err:
        raise RejectedImage(f"decompression bomb ({err})") from err
    except Exception:  # noqa: BLE001 - Pillow raises many types for what it cannot read
        return None


def jpeg_end(data: bytes) -> int:
    """Offset just past the end-of-image marker, or -1 if the file is cut before it.

    The segments before the first scan are skipped by their lengths (an EXIF thumbnail holds
    an end marker of its own); inside entropy-coded data 0xFFD9 can only be the real end.
    """
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return -1
        marker = data[offset + 1]
        if marker == 0xFF:
            offset += 1
            continue
        if marker == 0xDA:  # start of scan
            end = data.find(JPEG_END, offset)
            return end + 2 if end >= 0 else -1
        offset += 2 + _be(data, offset + 2, 2)
    return -1


def png_end(data: bytes) -> int:
    """Offset just past the IEND chunk, or -1 if the chunk chain runs off the end."""
    offset = len(PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length, kind = _be(data, offset, 4), data[offset + 4 : offset + 8]
        offset += 12 + length
        if kind == b"IEND":
            return offset if offset <= len(data) else -1
    return -1


def check_complete(data: bytes) -> str:
    """Reject files whose end is missing (OpenCV silently grey-fills truncated JPEGs); bytes
    after a complete JPEG/PNG are ignored, and the returned note says so ('' if none)."""
    if not data:
        raise RejectedImage("empty file (0 bytes)")
    if data.startswith(JPEG_SIGNATURE):
        end, name = jpeg_end(data), "JPEG end-of-image marker"
        if end < 0:
            raise RejectedImage("truncated JPEG (no end-of-image marker)")
    elif data.startswith(PNG_SIGNATURE):
        end, name = png_end(data), "PNG IEND chunk"
        if end < 0:
            raise RejectedImage("truncated PNG (no IEND chunk)")
    else:
        return ""
    extra = len(data) - end
    return f"note: {extra} bytes after the {name} ignored" if extra else ""


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
    the catalog ('' if none). The size is read from the header and checked against the pixel
    cap first, for every format; a format whose size cannot be read is not decoded."""
    note = check_complete(data)
    info = header_info(data) or _pillow_header(data)
    if info is None:
        raise RejectedImage(
            "not a decodable image (unknown format: its size cannot be read before decoding)"
        )
    if info.width * info.height > policy.max_pixels:
        raise RejectedImage(
            f"decompression bomb: {info.format} header says {info.width}x{info.height} "
            f"> {policy.max_pixels} pixels (raise --max-pixels to allow)"
        )
    if info.pages > 1:
        pages = f"note: multi-page {info.format}, first of {info.pages} pages kept"
        note = f"{note}; {pages}" if note else pages
    if info.format == "JPEG":
        array, messages = _imdecode_reporting(data)
        corrupt = next((line for line in messages.splitlines() if "Corrupt JPEG data" in line), "")
        if corrupt:
            raise RejectedImage(f"corrupt JPEG ({corrupt.strip()})")
    else:
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.size == 0:
        limit = int(os.environ.get(OPENCV_PIXEL_LIMIT, DEFAULT_MAX_PIXELS))
        if info.width * info.height > limit:
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
        values = grey.astype(np.float64)
        low, high = np.percentile(values, [policy.stretch_low, policy.stretch_high])
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


# Pillow's LANCZOS reduction of an 8-bit image, as two matrix products. Pillow rounds each
# coefficient to a fixed-point integer and sums uint8 x integer products in int32; in float64
# every such product and partial sum is an integer below 2**53, so a float64 product gives the
# same sums exactly, in any order, and the same rounding gives the same pixels. The products
# go to numpy's BLAS in row blocks small enough that it stays on one thread (a pool worker is
# one core; OpenCV's gemm would use a BLAS thread pool that cv2.setNumThreads does not limit).
LANCZOS_PRECISION_BITS = 22  # Pillow's PRECISION_BITS for 8-bit images: 32 - 8 - 2
LANCZOS_SUPPORT = 3.0
EXACT_RESIZE_MAX_PIXELS = 1 << 22  # larger views go to Pillow (the float64 copy: 8 bytes/pixel)
# multiply-adds per BLAS call: OpenBLAS runs a product under 4 x 65536 on the calling thread
SINGLE_THREAD_PRODUCT = 1 << 17


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3) if -LANCZOS_SUPPORT <= x < LANCZOS_SUPPORT else 0.0


@functools.lru_cache(maxsize=64)
def lanczos_weights(in_size: int, out_size: int) -> np.ndarray:
    """[in_size, out_size] float64: Pillow's fixed-point LANCZOS coefficients (its
    precompute_coeffs + normalize_coeffs_8bpc, same float operations in the same order)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = LANCZOS_SUPPORT * filterscale
    inverse = 1.0 / filterscale
    unit = 1 << LANCZOS_PRECISION_BITS
    weights = np.zeros((in_size, out_size), np.float64)
    for out in range(out_size):
        center = (out + 0.5) * scale
        first = max(int(center - support + 0.5), 0)
        count = min(int(center + support + 0.5), in_size) - first
        taps = [_lanczos((x + first - center + 0.5) * inverse) for x in range(count)]
        total = 0.0
        for tap in taps:  # sequential, as Pillow sums them
            total += tap
        for x, tap in enumerate(taps):
            k = tap / total if total != 0.0 else tap
            weights[first + x, out] = int(-0.5 + k * unit) if k < 0 else int(0.5 + k * unit)
    return weights


def _to_uint8_levels(sums: np.ndarray) -> np.ndarray:
    """Pillow's clip8: add half, shift right by the precision bits, clamp to 0..255."""
    half = 1 << (LANCZOS_PRECISION_BITS - 1)
    return np.clip(np.floor((sums + half) * (1.0 / (1 << LANCZOS_PRECISION_BITS))), 0, 255)


def _vertical_first(height: int, width: int, side: int, rule: str) -> bool:
    """Which pass Pillow runs first. Pillow >= 13 runs the vertical pass first when the height
    shrinks by more than twice as many rows as the width loses columns; older ones never do."""
    return rule == "pillow13" and height - side > 0 and height - side > (width - side) * 2


def _exact_lanczos(view8: np.ndarray, side: int, rule: str) -> np.ndarray:
    """[side, side] uint8, Pillow's `resize((side, side), LANCZOS)` of a 2-D uint8 array."""
    height, width = view8.shape
    pixels = view8.astype(np.float64)
    across = lanczos_weights(width, side) if width != side else None
    down = lanczos_weights(height, side) if height != side else None
    passes = ("down", "across") if _vertical_first(height, width, side, rule) else ("across", "down")
    for name in passes:
        if name == "across" and across is not None:
            pixels = _to_uint8_levels(_one_thread_product(pixels, across))
        elif name == "down" and down is not None:
            pixels = _to_uint8_levels(_one_thread_product(pixels.T, down).T)
    return pixels.astype(np.uint8)


def _one_thread_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b, in blocks of rows of `a` small enough for BLAS to keep to the calling thread."""
    rows = max(1, SINGLE_THREAD_PRODUCT // (a.shape[1] * b.shape[1]))
    if rows >= a.shape[0]:
        return a @ b
    return np.concatenate([a[i : i + rows] @ b for i in range(0, a.shape[0], rows)])


def _pillow_thumb(view8: np.ndarray) -> np.ndarray:
    resized = Image.fromarray(view8).resize((PHASH_SIZE, PHASH_SIZE), Image.Resampling.LANCZOS)
    return np.asarray(resized)


# Shapes on which the two pass orders give different pixels: one (and only one) rule matches
# the installed Pillow on both (height > 2x width reduction, then the reverse).
_RULE_PROBES = ((300, 100), (100, 300), (1300, 640), (512, 640))


@functools.lru_cache(maxsize=1)
def exact_resize_rule() -> str:
    """The installed Pillow's pass order ("pillow13" or "horizontal"), checked once per
    process on noise images; "" when neither reproduces it (every view then goes to Pillow)."""
    rng = np.random.default_rng(0)
    probes = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in _RULE_PROBES]
    for rule in ("pillow13", "horizontal"):
        if all(np.array_equal(_exact_lanczos(p, PHASH_SIZE, rule), _pillow_thumb(p)) for p in probes):
            return rule
    return ""


def phash_thumbnail(view8: np.ndarray) -> Image.Image:
    """The 32x32 LANCZOS reduction imagehash's pHash starts from, bit-identical to Pillow's."""
    rule = exact_resize_rule() if view8.ndim == 2 and view8.size <= EXACT_RESIZE_MAX_PIXELS else ""
    thumb = _exact_lanczos(view8, PHASH_SIZE, rule) if rule else _pillow_thumb(view8)
    return Image.fromarray(thumb)


def fingerprint(view8: np.ndarray) -> ImageFingerprint:
    """pHash and dHash (imagehash) and entropy of the 8-bit view.

    Both hashes start from one LANCZOS reduction to 32x32, the first step of imagehash's
    pHash: pHash of that 32x32 image equals pHash of the full view bit for bit (Pillow returns
    a same-size resize as a copy), and dHash is taken of it too, which spares a second
    full-frame LANCZOS pass. The reduction itself is Pillow's, computed as matrix products
    (`phash_thumbnail`).
    """
    thumb = phash_thumbnail(view8)
    return ImageFingerprint(
        pixel_sha256=pixel_digest(view8),
        phash=hash_hex(imagehash.phash(thumb)),
        dhash=hash_hex(imagehash.dhash(thumb)),
        entropy=entropy_bits(view8),
    )
