"""Attention heads of released checkpoints: read from the file, never guessed; UNIP's encoders."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

from pretrain.models import IR_MEAN, IR_STD, load_reference_checkpoint
from pretrain.models.reference import encoder_folder, encoder_heads, infer_config
from pretrain.models.released import ReferenceCheckpointError, read_reference, reference_kind
from tests.conftest import shared_dir

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def small() -> Path:
    root = shared_dir() / "reference" / "checkpoints" / "infmae_small"
    if not root.is_dir():
        pytest.skip(f"reference checkpoint facts not found at {root}")
    return root


def latents(model, root: Path) -> torch.Tensor:
    pixels = torch.from_numpy(np.load(root / "input_grey_uint8.npy"))  # [2, 1, 224, 224]
    imgs = ((pixels.float() / 255 - IR_MEAN) / IR_STD).expand(-1, 3, -1, -1)
    with torch.no_grad():
        return model.eval().forward_encoder(imgs, torch.arange(196).expand(2, -1))


def saved(tmp_path: Path, state: dict, **entries) -> Path:
    path = tmp_path / "released.pth"
    torch.save({"model": state, "epoch": 3, **entries}, path)
    return path


def test_a_width_that_is_not_released_needs_its_heads_said(small: Path, tmp_path: Path) -> None:
    state = load_file(small / "infmae_small_random.safetensors")  # 96 wide, 4 heads of 24
    for source in (state, saved(tmp_path, state)):
        with pytest.raises(ReferenceCheckpointError, match="96 wide.*pass num_heads") as caught:
            load_reference_checkpoint(source, "infmae")
        assert "\n" not in str(caught.value)
    # a model name whose size has another width says nothing about this one
    named = saved(tmp_path, state, args=argparse.Namespace(model="infmae_vit_base_patch16"))
    with pytest.raises(ReferenceCheckpointError, match="pass num_heads"):
        load_reference_checkpoint(named, "infmae")


@pytest.mark.parametrize("entry", ["args", "config"])
def test_heads_the_file_states_give_the_reference_latents(
    small: Path, tmp_path: Path, entry: str
) -> None:
    state = load_file(small / "infmae_small_random.safetensors")
    said = dict(num_heads=4, decoder_num_heads=4, lr=1.5e-4, output_dir=Path("out"))
    value = argparse.Namespace(**said) if entry == "args" else said
    model = load_reference_checkpoint(saved(tmp_path, state, **{entry: value}), "infmae")
    assert (model.config.num_heads, model.config.decoder_heads) == (4, 4)
    expected = torch.from_numpy(np.load(small / "latent_all_visible.npy"))
    assert (latents(model, small) - expected).abs().max() <= 1e-4
    # the heads matter: another count, explicitly asked for, gives other latents
    wrong = load_reference_checkpoint(state, "infmae", num_heads=8, decoder_heads=4)
    assert (latents(wrong, small) - expected).abs().max() > 1e-2


def test_stated_heads_and_a_contradicting_num_heads_are_refused(
    small: Path, tmp_path: Path
) -> None:
    state = load_file(small / "infmae_small_random.safetensors")
    path = saved(tmp_path, state, config={"num_heads": 4, "decoder_num_heads": 4})
    with pytest.raises(ReferenceCheckpointError, match="num_heads=8, but the checkpoint says 4"):
        load_reference_checkpoint(path, "infmae", num_heads=8)
    with pytest.raises(ReferenceCheckpointError, match="does not divide"):
        encoder_heads(96, 5, {})


def test_released_widths_and_model_names_give_their_heads() -> None:
    assert [encoder_heads(w, None, {}) for w in (192, 384, 768, 1024, 1280)] == [3, 6, 12, 16, 16]
    assert encoder_heads(384, None, {"model": "unip_vit_small_patch16"}) == 6
    assert encoder_heads(1024, None, {"model": "mae_vit_large_patch16"}) == 16
    with pytest.raises(ReferenceCheckpointError, match="640 wide"):
        encoder_heads(640, None, {"model": "vit_base"})


def test_decoder_heads_of_an_unreleased_width_are_asked_for(small: Path) -> None:
    state = load_file(small / "infmae_small_random.safetensors")  # decoder 64 wide
    with pytest.raises(ReferenceCheckpointError, match="decoder is 64 wide.*decoder_heads"):
        load_reference_checkpoint(state, "infmae", num_heads=4)


def unip_tiny_state(depth: int = 2) -> dict[str, torch.Tensor]:
    """A UNIP-T-shaped encoder (192 wide, 3 heads, MAE's key names) with random weights,
    `depth` blocks instead of 12 to stay small."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=depth, num_classes=0)
    return {k: v for k, v in vit.state_dict().items() if not k.startswith("head")}


def test_unip_encoder_loads_as_its_own_kind_and_keeps_its_features(tmp_path: Path) -> None:
    state = unip_tiny_state()
    args = argparse.Namespace(model="unip_vit_tiny_patch16", last_heads=16, rgb_gray=True)
    path = saved(tmp_path, state, args=args)
    checkpoint = read_reference(path)
    assert reference_kind(checkpoint.state) == "unip" and checkpoint.metadata["last_heads"] == 16
    model = load_reference_checkpoint(path, None)
    assert model.config.encoder == "vit" and model.config.num_heads == 3
    assert model.config.in_chans == 3 and model.config.depths == (2,)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, num_classes=0)
    vit.load_state_dict(state, strict=False)
    imgs = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = model.eval().forward_encoder(imgs, torch.arange(196).expand(2, -1))
        torch.testing.assert_close(ours, vit.eval().forward_features(imgs)[:, 1:])  # no cls
    grey = load_reference_checkpoint(path, "unip", in_chans=1).eval()
    with torch.no_grad():  # 1 channel: the first conv summed over its inputs, exact on grey
        torch.testing.assert_close(
            grey.forward_encoder(imgs[:, :1], torch.arange(196).expand(2, -1)),
            vit.forward_features(imgs[:, :1].expand(-1, 3, -1, -1))[:, 1:],
            atol=1e-4,
            rtol=1e-4,
        )


