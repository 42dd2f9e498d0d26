"""Decode only the crop of a PNG that the loader will use.

A random-resized crop keeps 20-100% of a frame, yet libpng (OpenCV, Pillow, torchvision) must
unfilter every row. The shard writer puts the Up filter on every row (docs/png-parameters.md),
so a pixel is the byte-wise sum, mod 256, of its filtered column down to it. This decoder
therefore
- inflates the zlib stream (ISA-L: ~2.3x zlib here),
- sums the rows above the crop in one reduction, restricted to the crop's columns,
- accumulates the crop's rows (a cumulative sum down the columns); rows below it are only
  checked.
The pixels are the ones libpng gives, bit for bit (tests compare them with `cv2.imdecode`).

It accepts exactly the files libpng (as OpenCV drives it) accepts, whatever the crop: a crop of
intact rows must not rescue a damaged file. So the whole file is checked, not only the crop's
rows: every chunk up to IEND must be there, IHDR and every IDAT CRC-checked, IHDR's fields
within libpng's limits (1,000,000 pixels a side), the zlib stream inflated to its end (every
row's filter byte, the adler32 checksum). Where libpng's verdict depends on how it happens to
feed its inflater (data past the last row, a checksum in a later IDAT chunk: libpng 1.6 reads
the end of the stream only as far as its input buffer reaches) or on chunks this decoder does not
model, the file goes to OpenCV whole, so libpng itself decides. Those files are rare (no
writer makes them): any PNG that is not a plain grey 8/16-bit image with only common metadata
chunks (colour, palette, transparency, interlacing, other row filters above the crop, APNG,
unknown chunks), and any stream that does not end cleanly after its last row.

Two deliberate differences, both CPU bombs that a pixel count does not show, refused before
anything is inflated: IDAT data larger than its image's rows could ever compress to
(`idat_limit`; libpng would inflate and drop whatever follows the last row, seconds a sample),
and more chunks than 4,096 plus one per 256 bytes of the image's data (`chunk_limit`;
walking a chunk costs ~5 us here, so millions of empty ones would cost minutes).

Hand-written because no PNG decoder with a Python binding (OpenCV, Pillow, pyspng,
imagecodecs, torchvision) stops at a row or skips columns; the inflate itself is ISA-L's
(python-isal), zlib's where it is missing.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

try:  # ISA-L's inflate: same streams, ~2.3x zlib's speed on the shards' PNGs
    from isal import isal_zlib as inflate_lib  # ISA-L is optional: zlib otherwise
except ImportError:  # pragma: no cover - python-isal is a dependency; zlib is the fallback
    inflate_lib = zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILTER_NONE, FILTER_UP, FILTER_LAST = 0, 2, 4  # row filter types; libpng refuses any above 4
GREY = 0  # IHDR colour type of a grey image without alpha
BLOCK_ELEMENTS = 100_000  # bytes accumulated per cumsum call (see _sum_rows)

# What libpng 1.6 (as OpenCV builds it) refuses in IHDR, whatever else the file holds.
MAX_SIDE = 1_000_000  # PNG_USER_WIDTH_MAX / PNG_USER_HEIGHT_MAX
MAX_CHUNK_LENGTH = 2**31 - 1  # PNG_UINT_31_MAX
BIT_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # per colour type
# Metadata chunks libpng reads whatever they hold (damage in them is a warning); OpenCV
# refuses any chunk before IDAT longer than this (PNG_USER_CHUNK_MALLOC_MAX, with framing).
COMMON_METADATA = frozenset(
    (b"tEXt", b"zTXt", b"iTXt", b"tIME", b"pHYs", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT")
)
MAX_METADATA_CHUNK = 8_000_000 - 12
ZLIB_DEFLATE, ZLIB_PRESET_DICTIONARY, ZLIB_MAX_WINDOW = 8, 0x20, 32 * 1024  # zlib header
ZLIB_ERROR_PREFIX = re.compile(r"^Error -?\d+:? (?:while decompressing data: )?")

# The most a legitimate image's IDAT data can take: its rows (filter bytes included) through
# deflate's worst case a real encoder produces (fixed Huffman codes: 9 bits a byte on
# incompressible data; stored blocks add 5 bytes per 64 KiB), plus zlib framing.
IDAT_EXPANSION = 9 / 8
IDAT_SLACK = 64 * 1024
# A PNG file's bytes per pixel at most: 8 (16-bit RGBA) plus a filter byte per row (at most one
# per pixel), through the expansion above, plus 1% for IDAT chunk framing; metadata on top.
PNG_BYTES_PER_PIXEL = 9 * IDAT_EXPANSION * 1.01
PNG_METADATA_BYTES = 16 << 20  # ICC profiles, text, EXIF
MIN_IDAT_CHUNK = 256  # bytes of IDAT data per chunk, on average at least
CHUNK_ALLOWANCE = 4096  # chunks any file may hold (metadata, tiny IDATs): a walk of ~20 ms

Box = tuple[int, int, int, int]  # (top, left, height, width) in pixels


def max_png_bytes(max_pixels: int) -> int:
    """The largest PNG file an image of `max_pixels` pixels can legitimately take (any colour
    type and bit depth): the size cap for PNG members read from untrusted shards."""
    return int(max_pixels * PNG_BYTES_PER_PIXEL) + IDAT_SLACK + PNG_METADATA_BYTES


def _refused(reason: str) -> ValueError:
    return ValueError(f"could not decode the PNG: {reason}")


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlaced: bool
    idat: tuple[memoryview, ...]  # the IDAT chunks' data, CRC-checked, in order
    plain: bool  # only chunks whose handling by libpng this decoder knows, IDATs in one run,
    # a zlib header read alike by ISA-L and libpng

    @property
    def fast(self) -> bool:
        """Plain grey 8/16-bit, not interlaced: rows the crop decoder can sum."""
        return (
            self.plain
            and self.colour_type == GREY
            and self.bit_depth in (8, 16)
            and not self.interlaced
        )

    @property
    def bytes_per_pixel(self) -> int:
        return self.bit_depth // 8

    @property
    def stride(self) -> int:
        """Bytes of one filtered scanline of a non-interlaced image (its filter byte first)."""
        bits = self.width * self.bit_depth * CHANNELS[self.colour_type]
        return 1 + (bits + 7) // 8

    def idat_limit(self) -> int:
        """The most IDAT data this image's rows can legitimately compress to."""
        rows = self.height * self.stride
        if self.interlaced:  # up to 7 passes: a filter byte per pass row, at most 7 a row
            rows += 7 * self.height
        return int(rows * IDAT_EXPANSION) + IDAT_SLACK

    def chunk_limit(self) -> int:
        """The most chunks this image's file can legitimately hold: writers cut IDAT data into
        chunks of 8 KiB (libpng) or more; this allows 4,096 chunks plus one per 256 bytes.
        Walking chunks costs ~5 us each here (libpng: 0.06 us), so millions of empty ones
        would take minutes a sample."""
        return CHUNK_ALLOWANCE + self.idat_limit() // MIN_IDAT_CHUNK


