"""Load the released InfMAE, ConvMAE, MAE and UNIP checkpoints into our models.

    model = load_reference_checkpoint("infmae_pretrain.pth", "infmae", in_chans=1)
    model = load_reference_checkpoint("mae_pretrain_vit_base_full.pth", "mae", masking="entropy")
    model = load_reference_checkpoint("unip_vit_small.pth", "unip", in_chans=1)

The `.pth` files are read as released (a dict holding the state dict under `model`, often
beside the training run's `args`) with `torch.load(weights_only=True)`, argparse's Namespace
and pathlib's paths allowed; a safetensors file or a state dict in memory works too. The
configuration is inferred from the tensor shapes (widths, depths, patch sizes, MLP ratio,
decoder width and depth, input size). Attention heads leave no trace in the shapes: they are
read from the file where it says them (`num_heads` / `decoder_num_heads` in its `args` or
`config` entry, or a model name such as `mae_vit_large_patch16` whose size has the
checkpoint's width); else a released width (192, 384, 768, 1024, 1280) gives its released
head count; any other width needs `num_heads` (and `decoder_heads`) passed, never a guess.
Any other `ModelConfig` field can be overridden: e.g. `masking="entropy", ddg=True` continues
InfMAE's weights as DuGI-MAE, the DDG bridge starting fresh.

UNIP (casiatao/UNIP) releases distilled plain ViTs (UNIP-T/S/B: 192/384/768 wide, 12 blocks,
MAE's key names, 3 input channels) as encoder-only state dicts: kind `unip` fills our ViT
encoder and leaves the decoder fresh. UNIP distils its last block with the teacher's head
count (`last_heads`); its downstream code, like ours, splits every block into the model's
standard heads. MAE's encoder-only release (`mae_pretrain_vit_base.pth`) has the same layout
and loads the same way.

Key names: ours differ in a few places (`stageN_output_decode` -> `stageN_fuse`, the depthwise
conv `attn` -> `dwconv`, the decoder's `decoder_*` -> `decoder.*`). InfMAE's extra
`patch_embed` (a 16x16 conv used only to order patches for its grey masking, never part of
the encoder output) is dropped: our grey masking orders patches by their pixel values.
The fixed sin-cos `pos_embed` tensors are taken from the checkpoint (MAE's column order,
which ours follows).

`in_chans=1` on a 3-channel checkpoint sums the first conv over its input channels (exact on
grey input replicated to 3 channels) and averages the decoder's three per-pixel outputs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from pretrain.models.configs import ModelConfig
from pretrain.models.export import export_encoder, feature_lines
from pretrain.models.mae import MaskedAutoencoder
from pretrain.models.released import (
    ENCODER_ONLY_KINDS,
    REFERENCE_KINDS,
    ReferenceCheckpoint,
    ReferenceCheckpointError,
    has_decoder,
    read_reference,
    reference_kind,
)

# Attention heads of the released transformer widths: 64-wide heads, 80-wide at ViT-H.
RELEASED_HEADS = MappingProxyType({192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16})
RELEASED_DECODER_HEADS = MappingProxyType({512: 16})  # MAE / ConvMAE / InfMAE decoders
# Size words of released model names (`mae_vit_large_patch16`, `unip_vit_small_patch16`):
# their transformer width and heads.
SIZE_WIDTH_HEADS = MappingProxyType(
    {
        "tiny": (192, 3),
        "small": (384, 6),
        "base": (768, 12),
        "large": (1024, 16),
        "huge": (1280, 16),
    }
)
# InfMAE's 16x16 ordering conv for its grey masking: not part of the encoder, not loaded.
DROPPED_KEYS = {"infmae": ("patch_embed.proj.weight", "patch_embed.proj.bias")}
_DECODER_RENAMES = (
    ("decoder_embed.", "decoder.embed."),
    ("decoder_blocks.", "decoder.blocks."),
    ("decoder_norm.", "decoder.norm."),
    ("decoder_pred.", "decoder.head."),
)
_HIERARCHICAL_RENAMES = (
    ("stage1_output_decode.", "stage1_fuse."),
    ("stage2_output_decode.", "stage2_fuse."),
)
_DWCONV = re.compile(r"^(blocks[12]\.\d+)\.attn\.")


def map_reference_key(key: str, kind: str) -> str | None:
    """Our state-dict name of a reference key; None for a key that is deliberately dropped."""
    _check_kind(kind)
    if key in DROPPED_KEYS.get(kind, ()):
        return None
    if key == "mask_token":
        return "decoder.mask_token"
    if key == "decoder_pos_embed":
        return "decoder.pos_embed"
    for theirs, ours in _DECODER_RENAMES:
        if key.startswith(theirs):
            return ours + key[len(theirs) :]
    if kind not in ("mae", "unip"):
        for theirs, ours in _HIERARCHICAL_RENAMES:
            if key.startswith(theirs):
                key = ours + key[len(theirs) :]
        key = _DWCONV.sub(r"\1.dwconv.", key)
    return "encoder." + key


def _check_kind(kind: str) -> None:
    if kind not in REFERENCE_KINDS:
        raise ValueError(f"kind={kind!r} is not one of {REFERENCE_KINDS}")


def _count(state: Mapping[str, Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for key in state if (m := regex.match(key))})


def _shape(state: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise ReferenceCheckpointError(f"missing key {key!r}: is this the right --init-kind?")
    return tuple(state[key].shape)


def _declared(metadata: Mapping[str, Any], name: str) -> int | None:
    value = metadata.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _named_heads(metadata: Mapping[str, Any], width: int) -> int | None:
    """Heads of a released model name in the metadata (`model`, `arch`), when its size word
    (tiny ... huge) has the checkpoint's width; a name of another width says nothing."""
    for entry in ("model", "arch", "model_name"):
        name = metadata.get(entry)
        if not isinstance(name, str):
            continue
        for word in re.split(r"[_\-.]", name.lower()):
            size = SIZE_WIDTH_HEADS.get(word)
            if size is not None and size[0] == width:
                return size[1]
    return None


