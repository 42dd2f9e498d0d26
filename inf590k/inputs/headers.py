"""Image headers read the way OpenCV's decoders read them, before any pixel is decoded:
size, pages and the bytes a decode would take; a header a decoder could read two ways, a
lying chunk length or a size beyond the caps is refused (`check_before_decode`).

One module for every format on purpose (~800 lines): the rule, read a header the way its
decoder will or refuse it, is checked across formats in one place, and one dispatch picks
the parser by the signatures OpenCV's decoders check.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace

DEFAULT_MAX_PIXELS = 100_000_000
OPENCV_PIXEL_LIMIT = "OPENCV_IO_MAX_IMAGE_PIXELS"
# OpenCV's own decoder limit, a backstop behind the header check; it is read when cv2 is
# imported, so it must be in the environment first (ingest raises it for its workers when
# --max-pixels is higher).
os.environ.setdefault(OPENCV_PIXEL_LIMIT, str(DEFAULT_MAX_PIXELS))

from PIL import Image  # noqa: E402

DEFAULT_MAX_PIXELS = 100_000_000


JPEG_SIGNATURE = b"\xff\xd8"


JPEG_END = b"\xff\xd9"


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class RejectedImage(Exception):
    """The file is an IR candidate that cannot be used; the message is the catalog reason."""


DECODE_BYTES_LIMIT = 1 << 30  # at the default --max-pixels; raising the pixel cap raises it too


C_WHITESPACE = b" \t\n\v\f\r"  # C's isspace(), which the decoders' text headers use


INT_MAX = (1 << 31) - 1


@dataclass(frozen=True)
class HeaderInfo:
    """What a file header says before any pixel is decoded."""

    format: str
    width: int
    height: int
    pages: int = 1  # images in the file (multi-page TIFF); the first one is used
    decode_bytes: int = 0  # upper estimate of what decoding allocates (frame + decoder buffers)

    @property
    def pixels(self) -> int:
        return self.width * self.height


def decode_byte_limit(max_pixels: int) -> int:
    """The most a decode may allocate: 1 GiB at the default pixel cap, in proportion above it."""
    return max(DECODE_BYTES_LIMIT, DECODE_BYTES_LIMIT * max_pixels // DEFAULT_MAX_PIXELS)


def _be(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset : offset + size], "big")


def _le(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset : offset + size], "little")


def _truncated(fmt: str, where: str = "") -> RejectedImage:
    return RejectedImage(f"truncated {fmt} (cut inside its header{where})")


def _corrupt(fmt: str, what: str) -> RejectedImage:
    return RejectedImage(f"corrupt {fmt} header ({what}): not decoded")


def _ambiguous(fmt: str, what: str) -> RejectedImage:
    return RejectedImage(f"ambiguous {fmt} header ({what}): not decoded")


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


# channels of OpenCV's output by colour type: RGB and palette gain alpha from tRNS, grey + alpha
# becomes BGRA
PNG_CHANNELS = {0: 1, 2: 4, 3: 4, 4: 4, 6: 4}


def png_chunks(data: bytes) -> Iterator[tuple[int, bytes, int]]:
    """(offset, type, length) of each chunk up to IEND; a chunk that claims more bytes than
    the file holds is refused here (OpenCV would allocate its claimed length first)."""
    offset = len(PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length, kind = _be(data, offset, 4), data[offset + 4 : offset + 8]
        if offset + 12 + length > len(data):
            name = kind.decode("latin-1") if kind.isalpha() else kind.hex()
            left = max(len(data) - offset - 12, 0)
            raise RejectedImage(
                f"truncated PNG (its {name} chunk at offset {offset} claims {length} bytes; "
                f"{left} are left in the file)"
            )
        yield offset, kind, length
        if kind == b"IEND":
            return
        offset += 12 + length


def png_end(data: bytes) -> int:
    """Offset just past the IEND chunk; RejectedImage when the chain breaks off before it."""
    for offset, kind, _ in png_chunks(data):
        if kind == b"IEND":
            return offset + 12
    raise RejectedImage("truncated PNG (no IEND chunk)")


def png_header(data: bytes) -> HeaderInfo:
    if len(data) < 33 or data[12:16] != b"IHDR" or _be(data, 8, 4) != 13:
        raise _corrupt("PNG", "it does not start with a 13-byte IHDR chunk")
    width, height, depth, colour = _be(data, 16, 4), _be(data, 20, 4), data[24], data[25]
    if (
        colour not in PNG_CHANNELS
        or depth not in (1, 2, 4, 8, 16)
        or width > INT_MAX
        or height > INT_MAX
    ):
        raise _corrupt("PNG", f"IHDR: {width}x{height}, bit depth {depth}, colour type {colour}")
    frames = 1
    for _, kind, _ in png_chunks(data):
        if kind == b"IDAT":
            break
        if kind == b"acTL":  # animated: OpenCV's APNG reader holds three more full frames
            frames = 4
    out = width * height * PNG_CHANNELS[colour] * (2 if depth == 16 else 1)
    return HeaderInfo("PNG", width, height, decode_bytes=out * frames)


JPEG_PARAMETERLESS = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0-7: no length field


JPEG_FRAMES = frozenset([0xC0, 0xC1, 0xC2, 0xC3, 0xC9, 0xCA, 0xCB])  # SOFn libjpeg-turbo decodes


JPEG_UNSUPPORTED = frozenset([0xC5, 0xC6, 0xC7, 0xC8, 0xCD, 0xCE, 0xCF])  # hierarchical, JPG


# skipped by their length: DHT, DAC, DQT, DNL, DRI, APP0-15, COM
JPEG_SKIPPED = frozenset([0xC4, 0xCC, 0xDB, 0xDC, 0xDD, *range(0xE0, 0xF0), 0xFE])


JPEG_KNOWN = JPEG_FRAMES | JPEG_UNSUPPORTED | JPEG_SKIPPED | {0xDA}  # 0xDA: start of scan


JPEG_MISPLACED = {
    0x00: "0xFF00 (stuffed data) where a marker should be",
    0xD8: "a second start-of-image marker",
    0xD9: "an end-of-image marker before any scan",
}


@dataclass(frozen=True)
class JpegFrame:
    width: int
    height: int
    precision: int  # bits per sample
    components: int
    scan: int  # offset of the first start-of-scan marker


def jpeg_frame(data: bytes) -> JpegFrame:
    """The frame header (SOF) and where the first scan starts, walking the segments the way
    libjpeg does: fill bytes skipped, RSTn/TEM taken as markers without a length, anything it
    would stop on or warn about (a stray byte, a second SOI or SOF, an unknown marker, a scan
    before the frame) refused with the reason."""
    offset, frame = 2, None
    while True:
        if offset + 2 > len(data):
            raise _truncated("JPEG", " segments")
        if data[offset] != 0xFF:
            raise RejectedImage(
                f"corrupt JPEG (byte {data[offset]:#04x} at offset {offset} where a marker should "
                "start: a stray byte between segments, or a wrong segment length)"
            )
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in JPEG_PARAMETERLESS:
            offset += 2
            continue
        if marker not in JPEG_KNOWN:
            what = JPEG_MISPLACED.get(marker, f"unknown marker 0xFF{marker:02X}")
            raise RejectedImage(f"corrupt JPEG ({what} at offset {offset})")
        if offset + 4 > len(data):
            raise _truncated("JPEG", " segments")
        end = offset + 2 + _be(data, offset + 2, 2)
        if end < offset + 4:
            raise RejectedImage(
                f"corrupt JPEG (segment 0xFF{marker:02X} at offset {offset} has a length under 2)"
            )
        if end > len(data):
            raise _truncated(
                "JPEG", f": segment 0xFF{marker:02X} at offset {offset} runs past the end"
            )
        if marker == 0xDA:
            if frame is None:
                raise RejectedImage(
                    f"corrupt JPEG (a scan at offset {offset} before any frame header)"
                )
            return replace(frame, scan=offset)
        if marker in JPEG_UNSUPPORTED:
            raise RejectedImage(
                f"unsupported JPEG coding process (SOF marker 0xFF{marker:02X}): not decoded"
            )
        if marker in JPEG_FRAMES:
            if frame is not None:
                raise RejectedImage(f"corrupt JPEG (a second frame header at offset {offset})")
            components = data[offset + 9] if offset + 9 < end else 0
            if end - offset != 10 + 3 * components or components == 0:
                raise RejectedImage(
                    f"corrupt JPEG (frame header at offset {offset} has a wrong length)"
                )
            frame = JpegFrame(
                _be(data, offset + 7, 2), _be(data, offset + 5, 2), data[offset + 4], components, -1
            )
        offset = end


def _missing_jpeg_end(data: bytes) -> str:
    """Why a JPEG whose scans never reach FFD9 is refused: cut short, or its end marker hit."""
    tail = data[-2:]
    damaged_marker = tail[:1] == b"\xff" and tail[1] not in (0x00, 0xFF, *range(0xD0, 0xD8))
    if damaged_marker or (tail[1:] == b"\xd9" and tail[:1] != b"\xff"):
        return (
            f"corrupt JPEG (its last two bytes {tail.hex(' ')} are a damaged end-of-image marker)"
        )
    return "truncated JPEG (no end-of-image marker)"


def jpeg_end(data: bytes) -> int:
    """Offset just past the end-of-image marker; RejectedImage when it is missing.

    The segments before the first scan are skipped by their lengths (an EXIF thumbnail holds
    an end marker of its own); inside entropy-coded data 0xFFD9 can only be the real end.
    """
    end = data.find(JPEG_END, jpeg_frame(data).scan)
    if end < 0:
        raise RejectedImage(_missing_jpeg_end(data))
    return end + 2


def jpeg_header(data: bytes) -> HeaderInfo:
    frame = jpeg_frame(data)
    if (
        frame.width == 0 or frame.height == 0
    ):  # a height given later (DNL): libjpeg-turbo refuses it
        raise _corrupt("JPEG", f"frame header says {frame.width}x{frame.height}")
    sample = 2 if frame.precision > 8 else 1
    out = frame.width * frame.height * min(frame.components, 4) * sample
    # the whole-image coefficient buffer (progressive or multi-scan), padded to 32-pixel MCUs
    coefficients = _round_up(frame.width, 32) * _round_up(frame.height, 32) * frame.components * 2
    return HeaderInfo("JPEG", frame.width, frame.height, decode_bytes=out + coefficients)


TIFF_TYPE_SIZES = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
    16: 8,
    17: 8,
    18: 8,
}


TIFF_INTEGER_TYPES = frozenset([1, 3, 4, 6, 8, 9, 13, 16, 17, 18])


TIFF_TAG_NAMES = {
    256: "ImageWidth",
    257: "ImageLength",
    258: "BitsPerSample",
    262: "Photometric",
    277: "SamplesPerPixel",
    278: "RowsPerStrip",
    322: "TileWidth",
    323: "TileLength",
}


TIFF_MAX_PAGES = 100_000


class _TiffReader:
    """Integers of a TIFF or BigTIFF file in its byte order; reading past the end refuses."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.order = "little" if data[:2] == b"II" else "big"
        self.big = self.word(2, 2) == 43
        if self.big and (self.word(4, 2) != 8 or self.word(6, 2) != 0):
            raise _corrupt("TIFF", "BigTIFF header with an offset size other than 8")
        self.count_size, self.entry_size, self.offset_size = (8, 20, 8) if self.big else (2, 12, 4)
        self.first = self.word(8, 8) if self.big else self.word(4, 4)

    def word(self, offset: int, size: int) -> int:
        if offset + size > len(self.data):
            raise _truncated("TIFF", " (an offset points past the end of the file)")
        return int.from_bytes(self.data[offset : offset + size], self.order)

    def directory(self, offset: int) -> tuple[dict[int, tuple[int, int, int]], int]:
        """{tag: (type, count, position of the value field)} of one IFD, and the next IFD's
        offset. A tag given twice is refused: libtiff keeps the first, other readers the last."""
        if offset < 8:
            raise _corrupt("TIFF", f"image directory at offset {offset}")
        entries = self.word(offset, self.count_size)
        start = offset + self.count_size
        tags: dict[int, tuple[int, int, int]] = {}
        for index in range(entries):
            entry = start + index * self.entry_size
            tag = self.word(entry, 2)
            if tag in tags:
                name = TIFF_TAG_NAMES.get(tag, "")
                raise _ambiguous(
                    "TIFF",
                    f"tag {tag}{f' ({name})' if name else ''} appears twice in the first image directory",
                )
            tags[tag] = (
                self.word(entry + 2, 2),
                self.word(entry + 4, self.offset_size),
                entry + 4 + self.offset_size,
            )
        return tags, self.word(start + entries * self.entry_size, self.offset_size)

    def values(self, field: tuple[int, int, int], limit: int = 16) -> list[int]:
        """The first `limit` integers of a field (inline or at its offset); non-integer types refuse."""
        kind, count, position = field
        if kind not in TIFF_INTEGER_TYPES or count == 0:
            raise _corrupt("TIFF", f"a size field of type {kind} with {count} values")
        size = TIFF_TYPE_SIZES[kind]
        at = position if count * size <= self.offset_size else self.word(position, self.offset_size)
        signed = kind in (6, 8, 9, 17)
        raw = [self.word(at + i * size, size) for i in range(min(count, limit))]
        return [v - (1 << (8 * size)) if signed and v >> (8 * size - 1) else v for v in raw]

    def count_pages(self, offset: int) -> int:
        """Directories from `offset` on (a cut or looping chain just ends the count)."""
        pages, seen = 0, {self.first}
        while 0 < offset < len(self.data) and offset not in seen and pages < TIFF_MAX_PAGES:
            seen.add(offset)
            try:
                entries = self.word(offset, self.count_size)
                offset = self.word(
                    offset + self.count_size + entries * self.entry_size, self.offset_size
                )
            except RejectedImage:
                break
            pages += 1
        return pages


