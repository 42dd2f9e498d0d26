"""Synthetic infrared data in the folder layouts of public sources.

`synthesize(SynthConfig(layout="llvip", out=DIR, count=100))` renders IR-like frames (smooth
thermal background with sky and ground, warm people and vehicles with soft edges, column/row
fixed-pattern noise, vignetting, sensor noise) and writes them where the real dataset keeps
its infrared images, together with everything ingest must leave out: the paired visible
images (clearly colour), masks, box annotations and split lists. Each layout matches the
manifest of the same id (`folder` matches the built-in self-collected source), so the demo and
the tests exercise include globs, exclude rules, borders, frame sequences and duplicates
without downloading anything.

Deterministic: the same config writes byte-identical files. Rendering is vectorised numpy and
OpenCV (one frame is a few full-frame array operations plus the encode).
"""

from __future__ import annotations

import json
import multiprocessing
import time
import types
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from xml.sax.saxutils import escape

import cv2
import numpy as np
from PIL import Image

from inf590k.fsutil import available_cores
from inf590k.inputs.manifest import SYNTH_CITATION, SYNTH_LICENSE, SYNTH_MARKER

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
RAW_14BIT_MAX = (1 << 14) - 1  # 16-bit files hold 14-bit data, like FLIR raw frames
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


# --------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class Target:
    kind: str  # person | vehicle | point | extended (small-target sets)
    x: float  # centre, fraction of width
    y: float  # centre, fraction of height
    w: float  # size, fraction of width
    h: float  # size, fraction of height
    angle: float  # degrees (vehicles seen from above)
    heat: float  # above the local background, in scene units (~0..1 is the 8-bit range)
    vx: float  # motion per frame, fraction of width / height (sequences)
    vy: float
    colour: tuple[int, int, int]  # BGR in the visible image


@dataclass(frozen=True)
class Scene:
    """Everything fixed across the frames of one sequence; frames differ by motion and noise."""

    view: str  # ground | aerial | sky
    horizon: float  # fraction of height; 0 for aerial views (no sky)
    sky_level: float
    ground_level: float
    texture: np.ndarray = field(repr=False)  # [64, 80] float32 smooth field, upsampled per frame
    column_pattern: np.ndarray = field(repr=False)  # [256] fixed-pattern offsets, resampled
    row_pattern: np.ndarray = field(repr=False)  # [256]
    vignette: float
    noise_sigma: float
    targets: tuple[Target, ...]
    ground_colour: tuple[int, int, int]


