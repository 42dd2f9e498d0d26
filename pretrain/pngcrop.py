"""Decode only the crop of a PNG that the loader will use.

A random-resized crop keeps 20-100% of a frame, yet libpng (OpenCV, Pillow, torchvision) must
inflate and unfilter every row. The shard writer puts the Up filter on every row
(docs/png-parameters.md), so a pixel is the byte-wise sum, mod 256, of its filtered column down
to it. This decoder therefore
- inflates the zlib stream only down to the crop's last row (ISA-L: ~2.3x zlib here),
- sums the rows above the crop in one reduction, restricted to the crop's columns,
- accumulates the crop's rows (a cumulative sum down the columns).
The pixels are the ones libpng gives, bit for bit (tests compare them with `cv2.imdecode`).

Any PNG it does not handle (another filter on some row, interlacing, colour, palette,
transparency, bit depths other than 8 and 16, unknown critical chunks) is decoded whole by
OpenCV and then cropped, so every standard PNG still reads. Every chunk it uses is
CRC-checked and the chunk layout checked as libpng does, so a file libpng refuses is refused
whatever the crop. One exception: a stream that holds fewer rows than its header says (with
right CRCs: a writer's fault, not damage) fails only when a crop reaches the missing rows;
`inf590k verify` decodes every sample whole and reports it.

Hand-written because no PNG decoder with a Python binding (OpenCV, Pillow, pyspng,
imagecodecs, torchvision) stops at a row or skips columns; the inflate itself is ISA-L's
(python-isal), zlib's where it is missing.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

try:  # ISA-L's inflate: same streams, ~2.3x zlib's speed on the shards' PNGs
    from isal import isal_zlib as inflate_lib
except ImportError:  # pragma: no cover - python-isal is a dependency; zlib is the fallback
    inflate_lib = zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILTER_NONE, FILTER_UP = 0, 2
GREY = 0  # IHDR colour type of a grey image without alpha
BLOCK_ELEMENTS = 100_000  # bytes accumulated per cumsum call (see _sum_rows)

Box = tuple[int, int, int, int]  # (top, left, height, width) in pixels


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlaced: bool
    idat: tuple[memoryview, ...]  # the IDAT chunks' data, CRC-checked, in order
    has_transparency: bool  # a tRNS chunk: OpenCV adds an alpha channel
    unknown_critical: bool  # a critical chunk other than IHDR, PLTE, IDAT, IEND

    @property
    def fast(self) -> bool:
        """Grey 8/16-bit, not interlaced, opaque, only known critical chunks: rows the crop
        decoder can sum."""
        return (
            self.colour_type == GREY
            and self.bit_depth in (8, 16)
            and not self.interlaced
            and not self.has_transparency
            and not self.unknown_critical
        )

    @property
    def bytes_per_pixel(self) -> int:
        return self.bit_depth // 8


def _checked(data: memoryview, start: int, length: int, kind: bytes) -> memoryview:
    """A chunk's data after checking its CRC (over type + data)."""
    end = start + 8 + length
    if end + 4 > len(data):
        raise ValueError(
            f"could not decode the PNG: cut short in its {kind.decode('latin-1')} chunk"
        )
    body = data[start + 4 : end]
    (crc,) = struct.unpack(">I", data[end : end + 4])
    if inflate_lib.crc32(body) & 0xFFFFFFFF != crc:
        raise ValueError(
            f"could not decode the PNG: its {kind.decode('latin-1')} chunk fails its CRC (damaged)"
        )
    return data[start + 8 : end]


def read_header(data: bytes) -> PngHeader:
    """IHDR fields and the IDAT chunks of a PNG, without inflating anything.

    The chunk layout is checked as libpng checks it (IHDR first, IDAT chunks consecutive,
    an IEND, methods 0), so a file libpng refuses is refused here whatever the crop. A PNG
    with a critical chunk this decoder does not know is left to OpenCV (`unknown_critical`).
    """
    if len(data) < 33 or data[:8] != PNG_SIGNATURE:
        raise ValueError("not a PNG")
    view = memoryview(data)
    position, ihdr, idat, transparency, unknown, ended = 8, None, [], False, False, False
    previous = b""  # the chunk type before this one
    while position + 8 <= len(view):
        length, kind = struct.unpack(">I4s", view[position : position + 8])
        if ihdr is None and kind != b"IHDR":
            raise ValueError("could not decode the PNG: it does not start with IHDR")
        if kind == b"IHDR":
            ihdr = bytes(_checked(view, position, length, kind))
        elif kind == b"IDAT":
            if idat and previous != b"IDAT":
                raise ValueError("could not decode the PNG: IDAT chunks not consecutive")
            idat.append(_checked(view, position, length, kind))
        elif kind == b"tRNS":
            transparency = True
        elif kind == b"IEND":
            _checked(view, position, length, kind)  # whole, with its CRC, as libpng reads it
            ended = True
            break
        elif kind[0] & 0x20 == 0 and kind != b"PLTE":  # upper-case first letter: critical
            unknown = True
        previous = kind
        position += 12 + length
    if ihdr is None or len(ihdr) != 13:
        raise ValueError("could not decode the PNG: no valid IHDR chunk")
    if not idat:
        raise ValueError("could not decode the PNG: no IDAT chunk (cut short?)")
    if not ended:
        raise ValueError("could not decode the PNG: no IEND chunk (cut short?)")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", ihdr
    )
    if width == 0 or height == 0:
        raise ValueError("PNG of zero size")
    if compression != 0 or filtering != 0:
        raise ValueError("could not decode the PNG: unknown compression or filter method")
    return PngHeader(
        width, height, depth, colour, interlace != 0, tuple(idat), transparency, unknown
    )


