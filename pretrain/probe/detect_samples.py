"""What a detection set is made of: samples with their boxes, the set with its split, and the
rules that skip a box (counted by reason, never raised).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from pretrain.probe.splits import Split

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, x1 > x0 and y1 > y0


@dataclass(frozen=True)
class DetectionSample:
    """One image and its boxes (labels 1..K; 0 is the background of torchvision's models)."""

    name: str
    image: Path
    width: int
    height: int
    boxes: tuple[Box, ...]
    labels: tuple[int, ...]
    # COCO `segmentation` of each box (polygons or RLE), where the data has masks
    segmentations: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class DetectionSet:
    """Train and test samples of one detection set, its classes, and what was left out."""

    layout: str
    root: Path
    classes: tuple[str, ...]  # label k is classes[k - 1]
    train: tuple[DetectionSample, ...]
    test: tuple[DetectionSample, ...]
    split_source: str
    skipped: Mapping[str, int] = field(default_factory=dict)  # reason -> count

    @property
    def has_masks(self) -> bool:
        """Every box of the set has a segmentation (Mask R-CNN trains on them)."""
        samples = self.train + self.test
        return any(s.boxes for s in samples) and all(s.segmentations is not None for s in samples)

    @property
    def test_boxes(self) -> int:
        return sum(len(s.boxes) for s in self.test)

    def skipped_text(self) -> str:
        """`3 box outside the image, 1 image without annotation`, or `nothing`."""
        if not self.skipped:
            return "nothing"
        return ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))

    def split(self) -> Split:
        return Split(
            tuple(s.name for s in self.train), tuple(s.name for s in self.test), self.split_source
        )


class SkipCounts(Counter):
    """Why samples or boxes were left out: reason -> count."""

    def add(self, reason: str, count: int = 1) -> None:
        if count:
            self[reason] += count


# --------------------------------------------------------------------------- boxes


def checked_box(
    x0: float, y0: float, x1: float, y1: float, width: int, height: int, skips: SkipCounts
) -> Box | None:
    """The box clipped to the image, or None (counted) when it has no area inside it."""
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
        skips.add("box of zero area")
        return None
    clipped = (max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        skips.add("box outside the image")
        return None
    return clipped


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header, or None for a file that is no image."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
