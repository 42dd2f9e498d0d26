"""What `inf590k synth` is asked for and what it writes: the layouts, the kinds of files, the
options (SynthConfig) and the summary.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path

SYNTH_LAYOUTS = (
    "sirst",
    "sirst_v2",
    "nudt_sirst",
    "irstd1k",
    "roadscene",
    "llvip",
    "flir_adas_v2",
    "flir_adas_v1",
    "kaist",
    "m3fd",
    "msrs",
    "vedai",
    "dronevehicle",
    "hit_uav",
    "anti_uav410",
    "tno",
    "folder",
)


# Layouts whose IR files are PNG/TIFF and so can hold 16-bit data (JPEG cannot).
LAYOUTS_16BIT = ("sirst", "sirst_v2", "nudt_sirst", "irstd1k", "m3fd", "msrs", "vedai", "folder")


DRONEVEHICLE_BORDER = 100  # px of white frame on every side, kept at any `scale`


MIN_SIDE = 16


PARALLEL_MIN_FRAMES = 200  # frames per worker process below which one process is faster


# MSRS segmentation labels hold class ids (0 background, 1 car, 2 person, ... 8 bump).
MSRS_CLASS_IDS = types.MappingProxyType({"vehicle": 1, "person": 2})


# Class names the box annotations of a layout give the rendered targets (default: the kind):
# M3FD's VOC names (People, Car, ...) and FLIR's COCO category names.
BOX_CLASS_NAMES = types.MappingProxyType({
    "m3fd": types.MappingProxyType({"person": "People", "vehicle": "Car"}),
    "flir_adas_v2": types.MappingProxyType({"person": "person", "vehicle": "car"}),
})


# FLIR ADAS v2's COCO categories (ids as its coco.json numbers them); the synthetic frames
# hold people and cars, the rest have no annotation, as rare classes in the real files.
FLIR_CATEGORIES = (
    (1, "person"), (2, "bike"), (3, "car"), (4, "motor"), (6, "bus"), (7, "train"),
    (8, "truck"), (10, "light"), (11, "hydrant"), (12, "sign"), (17, "dog"),
    (37, "skateboard"), (73, "stroller"), (79, "scooter"), (80, "other vehicle"),
)


# What a written file is; the manifest of the layout must include the first three kinds and
# exclude all the others (by a named rule).
KIND_IR = "ir"


KIND_IR_COPY = "ir_copy"  # byte-identical copy in an included folder: dedupe removes it


KIND_IR_BROKEN = "ir_broken"  # truncated or too small: ingest rejects it with a reason


KIND_EXCLUDED_COPY = "excluded_copy"  # a copy of IR frames that the manifest excludes


KIND_VISIBLE = "visible"


KIND_MASK = "mask"


KIND_LABEL = "label"  # box annotations, split lists, json indexes


KIND_MARKER = "marker"  # SYNTH_MARKER: tells ingest that the tree is synthetic


INCLUDED_KINDS = (KIND_IR, KIND_IR_COPY, KIND_IR_BROKEN)


class SynthError(ValueError):
    """Bad synth options; the message says what to change."""


@dataclass(frozen=True)
class SynthConfig:
    """Options of `inf590k synth` (one field per CLI option)."""

    layout: str
    out: Path
    count: int = 64  # IR frames to render (copies and broken files come on top)
    seed: int = 0
    bit_depth: int = 8  # 8, or 16: 14-bit data in uint16 PNG/TIFF (LAYOUTS_16BIT only)
    scale: float = 1.0  # shrink every frame size (the DroneVehicle border stays 100 px)
    width: int | None = None  # fixed IR size instead of the layout's default
    height: int | None = None
    workers: int = 0  # processes; 0 = one per CPU core (small runs use one); same bytes either way

    def __post_init__(self) -> None:
        if self.layout not in SYNTH_LAYOUTS:
            raise SynthError(
                f"unknown layout {self.layout!r}: use one of {', '.join(SYNTH_LAYOUTS)}"
            )
        if self.count < 1:
            raise SynthError(f"count must be at least 1, got {self.count}")
        if self.bit_depth not in (8, 16):
            raise SynthError(f"bit depth must be 8 or 16, got {self.bit_depth}")
        if self.bit_depth == 16 and self.layout not in LAYOUTS_16BIT:
            also = " (it writes 16-bit TIFF copies anyway)" if self.layout == "flir_adas_v1" else ""
            raise SynthError(
                f"layout {self.layout!r} stores JPEG/BMP, which has no 16-bit form: use "
                f"--bit-depth 8{also}, or a layout with PNG/TIFF files ({', '.join(LAYOUTS_16BIT)})"
            )
        if not 0.05 <= self.scale <= 4.0:
            raise SynthError(f"scale must be between 0.05 and 4, got {self.scale}")
        if self.workers < 0:
            raise SynthError(f"workers must be 0 (one per core) or more, got {self.workers}")
        if (self.width is None) != (self.height is None):
            raise SynthError("give both width and height, or neither")
        if self.width is not None and min(self.width, self.height or 0) < MIN_SIDE:
            raise SynthError(f"width and height must be at least {MIN_SIDE} px")


@dataclass(frozen=True)
class SynthFile:
    relpath: str  # posix path under `out`
    kind: str  # one of the KIND_* values


@dataclass(frozen=True)
class SynthSummary:
    layout: str
    out: Path
    files: tuple[SynthFile, ...]
    bytes_written: int
    seconds: float

    def count(self, kind: str) -> int:
        return sum(1 for f in self.files if f.kind == kind)

    @property
    def ir_images(self) -> int:
        return self.count(KIND_IR)

    def __str__(self) -> str:
        rate = self.ir_images / self.seconds if self.seconds > 0 else float("inf")
        return (
            f"synth {self.layout}: {self.ir_images} IR frames "
            f"(+{self.count(KIND_IR_COPY)} duplicate copies, {self.count(KIND_IR_BROKEN)} broken), "
            f"{self.count(KIND_VISIBLE)} visible, {self.count(KIND_MASK)} masks, "
            f"{self.count(KIND_LABEL)} labels, {self.count(KIND_EXCLUDED_COPY)} excluded copies "
            f"-> {self.out} ({self.bytes_written / 1e6:.1f} MB, {self.seconds:.1f} s, "
            f"{rate:.0f} IR frames/s)"
        )
