"""The masked autoencoder: configs, loss, leak-freedom, DDG parameters, bf16, overfitting."""

from __future__ import annotations

import itertools
from dataclasses import asdict

import pytest
import torch

from pretrain.models import MODEL_NAMES, ModelConfig, create_model
from pretrain.models.masking import upsample_visible, visible_grid

COMBINATIONS = list(
    itertools.product(("vit", "hierarchical"), ("entropy", "gray", "random"), (False, True))
)
COMBINATION_IDS = [f"{enc}-{mask}-{'ddg' if ddg else 'noddg'}" for enc, mask, ddg in COMBINATIONS]


pytestmark = pytest.mark.usefixtures("torch_single_thread")


def smooth_pixels(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    """8-bit crops [N, 1, S, S] with smooth structure (learnable, varied entropy)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 1, 4, 4, generator=generator)
    fine = torch.rand(batch, 1, size, size, generator=generator) * 0.1
    image = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear") * 0.9 + fine
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    """The network input of 8-bit crops, as the training loop makes it."""
    return (pixels.float() / 255 - 0.425) / 0.2


def smooth_images(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Normalised images of `smooth_pixels`."""
    return normalised(smooth_pixels(batch, size, seed))


def smooth_batch(batch: int = 2, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised images, their 8-bit crops): what `model(imgs, pixels)` takes."""
    pixels = smooth_pixels(batch, size, seed)
    return normalised(pixels), pixels


def tiny(encoder: str, masking: str, ddg: bool, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("dugi_mae_tiny", encoder=encoder, masking=masking, ddg=ddg, **overrides)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_named_configs_rebuild_from_their_dict(name: str) -> None:
    with torch.device("meta"):
        model = create_model(name)
        rebuilt = create_model(**asdict(model.config))
    assert rebuilt.config == model.config
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}


def test_named_configs_follow_the_paper() -> None:
    mae = create_model("mae_vit_tiny").config
    dugi = ModelConfig(**{**asdict(create_model("dugi_mae_tiny").config), "size": "base",
                          "embed_dims": None, "depths": None, "img_size": 224})
    assert (mae.encoder, mae.masking, mae.ddg) == ("vit", "random", False)
    assert dugi.embed_dims == (256, 384, 768) and dugi.depths == (2, 2, 11)
    with torch.device("meta"):
        base = create_model("dugi_mae_base").config
        infmae = create_model("infmae_base").config
        mae_base = create_model("mae_vit_base").config
    assert (base.masking, base.ddg, base.ddg_filter, base.decoder_depth) == ("entropy", True,
                                                                           "highpass", 2)
    assert (infmae.masking, infmae.ddg, infmae.decoder_dim, infmae.decoder_heads) == (
        "gray", False, 512, 16)
    assert (mae_base.embed_dims, mae_base.depths, mae_base.decoder_depth) == ((768,), (12,), 8)


def test_overrides_switch_encoder_consistently() -> None:
    model = create_model("dugi_mae_tiny", encoder="vit", masking="random", ddg=False)
    assert model.config.embed_dims == (64,) and model.config.patch_sizes == (16,)
    loss, pred, mask = model(*smooth_batch())
    assert pred.shape == (2, 16, 256) and mask.shape == (2, 16) and torch.isfinite(loss)


@pytest.mark.parametrize("encoder", ["vit", "hierarchical"])
def test_non_square_images(encoder: str) -> None:
    model = tiny(encoder, "entropy", True, img_size=(48, 80))
    imgs, pixels = smooth_batch(size=80)
    loss, pred, mask = model(imgs[..., 16:64, :], pixels[..., 16:64, :])
    assert pred.shape == (2, 15, 256) and mask.shape == (2, 15)
    assert (mask.sum(1) == 15 - 4).all() and torch.isfinite(loss)  # keep 15 - floor(11.25)


def test_ddg_blocks_chain_with_encoder_tokens_as_query() -> None:
    model = tiny("hierarchical", "entropy", True, ddg_depth=3)
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for block in model.ddg.blocks:
        block.register_forward_hook(lambda _m, args, out: seen.append((args[0], args[1], out)))
    imgs, pixels = smooth_batch()
    with torch.no_grad():
        model.encode(imgs, pixels)
        patch_mask = model.mask_patches(imgs, pixels)
        latent = model.encoder(imgs, patch_mask)
        freq_tokens = model.ddg.frequency_tokens(imgs, patch_mask)
    assert len(seen) == 3
    torch.testing.assert_close(seen[0][1], freq_tokens)  # first block: frequency K/V
    for index, (query, guide, _) in enumerate(seen):
        torch.testing.assert_close(query, latent)  # the encoder tokens stay the query
        if index:
            assert guide is seen[index - 1][2]  # later blocks: the previous block's output


def test_bad_configurations_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        create_model("mae_vit_huge")
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        create_model("dugi_mae_tiny", mask_ration=0.5)
    with pytest.raises(ValueError, match="mask_ratio"):
        create_model("dugi_mae_tiny", mask_ratio=1.0)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        create_model("dugi_mae_tiny", img_size=72)
    with pytest.raises(ValueError, match="not one of"):
        create_model("dugi_mae_tiny", masking="block")
    with pytest.raises(ValueError, match="must have 3 entries"):
        create_model("dugi_mae_tiny", embed_dims=(64,))
    with pytest.raises(ValueError, match="in_chans"):
        create_model("dugi_mae_tiny", in_chans=2)
    model = create_model("dugi_mae_tiny")
    with pytest.raises(ValueError, match="expected images"):
        model(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="needs the 8-bit crops"):
        model(smooth_images())


@pytest.mark.parametrize("encoder", ["vit", "hierarchical"])
def test_three_channel_models_predict_three_channels(encoder: str) -> None:
    model = tiny(encoder, "entropy", True, in_chans=3)
    imgs, pixels = smooth_batch()
    loss, pred, _ = model(imgs.expand(-1, 3, -1, -1).contiguous(), pixels)
    assert pred.shape == (2, 16, 16 * 16 * 3) and torch.isfinite(loss)


def test_loss_ignores_visible_patches() -> None:
    model = tiny("hierarchical", "entropy", True)
    imgs, pixels = smooth_batch()
    loss, pred, mask = model(imgs, pixels)
    visible = (mask == 0).unsqueeze(-1)
    changed = pred.detach() + visible * torch.randn_like(pred) * 10
    assert torch.equal(model.forward_loss(imgs, changed, mask), loss.detach())
    masked_change = pred.detach() + (~visible) * 0.5
    assert not torch.allclose(model.forward_loss(imgs, masked_change, mask), loss.detach())
    # The loss is the mean squared error over masked patches.
    target = model.patchify(imgs)
    expected = ((pred - target) ** 2).mean(-1)[mask.bool()].mean()
    torch.testing.assert_close(loss, expected)


def test_norm_pix_loss_normalises_each_target_patch() -> None:
    model = tiny("vit", "gray", False, norm_pix_loss=True)
    imgs = smooth_images()
    target = model.patchify(imgs)
    normalised = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    mask = torch.ones(2, 16)
    assert model.forward_loss(imgs, normalised, mask) < 1e-10
    assert model.forward_loss(imgs, target, mask) > 0.1


@pytest.mark.parametrize(("encoder", "masking", "ddg"), COMBINATIONS, ids=COMBINATION_IDS)
def test_no_masked_pixel_reaches_the_decoder(encoder: str, masking: str, ddg: bool) -> None:
    model = tiny(encoder, masking, ddg)
    imgs, pixels = smooth_batch()
    imgs.requires_grad_(True)
    latent, patch_mask = model.encode(imgs, pixels)  # the decoder input
    (latent * torch.randn_like(latent)).sum().backward()
    masked_pixels = upsample_visible(visible_grid(patch_mask, model.grid_size), 16) == 0
    assert masked_pixels.float().mean() == 0.75
    assert torch.count_nonzero(imgs.grad[masked_pixels]) == 0
    assert torch.count_nonzero(imgs.grad[~masked_pixels]) > 0.9 * (~masked_pixels).sum()


def test_frequency_branch_sees_only_visible_pixels() -> None:
    model = tiny("hierarchical", "entropy", True)
    imgs, pixels = smooth_batch()
    imgs.requires_grad_(True)
    patch_mask = model.mask_patches(imgs, pixels)
    tokens = model.ddg.frequency_tokens(imgs, patch_mask)  # [N, Lv, D]
    tokens.sum().backward()
    masked_pixels = upsample_visible(visible_grid(patch_mask, model.grid_size), 16) == 0
    assert torch.count_nonzero(imgs.grad[masked_pixels]) == 0
    # Control: the same FFT on the unmasked image does spread masked pixels everywhere,
    # so the zero above is the masking's doing, not an artefact of the check.
    imgs.grad = None
    model.ddg.frequency_filter(imgs).sum().backward()
    assert torch.count_nonzero(imgs.grad[masked_pixels]) > 0


def test_filter_shapes_and_constraints() -> None:
    model = tiny("hierarchical", "entropy", True)
    freq = model.ddg.frequency_filter
    assert 0 < freq.alpha.item() < 1 and freq.beta.item() > 0 and 0 < freq.radius.item() <= 1
    highpass = freq.transfer(64, 64, torch.device("cpu"))
    torch.testing.assert_close(highpass[32, 32], 1 - freq.alpha)  # centre: low freq suppressed
    assert highpass[0, 0] > highpass[32, 32]
    lowpass = tiny("hierarchical", "entropy", True, ddg_filter="lowpass").ddg.frequency_filter
    lowpass_h = lowpass.transfer(64, 64, torch.device("cpu"))
    torch.testing.assert_close(lowpass_h[32, 32], lowpass.alpha)
    assert lowpass_h[0, 0] < lowpass_h[32, 32]
    with pytest.raises(ValueError, match="ddg_filter"):
        create_model("dugi_mae_tiny", ddg_filter="bandpass")


def test_filter_parameters_are_trained() -> None:
    model = tiny("hierarchical", "entropy", True)
    freq = model.ddg.frequency_filter
    params = {"alpha": freq.alpha_logit, "beta": freq.beta_raw, "r": freq.radius_logit}
    names = {name for name, _ in model.named_parameters()}
    assert {"ddg.frequency_filter.alpha_logit", "ddg.frequency_filter.beta_raw",
            "ddg.frequency_filter.radius_logit"} <= names
    before = {key: p.detach().clone() for key, p in params.items()}
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss, _, _ = model(*smooth_batch())
    loss.backward()
    for key, param in params.items():
        assert param.grad is not None and param.grad.abs() > 0, f"{key} got no gradient"
    optimiser.step()
    for key, param in params.items():
        assert not torch.equal(param.detach(), before[key]), f"{key} did not change"


def test_fft_runs_in_float32_under_bf16_autocast() -> None:
    model = tiny("hierarchical", "entropy", True)
    imgs, pixels = smooth_batch()
    freq = model.ddg.frequency_filter
    with torch.autocast("cpu", dtype=torch.bfloat16):
        filtered = freq(imgs.bfloat16())
        loss, pred, _ = model(imgs, pixels)
    assert filtered.dtype == torch.float32
    torch.testing.assert_close(filtered, freq(imgs.bfloat16().float()))
    assert pred.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert freq.alpha_logit.grad is not None


def test_no_weight_decay_names_tokens() -> None:
    model = create_model("mae_vit_tiny")
    names = model.no_weight_decay()
    assert names == {"encoder.cls_token", "decoder.mask_token"}
    assert names <= {name for name, _ in model.named_parameters()}
    # Fixed sincos position embeddings are buffers: never trained, never decayed.
    assert "encoder.pos_embed" in dict(model.named_buffers())


def test_flops_per_image_is_cached_and_sums_the_parts() -> None:
    model = create_model("dugi_mae_tiny")
    parts = model.flops_by_part()
    assert parts["encoder"] > 0 and parts["ddg"] > 0 and parts["decoder"] > 0
    assert model.flops_per_image() == sum(parts.values())
    assert model._flops_per_image is not None


@pytest.mark.slow
@pytest.mark.parametrize(("encoder", "masking", "ddg"), COMBINATIONS, ids=COMBINATION_IDS)
def test_tiny_model_overfits_one_batch(encoder: str, masking: str, ddg: bool) -> None:
    model = tiny(encoder, masking, ddg)
    imgs, pixels = smooth_batch(batch=2)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(50):
        torch.manual_seed(0)  # one batch: random masking draws the same mask each step
        loss, _, _ = model(imgs, pixels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert min(losses[-5:]) <= 0.5 * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_mae_class_token_passes_through_the_decoder() -> None:
    """facebookresearch/mae: the decoder sees the class token (1 + L tokens), the head drops it."""
    model = tiny("vit", "random", False)
    seen = []
    model.decoder.blocks[0].register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    with torch.no_grad():
        latent, _ = model.encode(smooth_images())
        _, pred, _ = model(smooth_images())
    assert latent.shape == (2, 1 + 4, 64)  # class token + 4 visible of 16 patches
    assert seen[-1].shape == (2, 1 + 16, 64) and pred.shape == (2, 16, 256)
    assert model.decoder.pos_embed.shape == (1, 17, 64)
    assert torch.equal(model.decoder.pos_embed[0, 0], torch.zeros(64))
    # The class token changes the prediction: it is attended to, not dropped before the blocks.
    with torch.no_grad():
        ids_restore = torch.arange(16).expand(2, -1)
        altered = latent.clone()
        altered[:, 0] += 1.0
        assert not torch.allclose(model.decoder(latent, ids_restore),
                                  model.decoder(altered, ids_restore))


@pytest.mark.parametrize("encoder", ["vit", "hierarchical"])
def test_forward_encoder_gives_the_visible_latent_before_ddg(encoder: str) -> None:
    model = tiny(encoder, "entropy", True).eval()
    imgs, pixels = smooth_batch()
    with torch.no_grad():
        patch_mask = model.mask_patches(imgs, pixels)
        latent = model.forward_encoder(imgs, patch_mask.ids_keep)
        full = model.encoder(imgs, patch_mask)
    assert latent.shape == (2, 4, 64)
    torch.testing.assert_close(latent, full[:, model.encoder.num_prefix_tokens :])
    with pytest.raises(ValueError, match="ids_keep"):
        model.forward_encoder(imgs, patch_mask.ids_keep[0])
