"""Fingerprints of an 8-bit view: sha256 of the pixels, imagehash pHash/dHash (of a Lanczos
thumbnail computed bit-identically to Pillow's, faster), global entropy.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import cv2
import imagehash
import numpy as np
from PIL import Image


@dataclass(frozen=True)
class ImageFingerprint:
    pixel_sha256: str
    phash: str  # 16 hex digits, imagehash's 64-bit pHash (DC term kept)
    dhash: str
    entropy: float  # bits, 256-bin histogram of the 8-bit view


PHASH_SIZE = 32  # imagehash's pHash: hash_size 8 x highfreq_factor 4


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
    passes = (
        ("down", "across") if _vertical_first(height, width, side, rule) else ("across", "down")
    )
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
        if all(
            np.array_equal(_exact_lanczos(p, PHASH_SIZE, rule), _pillow_thumb(p)) for p in probes
        ):
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
