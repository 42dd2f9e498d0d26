"""One decode per file: grey check, borders, 16-bit policy, hashes; bad files get a reason."""

from __future__ import annotations

import struct

import cv2
import imagehash
import numpy as np
import pytest
from PIL import Image

from inf590k.inputs.fingerprint import (
    PHASH_SIZE,
    entropy_bits,
    exact_resize_rule,
    fingerprint,
    phash_thumbnail,
)
from inf590k.inputs.headers import RejectedImage, check_before_decode, decode_byte_limit
from inf590k.inputs.imageio import ImagePolicy, process_image_bytes
from tests.images import (
    HEADER_LIES,
    SMALL_CAP,
    encode,
    jpeg_damaged,
    os2_bmp,
    plain_tiff,
    png_with_header_size,
    png_with_huge_text_chunk,
    thermal_frame,
    tiff_with_repeated_size,
)

POLICY = ImagePolicy()


def test_grey_8bit_png_is_kept_unchanged():
    frame = thermal_frame()
    processed = process_image_bytes(encode(frame), POLICY)
    assert processed.pixels.dtype == np.uint8
    np.testing.assert_array_equal(processed.view8, frame)
    assert (processed.orig_channels, processed.bit_depth, processed.normalisation) == (1, 8, "none")


def test_ir_stored_as_rgb_becomes_one_channel():
    frame = thermal_frame()
    bgr = np.dstack([frame, frame, frame])
    bgr[..., 2] = np.clip(frame.astype(int) + 3, 0, 255)  # a few levels off: still IR
    processed = process_image_bytes(encode(bgr), POLICY)
    assert processed.view8.ndim == 2 and processed.orig_channels == 3
    assert 0 < processed.grey_diff < POLICY.grey_tolerance


def test_true_colour_image_is_rejected_unless_allowed():
    frame = thermal_frame()
    colour = np.dstack([frame, 255 - frame, np.full_like(frame, 128)])
    with pytest.raises(RejectedImage, match="colour image"):
        process_image_bytes(encode(colour), POLICY)
    processed = process_image_bytes(encode(colour), ImagePolicy(allow_colour=True))
    assert processed.view8.ndim == 2


def test_rgba_and_palette_pngs_decode_to_grey(tmp_path):
    frame = thermal_frame()
    rgba = Image.fromarray(np.dstack([frame, frame, frame, np.full_like(frame, 255)]), "RGBA")
    palette = Image.fromarray(frame).convert("P")
    for image, name in ((rgba, "rgba.png"), (palette, "p.png")):
        image.save(tmp_path / name)
        processed = process_image_bytes((tmp_path / name).read_bytes(), POLICY)
        assert processed.view8.shape == frame.shape
        assert np.abs(processed.view8.astype(int) - frame).max() <= 2  # palette quantisation


def test_16bit_frame_gets_recorded_stretch_and_distinct_hashes():
    rng = np.random.default_rng(1)
    raw_a = (thermal_frame(seed=1).astype(np.uint16) * 16 + 7000) + rng.integers(
        0, 4, (120, 160)
    ).astype(np.uint16)
    raw_b = thermal_frame(seed=5).astype(np.uint16) * 16 + 7000
    a = process_image_bytes(encode(raw_a), POLICY)
    b = process_image_bytes(encode(raw_b), POLICY)
    assert a.pixels.dtype == np.uint16 and a.view8.dtype == np.uint8 and a.bit_depth == 16
    assert a.normalisation.startswith("p1-p99 stretch")
    assert a.view8.min() == 0 and a.view8.max() == 255
    # Pillow would clip raw 16-bit to 8 bits and give both the same pHash; the views differ.
    assert fingerprint(a.view8).phash != fingerprint(b.view8).phash


def test_16bit_tiff_is_kept():
    raw = thermal_frame().astype(np.uint16) * 50
    processed = process_image_bytes(encode(raw, ".tiff"), POLICY)
    assert processed.bit_depth == 16 and processed.view8.shape == raw.shape