def tiff_header(data: bytes) -> HeaderInfo:
    """Size, page count and decode bound of the first page; classic and BigTIFF, either byte
    order, any compression, strips or tiles."""
    reader = _TiffReader(data)
    tags, next_page = reader.directory(reader.first)

    def single(tag: int, default: int | None = None) -> int:
        if tag not in tags:
            if default is None:
                raise _corrupt("TIFF", f"no {TIFF_TAG_NAMES[tag]} tag")
            return default
        if tags[tag][1] != 1:
            raise _corrupt("TIFF", f"{TIFF_TAG_NAMES[tag]} has {tags[tag][1]} values")
        return reader.values(tags[tag])[0]

    width, height = single(256), single(257)
    samples = single(277, 1)
    bits = max(reader.values(tags[258])) if 258 in tags else 1
    photometric = single(262, 2)
    if width <= 0 or height <= 0 or samples <= 0 or not 0 < bits <= 64:
        raise _corrupt("TIFF", f"{width}x{height}, {samples} samples of {bits} bits")
    pages = 1 + reader.count_pages(next_page)
    pixels = width * height
    if photometric in (32844, 32845) and samples == 3:  # LogLuv: OpenCV decodes it to float32 x 3
        return HeaderInfo("TIFF", width, height, pages, decode_bytes=pixels * 12 * 2)
    # OpenCV's output frame: up to 4 channels (palette: 3), samples of 1, 2, 4 or 8 bytes
    decoded_bits = 8 if bits > 8 and (photometric > 2 or samples not in (1, 3, 4)) else bits
    sample_bytes = next(size for size in (1, 2, 4, 8) if decoded_bits <= 8 * size)
    channels = 3 if photometric == 3 else min(samples, 4)
    out = pixels * channels * sample_bytes
    # one strip or tile at a time: libtiff's raw samples, and OpenCV's RGBA (8-bit) or
    # unpacked copy; a strip of RowsPerStrip rows (any value) or a tile of the tags' size
    if 322 in tags:
        tile_width, tile_height = single(322), single(323, height)
    else:
        tile_width, tile_height = width, single(278, height)
        if tile_height in (0, (1 << 32) - 1):
            tile_height = height
    tile = tile_width * tile_height
    raw = tile * samples * -(-bits // 8)
    converted = tile * (4 if sample_bytes == 1 else channels * sample_bytes)
    # the frame twice: an Orientation tag makes OpenCV transpose it into a new one
    return HeaderInfo("TIFF", width, height, pages, decode_bytes=2 * out + raw + converted)


def bmp_header(data: bytes) -> HeaderInfo:
    """OpenCV's BMP reader: a 12-byte OS/2 core header (16-bit sizes) or one of 36 bytes
    and more (BITMAPINFOHEADER and later, 32-bit sizes); any other is not decoded."""
    if len(data) < 26:
        raise _truncated("BMP")
    size = struct.unpack("<i", data[14:18])[0]
    if size == 12:
        width, height = _le(data, 18, 2), _le(data, 20, 2)
    elif size >= 36:
        width, height = struct.unpack("<ii", data[18:26])
    else:
        raise RejectedImage(f"unsupported BMP ({size}-byte information header): not decoded")
    if width <= 0 or height == 0:
        raise _corrupt("BMP", f"{width}x{height}")
    return HeaderInfo("BMP", width, abs(height), decode_bytes=width * abs(height) * 4 + width * 8)


def webp_header(data: bytes) -> HeaderInfo:
    chunk = data[12:16]
    if chunk == b"VP8X":  # the canvas: frames must fit in it (libwebp checks)
        width, height = _le(data, 24, 3) + 1, _le(data, 27, 3) + 1
    elif chunk == b"VP8L":
        bits = _le(data, 21, 4)
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif chunk == b"VP8 ":
        width, height = _le(data, 26, 2) & 0x3FFF, _le(data, 28, 2) & 0x3FFF
    else:
        raise _corrupt("WebP", f"first chunk {chunk!r}")
    # BGRA frame, an animation's canvas and previous frame, libwebp's ARGB or YUV buffers
    return HeaderInfo("WebP", width, height, decode_bytes=width * height * 16)


def gif_header(data: bytes) -> HeaderInfo:
    width, height = _le(data, 6, 2), _le(data, 8, 2)
    if len(data) < 10 or not (width and height):
        raise _corrupt("GIF", f"logical screen {width}x{height}")
    # BGRA canvas, the LZW index stream, a disposal copy and the output frame
    return HeaderInfo("GIF", width, height, decode_bytes=width * height * 16)


def sun_raster_header(data: bytes) -> HeaderInfo:
    width, height = struct.unpack(">ii", data[4:12].ljust(8, b"\0"))
    if width <= 0 or height <= 0:
        raise _corrupt("Sun raster", f"{width}x{height}")
    return HeaderInfo("Sun raster", width, height, decode_bytes=width * height * 4 + width * 8)


def exr_header(data: bytes) -> HeaderInfo:
    """OpenEXR: attributes (name, type, size, value) up to an empty name; `dataWindow`, which
    OpenEXR takes from the last copy when repeated (refused here)."""
    offset, window = 8, None
    while offset < min(len(data), 1 << 20):
        name_end = data.find(b"\0", offset)
        if name_end == offset:
            break
        type_end = data.find(b"\0", name_end + 1)
        if name_end < 0 or type_end < 0 or type_end + 5 > len(data):
            raise _truncated("OpenEXR")
        size, value = _le(data, type_end + 1, 4), type_end + 5
        if data[offset:name_end] == b"dataWindow":
            if window is not None:
                raise _ambiguous("OpenEXR", "dataWindow given twice")
            if size != 16 or value + 16 > len(data):
                raise _corrupt("OpenEXR", "dataWindow")
            x0, y0, x1, y1 = struct.unpack("<iiii", data[value : value + 16])
            window = (x1 - x0 + 1, y1 - y0 + 1)
        offset = value + size
    if window is None:
        raise _corrupt("OpenEXR", "no dataWindow")
    width, height = window
    return HeaderInfo("OpenEXR", width, height, decode_bytes=max(width * height, 0) * 32)


_LINE_END = re.compile(rb"[\r\n]")


def pnm_number(data: bytes, pos: int) -> tuple[int, int]:
    """One header number as OpenCV's PxM reader takes it: whitespace and #-comments (ended by
    CR or LF) skipped, then digits; the byte ending the number is consumed. -> (value, next)."""
    while True:
        if pos >= len(data):
            raise _truncated("PNM")
        byte = data[pos]
        if 0x30 <= byte <= 0x39:
            break
        if byte == 0x23:  # '#'
            end = _LINE_END.search(data, pos)
            if end is None:
                raise _truncated("PNM")
            pos = end.end()
        elif byte in C_WHITESPACE:
            pos += 1
        else:
            raise _corrupt("PNM", f"byte {byte:#04x} at offset {pos} where a number should be")
    start = pos
    while pos < len(data) and 0x30 <= data[pos] <= 0x39:
        pos += 1
    value = int(data[start:pos])
    if value > INT_MAX:
        raise _corrupt("PNM", f"number {value} too large")
    return value, pos + 1


def pnm_header(data: bytes) -> HeaderInfo:
    """P1-P6: width, height and (but for bitmaps) the maximum value."""
    kind = data[1:2]
    width, pos = pnm_number(data, 2)
    height, pos = pnm_number(data, pos)
    maxval = 1 if kind in b"14" else pnm_number(data, pos)[0]
    if width <= 0 or height <= 0 or not 0 < maxval < 65536:
        raise _corrupt("PNM", f"{width}x{height}, maximum value {maxval}")
    channels = 3 if kind in b"36" else 1
    out = width * height * channels * (2 if maxval > 255 else 1)
    return HeaderInfo(f"P{kind.decode()}", width, height, decode_bytes=out + width * channels * 4)


PAM_FIELDS = (b"ENDHDR", b"HEIGHT", b"WIDTH", b"DEPTH", b"MAXVAL", b"TUPLTYPE")


def pam_header(data: bytes) -> HeaderInfo:
    """P7 as OpenCV's PAM reader takes it: one `NAME value` per line (CR or LF), #-comments,
    each of WIDTH, HEIGHT, DEPTH and MAXVAL once, up to ENDHDR."""
    if data[2:3] not in (b"\n", b"\r"):
        raise _corrupt("PAM", "no line break after P7")
    pos, fields = 3, {}
    while True:
        while pos < len(data) and data[pos] in C_WHITESPACE:
            pos += 1
        if pos >= len(data):
            raise _truncated("PAM")
        if data[pos] == 0x23:  # '#'
            end = _LINE_END.search(data, pos)
            if end is None:
                raise _truncated("PAM")
            pos = end.end()
            continue
        start = pos
        while pos < len(data) and pos - start < 8 and data[pos] not in C_WHITESPACE:
            pos += 1
        name = data[start:pos]
        if pos >= len(data) or data[pos] not in C_WHITESPACE or name not in PAM_FIELDS:
            raise _corrupt("PAM", f"unknown field {name[:8]!r}")
        value = b""
        if data[pos] not in b"\r\n":
            while pos < len(data) and data[pos] in C_WHITESPACE:
                pos += 1
            end = _LINE_END.search(data, pos)
            if end is None or end.start() - pos > 255:
                raise _truncated("PAM") if end is None else _corrupt("PAM", "value too long")
            value, pos = data[pos : end.start()].rstrip(C_WHITESPACE), end.start()
        pos += 1
        if name == b"ENDHDR":
            break
        if name in fields and name != b"TUPLTYPE":
            raise _corrupt("PAM", f"{name.decode()} given twice")
        fields[name] = value
    numbers = [fields.get(name, b"") for name in (b"WIDTH", b"HEIGHT", b"DEPTH", b"MAXVAL")]
    if not all(re.fullmatch(rb"-?\d{1,10}", number) for number in numbers):
        raise _corrupt("PAM", "WIDTH, HEIGHT, DEPTH and MAXVAL must each be given as a number")
    width, height, depth, maxval = (int(number) for number in numbers)
    if width <= 0 or height <= 0 or not 0 < depth <= 512 or not 0 < maxval < 65536:
        raise _corrupt("PAM", f"{width}x{height}, depth {depth}, maximum value {maxval}")
    sample = 2 if maxval > 255 else 1
    return HeaderInfo(
        "PAM", width, height, decode_bytes=width * height * depth * sample + width * depth * 4
    )


def _atoi(token: bytes) -> int:
    """C's atoi of a token: an optional sign and leading digits, 0 when there are none."""
    match = re.match(rb"[+-]?\d+", token)
    return int(match.group()) if match else 0


def pfm_header(data: bytes) -> HeaderInfo:
    """PF/Pf then a line break, then width, height and scale, each ended by whitespace."""
    if data[2:3] != b"\n":
        raise _corrupt("PFM", "no line break after the type")
    tokens = re.match(
        rb"([^ \t\n\v\f\r]*)[ \t\n\v\f\r]([^ \t\n\v\f\r]*)[ \t\n\v\f\r]", data[3:4200]
    )
    if tokens is None:
        raise _truncated("PFM")
    width, height = _atoi(tokens.group(1)), _atoi(tokens.group(2))
    if not 0 < width <= INT_MAX or not 0 < height <= INT_MAX:
        raise _corrupt("PFM", f"{width}x{height}")
    channels = 3 if data[1:2] == b"F" else 1
    # float32 frame read into a buffer, colour-converted into another, then copied out
    return HeaderInfo("PFM", width, height, decode_bytes=width * height * channels * 4 * 3)


def _fgets(data: bytes, pos: int, size: int = 128) -> tuple[bytes, int] | None:
    """C's fgets into a `size`-byte buffer: up to size-1 bytes, through the first newline,
    as the C string it leaves (cut at a NUL). -> (line, next position), None at the end."""
    if pos >= len(data):
        return None
    newline = data.find(b"\n", pos, pos + size - 1)
    stop = newline + 1 if newline >= 0 else min(pos + size - 1, len(data))
    return data[pos:stop].split(b"\0", 1)[0], stop


_RADIANCE_SIZE = re.compile(rb"-Y\s*([+-]?\d+)\s*\+X\s*([+-]?\d+)")


def radiance_header(data: bytes) -> HeaderInfo:
    """Radiance HDR as OpenCV's RGBE reader takes it: lines read 127 bytes at a time up to an
    empty one (a FORMAT line required), then `-Y height +X width`."""
    first = _fgets(data, 0)  # the #?RADIANCE line
    pos, has_format = first[1] if first else 0, False
    while True:
        line = _fgets(data, pos)
        if line is None:
            raise _truncated("Radiance HDR")
        text, pos = line
        if text[:1] == b"\n":
            break
        has_format = has_format or text == b"FORMAT=32-bit_rle_rgbe\n"
    if text != b"\n" or not has_format:
        raise _corrupt("Radiance HDR", "no FORMAT=32-bit_rle_rgbe line before the empty line")
    size = _fgets(data, pos)
    match = _RADIANCE_SIZE.match(size[0]) if size else None
    if match is None:
        raise _corrupt("Radiance HDR", "no `-Y height +X width` line after the empty line")
    height, width = int(match.group(1)), int(match.group(2))
    if not 0 < width <= INT_MAX or not 0 < height <= INT_MAX:
        raise _corrupt("Radiance HDR", f"{width}x{height}")
    # float32 x 3 twice (read, then converted into the output), one RGBE scanline
    return HeaderInfo("Radiance HDR", width, height, decode_bytes=width * height * 24 + width * 4)


def _j2k_siz(data: bytes, start: int) -> HeaderInfo:
    """Image and tile size and the component count from a codestream's SIZ segment."""
    if data[start : start + 4] != b"\xff\x4f\xff\x51":
        raise _corrupt("JPEG 2000", "the codestream does not start with SOC and SIZ")
    if start + 44 > len(data):
        raise _truncated("JPEG 2000")
    x1, y1, x0, y0, tile_w, tile_h = struct.unpack(">6I", data[start + 8 : start + 32])
    components = _be(data, start + 40, 2)
    width, height = x1 - x0, y1 - y0
    if width <= 0 or height <= 0 or components == 0:
        raise _corrupt("JPEG 2000", f"SIZ says {width}x{height}, {components} components")
    pixels, tile = width * height, min(tile_w * tile_h, width * height)
    # OpenJPEG: one int32 plane per component, plus a tile's worth; OpenCV's frame (<= 16-bit)
    decode = 4 * components * (pixels + tile) + pixels * min(components, 4) * 2
    return HeaderInfo("JPEG 2000", width, height, decode_bytes=decode)


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the ISO boxes in data[start:end]."""
    while start + 8 <= end:
        length, kind, header = _be(data, start, 4), data[start + 4 : start + 8], 8
        if length == 1:
            length, header = _be(data, start + 8, 8), 16
        elif length == 0:
            length = end - start
        if length < header or start + length > end:
            raise _truncated("JPEG 2000", f": box {kind!r} at offset {start} runs past its end")
        yield kind, start + header, start + length
        start += length


def jpeg2000_header(data: bytes) -> HeaderInfo:
    """A raw codestream, or a JP2 file: signature, ftyp, then jp2h (its ihdr) before the first
    jp2c box, whose SIZ gives the size OpenJPEG decodes; an ihdr that disagrees is refused."""
    if data.startswith(b"\xff\x4f\xff\x51"):
        return _j2k_siz(data, 0)
    declared = None
    for index, (kind, start, end) in enumerate(_boxes(data, 0, len(data))):
        if index == 1 and kind != b"ftyp":
            raise _corrupt("JPEG 2000", "no ftyp box after the signature")
        if kind == b"jp2h" and declared is None:
            ihdr = next(((s, e) for k, s, e in _boxes(data, start, end) if k == b"ihdr"), None)
            if ihdr is None or ihdr[1] - ihdr[0] < 14:
                raise _corrupt("JPEG 2000", "no image header (ihdr) in its jp2h box")
            declared = (_be(data, ihdr[0] + 4, 4), _be(data, ihdr[0], 4))
        elif kind == b"jp2c":
            if declared is None:
                raise _corrupt("JPEG 2000", "codestream before the jp2h header box")
            info = _j2k_siz(data, start)
            if (info.width, info.height) != declared:
                raise _ambiguous(
                    "JPEG 2000",
                    f"its ihdr box says {declared[0]}x{declared[1]}, its codestream {info.width}x{info.height}",
                )
            return info
    raise _truncated("JPEG 2000", ": no codestream (jp2c) box")


OPENCV_PIXEL_LIMIT = "OPENCV_IO_MAX_IMAGE_PIXELS"  # OpenCV's own decoder cap (inputs/__init__.py)
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
TIFF_SIGNATURES = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


def header_info(data: bytes) -> HeaderInfo | None:
    """Format, size and decode bound from the header of every format OpenCV decodes; None for
    a signature no OpenCV decoder claims. RejectedImage when the header cannot be read the
    way the decoder will read it."""
    if data.startswith(PNG_SIGNATURE):
        return png_header(data)
    if data.startswith(b"\xff\xd8\xff"):
        return jpeg_header(data)
    if data[:4] in TIFF_SIGNATURES:
        return tiff_header(data)
    if data.startswith(b"BM"):
        return bmp_header(data)
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return webp_header(data)
    if data[:1] == b"P" and len(data) >= 3 and data[2] in C_WHITESPACE:
        if data[1:2] in (b"1", b"2", b"3", b"4", b"5", b"6"):
            return pnm_header(data)
        if data[1:2] == b"7":
            return pam_header(data)
        if data[1:2] in (b"F", b"f"):
            return pfm_header(data)
    if data.startswith((b"#?RADIANCE", b"#?RGBE")):
        return radiance_header(data)
    if data.startswith(b"\x76\x2f\x31\x01"):
        return exr_header(data)
    if data.startswith(JP2_SIGNATURE) or data.startswith(b"\xff\x4f\xff\x51"):
        return jpeg2000_header(data)
    if data.startswith((b"GIF87a", b"GIF89a")):
        return gif_header(data)
    if data.startswith(b"\x59\xa6\x6a\x95"):
        return sun_raster_header(data)
    if data[4:8] == b"ftyp":  # AVIF (ISO BMFF): libavif's reading, through Pillow
        return avif_header(data)
    return None


AVIF_BYTES_PER_PIXEL = 16  # 16-bit BGRA frame and libavif's 16-bit YUV planes


def avif_header(data: bytes) -> HeaderInfo:
    """AVIF's size sits in item properties of nested boxes; Pillow reads it with libavif, the
    library OpenCV decodes it with, and OpenCV's own pixel limit stays the backstop."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["AVIF"]) as image:
                width, height = image.size
    except Image.DecompressionBombError as err:
        raise RejectedImage(f"decompression bomb ({err})") from err
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for what it cannot read
        raise RejectedImage(
            f"not a decodable image (an ISO media file that does not read as AVIF: {str(err)[:80]})"
        ) from err
    return HeaderInfo("AVIF", width, height, decode_bytes=width * height * AVIF_BYTES_PER_PIXEL)


def check_complete(data: bytes) -> str:
    """Reject files whose end is missing (OpenCV silently grey-fills truncated JPEGs); bytes
    after a complete JPEG/PNG are ignored, and the returned note says so ('' if none)."""
    if not data:
        raise RejectedImage("empty file (0 bytes)")
    if data.startswith(JPEG_SIGNATURE):
        end, name = jpeg_end(data), "JPEG end-of-image marker"
    elif data.startswith(PNG_SIGNATURE):
        end, name = png_end(data), "PNG IEND chunk"
    else:
        return ""
    extra = len(data) - end
    return f"note: {extra} bytes after the {name} ignored" if extra else ""


def check_before_decode(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[HeaderInfo, str]:
    """Everything checked before OpenCV sees the bytes: the file is complete, its header reads
    the way the decoder will read it, its size is within `max_pixels` and decoding it stays
    within `decode_byte_limit`. -> (header, note for the catalog); RejectedImage otherwise."""
    note = check_complete(data)
    info = header_info(data)
    if info is None:
        raise RejectedImage(
            "not a decodable image (unknown format: its size cannot be read before decoding)"
        )
    if info.width <= 0 or info.height <= 0:
        raise _corrupt(info.format, f"size {info.width}x{info.height}")
    if info.pixels > max_pixels:
        raise RejectedImage(
            f"decompression bomb: {info.format} header says {info.width}x{info.height} "
            f"> {max_pixels} pixels (raise --max-pixels to allow)"
        )
    limit = decode_byte_limit(max_pixels)
    if info.decode_bytes > limit:
        raise RejectedImage(
            f"decompression bomb: decoding this {info.width}x{info.height} {info.format} would take "
            f"about {info.decode_bytes >> 20} MiB > {limit >> 20} MiB "
            "(raise --max-pixels to allow: the limit grows with it)"
        )
    if info.pages > 1:
        pages = f"note: multi-page {info.format}, first of {info.pages} pages kept"
        note = f"{note}; {pages}" if note else pages
    return info, note
