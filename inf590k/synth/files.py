"""What a layout holds besides its infrared frames, and how each file is encoded: visible halves
with borders, masks, VOC and COCO boxes, split lists.
"""

from __future__ import annotations

import json
import zlib
from io import BytesIO
from pathlib import Path
from xml.sax.saxutils import escape

import cv2
import numpy as np
from PIL import Image

from inf590k.synth.config import (
    BOX_CLASS_NAMES,
    FLIR_CATEGORIES,
    MSRS_CLASS_IDS,
    SynthConfig,
    SynthError,
)
from inf590k.synth.plans import (
    FramePlan,
)
from inf590k.synth.render import (
    Scene,
    _draw_target,
    random_scene,
    target_box,
)


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


def _rng(config: SynthConfig, *keys: int) -> np.random.Generator:
    layout_key = zlib.crc32(config.layout.encode())  # stable across runs, unlike hash()
    return np.random.default_rng(np.random.SeedSequence([config.seed, layout_key, *keys]))


def _boxes(scene: Scene, t: int, width: int, height: int) -> list[tuple[str, tuple]]:
    return [(target.kind, target_box(target, t, width, height)) for target in scene.targets]
