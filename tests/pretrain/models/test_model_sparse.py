"""Sparse conv stages in pretraining: equal to the dense masked computation, cheaper, compilable."""

from __future__ import annotations

import itertools

import pytest
import torch

from pretrain.models import create_model, model_info

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SIZES = [224, (96, 160)]
CASES = list(itertools.product(("entropy", "gray", "random"), (False, True), SIZES))
IDS = [
    f"{m}-{'ddg' if d else 'noddg'}-{s if isinstance(s, int) else 'x'.join(map(str, s))}"
    for m, d, s in CASES
]


def crops(size: int | tuple[int, int], batch: int = 2, seed: int = 0):
    height, width = (size, size) if isinstance(size, int) else size
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 1, height // 16, width // 16, generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
    noise = torch.rand(batch, 1, height, width, generator=generator) * 0.2
    pixels = ((image * 0.8 + noise).clamp(0, 1) * 255).round().to(torch.uint8)
    return (pixels.float() / 255 - 0.425) / 0.2, pixels


@pytest.mark.parametrize(("masking", "ddg", "size"), CASES, ids=IDS)
def test_sparse_stages_equal_the_dense_computation(masking: str, ddg: bool, size) -> None:
    torch.manual_seed(0)
    model = create_model("dugi_mae_tiny", masking=masking, ddg=ddg, img_size=size).eval()
    imgs, pixels = crops(size)
    outputs = {}
    for sparse in (True, False):
        model.encoder.sparse = sparse
        torch.manual_seed(1)  # random masking draws the same mask in both runs
        imgs_grad = imgs.clone().requires_grad_(True)
        loss, pred, mask = model(imgs_grad, pixels)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        outputs[sparse] = (loss.detach(), pred.detach(), mask, imgs_grad.grad, grads)
    (loss_s, pred_s, mask_s, img_s, grads_s), (loss_d, pred_d, mask_d, img_d, grads_d) = (
        outputs[True],
        outputs[False],
    )
    assert torch.equal(mask_s, mask_d)
    assert (pred_s - pred_d).abs().max() <= 1e-5 and (loss_s - loss_d).abs() <= 1e-5
    assert (img_s - img_d).abs().max() <= 1e-5
    assert grads_s.keys() == grads_d.keys()
    for name in grads_s:
        assert torch.allclose(grads_s[name], grads_d[name], atol=1e-5, rtol=1e-4), name


def test_sparse_path_zeroes_no_gradient_to_masked_pixels() -> None:
    model = create_model("dugi_mae_tiny", img_size=(96, 160))
    imgs, pixels = crops((96, 160))
    imgs.requires_grad_(True)
    latent, patch_mask = model.encode(imgs, pixels)
    (latent * torch.randn_like(latent)).sum().backward()
    masked = patch_mask.mask.reshape(2, 1, 6, 10).repeat_interleave(16, 2).repeat_interleave(16, 3)
    assert torch.count_nonzero(imgs.grad[masked.bool()]) == 0
    assert torch.count_nonzero(imgs.grad[~masked.bool()]) > 0


def test_stochastic_depth_drops_whole_images_not_cells() -> None:
    torch.manual_seed(0)
    model = create_model("dugi_mae_tiny", drop_path_rate=0.9).train()
    imgs, pixels = crops(64, batch=8)
    block = model.encoder.blocks2[0]  # the first block with a drop rate (0.3)
    seen = []
    block.drop_path.register_forward_hook(lambda _m, _a, out: seen.append(out))
    model(imgs, pixels)
    branch = seen[0].reshape(8, -1)  # [N, Lv*C*k*k]: one image's cells are kept or dropped
    dropped = (branch == 0).all(dim=1)
    kept = (branch != 0).any(dim=1)
    assert torch.equal(dropped, ~kept) and dropped.any() and kept.any()


def test_unmasked_downstream_path_is_unchanged_by_the_switch() -> None:
    model = create_model("dugi_mae_tiny").eval()
    imgs = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        model.encoder.sparse = True
        sparse = model.encoder.forward_features(imgs)
        model.encoder.sparse = False
        assert torch.equal(sparse, model.encoder.forward_features(imgs))


def test_model_info_reports_the_executed_flops() -> None:
    total = model_info("dugi_mae_base")["flops"]["total"] / 1e9
    assert total <= 17.5, total  # 26.3 with the conv stages run densely
    assert model_info("infmae_base")["flops"]["total"] / 1e9 <= 17.5


def test_sparse_stages_run_under_bf16_autocast() -> None:
    model = create_model("dugi_mae_tiny")
    imgs, pixels = crops(64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, pred, _ = model(imgs, pixels)
    assert pred.dtype == torch.bfloat16 and torch.isfinite(loss)
    loss.backward()


@pytest.mark.slow
def test_sparse_stages_compile_as_one_graph() -> None:
    """No data-dependent Python control flow: the encoder traces into a single graph."""
    torch._dynamo.reset()
    model = create_model("dugi_mae_tiny", masking="random")
    encoder = torch.compile(model.encoder, fullgraph=True, backend="aot_eager")
    imgs, pixels = crops(64)
    patch_mask = model.mask_patches(imgs, pixels)
    torch.testing.assert_close(encoder(imgs, patch_mask), model.encoder(imgs, patch_mask))
