"""The loader's PNG crop decoder: the pixels libpng gives, for any box, from any PNG writer."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from inf590k.build.shard.tar import encode_png
from pretrain.data import DataConfig, crop_flip, crop_png, decode_ir_png
from pretrain.data.pngcrop import check_pixels, decode_box, decode_png, max_png_bytes, read_header


def opencv(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def real_grey_frames(samples: Path, limit: int = 6) -> list[np.ndarray]:
    """Grey frames of the sample datasets (the IR images, not the paired visible ones)."""
    frames = []
    for path in sorted(samples.rglob("*")):
        if path.suffix.lower() not in {".png", ".jpg", ".jpeg", ".bmp"}:
            continue
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is not None and image.ndim == 2 and image.dtype == np.uint8:
            frames.append(image)
        if len(frames) == limit:
            break
    return frames


def thermal(shape: tuple[int, int], dtype: type = np.uint8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 16383
    smooth = np.linspace(0, top * 0.6, shape[0] * shape[1]).reshape(shape)
    return (smooth + rng.integers(0, top // 3, shape)).astype(dtype)


def random_boxes(height: int, width: int, count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        yield int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    yield 0, 0, height, width  # the whole frame
    yield height - 1, width - 1, 1, 1  # the last pixel


def test_shard_writer_pngs_decode_to_libpngs_pixels_for_any_box(ir_samples):
    frames = real_grey_frames(ir_samples)
    assert frames, f"no grey sample frames under {ir_samples}"
    frames += [thermal((61, 97)), thermal((1, 5)), thermal((300, 1)), thermal((37, 41), np.uint16)]
    for index, frame in enumerate(frames):
        data = encode_png(frame, 1)
        header = read_header(data)
        assert header.fast, "the shard writer's PNGs must take the fast path"
        assert np.array_equal(decode_png(data, 10**8), opencv(data))
        for top, left, h, w in random_boxes(*frame.shape, count=8, seed=index):
            crop = decode_box(data, header, (top, left, h, w))
            assert crop.dtype == frame.dtype and crop.flags.c_contiguous
            assert np.array_equal(crop, frame[top : top + h, left : left + w])


def pillow_png(image: np.ndarray, mode: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).convert(mode).save(buffer, format="PNG", **save)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name, make",
    [
        ("opencv adaptive filters", lambda f: cv2.imencode(".png", f)[1].tobytes()),
        ("opencv 16-bit adaptive", lambda f: cv2.imencode(".png", f.astype(np.uint16) * 60)[1].tobytes()),
        ("pillow grey", lambda f: pillow_png(f, "L", optimize=True)),
        ("pillow grey + tRNS", lambda f: pillow_png(f, "L", transparency=0)),
        ("pillow grey + alpha", lambda f: pillow_png(f, "LA")),
        ("pillow palette", lambda f: pillow_png(f, "P")),
        ("pillow 1-bit", lambda f: pillow_png(f, "1")),
        ("pillow RGB", lambda f: pillow_png(f, "RGB")),
        ("opencv colour", lambda f: cv2.imencode(".png", np.dstack([f, f // 2, f // 3]))[1].tobytes()),
    ],
)  # fmt: skip
def test_other_writers_pngs_decode_as_opencv_does(name, make):
    frame = thermal((45, 70))
    data = make(frame)
    expected = decode_ir_png_reference(data)
    assert np.array_equal(decode_png(data, 10**8), expected), name
    header = read_header(data)
    assert np.array_equal(decode_box(data, header, (5, 9, 30, 40)), expected[5:35, 9:49]), name


def decode_ir_png_reference(data: bytes) -> np.ndarray:
    """What the loader decoded before the crop decoder: OpenCV, colour converted to grey."""
    image = opencv(data)
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        image = cv2.cvtColor(image, code)
    return image


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def handmade_png(frame: np.ndarray, filters: list[int], idat_size: int = 100) -> bytes:
    """A grey 8-bit PNG with the given per-row filter types (0 None, 2 Up), IDAT split small."""
    rows = []
    for y, kind in enumerate(filters):
        prior = frame[y - 1] if y else np.zeros_like(frame[0])
        line = frame[y] if kind == 0 else (frame[y] - prior)  # uint8 wraps: mod 256
        rows.append(bytes([kind]) + line.astype(np.uint8).tobytes())
    stream = zlib.compress(b"".join(rows), 9)
    ihdr = struct.pack(">IIBBBBB", frame.shape[1], frame.shape[0], 8, 0, 0, 0, 0)
    idats = [
        png_chunk(b"IDAT", stream[i : i + idat_size]) for i in range(0, len(stream), idat_size)
    ]
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"tEXt", b"Comment\0made by hand")
        + b"".join(idats)
        + png_chunk(b"IEND", b"")
    )


def test_row_filters_other_than_up_fall_back_to_opencv():
    frame = thermal((20, 33))
    up_after_none = handmade_png(frame, [0] + [2] * 19)  # row 0 unfiltered: same as Up
    mixed = handmade_png(frame, [2] * 10 + [0] + [2] * 9)  # a None row mid-image
    for data in (up_after_none, mixed):
        assert np.array_equal(opencv(data), frame)
        assert np.array_equal(decode_png(data, 10**6), frame)
        assert np.array_equal(
            decode_box(data, read_header(data), (3, 4, 15, 20)), frame[3:18, 4:24]
        )


def test_damaged_cut_and_foreign_data_fail_with_a_reason():
    data = encode_png(thermal((64, 80)), 1)
    header = read_header(data)
    flipped = bytearray(data)
    flipped[data.index(b"IDAT") + 20] ^= 0x40  # a bit inside the image data
    with pytest.raises(ValueError, match="CRC"):
        decode_png(bytes(flipped), 10**6)
    with pytest.raises(ValueError, match="could not decode"):
        decode_png(data[: len(data) // 2], 10**6)
    with pytest.raises(ValueError, match="not a PNG"):
        decode_png(b"GIF89a" + bytes(64), 10**6)
    with pytest.raises(ValueError, match="outside"):
        decode_box(data, header, (60, 0, 10, 10))
    # right CRCs over a stream that is not deflate: an error, not garbage pixels
    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 0, 0, 0, 0)
    junk = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", b"\x78\x9c" + bytes(range(250, 256)) * 40)
        + png_chunk(b"IEND", b"")
    )
    with pytest.raises(ValueError, match="could not decode"):
        decode_png(junk, 10**6)


def test_a_bomb_is_refused_from_its_header_before_inflating():
    # IHDR claims 100000 x 100000 pixels over a few bytes of data: refused, nothing allocated.
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(bytes(10_000)))
        + png_chunk(b"IEND", b"")
    )
    with pytest.raises(ValueError, match="pixel cap"):
        decode_png(bomb, 80_000_000)
    with pytest.raises(ValueError, match="pixel cap"):
        crop_png(bomb, (32, 32), np.random.default_rng(0), DataConfig())
    # under the cap, rows the data does not hold are an error, not zeros
    with pytest.raises(ValueError, match="data ends"):
        decode_png(bomb, 10**11)


@pytest.mark.parametrize("bits", [8, 16])
def test_loader_crops_are_those_of_the_whole_frame_path(bits):
    """crop_png (decode the box only) gives the pixels and draws of crop_flip(decode whole)."""
    config = DataConfig(hflip=0.5)
    frame = thermal((96, 128), np.uint8 if bits == 8 else np.uint16, seed=bits)
    for data in (encode_png(frame, 1), cv2.imencode(".png", frame)[1].tobytes()):
        for seed in range(12):
            fast = crop_png(data, (40, 48), np.random.default_rng(seed), config)
            whole = decode_ir_png(data, 10**6)
            reference = crop_flip(whole, (40, 48), np.random.default_rng(seed), config)
            assert fast.dtype == np.uint8 and fast.shape == (40, 48)
            assert np.array_equal(fast, reference)


def test_files_libpng_refuses_are_refused_whatever_the_crop():
    """A crop of the intact top rows must not rescue a file libpng rejects: the sample is
    skipped alike, whichever crop is drawn."""
    frame = thermal((40, 30))
    good = handmade_png(frame, [2] * 40, idat_size=200)
    iend = png_chunk(b"IEND", b"")
    first_idat = good.index(b"IDAT") - 4
    second_idat = good.index(b"IDAT", first_idat + 8) - 4
    ihdr_method = bytearray(good)
    ihdr_method[8 + 8 + 11] = 1  # filter method 1 (IHDR CRC fixed below)
    ihdr_method[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr_method[12:29])))
    refused = {
        "no IEND": good[: -len(iend)],
        "cut inside IEND's CRC": good[:-2],
        "IDAT, tEXt, IDAT": good[:second_idat] + png_chunk(b"tEXt", b"a\0b") + good[second_idat:],
        "unknown critical chunk": good[:first_idat] + png_chunk(b"ABCD", b"x") + good[first_idat:],
        "filter method 1": bytes(ihdr_method),
    }
    assert np.array_equal(decode_box(good, read_header(good), (0, 0, 5, 30)), frame[:5])
    for name, data in refused.items():
        assert opencv(data) is None, name
        with pytest.raises(ValueError, match="could not decode"):
            decode_box(data, read_header(data), (0, 0, 5, 30))


# ---------------------------------------------------------------- libpng's verdict, every crop


def grey_frame(height: int = 40, width: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def up_rows(frame: np.ndarray, filters: list[int] | None = None) -> bytes:
    """The filtered scanlines of an 8-bit grey frame: Up (2) on every row unless `filters`."""
    rows = []
    for y in range(frame.shape[0]):
        kind = 2 if filters is None else filters[y]
        prior = frame[y - 1] if y else np.zeros_like(frame[0])
        line = frame[y] - prior if kind == 2 else frame[y]  # uint8 wraps: mod 256
        rows.append(bytes([kind]) + line.astype(np.uint8).tobytes())
    return b"".join(rows)


def png_of(stream: bytes, frame: np.ndarray, idat_size: int = 1 << 20, before: bytes = b"",
           after: bytes = b"", iend: bytes | None = None, ihdr: bytes | None = None) -> bytes:  # fmt: skip
    """A PNG around a given zlib stream: IHDR of `frame`, IDAT chunks of `idat_size` bytes."""
    ihdr = ihdr or struct.pack(">IIBBBBB", frame.shape[1], frame.shape[0], 8, 0, 0, 0, 0)
    chunks = [stream[i : i + idat_size] for i in range(0, len(stream), idat_size)]
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + before
        + b"".join(png_chunk(b"IDAT", c) for c in chunks)
        + after
        + (png_chunk(b"IEND", b"") if iend is None else iend)
    )


def crops(height: int, width: int) -> list[tuple[int, int, int, int]]:
    return [(0, 0, 5, width), (0, 0, height, width), (height - 3, 2, 3, 5), (10, 5, 8, 8)]


def assert_as_libpng(data: bytes, frame: np.ndarray | None) -> None:
    """libpng (cv2.imdecode) decodes `data` to `frame`, or refuses it (None); so does the crop
    decoder, for every crop."""
    assert (opencv(data) is None) == (frame is None)
    if frame is not None:
        assert np.array_equal(opencv(data), frame)
    for top, left, h, w in crops(*(frame.shape if frame is not None else (40, 30))):
        if frame is None:
            with pytest.raises(ValueError, match="PNG"):
                decode_box(data, read_header(data), (top, left, h, w))
        else:
            crop = decode_box(data, read_header(data), (top, left, h, w))
            assert np.array_equal(crop, frame[top : top + h, left : left + w])


def test_a_second_ihdr_after_idat_is_refused_for_every_crop():
    frame = grey_frame()
    data = png_of(zlib.compress(up_rows(frame)), frame, after=png_chunk(b"IHDR", struct.pack(
        ">IIBBBBB", 30, 40, 8, 0, 0, 0, 0)))  # fmt: skip
    assert_as_libpng(data, None)
    with pytest.raises(ValueError, match="second IHDR"):
        read_header(data)


def test_a_zlib_stream_without_its_adler32_is_refused_for_every_crop():
    frame = grey_frame()
    stream = zlib.compress(up_rows(frame))
    assert_as_libpng(png_of(stream[:-4], frame), None)  # no checksum
    assert_as_libpng(png_of(stream[:-2], frame), None)  # half of it
    assert_as_libpng(png_of(stream[:-4] + b"\0\0\0\0", frame), None)  # a wrong one
    with pytest.raises(ValueError, match="without its zlib checksum"):
        decode_box(
            png_of(stream[:-4], frame), read_header(png_of(stream[:-4], frame)), (0, 0, 5, 5)
        )


def test_a_side_over_libpngs_million_pixel_limit_is_refused():
    frame = grey_frame(1, 30)
    for width, height in ((1_000_001, 1), (1, 1_000_001)):
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
        data = png_of(zlib.compress(bytes(width + 1) * height), frame, ihdr=ihdr)
        assert opencv(data) is None
        with pytest.raises(ValueError, match="1,000,000-pixel limit a side"):
            read_header(data)


def test_a_bad_filter_byte_below_the_crop_is_refused():
    frame = grey_frame()
    for filters in ([2] * 39 + [5], [2] * 30 + [255] + [2] * 9):
        data = png_of(zlib.compress(up_rows(frame, filters)), frame)
        assert_as_libpng(data, None)
        with pytest.raises(ValueError, match=r"row \d+ has filter type \d+"):
            decode_box(data, read_header(data), (0, 0, 5, 30))  # the top rows are intact


def test_valid_other_filters_below_the_crop_still_take_the_fast_path():
    frame = grey_frame()
    data = png_of(zlib.compress(up_rows(frame, [2] * 30 + [0] * 10)), frame)
    assert read_header(data).fast
    assert_as_libpng(data, frame)


def test_stream_ends_libpng_accepts_are_accepted():
    """libpng 1.6 reads the end of the zlib stream only as far as its input reaches after the
    last row: data past the rows, trailing bytes, a checksum in a later IDAT chunk are not
    refused. The crop decoder hands such files to OpenCV rather than guess."""
    frame = grey_frame()
    rows = up_rows(frame)
    stream = zlib.compress(rows)
    wrong_sum = stream[:-4] + b"\1\2\3\4"
    cases = {
        "bytes after the stream": png_of(stream + b"junk", frame),
        "an IDAT after the stream": png_of(stream, frame, after=png_chunk(b"IDAT", b"x")),
        "a row too many, wrong checksum": png_of(zlib.compress(rows + rows[:31])[:-4] + b"\0" * 4, frame),
        "a wrong checksum in its own chunk": png_of(wrong_sum, frame, idat_size=len(stream) - 4),
        "IEND with a wrong CRC": png_of(stream, frame, iend=png_chunk(b"IEND", b"")[:-1] + b"\0"),
    }  # fmt: skip
    for name, data in cases.items():
        assert opencv(data) is not None, name
        assert_as_libpng(data, frame)


def test_a_window_smaller_than_the_image_goes_to_libpng():
    """A zlib header may declare a window under 32 KiB; libpng then refuses a distance past
    it, ISA-L and Python's zlib do not. Rows repeating 10 rows apart (300 bytes) under a
    256-byte window: libpng refuses the file, so must the crop decoder."""
    frame = np.vstack([grey_frame(10, 30)] * 4)
    stream = zlib.compress(up_rows(frame, [0] * 40), 9)
    small_window = bytes([0x08, (31 - (0x08 << 8) % 31) % 31]) + stream[2:]
    data = png_of(small_window, frame)
    assert opencv(data) is None and not read_header(data).fast
    with pytest.raises(ValueError, match="libpng refuses it"):
        decode_box(data, read_header(data), (0, 0, 5, 30))
    fits = png_of(bytes([0x78, 0x9C]) + stream[2:], frame)  # the same data, 32 KiB window
    assert_as_libpng(fits, frame)


def test_a_huge_chunk_length_is_refused_before_anything_is_allocated():
    """A tEXt chunk claiming 2 GiB in a small file: OpenCV resizes a buffer to the claimed
    length before finding the data short (2 GiB per worker); the header walk refuses it."""
    frame = grey_frame()
    good = png_of(zlib.compress(up_rows(frame)), frame)
    lying = good[:33] + struct.pack(">I", 0x7FFFFFF0) + b"tEXt" + good[33:]
    tracemalloc.start()
    with pytest.raises(ValueError, match="cut short in its 'tEXt' chunk"):
        read_header(lying)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20


def test_image_data_larger_than_its_rows_can_take_is_refused_unread():
    """A 64x64 frame whose IDAT goes on with 256 MiB of zeros (250 KB compressed): libpng
    inflates and drops all of it (~0.6 s of CPU per sample, minutes for a large member), so
    the header walk refuses it from the chunk sizes, before inflating anything."""
    frame = np.zeros((64, 64), np.uint8)
    packer = zlib.compressobj(1)
    stream = packer.compress(up_rows(frame)) + packer.compress(bytes(256 << 20)) + packer.flush()
    data = png_of(stream, frame, idat_size=1 << 16)
    with pytest.raises(ValueError, match="decompression bomb"):
        read_header(data)
    assert read_header(png_of(zlib.compress(up_rows(frame)), frame)).fast  # the frame alone


def test_millions_of_empty_chunks_are_refused_from_their_count():
    """1,000,000 empty IDAT chunks (11 MiB) before the real one: libpng reads them in 0.06 s,
    walking them here took 5.5 s; a file holds at most 4,096 chunks plus one per 256 bytes
    its image's data could take (libpng writes 8 KiB chunks)."""
    frame = grey_frame(64, 64)
    good = png_of(zlib.compress(up_rows(frame)), frame)
    empty = png_chunk(b"IDAT", b"")
    bomb = good[:33] + empty * 1_000_000 + good[33:]
    assert opencv(bomb) is not None
    with pytest.raises(ValueError, match=r"more than 4,370 chunks for a 64x64 image"):
        read_header(bomb)
    assert_as_libpng(good[:33] + empty * 4000 + good[33:], frame)  # thousands still read