def encoder_heads(width: int, num_heads: int | None, metadata: Mapping[str, Any]) -> int:
    """The encoder's attention heads: `num_heads`, else what the checkpoint says, else the
    released head count of its width; any other width is an error that says what to pass."""
    declared = _declared(metadata, "num_heads") or _named_heads(metadata, width)
    if num_heads is not None:
        if declared is not None and declared != num_heads:
            raise ReferenceCheckpointError(
                f"num_heads={num_heads}, but the checkpoint says {declared} heads: drop num_heads"
            )
        heads = num_heads
    elif declared is not None:
        heads = declared
    elif width in RELEASED_HEADS:
        heads = RELEASED_HEADS[width]
    else:
        raise ReferenceCheckpointError(
            f"the checkpoint's transformer is {width} wide, not a released width "
            f"({', '.join(map(str, RELEASED_HEADS))}), and it does not say its attention heads: "
            f"pass num_heads (--num-heads), the head count of the model that wrote it"
        )
    if width % heads:
        raise ReferenceCheckpointError(f"num_heads={heads} does not divide the width {width}")
    return heads


def decoder_heads(width: int, metadata: Mapping[str, Any]) -> int | None:
    """The decoder's heads where the checkpoint says them or its width is a released one."""
    return _declared(metadata, "decoder_num_heads") or RELEASED_DECODER_HEADS.get(width)


def _encoder_only_values(state: Mapping[str, Tensor]) -> tuple[dict[str, Any], int, int]:
    """ViT shapes of an encoder-only checkpoint (UNIP); the decoder is MAE's, fresh."""
    dim, ckpt_chans, patch, _ = _shape(state, "patch_embed.proj.weight")
    values = dict(
        encoder="vit",
        masking="random",
        embed_dims=(dim,),
        depths=(_count(state, r"^blocks\.(\d+)\."),),
        patch_sizes=(patch,),
        mlp_ratio=_shape(state, "blocks.0.mlp.fc1.weight")[0] / dim,
        decoder_dim=512,
        decoder_depth=8,
        decoder_heads=16,
    )
    return values, ckpt_chans, _shape(state, "pos_embed")[1] - 1


