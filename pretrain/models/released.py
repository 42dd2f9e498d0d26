"""Reading a released pretraining checkpoint (InfMAE, ConvMAE, MAE, UNIP) as it was published:
weights-only, its state dict and whatever the file says about itself (args, config), and which
kind of checkpoint it is from its keys.
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

REFERENCE_KINDS = ("infmae", "convmae", "mae", "unip")


# Kinds whose checkpoints hold a plain ViT encoder and no decoder (the decoder starts fresh).
ENCODER_ONLY_KINDS = ("unip",)


# Entries of a released checkpoint that describe its run (argparse Namespace or dict).
METADATA_ENTRIES = ("config", "args", "model_config")


# Classes a released `.pth` may pickle beside its tensors (its `args`): plain data, no code.
SAFE_CHECKPOINT_GLOBALS = (
    argparse.Namespace,
    pathlib.PosixPath,
    pathlib.WindowsPath,
    pathlib.PurePosixPath,
    pathlib.PureWindowsPath,
)


class ReferenceCheckpointError(ValueError):
    """A checkpoint that does not fit the kind it was loaded as."""


@dataclass(frozen=True)
class ReferenceCheckpoint:
    """A released checkpoint as read: its flat state dict, and what the file says about the
    run that wrote it (`args` / `config` entries, as plain values)."""

    state: dict[str, Tensor]
    metadata: Mapping[str, Any] = field(default_factory=dict)


def _torch_load(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(list(SAFE_CHECKPOINT_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors come in many types
        raise ReferenceCheckpointError(
            f"cannot read {path} as a weights-only torch checkpoint ({error}); pass the "
            "released .pth file or a safetensors file"
        ) from error


def _metadata(container: Mapping[str, Any]) -> dict[str, Any]:
    """The run description entries of a checkpoint, merged (Namespace -> dict)."""
    merged: dict[str, Any] = {}
    for name in METADATA_ENTRIES:
        entry = container.get(name)
        if isinstance(entry, argparse.Namespace):
            entry = vars(entry)
        if isinstance(entry, Mapping):
            merged.update({k: v for k, v in entry.items() if isinstance(k, str)})
    return merged


def read_reference(
    source: str | Path | Mapping[str, Any] | ReferenceCheckpoint,
) -> ReferenceCheckpoint:
    """The state dict (`model` or `state_dict` unwrapped, `module.` prefixes dropped) and the
    run metadata of a released checkpoint: a path, a loaded checkpoint or a state dict."""
    if isinstance(source, ReferenceCheckpoint):
        return source
    if isinstance(source, Mapping):
        loaded: Any = source
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"reference checkpoint {path} not found: pass the .pth file")
        if path.suffix == ".safetensors":
            loaded = load_file(str(path))
        else:
            loaded = _torch_load(path)
    state, metadata = loaded, {}
    if isinstance(loaded, Mapping):
        metadata = _metadata(loaded)
        for entry in ("model", "state_dict"):
            if isinstance(loaded.get(entry), Mapping):
                state = loaded[entry]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ReferenceCheckpointError(
            "not a state dict of tensors (nor a dict holding one under 'model')"
        )
    flat = {key.removeprefix("module."): value for key, value in state.items()}
    return ReferenceCheckpoint(flat, metadata)


def read_reference_state(source: str | Path | Mapping[str, Any]) -> dict[str, Tensor]:
    """The flat state dict of a released checkpoint (path or mapping), `model` unwrapped."""
    return read_reference(source).state


def has_decoder(state: Mapping[str, Tensor]) -> bool:
    return any(key.startswith(("decoder", "mask_token")) for key in state)


def reference_kind(state: Mapping[str, Tensor]) -> str:
    """Which released model a state dict is: infmae, convmae, mae, or unip (a plain ViT encoder
    without a decoder), from its keys."""
    if "patch_embed1.proj.weight" in state:
        return "infmae" if "patch_embed.proj.weight" in state else "convmae"
    if "cls_token" in state and "patch_embed.proj.weight" in state:
        return "mae" if has_decoder(state) else "unip"
    raise ReferenceCheckpointError(
        "not an InfMAE, ConvMAE or MAE pretraining checkpoint nor a UNIP encoder (no "
        "patch_embed1 nor cls_token)"
    )
