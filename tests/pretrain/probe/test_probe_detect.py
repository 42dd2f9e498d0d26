"""The detection probe: COCO scoring through pycocotools, training, splits, encoders and arms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from inf590k.synth import SynthConfig, synthesize
from pretrain.models import create_model, export_encoder
from pretrain.probe import ProbeComparison, ProbeConfig, probe, run_probe
from pretrain.probe.detect import (
    evaluate_detections,
    flip_horizontally,
    predict_detections,
    train_detector,
)
from pretrain.probe.detect_data import read_detection_layout
from pretrain.probe.detect_images import DetectionImages, sample_target
from pretrain.probe.detector import anchor_sizes, build_detector
from pretrain.probe.head import build_backbone, encoder_spec, read_export
from pretrain.probe.runtime import intra_op_threads, torch_threads
from pretrain.probe.splits import read_split

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TINY = dict(arch="dugi_mae_tiny", head_dim=16, batch_size=2, img_size=128, device="cpu")


@pytest.fixture(scope="module")
def m3fd(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("m3fd")
    synthesize(SynthConfig(layout="m3fd", out=root, count=24, width=160, height=128))
    return root


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("export")
    export_encoder(create_model("dugi_mae_tiny"), folder)
    return folder


class GroundTruthDetector(torch.nn.Module):
    """Answers each image, in order, with its own boxes at score 1 (or with nothing)."""

    def __init__(self, images: DetectionImages, empty: bool = False) -> None:
        super().__init__()
        self.targets = [sample_target(s, i) for i, s in enumerate(images.samples)]
        self.empty = empty

    def forward(self, batch: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        answers, self.targets = self.targets[: len(batch)], self.targets[len(batch) :]
        return [
            dict(
                boxes=t["boxes"][: 0 if self.empty else None],
                labels=t["labels"][: 0 if self.empty else None],
                scores=torch.ones(0 if self.empty else len(t["labels"])),
            )
            for t in answers
        ]


def test_ground_truth_scores_one_and_nothing_scores_zero_through_the_evaluator(m3fd: Path) -> None:
    data = read_detection_layout("m3fd", m3fd)
    test = DetectionImages(data.test)
    device = torch.device("cpu")
    perfect = predict_detections(GroundTruthDetector(test), test, 3, device)
    metrics = evaluate_detections(perfect, data.test, data.classes)
    assert metrics["map"] == pytest.approx(1.0) and metrics["ap50"] == pytest.approx(1.0)
    assert metrics["ap75"] == pytest.approx(1.0) and metrics["boxes"] == data.test_boxes > 0
    assert metrics["class_ap"]["People"] == pytest.approx(1.0)
    assert metrics["class_ap"]["Car"] == pytest.approx(1.0)
    assert metrics["class_ap"]["Truck"] is None  # no test box of that class
    nothing = predict_detections(GroundTruthDetector(test, empty=True), test, 3, device)
    zero = evaluate_detections(nothing, data.test, data.classes)
    assert zero["map"] == 0.0 and zero["ap50"] == 0.0 and zero["class_ap"]["People"] == 0.0
    # half the boxes, the rest missed: recall 0.5 caps AP well below 1
    halves = [
        dict(o, boxes=o["boxes"][::2], labels=o["labels"][::2], scores=o["scores"][::2])
        for o in perfect
    ]
    assert 0.2 < evaluate_detections(halves, data.test, data.classes)["map"] < 0.8


def test_training_steps_reduce_the_loss(m3fd: Path) -> None:
    data = read_detection_layout("m3fd", m3fd)
    config = ProbeConfig(
        encoder="scratch", data=m3fd, layout="m3fd", out=m3fd, steps=24, lr=2e-3, **TINY
    )
    model = build_detector(
        build_backbone(encoder_spec("scratch", "dugi_mae_tiny")), len(data.classes), 128, 16
    )
    torch.manual_seed(0)
    losses = train_detector(model, DetectionImages(data.train[:6]), config, torch.device("cpu"))
    assert len(losses) == 24 and all(v > 0 for v in losses)
    assert sum(losses[-6:]) / 6 < 0.8 * sum(losses[:6]) / 6, losses


def check_run(summary, steps: int) -> dict:
    record = json.loads((summary.out / "metrics.json").read_text())
    assert record["summary"] == str(summary) and "\n" not in str(summary)
    for key in ("map", "ap50", "ap75"):
        assert 0.0 <= record["metrics"][key] <= 1.0
    assert set(record["metrics"]["class_ap"]) == set(record["data"]["classes"])
    assert record["protocol"]["img_size"] == 128
    assert (
        record["protocol"]["test_images"]
        == summary.test_images
        == len(record["data"]["test_names"])
    )
    assert len(record["loss"]["values"]) >= 1 and summary.steps == steps
    with Image.open(summary.out / "predictions.png") as png:
        assert png.size[0] > 500 and png.size[1] > 300
    return record


def test_probe_writes_a_split_that_a_later_run_reuses(m3fd: Path, tmp_path: Path) -> None:
    first = run_probe(
        ProbeConfig(
            encoder="scratch",
            data=m3fd,
            layout="m3fd",
            out=tmp_path / "a",
            steps=2,
            task="detect",
            **TINY,
        )
    )
    record = check_run(first, 2)
    assert first.layout == "m3fd" and str(first).startswith(
        "probe m3fd scratch dugi_mae_tiny: mAP "
    )
    assert "test boxes; left out: " in str(first)
    split = read_split(tmp_path / "a" / "split.json", "m3fd")
    assert list(split.test) == record["data"]["test_names"]
    assert (
        split.source == "split.json: seeded (seed 0)"
        and record["data"]["split"] == "seeded (seed 0)"
    )
    # another seed draws another split, unless the first one is passed back
    other = run_probe(
        ProbeConfig(
            encoder="scratch", data=m3fd, layout="m3fd", seed=5, out=tmp_path / "b", steps=1, **TINY
        )
    )
    assert json.loads((other.out / "metrics.json").read_text())["data"]["test_names"] != list(
        split.test
    )
    again = run_probe(
        ProbeConfig(
            encoder="scratch",
            data=m3fd,
            layout="m3fd",
            seed=5,
            split=tmp_path / "a" / "split.json",
            out=tmp_path / "c",
            steps=1,
            **TINY,
        )
    )
    reused = json.loads((again.out / "metrics.json").read_text())["data"]
    assert reused["test_names"] == list(split.test) and reused["split"] == split.source


def test_pretrained_vs_scratch_detection_rows(
    m3fd: Path, tiny_export: Path, tmp_path: Path
) -> None:
    comparison = probe(
        ProbeConfig(
            encoder=str(tiny_export), data=m3fd, layout="m3fd", out=tmp_path, steps=1, **TINY
        )
    )
    assert isinstance(comparison, ProbeComparison)
    lines = str(comparison).splitlines()
    assert lines[1].split() == ["encoder", "mAP", "AP50", "AP75", "APs", "APm", "APl", "seconds"]
    assert lines[2].startswith("pretrained") and lines[3].startswith("scratch")
    for row in comparison.rows:
        check_run(row, 1)


def test_frozen_arm_trains_the_neck_and_heads_only(m3fd: Path, tiny_export: Path) -> None:
    data = read_detection_layout("m3fd", m3fd)
    config = ProbeConfig(
        encoder=str(tiny_export), data=m3fd, layout="m3fd", out=m3fd, steps=2, freeze=True, **TINY
    )
    model = build_detector(build_backbone(read_export(tiny_export)), len(data.classes), 128, 16)
    model.backbone.body.freeze_encoder()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_detector(model, DetectionImages(data.train[:4]), config, torch.device("cpu"))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert any(k.startswith("backbone.fpn.") for k in changed)
    assert any(k.startswith("roi_heads.") for k in changed) and any(
        k.startswith("rpn.") for k in changed
    )
    assert not any(k.startswith("backbone.body.encoder.") for k in changed)
    assert not model.backbone.body.encoder.training


def test_plain_vit_detects_through_the_simple_feature_pyramid(m3fd: Path, tmp_path: Path) -> None:
    export_encoder(create_model("mae_vit_tiny"), tmp_path / "vit")
    summary = run_probe(
        ProbeConfig(
            encoder=str(tmp_path / "vit"),
            data=m3fd,
            layout="m3fd",
            out=tmp_path / "run",
            steps=1,
            baseline=False,
            **TINY,
        )
    )
    assert summary.architecture == "vit_base_patch16_224" and summary.detection
    model = build_detector(build_backbone(read_export(tmp_path / "vit")), 6, 128, 16)
    features = model.backbone(torch.randn(1, 1, 128, 160))
    assert [tuple(f.shape[-2:]) for f in features.values()] == [
        (32, 40),
        (16, 20),
        (8, 10),
        (4, 5),
        (2, 3),
    ]


def test_flir_layout_trains_on_its_train_folder_and_scores_its_val_folder(tmp_path: Path) -> None:
    synthesize(
        SynthConfig(layout="flir_adas_v2", out=tmp_path / "flir", count=30, width=160, height=128)
    )
    summary = run_probe(
        ProbeConfig(
            encoder="scratch",
            data=tmp_path / "flir",
            layout="flir_adas_v2",
            out=tmp_path / "run",
            steps=1,
            **TINY,
        )
    )
    record = check_run(summary, 1)
    assert record["data"]["classes"] == ["person", "car"]  # FLIR's categories with boxes
    assert all(n.startswith("images_thermal_val/") for n in record["data"]["test_names"])
    assert (
        record["data"]["split"] == "images_thermal_train/coco.json + images_thermal_val/coco.json"
    )


def polygon_coco(m3fd: Path, out: Path) -> Path:
    """The M3FD frames as a COCO set with rectangle polygons: data with masks."""
    data = read_detection_layout("m3fd", m3fd)
    for split, samples in (("train", data.train), ("val", data.test)):
        images, annotations = [], []
        for index, sample in enumerate(samples):
            images.append(
                dict(
                    id=index, file_name=sample.image.name, width=sample.width, height=sample.height
                )
            )
            for (x0, y0, x1, y1), label in zip(sample.boxes, sample.labels, strict=True):
                annotations.append(
                    dict(
                        id=len(annotations) + 1,
                        image_id=index,
                        category_id=label,
                        bbox=[x0, y0, x1 - x0, y1 - y0],
                        area=(x1 - x0) * (y1 - y0),
                        iscrowd=0,
                        segmentation=[[x0, y0, x1, y0, x1, y1, x0, y1]],
                    )
                )
        categories = [dict(id=i, name=n) for i, n in enumerate(data.classes, start=1)]
        (out / "annotations").mkdir(parents=True, exist_ok=True)
        (out / "annotations" / f"instances_{split}.json").write_text(
            json.dumps(dict(images=images, annotations=annotations, categories=categories))
        )
        (out / split).mkdir(exist_ok=True)
        for sample in samples:
            (out / split / sample.image.name).write_bytes(sample.image.read_bytes())
    return out


def test_coco_layout_with_masks_trains_mask_rcnn(m3fd: Path, tmp_path: Path) -> None:
    root = polygon_coco(m3fd, tmp_path / "coco")
    data = read_detection_layout("coco", root)
    assert data.has_masks and data.split_source.endswith("instances_val.json")
    assert data.classes == ("People", "Car")  # categories without a box are not classes
    summary = run_probe(
        ProbeConfig(
            encoder="scratch", data=root, layout="coco", out=tmp_path / "run", steps=1, **TINY
        )
    )
    assert {"mask_map", "mask_ap50"} <= set(summary.metrics) and "mask mAP" in str(summary)


def test_flips_mirror_boxes_and_anchors_scale_with_the_input() -> None:
    image = torch.zeros(1, 10, 20)
    image[:, 2:4, 1:5] = 1
    target = dict(boxes=torch.tensor([[1.0, 2.0, 5.0, 4.0]]), labels=torch.tensor([1]))
    flipped, moved = flip_horizontally(image, target)
    assert moved["boxes"].tolist() == [[15.0, 2.0, 19.0, 4.0]]
    assert flipped[:, 2:4, 15:19].all() and flipped.sum() == image.sum()
    assert anchor_sizes(1024) == ((32,), (64,), (128,), (256,), (512,))  # torchvision's
    assert anchor_sizes(256) == ((8,), (16,), (32,), (64,), (128,))


def test_threads_leave_the_workers_their_cores(m3fd: Path, tmp_path: Path, monkeypatch) -> None:
    from pretrain import threads

    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    before = torch.get_num_threads()
    torch.set_num_threads(8)
    try:
        assert intra_op_threads(0) == 4 and intra_op_threads(3) == 1 and intra_op_threads(9) == 1
        with torch_threads(2) as threads:
            assert threads == torch.get_num_threads() == 2
        assert torch.get_num_threads() == 8
    finally:
        torch.set_num_threads(before)
    # a worker process decoding the images: same run, same result as without one
    runs = [
        run_probe(
            ProbeConfig(
                encoder="scratch",
                data=m3fd,
                layout="m3fd",
                workers=w,
                out=tmp_path / str(w),
                steps=2,
                **TINY,
            )
        )
        for w in (0, 1)
    ]
    assert runs[0].metrics["map"] == runs[1].metrics["map"]
