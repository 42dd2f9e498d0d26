"""Image files the tests make: thermal-looking frames, encodings, and files whose headers lie
(each a hostile case ingest, verify and the loader must refuse before decoding).
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
from PIL import Image

from inf590k.inputs.imageio import ImagePolicy


def thermal_frame(height: int = 120, width: int = 160, seed: int = 0) -> np.ndarray:
    """A smooth IR-like 8-bit frame with a hot blob: [H, W] uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    background = 60 + 40 * np.sin(xx / 23.0 + seed) + 30 * np.cos(yy / 17.0)
    blob = 120 * np.exp(-((xx - width * 0.6) ** 2 + (yy - height * 0.4) ** 2) / 150.0)
    noise = rng.normal(0, 3, (height, width))
    return np.clip(background + blob + noise, 0, 255).astype(np.uint8)


def encode(array: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, array)
    assert ok
    return buf.tobytes()


def png_with_header_size(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose IHDR claims width x height (a decompression bomb header)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


SMALL_CAP = ImagePolicy(max_pixels=100_000)  # the lies claim 64x64; the frames are 640x512


def big_frame() -> np.ndarray:
    """[512, 640] uint8: what every hostile file below really holds."""
    return thermal_frame(512, 640, seed=7)


def plain_tiff(
    width: int,
    height: int,
    pixels: bytes,
    extra=(),
    samples: int = 1,
    bits: int = 8,
    sample_format: int = 1,
) -> bytes:
    """A little-endian, uncompressed, single-strip TIFF; `extra` (tag, type, value) entries go
    right after the entries of the same tag (a tag given twice)."""
    entries = [
        (256, 4, width),
        (257, 4, height),
        (258, 3, bits),
        (259, 3, 1),
        (262, 3, 1 if samples == 1 else 2),
        (273, 4, 8),
        (277, 3, samples),
        (278, 4, height),
        (279, 4, len(pixels)),
        (339, 3, sample_format),
    ]
    for tag, kind, value in extra:
        entries.insert(max(i for i, e in enumerate(entries) if e[0] <= tag) + 1, (tag, kind, value))
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    return b"II*\0" + struct.pack("<I", 8 + len(pixels)) + pixels + ifd + struct.pack("<I", 0)


def tiff_with_repeated_size() -> bytes:
    """ImageWidth/ImageLength given twice: libtiff keeps the first (640x512), a last-wins
    reader sees 64x64."""
    return plain_tiff(640, 512, big_frame().tobytes(), extra=[(256, 4, 64), (257, 4, 64)])


def jpeg_with_rst0_and_fake_sof() -> bytes:
    """RST0 (a marker without a length) right after SOI, then an APP1 segment hiding a 64x64
    frame header where a walk that reads a length after every marker lands."""
    good = encode(big_frame(), ".jpg")
    landing = 2 + 2 + 0xFFE1  # RST0's "length" would be the APP1 marker bytes FF E1
    payload = bytearray(0xFFFD - 2)
    # a 64x64 frame header, then a scan header: the careless walk then finds the real end
    fake_sof = (
        b"\xff\xc0\x00\x0b\x08\x00\x40\x00\x40\x01\x01\x11\x00"
        + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
    )
    start = landing - 8  # the payload starts after SOI, RST0, the APP1 marker and its length
    payload[start : start + len(fake_sof)] = fake_sof
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + bytes(payload)
    return good[:2] + b"\xff\xd0" + app1 + good[2:]


def jp2_with_ihdr_in_xml() -> bytes:
    """A JP2 whose `xml ` box, before the real header box, holds the bytes of a 64x64 ihdr."""
    import io

    buffer = io.BytesIO()
    Image.fromarray(big_frame()).save(buffer, format="JPEG2000", no_jp2=False)
    data = buffer.getvalue()
    after_ftyp = 12 + struct.unpack(">I", data[12:16])[0]
    text = b"<note>" + b"ihdr" + struct.pack(">IIHBBBB", 64, 64, 1, 7, 7, 0, 0) + b"</note>"
    xml = struct.pack(">I", 8 + len(text)) + b"xml " + text
    return data[:after_ftyp] + xml + data[after_ftyp:]


def pgm_with_cr_comment() -> bytes:
    """A comment ended by CR: OpenCV reads 640x512 after it; a reader that ends comments at
    LF only skips that line and reads the next: 64x64."""
    return b"P5\n#\r640 512\n64 64\n255\n" + big_frame().tobytes()


def radiance_with_long_line() -> bytes:
    """OpenCV reads HDR header lines 127 bytes at a time: a 127-byte line's newline reads as the
    empty line ending the header, so `-Y 512 +X 640` is the size, not the later 64x64."""
    return (
        b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n"
        + b"X" * 127
        + b"\n-Y 512 +X 640\n\n-Y 64 +X 64\n"
        + bytes(4096)
    )


HEADER_LIES = {
    "tiff-repeated-size-tags": (
        tiff_with_repeated_size,
        "ambiguous TIFF header \\(tag 256 \\(ImageWidth\\) appears twice",
    ),
    "jpeg-rst0-then-fake-sof": (
        jpeg_with_rst0_and_fake_sof,
        "decompression bomb: JPEG header says 640x512",
    ),
    "jp2-ihdr-inside-xml-box": (
        jp2_with_ihdr_in_xml,
        "decompression bomb: JPEG 2000 header says 640x512",
    ),
    "pgm-cr-ended-comment": (pgm_with_cr_comment, "decompression bomb: P5 header says 640x512"),
    "hdr-127-byte-line": (
        radiance_with_long_line,
        "decompression bomb: Radiance HDR header says 640x512",
    ),
}


def os2_bmp(frame: np.ndarray) -> bytes:
    """An OS/2 bitmap: a 12-byte BITMAPCOREHEADER (16-bit sizes), 8 bits with a grey palette."""
    height, width = frame.shape
    palette = bytes(v for level in range(256) for v in (level, level, level))
    stride = (width + 3) & ~3
    rows = b"".join(frame[y].tobytes().ljust(stride, b"\0") for y in range(height - 1, -1, -1))
    offset = 14 + 12 + len(palette)
    core = struct.pack("<IHHHH", 12, width, height, 1, 8)
    return b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + core + palette + rows


def png_with_huge_text_chunk() -> bytes:
    """A valid PNG with a tEXt chunk claiming 0x7FFFFFF0 bytes after IHDR (OpenCV's chunk
    reader allocates a chunk's claimed length before reading it)."""
    good = encode(thermal_frame())
    text = struct.pack(">I", 0x7FFFFFF0) + b"tEXt" + b"Comment\0" + bytes(56)
    return good[:33] + text + good[33:]


def jpeg_damaged(where: str) -> bytes:
    """A complete JPEG with one byte wrong or one byte too many."""
    data = bytearray(encode(thermal_frame(), ".jpg"))
    scan = data.find(b"\xff\xda")
    if where == "stray byte between segments":
        second = 2 + 2 + struct.unpack(">H", data[4:6])[0]  # after APP0
        return bytes(data[:second] + b"\x00" + data[second:])
    if where == "segment length":
        data[4:6] = struct.pack(">H", struct.unpack(">H", data[4:6])[0] + 3)
    elif where == "start-of-scan marker":
        data[scan + 1] ^= 0x20
    elif where == "end marker":
        data[-1] ^= 0x80
    elif where == "entropy-coded data":
        for offset in range(scan + 200, scan + 2000, 97):
            data[offset] ^= 0x5A
    return bytes(data)
