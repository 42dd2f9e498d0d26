"""Resuming a run: the newest readable checkpoint, the options a resumed run must keep (the
model config compared, not the strings that made it), the data mixture it keeps, and the
counts of what every rank drew.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from pretrain import checkpoint as ckpt
from pretrain.config import PretrainConfig
from pretrain.data import add_counts, parse_weights, shares
from pretrain.distributed import DistEnv
from pretrain.provenance import safe_shard_specs

log = logging.getLogger(__name__)


# Options a resumed run must keep: they shape the optimisation or the model.
RESUME_FIXED = (
    ("optim", "lr"),
    ("optim", "blr"),
    ("optim", "weight_decay"),
    ("optim", "beta1"),
    ("optim", "beta2"),
    ("optim", "warmup_epochs"),
    ("optim", "min_lr"),
    ("optim", "accum_steps"),
    ("data", "batch_size"),
    ("data", "val_samples"),
    ("data", "val_shards"),
    ("run", "model"),
)


def model_differences(saved: Any, model_config: Any) -> list[str]:
    """The model fields a resumed run would change, as `--model-args field=value` as recorded:
    the model configs are compared, not the strings that made them (`mask_ratio=.75` is
    `mask_ratio=0.75`)."""
    if not isinstance(saved, dict) or model_config is None:
        return []
    now = plain(dataclasses.asdict(model_config))
    saved = plain(saved)
    return [
        f"--model-args {name}={saved[name]}"
        for name in sorted(saved)
        if name in now and saved[name] != now[name]
    ]


def load_resume_state(
    run_dir: Path, resume: str, is_main: bool
) -> tuple[Path, dict[str, Any], list[str]] | None:
    """The newest readable checkpoint, its state and the damaged ones passed over (--resume
    auto passes a damaged one over; a named one must load)."""
    candidates = (
        list(reversed(ckpt.list_checkpoints(run_dir))) if resume == "auto" else [Path(resume)]
    )
    damaged: list[str] = []
    for path in candidates:
        try:
            state = ckpt.load(path)
        except ckpt.CheckpointError as err:
            if resume != "auto":
                raise
            damaged.append(path.name)
            log.debug("%s", err)
            continue
        if damaged and is_main:
            log.warning(
                "--resume auto: %s damaged, resuming from the previous checkpoint %s",
                ", ".join(damaged),
                path.name,
            )
        return path, state, damaged
    if damaged:
        raise ckpt.CheckpointError(
            f"--resume auto: no readable checkpoint in {run_dir / ckpt.CHECKPOINT_DIR} "
            f"({', '.join(damaged)} damaged): remove them to start anew, or choose another --out"
        )
    return None


def kept_mixture(config: PretrainConfig, path: Path, state: dict[str, Any]) -> PretrainConfig:
    """A resumed run draws with the checkpoint's --mix / --mix-bin: taken over when none
    is given, refused when another is (the same shares at another scale are the same). A run
    that drew as stored (no weights recorded) refuses weights too: its record would claim
    them for the steps it drew without."""
    saved = (state.get("config") or {}).get("data") or {}
    data = config.data
    for name, flag in (("mix", "--mix"), ("mix_bin", "--mix-bin")):
        recorded, given = tuple(saved.get(name) or ()), getattr(data, name)
        if not given:
            data = dataclasses.replace(data, **{name: recorded})
            continue
        if not recorded:
            raise ckpt.CheckpointError(
                f"{path} was trained without {flag} (sources and bins drawn as stored); resume "
                f"without {flag}, or choose another --out for a run with that mixture"
            )
        before, now = parse_weights(recorded, flag), parse_weights(given, flag)
        if _drawn_shares(before) != _drawn_shares(now):
            raise ckpt.CheckpointError(
                f"{path} was trained with {flag} {','.join(recorded)}; resume with that "
                f"mixture (or without {flag}), or choose another --out"
            )
    return dataclasses.replace(config, data=data)


def _drawn_shares(weights: dict[str, float]) -> dict[str, float]:
    """The shares of the names that are drawn at all (a name left out weighs 0, so `a=1,b=0`
    is the mixture `a=1`)."""
    return {name: share for name, share in shares(weights).items() if share > 0}


def check_resume_options(
    path: Path, state: dict[str, Any], config: PretrainConfig, model_config: Any
) -> None:
    """Refuse to resume with other optimisation options or another model than the
    checkpoint was trained with (a longer --steps/--epochs is fine)."""
    saved = state.get("config")
    if not isinstance(saved, dict):
        return  # an older checkpoint without its config: nothing to compare
    now = plain(config.as_dict())
    differing = []
    for group, name in RESUME_FIXED:
        if name not in saved.get(group, {}):
            continue
        recorded, given = saved[group][name], now[group][name]
        if recorded != given:
            shown = "not set" if recorded in (None, []) else recorded
            differing.append(f"--{name.replace('_', '-')} {shown}")
    differing += model_differences(state.get("model_config"), model_config)
    if differing:
        raise ckpt.CheckpointError(
            f"{path} was trained with other options; resume with its "
            f"{', '.join(differing)} (as recorded), or choose another --out"
        )


def drawn_of(ranks: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """The samples every rank trained on, per source and per bin (their trackers' counts)."""
    drawn: dict[str, dict[str, int]] = {}
    for rank in ranks:
        add_counts(drawn, (rank.get("data") or {}).get("drawn") or {})
    return drawn


def plain(value: Any) -> Any:
    """Tuples -> lists so the config reads back the same from JSON and from a checkpoint."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def restore_training_state(
    path: Path, state: dict[str, Any], model: Any, optimizer: Any, scaler: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Load the weights, optimiser and scaler of a checkpoint; its counters and per-rank
    states. A checkpoint of another model or recipe is one line, not a traceback."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        return state["counters"], state["ranks"]
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        raise ckpt.CheckpointError(
            f"{path} does not fit this run ({str(err).splitlines()[0][:120]}): resume with "
            f"the options it was trained with (--model {state.get('model_name')}), or "
            "choose another --out"
        ) from err


def rank_data_state(ranks: list[dict[str, Any]], env: DistEnv, step: int) -> dict[str, Any]:
    """This rank's data stream state (and random state, restored); on another world size the
    streams restart with new seeds and the main rank carries on the counts of what was drawn."""
    if len(ranks) == env.world_size:
        ckpt.restore_rng(ranks[env.rank]["rng"])
        return ranks[env.rank]["data"]
    log.warning(
        "checkpoint from %d ranks resumed on %d: data streams restart with new seeds",
        len(ranks),
        env.world_size,
    )
    data_state: dict[str, Any] = {"num_workers": -1, "batches": step}
    if env.is_main:
        data_state["drawn"] = drawn_of(ranks)
    return data_state


def saved_config(config: PretrainConfig) -> dict[str, Any]:
    """The config as run, with throw-away loopback URLs replaced by what they were."""
    config = plain(config.as_dict())
    config["data"]["shards"] = safe_shard_specs(config["data"]["shards"])
    if config["data"].get("info"):
        config["data"]["info"] = safe_shard_specs([config["data"]["info"]])[0]
    return config
