"""Named model configurations and the flags that reach every cell of the paper's ablations.

A `ModelConfig` is frozen and `asdict`-able: it goes into checkpoints, and
`create_model(**asdict(config))` rebuilds the same model. Encoder widths and depths left
as `None` are filled from the `size` preset of the chosen encoder, so switching
`encoder="vit"` on a hierarchical configuration (or back) gives a consistent model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from math import prod
from types import MappingProxyType
from typing import Any

from pretrain.models.pixels import IR_MEAN, IR_STD  # noqa: F401 - the configs' pixel scale

ENCODERS = ("vit", "hierarchical")
MASKINGS = ("entropy", "gray", "random")
DDG_FILTERS = ("highpass", "lowpass")
SIZES = ("tiny", "base", "large")


@dataclass(frozen=True)
class EncoderPreset:
    """Widths, depths and patch sizes of one encoder at one size."""

    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    patch_sizes: tuple[int, ...]
    num_heads: int


def encoder_preset(encoder: str, size: str) -> EncoderPreset:
    """Encoder shapes of the paper (base), ConvMAE/MAE (large) and small CPU-test ones (tiny)."""
    presets = {
        ("vit", "tiny"): EncoderPreset((64,), (2,), (16,), 4),
        ("vit", "base"): EncoderPreset((768,), (12,), (16,), 12),
        ("vit", "large"): EncoderPreset((1024,), (24,), (16,), 16),
        ("hierarchical", "tiny"): EncoderPreset((32, 48, 64), (1, 1, 2), (4, 2, 2), 4),
        ("hierarchical", "base"): EncoderPreset((256, 384, 768), (2, 2, 11), (4, 2, 2), 12),
        ("hierarchical", "large"): EncoderPreset((384, 768, 1024), (2, 2, 23), (4, 2, 2), 16),
    }
    if (encoder, size) not in presets:
        raise ValueError(
            f"no encoder preset for encoder={encoder!r}, size={size!r}; "
            f"choose encoder from {ENCODERS} and size from {SIZES}"
        )
    return presets[(encoder, size)]


@dataclass(frozen=True)
class ModelConfig:
    """Every switch of the model; one field per CLI option."""

    name: str = "custom"
    size: str = "base"  # tiny | base | large: the preset for fields left as None
    encoder: str = "hierarchical"  # vit (MAE) | hierarchical (InfMAE / DuGI-MAE)
    masking: str = "entropy"  # entropy (DuGI-MAE) | gray (InfMAE) | random (MAE)
    mask_ratio: float = 0.75
    ddg: bool = True  # Dual-Domain Guidance between encoder and decoder
    ddg_filter: str = "highpass"  # highpass (1 - H, the paper's stated intent) | lowpass (Eq. 3)
    ddg_depth: int = 2
    img_size: int | tuple[int, int] = 224
    in_chans: int = 1
    embed_dims: tuple[int, ...] | None = None  # per encoder stage; None: from the size preset
    depths: tuple[int, ...] | None = None
    patch_sizes: tuple[int, ...] | None = None
    num_heads: int | None = None  # heads of the transformer stage and of the DDG blocks
    mlp_ratio: float = 4.0
    decoder_dim: int = 512
    decoder_depth: int = 2
    decoder_heads: int = 16
    norm_pix_loss: bool = False
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        # Values read back from JSON arrive as lists: store tuples so the config stays hashable.
        for name in ("img_size", "embed_dims", "depths", "patch_sizes"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        _check_choice("encoder", self.encoder, ENCODERS)
        _check_choice("masking", self.masking, MASKINGS)
        _check_choice("ddg_filter", self.ddg_filter, DDG_FILTERS)
        _check_choice("size", self.size, SIZES)
        preset = encoder_preset(self.encoder, self.size)
        for name in ("embed_dims", "depths", "patch_sizes", "num_heads"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, getattr(preset, name))
        self._validate()

    @property
    def image_hw(self) -> tuple[int, int]:
        """Input height and width."""
        if isinstance(self.img_size, int):
            return (self.img_size, self.img_size)
        return (int(self.img_size[0]), int(self.img_size[1]))

    @property
    def patch_size(self) -> int:
        """Pixels per side of one token of the final grid (16 for every preset)."""
        return prod(self.patch_sizes)

    @property
    def grid_size(self) -> tuple[int, int]:
        """Token grid (rows, columns) of the final encoder stage."""
        height, width = self.image_hw
        return (height // self.patch_size, width // self.patch_size)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def encoder_dim(self) -> int:
        return self.embed_dims[-1]

    def _validate(self) -> None:
        stages = 1 if self.encoder == "vit" else 3
        for name in ("embed_dims", "depths", "patch_sizes"):
            if len(getattr(self, name)) != stages:
                raise ValueError(
                    f"{name}={getattr(self, name)} must have {stages} entries for "
                    f"encoder={self.encoder!r}; leave it unset to use the size preset"
                )
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={self.mask_ratio} must be in [0, 1)")
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans={self.in_chans} must be 1 (infrared) or 3 (grey replicated)")
        height, width = self.image_hw
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"img_size={self.img_size} must be a multiple of the patch size {self.patch_size}"
            )
        if self.encoder_dim % self.num_heads or self.decoder_dim % self.decoder_heads:
            raise ValueError(
                f"widths must divide by their heads: encoder {self.encoder_dim}/{self.num_heads}, "
                f"decoder {self.decoder_dim}/{self.decoder_heads}"
            )
        if self.encoder_dim % 4 or self.decoder_dim % 4:
            raise ValueError("encoder and decoder widths must be multiples of 4 (2-D sincos)")
        if self.ddg_depth < 1 or self.decoder_depth < 1 or min(self.depths) < 1:
            raise ValueError("ddg_depth, decoder_depth and every stage depth must be >= 1")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {choices}")


def _named_configs() -> dict[str, Mapping[str, Any]]:
    tiny = dict(size="tiny", img_size=64, decoder_dim=64, decoder_heads=4)
    base = dict(size="base")
    large = dict(size="large")
    configs: dict[str, dict[str, Any]] = {}
    for suffix, size in (("tiny", tiny), ("base", base), ("large", large)):
        # MAE: plain ViT/16, random masking, 8-block decoder (2 for the CPU-test size).
        configs[f"mae_vit_{suffix}"] = dict(
            size, encoder="vit", masking="random", ddg=False,
            decoder_depth=2 if suffix == "tiny" else 8,
        )
        # InfMAE: hierarchical encoder, grey-value masking, 2-block decoder.
        configs[f"infmae_{suffix}"] = dict(
            size, encoder="hierarchical", masking="gray", ddg=False,
            decoder_depth=1 if suffix == "tiny" else 2,
        )
        # DuGI-MAE: hierarchical encoder, entropy masking, DDG bridge, 2-block decoder.
        configs[f"dugi_mae_{suffix}"] = dict(
            size, encoder="hierarchical", masking="entropy", ddg=True,
            decoder_depth=1 if suffix == "tiny" else 2,
        )
    return {name: MappingProxyType(values) for name, values in configs.items()}


NAMED_CONFIGS: Mapping[str, Mapping[str, Any]] = MappingProxyType(_named_configs())
MODEL_NAMES: tuple[str, ...] = tuple(NAMED_CONFIGS)
CONFIG_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ModelConfig))


def build_config(name: str, **overrides: Any) -> ModelConfig:
    """The named configuration with any `ModelConfig` field overridden."""
    if name not in NAMED_CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    unknown = sorted(set(overrides) - set(CONFIG_FIELDS))
    if unknown:
        raise ValueError(f"unknown ModelConfig field(s) {unknown}; valid: {', '.join(CONFIG_FIELDS)}")
    values = {"name": name, **NAMED_CONFIGS[name], **overrides}
    return ModelConfig(**values)
