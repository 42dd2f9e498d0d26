"""Released InfMAE / ConvMAE / MAE checkpoints: key mapping, shape-inferred config, golden outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pretrain.models import IR_MEAN, IR_STD, MaskedAutoencoder, load_reference_checkpoint
from pretrain.models.reference import (
    DROPPED_KEYS,
    convert_state,
    expected_keys,
    infer_config,
    map_reference_key,
)
from pretrain.models.released import ReferenceCheckpointError, reference_kind
from tests.conftest import shared_dir

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# The small model's heads (README.json): neither width (96, 64) is a released one.
SMALL_HEADS = dict(num_heads=4, decoder_heads=4)

KEY_FILES = {
    "infmae": "infmae_base_keys.json",
    "convmae": "convmae_base_keys.json",
    "mae": "mae_base_keys.json",
}


@pytest.fixture(scope="module")
def checkpoints() -> Path:
    root = shared_dir() / "reference" / "checkpoints"
    if not root.is_dir():
        pytest.skip(f"reference checkpoint facts not found at {root}")
    return root


def meta_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a key list: meta tensors of the recorded shapes."""
    shapes = json.loads(path.read_text())["state_dict_keys"]
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


@pytest.mark.parametrize("kind", list(KEY_FILES))
@pytest.mark.parametrize("in_chans", [3, 1])
def test_every_reference_key_maps_both_ways(checkpoints: Path, kind: str, in_chans: int) -> None:
    state = meta_state(checkpoints / KEY_FILES[kind])
    assert reference_kind(state) == kind
    config = infer_config(state, kind, in_chans=in_chans)
    with torch.device("meta"):
        model = MaskedAutoencoder(config)
    converted = convert_state(state, kind, config)
    # No reference key left over, none of ours unfilled, and one of theirs per one of ours.
    assert set(converted) == expected_keys(model)
    mapped = [map_reference_key(key, kind) for key in state]
    assert len(set(mapped) - {None}) == len(state) - len(DROPPED_KEYS.get(kind, ()))
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    assert {k: tuple(v.shape) for k, v in converted.items()} == {
        k: tuple(tensors[k].shape) for k in converted
    }


def test_base_configs_are_inferred_from_shapes(checkpoints: Path) -> None:
    infmae = infer_config(meta_state(checkpoints / KEY_FILES["infmae"]), "infmae")
    assert (infmae.embed_dims, infmae.depths, infmae.patch_sizes) == (
        (256, 384, 768),
        (2, 2, 11),
        (4, 2, 2),
    )
    assert (infmae.decoder_dim, infmae.decoder_depth, infmae.num_heads) == (512, 2, 12)
    assert (infmae.in_chans, infmae.image_hw, infmae.masking) == (3, (224, 224), "gray")
    convmae = infer_config(meta_state(checkpoints / KEY_FILES["convmae"]), "convmae")
    assert convmae.decoder_depth == 8 and convmae.masking == "random"
    mae = infer_config(meta_state(checkpoints / KEY_FILES["mae"]), "mae", in_chans=1)
    assert (mae.encoder, mae.embed_dims, mae.depths, mae.decoder_depth) == ("vit", (768,), (12,), 8)
    with torch.device("meta"):
        encoder = MaskedAutoencoder(infmae).encoder
    assert sum(p.numel() for p in encoder.parameters()) == 88_782_208  # InfMAE-Base, 3 channels