def _filtered_rows(header: PngHeader, rows: int) -> np.ndarray | None:
    """The first `rows` filtered scanlines -> [rows, 1 + width * bpp] uint8, or None when one
    of them is not Up-filtered (row 0 may also be unfiltered: its prior row is zeros)."""
    stride = 1 + header.width * header.bytes_per_pixel
    wanted = rows * stride
    inflater = inflate_lib.decompressobj()
    try:
        # The first IDAT chunk alone first: another writer's PNG (other filters) goes to
        # OpenCV before the rest of it is inflated for nothing.
        inflated = inflater.decompress(header.idat[0], wanted)
        if not _up_filtered(np.frombuffer(inflated, np.uint8)[::stride]):
            return None
        if len(inflated) < wanted and len(header.idat) > 1:
            rest = header.idat[1] if len(header.idat) == 2 else b"".join(header.idat[1:])
            inflated += inflater.decompress(rest, wanted - len(inflated))
    except inflate_lib.error as exc:  # a stream that is not deflate (its CRCs may be right)
        raise ValueError(f"could not decode the PNG: {exc}") from None
    if len(inflated) < wanted:
        raise ValueError(
            "could not decode the PNG: its data ends at row "
            f"{len(inflated) // stride + 1} of {rows}"
        )
    scanlines = np.frombuffer(inflated, np.uint8).reshape(rows, stride)
    return scanlines if _up_filtered(scanlines[:, 0]) else None


def _up_filtered(filters: np.ndarray) -> bool:
    """Rows 0.. have the Up filter (row 0 may have None: its prior row is zeros)."""
    if len(filters) and filters[0] == FILTER_NONE:
        filters = filters[1:]
    return bool((filters == FILTER_UP).all())


def _sum_rows(scanlines: np.ndarray, header: PngHeader, box: Box) -> np.ndarray:
    """Up-filtered rows -> the box's pixels [h, w] (uint8, or uint16 for 16-bit)."""
    top, left, height, width = box
    bpp = header.bytes_per_pixel
    columns = scanlines[:, 1 + left * bpp : 1 + (left + width) * bpp]  # [rows, w * bpp]
    crop = np.empty((height, width * bpp), np.uint8)  # [h, w * bpp]
    above = columns[:top].sum(axis=0, dtype=np.uint8)  # the rows above the crop, mod 256
    # numpy's cumsum down a column slows ~3x past ~130k elements: accumulate in row blocks
    step = max(1, BLOCK_ELEMENTS // crop.shape[1])
    for start in range(0, height, step):
        block = crop[start : start + step]
        np.cumsum(columns[top + start : top + start + step], axis=0, dtype=np.uint8, out=block)
        block += above
        above = block[-1]
    if bpp == 2:
        return crop.view(">u2").astype(np.uint16)
    return crop


def decode_opencv(data: bytes) -> np.ndarray:
    """Any PNG -> [H, W] uint8 or uint16 grey (colour is converted), by OpenCV."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("OpenCV could not decode the PNG")
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        image = cv2.cvtColor(image, code)
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"unsupported PNG dtype {image.dtype}")
    return image


def decode_box(data: bytes, header: PngHeader, box: Box) -> np.ndarray:
    """The pixels of `box` -> [h, w] uint8/uint16, decoding as little of the PNG as it can."""
    top, left, height, width = box
    inside = (
        0 <= top and top + height <= header.height and 0 <= left and left + width <= header.width
    )
    if not inside or height <= 0 or width <= 0:
        raise ValueError(f"crop {box} outside a {header.width}x{header.height} PNG")
    scanlines = _filtered_rows(header, top + height) if header.fast else None
    if scanlines is None:
        return np.ascontiguousarray(decode_opencv(data)[top : top + height, left : left + width])
    return _sum_rows(scanlines, header, box)


def decode_png(data: bytes, max_pixels: int) -> np.ndarray:
    """A whole PNG -> [H, W] uint8 or uint16 grey, refusing more than `max_pixels` pixels
    before anything is inflated (decompression bombs)."""
    header = read_header(data)
    check_pixels(header, max_pixels)
    return decode_box(data, header, (0, 0, header.height, header.width))


def check_pixels(header: PngHeader, max_pixels: int) -> None:
    if header.width * header.height > max_pixels:
        raise ValueError(f"{header.width}x{header.height} exceeds the {max_pixels}-pixel cap")
