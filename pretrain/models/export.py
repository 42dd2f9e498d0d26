"""Encoder export (safetensors + timm config.json) and the timm registration of our encoders.

After `import pretrain`, the hierarchical encoders are timm models:

    timm.create_model("dugi_mae_base", pretrained=True,
                      pretrained_cfg_overlay=dict(file=path), features_only=True)

gives the four maps at H/4, H/8, H/16, H/32 for an FPN; its `pretrained_cfg` takes the
licence, input size and normalisation the export's config.json beside `path` records. A
plain-ViT export loads into timm's own VisionTransformer (whose entry point does not read
config.json: pass `license` in the overlay, or use `local-dir:`):

    timm.create_model("vit_base_patch16_224", pretrained=True,
                      pretrained_cfg_overlay=dict(file=path), in_chans=1, num_classes=0)

The export folder (model.safetensors + config.json) also loads with
`timm.create_model("local-dir:" + folder, pretrained=True)`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from types import MappingProxyType
from typing import Any

from safetensors.torch import save_file
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from pretrain.models.configs import IR_MEAN, IR_STD, ModelConfig, encoder_preset
from pretrain.models.encoders import STAGE3_FORMS, HierarchicalEncoder
from pretrain.models.mae import MaskedAutoencoder

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# timm ViT each plain-encoder size loads into (tiny: the base entry point with smaller args).
VIT_ARCHITECTURES = MappingProxyType(
    {"tiny": "vit_base_patch16_224", "base": "vit_base_patch16_224",
     "large": "vit_large_patch16_224"}
)


def _pretrained_cfg(in_chans: int = 1, img_size: int = 224) -> dict[str, Any]:
    return dict(
        url="",
        num_classes=0,
        input_size=(in_chans, img_size, img_size),
        pool_size=None,
        crop_pct=1.0,
        interpolation="bicubic",
        mean=(IR_MEAN,) * in_chans,
        std=(IR_STD,) * in_chans,
        first_conv="patch_embed1.proj",
        classifier="head",
        license="unknown",  # no weights ship with the architectures themselves
    )


# timm reads the pretrained configs of registered models from this module-level name.
default_cfgs = generate_default_cfgs(
    {
        f"{family}_{size}": _pretrained_cfg(img_size=64 if size == "tiny" else 224)
        for family in ("dugi_mae", "infmae")
        for size in ("tiny", "base", "large")
    }
)


# pretrained_cfg keys an export's config.json gives a model loaded from its weights file.
EXPORT_CFG_KEYS = ("license", "input_size", "mean", "std", "interpolation", "crop_pct")


def export_cfg_overlay(weights_file: str | Path) -> dict[str, Any]:
    """What the export beside `weights_file` records about its weights (licence, input size,
    normalisation), from its config.json; {} when the file is not in an export of ours."""
    config_path = Path(weights_file).parent / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(config, dict) or "pretraining_config" not in config:
        return {}
    recorded = config.get("pretrained_cfg")
    if not isinstance(recorded, dict):
        return {}
    return {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in recorded.items()
        if key in EXPORT_CFG_KEYS
    }


def _with_export_cfg(pretrained: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`pretrained_cfg_overlay=dict(file=WEIGHTS)` of an export: its recorded licence (and
    size, normalisation) join the overlay, so `pretrained_cfg` describes those weights, not
    the bare architecture; keys the caller gives win."""
    overlay = kwargs.get("pretrained_cfg_overlay")
    if not pretrained or not isinstance(overlay, dict) or not overlay.get("file"):
        return kwargs
    return dict(kwargs, pretrained_cfg_overlay={**export_cfg_overlay(overlay["file"]), **overlay})


def _create_hierarchical(variant: str, pretrained: bool, **kwargs: Any) -> HierarchicalEncoder:
    kwargs = _with_export_cfg(pretrained, kwargs)
    size = variant.rsplit("_", 1)[-1]
    preset = encoder_preset("hierarchical", size)
    model_args: dict[str, Any] = dict(
        embed_dims=preset.embed_dims,
        depths=preset.depths,
        patch_sizes=preset.patch_sizes,
        num_heads=preset.num_heads,
        img_size=64 if size == "tiny" else 224,
    )
    return build_model_with_cfg(
        HierarchicalEncoder,
        variant,
        pretrained,
        feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)),
        **dict(model_args, **kwargs),
    )


