"""Synthetic infrared scenes: a smooth thermal background, warm moving targets, stripe noise and
vignetting, rendered as thermal counts or as the visible image of the same scene.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np


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


RAW_14BIT_MAX = (1 << 14) - 1  # 16-bit files hold 14-bit data, like FLIR raw frames
