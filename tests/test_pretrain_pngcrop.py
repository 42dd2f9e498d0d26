"""The loader's PNG crop decoder: the pixels libpng gives, for any box, from any PNG writer."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from inf590k.build.shard.tar import encode_png
from pretrain.data import DataConfig, crop_flip, crop_png, decode_ir_png
from pretrain.pngcrop import decode_box, decode_png, read_header


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
    idats = [png_chunk(b"IDAT", stream[i : i + idat_size]) for i in range(0, len(stream), idat_size)]
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
        assert np.array_equal(decode_box(data, read_header(data), (3, 4, 15, 20)), frame[3:18, 4:24])


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