@register_model
def dugi_mae_tiny(pretrained: bool = False, **kwargs: Any) -> HierarchicalEncoder:
    return _create_hierarchical("dugi_mae_tiny", pretrained, **kwargs)


@register_model
def dugi_mae_base(pretrained: bool = False, **kwargs: Any) -> HierarchicalEncoder:
    return _create_hierarchical("dugi_mae_base", pretrained, **kwargs)


@register_model
def dugi_mae_large(pretrained: bool = False, **kwargs: Any) -> HierarchicalEncoder:
    return _create_hierarchical("dugi_mae_large", pretrained, **kwargs)


@register_model
def infmae_tiny(pretrained: bool = False, **kwargs: Any) -> HierarchicalEncoder:
    return _create_hierarchical("infmae_tiny", pretrained, **kwargs)


@register_model
def infmae_base(pretrained: bool = False, **kwargs: Any) -> HierarchicalEncoder:
    return _create_hierarchical("infmae_base", pretrained, **kwargs)


@register_model
def infmae_large(pretrained: bool = False, **kwargs: Any) -> HierarchicalEncoder:
    return _create_hierarchical("infmae_large", pretrained, **kwargs)


def feature_lines(config: ModelConfig | dict[str, Any], stage3: str = "fused") -> list[str]:
    """What the exported encoder's outputs hold, for the export's model card."""
    encoder = config.encoder if isinstance(config, ModelConfig) else config.get("encoder")
    if encoder == "vit":
        return [
            "`forward_features`: the class token and the patch tokens after the final norm "
            "(timm VisionTransformer).",
        ]
    f3 = (
        "F3 (H/16) is the stage-3 token map fused with stages 1 and 2 (strided convs, summed) "
        "and then the final LayerNorm: the latent pretraining trained."
        if stage3 == "fused"
        else "F3 (H/16) is the raw output of the stage-3 transformer blocks, without the fusion "
        "of stages 1-2 and without the final norm (ConvMAE's downstream form)."
    )
    return [
        "`features_only=True`: F1 (H/4) and F2 (H/8) are the conv stages' outputs; " + f3,
        "F4 (H/32) is F3 max-pooled by 2. `forward_features` returns F3's tokens [N, L, C].",
    ]


def loading_lines(architecture: str, folder: str | Path) -> list[str]:
    """The export card's Python snippet: load the weights in `folder` (timm `architecture`)
    the way the README shows it, and read their licence back from `pretrained_cfg`."""
    folder = Path(folder).as_posix()
    if architecture.startswith("vit_"):  # timm's own ViT: `local-dir:` reads config.json
        return [
            "```python",
            "import timm",
            "",
            f'encoder = timm.create_model("local-dir:{folder}", pretrained=True)',
            'print(encoder.pretrained_cfg["license"])  # the weights\' licence, from config.json',
            "tokens = encoder.forward_features(images)  # [N, 1, H, W] -> [N, 1 + L, C]",
            "```",
        ]
    return [
        "```python",
        "import timm",
        "",
        "import pretrain  # from the inf590k toolkit: registers the DuGI-MAE encoders with timm",
        "",
        f'backbone = timm.create_model("{architecture}", pretrained=True, features_only=True,',
        f'                             pretrained_cfg_overlay=dict(file="{folder}/{WEIGHTS_FILE}"))',
        'print(backbone.pretrained_cfg["license"])  # the weights\' licence, from config.json',
        "features = backbone(images)  # [N, 1, H, W] -> 4 maps at H/4, H/8, H/16, H/32",
        "```",
    ]