def _chunk_data(view: memoryview, position: int, length: int, kind: bytes) -> memoryview:
    """A critical chunk's data after checking its CRC (over type + data): libpng refuses a
    file with a damaged critical chunk."""
    end = position + 8 + length
    (crc,) = struct.unpack_from(">I", view, end)
    if inflate_lib.crc32(view[position + 4 : end]) & 0xFFFFFFFF != crc:
        raise _refused(f"its {kind.decode('latin-1')} chunk fails its CRC (damaged)")
    return view[position + 8 : end]


def _plain_metadata(kind: bytes, length: int) -> bool:
    return kind in COMMON_METADATA and length <= MAX_METADATA_CHUNK


def read_header(data: bytes) -> PngHeader:
    """IHDR fields and the IDAT chunks of a PNG, without inflating anything.

    Every chunk up to IEND is walked (and refused if it runs past the end of the data, before
    anything allocates it), IHDR and the IDATs are CRC-checked and IHDR is checked as libpng
    checks it, so what is refused here libpng refuses too, but for two CPU bombs: more IDAT data
    or more chunks than the image could need (`idat_limit`, `chunk_limit`). Chunks whose
    handling by libpng this decoder does not model make the header not `plain` (OpenCV then
    decodes the file whole).
    """
    if len(data) < 8 or data[:8] != PNG_SIGNATURE:
        raise ValueError("not a PNG")
    view, size = memoryview(data), len(data)
    header: PngHeader | None = None
    position, idat, plain, previous, chunks, chunk_limit = 8, [], True, b"", 0, 1
    while True:
        if position + 8 > size:
            raise _refused("no IEND chunk (cut short?)")
        length, kind = struct.unpack_from(">I4s", view, position)
        if length > MAX_CHUNK_LENGTH or position + 12 + length > size:
            name = kind.decode("latin-1")
            if length > MAX_CHUNK_LENGTH:
                raise _refused(f"its {name!r} chunk claims {length:,} bytes (over 2^31 - 1)")
            raise _refused(f"cut short in its {name!r} chunk (it claims {length:,} bytes)")
        if header is None:
            if kind != b"IHDR" or length != 13:
                raise _refused("it does not start with a 13-byte IHDR chunk")
            header = _ihdr(bytes(_chunk_data(view, position, length, kind)))
            chunk_limit = header.chunk_limit()
        elif kind == b"IHDR":
            raise _refused("a second IHDR chunk")
        elif kind == b"IDAT":
            plain = plain and (not idat or previous == b"IDAT")  # one run of IDAT chunks
            idat.append(_chunk_data(view, position, length, kind))
        elif kind == b"IEND":
            break  # libpng ignores IEND's CRC and length, and anything after it
        else:
            plain = plain and _plain_metadata(kind, length)
        chunks += 1
        if chunks > chunk_limit:
            raise _refused(
                f"more than {chunk_limit:,} chunks for a {header.width}x{header.height} "
                "image: a CPU bomb?"
            )
        previous = kind
        position += 12 + length
    if not idat:
        raise _refused("no IDAT chunk")
    header = replace(header, idat=tuple(idat), plain=plain)
    if not _plain_zlib_header(header):
        header = replace(header, plain=False)
    idat_bytes = sum(len(chunk) for chunk in idat)
    if idat_bytes > header.idat_limit():
        raise _refused(
            f"{idat_bytes:,} bytes of image data, more than a {header.width}x{header.height} "
            f"image can take ({header.idat_limit():,}): a decompression bomb?"
        )
    return header


