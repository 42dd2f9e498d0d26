"""Catalogue columns that the benches' synthetic rows share: an 8-bit grey frame stored whole."""

from __future__ import annotations

import numpy as np


def frame_columns(width: np.ndarray, height: np.ndarray) -> dict[str, object]:
    """The size, decoding and crop columns of 8-bit grey frames of these [N] sizes, uncropped."""
    rows = len(width)
    return {
        "width": width,
        "height": height,
        "orig_width": width,
        "orig_height": height,
        "orig_channels": np.ones(rows, np.int8),
        "orig_dtype": ["uint8"] * rows,
        "bit_depth": np.full(rows, 8, np.int8),
        "grey_diff": np.zeros(rows, np.float32),
        "normalisation": ["none"] * rows,
        "crop_box": [[0, 0, int(w), int(h)] for w, h in zip(width.tolist(), height.tolist(), strict=True)],
    }
