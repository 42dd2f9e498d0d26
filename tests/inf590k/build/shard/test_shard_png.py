"""The shards' PNG parameters: Up filter on every row, lossless, byte-identical re-runs."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from inf590k.build.shard.tar import encode_png

PNG_FILTER_UP = 2


def row_filters(png: bytes) -> set[int]:
    """The filter-type byte of every row of a non-interlaced 1-channel PNG."""
    pos, idat, width, depth = 8, b"", 0, 8
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        body = png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, _, depth = struct.unpack(">IIB", body[:9])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = 1 + width * depth // 8
    return {raw[i] for i in range(0, len(raw), stride)}


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_encode_png_is_up_filtered_lossless_and_deterministic(dtype) -> None:
    rng = np.random.default_rng(0)
    top = 255 if dtype == np.uint8 else 16383
    yy, xx = np.mgrid[0:64, 0:80]
    pixels = np.clip(xx * 2 + yy + rng.normal(0, 3, (64, 80)), 0, top).astype(dtype)
    png = encode_png(pixels, 1)
    assert row_filters(png) == {PNG_FILTER_UP}  # libpng's adaptive default mixes filters
    assert png == encode_png(pixels.copy(), 1)
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), -1), pixels)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), pixels)
