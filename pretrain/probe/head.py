"""The probe model: an exported encoder's multi-scale maps + a light FPN/UPerNet-style head.

    backbone = build_backbone(read_export("path/to/export"))      # weights loaded
    backbone = build_backbone(encoder_spec("scratch", "dugi_mae_tiny"))  # random init
    model = SegmentationProbe(backbone, num_classes=1)    # [N, 1, H, W] -> [N, 1, H, W] logits

Every encoder gives four maps at strides 4, 8, 16 and 32 (`EncoderMaps`), the paper's set:
a hierarchical encoder's stages F1-F3 and F4 = F3 max-pooled; a plain ViT's last block
through ViTDet's simple feature pyramid (deconvolutions to strides 4 and 8, the map itself,
max pooling to 32), so a ViT is not compared with four maps at one stride. The pyramid is
new and trains with the head, also when the encoder is frozen.

The head: torchvision's FeaturePyramidNetwork on the four maps, UPerNet's fusion (every
level upsampled to the finest, concatenated, one 3x3 conv), and optionally a full-resolution
detail branch of two 3x3 convs on the input. Small infrared targets are 1-10 px: the /4
maps alone cannot place their edges, and the detail branch gives the classifier the pixel
grid back; but it solves small targets whatever the encoder (a frozen random encoder does
well with it), so it is off by default and encoders are compared on their maps alone.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct, LayerNorm2d
from timm.models._features import FeatureInfo
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork

import pretrain.models  # noqa: F401  (registers dugi_mae_* / infmae_* with timm)

SCRATCH = "scratch"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# Arguments of config.json's model_args that describe a classifier, not the feature maps.
CLASSIFIER_ARGS = ("num_classes", "global_pool")
TARGET_PRIOR = 0.01  # initial target probability of every pixel (binary probes)


class ProbeModelError(ValueError):
    """The encoder cannot be built; the message says what to pass instead."""


@dataclass(frozen=True)
class EncoderSpec:
    """How to build an encoder: timm architecture + arguments, and the weights file if any."""

    architecture: str
    model_args: tuple[tuple[str, Any], ...]
    weights: Path | None  # None: random initialisation (scratch)

    @property
    def label(self) -> str:
        return "scratch" if self.weights is None else "pretrained"


def read_export(export_dir: Path | str) -> EncoderSpec:
    """The architecture and weights of an `inf590k export` folder."""
    folder = Path(export_dir)
    config_file, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_file.is_file() or not weights.is_file():
        raise ProbeModelError(
            f"{folder} lacks {CONFIG_FILE} or {WEIGHTS_FILE}: pass the folder written by "
            f"`inf590k export CKPT --out DIR`, or --encoder scratch"
        )
    config = json.loads(config_file.read_text())
    if "architecture" not in config:
        raise ProbeModelError(f"{config_file} names no 'architecture': re-export the checkpoint")
    args = {k: v for k, v in config.get("model_args", {}).items() if k not in CLASSIFIER_ARGS}
    return EncoderSpec(config["architecture"], tuple(sorted(args.items())), weights)


def scratch_like(spec: EncoderSpec) -> EncoderSpec:
    """The same architecture with random weights: the baseline of pretrained vs. scratch."""
    return EncoderSpec(spec.architecture, spec.model_args, None)


def encoder_spec(encoder: str, architecture: str) -> EncoderSpec:
    """`--encoder scratch` builds `architecture`; anything else is an export folder."""
    if encoder == SCRATCH:
        if architecture not in timm.list_models():
            raise ProbeModelError(
                f"unknown architecture {architecture!r}: use a timm model name such as "
                f"dugi_mae_tiny, dugi_mae_base or infmae_base"
            )
        return EncoderSpec(architecture, (), None)
    return read_export(encoder)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid: a plain ViT's stride-16 map [N, D, h, w] to maps at
    strides 4 (D/4 channels), 8 (D/2), 16 (D) and 32 (D), by deconvolutions and pooling."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        half, quarter = dim // 2, dim // 4
        self.stride4 = nn.Sequential(
            nn.ConvTranspose2d(dim, half, 2, stride=2), LayerNorm2d(half), nn.GELU(),
            nn.ConvTranspose2d(half, quarter, 2, stride=2),
        )
        self.stride8 = nn.ConvTranspose2d(dim, half, 2, stride=2)
        self.stride32 = nn.MaxPool2d(2)
        self.channels = [quarter, half, dim, dim]

    def forward(self, x: Tensor) -> list[Tensor]:
        return [self.stride4(x), self.stride8(x), x, self.stride32(x)]


class EncoderMaps(nn.Module):
    """An encoder's maps at strides 4, 8, 16, 32 (see the module docstring); `feature_info`
    as timm's. `freeze_encoder()` stops the encoder (weights and norm statistics) while a
    ViT's pyramid keeps training."""

    def __init__(self, encoder: nn.Module, pyramid: SimpleFeaturePyramid | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.pyramid = pyramid
        if pyramid is None:
            info = [dict(i) for i in encoder.feature_info.get_dicts()]
        else:
            info = [dict(num_chs=c, reduction=r, module=f"pyramid.{i}")
                    for i, (c, r) in enumerate(zip(pyramid.channels, (4, 8, 16, 32), strict=True))]
        self.feature_info = FeatureInfo(info, tuple(range(len(info))))

    @property
    def encoder_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.encoder.parameters())

    def freeze_encoder(self) -> None:
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> EncoderMaps:
        super().train(mode)
        if mode and self.encoder_frozen:
            self.encoder.eval()
        return self

    def forward(self, images: Tensor) -> list[Tensor]:
        maps = self.encoder(images)
        return maps if self.pyramid is None else self.pyramid(maps[-1])