def _smooth_texture(rng: np.random.Generator) -> np.ndarray:
    """Low-frequency noise: three octaves of random grids, cubic-upsampled to 80x64."""
    texture = np.zeros((64, 80), np.float32)
    for cells, amplitude in ((3, 1.0), (6, 0.5), (12, 0.25)):
        grid = rng.standard_normal((cells, cells + cells // 3), dtype=np.float32)
        texture += amplitude * cv2.resize(grid, (80, 64), interpolation=cv2.INTER_CUBIC)
    return texture / 1.75


def _random_targets(rng: np.random.Generator, view: str, horizon: float) -> tuple[Target, ...]:
    if view == "sky":
        kinds = ["point"] * int(rng.integers(1, 4))
    elif view == "aerial":
        kinds = list(rng.choice(["vehicle", "person"], size=int(rng.integers(2, 9)), p=[0.6, 0.4]))
    else:
        kinds = list(rng.choice(["vehicle", "person"], size=int(rng.integers(1, 6)), p=[0.45, 0.55]))
    targets = []
    for kind in kinds:
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if kind == "point":
            size = float(rng.uniform(0.006, 0.02))
            x, y = rng.uniform(0.05, 0.95), rng.uniform(0.05, 0.9)
            w = h = size
            angle, heat = 0.0, float(rng.uniform(0.15, 0.5))
        elif view == "aerial":
            w = float(rng.uniform(0.04, 0.08) if kind == "vehicle" else rng.uniform(0.008, 0.015))
            h = w * (0.5 if kind == "vehicle" else 1.0) * 1.25
            x, y = rng.uniform(0.08, 0.92), rng.uniform(0.08, 0.92)
            angle, heat = float(rng.uniform(0, 180)), float(rng.uniform(0.15, 0.45))
        else:  # ground view: farther objects (closer to the horizon) are smaller
            y = float(rng.uniform(horizon + 0.08, 0.95))
            depth = (y - horizon) / max(1e-3, 1.0 - horizon)
            if kind == "vehicle":
                w, h = 0.22 * depth + 0.03, 0.12 * depth + 0.02
            else:
                w, h = 0.035 * depth + 0.006, 0.22 * depth + 0.03
            x, angle = float(rng.uniform(0.05, 0.95)), 0.0
            heat = float(rng.uniform(0.2, 0.45))
            y -= h / 2  # stand on the ground
        vx, vy = (float(v) for v in rng.normal(0, 0.004, 2))
        targets.append(Target(kind, float(x), float(y), w, h, angle, heat, vx, vy, colour))
    return tuple(targets)


def _small_targets(rng: np.random.Generator) -> tuple[Target, ...]:
    """1-4 hot targets as small-target sets (SIRST, IRSTD-1k, NUDT-SIRST) have them.

    Points are round, 2-5 px on a 256-px frame; extended targets (aircraft, ships) are
    tilted ellipses up to ~15 px long. Sizes are fractions of the shorter frame side.
    """
    targets = []
    for _ in range(int(rng.integers(1, 5))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = float(rng.uniform(0.06, 0.94)), float(rng.uniform(0.06, 0.9))
        if rng.random() < 0.5:
            kind, angle = "point", 0.0
            w = h = float(rng.uniform(0.008, 0.02))
        else:
            kind, angle = "extended", float(rng.uniform(0, 180))
            w = float(rng.uniform(0.025, 0.06))
            h = w * float(rng.uniform(0.35, 0.8))
        heat = float(rng.uniform(0.2, 0.6))
        vx, vy = (float(v) for v in rng.normal(0, 0.004, 2))
        targets.append(Target(kind, x, y, w, h, angle, heat, vx, vy, colour))
    return tuple(targets)


def _ground_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated green-to-brown BGR colour (never near-grey, so pairs are clearly colour)."""
    hsv = np.array([[[rng.integers(10, 80), rng.integers(130, 230), rng.integers(80, 170)]]], np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def random_scene(rng: np.random.Generator, view: str) -> Scene:
    """A random scene seen from `view`: ground, aerial, sky, background (sky, no target), or
    small_targets (sky with the point and extended targets of infrared small-target sets)."""
    empty = view == "background"
    small = view == "small_targets"
    view = "sky" if empty or small else view
    if view == "ground":
        horizon = float(rng.uniform(0.25, 0.55))
    elif view == "sky":
        horizon = float(rng.choice([1.0, rng.uniform(0.7, 0.95)]))  # clouds, maybe ground below
    else:
        horizon = 0.0
    return Scene(
        view=view,
        horizon=horizon,
        sky_level=float(rng.uniform(0.12, 0.3)),
        ground_level=float(rng.uniform(0.35, 0.6)),
        texture=_smooth_texture(rng),
        column_pattern=rng.standard_normal(256, dtype=np.float32),
        row_pattern=rng.standard_normal(256, dtype=np.float32),
        vignette=float(rng.uniform(0.05, 0.25)),
        noise_sigma=float(rng.uniform(0.006, 0.02)),
        targets=() if empty else _small_targets(rng) if small else _random_targets(rng, view, horizon),
        ground_colour=_ground_colour(rng),
    )


def _target_at(target: Target, t: int) -> tuple[float, float]:
    """Centre (fractions) at frame t; wraps around the frame so targets never leave it."""
    return (target.x + target.vx * t) % 1.0, (target.y + target.vy * t) % 1.0


def _geometry(target: Target, t: int, width: int, height: int) -> tuple[float, float, float, float]:
    """Centre and size in pixels (cx, cy, w, h) at frame t."""
    fx, fy = _target_at(target, t)
    if target.kind == "point":  # round whatever the frame's aspect
        side = max(1.5, target.w * min(width, height))
        return fx * width, fy * height, side, side
    if target.kind == "extended":  # keeps its shape whatever the frame's aspect
        short = min(width, height)
        return fx * width, fy * height, max(1.5, target.w * short), max(1.5, target.h * short)
    return fx * width, fy * height, max(1.5, target.w * width), max(1.5, target.h * height)


def target_box(target: Target, t: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Tight bounding box (x0, y0, x1, y1) in pixels at frame t, clipped to the frame."""
    cx, cy, w, h = _geometry(target, t, width, height)
    if target.kind == "vehicle":
        corners = cv2.boxPoints(((cx, cy), (w, h), target.angle))  # [4, 2]
        x0, y0 = corners.min(axis=0)
        x1, y1 = corners.max(axis=0)
    elif target.kind == "extended":  # half extents of a tilted ellipse
        theta = np.deg2rad(target.angle)
        half_w = float(np.hypot(w / 2 * np.cos(theta), h / 2 * np.sin(theta)))
        half_h = float(np.hypot(w / 2 * np.sin(theta), h / 2 * np.cos(theta)))
        x0, y0, x1, y1 = cx - half_w, cy - half_h, cx + half_w, cy + half_h
    else:
        x0, x1, y1 = cx - w / 2, cx + w / 2, cy + h / 2
        y0 = cy - h * 0.55 - w * 0.35 if target.kind == "person" else cy - h / 2
    return (max(0, int(x0)), max(0, int(y0)), min(width, int(np.ceil(x1)) + 1),
            min(height, int(np.ceil(y1)) + 1))


def _draw_target(canvas: np.ndarray, target: Target, t: int, value: float | tuple,
                 frame: tuple[int, int] | None = None, origin: tuple[int, int] = (0, 0)) -> None:
    """Draw one target filled with `value`.

    `frame` is the (width, height) of the full frame when `canvas` is a crop of it that
    starts at `origin` (x, y).
    """
    width, height = frame if frame is not None else (canvas.shape[1], canvas.shape[0])
    cx, cy, w, h = _geometry(target, t, width, height)
    cx, cy = cx - origin[0], cy - origin[1]
    if target.kind == "vehicle":
        corners = cv2.boxPoints(((cx, cy), (w, h), target.angle))
        cv2.fillConvexPoly(canvas, np.round(corners).astype(np.int32), value)
        return
    cv2.ellipse(canvas, (round(cx), round(cy)), (round(w / 2), round(h / 2)), target.angle,
                0, 360, value, -1)
    if target.kind == "person":
        cv2.circle(canvas, (round(cx), round(cy - h * 0.55)), max(1, round(w * 0.35)), value, -1)


def _vertical_profile(scene: Scene, height: int) -> np.ndarray:
    """[H, 1] mean temperature per row: cold sky warming towards the horizon, warmer ground."""
    rows = (np.arange(height, dtype=np.float32) + 0.5) / height
    sky = scene.sky_level + 0.15 * np.clip(rows / max(scene.horizon, 1e-3), 0, 1) ** 2
    ground = scene.ground_level - 0.08 * (rows - scene.horizon)
    edge = np.clip((rows - scene.horizon) * height / 3.0 + 0.5, 0, 1)  # soft 3-px horizon
    return (sky * (1 - edge) + ground * edge).astype(np.float32)[:, None]


def render_thermal(scene: Scene, t: int, width: int, height: int, noise: NoiseBank,
                   rng: np.random.Generator) -> np.ndarray:
    """One IR frame as float32 scene units [H, W] (0..1 spans the 8-bit range).

    Every step is an in-place full-frame operation or works on a row/column vector that
    broadcasts, so a 640x512 frame costs a few milliseconds.
    """
    texture = scene.texture * (0.06 if scene.view == "sky" else 0.1)  # scaled while small
    image = cv2.resize(texture, (width, height), interpolation=cv2.INTER_LINEAR)  # [H, W]
    rows = cv2.resize(scene.row_pattern[:, None], (1, height), interpolation=cv2.INTER_NEAREST)
    columns = cv2.resize(scene.column_pattern[None, :], (width, 1), interpolation=cv2.INTER_NEAREST)
    gain_drift = float(rng.normal(0, 0.03))  # per frame, like an uncalibrated sensor
    image += _vertical_profile(scene, height) + (0.004 * rows + gain_drift)  # [H, 1]
    image += 0.012 * columns  # [1, W] stripe non-uniformity of an uncooled sensor
    for target in scene.targets:
        _add_soft_target(image, target, t)
    xs = np.linspace(-1, 1, width, dtype=np.float32) ** 2
    ys = np.linspace(-1, 1, height, dtype=np.float32) ** 2
    image *= (1.0 - 0.5 * scene.vignette * ys)[:, None]  # separable vignetting
    image *= (1.0 - 0.5 * scene.vignette * xs)[None, :]
    sigma = scene.noise_sigma
    cv2.scaleAdd(noise.window(width, height, rng), sigma, image, dst=image)
    return image


def _add_soft_target(image: np.ndarray, target: Target, t: int) -> None:
    """Add a target's heat with soft edges, blurring only its neighbourhood."""
    height, width = image.shape
    x0, y0, x1, y1 = target_box(target, t, width, height)
    if x1 <= x0 or y1 <= y0:
        return
    sigma = min(3.0, max(0.6, 0.05 * min(x1 - x0, y1 - y0)))
    margin = int(np.ceil(3 * sigma))
    x0, y0 = max(0, x0 - margin), max(0, y0 - margin)
    x1, y1 = min(width, x1 + margin), min(height, y1 + margin)
    local = np.zeros((y1 - y0, x1 - x0), np.float32)
    _draw_target(local, target, t, target.heat, (width, height), origin=(x0, y0))
    image[y0:y1, x0:x1] += cv2.GaussianBlur(local, (0, 0), sigma)


def to_counts(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """Scene units -> uint8 grey, or 14-bit counts in uint16 (raw sensor range)."""
    if bit_depth == 8:
        return cv2.convertScaleAbs(image, alpha=255.0)  # saturates to 0..255
    counts = image * 9000.0 + 3000.0
    np.clip(counts, 0, RAW_14BIT_MAX, out=counts)
    return counts.astype(np.uint16)


def render_visible(scene: Scene, t: int, width: int, height: int,
                   rng: np.random.Generator) -> np.ndarray:
    """The colour half of a pair [H, W, 3] BGR uint8: blue sky, coloured ground, painted targets.

    Colours come from two per-channel lookup tables (sky rows, ground rows) applied to the
    shared texture, which keeps the colour image as cheap as the grey one.
    """
    shade = cv2.resize(scene.texture, (width, height), interpolation=cv2.INTER_LINEAR)
    shade = cv2.convertScaleAbs(shade, alpha=40.0, beta=128.0 + float(rng.normal(0, 10)))
    image = cv2.merge([shade, shade, shade])  # [H, W, 3]
    levels = np.arange(256, dtype=np.float32)[:, None] - 128.0  # [256, 1]
    sky = np.array([[235, 165, 95]], np.float32) + levels * np.array([[0.3, 0.6, 0.8]])
    ground = np.array([scene.ground_colour], np.float32) + np.array([[0, 50, 0]]) + levels
    horizon_row = int(round(np.clip(scene.horizon, 0.0, 1.0) * height))
    for rows, table in ((slice(0, horizon_row), sky), (slice(horizon_row, height), ground)):
        if rows.start >= rows.stop:
            continue
        lut = np.clip(table, 0, 255).astype(np.uint8).reshape(256, 1, 3)
        image[rows] = cv2.LUT(image[rows], lut)
    for target in scene.targets:
        _draw_target(image, target, t, tuple(int(c) for c in target.colour))
    return image


class NoiseBank:
    """Gaussian sensor noise drawn once and cut at random offsets per frame.

    Drawing a fresh 640x512 normal field costs more than rendering the rest of the frame;
    random windows of one larger field are independent enough for sensor noise.
    """

    def __init__(self, rng: np.random.Generator, width: int, height: int) -> None:
        self.field = rng.standard_normal((2 * height, 2 * width), dtype=np.float32)

    def window(self, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
        y = int(rng.integers(0, self.field.shape[0] - height + 1))
        x = int(rng.integers(0, self.field.shape[1] - width + 1))
        return self.field[y : y + height, x : x + width]


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class FramePlan:
    """Where one rendered frame goes, and what comes with it."""

    ir: str  # relpath of the IR image
    size: tuple[int, int]  # (width, height) of the IR content, before any border
    scene_id: int  # frames of one sequence share a scene id
    t: int = 0  # frame number inside the sequence
    view: str = "ground"
    storage: str = "grey"  # grey | grey3 | rgba | palette (how the IR pixels are stored)
    visible: tuple[tuple[str, float], ...] = ()  # (relpath, size factor) of colour halves
    mask: str = ""  # target mask (PNG): 255 on targets, or class ids (`class_mask`)
    class_mask: bool = False  # MSRS: label pixels with the class id of their target
    labels: tuple[tuple[str, str], ...] = ()  # (relpath, format: voc | txt)
    copies: tuple[tuple[str, str], ...] = ()  # (relpath, kind) byte-identical copies
    uncropped: str = ""  # full frame of which `ir` is a crop (RoadScene's infrared/)
    raw16: str = ""  # the same frame as 14-bit data in a 16-bit TIFF (FLIR thermal_16_bit/)
    annotated: str = ""  # the frame with its boxes drawn into the pixels (never ingest)
    border: int = 0  # white frame around IR and visible images (DroneVehicle)
    split: str = ""


def _scaled(size: tuple[int, int], config: SynthConfig) -> tuple[int, int]:
    if config.width is not None and config.height is not None:
        return config.width, config.height
    return (max(MIN_SIDE, round(size[0] * config.scale)), max(MIN_SIDE, round(size[1] * config.scale)))


def _split_of(index: int, count: int, shares: tuple[tuple[str, float], ...]) -> str:
    """Deterministic split by position: the first 70% train, and so on."""
    position, edge = index / count, 0.0
    for name, share in shares:
        edge += share
        if position < edge:
            return name
    return shares[-1][0]


def _plan_sirst(config: SynthConfig, rng: np.random.Generator) -> Iterator[FramePlan]:
    # SIRST stores most images as RGB (grey in 3 channels), some as L, RGBA or palette
    storages = ["grey3"] * 3 + ["grey"] + ["grey3"] * 2 + ["rgba"] + ["grey3"] * 2 + ["palette"]
    for i in range(config.count):
        name = f"Misc_{i + 1}"
        size = _scaled((int(rng.integers(209, 457)), int(rng.integers(157, 350))), config)
        storage = "grey" if config.bit_depth == 16 else storages[i % len(storages)]
        yield FramePlan(
            ir=f"images/{name}.png", size=size, scene_id=i, view="small_targets", storage=storage,
            mask=f"masks/{name}_pixels0.png", labels=((f"masks/{name}.xml", "voc"),),
        )


def _plan_sirst_v2(config: SynthConfig, rng: np.random.Generator) -> Iterator[FramePlan]:
    sizes = ((640, 512), (1280, 1024), (640, 512), (1918, 1080), (1280, 720), (640, 640))
    for i in range(config.count):
        name = f"S{1 + i % 9}_{i + 1}"
        has_target = i % 2 == 0  # half the set are background-only frames
        folder = "targets" if has_target else "backgrounds"
        labels = ((f"annotations/masks/{name}.xml", "voc"),
                  (f"annotations/bboxes/{name}.xml", "voc")) if has_target else ()
        yield FramePlan(
            ir=f"mixed/{name}.png", size=_scaled(sizes[i % len(sizes)], config), scene_id=i,
            view="sky" if has_target else "background",
            mask=f"annotations/masks/{name}_pixels0.png" if has_target else "",
            labels=labels, copies=((f"images/{folder}/{name}.png", KIND_EXCLUDED_COPY),),
        )


def _plan_nudt_sirst(config: SynthConfig, rng: np.random.Generator) -> Iterator[FramePlan]:
    size = _scaled((256, 256), config)
    for i in range(config.count):
        name = f"{i + 1:06d}"
        yield FramePlan(ir=f"NUDT-SIRST/images/{name}.png", size=size, scene_id=i,
                        view="small_targets",
                        mask=f"NUDT-SIRST/masks/{name}.png")


def _plan_irstd1k(config: SynthConfig, rng: np.random.Generator) -> Iterator[FramePlan]:
    size = _scaled((512, 512), config)
    for i in range(config.count):
        name = f"XDU{i}"
        yield FramePlan(ir=f"IRSTD-1k/IRSTD1k_Img/{name}.png", size=size, scene_id=i,
                        view="small_targets", mask=f"IRSTD-1k/IRSTD1k_Label/{name}.png")


def _plan_roadscene(config: SynthConfig, rng: np.random.Generator) -> Iterator[FramePlan]:
    for i in range(config.count):
        name = f"FLIR_{(i * 41 + 6) % 100000:05d}"
        size = _scaled((int(rng.integers(371, 618)), int(rng.integers(161, 423))), config)
        yield FramePlan(
            ir=f"cropinfrared/{name}.jpg", size=size, scene_id=i,
            visible=((f"crop_LR_visible/{name}.jpg", 1.0), (f"crop_HR_visible/{name}.jpg", 2.8)),
            uncropped=f"infrared/{name}.png",
        )


def _plan_llvip(config: SynthConfig, rng: np.random.Generator) -> Iterator[FramePlan]:
    size = _scaled((1280, 1024), config)
    for i in range(config.count):
        split = _split_of(i, config.count, (("train", 0.78), ("test", 0.22)))
        name = f"{(10001 if split == 'train' else 190001) + i:06d}"
        yield FramePlan(
            ir=f"infrared/{split}/{name}.jpg", size=size, scene_id=i, storage="grey3",
            visible=((f"visible/{split}/{name}.jpg", 1.0),),
            labels=((f"Annotations/{name}.xml", "voc"),), split=split,
        )


def _plan_flir_adas_v2(config: SynthConfig, rng: np.random.Generator) -> Iterator[FramePlan]:
    size = _scaled((640, 512), config)
    shares = (("train", 0.75), ("val", 0.1), ("test", 0.15))
    for i in range(config.count):
        split = _split_of(i, config.count, shares)
        video = split == "test"  # one continuous test video: consecutive frames of one scene
        scene_id, t = (10**6, i) if video else (i, 0)
        name = f"video-{scene_id % 997:04d}-frame-{i:06d}.jpg"
        thermal = "video_thermal_test" if video else f"images_thermal_{split}"
        rgb = "video_rgb_test" if video else f"images_rgb_{split}"
        yield FramePlan(
            ir=f"{thermal}/data/{name}", size=size, scene_id=scene_id, t=t,
            visible=((f"{rgb}/data/{name}", 1.0),), split=split,
        )


def _plan_flir_adas_v1(config: SynthConfig, rng: np.random.Generator) -> Iterator[FramePlan]:
    """8-bit JPEG and the same frames as 16-bit TIFF, RGB, and frames with boxes burned in."""
    size = _scaled((640, 512), config)
    shares = (("train", 0.7), ("val", 0.1), ("video", 0.2))
    for i in range(config.count):
        split = _split_of(i, config.count, shares)
        scene_id, t = (10**6, i) if split == "video" else (i, 0)
        name = f"FLIR_{'video_' if split == 'video' else ''}{i + 1:05d}"
        yield FramePlan(
            ir=f"{split}/thermal_8_bit/{name}.jpeg", size=size, scene_id=scene_id, t=t,
            visible=((f"{split}/RGB/{name}.jpg", 1.0),),
            raw16=f"{split}/thermal_16_bit/{name}.tiff",
            annotated=f"{split}/Annotated_thermal_8_bit/{name}.jpeg", split=split,
        )


def _plan_kaist(config: SynthConfig, rng: np.random.Generator) -> Iterator[FramePlan]:
    size = _scaled((640, 512), config)
    frames_per_video, videos_per_set = 20, 3
    for i in range(config.count):
        video, t = divmod(i, frames_per_video)
        set_id, video_id = divmod(video, videos_per_set)
        folder = f"set{set_id:02d}/V{video_id:03d}"
        yield FramePlan(
            ir=f"images/{folder}/lwir/I{t:05d}.jpg", size=size, scene_id=video, t=t,
            visible=((f"images/{folder}/visible/I{t:05d}.jpg", 1.0),),
            labels=((f"annotations/{folder}/I{t:05d}.txt", "txt"),),
        )


def _plan_m3fd(config: SynthConfig, rng: np.random.Generator) -> Iterator[FramePlan]:
    size = _scaled((1024, 768), config)
    for i in range(config.count):
        part = "M3FD_Fusion" if i % 8 == 7 else "M3FD_Detection"  # 300 of 4,500 are fusion pairs
        name = f"{i:05d}.png"
        labels = ((f"M3FD_Detection/Annotation/{name[:-4]}.xml", "voc"),) if part == "M3FD_Detection" else ()
        yield FramePlan(
            ir=f"{part}/Ir/{name}", size=size, scene_id=i,
            visible=((f"{part}/Vis/{name}", 1.0),), labels=labels,
        )


def _plan_msrs(config: SynthConfig, rng: np.random.Generator) -> Iterator[FramePlan]:
    size = _scaled((640, 480), config)
    for i in range(config.count):
        split = _split_of(i, config.count, (("train", 0.75), ("test", 0.25)))
        name = f"{i + 1:05d}{'DN'[i % 2]}.png"  # day / night frames
        yield FramePlan(
            ir=f"{split}/ir/{name}", size=size, scene_id=i,
            visible=((f"{split}/vi/{name}", 1.0),),
            mask=f"{split}/Segmentation_labels/{name}", class_mask=True, split=split,
        )


def _plan_vedai(config: SynthConfig, rng: np.random.Generator) -> Iterator[FramePlan]:
    size = _scaled((512, 512), config)
    for i in range(config.count):
        name = f"{i:08d}"
        yield FramePlan(
            ir=f"Vehicules512/{name}_ir.png", size=size, scene_id=i, view="aerial",
            visible=((f"Vehicules512/{name}_co.png", 1.0),),
            labels=((f"Annotations512/{name}.txt", "txt"),),
        )


def _plan_anti_uav410(config: SynthConfig, rng: np.random.Generator) -> Iterator[FramePlan]:
    """Thermal tracking sequences: one folder of consecutive frames per sequence."""
    size = _scaled((640, 512), config)
    frames_per_sequence = 25
    for i in range(config.count):
        sequence, t = divmod(i, frames_per_sequence)
        split = ("train", "val", "test")[sequence % 3]
        yield FramePlan(
            ir=f"{split}/02_{6000 + sequence}_0000-1499/{t + 1:06d}.jpg", size=size,
            scene_id=sequence, t=t, view="sky", split=split,
        )


def _plan_dronevehicle(config: SynthConfig, rng: np.random.Generator) -> Iterator[FramePlan]:
    size = _scaled((640, 512), config)
    shares = (("train", 0.63), ("val", 0.05), ("test", 0.32))
    for i in range(config.count):
        split = _split_of(i, config.count, shares)
        name = f"{i + 1:05d}"
        yield FramePlan(
            ir=f"{split}/{split}imgr/{name}.jpg", size=size, scene_id=i, view="aerial",
            visible=((f"{split}/{split}img/{name}.jpg", 1.0),),
            labels=((f"{split}/{split}labelr/{name}.xml", "voc"),
                    (f"{split}/{split}label/{name}.xml", "voc")),
            border=DRONEVEHICLE_BORDER, split=split,
        )


def _plan_hit_uav(config: SynthConfig, rng: np.random.Generator) -> Iterator[FramePlan]:
    """The four identical image copies of HIT-UAV; normal_json is included, rotate_* excluded."""
    size = _scaled((640, 512), config)
    shares = (("train", 0.7), ("val", 0.1), ("test", 0.2))
    for i in range(config.count):
        split = _split_of(i, config.count, shares)
        altitude, angle = 60 + 10 * int(rng.integers(0, 8)), 30 + 10 * int(rng.integers(0, 7))
        name = f"{i % 2}_{altitude}_{angle}_0_{i:05d}.jpg"
        yield FramePlan(
            ir=f"normal_xml/JPEGImages/{name}", size=size, scene_id=i, view="aerial",
            labels=((f"normal_xml/Annotations/{name[:-4]}.xml", "voc"),
                    (f"rotate_xml/Annotations/{name[:-4]}.xml", "voc")),
            copies=((f"normal_json/{split}/{name}", KIND_IR_COPY),
                    (f"rotate_xml/JPEGImages/{name}", KIND_EXCLUDED_COPY),
                    (f"rotate_json/{split}/{name}", KIND_EXCLUDED_COPY)),
            split=split,
        )


def _plan_tno(config: SynthConfig, rng: np.random.Generator) -> Iterator[FramePlan]:
    """The TNO copy most fusion repositories ship: numbered BMP pairs in ir/ and vis/."""
    size = _scaled((768, 576), config)
    for i in range(config.count):
        name = f"{i + 1}.bmp"
        yield FramePlan(ir=f"TNO/ir/{name}", size=size, scene_id=i, visible=((f"TNO/vis/{name}", 1.0),))


def _plan_folder(config: SynthConfig, rng: np.random.Generator) -> Iterator[FramePlan]:
    """A self-collected tree: sites and days, mixed formats, a visible folder and labels."""
    extensions = (".png", ".tif") if config.bit_depth == 16 else (".jpg", ".png", ".jpg", ".tif")
    for i in range(config.count):
        site, day = "abc"[i % 3], 3 + (i // 3) % 4
        size = _scaled(((640, 512), (320, 256), (384, 288))[i % 3], config)
        folder = f"site_{site}/2024-01-{day:02d}"
        extension = extensions[i % len(extensions)]
        visible = ((f"site_{site}/visible/rgb_{i:05d}.jpg", 1.0),) if site == "a" else ()
        labels = ((f"site_{site}/labels/ir_{i:05d}.txt", "txt"),) if site == "b" else ()
        yield FramePlan(
            ir=f"{folder}/ir_{i:05d}{extension}", size=size, scene_id=i,
            view=("ground", "aerial", "sky")[i % 3], visible=visible, labels=labels,
        )


PLANNERS: types.MappingProxyType[str, Callable[[SynthConfig, np.random.Generator], Iterator[FramePlan]]]
PLANNERS = types.MappingProxyType({
    "sirst": _plan_sirst,
    "sirst_v2": _plan_sirst_v2,
    "nudt_sirst": _plan_nudt_sirst,
    "irstd1k": _plan_irstd1k,
    "roadscene": _plan_roadscene,
    "llvip": _plan_llvip,
    "flir_adas_v2": _plan_flir_adas_v2,
    "flir_adas_v1": _plan_flir_adas_v1,
    "kaist": _plan_kaist,
    "m3fd": _plan_m3fd,
    "msrs": _plan_msrs,
    "vedai": _plan_vedai,
    "anti_uav410": _plan_anti_uav410,
    "dronevehicle": _plan_dronevehicle,
    "hit_uav": _plan_hit_uav,
    "tno": _plan_tno,
    "folder": _plan_folder,
})


# --------------------------------------------------------------------------- encoding


def _encode(pixels: np.ndarray, relpath: str) -> bytes:
    suffix = Path(relpath).suffix.lower()
    params: list[int] = []
    if suffix == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 3]
    elif suffix in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, 92]
    elif suffix in (".tif", ".tiff"):
        params = [cv2.IMWRITE_TIFF_COMPRESSION, 1]  # uncompressed, like raw FLIR TIFFs
    ok, buffer = cv2.imencode(suffix, pixels, params)
    if not ok:
        raise SynthError(f"OpenCV could not encode {relpath}")
    return buffer.tobytes()


def _stored_ir(grey: np.ndarray, storage: str) -> np.ndarray:
    if storage == "grey3":
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    if storage == "rgba":
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGRA)
    return grey


def _encode_ir(grey: np.ndarray, plan: FramePlan) -> bytes:
    if plan.storage == "palette":  # OpenCV cannot write palette PNGs; Pillow can
        buffer = BytesIO()
        Image.fromarray(grey).convert("P").save(buffer, format="PNG")
        return buffer.getvalue()
    return _encode(_stored_ir(grey, plan.storage), plan.ir)


def _with_border(pixels: np.ndarray, border: int) -> np.ndarray:
    if not border:
        return pixels
    white = np.iinfo(pixels.dtype).max
    return cv2.copyMakeBorder(pixels, border, border, border, border, cv2.BORDER_CONSTANT,
                              value=(white, white, white, white))


def _voc_xml(filename: str, width: int, height: int, boxes: list[tuple[str, tuple]]) -> bytes:
    objects = "".join(
        f"<object><name>{escape(kind)}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for kind, (x0, y0, x1, y1) in boxes
    )
    return (
        f"<annotation><filename>{escape(filename)}</filename><size><width>{width}</width>"
        f"<height>{height}</height><depth>1</depth></size>{objects}</annotation>\n"
    ).encode()


def _txt_boxes(boxes: list[tuple[str, tuple]]) -> bytes:
    lines = [f"{kind} {x0} {y0} {x1 - x0} {y1 - y0}" for kind, (x0, y0, x1, y1) in boxes]
    return ("% bbGt version=3\n" + "".join(line + "\n" for line in lines)).encode()


def _mask(scene: Scene, t: int, width: int, height: int, class_mask: bool = False) -> np.ndarray:
    """Targets drawn as 255, or as their MSRS class id (car 1, person 2) with `class_mask`."""
    mask = np.zeros((height, width), np.uint8)
    for target in scene.targets:
        value = MSRS_CLASS_IDS.get(target.kind, 255) if class_mask else 255
        _draw_target(mask, target, t, value)
    return mask


def _coco_boxes(config: SynthConfig, plans: list[tuple[str, FramePlan]]) -> bytes:
    """A COCO index of (file_name, plan) pairs with the boxes of their rendered targets:
    images with their sizes, one annotation per target (ids from 1), FLIR's categories."""
    category_ids = {name: i for i, name in FLIR_CATEGORIES}
    names = BOX_CLASS_NAMES.get(config.layout, {})
    images, annotations = [], []
    scene_cache: tuple[int, Scene] | None = None
    for image_id, (file_name, plan) in enumerate(plans):
        width, height = plan.size
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        if scene_cache is None or scene_cache[0] != plan.scene_id:
            scene_cache = (plan.scene_id, random_scene(_rng(config, 4, plan.scene_id), plan.view))
        for kind, (x0, y0, x1, y1) in _boxes(scene_cache[1], plan.t, width, height):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": category_ids[names.get(kind, kind)],
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                "iscrowd": 0, "segmentation": [],
            })
    categories = [{"id": i, "name": name, "supercategory": "unknown"} for i, name in FLIR_CATEGORIES]
    return json.dumps({"images": images, "annotations": annotations,
                       "categories": categories}).encode()


def _extra_files(config: SynthConfig, plans: list[FramePlan]) -> dict[str, bytes]:
    """Per-layout files written once: split lists and json annotation indexes."""
    def listing(names: list[str]) -> bytes:
        return "".join(name + "\n" for name in names).encode()

    def coco(images: list[str]) -> bytes:
        entries = [{"id": i, "file_name": name} for i, name in enumerate(images)]
        return json.dumps({"images": entries, "annotations": [], "categories": []}).encode()

    stems = [Path(plan.ir).stem for plan in plans]
    if config.layout == "sirst":
        half = (len(stems) + 1) // 2
        return {"idx_427/trainval.txt": listing(stems[:half]), "idx_427/test.txt": listing(stems[half:])}
    if config.layout == "hit_uav":
        files = {}
        for split in ("train", "val", "test"):
            names = [Path(p.ir).name for p in plans if p.split == split]
            files[f"normal_xml/ImageSets/Main/{split}.txt"] = listing([n[:-4] for n in names])
            files[f"normal_json/annotations/{split}.json"] = coco(names)
            files[f"rotate_json/annotations/{split}.json"] = coco(names)
        return files
    if config.layout in ("nudt_sirst", "irstd1k", "sirst_v2"):
        half = (len(stems) + 1) // 2
        folder = {"nudt_sirst": "NUDT-SIRST/50_50", "irstd1k": "IRSTD-1k", "sirst_v2": "splits"}
        return {f"{folder[config.layout]}/trainval.txt": listing(stems[:half]),
                f"{folder[config.layout]}/test.txt": listing(stems[half:])}
    if config.layout == "anti_uav410":  # one label file per sequence folder
        frames: dict[str, int] = {}
        for plan in plans:
            folder = plan.ir.rsplit("/", 1)[0]
            frames[folder] = frames.get(folder, 0) + 1
        return {f"{folder}/IR_label.json": json.dumps({"exist": [1] * n}).encode()
                for folder, n in frames.items()}
    if config.layout in ("flir_adas_v2", "flir_adas_v1"):  # one coco.json per image folder
        frames_by_folder: dict[str, list[tuple[str, FramePlan]]] = {}
        for plan in plans:
            for relpath in (plan.ir, *(visible for visible, _ in plan.visible)):
                folder, name = relpath.split("/", 1)
                frames_by_folder.setdefault(folder, []).append((name, plan))
        if config.layout == "flir_adas_v2":  # v2's coco.json holds the boxes of every frame
            return {f"{folder}/coco.json": _coco_boxes(config, frames)
                    for folder, frames in frames_by_folder.items()}
        return {f"{folder}/thermal_annotations.json": coco([name for name, _ in frames])
                for folder, frames in frames_by_folder.items()}
    return {}


# --------------------------------------------------------------------------- writer


class _Writer:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.files: list[SynthFile] = []
        self.bytes_written = 0
        self._folders: set[Path] = set()

    def write(self, relpath: str, data: bytes, kind: str) -> None:
        path = self.out / relpath
        if path.parent not in self._folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(path.parent)
        path.write_bytes(data)
        self.files.append(SynthFile(relpath, kind))
        self.bytes_written += len(data)


def _rng(config: SynthConfig, *keys: int) -> np.random.Generator:
    layout_key = zlib.crc32(config.layout.encode())  # stable across runs, unlike hash()
    return np.random.default_rng(np.random.SeedSequence([config.seed, layout_key, *keys]))


def _write_frame(writer: _Writer, config: SynthConfig, plan: FramePlan, scene: Scene,
                 noise: NoiseBank) -> None:
    width, height = plan.size
    frame_rng = _rng(config, 1, plan.scene_id, plan.t)
    if plan.uncropped:  # render the full frame and cut the crop from it, as RoadScene did
        full_w, full_h = max(width, round(640 * config.scale)), max(height, round(512 * config.scale))
        full = to_counts(render_thermal(scene, plan.t, full_w, full_h, noise, frame_rng), 8)
        x0 = int(frame_rng.integers(0, full_w - width + 1))
        y0 = int(frame_rng.integers(0, full_h - height + 1))
        writer.write(plan.uncropped, _encode(full, plan.uncropped), KIND_EXCLUDED_COPY)
        grey = np.ascontiguousarray(full[y0 : y0 + height, x0 : x0 + width])
    else:
        image = render_thermal(scene, plan.t, width, height, noise, frame_rng)
        grey = to_counts(image, config.bit_depth)
        if plan.raw16:
            writer.write(plan.raw16, _encode(to_counts(image, 16), plan.raw16), KIND_EXCLUDED_COPY)
    if plan.annotated:
        burned = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
        for _, (x0, y0, x1, y1) in _boxes(scene, plan.t, width, height):
            cv2.rectangle(burned, (x0, y0), (x1 - 1, y1 - 1), (0, 0, 255), 1)
        writer.write(plan.annotated, _encode(burned, plan.annotated), KIND_EXCLUDED_COPY)
    data = _encode_ir(_with_border(grey, plan.border), plan)
    writer.write(plan.ir, data, KIND_IR)
    for relpath, kind in plan.copies:
        writer.write(relpath, data, kind)
    for relpath, factor in plan.visible:
        size = (max(MIN_SIDE, round(width * factor)), max(MIN_SIDE, round(height * factor)))
        colour = _with_border(render_visible(scene, plan.t, *size, frame_rng), plan.border)
        writer.write(relpath, _encode(colour, relpath), KIND_VISIBLE)
    if plan.mask:
        mask = _mask(scene, plan.t, width, height, plan.class_mask)
        writer.write(plan.mask, _encode(mask, plan.mask), KIND_MASK)
    names = BOX_CLASS_NAMES.get(config.layout, {})
    boxes = [(names.get(kind, kind), box) for kind, box in _boxes(scene, plan.t, width, height)]
    for relpath, fmt in plan.labels:
        data = _voc_xml(Path(plan.ir).name, width, height, boxes) if fmt == "voc" else _txt_boxes(boxes)
        writer.write(relpath, data, KIND_LABEL)


def _boxes(scene: Scene, t: int, width: int, height: int) -> list[tuple[str, tuple]]:
    return [(target.kind, target_box(target, t, width, height)) for target in scene.targets]


def _write_broken(writer: _Writer, config: SynthConfig) -> None:
    """Files a real tree contains and ingest must reject with a reason (folder layout only)."""
    rng = _rng(config, 3)
    scene = random_scene(rng, "ground")
    grey = to_counts(render_thermal(scene, 0, 320, 256, NoiseBank(rng, 320, 256), rng), 8)
    data = _encode(grey, "x.jpg")
    writer.write("site_c/broken/truncated_00000.jpg", data[: len(data) // 2], KIND_IR_BROKEN)
    writer.write("site_c/broken/tiny_00000.png", _encode(grey[:9, :12], "x.png"), KIND_IR_BROKEN)


def _noise_size(config: SynthConfig, plans: list[FramePlan]) -> tuple[int, int]:
    """(width, height) of the noise field: fits every frame, including RoadScene's full frames."""
    width = max(max(p.size[0] for p in plans), round(640 * config.scale))
    height = max(max(p.size[1] for p in plans), round(512 * config.scale))
    return width, height


def _render_chunk(config: SynthConfig, plans: list[FramePlan],
                  noise_size: tuple[int, int]) -> tuple[list[SynthFile], int]:
    """Render and write some frames. A frame's randomness depends only on the seed and its
    own ids, and the noise field only on the seed and `noise_size`, so any split of the
    frames into chunks writes the same bytes."""
    writer = _Writer(Path(config.out))
    noise = NoiseBank(_rng(config, 2), *noise_size)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # small images: threads cost more than they give
    try:
        scene_cache: tuple[int, Scene] | None = None
        for plan in plans:
            if scene_cache is None or scene_cache[0] != plan.scene_id:
                scene_cache = (plan.scene_id, random_scene(_rng(config, 4, plan.scene_id), plan.view))
            _write_frame(writer, config, plan, scene_cache[1], noise)
    finally:
        cv2.setNumThreads(threads)
    return writer.files, writer.bytes_written


def _worker_count(config: SynthConfig, frames: int) -> int:
    wanted = config.workers or available_cores()
    return max(1, min(wanted, frames // PARALLEL_MIN_FRAMES))


def marker_bytes(config: SynthConfig) -> bytes:
    described = {
        "generator": "inf590k synth",
        "layout": config.layout,
        "seed": config.seed,
        "modality": "synthetic",
        "license": SYNTH_LICENSE,
        "citation": SYNTH_CITATION,
    }
    return (json.dumps(described, indent=1) + "\n").encode()


def synthesize(config: SynthConfig) -> SynthSummary:
    """Render `config.count` IR frames (plus their companions) into `config.out`."""
    start = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    plans = list(PLANNERS[config.layout](config, _rng(config, 0)))
    noise_size = _noise_size(config, plans)
    workers = _worker_count(config, len(plans))
    if workers == 1:
        results = [_render_chunk(config, plans, noise_size)]
    else:
        size = -(-len(plans) // (4 * workers))
        chunks = [plans[i : i + size] for i in range(0, len(plans), size)]
        # spawn, not fork: the caller may hold threads (OpenCV, torch) that fork would copy
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_render_chunk, [config] * len(chunks), chunks,
                                    [noise_size] * len(chunks)))
    writer = _Writer(out)
    for files, written in results:
        writer.files.extend(files)
        writer.bytes_written += written
    for relpath, data in _extra_files(config, plans).items():
        writer.write(relpath, data, KIND_LABEL)
    if config.layout == "folder":
        _write_broken(writer, config)
    writer.write(SYNTH_MARKER, marker_bytes(config), KIND_MARKER)
    return SynthSummary(
        layout=config.layout, out=out, files=tuple(writer.files),
        bytes_written=writer.bytes_written, seconds=time.perf_counter() - start,
    )