def _plain_zlib_header(header: PngHeader) -> bool:
    """A zlib header ISA-L reads as zlib does: deflate, no preset dictionary, a valid check,
    and a window that holds the whole image (libpng honours a window smaller than 32 KiB, and
    refuses a distance past it; ISA-L does not)."""
    head = b""
    for chunk in header.idat:  # the stream's first two bytes, whatever the chunks' sizes
        head += bytes(chunk[: 2 - len(head)])
        if len(head) == 2:
            break
    if len(head) < 2:
        return False
    method, flags = head
    window = 1 << ((method >> 4) + 8)
    return (
        method & 0x0F == ZLIB_DEFLATE
        and (method << 8 | flags) % 31 == 0
        and not flags & ZLIB_PRESET_DICTIONARY
        and (window == ZLIB_MAX_WINDOW or header.height * header.stride <= window)
    )


def _ihdr(ihdr: bytes) -> PngHeader:
    """IHDR's fields, refused where libpng's png_check_IHDR refuses them."""
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", ihdr
    )
    if width == 0 or height == 0:
        raise ValueError("PNG of zero size")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise _refused(f"{width}x{height} is over libpng's {MAX_SIDE:,}-pixel limit a side")
    if depth not in BIT_DEPTHS.get(colour, ()):
        raise _refused(f"IHDR colour type {colour} with bit depth {depth}")
    if compression != 0 or filtering != 0 or interlace > 1:
        raise _refused("unknown compression, filter or interlace method")
    return PngHeader(width, height, depth, colour, interlace == 1, (), True)