def test_unip_export_is_a_timm_vit_and_other_kinds_point_to_it(tmp_path: Path) -> None:
    path = saved(tmp_path, unip_tiny_state())
    folder = Path(encoder_folder(path, tmp_path / "work"))
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "vit_base_patch16_224"
    assert config["model_args"]["num_heads"] == 3 and config["model_args"]["in_chans"] == 1
    assert "unip" in (folder / "README.md").read_text()
    with pytest.raises(ReferenceCheckpointError, match="encoder only.*kind 'unip'"):
        infer_config(unip_tiny_state(), "mae")
    hierarchical_keys = {"patch_embed1.proj.weight": torch.zeros(8, 3, 4, 4)}
    with pytest.raises(ReferenceCheckpointError, match="not an InfMAE"):
        load_reference_checkpoint({"cls_token": torch.zeros(1)} | {"x": torch.zeros(1)}, "unip")
    with pytest.raises(ReferenceCheckpointError, match="convmae checkpoint, not unip"):
        infer_config(hierarchical_keys, "unip")


def test_an_unreleased_unip_width_needs_num_heads_through_the_probe_folder(tmp_path: Path) -> None:
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, depth=1, embed_dim=96, num_heads=4, num_classes=0
    )
    path = saved(tmp_path, {k: v for k, v in vit.state_dict().items() if "head" not in k})
    with pytest.raises(ReferenceCheckpointError, match=r"released\.pth: .*96 wide"):
        encoder_folder(path, tmp_path / "work")
    folder = Path(encoder_folder(path, tmp_path / "work", num_heads=4))
    assert json.loads((folder / "config.json").read_text())["model_args"]["num_heads"] == 4


def test_export_command_converts_a_unip_checkpoint_with_three_channels(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import main

    path = saved(tmp_path, unip_tiny_state())
    out = tmp_path / "export"
    result = CliRunner().invoke(main, ["export", str(path), "--out", str(out), "--in-chans", "3"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["model_args"]["in_chans"] == 3 and config["model_args"]["depth"] == 2
    vit = timm.create_model(
        config["architecture"],
        pretrained=True,
        **config["model_args"],
        pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")),
    )
    torch.testing.assert_close(
        vit.state_dict()["blocks.1.attn.qkv.weight"], unip_tiny_state()["blocks.1.attn.qkv.weight"]
    )
