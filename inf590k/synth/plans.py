"""The frames of each layout: file names, sizes, splits and scene views, as the public
dataset names and sizes them (FramePlan per frame, one planner per layout).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from inf590k.synth.config import (
    DRONEVEHICLE_BORDER,
    KIND_EXCLUDED_COPY,
    KIND_IR_COPY,
    MIN_SIDE,
    SynthConfig,
)


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
