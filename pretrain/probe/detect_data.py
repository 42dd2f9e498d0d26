"""Readers of infrared detection sets in their own layouts, with their splits.

    data = read_detection_layout("m3fd", root, seed=0)      # -> DetectionSet
    images = DetectionImages(data.train, in_chans=1)        # torch Dataset: image, target

Layouts (the root may be the dataset folder itself or any folder above it):

- m3fd:         M3FD_Detection/Ir/*.png + Annotation/*.xml (VOC boxes; folder case varies),
                six classes People, Car, Bus, Motorcycle, Lamp, Truck; no split files (a
                seeded split is made, written to the run and reusable with --split).
- flir_adas_v2: images_thermal_train/ and images_thermal_val/ with their coco.json (train
                and test); the continuous test video is not part of the detection split.
- coco:         any COCO-style JSON (images, annotations, categories) and its images (found
                beside the JSON, under the data folder, or in a folder named after the
                JSON's split: instances_val2017.json -> val2017/). JSONs named train... and
                val... / test... are the split; else one JSON is split by seed.

Classes: M3FD's six, or the categories of a COCO file that hold at least one box (by id).
Samples are named by their path under the dataset root (stems for M3FD), the names a split
file lists. Images are read as grey 0..1 (`read_grey`); their size comes from the file, not
from the annotation (a lying header skips the image).

Bad input is skipped and counted, never a traceback (`DetectionSet.skipped`): a box outside
the image or of zero area, a box of an unknown class, an image without its annotation, an
annotation without its image, COCO ids that point nowhere, unreadable annotation files. A
file that cannot be a dataset at all (no JSON object, duplicate ids) is a one-line error.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.probe.datasets import IMAGE_SUFFIXES, ProbeDataError, seeded_split
from pretrain.probe.detect_samples import (
    DetectionSample,
    DetectionSet,
    SkipCounts,
    checked_box,
    image_size,
)
from pretrain.probe.splits import Split, apply_split, check_sets

DETECT_LAYOUTS = ("m3fd", "flir_adas_v2", "coco")
M3FD_CLASSES = ("People", "Car", "Bus", "Motorcycle", "Lamp", "Truck")
MAX_SEARCH_DEPTH = 3  # folders below --data searched for the layout's folders
FLIR_SPLITS = (("train", "images_thermal_train"), ("test", "images_thermal_val"))
TRAIN_WORDS = ("train",)
TEST_WORDS = ("test", "val")

# --------------------------------------------------------------------------- finding folders


def _walk_dirs(data: Path, depth: int = MAX_SEARCH_DEPTH) -> Iterable[Path]:
    """`data` and the folders below it, breadth first, `depth` levels deep (no symlinked dirs)."""
    level = [data]
    for _ in range(depth + 1):
        yield from level
        level = sorted(
            child
            for folder in level
            for child in folder.iterdir()
            if child.is_dir() and not child.is_symlink()
        )


def _child(folder: Path, name: str) -> Path | None:
    """`folder/name` with the name matched case-insensitively (Ir / ir, Annotation / annotation)."""
    for child in sorted(folder.iterdir()):
        if child.is_dir() and child.name.lower() == name.lower():
            return child
    return None


def _images_in(folder: Path) -> dict[str, Path]:
    return {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    }


# --------------------------------------------------------------------------- M3FD (VOC XML)


def _voc_objects(path: Path, skips: SkipCounts) -> list[tuple[str, tuple[float, ...]]] | None:
    """(class name, (xmin, ymin, xmax, ymax)) of a VOC file; None if it cannot be read."""
    try:
        root = ET.parse(path).getroot()  # expat >= 2.4 limits entity expansion
    except (ET.ParseError, OSError, UnicodeDecodeError):
        return None
    objects = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        try:
            coords = tuple(
                float(obj.findtext(f"bndbox/{k}") or "") for k in ("xmin", "ymin", "xmax", "ymax")
            )
        except ValueError:
            skips.add("box without coordinates")
            continue
        objects.append((name, coords))
    return objects


def _read_m3fd(data: Path, skips: SkipCounts) -> tuple[Path, tuple[str, ...], list[DetectionSample]]:
    for folder in _walk_dirs(data):
        images, labels = _child(folder, "ir"), _child(folder, "annotation")
        if images is not None and labels is not None:
            break
    else:
        raise ProbeDataError(
            f"no Ir/ folder beside an Annotation/ folder at or below {data}: point --data at "
            f"M3FD_Detection (or a folder above it), or choose the --layout it is in"
        )
    classes = {name.lower(): label for label, name in enumerate(M3FD_CLASSES, start=1)}
    files = _images_in(images)
    annotations = {p.stem: p for p in sorted(labels.glob("*.xml"))}
    skips.add("annotation without image", len(set(annotations) - set(files)))
    samples = []
    for stem, path in files.items():
        if stem not in annotations:
            skips.add("image without annotation")
            continue
        size = image_size(path)
        objects = _voc_objects(annotations[stem], skips)
        if size is None or objects is None:
            skips.add("unreadable image" if size is None else "unreadable annotation")
            continue
        boxes, box_labels = [], []
        for name, coords in objects:
            label = classes.get(name.lower())
            if label is None:
                skips.add(f"box of unknown class {name!r}")
                continue
            box = checked_box(*coords, *size, skips)
            if box is not None:
                boxes.append(box)
                box_labels.append(label)
        samples.append(DetectionSample(stem, path, *size, tuple(boxes), tuple(box_labels)))
    return folder, M3FD_CLASSES, samples


# --------------------------------------------------------------------------- COCO JSON


@dataclass
class _CocoFile:
    path: Path
    images: list[dict]
    annotations: list[dict]
    categories: dict[int, str]


def _parse_coco(path: Path, record: Any) -> _CocoFile:
    """A parsed COCO JSON's lists; one that is no COCO file is a one-line error naming it."""
    if not isinstance(record, dict) or not isinstance(record.get("images"), list):
        raise ProbeDataError(f"{path} is not a COCO JSON (no 'images' list)")
    annotations = record.get("annotations", [])
    categories = record.get("categories", [])
    if not isinstance(annotations, list) or not isinstance(categories, list):
        raise ProbeDataError(f"{path}: 'annotations' and 'categories' must be lists")
    names: dict[int, str] = {}
    for category in categories:
        if not isinstance(category, dict) or not isinstance(category.get("id"), int):
            raise ProbeDataError(f"{path}: a category without an integer 'id'")
        if category["id"] in names:
            raise ProbeDataError(
                f"{path}: category id {category['id']} is given twice: the "
                f"ids do not match one category each; fix the file"
            )
        names[category["id"]] = str(category.get("name", category["id"]))
    images = [i for i in record["images"] if isinstance(i, dict)]
    seen: set[str] = set()
    for image in images:
        key = repr(image.get("id"))
        if key in seen:
            raise ProbeDataError(
                f"{path}: image id {key} is given twice: the ids do not "
                f"match one image each; fix the file"
            )
        seen.add(key)
    return _CocoFile(path, images, [a for a in annotations if isinstance(a, dict)], names)