@pytest.mark.parametrize("colour", ["grey8", "grey16", "rgba16"])
def test_no_real_encoder_reaches_the_size_bounds(colour):
    """max_png_bytes and the IDAT limit hold for the worst PNGs encoders make: incompressible
    pixels, stored (level 0) or fixed-Huffman deflate, 16-bit RGBA at 8 bytes a pixel."""
    rng = np.random.default_rng(1)
    shape = {"grey8": (37, 53), "grey16": (37, 53), "rgba16": (37, 53, 4)}[colour]
    dtype = np.uint8 if colour == "grey8" else np.uint16
    frame = rng.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)
    levels = [cv2.imencode(".png", frame, [cv2.IMWRITE_PNG_COMPRESSION, level])[1].tobytes()
              for level in (0, 1, 9)]  # fmt: skip
    fixed = cv2.imencode(".png", frame, [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_FIXED])
    for data in [*levels, fixed[1].tobytes()]:
        assert len(data) <= max_png_bytes(37 * 53)
        read_header(data)  # under its IDAT limit
        assert decode_png(data, 10**6).shape == (37, 53)


# ---------------------------------------------------------------- fuzzing against libpng


def png_chunks(data: bytes) -> tuple[list[list], bytes]:
    """[[type, data], ...] up to IEND, and what follows IEND."""
    chunks, position = [], 8
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        chunks.append([kind, data[position + 8 : position + 8 + length]])
        position += 12 + length
        if kind == b"IEND":
            break
    return chunks, data[position:]


