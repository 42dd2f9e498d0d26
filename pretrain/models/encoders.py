"""Encoders on the visible patches: MAE's plain ViT and InfMAE's hierarchical conv + ViT.

Both are assembled from timm's blocks (PatchEmbed, Block, LayerNorm2d, Mlp, DropPath,
sincos position embeddings). `HierarchicalEncoder` is also the timm model that the exported
weights load into (see `pretrain.models.export`), so it carries timm's classifier and
`forward_intermediates` interface for `features_only=True`.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm, LayerNorm2d, Mlp, PatchEmbed, trunc_normal_
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from pretrain.models.configs import ModelConfig
from pretrain.models.masking import PatchMask, gather_tokens, upsample_visible, visible_grid

TokenNorm = partial(LayerNorm, eps=1e-6)


def sincos_pos_embed(grid_size: tuple[int, int], dim: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding [1, rows*cols, dim], row-major like the patches."""
    return build_sincos2d_pos_embed(list(grid_size), dim).unsqueeze(0)


def drop_path_rates(max_rate: float, depth: int) -> list[float]:
    """Stochastic-depth rates rising linearly to `max_rate` (plain floats: meta-device safe)."""
    return [max_rate * i / max(depth - 1, 1) for i in range(depth)]


def init_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linear layers (and patch projections), unit norms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_patch_embed(patch_embed: PatchEmbed) -> None:
    """MAE initialises the patch projection like a linear layer on the flattened patch."""
    weight = patch_embed.proj.weight
    nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))


def transformer_blocks(
    dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_path: list[float]
) -> nn.Sequential:
    """timm ViT blocks; an nn.Sequential so state-dict keys match timm's VisionTransformer."""
    return nn.Sequential(
        *[
            Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=TokenNorm, drop_path=rate)
            for rate in drop_path
        ]
    )


class ViTEncoder(nn.Module):
    """MAE's ViT: patch embedding, fixed sincos positions, class token, blocks on visible tokens.

    Attribute names equal timm's VisionTransformer, so the weights load into
    `timm.create_model("vit_base_patch16_224", in_chans=1, num_classes=0)`.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        dim, depth = config.embed_dims[0], config.depths[0]
        self.patch_embed = PatchEmbed(config.image_hw, config.patch_size, config.in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # Persistent and with a (zero) class-token row: the layout of timm's `pos_embed`.
        pos_embed = sincos_pos_embed(config.grid_size, dim)  # [1, L, D]
        self.register_buffer("pos_embed", torch.cat([torch.zeros(1, 1, dim), pos_embed], dim=1))
        rates = drop_path_rates(config.drop_path_rate, depth)
        self.blocks = transformer_blocks(dim, depth, config.num_heads, config.mlp_ratio, rates)
        self.norm = TokenNorm(dim)
        self.apply(init_weights)
        init_patch_embed(self.patch_embed)
        trunc_normal_(self.cls_token, std=0.02)

    def forward(self, imgs: Tensor, patch_mask: PatchMask) -> Tensor:
        """[N, C, H, W] -> visible-token latent [N, Lv, D] (class token dropped)."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]  # [N, L, D]
        x = gather_tokens(x, patch_mask.ids_keep)  # [N, Lv, D]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = self.norm(self.blocks(torch.cat([cls, x], dim=1)))  # [N, 1 + Lv, D]
        return x[:, 1:]