def infer_config(
    state: Mapping[str, Tensor],
    kind: str,
    num_heads: int | None = None,
    in_chans: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> ModelConfig:
    """The ModelConfig the checkpoint's tensor shapes describe, with `overrides` applied;
    `metadata` is what the file says about its run (heads are read from it)."""
    _check_kind(kind)
    metadata = metadata or {}
    found = reference_kind(state)  # not a reference checkpoint at all: says so
    if kind not in ENCODER_ONLY_KINDS and not has_decoder(state):
        raise ReferenceCheckpointError(
            "this holds an encoder only (an `inf590k export`, a timm model or an encoder-only "
            "release), not a released InfMAE/ConvMAE/MAE pretraining checkpoint: pass the .pth "
            "of the pretraining model, or kind 'unip' for a plain ViT encoder"
        )
    if found != kind:
        article = "an" if found[0] in "aeiou" else "a"
        raise ReferenceCheckpointError(
            f"by its keys this is {article} {found} checkpoint, not {kind}: pass kind {found!r}"
        )
    if kind in ENCODER_ONLY_KINDS:
        values, ckpt_chans, num_tokens = _encoder_only_values(state)
        patches: tuple[int, ...] = values["patch_sizes"]
    elif kind == "mae":
        dim, _, patch, _ = _shape(state, "patch_embed.proj.weight")
        dims, depths, patches = (dim,), (_count(state, r"^blocks\.(\d+)\."),), (patch,)
        mlp_hidden = _shape(state, "blocks.0.mlp.fc1.weight")[0]
        ckpt_chans = _shape(state, "patch_embed.proj.weight")[1]
        num_tokens = _shape(state, "pos_embed")[1] - 1
        values = dict(
            encoder="vit",
            masking="random",
            embed_dims=dims,
            depths=depths,
            patch_sizes=patches,
            mlp_ratio=mlp_hidden / dims[-1],
        )
    else:
        shapes = [_shape(state, f"patch_embed{i}.proj.weight") for i in (1, 2, 3)]
        dims = tuple(s[0] for s in shapes)
        patches = tuple(s[-1] for s in shapes)
        depths = tuple(_count(state, rf"^blocks{i}\.(\d+)\.") for i in (1, 2, 3))
        mlp_hidden = _shape(state, "blocks3.0.mlp.fc1.weight")[0]
        if _shape(state, "blocks1.0.mlp.fc1.weight")[0] * dims[2] != mlp_hidden * dims[0]:
            raise ReferenceCheckpointError("conv and transformer stages have different MLP ratios")
        ckpt_chans = shapes[0][1]
        num_tokens = _shape(state, "pos_embed")[1]
        values = dict(
            encoder="hierarchical",
            masking="gray" if kind == "infmae" else "random",
            embed_dims=dims,
            depths=depths,
            patch_sizes=patches,
            mlp_ratio=mlp_hidden / dims[-1],
        )
    side = round(num_tokens**0.5)
    if side * side != num_tokens:
        raise ReferenceCheckpointError(f"pos_embed has {num_tokens} tokens: not a square grid")
    if kind not in ENCODER_ONLY_KINDS:
        decoder_dim = _shape(state, "decoder_embed.weight")[0]
        values.update(
            decoder_dim=decoder_dim,
            decoder_depth=_count(state, r"^decoder_blocks\.(\d+)\."),
            decoder_heads=decoder_heads(decoder_dim, metadata),
        )
    values.update(
        name=f"{kind}_reference",
        ddg=False,
        img_size=side * patches[0] * (patches[1] * patches[2] if len(patches) == 3 else 1),
        in_chans=ckpt_chans if in_chans is None else in_chans,
    )
    values.update(overrides)
    if values["in_chans"] not in (ckpt_chans, 1):
        raise ReferenceCheckpointError(
            f"in_chans={values['in_chans']}: the checkpoint has {ckpt_chans} input channels; "
            f"load it with in_chans={ckpt_chans} or 1"
        )
    values["num_heads"] = encoder_heads(values["embed_dims"][-1], num_heads, metadata)
    if values["decoder_heads"] is None:
        raise ReferenceCheckpointError(
            f"the checkpoint's decoder is {values['decoder_dim']} wide, not a released width "
            f"({', '.join(map(str, RELEASED_DECODER_HEADS))}), and it does not say its heads: "
            f"pass decoder_heads, the decoder head count of the model that wrote it"
        )
    return ModelConfig(**values)


def _to_one_channel(our_key: str, tensor: Tensor, config: ModelConfig) -> Tensor:
    """3-channel weights as 1-channel ones: first conv summed, pixel head averaged."""
    if our_key in ("encoder.patch_embed1.proj.weight", "encoder.patch_embed.proj.weight"):
        return tensor.sum(dim=1, keepdim=True)  # [D, 3, p, p] -> [D, 1, p, p]
    if our_key.startswith("decoder.head."):
        pixels = config.patch_size**2
        return tensor.reshape(pixels, 3, *tensor.shape[1:]).mean(dim=1)  # channels last
    return tensor


def convert_state(state: Mapping[str, Tensor], kind: str, config: ModelConfig) -> dict[str, Tensor]:
    """The reference state under our names (dropped keys removed, channels converted)."""
    plain = kind in ("mae", *ENCODER_ONLY_KINDS)
    ckpt_chans = state["patch_embed.proj.weight" if plain else "patch_embed1.proj.weight"].shape[1]
    converted = {}
    for key, tensor in state.items():
        ours = map_reference_key(key, kind)
        if ours is None:
            continue
        if config.in_chans == 1 and ckpt_chans == 3:
            tensor = _to_one_channel(ours, tensor, config)
        converted[ours] = tensor
    return converted


def expected_keys(model: MaskedAutoencoder, kind: str = "infmae") -> set[str]:
    """Every tensor of ours a reference checkpoint fills: parameters and buffers (the fixed
    position embeddings included), without the DDG bridge, which starts fresh (nor the
    decoder, for an encoder-only kind)."""
    fresh = ("ddg.", "decoder.") if kind in ENCODER_ONLY_KINDS else ("ddg.",)
    names = {name for name, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    return {name for name in names if not name.startswith(fresh)}


def load_reference_checkpoint(
    source: str | Path | Mapping[str, Any] | ReferenceCheckpoint,
    kind: str | None,
    num_heads: int | None = None,
    in_chans: int | None = None,
    **overrides: Any,
) -> MaskedAutoencoder:
    """A MaskedAutoencoder holding a released InfMAE / ConvMAE / MAE / UNIP checkpoint's weights.

    `kind`: infmae, convmae, mae or unip (None: found from the keys). `in_chans` defaults to
    the checkpoint's (3 for the released ones); 1 converts them. `num_heads`: only where the
    file does not say it and its width is not a released one (see the module's docstring).
    A key of the checkpoint with no place in the model, or a tensor of the model the
    checkpoint lacks, is an error that lists them.
    """
    checkpoint = read_reference(source)
    state = checkpoint.state
    kind = reference_kind(state) if kind is None else kind
    _check_kind(kind)
    config = infer_config(
        state,
        kind,
        num_heads=num_heads,
        in_chans=in_chans,
        metadata=checkpoint.metadata,
        **overrides,
    )
    model = MaskedAutoencoder(config)
    converted = convert_state(state, kind, config)
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    unexpected = sorted(set(converted) - set(tensors))
    missing = sorted(expected_keys(model, kind) - set(converted))
    if unexpected or missing:
        raise ReferenceCheckpointError(
            f"the {kind} checkpoint does not fit: unexpected keys {unexpected}, missing keys "
            f"{missing}; check --init-kind ({', '.join(REFERENCE_KINDS)})"
        )
    with torch.no_grad():
        for name, value in converted.items():
            target = tensors[name]
            if name.endswith("pos_embed") and target.shape != value.shape:
                continue  # another input size: the same sin-cos function on our grid
            if tuple(target.shape) != tuple(value.shape):
                raise ReferenceCheckpointError(
                    f"{name}: checkpoint shape {tuple(value.shape)}, model {tuple(target.shape)}"
                )
            target.copy_(value)
    return model


# The fields a run's own configuration keeps when it starts from a reference checkpoint; the
# widths, depths and decoder come from the checkpoint's shapes.
RUN_FIELDS = (
    "masking",
    "mask_ratio",
    "ddg",
    "ddg_filter",
    "ddg_depth",
    "img_size",
    "in_chans",
    "norm_pix_loss",
    "drop_path_rate",
)


def init_from_reference(
    source: str | Path, kind: str | None, config: ModelConfig
) -> MaskedAutoencoder:
    """`pretrain --init`: the checkpoint's weights under `config`'s masking, DDG, input size and
    channels (DDG starts fresh when the checkpoint has none)."""
    overrides = {name: getattr(config, name) for name in RUN_FIELDS}
    return load_reference_checkpoint(source, kind, **overrides)


def reference_state(path: str | Path) -> ReferenceCheckpoint | None:
    """A released InfMAE / ConvMAE / MAE / UNIP checkpoint, read once to be handed on; None for
    anything else (one of our runs' own checkpoints, which hold a `model_config`)."""
    try:
        checkpoint = read_reference(path)
        reference_kind(checkpoint.state)
    except ReferenceCheckpointError:
        return None
    return checkpoint


def export_reference(
    source: str | Path,
    out_dir: str | Path,
    kind: str | None = None,
    in_chans: int = 1,
    stage3: str = "fused",
    num_heads: int | None = None,
    state: Mapping[str, Any] | ReferenceCheckpoint | None = None,
) -> Path:
    """Export a released checkpoint's encoder like our own (safetensors, timm config.json and a
    model card), converted to `in_chans` (1: the toolkit's infrared input). Returns the folder.
    `state`: the checkpoint (as `reference_state` read it) when the caller has read `source`."""
    checkpoint = read_reference(source if state is None else state)
    kind = reference_kind(checkpoint.state) if kind is None else kind
    _check_kind(kind)
    overrides: dict[str, Any] = {}
    if kind not in ENCODER_ONLY_KINDS and has_decoder(checkpoint.state):
        decoder_dim = _shape(checkpoint.state, "decoder_embed.weight")[0]
        if decoder_heads(decoder_dim, checkpoint.metadata) is None:
            overrides["decoder_heads"] = 1  # the decoder is not exported: its heads do not matter
    model = load_reference_checkpoint(
        checkpoint, kind, num_heads=num_heads, in_chans=in_chans, **overrides
    )
    folder = Path(export_encoder(model, out_dir, stage3)).parent
    card = [
        "---",
        "library_name: timm",
        f"tags: [infrared, {'distilled-vit' if kind == 'unip' else 'masked-autoencoder'}, {kind}]",
        "---",
        f"# {kind} encoder (released pretraining weights, converted)",
        "",
        f"Converted from `{Path(source).name}` by the `inf590k` toolkit; the decoder is not "
        "included. The weights' licence is that of the release they came from.",
        "",
        "## Model config",
        "```json",
        json.dumps(asdict(model.config), indent=2, default=str),
        "```",
        "",
        "## Input",
        f"{in_chans} channel(s), `(pixel / 255 - 0.425) / 0.200`"
        + (" (3-channel weights summed over their input channels)." if in_chans == 1 else "."),
        "",
        "## Features",
        *feature_lines(model.config, stage3),
        "",
    ]
    (folder / "README.md").write_text("\n".join(card) + "\n")
    return folder


def encoder_folder(encoder: str | Path, work_dir: str | Path, num_heads: int | None = None) -> str:
    """An `--encoder` / `--feature-model` value as an export folder: a released checkpoint file
    is converted into `work_dir/<file stem>-export` (once); anything else is returned as is.
    `num_heads`: for a checkpoint that needs it (see `encoder_heads`)."""
    path = Path(encoder)
    if not path.is_file():
        return str(encoder)
    checkpoint = reference_state(path)
    if checkpoint is None:
        raise ReferenceCheckpointError(
            f"{path} is not a released InfMAE / ConvMAE / MAE / UNIP checkpoint; pass an `inf590k "
            "export` folder (export a training checkpoint with `inf590k export CKPT --out DIR`)"
        )
    folder = Path(work_dir) / f"{path.stem}-export"
    if not (folder / "config.json").is_file():
        try:
            export_reference(path, folder, state=checkpoint, num_heads=num_heads)
        except ReferenceCheckpointError as error:
            raise ReferenceCheckpointError(f"{path}: {error}") from error
    return str(folder)