def timm_architecture(config: ModelConfig) -> tuple[str, dict[str, Any]]:
    """The timm model name an encoder export loads into, and the arguments that fit it."""
    height, width = config.image_hw
    img_size: int | list[int] = height if height == width else [height, width]
    if config.encoder == "vit":
        return VIT_ARCHITECTURES[config.size], dict(
            img_size=img_size,
            patch_size=config.patch_size,
            in_chans=config.in_chans,
            embed_dim=config.encoder_dim,
            depth=config.depths[0],
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            num_classes=0,
        )
    family = "dugi_mae" if config.ddg else "infmae"
    return f"{family}_{config.size}", dict(
        img_size=img_size,
        in_chans=config.in_chans,
        embed_dims=list(config.embed_dims),
        depths=list(config.depths),
        patch_sizes=list(config.patch_sizes),
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        num_classes=0,
    )


def timm_config(
    config: ModelConfig, stage3: str = "fused", license: str = "unknown"
) -> dict[str, Any]:
    """config.json in the layout timm reads for `hf-hub:` and `local-dir:` models.

    `license` is the weights' licence, derived from the training data (never assumed)."""
    architecture, model_args = timm_architecture(config)
    if config.encoder != "vit":
        model_args["stage3"] = stage3
    height, width = config.image_hw
    first_conv = "patch_embed.proj" if config.encoder == "vit" else "patch_embed1.proj"
    return dict(
        architecture=architecture,
        num_classes=0,
        num_features=config.encoder_dim,
        model_args=model_args,
        pretrained_cfg=dict(
            input_size=[config.in_chans, height, width],
            interpolation="bicubic",
            crop_pct=1.0,
            mean=[IR_MEAN] * config.in_chans,
            std=[IR_STD] * config.in_chans,
            num_classes=0,
            first_conv=first_conv,
            classifier="head",
            license=license,
        ),
        pretraining_config=asdict(config),
    )


EXPORT_FILES = (WEIGHTS_FILE, CONFIG_FILE, "README.md")


def is_export(folder: Path) -> bool:
    """Whether `folder` holds an export written by this toolkit (its config.json says so)."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "pretraining_config" in config


def check_export_folder(out: Path) -> None:
    """Refuse an --out that holds anything but an earlier export: never overwrite a user's files."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: pass a folder for the export")
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not present or (is_export(out) and set(present) <= set(EXPORT_FILES)):
        return
    foreign = [name for name in present if name not in EXPORT_FILES] or present
    raise ValueError(
        f"--out {out} holds files that are not an export of this toolkit (e.g. {foreign[0]}): "
        "choose a new or empty folder"
    )


def unwrap_model(model: nn.Module) -> MaskedAutoencoder:
    """The MaskedAutoencoder inside DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while not isinstance(model, MaskedAutoencoder):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise TypeError(
                f"expected a MaskedAutoencoder (from pretrain.models.create_model), "
                f"got {type(model).__name__}"
            )
        model = inner
    return model


def export_encoder(
    model: nn.Module, out_dir: str | Path, stage3: str = "fused", license: str = "unknown"
) -> Path:
    """Write the encoder weights (model.safetensors) and timm's config.json; returns the weights.

    `stage3` (hierarchical encoders): "fused" (default, F3 as in pretraining) or "raw"
    (ConvMAE's downstream form: stage-3 blocks' output, no fusion, no final norm). `license`:
    the weights' licence, derived from the training data (never assumed)."""
    if stage3 not in STAGE3_FORMS:
        raise ValueError(f"stage3={stage3!r} is not one of {STAGE3_FORMS}")
    mae = unwrap_model(model)
    out = Path(out_dir)
    check_export_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        name: tensor.detach().to("cpu").contiguous()
        for name, tensor in mae.encoder.state_dict().items()
    }
    config = timm_config(mae.config, stage3, license)
    weights = out / WEIGHTS_FILE
    # One metadata key: safetensors writes its metadata map in a random order, and the
    # architecture is in config.json anyway; so a re-export is byte-identical.
    save_file(state, str(weights), metadata={"format": "pt"})
    umask = os.umask(0)  # safetensors writes 0600: give it the mode of every other output
    os.umask(umask)
    os.chmod(weights, 0o666 & ~umask)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return weights