class ConvBlock(nn.Module):
    """ConvMAE / InfMAE stage-1/2 block: LN -> 1x1 -> 5x5 depthwise -> 1x1, then a 1x1-conv MLP.

    timm has no such block, hence written here. The depthwise conv is the only operation that
    mixes positions; its input is multiplied by the visible map, so a visible position never
    reads a masked one.
    """

    def __init__(self, dim: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.dwconv = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.norm2 = LayerNorm2d(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), use_conv=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, visible: Tensor | None = None) -> Tensor:
        """x: [N, C, h, w]; visible: [N, 1, h, w] (1 = visible) or None for unmasked input."""
        y = self.conv1(self.norm1(x))
        if visible is not None:
            y = y * visible
        x = x + self.drop_path(self.conv2(self.dwconv(y)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class HierarchicalEncoder(nn.Module):
    """InfMAE's encoder: two masked conv stages (H/4, H/8), a ViT stage on visible tokens (H/16),
    and multi-scale fusion of the conv stages into the visible tokens.

    Masked training: `forward(imgs, patch_mask)`. As a timm backbone: `forward_features`,
    `forward_intermediates` (F1 H/4, F2 H/8, F3 H/16, F4 = max-pool(F3) H/32) and a
    pooled classifier head.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 1,
        embed_dims: tuple[int, int, int] = (256, 384, 768),
        depths: tuple[int, int, int] = (2, 2, 11),
        patch_sizes: tuple[int, int, int] = (4, 2, 2),
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        num_classes: int = 0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if isinstance(img_size, int):
            img_size = (img_size, img_size)
        dim1, dim2, dim3 = embed_dims
        patch1, patch2, patch3 = patch_sizes
        self.patch_sizes = tuple(patch_sizes)
        self.grid_size = (img_size[0] // (patch1 * patch2 * patch3),
                          img_size[1] // (patch1 * patch2 * patch3))
        rates = drop_path_rates(drop_path_rate, sum(depths))
        conv_embed = partial(PatchEmbed, None, norm_layer=LayerNorm2d, flatten=False,
                             output_fmt="NCHW", strict_img_size=False)
        self.patch_embed1 = conv_embed(patch1, in_chans, dim1)
        self.blocks1 = nn.ModuleList(ConvBlock(dim1, mlp_ratio, r) for r in rates[: depths[0]])
        self.patch_embed2 = conv_embed(patch2, dim1, dim2)
        self.blocks2 = nn.ModuleList(
            ConvBlock(dim2, mlp_ratio, r) for r in rates[depths[0] : depths[0] + depths[1]]
        )
        self.patch_embed3 = PatchEmbed(None, patch3, dim2, dim3, norm_layer=TokenNorm,
                                       strict_img_size=False)
        # A fixed function of the grid: recomputed for other input sizes, so not saved.
        self.register_buffer(
            "pos_embed", sincos_pos_embed(self.grid_size, dim3), persistent=False
        )
        self.blocks3 = transformer_blocks(
            dim3, depths[2], num_heads, mlp_ratio, rates[depths[0] + depths[1] :]
        )
        # Multi-scale fusion: strided convs bring stage 1 and 2 to the token grid.
        self.stage1_fuse = nn.Conv2d(dim1, dim3, patch2 * patch3, stride=patch2 * patch3)
        self.stage2_fuse = nn.Conv2d(dim2, dim3, patch3, stride=patch3)
        self.norm = TokenNorm(dim3)

        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = dim3
        self.head = nn.Linear(dim3, num_classes) if num_classes > 0 else nn.Identity()
        stride = patch1
        self.feature_info = []
        steps = (1, patch2, patch3, 2)
        for index, (dim, step) in enumerate(zip((dim1, dim2, dim3, dim3), steps, strict=True)):
            stride *= step
            self.feature_info.append(dict(num_chs=dim, reduction=stride, module=f"stage{index + 1}"))
        self.apply(init_weights)

    def _conv_stage(
        self, x: Tensor, embed: PatchEmbed, blocks: nn.ModuleList, visible: Tensor | None
    ) -> Tensor:
        """Patch embedding + conv blocks; with a visible map, masked positions are zeroed on the
        way in and out of the stage (InfMAE), and inside each block before the depthwise conv."""
        x = embed(x)  # [N, C, h, w]
        if visible is not None:
            visible = visible.to(x.dtype)
            x = x * visible
        for block in blocks:
            x = block(x, visible)
        return x if visible is None else x * visible

    def _pos_embed(self, grid_size: tuple[int, int], like: Tensor) -> Tensor:
        if tuple(grid_size) == self.grid_size:
            return self.pos_embed
        return sincos_pos_embed(grid_size, self.num_features).to(like.device)

    def _conv_stages(self, imgs: Tensor, visible: Tensor | None) -> tuple[Tensor, Tensor]:
        """Stage 1 [N, C1, H/4, W/4] and stage 2 [N, C2, H/8, W/8]."""
        _, patch2, patch3 = self.patch_sizes
        vis1 = None if visible is None else upsample_visible(visible, patch2 * patch3)
        vis2 = None if visible is None else upsample_visible(visible, patch3)
        stage1 = self._conv_stage(imgs, self.patch_embed1, self.blocks1, vis1)
        stage2 = self._conv_stage(stage1, self.patch_embed2, self.blocks2, vis2)
        return stage1, stage2

    def _stages(self, imgs: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[int, int]]:
        """Unmasked: both conv stages, all tokens [N, L, C3] with positions, and the token grid."""
        stage1, stage2 = self._conv_stages(imgs, None)
        tokens = self.patch_embed3(stage2)  # [N, L, C3]
        patch3 = self.patch_sizes[2]
        grid = (stage2.shape[-2] // patch3, stage2.shape[-1] // patch3)
        return stage1, stage2, tokens + self._pos_embed(grid, tokens), grid

    def _fusion(self, stage1: Tensor, stage2: Tensor) -> Tensor:
        """Both conv stages projected to the token grid and summed: [N, L, C3]."""
        fused = self.stage1_fuse(stage1) + self.stage2_fuse(stage2)  # [N, C3, h, w]
        return fused.flatten(2).transpose(1, 2)

    @staticmethod
    def _visible_windows(x: Tensor, window: int, ids_keep: Tensor) -> Tensor:
        """The window x window cell of each visible token: [N, C, h*k, w*k] -> [N*Lv, C, k, k].

        The stage-3 embedding and the fusion convs have kernel = stride = window, so running
        them on these cells equals running them densely and gathering, at a quarter the cost.
        """
        n, chans, height, width = x.shape
        rows, cols = height // window, width // window
        cells = x.reshape(n, chans, rows, window, cols, window).permute(0, 2, 4, 1, 3, 5)
        cells = gather_tokens(cells.reshape(n, rows * cols, -1), ids_keep)  # [N, Lv, C*k*k]
        return cells.reshape(-1, chans, window, window)

    def forward_masked(self, imgs: Tensor, patch_mask: PatchMask) -> Tensor:
        """[N, C, H, W] -> visible-token latent [N, Lv, C3]; used through `forward`."""
        ids_keep = patch_mask.ids_keep  # [N, Lv]
        n, num_visible = ids_keep.shape
        _, patch2, patch3 = self.patch_sizes
        stage1, stage2 = self._conv_stages(imgs, visible_grid(patch_mask, self.grid_size))
        cells2 = self._visible_windows(stage2, patch3, ids_keep)  # [N*Lv, C2, p3, p3]
        cells1 = self._visible_windows(stage1, patch2 * patch3, ids_keep)
        tokens = self.patch_embed3(cells2).reshape(n, num_visible, -1)  # [N, Lv, C3]
        pos = gather_tokens(self.pos_embed.expand(n, -1, -1), ids_keep).to(tokens.dtype)
        x = self.blocks3(tokens + pos)
        fused = self.stage1_fuse(cells1) + self.stage2_fuse(cells2)  # [N*Lv, C3, 1, 1]
        return self.norm(x + fused.reshape(n, num_visible, -1))

    def forward_features(self, imgs: Tensor) -> Tensor:
        """Unmasked tokens [N, L, C3] (downstream use)."""
        stage1, stage2, tokens, _ = self._stages(imgs)
        return self.norm(self.blocks3(tokens) + self._fusion(stage1, stage2))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        pooled = x.mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        return pooled if pre_logits else self.head(pooled)

    def forward(self, imgs: Tensor, patch_mask: PatchMask | None = None) -> Tensor:
        """With a mask: the masked-pretraining latent [N, Lv, C3]. Without: timm's classifier
        output (pooled features when num_classes=0)."""
        if patch_mask is not None:
            return self.forward_masked(imgs, patch_mask)
        return self.forward_head(self.forward_features(imgs))

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm's feature API: F1..F4 at strides 4, 8, 16, 32 (NCHW). F3 is always the normed,
        fused token map, so `norm` has no further effect."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: only 'NCHW' feature maps are provided")
        take_indices, _ = feature_take_indices(len(self.feature_info), indices)
        stage1, stage2, tokens, grid = self._stages(x)
        final = self.norm(self.blocks3(tokens) + self._fusion(stage1, stage2))  # [N, L, C3]
        stage3 = final.transpose(1, 2).reshape(x.shape[0], -1, *grid)  # [N, C3, H/16, W/16]
        maps = [stage1, stage2, stage3, F.max_pool2d(stage3, 2)]
        intermediates = [maps[i] for i in take_indices]
        if intermediates_only:
            return intermediates
        return final, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the classifier when only features are needed (the stages are all kept)."""
        take_indices, _ = feature_take_indices(len(self.feature_info), indices)
        if prune_head:
            self.reset_classifier(0)
        return take_indices


def build_encoder(config: ModelConfig) -> ViTEncoder | HierarchicalEncoder:
    """The encoder that `config.encoder` names."""
    if config.encoder == "vit":
        return ViTEncoder(config)
    return HierarchicalEncoder(
        img_size=config.image_hw,
        in_chans=config.in_chans,
        embed_dims=config.embed_dims,
        depths=config.depths,
        patch_sizes=config.patch_sizes,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        drop_path_rate=config.drop_path_rate,
    )
