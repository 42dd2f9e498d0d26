"""Encoder export: safetensors + config.json that timm loads (features_only and plain ViT)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import pretrain  # noqa: F401  (registers the timm models)
from pretrain.models import create_model, export_encoder
from pretrain.models.masking import mask_from_visible

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def all_visible(batch: int, num_patches: int):
    """A mask that hides nothing: the masked path then equals the plain forward pass."""
    return mask_from_visible(torch.arange(num_patches).expand(batch, -1), num_patches)


def test_hierarchical_export_loads_as_timm_feature_backbone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("dugi_mae_tiny").eval()
    weights = export_encoder(model, tmp_path / "export")
    assert weights.name == "model.safetensors" and weights.is_file()
    config = json.loads((weights.parent / "config.json").read_text())
    assert config["architecture"] == "dugi_mae_tiny"
    assert config["pretraining_config"]["masking"] == "entropy"
    assert set(load_file(weights)) == set(model.encoder.state_dict())
    assert not any(key.startswith("ddg") for key in load_file(weights))

    backbone = timm.create_model(
        "dugi_mae_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)),
        features_only=True,
    ).eval()
    assert backbone.feature_info.reduction() == [4, 8, 16, 32]
    imgs = torch.randn(2, 1, 64, 64)
    maps = backbone(imgs)
    assert [tuple(m.shape) for m in maps] == [(2, 32, 16, 16), (2, 48, 8, 8), (2, 64, 4, 4),
                                             (2, 64, 2, 2)]
    with torch.no_grad():
        tokens = model.encoder(imgs, all_visible(2, 16))  # [N, L, C3]
    expected = tokens.transpose(1, 2).reshape(2, 64, 4, 4)
    torch.testing.assert_close(maps[2], expected)
    # Other input sizes work too (the FPN sees detection-sized images).
    assert backbone(torch.randn(1, 1, 96, 128))[3].shape == (1, 64, 3, 4)


@pytest.mark.slow
def test_dugi_mae_base_export_gives_fpn_maps(tmp_path: Path) -> None:
    weights = export_encoder(create_model("dugi_mae_base"), tmp_path)
    backbone = timm.create_model(
        "dugi_mae_base", pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)),
        features_only=True,
    ).eval()
    with torch.no_grad():
        maps = backbone(torch.randn(1, 1, 224, 224))
    assert [tuple(m.shape[1:]) for m in maps] == [(256, 56, 56), (384, 28, 28), (768, 14, 14),
                                                 (768, 7, 7)]


def test_export_folder_loads_through_local_dir(tmp_path: Path) -> None:
    model = create_model("infmae_tiny").eval()
    export_encoder(model, tmp_path)
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    imgs = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_features(imgs), model.encoder.forward_features(imgs))


def test_vit_export_loads_into_timm_vision_transformer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("mae_vit_tiny").eval()
    weights = export_encoder(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    vit = timm.create_model(
        config["architecture"], pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)),
        **config["model_args"],
    ).eval()
    imgs = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        ours = model.encoder(imgs, all_visible(2, 16))  # [N, 1 + L, D], class token first
        theirs = vit.forward_features(imgs)
    torch.testing.assert_close(theirs, ours)


@pytest.mark.slow
def test_mae_vit_base_export_loads_into_vit_base_patch16_224(tmp_path: Path) -> None:
    model = create_model("mae_vit_base").eval()
    weights = export_encoder(model, tmp_path)
    vit = timm.create_model(
        "vit_base_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)),
        in_chans=1, num_classes=0,
    ).eval()
    imgs = torch.randn(1, 1, 224, 224)
    with torch.no_grad():
        ours = model.encoder(imgs, all_visible(1, 196))
        theirs = vit.forward_features(imgs)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def test_export_unwraps_wrappers_and_rejects_other_modules(tmp_path: Path) -> None:
    model = create_model("mae_vit_tiny")
    wrapper = torch.nn.Module()
    wrapper.module = model  # the DistributedDataParallel layout
    assert export_encoder(wrapper, tmp_path).is_file()
    with pytest.raises(TypeError, match="MaskedAutoencoder"):
        export_encoder(torch.nn.Linear(2, 2), tmp_path)


def test_export_never_overwrites_files_it_did_not_write(tmp_path):
    model = create_model("dugi_mae_tiny")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "README.md").write_text("my notes\n")
    with pytest.raises(ValueError, match="not an export"):
        export_encoder(model, folder)
    assert (folder / "README.md").read_text() == "my notes\n"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md"]

    export = tmp_path / "export"
    first = export_encoder(model, export).read_bytes()
    assert export_encoder(model, export).read_bytes() == first  # an earlier export: replaced alike
    (export / "notes.txt").write_text("mine\n")
    with pytest.raises(ValueError, match="notes.txt"):
        export_encoder(model, export)