def _scanlines(header: PngHeader, rows: int) -> tuple[np.ndarray | None, str]:
    """All filtered scanlines of a fast PNG -> ([height, stride] uint8, ""), or (None, reason)
    when OpenCV must decode it: one of the first `rows` rows is not Up-filtered (row 0 may
    also be unfiltered: its prior row is zeros), or the zlib stream is not a clean one (damage,
    data past the last row, a missing or wrong checksum) whose verdict libpng must give.
    Refuses a stream libpng always refuses: rows missing, a filter type above 4."""
    stride, height = header.stride, header.height
    total = height * stride
    inflater = inflate_lib.decompressobj()
    fed = 1
    try:
        # The first IDAT chunk alone first: another writer's PNG (other filters) goes to
        # OpenCV before the rest of it is inflated for nothing.
        inflated = inflater.decompress(header.idat[0], total)
        early = np.frombuffer(inflated, np.uint8)[::stride][:rows]
        if not _up_filtered(early) and early.max() <= FILTER_LAST:
            return None, ""  # another writer's PNG: OpenCV decodes it
        if len(inflated) < total and len(header.idat) > 1:
            rest = header.idat[1] if len(header.idat) == 2 else b"".join(header.idat[1:])
            inflated += inflater.decompress(rest, total - len(inflated))
            fed = len(header.idat)
    except inflate_lib.error as exc:  # damage: where libpng notices it decides its verdict
        return None, f"its image data is damaged ({_zlib_message(exc)})"
    if len(inflated) < total:
        raise _refused(f"its image data ends in row {len(inflated) // stride + 1} of {height}")
    scanlines = np.frombuffer(inflated, np.uint8).reshape(height, stride)
    filters = scanlines[:, 0]
    if filters.max() > FILTER_LAST:
        row = int(np.argmax(filters > FILTER_LAST))
        raise _refused(f"row {row + 1} has filter type {filters[row]} (0-4 exist)")
    if not _up_filtered(filters[:rows]):
        return None, ""
    unclean = _unclean_end(inflater, header.idat[fed:])
    return (None, unclean) if unclean else (scanlines, "")


def _unclean_end(inflater: Any, unfed: tuple[memoryview, ...]) -> str:
    """What is wrong with the end of the zlib stream after its last row, or an empty string
    when it ends there with a right adler32 (libpng accepts that, whatever data trails it)."""
    if inflater.eof:
        return ""
    rest = inflater.unconsumed_tail + b"".join(unfed)
    try:
        extra = inflater.decompress(rest, 1)
    except inflate_lib.error as exc:
        return f"the end of its image data is damaged ({_zlib_message(exc)})"
    if extra:
        return "its image data holds more than its rows"
    if not inflater.eof:
        return "its image data ends without its zlib checksum (cut short?)"
    return ""


def _zlib_message(exc: Exception) -> str:
    """zlib's or ISA-L's message without its error number ("Error -3 while ...: ")."""
    return ZLIB_ERROR_PREFIX.sub("", str(exc))


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


def decode_opencv(data: bytes, reason: str = "") -> np.ndarray:
    """Any PNG -> [H, W] uint8 or uint16 grey (colour is converted), by OpenCV. `reason`: why
    the crop decoder handed it over, named if OpenCV refuses the file too."""
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # OpenCV's own limits (its pixel cap, an empty buffer)
        raise _refused(" ".join(str(exc).split())[-200:]) from None
    if image is None:
        raise ValueError(
            f"could not decode the PNG{': ' + reason if reason else ''} (libpng refuses it)"
        )
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
    scanlines, reason = _scanlines(header, top + height) if header.fast else (None, "")
    if scanlines is None:
        frame = decode_opencv(data, reason)
        return np.ascontiguousarray(frame[top : top + height, left : left + width])
    return _sum_rows(scanlines[: top + height], header, box)  # rows below are only checked


def decode_png(data: bytes, max_pixels: int) -> np.ndarray:
    """A whole PNG -> [H, W] uint8 or uint16 grey, refusing more than `max_pixels` pixels
    before anything is inflated (decompression bombs)."""
    header = read_header(data)
    check_pixels(header, max_pixels)
    return decode_box(data, header, (0, 0, header.height, header.width))


def check_pixels(header: PngHeader, max_pixels: int) -> None:
    if header.width * header.height > max_pixels:
        raise ValueError(f"{header.width}x{header.height} exceeds the {max_pixels}-pixel cap")
