"""MAE decoder: visible latent + mask tokens, un-shuffled to image order, predicts pixels."""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import Tensor, nn

from pretrain.models.configs import ModelConfig
from pretrain.models.encoders import (
    TokenNorm,
    init_weights,
    sincos_pos_embed,
    transformer_blocks,
)


class MAEDecoder(nn.Module):
    """Linear embed, mask tokens, fixed sincos positions, timm blocks, linear pixel head.

    With the plain ViT encoder the latent starts with the class token, which passes through
    the decoder blocks as in facebookresearch/mae (1 + L tokens, its position row zero) and
    is dropped before the pixel head.
    """

    def __init__(self, config: ModelConfig, num_prefix_tokens: int) -> None:
        super().__init__()
        dim = config.decoder_dim
        self.num_prefix_tokens = num_prefix_tokens  # the encoder's (1: ViT's class token)
        self.embed = nn.Linear(config.encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        pos_embed = sincos_pos_embed(config.grid_size, dim)  # [1, L, Dd]
        prefix = torch.zeros(1, self.num_prefix_tokens, dim)
        self.register_buffer(
            "pos_embed", torch.cat([prefix, pos_embed], dim=1), persistent=False
        )  # [1, prefix + L, Dd]
        self.blocks = transformer_blocks(
            dim, config.decoder_depth, config.decoder_heads, config.mlp_ratio,
            [0.0] * config.decoder_depth,
        )
        self.norm = TokenNorm(dim)
        self.head = nn.Linear(dim, config.patch_size**2 * config.in_chans)
        self.apply(init_weights)
        trunc_normal_(self.mask_token, std=0.02)

    def forward(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """latent [N, prefix + Lv, D], ids_restore [N, L] -> predicted patches [N, L, p*p*C]."""
        x = self.embed(latent)  # [N, prefix + Lv, Dd]
        prefix, x = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        n, visible, dim = x.shape
        masked = self.mask_token.to(x.dtype).expand(n, ids_restore.shape[1] - visible, dim)
        x = torch.cat([x, masked], dim=1)  # [N, L, Dd] in (visible, masked) order
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))  # image order
        x = self.blocks(torch.cat([prefix, x], dim=1) + self.pos_embed)
        return self.head(self.norm(x[:, self.num_prefix_tokens :]))  # [N, L, p*p*C]
