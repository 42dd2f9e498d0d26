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
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from pretrain.models.configs import ModelConfig
from pretrain.models.masking import PatchMask, gather_tokens, upsample_visible, visible_grid

STAGE3_FORMS = ("fused", "raw")
TokenNorm = partial(LayerNorm, eps=1e-6)  # InfMAE / MAE token norms (blocks3, final norm)
# InfMAE's stage embeddings and conv blocks use nn.LayerNorm's default eps (1e-5).
ConvNorm = partial(LayerNorm2d, eps=1e-5)


def sincos_pos_embed(grid_size: tuple[int, int], dim: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding [1, rows*cols, dim], row-major like the patches.

    MAE's column order (`get_2d_sincos_pos_embed`): [sin(col), cos(col), sin(row), cos(row)],
    computed in float64 as MAE does, so the released checkpoints' `pos_embed` match bit for bit.
    timm's `build_sincos2d_pos_embed` orders the columns differently, hence written here.
    """
    rows, cols = grid_size
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))
    row, col = torch.meshgrid(
        torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
        indexing="ij",
    )

    def half(position: Tensor) -> Tensor:
        angles = position.reshape(-1, 1) * omega  # [L, D/4]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([half(col), half(row)], dim=1).float().unsqueeze(0)  # [1, L, D]


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

    num_prefix_tokens = 1  # the class token leads the latent and passes through the decoder

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
        """[N, C, H, W] -> latent [N, 1 + Lv, D]: the class token, then the visible tokens."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]  # [N, L, D]
        x = gather_tokens(x, patch_mask.ids_keep)  # [N, Lv, D]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return self.norm(self.blocks(torch.cat([cls, x], dim=1)))  # [N, 1 + Lv, D]


class StageEmbed(PatchEmbed):
    """InfMAE / ConvMAE stage embedding: strided conv -> LayerNorm -> GELU, NCHW in and out.

    timm's PatchEmbed gives conv + norm (and the `proj` / `norm` key names); the GELU that
    InfMAE adds after the norm is the only extra.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__(None, patch_size, in_chans, embed_dim, norm_layer=ConvNorm,
                         flatten=False, output_fmt="NCHW", strict_img_size=False)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(super().forward(x))


class ConvBlock(nn.Module):
    """ConvMAE / InfMAE stage-1/2 block: LN -> 1x1 -> 5x5 depthwise -> 1x1, then a 1x1-conv MLP.

    timm has no such block, hence written here. The depthwise conv is the only operation that
    mixes positions; its input is multiplied by the visible map, so a visible position never
    reads a masked one. (InfMAE calls the depthwise conv `attn`; the loader maps the name.)
    """

    def __init__(self, dim: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = ConvNorm(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.dwconv = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.norm2 = ConvNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), use_conv=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, visible: Tensor | None = None) -> Tensor:
        """x: [N, C, h, w]; visible: [N, 1, h, w] (1 = visible) or None for unmasked input."""
        y = self.conv1(self.norm1(x))
        if visible is not None:
            y = y * visible
        x = x + self.drop_path(self.conv2(self.dwconv(y)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward_cells(self, x: Tensor, cells: VisibleCells) -> Tensor:
        """The same block on the visible cells only, channels last: [B, k, k, C] -> same, with
        B = N * Lv.

        Every operation but the depthwise conv is pointwise, so it runs on the gathered cells as
        matrix products with the 1x1 convs' weights; the depthwise conv runs on the map with
        zeros at masked positions, as in `forward`.
        """
        y = pointwise(self.conv1, layer_norm_last(self.norm1, x))
        y = cells.gather(self.dwconv(cells.scatter(y)))
        x = x + cells.drop_per_image(self.drop_path, pointwise(self.conv2, y))
        mlp = self.mlp
        hidden = mlp.drop1(mlp.act(pointwise(mlp.fc1, layer_norm_last(self.norm2, x))))
        branch = mlp.drop2(pointwise(mlp.fc2, mlp.norm(hidden)))
        return x + cells.drop_per_image(self.drop_path, branch)


def pointwise(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A 1x1 conv on channels-last input [..., C_in] as a matrix product -> [..., C_out]."""
    return F.linear(x, conv.weight.reshape(conv.out_channels, -1), conv.bias)


def layer_norm_last(norm: LayerNorm2d, x: Tensor) -> Tensor:
    """LayerNorm2d's parameters applied to channels-last input [..., C]."""
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def merge_cells(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A conv with kernel = stride = p on channels-last cells: [B, k, k, C] -> [B, k/p, k/p, D].

    Each output position reads one p x p block, so the conv is a matrix product on the blocks
    flattened in the weight's (C, p, p) order."""
    batch, size, _, chans = x.shape
    p = conv.kernel_size[0]
    blocks = x.reshape(batch, size // p, p, size // p, p, chans).permute(0, 1, 3, 5, 2, 4)
    blocks = blocks.reshape(batch, size // p, size // p, chans * p * p)
    return F.linear(blocks, conv.weight.reshape(conv.out_channels, -1), conv.bias)


def embed_cells(embed: StageEmbed, x: Tensor) -> Tensor:
    """A stage embedding (strided conv, LayerNorm, GELU) on channels-last cells."""
    return embed.act(layer_norm_last(embed.norm, merge_cells(embed.proj, x)))


class VisibleCells:
    """The k x k cells of a stage's map under the visible tokens, and the way back.

    A token of the final grid covers a k x k cell of stage 1 (k = 4) and of stage 2 (k = 2);
    a masked pretraining step only needs the cells of the Lv visible tokens. Shapes are fixed
    for a fixed mask ratio and nothing loops in Python, so torch.compile traces it once.
    """

    def __init__(self, ids_keep: Tensor, grid: tuple[int, int]) -> None:
        self.ids_keep = ids_keep  # [N, Lv]
        self.grid = grid  # (rows, cols) of the token grid

    def gather(self, x: Tensor) -> Tensor:
        """Map [N, C, rows*k, cols*k] -> the visible cells, channels last [N*Lv, k, k, C]."""
        n, chans, height, width = x.shape
        rows, cols = self.grid
        k = height // rows
        cells = x.permute(0, 2, 3, 1).reshape(n, rows, k, cols, k, chans)  # NHWC view
        cells = cells.permute(0, 1, 3, 2, 4, 5).reshape(n, rows * cols, k * k * chans)
        cells = gather_tokens(cells, self.ids_keep)  # [N, Lv, k*k*C]
        return cells.reshape(-1, k, k, chans)

    def scatter(self, cells: Tensor) -> Tensor:
        """Visible cells [N*Lv, k, k, C] -> map [N, C, rows*k, cols*k] (channels-last memory),
        zeros at masked cells."""
        n, visible = self.ids_keep.shape
        _, k, _, chans = cells.shape
        rows, cols = self.grid
        flat = cells.new_zeros(n, rows * cols, k * k * chans)
        index = self.ids_keep.unsqueeze(-1).expand(-1, -1, k * k * chans)
        flat = flat.scatter(1, index, cells.reshape(n, visible, -1))  # [N, L, k*k*C]
        flat = flat.reshape(n, rows, cols, k, k, chans).permute(0, 1, 3, 2, 4, 5)
        # Channels-last memory: the CPU depthwise conv (and its backward) is ~5x faster on it.
        return flat.reshape(n, rows * k, cols * k, chans).permute(0, 3, 1, 2)

    def drop_per_image(self, drop_path: nn.Module, branch: Tensor) -> Tensor:
        """Stochastic depth per image (not per cell): DropPath on an [N, Lv, ...] view."""
        if isinstance(drop_path, nn.Identity):
            return branch
        n = self.ids_keep.shape[0]
        return drop_path(branch.reshape(n, -1, *branch.shape[1:])).reshape(branch.shape)


class HierarchicalEncoder(nn.Module):
    """InfMAE's encoder: two masked conv stages (H/4, H/8), a ViT stage on visible tokens (H/16),
    and multi-scale fusion of the conv stages into the visible tokens.

    The architecture is InfMAE's / ConvMAE's exactly (stage embeddings conv -> LN -> GELU,
    `patch_embed4` after stage 3, their LayerNorm eps), so their released weights load (see
    `pretrain.models.reference`). Masked training: `forward(imgs, patch_mask)`. As a timm
    backbone: `forward_features`, `forward_intermediates` (F1 H/4, F2 H/8, F3 H/16,
    F4 = max-pool(F3) H/32) and a pooled classifier head.

    `stage3="fused"` (default): F3 and the features are the stage-3 tokens plus the fused conv
    stages, after the final norm, as in pretraining. `stage3="raw"`: ConvMAE's downstream form,
    the transformer blocks' output alone (no fusion, no final norm).
    """

    num_prefix_tokens = 0

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
        stage3: str = "fused",
    ) -> None:
        super().__init__()
        if stage3 not in STAGE3_FORMS:
            raise ValueError(f"stage3={stage3!r} is not one of {STAGE3_FORMS}")
        if isinstance(img_size, int):
            img_size = (img_size, img_size)
        dim1, dim2, dim3 = embed_dims
        patch1, patch2, patch3 = patch_sizes
        self.stage3 = stage3
        # Pretraining computes the conv stages at visible positions only; False: densely.
        self.sparse = True
        self.patch_sizes = tuple(patch_sizes)
        self.grid_size = (img_size[0] // (patch1 * patch2 * patch3),
                          img_size[1] // (patch1 * patch2 * patch3))
        rates = drop_path_rates(drop_path_rate, sum(depths))
        self.patch_embed1 = StageEmbed(patch1, in_chans, dim1)
        self.blocks1 = nn.ModuleList(ConvBlock(dim1, mlp_ratio, r) for r in rates[: depths[0]])
        self.patch_embed2 = StageEmbed(patch2, dim1, dim2)
        self.blocks2 = nn.ModuleList(
            ConvBlock(dim2, mlp_ratio, r) for r in rates[depths[0] : depths[0] + depths[1]]
        )
        self.patch_embed3 = StageEmbed(patch3, dim2, dim3)
        self.patch_embed4 = nn.Linear(dim3, dim3)
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
        init_patch_embed(self.patch_embed3)

    def _conv_stage(
        self, x: Tensor, embed: StageEmbed, blocks: nn.ModuleList, visible: Tensor | None
    ) -> Tensor:
        """Stage embedding + conv blocks; with a visible map, masked positions are zeroed on the
        way in and out of the stage, and inside each block before the depthwise conv (InfMAE
        zeroes only there; the other zeroings change no visible output)."""
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

    def _embed_tokens(self, stage2: Tensor) -> Tensor:
        """Stage-3 tokens [N, L, C3] of a stage-2 map: embedding (conv, LN, GELU), patch_embed4."""
        return self.patch_embed4(self.patch_embed3(stage2).flatten(2).transpose(1, 2))

    def _stages(self, imgs: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[int, int]]:
        """Unmasked: both conv stages, all tokens [N, L, C3] with positions, and the token grid."""
        stage1, stage2 = self._conv_stages(imgs, None)
        tokens = self._embed_tokens(stage2)  # [N, L, C3]
        patch3 = self.patch_sizes[2]
        grid = (stage2.shape[-2] // patch3, stage2.shape[-1] // patch3)
        return stage1, stage2, tokens + self._pos_embed(grid, tokens), grid

    def _fusion(self, stage1: Tensor, stage2: Tensor) -> Tensor:
        """Both conv stages projected to the token grid and summed: [N, L, C3]."""
        fused = self.stage1_fuse(stage1) + self.stage2_fuse(stage2)  # [N, C3, h, w]
        return fused.flatten(2).transpose(1, 2)

    def _sparse_stage(
        self, cells: Tensor, embed: StageEmbed, blocks: nn.ModuleList, visible: VisibleCells
    ) -> Tensor:
        """A conv stage on the visible cells only, channels last: [B, K, K, C_in] ->
        [B, K/p, K/p, C]. The embedding's kernel equals its stride and stays inside a token's
        cell; the blocks see, at every visible position, what the dense stage sees."""
        x = embed_cells(embed, cells)
        for block in blocks:
            x = block.forward_cells(x, visible)
        return x

    def _visible_cells(
        self, imgs: Tensor, patch_mask: PatchMask, grid: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """Stage-1 and stage-2 cells of the visible tokens, channels last: [N*Lv, 4, 4, C1] and
        [N*Lv, 2, 2, C2]."""
        visible = VisibleCells(patch_mask.ids_keep, grid)
        if not self.sparse:  # dense conv stages, masked positions zeroed (InfMAE's computation)
            stage1, stage2 = self._conv_stages(imgs, visible_grid(patch_mask, grid))
            return visible.gather(stage1), visible.gather(stage2)
        cells1 = self._sparse_stage(visible.gather(imgs), self.patch_embed1, self.blocks1, visible)
        return cells1, self._sparse_stage(cells1, self.patch_embed2, self.blocks2, visible)

    def forward_masked(self, imgs: Tensor, patch_mask: PatchMask) -> Tensor:
        """[N, C, H, W] -> visible-token latent [N, Lv, C3] after fusion and the final norm.

        With `sparse` (default) the conv stages compute only at the visible tokens' cells; the
        result equals the dense masked computation (`sparse = False`). Stage 3's embedding and
        the fusion convs (kernel = stride = the cell) run on the cells either way."""
        ids_keep = patch_mask.ids_keep  # [N, Lv]
        n, num_visible = ids_keep.shape
        grid = (imgs.shape[-2] // self.patch_size, imgs.shape[-1] // self.patch_size)
        cells1, cells2 = self._visible_cells(imgs, patch_mask, grid)  # [N*Lv, k, k, C1|C2]
        tokens = embed_cells(self.patch_embed3, cells2).reshape(n, num_visible, -1)
        tokens = self.patch_embed4(tokens)  # [N, Lv, C3]
        pos_embed = self._pos_embed(grid, tokens).expand(n, -1, -1)
        x = self.blocks3(tokens + gather_tokens(pos_embed, ids_keep).to(tokens.dtype))
        fused = merge_cells(self.stage1_fuse, cells1) + merge_cells(self.stage2_fuse, cells2)
        return self.norm(x + fused.reshape(n, num_visible, -1))

    @property
    def patch_size(self) -> int:
        return self.patch_sizes[0] * self.patch_sizes[1] * self.patch_sizes[2]

    def forward_features(self, imgs: Tensor) -> Tensor:
        """Unmasked tokens [N, L, C3] (downstream use), in the `stage3` form."""
        stage1, stage2, tokens, _ = self._stages(imgs)
        x = self.blocks3(tokens)
        if self.stage3 == "raw":
            return x
        return self.norm(x + self._fusion(stage1, stage2))

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
        """timm's feature API: F1..F4 at strides 4, 8, 16, 32 (NCHW). F3 is the stage-3 token map
        in the `stage3` form (default: fused with stages 1-2, then the final norm), so `norm`
        has no further effect."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: only 'NCHW' feature maps are provided")
        take_indices, _ = feature_take_indices(len(self.feature_info), indices)
        stage1, stage2, tokens, grid = self._stages(x)
        final = self.blocks3(tokens)  # [N, L, C3]
        if self.stage3 == "fused":
            final = self.norm(final + self._fusion(stage1, stage2))
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
