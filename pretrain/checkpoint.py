"""Checkpoints: atomic writes, keep-last-K, RNG capture, `weights_only=True` loading, export."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.models import create_model
from pretrain.models.export import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    export_encoder,
    feature_lines,
    loading_lines,
)
from pretrain.provenance import WeightsLicence, card_text, describe_shards, mixture_line
from pretrain.schedule import change_verb

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


class CheckpointError(ValueError):
    """A file that is not (or no longer) a readable training checkpoint; one line."""


EXPORT_MARKERS = ("model.safetensors", "config.json")


def load(path: Path | str) -> dict[str, Any]:
    """Load a checkpoint safely (tensors and plain containers only).

    Anything but a readable training checkpoint (a damaged file, another pickle, an export
    folder) raises CheckpointError with one line that says what to pass instead.
    """
    path = Path(path)
    if path.is_dir():
        if all((path / name).is_file() for name in EXPORT_MARKERS):
            raise CheckpointError(
                f"{path} is an `inf590k export` folder (encoder only, no decoder): pass the "
                "run's training checkpoint, RUN/checkpoints/ckpt-*.pt"
            )
        raise CheckpointError(f"{path} is a folder: pass a ckpt-*.pt file of a run")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; pass a ckpt-*.pt file of a run")
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning is noise here
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle, zip, EOF and runtime errors alike
        # torch's own text suggests weights_only=False, which would run code from the file
        raise CheckpointError(
            f"{path} is not a readable training checkpoint (damaged, cut short or another "
            f"kind of file: {type(err).__name__}): pass a ckpt-*.pt file from a run's "
            "checkpoints/ folder"
        ) from err
    if not isinstance(state, dict) or not {"model", "step"} <= set(state):
        raise CheckpointError(
            f"{path} holds no training checkpoint (no model weights and step): pass a "
            "ckpt-*.pt file from a run's checkpoints/ folder"
        )
    return state


def parameter_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes in name order: equal digests, equal weights."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(
            param.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
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
    config = dict(state["model_config"])
    name = config.pop("name", None) or state["model_name"]
    model = create_model(name, **config)
    model.load_state_dict(state["model"])
    return model


def run_record(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What the run did: the checkpoint's "record", or what older checkpoints' config tells."""
    record = checkpoint.get("record")
    if record:
        return record
    config = checkpoint.get("config", {})
    data, optim = config.get("data", {}), config.get("optim", {})
    batch = data.get("batch_size")
    world, accum = checkpoint.get("world_size") or 1, optim.get("accum_steps") or 1
    global_batch = batch * world * accum if batch else None
    blr = optim.get("blr")
    lr = optim.get("lr") or (blr * global_batch / 256 if blr and global_batch else None)
    if optim.get("lr") and global_batch:
        blr = optim["lr"] * 256 / global_batch
    return {
        "lr": lr,
        "blr": blr,
        "steps": checkpoint.get("step"),
        "images_seen": checkpoint.get("counters", {}).get("images"),
        "batch": {
            "per_process": batch,
            "world_size": world,
            "accum_steps": accum,
            "global": global_batch,
        },
        "data": {"name": describe_shards(data.get("shards", [])), "samples": None, "sources": []},
        "license": None,
    }


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _schedule_lines(record: dict[str, Any]) -> list[str]:
    """`- schedule: 30 steps planned, extended at step 30 to 50 (warm-up 5 steps, then cosine)`."""
    segments = record.get("schedules") or []
    if not segments:
        return []
    text = f"- schedule: {segments[0]['total_steps']} steps planned"
    for before, now in zip(segments, segments[1:], strict=False):
        verb = change_verb(before["total_steps"], now["total_steps"])
        text += f", {verb} at step {now['from_step']} to {now['total_steps']}"
    return [text + f" (warm-up {segments[-1]['warmup_steps']} steps, then cosine)"]


def _training_lines(checkpoint: dict[str, Any], record: dict[str, Any]) -> list[str]:
    optim = checkpoint.get("config", {}).get("optim", {})
    batch, data = record.get("batch", {}), record.get("data", {})
    sources = data.get("sources") or []
    source_names = ", ".join(card_text(s.get("name") or s.get("id")) for s in sources)
    samples = data.get("samples")
    return [
        f"- steps: {record.get('steps')}",
        *_schedule_lines(record),
        f"- images seen: {record.get('images_seen')}",
        f"- data: {data.get('name', 'n/a')}"
        + (f", {samples} samples" if samples is not None else "")
        + (f"; sources: {source_names}" if source_names else "; sources: not recorded"),
        *filter(None, [mixture_line(record.get("mixture"))]),
        f"- batch: {batch.get('per_process')} per process x {batch.get('world_size')} "
        f"process(es) x {batch.get('accum_steps')} accumulation = {batch.get('global')} global",
        f"- learning rate: {_number(record.get('lr'))} peak (base lr {_number(record.get('blr'))}"
        f" x global batch / 256), min lr {_number(optim.get('min_lr'))}",
        f"- AdamW betas ({optim.get('beta1')}, {optim.get('beta2')}), weight decay "
        f"{optim.get('weight_decay')}",
    ]


def model_card(
    checkpoint: dict[str, Any],
    weights_name: str,
    stage3: str = "fused",
    loading: list[str] | None = None,
) -> str:
    """A short README for an exported encoder: what it is, how it was trained, its licence,
    and (`loading`) the snippet that loads it with timm."""
    record = run_record(checkpoint)
    licence = WeightsLicence.from_dict(record.get("license"))
    model_config = checkpoint.get("model_config", {})
    return "\n".join(
        [
            "---",
            "library_name: timm",
            "tags: [infrared, thermal, masked-autoencoder, dugi-mae, inf590k]",
            f"license: {licence.id}",
            *([f"license_name: {licence.name}"] if licence.name else []),
            "---",
            f"# {checkpoint.get('model_name', 'model')} encoder (Inf-590K pretraining)",
            "",
            "Encoder of a DuGI-MAE-family masked autoencoder pretrained on single-channel",
            "infrared images with the `inf590k` toolkit. The decoder is not included.",
            "",
            "## Licence of the weights",
            card_text(licence.summary),  # names sources' licences as their manifests give them
            "",
            "## Training",
            *_training_lines(checkpoint, record),
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
            *(["## Load it with timm", "", *loading, ""] if loading else []),
            "## Files",
            f"- `{weights_name}`: encoder weights (safetensors)",
            "- `config.json`: timm model configuration",
            "",
        ]
    )


def export_checkpoint(
    checkpoint_file: Path | str, out_dir: Path | str, stage3: str = "fused", device: str = "cpu"
) -> Path:
    """Export a training checkpoint's encoder for timm (safetensors + config) with a model card;
    the model is rebuilt on `device` (its weights are written from the CPU either way)."""
    checkpoint = load(checkpoint_file)
    model = model_from_state(checkpoint).to(device)
    record = run_record(checkpoint)
    licence = WeightsLicence.from_dict(record.get("license"))
    folder = Path(out_dir)
    export_encoder(model, folder, stage3, license=licence.short)
    config_path = folder / CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["pretraining_data"] = {
        "license": licence.as_dict(),
        "data": record.get("data"),
        "steps": record.get("steps"),
        "images_seen": record.get("images_seen"),
        "mixture": record.get("mixture"),
    }
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    loading = loading_lines(config["architecture"], out_dir)
    (folder / "README.md").write_text(model_card(checkpoint, WEIGHTS_FILE, stage3, loading))
    return folder