def _load_coco(path: Path) -> _CocoFile:
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        raise ProbeDataError(f"{path} is not a readable COCO JSON ({error})") from error
    return _parse_coco(path, record)


def _image_path(entry: dict, coco: _CocoFile, root: Path) -> Path | None:
    """Where an image entry's file is: beside the JSON, under the root, or in the folder
    named after the JSON's split (instances_val2017.json -> val2017/)."""
    name = entry.get("file_name")
    if (
        not isinstance(name, str)
        or not name
        or Path(name).is_absolute()
        or ".." in Path(name).parts
    ):
        return None
    split_folder = coco.path.stem.split("_")[-1]
    bases = [coco.path.parent, root, root / split_folder]
    if coco.path.parent != root:  # annotations/instances_val2017.json -> val2017/ beside it
        bases.append(coco.path.parent.parent / split_folder)
    for base in bases:
        candidate = base / name
        if candidate.is_file():
            return candidate
    return None


def _coco_box(annotation: dict) -> tuple[float, float, float, float] | None:
    bbox = annotation.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        return None
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    return x, y, x + w, y + h


def _coco_samples(
    coco: _CocoFile, root: Path, categories: Mapping[int, int], skips: SkipCounts
) -> list[DetectionSample]:
    """Samples of one COCO file; `categories` maps its category ids to labels."""
    by_image: dict[Any, list[dict]] = {}
    image_ids = {repr(i.get("id")) for i in coco.images}
    for annotation in coco.annotations:
        key = repr(annotation.get("image_id"))
        if key not in image_ids:
            skips.add("annotation of an image id the JSON does not list")
            continue
        by_image.setdefault(key, []).append(annotation)
    samples = []
    for entry in coco.images:
        path = _image_path(entry, coco, root)
        if path is None:
            skips.add("listed image without its file")
            continue
        size = image_size(path)
        if size is None:
            skips.add("unreadable image")
            continue
        stated = (entry.get("width"), entry.get("height"))
        if stated != (None, None) and tuple(stated) != size:
            skips.add("image whose size differs from its JSON entry")
            continue
        boxes, labels, segmentations = [], [], []
        for annotation in by_image.get(repr(entry.get("id")), []):
            label = categories.get(annotation.get("category_id"))
            if label is None:
                skips.add("box of a category id the JSON does not list")
                continue
            if annotation.get("iscrowd"):
                skips.add("crowd region (not a box)")
                continue
            coords = _coco_box(annotation)
            if coords is None:
                skips.add("box without coordinates")
                continue
            box = checked_box(*coords, *size, skips)
            if box is None:
                continue
            boxes.append(box)
            labels.append(label)
            segmentations.append(annotation.get("segmentation") or None)
        masks = tuple(segmentations) if segmentations and all(segmentations) else None
        name = path.relative_to(root).as_posix()
        samples.append(DetectionSample(name, path, *size, tuple(boxes), tuple(labels), masks))
    return samples


