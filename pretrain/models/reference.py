"""Load the released InfMAE, ConvMAE and MAE pretraining checkpoints into our models.

    model = load_reference_checkpoint("infmae_pretrain.pth", "infmae", in_chans=1)
    model = load_reference_checkpoint("mae_pretrain_vit_base_full.pth", "mae", masking="entropy")

The `.pth` files are read as released (a dict holding the state dict under `model`) with
`torch.load(weights_only=True)`; a safetensors file or a state dict in memory works too. The
configuration is inferred from the tensor shapes (widths, depths, patch sizes, MLP ratio,
decoder width and depth, input size); what shapes cannot tell (attention heads) defaults to
64-channel heads (12 at ViT-B width) for the encoder and 16 for the decoder. Any other
`ModelConfig` field can be overridden: e.g. `masking="entropy", ddg=True` continues InfMAE's
weights as DuGI-MAE, the DDG bridge starting fresh.

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
from typing import Any

import torch
from torch import Tensor

from pretrain.models.configs import ModelConfig
from pretrain.models.mae import MaskedAutoencoder

REFERENCE_KINDS = ("infmae", "convmae", "mae")
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


class ReferenceCheckpointError(ValueError):
    """A checkpoint that does not fit the kind it was loaded as."""


def read_reference_state(source: str | Path | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The flat state dict of a released checkpoint (path or mapping), `model` unwrapped."""
    if isinstance(source, Mapping):
        state: Any = source
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"reference checkpoint {path} not found: pass the .pth file")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:  # pickle errors come in many types
                raise ReferenceCheckpointError(
                    f"cannot read {path} as a weights-only torch checkpoint ({error}); pass the "
                    "released .pth file or a safetensors file"
                ) from error
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ReferenceCheckpointError(
            "not a state dict of tensors (nor a dict holding one under 'model')"
        )
    return {key.removeprefix("module."): value for key, value in state.items()}


def reference_kind(state: Mapping[str, Tensor]) -> str:
    """Which released model a state dict is: infmae, convmae or mae (from its keys)."""
    if "patch_embed1.proj.weight" in state:
        return "infmae" if "patch_embed.proj.weight" in state else "convmae"
    if "cls_token" in state and "patch_embed.proj.weight" in state:
        return "mae"
    raise ReferenceCheckpointError(
        "not an InfMAE, ConvMAE or MAE pretraining checkpoint (no patch_embed1 nor cls_token)"
    )


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
    if kind != "mae":
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


