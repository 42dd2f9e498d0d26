"""The probe end to end: synthetic small targets, the real SIRST sample, MSRS classes,
pretrained vs. scratch, frozen encoders and bad options."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from inf590k.synth import SynthConfig, synthesize
from pretrain.models import create_model, export_encoder
from pretrain.probe import (
    ProbeComparison,
    ProbeConfig,
    ProbeError,
    ProbeSummary,
    probe,
    run_probe,
    run_probe_pair,
)
from pretrain.probe.datasets import load_split, read_layout
from pretrain.probe.head import (
    ProbeModelError,
    SegmentationProbe,
    build_backbone,
    encoder_spec,
    read_export,
    scratch_like,
)
from pretrain.probe.run import train_probe

TINY = dict(arch="dugi_mae_tiny", head_dim=16, batch_size=2, img_size=64)


pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def small_targets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("irstd1k")
    synthesize(SynthConfig(layout="irstd1k", out=root, count=48, width=128, height=128))
    return root


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("export")
    export_encoder(create_model("dugi_mae_tiny"), folder)
    return folder


@pytest.mark.slow
def test_tiny_encoder_reaches_iou_half_on_synthetic_small_targets(small_targets: Path,
                                                                  tmp_path: Path) -> None:
    config = ProbeConfig(encoder="scratch", data=small_targets, layout="irstd1k", out=tmp_path,
                         steps=200, arch="dugi_mae_tiny", img_size=128, batch_size=4,
                         head_dim=32, lr=3e-3)
    summary = run_probe(config)
    assert summary.metrics["iou"] >= 0.5, str(summary)
    assert summary.metrics["pd"] >= 0.8, str(summary)
    assert summary.metrics["fa"] < 1e-3, str(summary)


def check_outputs(summary: ProbeSummary, binary: bool) -> dict:
    record = json.loads((summary.out / "metrics.json").read_text())
    keys = ("iou", "niou", "pd", "fa") if binary else ("miou", "macc")
    for key in keys:
        assert 0.0 <= record["metrics"][key] <= 1.0
    assert record["summary"] == str(summary) and "\n" not in str(summary)
    assert len(record["loss"]["values"]) >= 1 and record["data"]["test"] == summary.test_images
    with Image.open(summary.out / "predictions.png") as png:
        assert png.size[0] > 300 and png.size[1] > 150
    return record


def test_real_sirst_sample_end_to_end(ir_samples: Path, tmp_path: Path) -> None:
    config = ProbeConfig(encoder="scratch", data=ir_samples / "sirst", layout="sirst",
                         out=tmp_path, steps=3, **dict(TINY, img_size=128))
    summary = run_probe(config)
    assert summary.train_images + summary.test_images == 12
    record = check_outputs(summary, binary=True)
    assert record["data"]["without_mask"] == 88
    text = str(summary)
    assert text.startswith("probe sirst scratch dugi_mae_tiny: IoU ") and "Fa " in text
    targets = summary.metrics["targets"]
    assert f"{summary.test_images} test images, {targets} test targets" in text
    assert "88 images without a mask left out" in text


class PredictsNothing(torch.nn.Module):
    """A probe whose every pixel is background, with any confidence."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.full_like(images[:, :1], -30.0)  # [N, 1, S, S] logits


def test_a_model_predicting_nothing_scores_zero_at_the_masks_resolution(ir_samples: Path) -> None:
    """Small targets must survive evaluation: no mask is resized, so none vanishes."""
    from skimage.measure import label

    from pretrain.probe.run import evaluate, predict

    samples = read_layout("sirst", ir_samples / "sirst")
    data = load_split(samples.train + samples.test, 128)  # every image holds a target
    truths = data.full_masks
    assert all(t.any() for t in truths)
    resized_away = [n for n, m in zip(data.names, data.masks, strict=True) if not m.any()]
    assert "Misc_35" in resized_away  # 5 px at 256 x 256; nearest-neighbour to 128 loses it
    predictions = predict(PredictsNothing(), data.images, 4, 0.5, torch.device("cpu"),
                          sizes=[t.shape for t in truths])
    assert [p.shape for p in predictions] == [t.shape for t in truths]
    metrics = evaluate(predictions, truths, num_classes=2, distance=3.0)
    assert metrics["iou"] == 0.0 and metrics["niou"] == 0.0 and metrics["pd"] == 0.0
    assert metrics["targets"] == sum(int(label(t, connectivity=2).max()) for t in truths)


