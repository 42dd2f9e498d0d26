"""Readers of infrared segmentation sets in their own folder layouts, with their splits.

    samples = read_layout("sirst", root)         # -> LayoutSamples(train=..., test=..., ...)
    data = load_split(samples.train, size=256)   # -> images [N, 1, S, S], masks [N, S, S]

Layouts (the root may be the dataset folder itself or any folder above it):

- sirst:   images/*.png + masks/<name>_pixels0.png; splits idx_427/ (or idx_320/)
           trainval.txt + test.txt. Images without a mask are left out (and counted).
- irstd1k: IRSTD1k_Img/*.png + IRSTD1k_Label/*.png; trainval.txt + test.txt beside them.
- nudt:    images/*.png + masks/*.png; idx_1327/, 50_50/ or the root's trainval.txt + test.txt.
- msrs:    {train,test}/ir/*.png + {train,test}/Segmentation_labels/*.png (class ids 0..8);
           the folders are the split.

Where a set has no split files, a seeded 70/30 split of the sorted names is used.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from pretrain.models.configs import IR_MEAN, IR_STD

LAYOUTS = ("sirst", "irstd1k", "nudt", "msrs")
LAYOUT_ALIASES = {"nudt_sirst": "nudt", "nudt-sirst": "nudt", "irstd-1k": "irstd1k"}
IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
MSRS_CLASSES = ("unlabelled", "car", "person", "bike", "curve", "car_stop", "guardrail",
                "color_cone", "bump")
IGNORE_INDEX = 255
TEST_FRACTION = 0.3  # of the seeded split, where a set ships no split files
MAX_SEARCH_DEPTH = 3  # folders below --data searched for the layout's image folder


class ProbeDataError(ValueError):
    """The data folder does not hold the layout asked for; the message says what to fix."""


@dataclass(frozen=True)
class Sample:
    name: str
    image: Path
    mask: Path


@dataclass(frozen=True)
class LayoutSamples:
    """Train and test samples of one dataset, and where the split came from."""

    layout: str
    root: Path  # the folder holding the image folder
    train: tuple[Sample, ...]
    test: tuple[Sample, ...]
    split_source: str  # the split files used, or "seeded"
    without_mask: int  # images left out because they have no mask
    num_classes: int  # 2 for small targets (binary), 9 for MSRS


def canonical_layout(layout: str) -> str:
    name = LAYOUT_ALIASES.get(layout.lower(), layout.lower())
    if name not in LAYOUTS:
        raise ProbeDataError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    return name


def _find_folder(data: Path, relative: str) -> Path:
    """The folder that holds `relative` (e.g. 'IRSTD1k_Img'), at `data` or below it."""
    if (data / relative).is_dir():
        return data
    for depth in range(1, MAX_SEARCH_DEPTH + 1):
        hits = sorted(p for p in data.glob("/".join(["*"] * depth) + "/" + relative) if p.is_dir())
        if hits:
            return hits[0].parents[len(Path(relative).parts) - 1]
    raise ProbeDataError(
        f"no {relative}/ folder at or below {data}: point --data at the dataset folder, "
        f"or choose the --layout it is in ({', '.join(LAYOUTS)})"
    )


def _images(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def _read_list(path: Path) -> list[str]:
    """Names of a split file, one a line; extensions and folders are dropped."""
    names = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            names.append(Path(line).stem)
    return names


def _split_files(candidates: Iterable[Path]) -> tuple[Path, Path] | None:
    for folder in candidates:
        test = folder / "test.txt"
        for train_name in ("trainval.txt", "train.txt"):
            if (folder / train_name).is_file() and test.is_file():
                return folder / train_name, test
    return None


def seeded_split(names: Sequence[str], seed: int,
                 test_fraction: float = TEST_FRACTION) -> tuple[list[str], list[str]]:
    """Shuffle the sorted names with `seed`; the last `test_fraction` (at least one) is test."""
    if len(names) < 2:
        raise ProbeDataError(f"{len(names)} labelled image(s): a split needs at least 2")
    order = np.random.default_rng(seed).permutation(len(names))
    ordered = [sorted(names)[i] for i in order]
    test_count = min(len(names) - 1, max(1, round(len(names) * test_fraction)))
    return sorted(ordered[:-test_count]), sorted(ordered[-test_count:])


def _paired(images: dict[str, Path], masks: dict[str, Path]) -> dict[str, Sample]:
    return {name: Sample(name, path, masks[name]) for name, path in images.items() if name in masks}


def _build(layout: str, root: Path, pairs: dict[str, Sample], images: int,
           splits: tuple[Path, Path] | None, seed: int, num_classes: int = 2) -> LayoutSamples:
    if not pairs:
        raise ProbeDataError(
            f"{root}: {images} image(s) but none has a mask in the {layout} layout; "
            f"check the mask folder and names"
        )
    if splits is not None:
        train_names = [n for n in _read_list(splits[0]) if n in pairs]
        test_names = [n for n in _read_list(splits[1]) if n in pairs]
        source = f"{splits[0].relative_to(root)} + {splits[1].relative_to(root)}"
    if splits is None or not train_names or not test_names:
        # split files absent, or naming none of the labelled images (a partial copy)
        train_names, test_names = seeded_split(list(pairs), seed)
        source = f"seeded (seed {seed})"
    return LayoutSamples(
        layout=layout, root=root,
        train=tuple(pairs[n] for n in train_names), test=tuple(pairs[n] for n in test_names),
        split_source=source, without_mask=images - len(pairs), num_classes=num_classes,
    )


def _read_sirst(data: Path, seed: int) -> LayoutSamples:
    root = _find_folder(data, "images")
    if not (root / "masks").is_dir():
        raise ProbeDataError(f"{root} has images/ but no masks/: SIRST masks are masks/*_pixels0.png")
    images = _images(root / "images")
    masks = {stem.removesuffix("_pixels0"): p for stem, p in _images(root / "masks").items()
             if stem.endswith("_pixels0")}
    splits = _split_files([root / "idx_427", root / "idx_320", root])
    return _build("sirst", root, _paired(images, masks), len(images), splits, seed)


def _read_irstd1k(data: Path, seed: int) -> LayoutSamples:
    root = _find_folder(data, "IRSTD1k_Img")
    images = _images(root / "IRSTD1k_Img")
    label_folder = root / "IRSTD1k_Label"
    masks = _images(label_folder) if label_folder.is_dir() else {}
    return _build("irstd1k", root, _paired(images, masks), len(images), _split_files([root]), seed)


def _read_nudt(data: Path, seed: int) -> LayoutSamples:
    root = _find_folder(data, "masks")
    images = _images(root / "images") if (root / "images").is_dir() else {}
    masks = _images(root / "masks")
    splits = _split_files([root / "idx_1327", root / "50_50", root])
    return _build("nudt", root, _paired(images, masks), len(images), splits, seed)


def _read_msrs(data: Path, seed: int) -> LayoutSamples:
    root = _find_folder(data, "train/ir")
    by_split = {}
    for split in ("train", "test"):
        folder = root / split
        images = _images(folder / "ir") if (folder / "ir").is_dir() else {}
        labels = folder / "Segmentation_labels"
        by_split[split] = _paired(images, _images(labels) if labels.is_dir() else {})
        if not by_split[split]:
            raise ProbeDataError(
                f"{folder}: no ir/ image with a Segmentation_labels/ file of the same name"
            )
    return LayoutSamples(
        layout="msrs", root=root, train=tuple(by_split["train"].values()),
        test=tuple(by_split["test"].values()), split_source="train/ + test/ folders",
        without_mask=0, num_classes=len(MSRS_CLASSES),
    )


def read_layout(layout: str, data: Path | str, seed: int = 0) -> LayoutSamples:
    """The labelled samples of the dataset at (or below) `data`, split into train and test."""
    data = Path(data)
    if not data.is_dir():
        raise ProbeDataError(f"--data {data} is not a folder: point it at the dataset folder")
    readers = {"sirst": _read_sirst, "irstd1k": _read_irstd1k, "nudt": _read_nudt,
               "msrs": _read_msrs}
    return readers[canonical_layout(layout)](data, seed)


def read_grey(path: Path) -> np.ndarray:
    """An infrared image as float32 [H, W] in 0..1 (L, RGB, RGBA, palette; 8 or 16 bit).

    16-bit frames hold raw counts (often 14-bit): they are stretched min..max per image.
    """
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ProbeDataError(f"cannot decode {path}: replace or remove the file")
    if array.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if array.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        array = cv2.cvtColor(array, code)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    array = array.astype(np.float32)
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def read_mask(path: Path, binary: bool) -> np.ndarray:
    """A mask as uint8 [H, W]: 0/1 for small targets (any non-zero is target), or class ids."""
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ProbeDataError(f"cannot decode mask {path}: replace or remove the file")
    if array.ndim == 3:
        array = array[..., 0]
    if binary:
        return (array > 0).astype(np.uint8)
    return array.astype(np.uint8)


@dataclass(frozen=True)
class LoadedSplit:
    names: tuple[str, ...]
    images: torch.Tensor  # [N, 1, S, S] float32, normalised with IR_MEAN / IR_STD
    masks: torch.Tensor  # [N, S, S] int64: 0/1, or class ids with IGNORE_INDEX (for training)
    # The masks as read, [H_i, W_i] uint8 each: metrics are taken on these, never on resized
    # masks (nearest-neighbour resizing can erase a target of a few pixels).
    full_masks: tuple[np.ndarray, ...]


def load_split(samples: Sequence[Sample], size: int, binary: bool = True) -> LoadedSplit:
    """Decode every sample once and resize it to size x size (image bilinear, mask nearest);
    the masks at their own resolution are kept too, for the metrics.

    Small-target sets are a few hundred to ~1,300 frames: held in memory they cost
    ~260 KB each at 256 px and are decoded once instead of once per epoch.
    """
    images, masks, full_masks = [], [], []
    for sample in samples:
        grey = read_grey(sample.image)
        mask = read_mask(sample.mask, binary)
        if grey.shape != mask.shape:
            raise ProbeDataError(
                f"{sample.image.name} is {grey.shape} but its mask {sample.mask.name} is "
                f"{mask.shape}: image and mask must have one size"
            )
        images.append(cv2.resize(grey, (size, size), interpolation=cv2.INTER_LINEAR))
        masks.append(cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST))
        full_masks.append(mask)
    image_tensor = (torch.from_numpy(np.stack(images))[:, None] - IR_MEAN) / IR_STD
    return LoadedSplit(
        names=tuple(s.name for s in samples),
        images=image_tensor,  # [N, 1, S, S]
        masks=torch.from_numpy(np.stack(masks)).long(),  # [N, S, S]
        full_masks=tuple(full_masks),
    )
