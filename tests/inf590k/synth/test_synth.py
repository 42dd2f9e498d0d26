"""Synthetic infrared data: right layout for each manifest, IR-like pixels, deterministic."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from inf590k.execution.units import ExecutionOptions
from inf590k.inputs.manifest import builtin_manifests
from inf590k.synth.config import (
    DRONEVEHICLE_BORDER,
    INCLUDED_KINDS,
    KIND_EXCLUDED_COPY,
    KIND_IR,
    KIND_IR_BROKEN,
    KIND_IR_COPY,
    KIND_LABEL,
    KIND_MARKER,
    KIND_MASK,
    KIND_VISIBLE,
    LAYOUTS_16BIT,
    PARALLEL_MIN_FRAMES,
    SYNTH_LAYOUTS,
    SynthConfig,
    SynthError,
    SynthSummary,
)
from inf590k.synth.layouts import synthesize
from inf590k.synth.render import RAW_14BIT_MAX

COUNT = 12
SCALE = 0.25


def read(path: Path) -> np.ndarray:
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert array is not None, f"cannot decode {path}"
    return array


def channel_spread(array: np.ndarray) -> float:
    """Mean absolute difference between the colour channels (0 for a grey image)."""
    if array.ndim == 2:
        return 0.0
    b, g, r = (array[..., i].astype(np.float32) for i in range(3))
    return float((np.abs(b - g) + np.abs(g - r) + np.abs(r - b)).mean() / 3)


def files_on_disk(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def digests(root: Path) -> dict[str, str]:
    return {rel: hashlib.sha256((root / rel).read_bytes()).hexdigest() for rel in files_on_disk(root)}


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory) -> dict[str, SynthSummary]:
    """Every layout once, small, shared by the tests below."""
    base = tmp_path_factory.mktemp("synth")
    return {
        layout: synthesize(SynthConfig(layout=layout, out=base / layout, count=COUNT, scale=SCALE))
        for layout in SYNTH_LAYOUTS
    }


@pytest.mark.parametrize("layout", SYNTH_LAYOUTS)
def test_every_written_file_is_sorted_right_by_the_manifest(synthesized, layout: str) -> None:
    summary = synthesized[layout]
    manifest = builtin_manifests()[layout]
    assert files_on_disk(summary.out) == {f.relpath for f in summary.files}
    assert summary.count(KIND_IR) == COUNT
    wrong = []
    for written in summary.files:
        if written.kind == KIND_MARKER:  # not an image: ingest excludes it by its extension
            continue
        rule = manifest.excluded_by(written.relpath)
        kept = manifest.included(written.relpath) and rule is None
        if kept != (written.kind in INCLUDED_KINDS):
            wrong.append((written.relpath, written.kind, rule))
    assert not wrong, f"{layout}: manifest decisions disagree with the file kinds: {wrong[:5]}"
    # the layout exercises exclusion: something besides IR frames is written and excluded
    assert any(f.kind not in INCLUDED_KINDS for f in summary.files)


EXPECTED_COMPANIONS = {  # kind -> files per IR frame
    "sirst": {KIND_MASK: 1},
    "roadscene": {KIND_VISIBLE: 2, KIND_EXCLUDED_COPY: 1},
    "llvip": {KIND_VISIBLE: 1},
    "flir_adas_v2": {KIND_VISIBLE: 1},
    "kaist": {KIND_VISIBLE: 1, KIND_LABEL: 1},
    "dronevehicle": {KIND_VISIBLE: 1, KIND_LABEL: 2},
    "hit_uav": {KIND_IR_COPY: 1, KIND_EXCLUDED_COPY: 2},
    "flir_adas_v1": {KIND_VISIBLE: 1, KIND_EXCLUDED_COPY: 2},  # 16-bit TIFF, boxes burned in
    "nudt_sirst": {KIND_MASK: 1},
    "irstd1k": {KIND_MASK: 1},
    "msrs": {KIND_VISIBLE: 1, KIND_MASK: 1},
    "vedai": {KIND_VISIBLE: 1, KIND_LABEL: 1},
    "sirst_v2": {KIND_EXCLUDED_COPY: 1},  # images/targets or images/backgrounds
}


@pytest.mark.parametrize("layout", sorted(EXPECTED_COMPANIONS))
def test_companion_files_per_frame(synthesized, layout: str) -> None:
    summary = synthesized[layout]
    for kind, per_frame in EXPECTED_COMPANIONS[layout].items():
        assert summary.count(kind) == per_frame * COUNT, kind


@pytest.mark.parametrize("layout", SYNTH_LAYOUTS)
def test_ir_frames_are_grey_and_visible_halves_are_colour(synthesized, layout: str) -> None:
    summary = synthesized[layout]
    for written in summary.files:
        if written.kind not in (KIND_IR, KIND_VISIBLE):
            continue
        array = read(summary.out / written.relpath)
        if written.kind == KIND_IR:
            assert channel_spread(array[..., :3] if array.ndim == 3 else array) < 2.0, written
            grey = array if array.ndim == 2 else array[..., 0]
            assert grey.std() > 3, f"{written.relpath} is flat"
        else:
            assert array.ndim == 3 and array.shape[2] == 3, written
            if layout == "dronevehicle":  # judge the content, not the white frame
                b = DRONEVEHICLE_BORDER
                array = array[b:-b, b:-b]
            assert channel_spread(array) > 30, f"{written.relpath} is not clearly colour"


def test_ir_frames_have_infrared_statistics(tmp_path: Path) -> None:
    """Mid-range entropy (real IR averages ~6.4 bits) and smooth: neighbours differ far less
    than the frame varies, unlike noise."""
    summary = synthesize(SynthConfig(layout="flir_adas_v2", out=tmp_path, count=6))
    for written in (f for f in summary.files if f.kind == KIND_IR):
        grey = read(tmp_path / written.relpath).astype(np.float32)
        counts = np.bincount(grey.astype(np.uint8).ravel(), minlength=256) / grey.size
        entropy = -(counts[counts > 0] * np.log2(counts[counts > 0])).sum()
        assert 4.0 < entropy < 7.8, (written.relpath, entropy)
        neighbour = np.abs(np.diff(grey, axis=1)).mean()
        assert neighbour < 0.5 * grey.std(), (written.relpath, neighbour, grey.std())
        column_means = grey.mean(axis=0)
        stripes = np.abs(np.diff(column_means)).mean()  # fixed-pattern column offsets
        assert stripes > 0.8, (written.relpath, stripes)  # ~0.4 with the stripes blurred away


def test_sirst_mixes_storage_modes_and_masks_cover_hot_targets(synthesized) -> None:
    summary = synthesized["sirst"]
    modes = Counter(Image.open(summary.out / f.relpath).mode for f in summary.files if f.kind == KIND_IR)
    assert modes["RGB"] > modes["L"] >= 1 and modes["RGBA"] >= 1 and modes["P"] >= 1
    sizes = set()
    for written in summary.files:
        if written.kind != KIND_MASK:
            continue
        image_path = summary.out / "images" / written.relpath.split("/")[-1].replace("_pixels0", "")
        image = np.asarray(Image.open(image_path).convert("L"), np.float32)
        mask = read(summary.out / written.relpath)
        assert mask.shape == image.shape and set(np.unique(mask)) <= {0, 255}
        assert mask.any(), f"{written.relpath}: no target"
        assert image[mask > 0].mean() > image[mask == 0].mean(), "targets must be warmer"
        sizes.add(mask.shape)
    assert len(sizes) > 1, "SIRST image sizes vary"


def test_dronevehicle_has_a_white_100px_border(synthesized) -> None:
    summary = synthesized["dronevehicle"]
    inner = (round(640 * SCALE), round(512 * SCALE))
    for written in summary.files:
        if written.kind not in (KIND_IR, KIND_VISIBLE):
            continue
        array = read(summary.out / written.relpath)
        b = DRONEVEHICLE_BORDER
        assert array.shape[:2] == (inner[1] + 2 * b, inner[0] + 2 * b)
        assert array[: b - 4].min() >= 240 and array[:, -b + 4 :].min() >= 240  # JPEG ringing
        assert array[b + 4 : -b - 4, b + 4 : -b - 4].mean() < 235


def test_flir_v1_raw_and_annotated_copies_are_what_they_claim(synthesized) -> None:
    summary = synthesized["flir_adas_v1"]
    raw = [f.relpath for f in summary.files if "thermal_16_bit" in f.relpath]
    annotated = [f.relpath for f in summary.files if "Annotated_thermal_8_bit" in f.relpath]
    assert len(raw) == len(annotated) == COUNT
    for rel in raw:
        array = read(summary.out / rel)
        assert rel.endswith(".tiff") and array.dtype == np.uint16 and array.max() <= RAW_14BIT_MAX
    drawn = [read(summary.out / rel) for rel in annotated]
    assert all(a.ndim == 3 for a in drawn) and max(channel_spread(a) for a in drawn) > 0.5
    assert {f.relpath.split("/")[0] for f in summary.files if f.kind == KIND_IR} == {
        "train", "val", "video"}


def test_sirst_v2_background_frames_have_no_mask(synthesized) -> None:
    summary = synthesized["sirst_v2"]
    masks = {f.relpath for f in summary.files if f.kind == KIND_MASK}
    copies = {f.relpath.split("/")[1] for f in summary.files if f.kind == KIND_EXCLUDED_COPY}
    assert len(masks) == COUNT // 2 and copies == {"targets", "backgrounds"}
    for rel in (f.relpath for f in summary.files if "backgrounds/" in f.relpath):
        mask = f"annotations/masks/{Path(rel).stem}_pixels0.png"
        assert mask not in masks


def test_anti_uav410_frames_are_sequences(synthesized) -> None:
    summary = synthesized["anti_uav410"]
    manifest = builtin_manifests()["anti_uav410"]
    ir = [f.relpath for f in summary.files if f.kind == KIND_IR]
    assert all(manifest.in_sequence(rel) for rel in ir)
    assert len({rel.rsplit("/", 1)[0] for rel in ir}) == 1  # 12 frames: one sequence folder


def test_llvip_stores_ir_as_three_equal_channels(synthesized) -> None:
    summary = synthesized["llvip"]
    ir = [f for f in summary.files if f.kind == KIND_IR]
    assert {f.relpath.split("/")[1] for f in ir} == {"train", "test"}
    for written in ir:
        array = read(summary.out / written.relpath)
        assert array.ndim == 3 and array.shape[2] == 3 and channel_spread(array) < 2.0


def test_hit_uav_copies_are_byte_identical(synthesized) -> None:
    summary = synthesized["hit_uav"]
    by_name: dict[str, set[str]] = {}
    for written in summary.files:
        if written.relpath.endswith(".jpg"):
            digest = hashlib.sha256((summary.out / written.relpath).read_bytes()).hexdigest()
            by_name.setdefault(written.relpath.rsplit("/", 1)[1], set()).add(digest)
    assert len(by_name) == COUNT and all(len(d) == 1 for d in by_name.values())


def test_kaist_frames_form_sequences_of_near_identical_frames(synthesized) -> None:
    summary = synthesized["kaist"]
    ir = sorted(f.relpath for f in summary.files if f.kind == KIND_IR)
    manifest = builtin_manifests()["kaist"]
    assert all(manifest.in_sequence(rel) for rel in ir)
    first, second = (read(summary.out / rel).astype(np.float32) for rel in ir[:2])
    assert first.shape == second.shape
    consecutive = np.abs(first - second).mean()
    other = synthesize(SynthConfig(layout="kaist", out=summary.out.parent / "kaist_other",
                                   count=1, seed=99, scale=SCALE))
    unrelated = np.abs(first - read(other.out / other.files[0].relpath).astype(np.float32)).mean()
    assert consecutive < unrelated / 2


def test_folder_layout_holds_broken_files_and_mixed_formats(synthesized) -> None:
    summary = synthesized["folder"]
    broken = {f.relpath for f in summary.files if f.kind == KIND_IR_BROKEN}
    assert broken == {"site_c/broken/truncated_00000.jpg", "site_c/broken/tiny_00000.png"}
    truncated = (summary.out / "site_c/broken/truncated_00000.jpg").read_bytes()
    assert truncated.startswith(b"\xff\xd8") and not truncated.endswith(b"\xff\xd9")
    assert max(read(summary.out / "site_c/broken/tiny_00000.png").shape) < 20
    suffixes = {Path(f.relpath).suffix for f in summary.files if f.kind == KIND_IR}
    assert {".jpg", ".png", ".tif"} <= suffixes


@pytest.mark.parametrize(
    ("layout", "size"),
    [("flir_adas_v2", (640, 512)), ("kaist", (640, 512)), ("hit_uav", (640, 512)),
     ("llvip", (1280, 1024)), ("dronevehicle", (840, 712))],
)
def test_default_sizes_are_the_real_ones(tmp_path: Path, layout: str, size: tuple[int, int]) -> None:
    summary = synthesize(SynthConfig(layout=layout, out=tmp_path, count=1))
    ir = next(f for f in summary.files if f.kind == KIND_IR)
    assert read(tmp_path / ir.relpath).shape[:2] == (size[1], size[0])


def test_explicit_size_overrides_the_layout(tmp_path: Path) -> None:
    summary = synthesize(SynthConfig(layout="sirst", out=tmp_path, count=3, width=100, height=80))
    for written in summary.files:
        if written.kind in (KIND_IR, KIND_MASK):
            assert Image.open(tmp_path / written.relpath).size == (100, 80)


@pytest.mark.parametrize("layout", LAYOUTS_16BIT)
def test_16_bit_frames_hold_14_bit_data(tmp_path: Path, layout: str) -> None:
    summary = synthesize(SynthConfig(layout=layout, out=tmp_path, count=4, bit_depth=16, scale=SCALE))
    ir = [f for f in summary.files if f.kind == KIND_IR]
    assert len(ir) == 4
    for written in ir:
        array = read(tmp_path / written.relpath)
        assert array.dtype == np.uint16 and array.ndim == 2
        assert 255 < array.max() <= RAW_14BIT_MAX and array.std() > 50
    if layout == "folder":
        assert {Path(f.relpath).suffix for f in ir} == {".png", ".tif"}


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    for layout in ("flir_adas_v2", "sirst", "hit_uav", "folder"):
        config = SynthConfig(layout=layout, out=tmp_path / "a" / layout, count=6, seed=7, scale=SCALE)
        synthesize(config)
        synthesize(SynthConfig(layout=layout, out=tmp_path / "b" / layout, count=6, seed=7, scale=SCALE))
        synthesize(SynthConfig(layout=layout, out=tmp_path / "c" / layout, count=6, seed=8, scale=SCALE))
        first, again, other = (digests(tmp_path / run / layout) for run in "abc")
        assert first == again, layout
        assert len(other) == len(first) and first != other, layout


@pytest.mark.slow
def test_worker_processes_write_the_same_bytes_as_one_process(tmp_path: Path) -> None:
    count = 2 * PARALLEL_MIN_FRAMES  # enough for two workers
    options = {"layout": "anti_uav410", "count": count, "scale": 0.1, "seed": 3}
    single = synthesize(SynthConfig(out=tmp_path / "one", workers=1, **options))
    double = synthesize(SynthConfig(out=tmp_path / "two", workers=2, **options))
    assert single.files == double.files and single.bytes_written == double.bytes_written
    assert digests(tmp_path / "one") == digests(tmp_path / "two")


def test_summary_is_one_line_with_the_counts(synthesized) -> None:
    text = str(synthesized["roadscene"])
    assert "\n" not in text
    assert text.startswith("synth roadscene:") and f"{COUNT} IR frames" in text
    assert f"{2 * COUNT} visible" in text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"layout": "nope"}, "unknown layout"),
        ({"count": 0}, "count"),
        ({"bit_depth": 12}, "bit depth"),
        ({"layout": "llvip", "bit_depth": 16}, "JPEG"),
        ({"scale": 0.0}, "scale"),
        ({"width": 100}, "both width and height"),
        ({"width": 8, "height": 8}, "at least"),
        ({"workers": -1}, "workers"),
    ],
)
def test_bad_options_say_what_to_change(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(SynthError, match=message):
        SynthConfig(**{"layout": "sirst", "out": tmp_path, **options})


def test_synthetic_frames_stay_synthetic_in_the_catalog(synthesized, tmp_path: Path) -> None:
    """The marker at the root makes ingest label the frames synthetic, with synth's license."""
    from inf590k.build import catalog as cat
    from inf590k.build.ingest import IngestConfig, ingest
    from inf590k.inputs.manifest import SYNTH_CITATION, SYNTH_LICENSE, builtin_manifests

    root = synthesized["kaist"].out
    ingest(IngestConfig(sources=(("kaist", root),), build=tmp_path / "b", execution=ExecutionOptions(workers=1, progress=False)))
    rows = cat.read_catalog(tmp_path / "b").to_pylist()
    assert {r["modality"] for r in rows} == {"synthetic"}
    assert {r["license"] for r in rows} == {SYNTH_LICENSE} != {builtin_manifests()["kaist"].license}
    recorded = cat.read_sources(tmp_path / "b")["kaist"]
    assert recorded["citation"] == SYNTH_CITATION and recorded["modality"] == "synthetic"