def test_msrs_trains_a_class_map(tmp_path: Path) -> None:
    synthesize(SynthConfig(layout="msrs", out=tmp_path / "msrs", count=8, width=64, height=64))
    summary = run_probe(ProbeConfig(encoder="scratch", data=tmp_path / "msrs", layout="msrs",
                                    out=tmp_path / "run", steps=2, **TINY))
    check_outputs(summary, binary=False)
    assert "mIoU" in str(summary) and len(summary.metrics["class_iou"]) == 9


def test_export_loads_its_weights_and_scratch_does_not(tiny_export: Path) -> None:
    spec = read_export(tiny_export)
    assert spec.architecture == "dugi_mae_tiny" and spec.label == "pretrained"
    exported = load_file(tiny_export / "model.safetensors")
    loaded = build_backbone(spec).state_dict()
    scratch = build_backbone(scratch_like(spec)).state_dict()
    for name, tensor in exported.items():  # timm's FeatureGetterNet keeps the model as .model
        torch.testing.assert_close(loaded[f"encoder.model.{name}"], tensor)
    name = "patch_embed1.proj.weight"
    assert f"encoder.model.{name}" in loaded and name in exported
    assert not torch.equal(scratch[f"encoder.model.{name}"], exported[name])
    assert scratch_like(spec).label == "scratch" and scratch_like(spec).model_args == spec.model_args


def test_pretrained_vs_scratch_prints_both_rows(small_targets: Path, tiny_export: Path,
                                                tmp_path: Path) -> None:
    config = ProbeConfig(encoder=str(tiny_export), data=small_targets, layout="irstd1k",
                         out=tmp_path, steps=2, **TINY)
    comparison = probe(config)
    assert isinstance(comparison, ProbeComparison)
    assert [row.label for row in comparison.rows] == ["pretrained", "scratch"]
    lines = str(comparison).splitlines()
    assert len(lines) == 4 and lines[1].split()[:5] == ["encoder", "IoU", "nIoU", "Pd", "Fa(1e-6)"]
    assert lines[2].startswith("pretrained") and lines[3].startswith("scratch")
    assert all(len(line.split()) == 6 for line in lines[2:])
    stored = json.loads((tmp_path / "comparison.json").read_text())
    assert set(stored) == {"table", "pretrained", "scratch"}
    for row in comparison.rows:
        check_outputs(row, binary=True)
    # without the baseline an export trains once
    single = probe(replace(config, baseline=False, out=tmp_path / "single"))
    assert isinstance(single, ProbeSummary) and single.label == "pretrained"


def test_freeze_trains_the_head_only(small_targets: Path, tiny_export: Path) -> None:
    config = ProbeConfig(encoder=str(tiny_export), data=small_targets, layout="irstd1k",
                         out=Path("unused"), steps=2, freeze=True, **TINY)
    model = SegmentationProbe(build_backbone(read_export(tiny_export)), 1, head_dim=16)
    model.freeze_backbone()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = load_split(read_layout("irstd1k", small_targets).train[:4], 64)
    train_probe(model, data, config, torch.device("cpu"))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(not k.startswith("backbone.") for k in changed)
    assert not model.backbone.encoder.training and model.head.training


