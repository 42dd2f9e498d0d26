"""The optimisation of a run: steps and peak lr from the recipe (lr = blr x global batch / 256,
epochs -> steps), AdamW without decay on norms and biases, warm-up then cosine.
"""

from __future__ import annotations

from dataclasses import dataclass

import timm.optim
import timm.scheduler
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


def build_optimizer(
    model: nn.Module, optim: OptimConfig, schedule: Schedule
) -> tuple[torch.optim.AdamW, timm.scheduler.CosineLRScheduler]:
    """AdamW without decay on 1-D params (norms, biases) and the model's no_weight_decay names."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups = timm.optim.param_groups_weight_decay(
        model, optim.weight_decay, no_weight_decay_list=skip
    )
    optimizer = torch.optim.AdamW(
        groups, lr=schedule.lr, betas=(optim.beta1, optim.beta2), fused=True
    )
    scheduler = timm.scheduler.CosineLRScheduler(
        optimizer,
        t_initial=max(1, schedule.total_steps - schedule.warmup_steps),
        lr_min=optim.min_lr,
        warmup_t=schedule.warmup_steps,
        warmup_lr_init=0.0,
        warmup_prefix=True,
        t_in_epochs=False,
    )
    return optimizer, scheduler