def png_from(chunks: list[list], tail: bytes = b"") -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(png_chunk(k, d) for k, d in chunks) + tail


def fuzz_base(rng: np.random.Generator) -> bytes:
    height, width = int(rng.integers(1, 60)), int(rng.integers(1, 80))
    dtype = np.uint16 if rng.integers(0, 5) == 0 else np.uint8
    frame = thermal((height, width), dtype, seed=int(rng.integers(0, 1000)))
    which = int(rng.integers(0, 9))
    if which < 7:
        return encode_png(frame, 1)  # the shard writer: the fast path
    if which == 7:
        return cv2.imencode(".png", frame)[1].tobytes()  # other filters: OpenCV
    return pillow_png(frame, "I;16" if dtype == np.uint16 else "L")


def restream(rng: np.random.Generator, data: bytes) -> bytes:
    """The PNG with its zlib stream rebuilt around a fault: a bad or valid filter byte in some
    row, rows added or missing, bytes after the stream, its checksum cut or wrong, another
    window size, a stream without its final block, IDAT chunks of any size."""
    chunks, tail = png_chunks(data)
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if colour != 0 or interlace or depth not in (8, 16):
        return data
    stride = 1 + width * depth // 8
    rows = bytearray(zlib.decompress(b"".join(d for k, d in chunks if k == b"IDAT")))
    fault = int(rng.integers(0, 9))
    if fault == 0:
        rows[int(rng.integers(0, height)) * stride] = int(rng.integers(5, 256))
    elif fault == 1:
        rows[int(rng.integers(0, height)) * stride] = int(rng.integers(0, 5))
    elif fault == 2:
        rows += rng.integers(0, 256, int(rng.integers(1, 3 * stride)), dtype=np.uint8).tobytes()
    elif fault == 3:
        rows = rows[: int(rng.integers(0, len(rows)))]
    level = int(rng.integers(0, 10))
    if fault == 4:
        window = int(rng.integers(9, 16))
        packer = zlib.compressobj(level, zlib.DEFLATED, window)
        stream = packer.compress(bytes(rows)) + packer.flush()
    elif fault == 5:
        packer = zlib.compressobj(level)
        stream = packer.compress(bytes(rows)) + packer.flush(zlib.Z_SYNC_FLUSH)
    else:
        stream = zlib.compress(bytes(rows), level)
    if fault == 6:
        stream += rng.integers(0, 256, int(rng.integers(1, 20)), dtype=np.uint8).tobytes()
    elif fault == 7:
        stream = stream[: -int(rng.integers(1, 5))]
    elif fault == 8:
        stream = stream[:-4] + rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
    step = int(rng.integers(1, 9000))
    if rng.integers(0, 3) == 0 and len(stream) > 8:
        step = len(stream) - int(rng.integers(1, 8))  # the checksum in a chunk of its own
    idat = [[b"IDAT", stream[i : i + step]] for i in range(0, len(stream), step)]
    others = [c for c in chunks if c[0] not in (b"IDAT", b"IEND")]
    return png_from(others + idat + [[b"IEND", b""]], tail)


