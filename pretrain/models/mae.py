"""The masked autoencoder: masking -> encoder -> (DDG) -> decoder -> MSE on masked patches.

One class covers MAE, InfMAE and DuGI-MAE; `ModelConfig` picks the encoder, the masking
strategy and whether the DDG bridge is used.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pretrain.models.configs import ModelConfig, build_config
from pretrain.models.ddg import DualDomainGuidance
from pretrain.models.decoder import MAEDecoder
from pretrain.models.encoders import build_encoder
from pretrain.models.flops import count_flops_by_part
from pretrain.models.masking import PatchMask, make_mask, mask_from_visible

MODEL_PARTS = ("encoder", "ddg", "decoder")
NO_WEIGHT_DECAY_NAMES = frozenset({"cls_token", "mask_token", "pos_embed"})


class MaskedAutoencoder(nn.Module):
    """`loss, pred, mask = model(imgs, pixels)`: imgs normalised [N, C, H, W]; pixels the uint8
    crops [N, 1, H, W] they were normalised from (read by entropy and grey masking; random
    masking needs none)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config)
        self.ddg = DualDomainGuidance(config) if config.ddg else None
        self.decoder = MAEDecoder(config, self.encoder.num_prefix_tokens)
        self._flops_per_image: float | None = None

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.config.grid_size

    def patchify(self, imgs: Tensor) -> Tensor:
        """[N, C, H, W] -> [N, L, p*p*C] (row-major patches, channels last within a patch)."""
        n, chans, height, width = imgs.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {p}")
        x = imgs.reshape(n, chans, height // p, p, width // p, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, (height // p) * (width // p), p * p * chans)

    def unpatchify(self, x: Tensor, grid_size: tuple[int, int] | None = None) -> Tensor:
        """[N, L, p*p*C] -> [N, C, H, W]; `grid_size` (rows, cols) defaults to the model's."""
        rows, cols = grid_size or self.grid_size
        n, length, dim = x.shape
        p = self.patch_size
        if length != rows * cols or dim % (p * p):
            raise ValueError(
                f"tokens {tuple(x.shape)} do not fit a {rows}x{cols} grid of {p}x{p} patches"
            )
        chans = dim // (p * p)
        x = torch.einsum("nhwpqc->nchpwq", x.reshape(n, rows, cols, p, p, chans))
        return x.reshape(n, chans, rows * p, cols * p)

    def _check_input(self, imgs: Tensor) -> None:
        expected = (self.config.in_chans, *self.config.image_hw)
        if imgs.ndim != 4 or tuple(imgs.shape[1:]) != expected:
            raise ValueError(
                f"expected images [N, {expected[0]}, {expected[1]}, {expected[2]}], got "
                f"{tuple(imgs.shape)}; build the model with matching img_size / in_chans"
            )

    def mask_patches(self, imgs: Tensor, pixels: Tensor | None = None) -> PatchMask:
        """The configured masking strategy (no gradient flows through the choice)."""
        with torch.no_grad():
            return make_mask(
                self.config.masking, imgs, self.patch_size, self.config.mask_ratio, pixels
            )

    def forward_encoder(self, imgs: Tensor, ids_keep: Tensor) -> Tensor:
        """Encoder output [N, Lv, D] for the visible patches `ids_keep` [N, Lv] (ascending):
        after stage fusion and the final norm, before DDG (class token dropped for the ViT)."""
        self._check_input(imgs)
        if ids_keep.ndim != 2 or ids_keep.shape[0] != imgs.shape[0]:
            raise ValueError(
                f"ids_keep must be [N, Lv] visible patch indices, got {tuple(ids_keep.shape)}"
            )
        patch_mask = mask_from_visible(ids_keep.to(imgs.device).long(), self.config.num_patches)
        latent = self.encoder(imgs, patch_mask)  # [N, prefix + Lv, D]
        return latent[:, self.encoder.num_prefix_tokens :]

    def encode(
        self, imgs: Tensor, pixels: Tensor | None = None, patch_mask: PatchMask | None = None
    ) -> tuple[Tensor, PatchMask]:
        """Mask, encode the visible patches and apply DDG: the decoder input [N, prefix + Lv, D]
        (prefix: the ViT's class token, which DDG leaves as it is). A given `patch_mask`
        replaces the model's own masking (validation's fixed and common masks)."""
        self._check_input(imgs)
        if patch_mask is None:
            patch_mask = self.mask_patches(imgs, pixels)
        latent = self.encoder(imgs, patch_mask)  # [N, prefix + Lv, D]
        if self.ddg is not None:
            prefix = self.encoder.num_prefix_tokens
            guided = self.ddg(imgs, patch_mask, latent[:, prefix:])  # [N, Lv, D]
            latent = torch.cat([latent[:, :prefix], guided], dim=1)
        return latent, patch_mask

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error over the masked patches only (float32)."""
        target = self.patchify(imgs).float()  # [N, L, p*p*C]
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)  # [N, L]
        return (per_patch * mask).sum() / mask.sum()

    def forward(
        self, imgs: Tensor, pixels: Tensor | None = None, patch_mask: PatchMask | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        latent, patch_mask = self.encode(imgs, pixels, patch_mask)
        pred = self.decoder(latent, patch_mask.ids_restore)  # [N, L, p*p*C]
        return self.forward_loss(imgs, pred, patch_mask.mask), pred, patch_mask.mask

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay: tokens and position embeddings."""
        return {
            name
            for name, _ in self.named_parameters()
            if name.rsplit(".", 1)[-1] in NO_WEIGHT_DECAY_NAMES
        }

    def flops_by_part(self) -> dict[str, int]:
        """Forward FLOPs of one image per part, counted on a weightless (meta) twin."""
        with torch.device("meta"):
            twin = MaskedAutoencoder(self.config)
            imgs = torch.zeros(1, self.config.in_chans, *self.config.image_hw)
            pixels = torch.zeros(1, 1, *self.config.image_hw, dtype=torch.uint8)
        return count_flops_by_part(twin, (imgs, pixels), MODEL_PARTS)

    def flops_per_image(self) -> float:
        """Forward FLOPs per image (2 per multiply-add), for MFU logging; computed once."""
        if self._flops_per_image is None:
            self._flops_per_image = float(sum(self.flops_by_part().values()))
        return self._flops_per_image


def create_model(name: str, **overrides: Any) -> MaskedAutoencoder:
    """A named configuration (see MODEL_NAMES), any ModelConfig field overridden."""
    return MaskedAutoencoder(build_config(name, **overrides))