def test_a_16_bit_jpeg_layout_fails_in_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import main

    args = ["synth", "--layout", "flir_adas_v1", "--out", str(tmp_path / "f"), "--bit-depth", "16"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "16-bit TIFF copies anyway" in result.output
    help_text = CliRunner().invoke(main, ["synth", "--help"]).output
    assert "--help of `inf590k synth`" not in help_text


def warm_share(image: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> float:
    """Share of boxes whose pixels are warmer on average than the frame's median."""
    grey = image if image.ndim == 2 else image[..., 0]
    median = float(np.median(grey))
    warm = [grey[y0:y1, x0:x1].mean() > median for x0, y0, x1, y1 in boxes]
    return sum(warm) / len(warm)


def test_m3fd_voc_boxes_name_m3fd_classes_and_sit_on_warm_targets(synthesized) -> None:
    import xml.etree.ElementTree as ET

    summary = synthesized["m3fd"]
    root = summary.out
    labelled = [f.relpath for f in summary.files if f.kind == KIND_LABEL]
    frames = sorted((root / "M3FD_Detection" / "Ir").glob("*.png"))
    assert len(labelled) == len(frames) > 0  # every detection frame has its Annotation/ XML
    boxes, names = [], Counter()
    for frame in frames:
        tree = ET.parse(root / "M3FD_Detection" / "Annotation" / f"{frame.stem}.xml").getroot()
        image = read(frame)
        height, width = image.shape[:2]
        assert (int(tree.findtext("size/width")), int(tree.findtext("size/height"))) == (width, height)
        frame_boxes = []
        for obj in tree.iter("object"):
            names[obj.findtext("name")] += 1
            x0, y0, x1, y1 = (int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            frame_boxes.append((x0, y0, x1, y1))
        boxes.append(warm_share(image, frame_boxes) if frame_boxes else 1.0)
    assert set(names) <= {"People", "Car", "Bus", "Motorcycle", "Lamp", "Truck"}
    assert names["People"] > 0 and names["Car"] > 0
    assert np.mean(boxes) > 0.9


def test_flir_v2_coco_json_holds_the_rendered_boxes(synthesized) -> None:
    import json

    root = synthesized["flir_adas_v2"].out
    index = json.loads((root / "images_thermal_train" / "coco.json").read_text())
    categories = {c["id"]: c["name"] for c in index["categories"]}
    assert categories[1] == "person" and categories[3] == "car"
    images = {i["id"]: i for i in index["images"]}
    ids = [a["id"] for a in index["annotations"]]
    assert min(ids) == 1 and len(set(ids)) == len(ids)  # pycocotools mis-scores an id of 0
    by_image: dict[int, list] = {}
    for ann in index["annotations"]:
        assert ann["category_id"] in (1, 3) and ann["image_id"] in images
        x, y, w, h = ann["bbox"]
        image = images[ann["image_id"]]
        assert w > 0 and h > 0 and x + w <= image["width"] and y + h <= image["height"]
        by_image.setdefault(ann["image_id"], []).append((x, y, x + w, y + h))
    shares = []
    for image_id, boxes in by_image.items():
        pixels = read(root / "images_thermal_train" / images[image_id]["file_name"])
        assert pixels.shape[:2] == (images[image_id]["height"], images[image_id]["width"])
        shares.append(warm_share(pixels, boxes))
    assert len(shares) > 0 and np.mean(shares) > 0.9
    rgb = json.loads((root / "images_rgb_train" / "coco.json").read_text())
    assert rgb["annotations"] == index["annotations"]  # the visible half shows the same scene