def test_zero_border_and_fixed_frame_are_cropped():
    frame = thermal_frame()
    padded = np.zeros((140, 200), np.uint8)
    padded[10:130, 25:185] = frame
    processed = process_image_bytes(encode(padded), POLICY)
    assert processed.crop_box == (25, 10, 185, 130)
    np.testing.assert_array_equal(processed.view8, frame)

    framed = np.full((140, 200), 255, np.uint8)
    framed[10:130, 20:180] = frame
    framed_policy = ImagePolicy(border_width=10)
    processed = process_image_bytes(encode(framed), framed_policy)
    assert processed.crop_box == (10, 10, 190, 130)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"this is a text file, not an image", "not a decodable image"),
        (encode(thermal_frame())[:300], "truncated PNG"),
        (encode(thermal_frame(), ".jpg")[:500], "truncated JPEG"),
        (encode(np.full((1, 1), 90, np.uint8)), "too small"),
        (encode(np.zeros((64, 64), np.uint8)), "blank image"),
        (png_with_header_size(100_000, 100_000), "decompression bomb"),
    ],
    ids=["empty", "text", "truncated-png", "truncated-jpeg", "1x1", "blank", "bomb-header"],
)
def test_bad_bytes_are_rejected_with_a_reason(data, reason):
    with pytest.raises(RejectedImage, match=reason):
        process_image_bytes(data, POLICY)


def test_pixel_cap_applies_to_headers_under_pillow_limit():
    with pytest.raises(RejectedImage, match="decompression bomb"):
        process_image_bytes(encode(thermal_frame()), ImagePolicy(max_pixels=1000))


def test_small_side_rule_needs_both_sides_short():
    strip = encode(np.tile(thermal_frame()[:10], (1, 1)))  # 160 x 10: one long side is enough
    assert process_image_bytes(strip, POLICY).width == 160


def test_entropy_and_phash_match_references():
    skimage_measure = pytest.importorskip("skimage.measure")
    frame = thermal_frame(seed=3)
    assert entropy_bits(frame) == pytest.approx(
        skimage_measure.shannon_entropy(frame, base=2), abs=1e-6
    )
    assert fingerprint(frame).phash == str(imagehash.phash(Image.fromarray(frame)))
    assert entropy_bits(np.full((8, 8), 7, np.uint8)) == 0.0


# Shapes that exercise both of Pillow's pass orders, no-op passes (a side already 32),
# enlargement (a side under 32), odd scales and the common IR frame sizes.
RESIZE_SHAPES = [
    (512, 640),
    (120, 160),
    (256, 336),
    (288, 382),
    (1080, 1920),
    (1300, 640),
    (2000, 37),
    (37, 2000),
    (32, 700),
    (700, 32),
    (32, 32),
    (20, 25),
    (21, 500),
    (511, 639),
    (33, 33),
]


