"""Downstream probe: fine-tune an exported encoder on an infrared segmentation set.

    from pretrain.probe import ProbeConfig, probe
    print(probe(ProbeConfig(encoder="export/", data="SIRST/", layout="sirst", out="runs/p")))

Small-target sets (SIRST, IRSTD-1k, NUDT-SIRST) report IoU, nIoU, Pd and Fa; MSRS reports
mIoU and mAcc. With an export folder the same architecture is also trained from scratch.
Every error is a ValueError whose message says what to change.
"""

from pretrain.probe.datasets import LAYOUTS, ProbeDataError
from pretrain.probe.head import ProbeModelError
from pretrain.probe.run import (
    ProbeComparison,
    ProbeConfig,
    ProbeError,
    ProbeSummary,
    probe,
    run_probe,
    run_probe_pair,
)

__all__ = [
    "LAYOUTS",
    "ProbeComparison",
    "ProbeConfig",
    "ProbeDataError",
    "ProbeError",
    "ProbeModelError",
    "ProbeSummary",
    "probe",
    "run_probe",
    "run_probe_pair",
]