def infer_config(
    state: Mapping[str, Tensor],
    kind: str,
    num_heads: int | None = None,
    in_chans: int | None = None,
    **overrides: Any,
) -> ModelConfig:
    """The ModelConfig the checkpoint's tensor shapes describe, with `overrides` applied."""
    _check_kind(kind)
    found = reference_kind(state)  # not a reference checkpoint at all: says so
    if not any(key.startswith(("decoder", "mask_token")) for key in state):
        raise ReferenceCheckpointError(
            "this holds an encoder only (an `inf590k export` or a timm model), not a released "
            "InfMAE/ConvMAE/MAE pretraining checkpoint: pass the .pth of the pretraining model"
        )
    if found != kind:
        article = "an" if found[0] in "aeiou" else "a"
        raise ReferenceCheckpointError(
            f"by its keys this is {article} {found} checkpoint, not {kind}: pass kind {found!r}"
        )
    if kind == "mae":
        dim, _, patch, _ = _shape(state, "patch_embed.proj.weight")
        dims, depths, patches = (dim,), (_count(state, r"^blocks\.(\d+)\."),), (patch,)
        mlp_hidden = _shape(state, "blocks.0.mlp.fc1.weight")[0]
        ckpt_chans = _shape(state, "patch_embed.proj.weight")[1]
        num_tokens = _shape(state, "pos_embed")[1] - 1
        values: dict[str, Any] = dict(encoder="vit", masking="random", decoder_depth=8)
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
        values = dict(encoder="hierarchical", masking="gray" if kind == "infmae" else "random")
    side = round(num_tokens**0.5)
    if side * side != num_tokens:
        raise ReferenceCheckpointError(f"pos_embed has {num_tokens} tokens: not a square grid")
    decoder_dim = _shape(state, "decoder_embed.weight")[0]
    values.update(
        name=f"{kind}_reference",
        ddg=False,
        img_size=side * patches[0] * (patches[1] * patches[2] if len(patches) == 3 else 1),
        in_chans=ckpt_chans if in_chans is None else in_chans,
        embed_dims=dims,
        depths=depths,
        patch_sizes=patches,
        num_heads=num_heads or max(1, dims[-1] // 64),
        mlp_ratio=mlp_hidden / dims[-1],
        decoder_dim=decoder_dim,
        decoder_depth=_count(state, r"^decoder_blocks\.(\d+)\."),
        decoder_heads=16 if decoder_dim % 16 == 0 else 1,
    )
    values.update(overrides)
    if values["in_chans"] not in (ckpt_chans, 1):
        raise ReferenceCheckpointError(
            f"in_chans={values['in_chans']}: the checkpoint has {ckpt_chans} input channels; "
            f"load it with in_chans={ckpt_chans} or 1"
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
    ckpt_chans = state[
        "patch_embed.proj.weight" if kind == "mae" else "patch_embed1.proj.weight"
    ].shape[1]
    converted = {}
    for key, tensor in state.items():
        ours = map_reference_key(key, kind)
        if ours is None:
            continue
        if config.in_chans == 1 and ckpt_chans == 3:
            tensor = _to_one_channel(ours, tensor, config)
        converted[ours] = tensor
    return converted


def expected_keys(model: MaskedAutoencoder) -> set[str]:
    """Every tensor of ours a reference checkpoint fills: parameters and buffers (the fixed
    position embeddings included), without the DDG bridge, which starts fresh."""
    names = {name for name, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    return {name for name in names if not name.startswith("ddg.")}


def load_reference_checkpoint(
    source: str | Path | Mapping[str, Tensor],
    kind: str | None,
    num_heads: int | None = None,
    in_chans: int | None = None,
    **overrides: Any,
) -> MaskedAutoencoder:
    """A MaskedAutoencoder holding a released InfMAE / ConvMAE / MAE checkpoint's weights.

    `kind`: infmae, convmae or mae (None: found from the keys). `in_chans` defaults to the
    checkpoint's (3 for the released ones); 1 converts them.
    A key of the checkpoint with no place in the model, or a tensor of the model the
    checkpoint lacks, is an error that lists them.
    """
    state = read_reference_state(source)
    kind = reference_kind(state) if kind is None else kind
    _check_kind(kind)
    config = infer_config(state, kind, num_heads=num_heads, in_chans=in_chans, **overrides)
    model = MaskedAutoencoder(config)
    converted = convert_state(state, kind, config)
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    unexpected = sorted(set(converted) - set(tensors))
    missing = sorted(expected_keys(model) - set(converted))
    if unexpected or missing:
        raise ReferenceCheckpointError(
            f"the {kind} checkpoint does not fit: unexpected keys {unexpected}, missing keys "
            f"{missing}; check --init-kind (infmae, convmae or mae)"
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


def reference_state(path: str | Path) -> dict[str, Tensor] | None:
    """The state dict of a released InfMAE / ConvMAE / MAE checkpoint, read once to be handed
    on; None for anything else (one of our runs' own checkpoints, which hold a `model_config`)."""
    try:
        state = read_reference_state(path)
        reference_kind(state)
    except ReferenceCheckpointError:
        return None
    return state



def export_reference(
    source: str | Path,
    out_dir: str | Path,
    kind: str | None = None,
    in_chans: int = 1,
    stage3: str = "fused",
    num_heads: int | None = None,
    state: Mapping[str, Tensor] | None = None,
) -> Path:
    """Export a released checkpoint's encoder like our own (safetensors, timm config.json and a
    model card), converted to `in_chans` (1: the toolkit's infrared input). Returns the folder.
    `state`: the checkpoint's state dict when the caller has read `source` already."""
    from pretrain.models.export import export_encoder, feature_lines

    state = read_reference_state(source if state is None else state)
    kind = reference_kind(state) if kind is None else kind
    model = load_reference_checkpoint(state, kind, num_heads=num_heads, in_chans=in_chans)
    folder = Path(export_encoder(model, out_dir, stage3)).parent
    card = [
        "---",
        "library_name: timm",
        f"tags: [infrared, masked-autoencoder, {kind}]",
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


def encoder_folder(encoder: str | Path, work_dir: str | Path) -> str:
    """An `--encoder` / `--feature-model` value as an export folder: a released checkpoint file
    is converted into `work_dir/<file stem>-export` (once); anything else is returned as is."""
    path = Path(encoder)
    if not path.is_file():
        return str(encoder)
    state = reference_state(path)
    if state is None:
        raise ReferenceCheckpointError(
            f"{path} is not a released InfMAE / ConvMAE / MAE checkpoint; pass an `inf590k "
            "export` folder (export a training checkpoint with `inf590k export CKPT --out DIR`)"
        )
    folder = Path(work_dir) / f"{path.stem}-export"
    if not (folder / "config.json").is_file():
        export_reference(path, folder, state=state)
    return str(folder)
