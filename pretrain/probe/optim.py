"""The probes' optimisation: AdamW on the trainable parameters, warm-up then cosine decay."""

from __future__ import annotations

import torch
from timm.scheduler import CosineLRScheduler
from torch import Tensor, nn

from pretrain.probe.config import ProbeConfig


class ProbeOptimiser:
    """`config.steps` AdamW steps with a 5% warm-up from lr/100 and cosine decay (per step)."""

    def __init__(self, model: nn.Module, config: ProbeConfig) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = CosineLRScheduler(
            self.optimizer,
            t_initial=config.steps,
            warmup_t=max(1, config.steps // 20),
            warmup_lr_init=config.lr / 100,
            t_in_epochs=False,
        )

    def step(self, loss: Tensor, step: int) -> None:
        """Back-propagate `loss` of step `step` (0-based) and move the lr to the next step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step_update(step + 1)
