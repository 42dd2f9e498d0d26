"""The optimisation of a run: steps and peak lr from the recipe (lr = blr x global batch / 256,
epochs -> steps), AdamW without decay on norms and biases, warm-up then cosine.

The lr of a step is a pure function of (step, total steps, warm-up steps, peak, floor): a run
resumed with another --steps/--epochs rebuilds it for the new length, so every step it trains
from there has the lr a run of that length done in one go has at that step. The lengths a run
had are its `schedules` (kept in the checkpoint's record).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import timm.optim
import torch
from torch import nn

from pretrain.config import (
    OptimConfig,
)


@dataclass(frozen=True)
class Schedule:
    total_steps: int
    warmup_steps: int
    lr: float
    global_batch: int
    samples_per_epoch: int | None


def plan_schedule(
    optim: OptimConfig, batch_size: int, world_size: int, samples_per_epoch: int | None
) -> Schedule:
    """Steps and peak lr from the recipe: lr = blr * global batch / 256, epochs -> steps."""
    global_batch = batch_size * world_size * optim.accum_steps
    lr = optim.lr if optim.lr is not None else optim.blr * global_batch / 256
    if optim.steps is not None:
        total = optim.steps
        warmup = round(total * optim.warmup_epochs / optim.epochs) if optim.epochs else 0
    elif samples_per_epoch is not None:
        if samples_per_epoch < 1:
            raise ValueError(
                "the selected shards hold no samples (so says their _info.json): check --shards, "
                "or pass --samples-per-epoch N or --steps N"
            )
        steps_per_epoch = max(1, samples_per_epoch // global_batch)
        total = max(1, round(optim.epochs * steps_per_epoch))
        warmup = round(optim.warmup_epochs * steps_per_epoch)
    else:
        raise ValueError(
            "cannot tell the epoch length: no _info.json next to the shards; "
            "pass --info URL, --samples-per-epoch N or --steps N"
        )
    return Schedule(total, min(warmup, total - 1), lr, global_batch, samples_per_epoch)


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, floor: float) -> float:
    """The lr of the update made at `step` (0-based): linear warm-up from 0 over `warmup_steps`,
    then a cosine from `peak` down to `floor` at `total_steps` (timm's CosineLRScheduler with
    warmup_prefix, as a function of its arguments only)."""
    if step < warmup_steps:
        return step * peak / warmup_steps
    into, span = step - warmup_steps, max(1, total_steps - warmup_steps)
    if into >= span:
        return floor
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * into / span))


class WarmupCosine:
    """Sets the optimiser's lr to `lr_at(step, ...)` before each update; holds no state but its
    plan, so a resumed run rebuilds it from the options (never from a checkpoint)."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule, floor: float) -> None:
        self.optimizer, self.schedule, self.floor = optimizer, schedule, floor
        self.step_update(0)

    def lr_at(self, step: int) -> float:
        plan = self.schedule
        return lr_at(step, plan.total_steps, plan.warmup_steps, plan.lr, self.floor)

    def step_update(self, step: int) -> None:
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        """The plan, for readers of a checkpoint (resume rebuilds it from the options)."""
        plan = self.schedule
        return {"total_steps": plan.total_steps, "warmup_steps": plan.warmup_steps,
                "lr": plan.lr, "min_lr": self.floor}  # fmt: skip


def segment(from_step: int, schedule: Schedule) -> dict[str, int]:
    """One length of a run: from which step its schedule held, and what it was."""
    return {"from_step": from_step, "total_steps": schedule.total_steps,
            "warmup_steps": schedule.warmup_steps}  # fmt: skip


def recorded_schedules(state: dict[str, Any]) -> list[dict[str, int]]:
    """The lengths a checkpoint's run had, oldest first. Older checkpoints keep only timm's
    scheduler state: its t_initial + warmup_t is the length the run really trained with."""
    record = state.get("record") or {}
    if record.get("schedules"):
        return [dict(s) for s in record["schedules"]]
    timm_state = state.get("scheduler") or {}
    if "t_initial" in timm_state and "warmup_t" in timm_state:
        warmup = int(timm_state["warmup_t"])
        return [{"from_step": 0, "total_steps": int(timm_state["t_initial"]) + warmup,
                 "warmup_steps": warmup}]  # fmt: skip
    if record.get("total_steps") is not None:
        return [{"from_step": 0, "total_steps": int(record["total_steps"]),
                 "warmup_steps": int(record.get("warmup_steps") or 0)}]  # fmt: skip
    return []


def change_verb(before: int, after: int) -> str:
    """How a run's length changed (the same length with another warm-up: re-planned)."""
    return "extended" if after > before else "shortened" if after < before else "re-planned"


def length_change(previous: dict[str, int], schedule: Schedule, step: int, lr: float) -> str:
    """The one line a resumed run prints when its length changed."""
    verb = change_verb(previous["total_steps"], schedule.total_steps)
    return (
        f"resume: run {verb} from {previous['total_steps']} to {schedule.total_steps} steps at "
        f"step {step}; lr schedule rebuilt for the new length (warm-up "
        f"{schedule.warmup_steps} steps, cosine to step {schedule.total_steps}), lr {lr:.3g} "
        f"at step {step + 1}"
    )


def schedule_history(
    state: dict[str, Any], schedule: Schedule, step: int, lr: float
) -> tuple[list[dict[str, int]], str | None]:
    """The lengths a resumed run has had, with `schedule` added when it resumes at `step` with
    another length or warm-up, and the one line that says so (None: unchanged)."""
    history = recorded_schedules(state) or [segment(0, schedule)]
    previous, now = history[-1], segment(step, schedule)
    changed = (previous["total_steps"], previous["warmup_steps"]) != (
        now["total_steps"],
        now["warmup_steps"],
    )
    if not changed or step >= schedule.total_steps:
        return history, None
    return [*history, now], length_change(previous, schedule, step, lr)


def build_optimizer(
    model: nn.Module, optim: OptimConfig, schedule: Schedule
) -> tuple[torch.optim.AdamW, WarmupCosine]:
    """AdamW without decay on 1-D params (norms, biases) and the model's no_weight_decay names."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups = timm.optim.param_groups_weight_decay(
        model, optim.weight_decay, no_weight_decay_list=skip
    )
    optimizer = torch.optim.AdamW(
        groups, lr=schedule.lr, betas=(optim.beta1, optim.beta2), fused=True
    )
    return optimizer, WarmupCosine(optimizer, schedule, optim.min_lr)