INSERTED = [b"IHDR", b"IDAT", b"IEND", b"PLTE", b"tRNS", b"acTL", b"fcTL", b"tEXt", b"zTXt",
            b"bKGD", b"gAMA", b"iCCP", b"sRGB", b"pHYs", b"eXIf", b"abCd", b"ABCD", b"ab1d",
            b"abcd"]  # fmt: skip


def mutate_png(rng: np.random.Generator, data: bytes) -> bytes:
    kind = int(rng.integers(0, 8))
    if kind == 0:  # bit flips anywhere
        damaged = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            damaged[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
        return bytes(damaged)
    if kind == 1:
        return data[: int(rng.integers(0, len(data)))]
    if kind == 2:
        return restream(rng, data)
    chunks, tail = png_chunks(data)
    index = int(rng.integers(0, len(chunks)))
    if kind == 3 and chunks[index][1]:  # flips inside a chunk, its CRC fixed
        body = bytearray(chunks[index][1])
        body[int(rng.integers(0, len(body)))] ^= 1 << int(rng.integers(0, 8))
        chunks[index][1] = bytes(body)
    elif kind == 4:  # a chunk inserted anywhere
        name = INSERTED[int(rng.integers(0, len(INSERTED)))]
        size = int(rng.choice([0, 1, 2, 6, 8, 13, 26, 40]))
        body = chunks[0][1] if name == b"IHDR" else rng.integers(0, 256, size, np.uint8).tobytes()
        chunks.insert(int(rng.integers(1, len(chunks) + 1)), [name, body])
    elif kind == 5:  # a chunk dropped, doubled or moved
        other = int(rng.integers(0, len(chunks)))
        action = int(rng.integers(0, 3))
        if action == 0:
            del chunks[index]
        elif action == 1:
            chunks.insert(index, list(chunks[index]))
        else:
            chunks[index], chunks[other] = chunks[other], chunks[index]
    elif kind == 6:  # an IHDR field, its CRC fixed
        fields = list(struct.unpack(">IIBBBBB", chunks[0][1]))
        field = int(rng.integers(0, 7))
        choices = [[0, 1, fields[0] + 1, max(1, fields[0] - 1), 1_000_000, 1_000_001, 2**31],
                   [0, 1, fields[1] + 1, max(1, fields[1] - 1), 1_000_001], [1, 2, 3, 8, 16, 32],
                   [0, 1, 2, 3, 4, 6, 7], [0, 1], [0, 1], [0, 1, 2]][field]  # fmt: skip
        fields[field] = int(rng.choice(choices))
        chunks[0][1] = struct.pack(">IIBBBBB", *fields)
    else:  # bytes after IEND, or a chunk length that lies (its CRC then lands elsewhere)
        if rng.integers(0, 2):
            return data + rng.integers(0, 256, int(rng.integers(1, 40)), np.uint8).tobytes()
        damaged, position, starts = bytearray(data), 8, []
        while position + 8 <= len(data):
            starts.append(position)
            position += 12 + struct.unpack(">I", data[position : position + 4])[0]
        start = int(rng.choice(starts))
        damaged[start : start + 4] = struct.pack(">I", int(rng.choice([0, 1, 2**31, 2**32 - 1])))
        return bytes(damaged)
    return png_from(chunks, tail)


def libpng_decode(data: bytes) -> np.ndarray | None:
    try:
        return decode_ir_png_reference(data) if opencv(data) is not None else None
    except cv2.error:  # an empty buffer
        return None


# Refusals of our own, outside the libpng contract (tested on their own above): the pixel cap
# and the two CPU bombs.
OUR_CAPS = ("pixel cap", "a decompression bomb?", "a CPU bomb?")


def fuzz_pngs(seed: int, count: int) -> dict[str, int]:
    """Every mutated PNG is decoded as cv2.imdecode-then-crop decodes it, or refused by both,
    for every crop (whole frame, corners, random boxes)."""
    rng = np.random.default_rng(seed)
    outcomes = {"decoded": 0, "refused": 0}
    for case in range(count):
        data = mutate_png(rng, fuzz_base(rng))
        try:
            header = read_header(data)
            check_pixels(header, 1 << 22)
        except ValueError as exc:
            if any(cap in str(exc) for cap in OUR_CAPS):
                continue
            assert libpng_decode(data) is None, (seed, case, str(exc))
            outcomes["refused"] += 1
            continue
        expected = libpng_decode(data)
        height, width = header.height, header.width
        boxes = [
            (0, 0, height, width),
            (height - 1, width - 1, 1, 1),
            *random_boxes(height, width, 2, case),
        ]
        for top, left, h, w in boxes:
            try:
                crop = decode_box(data, header, (top, left, h, w))
            except ValueError as exc:
                assert expected is None, (seed, case, str(exc))
                continue
            assert expected is not None, (seed, case, "decoded a PNG libpng refuses")
            assert np.array_equal(crop, expected[top : top + h, left : left + w]), (seed, case)
        outcomes["decoded" if expected is not None else "refused"] += 1
    return outcomes


def test_fuzzed_pngs_decode_as_libpng_decodes_them_or_are_refused_by_both():
    outcomes = fuzz_pngs(seed=0, count=300)
    assert outcomes["decoded"] > 50 and outcomes["refused"] > 50


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fuzzed_pngs_many(seed):
    fuzz_pngs(seed=seed, count=3000)
