"""Downstream probe: fine-tune an exported encoder on an infrared segmentation set.

    from pretrain.probe import ProbeConfig, probe
    print(probe(ProbeConfig(encoder="export/", data="SIRST/", layout="sirst", out="runs/p")))

Small-target sets (SIRST, IRSTD-1k, NUDT-SIRST) report IoU, nIoU, Pd and Fa; MSRS reports
mIoU and mAcc. With an export folder the same architecture is also trained from scratch.
"""

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
    "ProbeComparison",
    "ProbeConfig",
    "ProbeError",
    "ProbeSummary",
    "probe",
    "run_probe",
    "run_probe_pair",
]
