"""Detection sets in their layouts, and bad input: skipped and counted, or one clear line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from inf590k.synth import SynthConfig, synthesize
from pretrain.probe.datasets import ProbeDataError
from pretrain.probe.detect_data import read_detection_layout
from pretrain.probe.detect_images import DetectionImages
from pretrain.probe.splits import Split, read_split, write_split


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sets")
    synthesize(SynthConfig(layout="m3fd", out=root / "m3fd", count=16, width=96, height=64))
    synthesize(SynthConfig(layout="flir_adas_v2", out=root / "flir", count=24, width=96, height=64))
    return root


@pytest.fixture
def m3fd(synthetic: Path, tmp_path: Path) -> Path:
    """A fresh copy each test may damage; returns the M3FD_Detection folder."""
    shutil.copytree(synthetic / "m3fd", tmp_path / "m3fd")
    return tmp_path / "m3fd" / "M3FD_Detection"


def voc(boxes: list[tuple[str, tuple]]) -> str:
    objects = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in boxes
    )
    return f"<annotation><size><width>96</width><height>64</height></size>{objects}</annotation>"


def test_m3fd_reads_from_any_folder_above_and_with_lower_case_folders(m3fd: Path) -> None:
    for data in (m3fd.parent, m3fd):
        found = read_detection_layout("m3fd", data)
        assert found.root == m3fd and len(found.train) + len(found.test) == 14  # 2 fusion frames
        assert found.classes[:2] == ("People", "Car") and found.skipped == {}
    (m3fd / "Ir").rename(m3fd / "ir")
    (m3fd / "Annotation").rename(m3fd / "annotation")
    assert len(read_detection_layout("m3fd", m3fd).test) > 0


def test_bad_boxes_and_files_are_skipped_and_counted(m3fd: Path) -> None:
    labels = m3fd / "Annotation"
    (labels / "00000.xml").write_text(
        voc(
            [
                ("People", (10, 10, 20, 30)),  # kept
                ("People", (200, 10, 220, 30)),  # outside the 96x64 image
                ("Car", (30, 30, 30, 40)),  # zero width
                ("Car", (50, 40, 40, 50)),  # xmax < xmin
                ("Dog", (1, 1, 5, 5)),  # not an M3FD class
                ("car", (80, 50, 120, 80)),  # case-insensitive class, clipped to the image
            ]
        )
    )
    (labels / "00001.xml").write_text("<annotation><object>")  # truncated XML
    (labels / "00002.xml").unlink()  # image without its annotation
    (m3fd / "Ir" / "00003.png").unlink()  # annotation without its image
    (labels / "00004.xml").write_text(voc([("People", ("a", 1, 2, 3))]))
    (m3fd / "Ir" / "00005.png").write_bytes(b"not a png")
    data = read_detection_layout("m3fd", m3fd)
    assert data.skipped == {
        "box outside the image": 1,
        "box of zero area": 2,
        "box of unknown class 'Dog'": 1,
        "unreadable annotation": 1,
        "image without annotation": 1,
        "annotation without image": 1,
        "box without coordinates": 1,
        "unreadable image": 1,
    }
    sample = next(s for s in data.train + data.test if s.name == "00000")
    assert sample.boxes == ((10.0, 10.0, 20.0, 30.0), (80.0, 50.0, 96.0, 64.0))
    assert sample.labels == (1, 2)
    assert "1 box outside the image" in data.skipped_text()


def test_header_and_pixels_that_disagree_fail_in_one_line(m3fd: Path) -> None:
    data = read_detection_layout("m3fd", m3fd)
    sample = data.train[0]
    cv2.imwrite(str(sample.image), np.zeros((10, 10), np.uint8))  # replaced after reading
    with pytest.raises(ProbeDataError, match="decodes to 10x10 but its header says 96x64"):
        DetectionImages([sample])[0]


def coco_file(path: Path, images: list, annotations: list, categories: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(images=images, annotations=annotations, categories=categories)))
    return path


def test_coco_ids_that_do_not_match_are_counted(synthetic: Path, tmp_path: Path) -> None:
    frames = sorted((synthetic / "flir" / "images_thermal_train" / "data").glob("*.jpg"))[:4]
    folder = tmp_path / "set"
    (folder / "images").mkdir(parents=True)
    for frame in frames:
        shutil.copy(frame, folder / "images" / frame.name)
    images = [
        dict(id=i, file_name=f"images/{f.name}", width=96, height=64) for i, f in enumerate(frames)
    ]
    images.append(dict(id=10, file_name="images/missing.jpg"))  # listed, no file
    images.append(dict(id=11, file_name="../../etc/passwd"))  # leaves the dataset
    images.append(dict(id=12, file_name=f"images/{frames[0].name}", width=640, height=512))
    box = dict(bbox=[5, 5, 10, 10], iscrowd=0)
    annotations = [
        dict(box, id=1, image_id=0, category_id=1),
        dict(box, id=2, image_id=1, category_id=3),
        dict(box, id=3, image_id=99, category_id=1),  # no such image
        dict(box, id=4, image_id=2, category_id=42),  # no such category
        dict(box, id=5, image_id=2, category_id=1, iscrowd=1),
        dict(id=6, image_id=3, category_id=1, bbox="wide"),
        dict(id=7, image_id=3, category_id=1, bbox=[90, 60, 0, 4]),
    ]
    categories = [dict(id=1, name="person"), dict(id=3, name="car"), dict(id=8, name="truck")]
    coco_file(folder / "labels.json", images, annotations, categories)
    data = read_detection_layout("coco", folder)
    assert data.skipped == {
        "annotation of an image id the JSON does not list": 1,
        "box of a category id the JSON does not list": 1,
        "crowd region (not a box)": 1,
        "box without coordinates": 1,
        "box of zero area": 1,
        "listed image without its file": 2,
        "image whose size differs from its JSON entry": 1,
    }
    assert data.classes == ("person", "car")  # truck has no box
    assert len(data.train) + len(data.test) == 4 and data.split_source == "seeded (seed 0)"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a readable COCO JSON"),
        ('{"images": "x", "annotations": []}', "not a COCO JSON"),
        ('{"images": [{"id": 1}, {"id": 1}], "annotations": []}', "image id 1 is given twice"),
        ('{"images": [], "categories": [{"id": 1}, {"id": 1}]}', "category id 1 is given twice"),
        ('{"images": [], "categories": [{"name": "x"}]}', "without an integer 'id'"),
    ],
)
def test_coco_files_that_are_no_dataset_fail_in_one_line(
    synthetic: Path, tmp_path: Path, content: str, message: str
) -> None:
    shutil.copytree(synthetic / "flir", tmp_path / "flir")
    (tmp_path / "flir" / "images_thermal_val" / "coco.json").write_text(content)
    with pytest.raises(ProbeDataError, match=message) as caught:
        read_detection_layout("flir_adas_v2", tmp_path / "flir")
    assert "\n" not in str(caught.value)


def test_missing_layouts_and_empty_sets_say_what_to_do(synthetic: Path, tmp_path: Path) -> None:
    with pytest.raises(ProbeDataError, match="no Ir/ folder beside an Annotation/"):
        read_detection_layout("m3fd", synthetic / "flir")
    with pytest.raises(ProbeDataError, match="images_thermal_train/coco.json"):
        read_detection_layout("flir_adas_v2", synthetic / "m3fd")
    with pytest.raises(ProbeDataError, match="no COCO JSON"):
        read_detection_layout("coco", synthetic / "m3fd")
    with pytest.raises(ProbeDataError, match="not a folder"):
        read_detection_layout("m3fd", tmp_path / "nothing")
    names = [s.name for s in read_detection_layout("m3fd", synthetic / "m3fd").train]
    gone = write_split(tmp_path / "split.json", "m3fd", Split(tuple(names), ("zz1", "zz2"), "x"))
    with pytest.raises(ProbeDataError, match="the test set is empty") as caught:
        read_detection_layout("m3fd", synthetic / "m3fd", split=read_split(gone, "m3fd"))
    assert "\n" not in str(caught.value)
    empty_val = tmp_path / "flir"
    shutil.copytree(synthetic / "flir", empty_val)
    coco_file(empty_val / "images_thermal_val" / "coco.json", [], [], [dict(id=1, name="person")])
    with pytest.raises(ProbeDataError, match="the test set is empty"):
        read_detection_layout("flir_adas_v2", empty_val)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "lacks 'train' and 'test'"),
        ("{oops", "not a JSON split file"),
        ('{"layout": "msrs", "train": [], "test": []}', "split of the msrs layout"),
        ('{"train": ["a"], "test": ["a"]}', "in both train and test"),
    ],
)
def test_bad_split_files_fail_in_one_line(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "split.json").write_text(content)
    with pytest.raises(ProbeDataError, match=message):
        read_split(tmp_path / "split.json", "m3fd")
    with pytest.raises(ProbeDataError, match="does not exist"):
        read_split(tmp_path / "other.json", "m3fd")


def error_lines(output: str) -> list[str]:
    """The output less the opening line (`probe on cpu: N torch threads, ...`), said first."""
    lines = output.strip().splitlines()
    return lines[1:] if lines and lines[0].startswith("probe on ") else lines


def test_cli_reports_bad_detection_input_in_one_line(m3fd: Path, tmp_path: Path) -> None:
    args = [
        "probe",
        "--task",
        "detect",
        "--layout",
        "m3fd",
        "--encoder",
        "scratch",
        "--arch",
        "dugi_mae_tiny",
        "--out",
        str(tmp_path / "run"),
        "--steps",
        "1",
        "--img-size",
        "64",
        "--batch-size",
        "2",
        "--head-dim",
        "16",
        "--device",
        "cpu",
    ]
    for data, extra, message in (
        (m3fd, ["--split", str(tmp_path / "none.json")], "does not exist"),
        (m3fd.parent.parent, ["--layout", "flir_adas_v2"], "images_thermal_train"),
        (m3fd, ["--layout", "sirst"], "--task detect does not fit --layout sirst"),
    ):
        result = CliRunner().invoke(main, [*args, "--data", str(data), *extra])
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output
        assert len(error_lines(result.output)) == 1, result.output
    # an image that breaks after the split was made: one line from inside a loader worker
    for image in (m3fd / "Ir").glob("*.png"):
        image.write_bytes(image.read_bytes()[:200])
    result = CliRunner().invoke(main, [*args, "--data", str(m3fd), "--workers", "1"])
    assert result.exit_code == 1 and "cannot decode" in result.output, result.output
    assert len(error_lines(result.output)) == 1, result.output


def test_coco_file_names_never_reach_outside_the_dataset(synthetic: Path, tmp_path: Path) -> None:
    frame = sorted((synthetic / "flir" / "images_thermal_train" / "data").glob("*.jpg"))[0]
    outside = tmp_path / "val"  # beside the dataset, where instances_val.json's images would be
    outside.mkdir()
    shutil.copy(frame, outside / "a.jpg")
    root = tmp_path / "set"
    root.mkdir()
    shutil.copy(frame, root / "b.jpg")
    images = [
        dict(id=1, file_name="a.jpg"),
        dict(id=2, file_name="b.jpg"),
        dict(id=3, file_name=str(outside / "a.jpg")),
    ]
    box = dict(bbox=[5, 5, 10, 10], iscrowd=0, category_id=1)
    annotations = [dict(box, id=1, image_id=1), dict(box, id=2, image_id=2)]
    coco_file(root / "instances_val.json", images, annotations, [dict(id=1, name="person")])
    coco_file(root / "instances_train.json", images, annotations, [dict(id=1, name="person")])
    coco_file(
        root / "instances_train.json",
        images[1:2] + [dict(id=4, file_name="b.jpg")],
        annotations[1:],
        [dict(id=1, name="person")],
    )
    with pytest.raises(ProbeDataError, match="the train set is empty"):
        read_detection_layout("coco", root)  # b.jpg is test data: it never trains
    shutil.copy(frame, root / "c.jpg")
    images[0] = dict(id=1, file_name="c.jpg")
    coco_file(root / "instances_train.json", images, annotations, [dict(id=1, name="person")])
    data = read_detection_layout("coco", root)
    assert [s.name for s in data.train] == ["c.jpg"] and [s.name for s in data.test] == ["b.jpg"]
    assert data.skipped == {
        "listed image without its file": 3,
        "image listed twice (its first entry kept)": 1,
        "image in both the train and the test set (kept in test)": 1,
    }