def resize_cases(shape: tuple[int, int], seed: int) -> list[np.ndarray]:
    """Noise, saturated black/white noise (the fixed-point sums' extremes) and a smooth frame."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, shape, dtype=np.uint8)
    extremes = (rng.integers(0, 2, shape) * 255).astype(np.uint8)
    return [noise, extremes, thermal_frame(*shape, seed=seed)]


@pytest.mark.parametrize("shape", RESIZE_SHAPES)
def test_phash_thumbnail_is_pillows_lanczos_bit_for_bit(shape):
    assert exact_resize_rule()  # the installed Pillow is reproduced (else every view uses it)
    for seed, view in enumerate(resize_cases(shape, seed=sum(shape))):
        expected = Image.fromarray(view).resize((PHASH_SIZE, PHASH_SIZE), Image.Resampling.LANCZOS)
        assert np.array_equal(np.asarray(phash_thumbnail(view)), np.asarray(expected)), (
            shape,
            seed,
        )
        found = fingerprint(view)
        assert found.phash == str(imagehash.phash(Image.fromarray(view)))
        assert found.dhash == str(imagehash.dhash(expected))


def test_all_real_sirst_images_are_kept_as_grey(ir_samples):
    """39 of 100 sirst PNGs are IR stored as not-quite-grey RGB: the tolerant test keeps all."""
    spreads = []
    for path in sorted((ir_samples / "sirst" / "images").glob("*.png")):
        processed = process_image_bytes(path.read_bytes(), POLICY)
        spreads.append(processed.grey_diff)
        assert processed.view8.ndim == 2
    assert len(spreads) == 100 and max(spreads) > 1.0


# ----------------------------------------------------------------------------- bombs, every format


def tiff_claiming(width: int, height: int) -> bytes:
    """A small float32 deflate TIFF whose ImageWidth/ImageLength tags claim another size."""
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.ones((8, 8), np.float32)).save(
        buffer, format="TIFF", compression="tiff_adobe_deflate"
    )
    data = bytearray(buffer.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[ifd : ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack("<HH", data[entry : entry + 4])
        if tag in (256, 257):
            fmt = "<H" if kind == 3 else "<I"
            struct.pack_into(fmt, data, entry + 8, width if tag == 256 else height)
    return bytes(data)


def exr_claiming(width: int, height: int) -> bytes:
    window = struct.pack("<iiii", 0, 0, width - 1, height - 1)
    attribute = b"dataWindow\0box2i\0" + struct.pack("<i", 16) + window
    return b"\x76\x2f\x31\x01" + struct.pack("<I", 2) + attribute + b"\0" + bytes(64)


BOMBS = {
    "radiance-hdr-named-png": b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 11000 +X 11000\n"
    + bytes(4096),
    "float-deflate-tiff": tiff_claiming(11000, 11000),
    "bigtiff": b"II+\0\x08\0\0\0"
    + struct.pack("<Q", 16)
    + struct.pack("<Q", 2)
    + struct.pack("<HHQQ", 256, 16, 1, 11000)
    + struct.pack("<HHQQ", 257, 16, 1, 11000)
    + struct.pack("<Q", 0),
    "webp-vp8x": b"RIFF\0\0\0\0WEBPVP8X"
    + struct.pack("<I", 10)
    + bytes(4)
    + (10999).to_bytes(3, "little")
    + (10999).to_bytes(3, "little")
    + bytes(64),
    "pfm": b"Pf\n11000 11000\n-1.0\n" + bytes(4096),
    "pgm-with-comment": b"P5\n# a comment\n11000 11000\n65535\n" + bytes(4096),
    "pam": b"P7\nWIDTH 11000\nHEIGHT 11000\nDEPTH 1\nMAXVAL 255\nTUPLTYPE GRAYSCALE\nENDHDR\n"
    + bytes(64),
    "openexr": exr_claiming(11000, 11000),
    "bmp": b"BM" + bytes(12) + struct.pack("<Iii", 40, 11000, -11000) + bytes(64),
    "gif": b"GIF89a" + struct.pack("<HH", 11000, 11000) + bytes(64),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bombs_of_every_format_are_rejected_before_decoding(name, monkeypatch):
    def no_decoding(*args):
        raise AssertionError("decoded a bomb")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    with pytest.raises(RejectedImage, match="decompression bomb: .* header says 11000x11000"):
        process_image_bytes(BOMBS[name], POLICY)


def test_unknown_formats_are_not_decoded(monkeypatch):
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded an unknown format"))
    with pytest.raises(RejectedImage, match="unknown format"):
        process_image_bytes(b"\x00\x01\x02 some unknown container" + bytes(100), POLICY)


def test_opencv_pixel_limit_is_set_to_the_cap():
    import os
    import subprocess
    import sys

    code = "import inf590k.inputs.imageio, os; print(os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    shown = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert shown.stdout.strip() == str(POLICY.max_pixels)


# ----------------------------------------------------------------------------- decisions


def tiff_bytes(pages: list[np.ndarray]) -> bytes:
    ok, buffer = cv2.imencodemulti(".tiff", pages)
    assert ok
    return buffer.tobytes()


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (np.full((64, 64), np.nan, np.float32), "non-finite pixel values"),
        (
            np.where(np.eye(64, dtype=bool), np.inf, 1.0).astype(np.float32),
            "non-finite pixel values",
        ),
        (np.zeros((64, 64), np.uint16), "constant image"),
        (np.full((64, 64), 65535, np.uint16), "constant image"),
        (np.full((64, 64), 0.25, np.float32), "constant image"),
    ],
    ids=["nan", "inf", "all-0", "all-65535", "constant-float"],
)
def test_non_finite_and_constant_frames_are_rejected(frame, reason):
    for policy in (POLICY, ImagePolicy(crop_zero_borders=False)):
        with pytest.raises(RejectedImage, match=reason):
            process_image_bytes(tiff_bytes([frame]), policy)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_bytes_after_the_end_marker_are_kept_with_a_note(ext):
    data = encode(thermal_frame(), ext) + b"trailing garbage " * 400  # more than 4 KB
    processed = process_image_bytes(data, POLICY)
    assert processed.note.startswith("note: 6800 bytes after the")
    assert np.array_equal(
        processed.view8, process_image_bytes(encode(thermal_frame(), ext), POLICY).view8
    )


def test_a_jpeg_exif_thumbnail_end_marker_is_not_the_end():
    data = bytearray(encode(thermal_frame(), ".jpg"))
    thumbnail = b"Exif\0\0" + b"\xff\xd8 fake thumbnail \xff\xd9"
    app1 = b"\xff\xe1" + struct.pack(">H", len(thumbnail) + 2) + thumbnail
    processed = process_image_bytes(bytes(data[:2]) + app1 + bytes(data[2:]), POLICY)
    assert processed.note == ""


def test_corrupt_jpeg_data_is_rejected():
    smooth = cv2.GaussianBlur(thermal_frame(200, 300), (9, 9), 3)
    good = encode(smooth, ".jpg")
    flipped = bytearray(good)
    scan = good.find(b"\xff\xda")
    for offset in range(scan + 200, scan + 2000, 97):
        flipped[offset] ^= 0x5A
    cut_scan = good[: len(good) // 2] + b"\xff\xd9"
    for data in (bytes(flipped), cut_scan):
        with pytest.raises(RejectedImage, match="corrupt JPEG \\(Corrupt JPEG data"):
            process_image_bytes(data, POLICY)
    assert process_image_bytes(good, POLICY).note == ""


def test_multi_page_tiff_keeps_the_first_page_with_a_note():
    pages = [thermal_frame(seed=i) for i in range(3)]
    processed = process_image_bytes(tiff_bytes(pages), POLICY)
    assert processed.note == "note: multi-page TIFF, first of 3 pages kept"
    assert np.array_equal(processed.view8, process_image_bytes(encode(pages[0]), POLICY).view8)


# ----------------------------------------------------------------------------- header lies
#
# Each file below says one size to a parser that reads it carelessly and another to the
# decoder. The parser must read what the decoder reads (or refuse): under a small pixel cap
# every one of them is a decompression bomb, refused before OpenCV sees it.


@pytest.mark.parametrize("name", sorted(HEADER_LIES))
def test_header_lies_are_read_as_the_decoder_reads_them(name, monkeypatch):
    make, reason = HEADER_LIES[name]
    data = make()
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded a lying header"))
    with pytest.raises(RejectedImage, match=reason):
        process_image_bytes(data, SMALL_CAP)


@pytest.mark.parametrize(
    "name", ["jpeg-rst0-then-fake-sof", "jp2-ihdr-inside-xml-box", "pgm-cr-ended-comment"]
)
def test_the_lying_files_are_valid_images_of_their_true_size(name):
    """What the decoder makes of them (the size the header check must see): 640x512."""
    processed = process_image_bytes(HEADER_LIES[name][0](), POLICY)
    assert (processed.orig_width, processed.orig_height) == (640, 512)


def test_libtiff_keeps_the_first_of_a_repeated_tag():
    """Why a repeated size tag is refused rather than read: the decoder takes the first."""
    array = cv2.imdecode(np.frombuffer(tiff_with_repeated_size(), np.uint8), cv2.IMREAD_UNCHANGED)
    assert array.shape == (512, 640)


def test_a_genuine_os2_bitmap_is_read_not_taken_for_a_bomb():
    frame = thermal_frame(64, 64, seed=3)
    processed = process_image_bytes(os2_bmp(frame), POLICY)
    assert (processed.width, processed.height) == (64, 64)
    np.testing.assert_array_equal(processed.view8, frame)


def test_a_genuine_pgm_with_a_cr_ended_comment_is_read():
    frame = thermal_frame(48, 64, seed=4)
    data = b"P5\n# written by a camera\r64 48\n255\n" + frame.tobytes()
    np.testing.assert_array_equal(process_image_bytes(data, POLICY).view8, frame)


def test_decoded_bytes_are_bounded_not_only_pixels(monkeypatch):
    """A float32 3-channel frame under the pixel cap still decodes to 12 bytes a pixel: the
    header's sample size and count bound what decoding would allocate."""
    header_only = plain_tiff(7000, 7000, b"", samples=3, bits=32, sample_format=3)
    monkeypatch.setattr(
        cv2, "imdecode", lambda *a: pytest.fail("decoded a frame over the byte limit")
    )
    with pytest.raises(
        RejectedImage, match="decompression bomb: decoding this 7000x7000 TIFF would take about"
    ):
        process_image_bytes(header_only, POLICY)
    info, _ = check_before_decode(
        header_only, max_pixels=400_000_000
    )  # the limit grows with the cap
    assert info.decode_bytes > decode_byte_limit(POLICY.max_pixels)