@pytest.mark.parametrize(
    ("options", "message"),
    [({"steps": 0}, "steps"), ({"img_size": 100}, "multiple of 32"), ({"batch_size": 1}, "batch"),
     ({"threshold": 1.0}, "threshold"), ({"lr": 0.0}, "lr"), ({"layout": "no_such"}, "unknown layout"),
     ({"freeze": True}, "--freeze with --encoder scratch")],
)
def test_bad_options_say_what_to_change(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProbeConfig(**{"encoder": "scratch", "data": tmp_path, "layout": "sirst", "out": tmp_path,
                       **options})


def test_bad_encoders_say_what_to_pass(tmp_path: Path, small_targets: Path) -> None:
    with pytest.raises(ProbeModelError, match="inf590k export"):
        encoder_spec(str(tmp_path), "dugi_mae_tiny")
    with pytest.raises(ProbeModelError, match="unknown architecture"):
        encoder_spec("scratch", "no_such_model")
    config = ProbeConfig(encoder="scratch", data=small_targets, layout="irstd1k", out=tmp_path)
    with pytest.raises(ProbeError, match="EXPORT_DIR"):
        run_probe_pair(config)


def test_plain_vit_export_probes_through_the_simple_feature_pyramid(tmp_path: Path) -> None:
    export_encoder(create_model("mae_vit_tiny"), tmp_path)
    spec = read_export(tmp_path)
    backbone = build_backbone(spec)
    assert backbone.feature_info.reduction() == [4, 8, 16, 32]  # not two maps at stride 16
    assert backbone.feature_info.channels() == [16, 32, 64, 64]
    maps = backbone(torch.randn(2, 1, 64, 96))
    assert [tuple(m.shape[-2:]) for m in maps] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    exported = load_file(tmp_path / "model.safetensors")
    torch.testing.assert_close(backbone.state_dict()["encoder.model.patch_embed.proj.weight"],
                               exported["patch_embed.proj.weight"])
    model = SegmentationProbe(backbone, 1, head_dim=16)
    assert model(torch.randn(2, 1, 64, 96)).shape == (2, 1, 64, 96)
    # frozen: the encoder stops, the pyramid (new layers) trains with the head
    model.freeze_backbone()
    model.train()
    assert not backbone.encoder.training and backbone.pyramid.training
    trainable = {n.split(".")[0] for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == {"pyramid"}


def test_head_without_detail_branch_decides_from_encoder_maps(small_targets: Path,
                                                              tmp_path: Path) -> None:
    backbone = build_backbone(encoder_spec("scratch", "dugi_mae_tiny"))
    model = SegmentationProbe(backbone, 1, head_dim=16, detail=False)
    assert model.detail is None
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 1, 64, 64)
    summary = run_probe(ProbeConfig(encoder="scratch", data=small_targets, layout="irstd1k",
                                    out=tmp_path, steps=2, detail=False, **TINY))
    record = check_outputs(summary, binary=True)
    assert record["config"]["detail"] is False


def test_segmentation_split_is_written_and_reused(small_targets: Path, tmp_path: Path) -> None:
    from pretrain.probe.splits import Split, read_split, write_split

    first = run_probe(ProbeConfig(encoder="scratch", data=small_targets, layout="irstd1k",
                                  out=tmp_path / "a", steps=1, **TINY))
    written = read_split(tmp_path / "a" / "split.json", "irstd1k")
    record = json.loads((first.out / "metrics.json").read_text())
    assert list(written.test) == record["data"]["test_names"]
    assert record["protocol"] == dict(task="small-target", img_size=64, steps=1, freeze=False,
                                      test_images=first.test_images)
    chosen = Split(written.train[:10], written.test[:3] + ("not_there",), "hand-made")
    write_split(tmp_path / "mine.json", "irstd1k", chosen)
    again = run_probe(ProbeConfig(encoder="scratch", data=small_targets, layout="irstd1k",
                                  out=tmp_path / "b", steps=1, split=tmp_path / "mine.json",
                                  **TINY))
    assert (again.train_images, again.test_images) == (10, 3)
    with pytest.raises(ValueError, match="split of the irstd1k layout, not msrs"):
        run_probe(ProbeConfig(encoder="scratch", data=small_targets, layout="msrs",
                              out=tmp_path / "c", steps=1, split=tmp_path / "mine.json", **TINY))
