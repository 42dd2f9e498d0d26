"""Probe layout readers: SIRST, IRSTD-1k, NUDT-SIRST and MSRS folders with their splits."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.measure import label, regionprops

from inf590k.synth import SynthConfig, synthesize
from pretrain.models.configs import IR_MEAN, IR_STD
from pretrain.probe.datasets import (
    ProbeDataError,
    load_split,
    read_grey,
    read_layout,
    seeded_split,
)

COUNT = 10


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("probe_data")
    for layout in ("sirst", "irstd1k", "nudt_sirst", "msrs"):
        synthesize(SynthConfig(layout=layout, out=root / layout, count=COUNT, width=96, height=80))
    return root


@pytest.mark.parametrize(
    ("layout", "folder", "split_files"),
    [("sirst", "sirst", "idx_427/trainval.txt + idx_427/test.txt"),
     ("irstd1k", "irstd1k", "trainval.txt + test.txt"),
     ("nudt", "nudt_sirst", "50_50/trainval.txt + 50_50/test.txt"),
     ("nudt_sirst", "nudt_sirst", "50_50/trainval.txt + 50_50/test.txt")],
)
def test_small_target_layouts_use_their_split_files(synth_root: Path, layout: str, folder: str,
                                                    split_files: str) -> None:
    samples = read_layout(layout, synth_root / folder)  # the dataset root may sit below --data
    assert samples.split_source == split_files
    assert len(samples.train) == len(samples.test) == COUNT // 2
    assert samples.num_classes == 2 and samples.without_mask == 0
    assert not {s.name for s in samples.train} & {s.name for s in samples.test}
    for sample in samples.train + samples.test:
        assert sample.image.is_file() and sample.mask.is_file()
        assert sample.mask.stem.removesuffix("_pixels0") == sample.image.stem


def test_msrs_splits_by_folder_and_keeps_class_ids(synth_root: Path) -> None:
    samples = read_layout("msrs", synth_root / "msrs")
    assert samples.num_classes == 9 and samples.split_source.startswith("train/ + test/")
    assert len(samples.train) + len(samples.test) == COUNT and samples.test
    loaded = load_split(samples.train, 64, binary=False)
    assert set(np.unique(loaded.masks.numpy())) <= set(range(9)) | {255}
    assert loaded.masks.max() > 0, "synthetic MSRS labels hold class ids"


def test_missing_split_files_give_a_seeded_split(tmp_path: Path) -> None:
    synthesize(SynthConfig(layout="irstd1k", out=tmp_path, count=COUNT, width=64, height=64))
    for split in tmp_path.rglob("*.txt"):
        split.unlink()
    first = read_layout("irstd1k", tmp_path, seed=3)
    again = read_layout("irstd1k", tmp_path, seed=3)
    other = read_layout("irstd1k", tmp_path, seed=4)
    assert first.split_source == "seeded (seed 3)"
    assert first == again and first.test != other.test
    assert (len(first.train), len(first.test)) == (7, 3)


def test_seeded_split_keeps_both_sides_non_empty() -> None:
    assert seeded_split(["a", "b"], seed=0)[1] and seeded_split(["a", "b"], seed=0)[0]
    with pytest.raises(ProbeDataError, match="at least 2"):
        seeded_split(["a"], seed=0)


def test_synthetic_small_targets_are_hot_points_and_extended_blobs(tmp_path: Path) -> None:
    synthesize(SynthConfig(layout="irstd1k", out=tmp_path, count=24, width=256, height=256))
    samples = read_layout("irstd1k", tmp_path)
    areas, contrasts = [], []
    for sample in samples.train + samples.test:
        grey, mask = read_grey(sample.image), cv2.imread(str(sample.mask), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(mask)) == {0, 255}
        areas += [region.area for region in regionprops(label(mask > 0, connectivity=2))]
        contrasts.append(grey[mask > 0].mean() - grey[mask == 0].mean())
    assert min(contrasts) > 0.05, "every target is warmer than its background"
    assert min(areas) <= 13 and max(areas) >= 40, f"points and extended targets: {sorted(areas)}"
    assert max(areas) < 0.005 * 256 * 256, "small targets stay small"


def test_real_sirst_sample_reads_only_images_with_masks(ir_samples: Path) -> None:
    samples = read_layout("sirst", ir_samples / "sirst")
    assert len(samples.train) + len(samples.test) == 12
    assert samples.without_mask == 88 and samples.split_source == "seeded (seed 0)"
    loaded = load_split(samples.test, 128)
    assert loaded.images.shape == (len(samples.test), 1, 128, 128)
    assert loaded.masks.shape == (len(samples.test), 128, 128)
    assert set(np.unique(loaded.masks.numpy())) == {0, 1}
    mean = float(loaded.images.mean()) * IR_STD + IR_MEAN
    assert 0.0 < mean < 1.0


def test_grey_reader_handles_storage_modes_and_16_bit(tmp_path: Path) -> None:
    grey = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 3)
    cv2.imwrite(str(tmp_path / "rgb.png"), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGRA))
    raw = (grey.astype(np.uint16) * 40 + 3000)
    cv2.imwrite(str(tmp_path / "raw.png"), raw)
    for name in ("rgb.png", "rgba.png"):
        np.testing.assert_allclose(read_grey(tmp_path / name), grey / 255.0, atol=1e-6)
    stretched = read_grey(tmp_path / "raw.png")
    assert stretched.min() == 0.0 and stretched.max() == 1.0
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ProbeDataError, match="cannot decode"):
        read_grey(tmp_path / "bad.png")


def test_bad_data_folders_say_what_to_fix(tmp_path: Path, synth_root: Path) -> None:
    with pytest.raises(ProbeDataError, match="not a folder"):
        read_layout("sirst", tmp_path / "missing")
    with pytest.raises(ProbeDataError, match="unknown layout"):
        read_layout("coco", synth_root)
    with pytest.raises(ProbeDataError, match="IRSTD1k_Img"):
        read_layout("irstd1k", synth_root / "sirst")
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.zeros((8, 8), np.uint8))
    (tmp_path / "masks").mkdir()
    with pytest.raises(ProbeDataError, match="none has a mask"):
        read_layout("sirst", tmp_path)


def test_image_and_mask_of_different_sizes_are_refused(tmp_path: Path) -> None:
    for folder, shape in (("images", (16, 16)), ("masks", (16, 12))):
        (tmp_path / folder).mkdir()
        for name in ("a", "b"):
            cv2.imwrite(str(tmp_path / folder / f"{name}.png"), np.zeros(shape, np.uint8))
    samples = read_layout("nudt", tmp_path)
    with pytest.raises(ProbeDataError, match="one size"):
        load_split(samples.train, 32)