def test_a_png_chunk_longer_than_the_file_is_refused_before_opencv(monkeypatch):
    data = png_with_huge_text_chunk()
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("OpenCV would allocate 2 GiB"))
    with pytest.raises(
        RejectedImage, match="truncated PNG \\(its tEXt chunk at offset 33 claims 2147483632 bytes"
    ):
        process_image_bytes(data, POLICY)


def test_verify_refuses_what_ingest_refuses_before_opencv(monkeypatch):
    from inf590k.dataset import verify
    from inf590k.dataset.layout import sample_json

    row = {"uid": "k", "source": "s", "width": 160, "height": 120, "bit_depth": 8}
    members = {"cls": b"0", "json": sample_json(row), "png": png_with_huge_text_chunk()}
    monkeypatch.setattr(
        verify.cv2, "imdecode", lambda *a: pytest.fail("OpenCV would allocate 2 GiB")
    )
    problem = verify.sample_problem("k", members, row, {"s": 0}, raw=False)
    assert problem.startswith(
        "sample k: the PNG is refused before decoding (truncated PNG (its tEXt chunk"
    )
    monkeypatch.undo()
    members["png"] = encode(thermal_frame())
    assert verify.sample_problem("k", members, row, {"s": 0}, raw=False) is None


# ----------------------------------------------------------------------------- one junk byte


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        (
            "stray byte between segments",
            "corrupt JPEG \\(byte 0x00 at offset 20 where a marker should start",
        ),
        ("segment length", "corrupt JPEG \\(byte 0x.. at offset 23 where a marker should start"),
        ("start-of-scan marker", "corrupt JPEG \\(unknown marker 0xFFFA at offset"),
        (
            "end marker",
            "corrupt JPEG \\(its last two bytes ff 59 are a damaged end-of-image marker",
        ),
        ("entropy-coded data", "corrupt JPEG \\(Corrupt JPEG data"),
    ],
)
def test_a_complete_jpeg_with_one_bad_byte_says_corrupt_not_truncated(where, reason):
    with pytest.raises(RejectedImage, match=reason):
        process_image_bytes(jpeg_damaged(where), POLICY)


def test_a_cut_jpeg_still_says_truncated():
    good = encode(thermal_frame(), ".jpg")
    for cut in (good[:10], good[: len(good) // 2]):
        with pytest.raises(RejectedImage, match="truncated JPEG"):
            process_image_bytes(cut, POLICY)