def _coco_classes(files: Sequence[_CocoFile]) -> tuple[tuple[str, ...], dict[int, int]]:
    """Categories holding at least one box in any file, by id: names and id -> label."""
    names: dict[int, str] = {}
    for coco in files:
        for category_id, name in coco.categories.items():
            if names.setdefault(category_id, name) != name:
                raise ProbeDataError(
                    f"{coco.path}: category {category_id} is {name!r} here "
                    f"but {names[category_id]!r} in another JSON of the set"
                )
    used = {a.get("category_id") for coco in files for a in coco.annotations}
    ids = sorted(i for i in names if i in used)
    return tuple(names[i] for i in ids), {i: label for label, i in enumerate(ids, start=1)}


def _split_word(path: Path) -> str | None:
    name = path.stem.lower()
    if any(word in name for word in TRAIN_WORDS):
        return "train"
    if any(word in name for word in TEST_WORDS):
        return "test"
    return None


def _coco_files(data: Path) -> list[_CocoFile]:
    """The COCO JSONs at or below `data` (two levels): JSON objects with an `images` list and
    annotations or categories; other JSON files (split files, indexes) are not datasets."""
    found = []
    for folder in _walk_dirs(data, 2):
        for path in sorted(folder.glob("*.json")):
            try:
                record = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue
            if (
                isinstance(record, dict)
                and "images" in record
                and ("annotations" in record or "categories" in record)
            ):
                found.append(_parse_coco(path, record))
    if not found:
        raise ProbeDataError(
            f"no COCO JSON (images, annotations, categories) at or below "
            f"{data}: point --data at the folder holding it"
        )
    return found


@dataclass(frozen=True)
class _Read:
    root: Path
    classes: tuple[str, ...]
    samples: dict[str, list[DetectionSample]]  # "train"/"test" (official split) or "all"
    source: str


def _read_coco_set(
    root: Path, files_by_split: Mapping[str, list[_CocoFile]], source: str, skips: SkipCounts
) -> _Read:
    classes, labels = _coco_classes([c for files in files_by_split.values() for c in files])
    samples = {
        split: [s for c in files for s in _coco_samples(c, root, labels, skips)]
        for split, files in files_by_split.items()
    }
    return _Read(root, classes, samples, source)


