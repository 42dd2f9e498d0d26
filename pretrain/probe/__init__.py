"""Downstream probes: fine-tune an exported encoder on an infrared task, and compare encoders.

    from pretrain.probe import ProbeConfig, probe
    print(probe(ProbeConfig(encoder="export/", data="SIRST/", layout="sirst", out="runs/p")))
    print(probe(ProbeConfig(encoder="export/", data="M3FD/", layout="m3fd", out="runs/d")))

    from pretrain.probe import EvalConfig, parse_encoders, run_eval
    print(run_eval(EvalConfig(encoders=parse_encoders(["scratch", "dugi=export/"]),
                              task="detect", data="M3FD/", out="eval/m3fd")))

Small-target sets (SIRST, IRSTD-1k, NUDT-SIRST) report IoU, nIoU, Pd and Fa; MSRS reports
mIoU and mAcc; detection sets (M3FD, FLIR ADAS v2, any COCO JSON) report COCO's mAP, AP50,
AP75, AP S/M/L and per-class AP through pycocotools. With an export folder the same
architecture is also trained from scratch. `run_eval` runs several encoders under one
protocol over seeds and arms (fine-tuned, frozen) and writes paper-shaped tables.
Every error is a ValueError whose message says what to change.
"""

from pretrain.probe.compare import EvalConfig, EvalError, EvalSummary, parse_encoders, run_eval
from pretrain.probe.config import TASKS, ProbeConfig
from pretrain.probe.datasets import LAYOUTS, ProbeDataError
from pretrain.probe.detect_data import DETECT_LAYOUTS, read_detection_layout
from pretrain.probe.head import ProbeModelError
from pretrain.probe.run import (
    ProbeComparison,
    ProbeError,
    ProbeSummary,
    probe,
    run_probe,
    run_probe_pair,
)

__all__ = [
    "DETECT_LAYOUTS",
    "EvalConfig",
    "EvalError",
    "EvalSummary",
    "LAYOUTS",
    "ProbeComparison",
    "ProbeConfig",
    "ProbeDataError",
    "ProbeError",
    "ProbeModelError",
    "ProbeSummary",
    "TASKS",
    "parse_encoders",
    "probe",
    "read_detection_layout",
    "run_eval",
    "run_probe",
    "run_probe_pair",
]
