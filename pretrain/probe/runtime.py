"""Where a probe runs: the device, and torch's threads beside data-loader workers (the policy
is pretrain.threads', the device pretrain.distributed's: one of each for every command)."""

from __future__ import annotations

import torch

from pretrain.distributed import DeviceError, pick_device
from pretrain.threads import intra_op_threads, torch_threads

__all__ = ["ProbeError", "intra_op_threads", "resolve_device", "torch_threads"]


class ProbeError(ValueError):
    """Bad probe options; the message says what to change."""


def resolve_device(name: str) -> torch.device:
    try:
        return pick_device(name)
    except DeviceError as err:
        raise ProbeError(str(err)) from err