def _read_flir(data: Path, skips: SkipCounts) -> _Read:
    for folder in _walk_dirs(data):
        if all((folder / name / "coco.json").is_file() for _, name in FLIR_SPLITS):
            files = {
                split: [_load_coco(folder / name / "coco.json")] for split, name in FLIR_SPLITS
            }
            source = " + ".join(f"{name}/coco.json" for _, name in FLIR_SPLITS)
            return _read_coco_set(folder, files, source, skips)
    raise ProbeDataError(
        f"no images_thermal_train/coco.json beside images_thermal_val/coco.json at or below "
        f"{data}: point --data at the FLIR ADAS v2 folder, or use --layout coco"
    )


def _read_coco(data: Path, skips: SkipCounts) -> _Read:
    files = _coco_files(data)
    by_word: dict[str, list[_CocoFile]] = {}
    for coco in files:
        by_word.setdefault(_split_word(coco.path) or "all", []).append(coco)
    if "train" in by_word and "test" in by_word:
        tests = [c for c in by_word["test"] if "test" in c.path.stem.lower()]
        chosen = {"train": by_word["train"], "test": tests or by_word["test"]}  # test over val
        source = " + ".join(
            c.path.relative_to(data).as_posix() for c in chosen["train"] + chosen["test"]
        )
        return _read_coco_set(data, chosen, source, skips)
    if len(files) > 1:
        names = ", ".join(c.path.name for c in files[:4])
        raise ProbeDataError(
            f"{len(files)} COCO JSONs at or below {data} ({names}) and no train + val/test "
            f"pair among their names: point --data at the folder of one of them"
        )
    return _read_coco_set(data, {"all": files}, "", skips)


# --------------------------------------------------------------------------- the set


def _split_samples(
    layout: str, read: _Read, seed: int, split: Split | None, skips: SkipCounts
) -> DetectionSet:
    by_name: dict[str, DetectionSample] = {}
    for sample in (s for samples in read.samples.values() for s in samples):
        if sample.name in by_name:
            skips.add("image listed twice (its first entry kept)")
            continue
        by_name[sample.name] = sample
    if split is not None:
        train, test, missing = apply_split(split, by_name)
        skips.add("split name not in the data", missing)
        source = split.source
    elif "all" not in read.samples:
        test = list(dict.fromkeys(s.name for s in read.samples["test"]))
        listed = list(dict.fromkeys(s.name for s in read.samples["train"]))
        train = [n for n in listed if n not in set(test)]
        skips.add(
            "image in both the train and the test set (kept in test)", len(listed) - len(train)
        )
        source = read.source
    else:
        if len(by_name) < 2:
            raise ProbeDataError(
                f"{read.root}: {len(by_name)} labelled image(s) in the "
                f"{layout} layout; a split needs at least 2"
            )
        train, test = seeded_split(sorted(by_name), seed)
        source = f"seeded (seed {seed})"
    check_sets(train, test, source or "seeded")
    return DetectionSet(
        layout=layout,
        root=read.root,
        classes=read.classes,
        train=tuple(by_name[n] for n in train),
        test=tuple(by_name[n] for n in test),
        split_source=source,
        skipped=dict(skips),
    )


def read_detection_layout(
    layout: str, data: Path | str, seed: int = 0, split: Split | None = None
) -> DetectionSet:
    """The labelled images of the detection set at (or below) `data`, split into train and
    test: by `split` (a split file), else the layout's own split, else seeded."""
    data = Path(data)
    if not data.is_dir():
        raise ProbeDataError(f"--data {data} is not a folder: point it at the dataset folder")
    skips = SkipCounts()
    if layout == "m3fd":
        root, classes, samples = _read_m3fd(data, skips)
        read = _Read(root, classes, {"all": samples}, "")
    elif layout == "flir_adas_v2":
        read = _read_flir(data, skips)
    elif layout == "coco":
        read = _read_coco(data, skips)
    else:
        raise ProbeDataError(
            f"unknown detection layout {layout!r}: use one of {', '.join(DETECT_LAYOUTS)}"
        )
    if not read.classes:
        raise ProbeDataError(
            f"{read.root}: no box of a known class in the {layout} layout: check the annotations"
        )
    return _split_samples(layout, read, seed, split, skips)


# --------------------------------------------------------------------------- torch dataset