def is_plain_vit(spec: EncoderSpec) -> bool:
    return isinstance(dict(spec.model_args).get("depth"), int)


def build_backbone(spec: EncoderSpec) -> EncoderMaps:
    """The four maps of `spec`'s encoder, its weights loaded from the export if any."""
    kwargs: dict[str, Any] = dict(spec.model_args, features_only=True)
    plain_vit = is_plain_vit(spec)
    if plain_vit:  # the last block's map, for the simple feature pyramid
        kwargs["out_indices"] = (kwargs["depth"] - 1,)
        kwargs["dynamic_img_size"] = True  # position embeddings resampled to the probe's size
    if spec.weights is not None:
        # input_size tells timm the weights' channel count (a 3-channel default would warn)
        size = kwargs.get("img_size", 224)
        height, width = (size, size) if isinstance(size, int) else size
        overlay = dict(file=str(spec.weights), input_size=(kwargs.get("in_chans", 1), height, width))
        kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
    try:
        encoder = timm.create_model(spec.architecture, **kwargs)
    except RuntimeError as error:  # a state dict that does not fit the architecture
        raise ProbeModelError(
            f"cannot load {spec.weights} into {spec.architecture}: {error}. "
            f"Re-export the checkpoint with `inf590k export`"
        ) from error
    pyramid = SimpleFeaturePyramid(encoder.feature_info.channels()[-1]) if plain_vit else None
    return EncoderMaps(encoder, pyramid)


class FusionHead(nn.Module):
    """FPN top-down pathway + UPerNet-style fusion of all levels at the finest one."""

    def __init__(self, in_channels: list[int], dim: int) -> None:
        super().__init__()
        self.fpn = FeaturePyramidNetwork(in_channels, dim)
        self.fuse = ConvNormAct(dim * len(in_channels), dim, 3)

    def forward(self, maps: list[Tensor]) -> Tensor:
        pyramid = self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))
        levels = list(pyramid.values())  # each [N, dim, h_i, w_i]
        size = max((level.shape[-2:] for level in levels), key=lambda hw: hw[0] * hw[1])
        upsampled = [F.interpolate(level, size=size, mode="bilinear", align_corners=False)
                     if level.shape[-2:] != size else level for level in levels]
        return self.fuse(torch.cat(upsampled, dim=1))  # [N, dim, h_0, w_0]


class SegmentationProbe(nn.Module):
    """Encoder maps -> fused features -> + full-resolution detail -> per-pixel logits."""

    def __init__(self, backbone: EncoderMaps, num_classes: int, in_chans: int = 1,
                 head_dim: int = 64, detail_dim: int = 16, detail: bool = False) -> None:
        super().__init__()
        if num_classes < 1:
            raise ProbeModelError(f"num_classes={num_classes}: use 1 (binary) or the class count")
        self.backbone = backbone
        self.head = FusionHead(list(backbone.feature_info.channels()), head_dim)
        # Projected before upsampling: the full-resolution layers stay detail_dim wide.
        self.project = nn.Conv2d(head_dim, detail_dim, 1)
        # Without the detail branch every pixel decision comes from the encoder's maps: a
        # stricter test of the features (a frozen random encoder gets further with it).
        self.detail = nn.Sequential(
            ConvNormAct(in_chans, detail_dim, 3), ConvNormAct(detail_dim, detail_dim, 3)
        ) if detail else None
        self.classifier = nn.Sequential(
            ConvNormAct(detail_dim, detail_dim, 3), nn.Conv2d(detail_dim, num_classes, 1)
        )
        if num_classes == 1:
            # Targets cover ~0.1% of the pixels: start every pixel at a 1% target prior
            # (as RetinaNet does) instead of 50%, or the first hundreds of steps only learn
            # that the background is background.
            nn.init.constant_(self.classifier[-1].bias, -math.log((1 - TARGET_PRIOR) / TARGET_PRIOR))

    def freeze_backbone(self) -> None:
        """Only the head (and a ViT's pyramid) trains; the encoder stays in eval mode (its norms
        keep their statistics)."""
        self.backbone.freeze_encoder()

    def forward(self, images: Tensor) -> Tensor:
        fused = self.project(self.head(self.backbone(images)))  # [N, detail_dim, H/r, W/r]
        fused = F.interpolate(fused, size=images.shape[-2:], mode="bilinear", align_corners=False)
        if self.detail is not None:
            fused = fused + self.detail(images)  # [N, detail_dim, H, W]
        return self.classifier(fused)  # [N, num_classes, H, W]
