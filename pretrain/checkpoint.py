"""Checkpoints: atomic writes, keep-last-K, RNG capture, `weights_only=True` loading, export."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PATTERN = re.compile(r"^ckpt-(\d{8})\.pt$")
FORMAT_VERSION = 1


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"ckpt-{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first (temporary files are ignored)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def save_atomic(state: dict[str, Any], path: Path) -> Path:
    """Write to `path.tmp`, fsync, rename: a crash never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def prune(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints; returns the deleted paths."""
    checkpoints = list_checkpoints(run_dir)
    doomed = checkpoints[: max(0, len(checkpoints) - max(1, keep_last))]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def load(path: Path | str) -> dict[str, Any]:
    """Load a checkpoint safely (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; pass a ckpt-*.pt file of a run")
    return torch.load(path, map_location="cpu", weights_only=True)


def parameter_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes in name order: equal digests, equal weights."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as tensors and plain values."""
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(mt_state), gauss],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def model_from_state(state: dict[str, Any]) -> torch.nn.Module:
    """The model a checkpoint holds, rebuilt from its saved ModelConfig and weights."""
    from pretrain.models import create_model

    config = dict(state["model_config"])
    name = config.pop("name", None) or state["model_name"]
    model = create_model(name, **config)
    model.load_state_dict(state["model"])
    return model


def model_card(checkpoint: dict[str, Any], weights_name: str, stage3: str = "fused") -> str:
    """A short README for an exported encoder: what it is, how it was trained, how to load it."""
    from pretrain.models.export import feature_lines

    config = checkpoint.get("config", {})
    data, optim = config.get("data", {}), config.get("optim", {})
    model_config = checkpoint.get("model_config", {})
    return "\n".join(
        [
            "---",
            "library_name: timm",
            "tags: [infrared, thermal, masked-autoencoder, dugi-mae, inf590k]",
            "license: apache-2.0",
            "---",
            f"# {checkpoint.get('model_name', 'model')} encoder (Inf-590K pretraining)",
            "",
            "Encoder of a DuGI-MAE-family masked autoencoder pretrained on single-channel",
            "infrared images with the `inf590k` toolkit. The decoder is not included.",
            "",
            "## Training",
            f"- steps: {checkpoint.get('step')}",
            f"- images seen: {checkpoint.get('counters', {}).get('images')}",
            f"- shards: {', '.join(data.get('shards', [])) or 'n/a'}",
            f"- batch per process: {data.get('batch_size')}, world size: "
            f"{checkpoint.get('world_size')}, accumulation: {optim.get('accum_steps')}",
            f"- AdamW betas ({optim.get('beta1')}, {optim.get('beta2')}), weight decay "
            f"{optim.get('weight_decay')}, base lr {optim.get('blr')}",
            "",
            "## Model config",
            "```json",
            json.dumps(model_config, indent=2, default=str),
            "```",
            "",
            "## Input",
            "One channel, `(pixel / 255 - 0.425) / 0.200` (8-bit view of the infrared frame).",
            "",
            "## Features",
            *feature_lines(model_config, stage3),
            "",
            "## Files",
            f"- `{weights_name}`: encoder weights (safetensors)",
            "- `config.json`: timm model configuration",
            "",
        ]
    )


def export_checkpoint(checkpoint_file: Path | str, out_dir: Path | str, stage3: str = "fused") -> Path:
    """Export a training checkpoint's encoder for timm (safetensors + config) with a model card."""
    from pretrain.models.export import export_encoder

    checkpoint = load(checkpoint_file)
    model = model_from_state(checkpoint)
    out = Path(export_encoder(model, Path(out_dir), stage3))
    folder = out if out.is_dir() else out.parent
    weights = next(iter(sorted(folder.glob("*.safetensors"))), None)
    card = folder / "README.md"
    if not card.exists():
        card.write_text(model_card(checkpoint, weights.name if weights else "model.safetensors", stage3))
    return folder