def golden_inputs(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = torch.from_numpy(np.load(root / "input_grey_uint8.npy"))  # [2, 1, 224, 224]
    return (pixels.float() / 255 - IR_MEAN) / IR_STD, torch.from_numpy(
        np.load(root / "ids_keep.npy")
    )


@pytest.mark.parametrize("in_chans", [3, 1])
def test_infmae_small_matches_the_reference_encoder(checkpoints: Path, in_chans: int) -> None:
    root = checkpoints / "infmae_small"
    imgs, ids_keep = golden_inputs(root)
    model = load_reference_checkpoint(
        root / "infmae_small_random.safetensors", "infmae", in_chans=in_chans, **SMALL_HEADS
    ).eval()
    imgs = imgs.expand(-1, in_chans, -1, -1)
    with torch.no_grad():
        masked = model.forward_encoder(imgs, ids_keep)  # [2, 49, 96]
        everything = model.forward_encoder(imgs, torch.arange(196).expand(2, -1))
    expected_masked = torch.from_numpy(np.load(root / "latent_masked.npy"))
    expected_all = torch.from_numpy(np.load(root / "latent_all_visible.npy"))
    assert (masked - expected_masked).abs().max() <= 1e-4
    assert (everything - expected_all).abs().max() <= 1e-4


def test_state_dicts_and_wrapped_checkpoints_load_alike(checkpoints: Path, tmp_path: Path) -> None:
    root = checkpoints / "infmae_small"
    state = load_file(root / "infmae_small_random.safetensors")
    released = tmp_path / "infmae.pth"
    torch.save({"model": state, "epoch": 3}, released)  # the released .pth layout
    imgs, ids_keep = golden_inputs(root)
    from_file = load_reference_checkpoint(released, "infmae", in_chans=1, **SMALL_HEADS).eval()
    from_dict = load_reference_checkpoint(state, "infmae", in_chans=1, **SMALL_HEADS).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            from_file.forward_encoder(imgs, ids_keep), from_dict.forward_encoder(imgs, ids_keep)
        )


def test_converted_model_trains_a_step(checkpoints: Path) -> None:
    root = checkpoints / "infmae_small"
    model = load_reference_checkpoint(
        root / "infmae_small_random.safetensors",
        "infmae",
        num_heads=4,
        in_chans=1,
        masking="entropy",
        ddg=True,
        decoder_heads=4,
    )
    assert model.ddg is not None  # the bridge starts fresh
    pixels = torch.from_numpy(np.load(root / "input_grey_uint8.npy"))
    imgs = (pixels.float() / 255 - IR_MEAN) / IR_STD
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = model.encoder.patch_embed4.weight.detach().clone()
    loss, pred, mask = model(imgs, pixels)
    loss.backward()
    optimiser.step()
    assert torch.isfinite(loss) and pred.shape == (2, 196, 256)
    assert not torch.equal(before, model.encoder.patch_embed4.weight)


def test_bad_checkpoints_say_what_is_wrong(checkpoints: Path, tmp_path: Path) -> None:
    state = load_file(checkpoints / "infmae_small" / "infmae_small_random.safetensors")
    with pytest.raises(ReferenceCheckpointError, match="unexpected keys.*extra.weight"):
        load_reference_checkpoint(
            {**state, "extra.weight": torch.zeros(1)}, "infmae", **SMALL_HEADS
        )
    incomplete = {k: v for k, v in state.items() if k != "norm.bias"}
    with pytest.raises(ReferenceCheckpointError, match="missing keys.*encoder.norm.bias"):
        load_reference_checkpoint(incomplete, "infmae", **SMALL_HEADS)
    with pytest.raises(ReferenceCheckpointError, match="an infmae checkpoint, not mae"):
        load_reference_checkpoint(state, "mae")
    with pytest.raises(ValueError, match="not one of"):
        load_reference_checkpoint(state, "beit")
    with pytest.raises(ReferenceCheckpointError, match="in_chans=2"):
        load_reference_checkpoint(state, "infmae", in_chans=2, **SMALL_HEADS)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_reference_checkpoint(tmp_path / "nothing.pth", "infmae")
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": state, "args": object()}, pickled)  # not weights-only loadable
    with pytest.raises(ReferenceCheckpointError, match="weights-only"):
        load_reference_checkpoint(pickled, "infmae", **SMALL_HEADS)


def test_an_encoder_only_export_is_named_as_such(tmp_path):
    from pretrain.models import create_model, export_encoder
    from pretrain.models.reference import load_reference_checkpoint
    from pretrain.models.released import ReferenceCheckpointError

    weights = export_encoder(create_model("dugi_mae_tiny"), tmp_path / "export")
    for kind in ("infmae", "convmae", "mae"):
        with pytest.raises(ReferenceCheckpointError, match="encoder only"):
            load_reference_checkpoint(weights, kind)
