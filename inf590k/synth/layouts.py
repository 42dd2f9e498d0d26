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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from inf590k.fsutil import available_cores
from inf590k.inputs.manifest import SYNTH_CITATION, SYNTH_LICENSE, SYNTH_MARKER
from inf590k.synth.config import (
    BOX_CLASS_NAMES,
    KIND_EXCLUDED_COPY,
    KIND_IR,
    KIND_IR_BROKEN,
    KIND_LABEL,
    KIND_MARKER,
    KIND_MASK,
    KIND_VISIBLE,
    MIN_SIDE,
    PARALLEL_MIN_FRAMES,
    SynthConfig,
    SynthFile,
    SynthSummary,
)
from inf590k.synth.files import (
    _boxes,
    _encode,
    _encode_ir,
    _extra_files,
    _mask,
    _rng,
    _txt_boxes,
    _voc_xml,
    _with_border,
)
from inf590k.synth.plans import (
    PLANNERS,
    FramePlan,
)
from inf590k.synth.render import (
    NoiseBank,
    Scene,
    random_scene,
    render_thermal,
    render_visible,
    to_counts,
)

# --------------------------------------------------------------------------- scenes


# --------------------------------------------------------------------------- layouts


# --------------------------------------------------------------------------- encoding


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
