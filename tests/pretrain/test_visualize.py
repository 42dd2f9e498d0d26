"""visualize: rows named by their image, every format it reads named in its messages."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pretrain.visualize import (
    GAP,
    HEADER,
    ROW_LABEL,
    VisualizeError,
    grid_image,
    image_files,
    load_image,
)


def _parts(n: int, side: int = 64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (n, side, side), dtype=np.uint8)
    return {"input": image, "masked": image, "reconstruction": image, "pasted": image}


def test_rows_are_named_when_names_are_given():
    unnamed = grid_image(_parts(2))
    named = grid_image(_parts(2), ["first.bmp", "second.png"])
    panel = 256  # 64 px drawn 4x
    assert unnamed.shape == (HEADER + 2 * panel + GAP, 4 * panel + 3 * GAP)
    assert named.shape == (unnamed.shape[0] + 2 * ROW_LABEL, unnamed.shape[1])
    for row in range(2):
        top = HEADER + row * (ROW_LABEL + panel + GAP)
        band = named[top : top + ROW_LABEL]
        assert band.min() < 128 and np.median(band) == 255  # dark text on white
    first, second = (named[HEADER + r * (ROW_LABEL + panel + GAP) :][:ROW_LABEL] for r in (0, 1))
    assert not np.array_equal(first, second)  # each row its own name
    with pytest.raises(ValueError, match="1 row names for 2 images"):
        grid_image(_parts(2), ["only-one.png"])


def test_a_bmp_is_read_and_messages_name_it(tmp_path):
    image = np.tile(np.arange(80, dtype=np.uint8), (60, 1))
    bmp = tmp_path / "frame.bmp"
    cv2.imwrite(str(bmp), image)
    assert load_image(bmp, (32, 32)).shape == (1, 1, 32, 32)
    assert image_files([tmp_path]) == [bmp]
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    with pytest.raises(VisualizeError, match="PNG, JPEG, TIFF or BMP"):
        load_image(broken, (32, 32))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VisualizeError, match="PNG, JPEG, TIFF or BMP"):
        image_files([empty])
