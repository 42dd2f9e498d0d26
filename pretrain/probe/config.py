"""The options of a probe run (`inf590k probe`, and each cell of `inf590k eval`): one field
per command-line option, checked once; the task follows the layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pretrain.probe.datasets import LAYOUTS, ProbeDataError, canonical_layout
from pretrain.probe.detect_data import DETECT_LAYOUTS
from pretrain.probe.head import SCRATCH
from pretrain.probe.runtime import ProbeError

TASKS = ("detect", "segment", "small-target")
# Defaults per task, for the short CPU schedules (a few hundred steps; a tiny detector from
# scratch reaches mAP ~0.35 on synthetic M3FD in 200 steps at 1e-3, ~0.005 at 2e-4); the
# paper's detection weight decay is 0.1. Long GPU schedules lower the rate (README).
DEFAULT_LR = {"detect": 1e-3, "segment": 1e-3, "small-target": 1e-3}
DEFAULT_WEIGHT_DECAY = {"detect": 0.1, "segment": 0.01, "small-target": 0.01}


def layout_task(layout: str) -> str:
    """The task a layout's labels serve: detect, segment (MSRS classes) or small-target."""
    if layout in DETECT_LAYOUTS:
        return "detect"
    return "segment" if layout == "msrs" else "small-target"


def probe_layout(layout: str) -> str:
    """A layout name of any task, aliases resolved; an unknown one lists them all."""
    if layout.lower() in DETECT_LAYOUTS:
        return layout.lower()
    try:
        return canonical_layout(layout)
    except ProbeDataError:
        raise ProbeError(f"unknown layout {layout!r}: use one of "
                         f"{', '.join(LAYOUTS + DETECT_LAYOUTS)}") from None


@dataclass(frozen=True)
class ProbeConfig:
    """Options of `inf590k probe` (one field per CLI option)."""

    encoder: str  # an `inf590k export` folder, a released checkpoint, or "scratch"
    data: Path
    layout: str  # sirst | irstd1k | nudt | msrs | m3fd | flir_adas_v2 | coco
    out: Path
    task: str = "auto"  # auto (the layout's) | detect | segment | small-target
    steps: int = 500
    freeze: bool = False  # train the head only
    arch: str = "dugi_mae_base"  # timm architecture of --encoder scratch
    baseline: bool = True  # with an export: also train the same architecture from scratch
    img_size: int = 256  # segmentation: resized to img_size^2; detection: the longer side
    batch_size: int = 8
    lr: float | None = None  # None: DEFAULT_LR of the task
    weight_decay: float | None = None  # None: DEFAULT_WEIGHT_DECAY of the task
    head_dim: int = 64  # segmentation head / detection FPN width
    detail: bool = False  # the segmentation head's full-resolution branch on the input
    threshold: float = 0.5  # target probability above which a pixel is a target
    distance: float = 3.0  # px between centroids for a detected target (Pd)
    seed: int = 0
    split: Path | None = None  # a split.json to reuse (else the layout's, else seeded)
    workers: int = 0  # data-loader processes decoding detection images
    num_heads: int | None = None  # heads of a released checkpoint that does not say them
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch threads (None: the usable cores less the workers)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "layout", probe_layout(self.layout))
        if self.split is not None:
            object.__setattr__(self, "split", Path(self.split))
        task = layout_task(self.layout)
        if self.task not in ("auto", *TASKS):
            raise ProbeError(f"unknown task {self.task!r}: use one of {', '.join(TASKS)}")
        if self.task not in ("auto", task):
            raise ProbeError(f"--task {self.task} does not fit --layout {self.layout} (a {task} "
                             f"set): use --task {task}, or a layout of the task")
        object.__setattr__(self, "task", task)
        if self.lr is None:
            object.__setattr__(self, "lr", DEFAULT_LR[task])
        if self.weight_decay is None:
            object.__setattr__(self, "weight_decay", DEFAULT_WEIGHT_DECAY[task])
        if self.steps < 1:
            raise ProbeError(f"steps must be at least 1, got {self.steps}")
        if self.img_size < 32 or self.img_size % 32:
            raise ProbeError(f"img-size must be a multiple of 32 (the encoder's /32 maps), "
                             f"got {self.img_size}")
        if self.batch_size < 2:
            raise ProbeError(f"batch-size must be at least 2 (batch norm), got {self.batch_size}")
        if not 0.0 < self.threshold < 1.0:
            raise ProbeError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.lr <= 0 or self.weight_decay < 0 or self.distance <= 0 or self.head_dim < 8:
            raise ProbeError("lr and distance must be > 0, weight-decay >= 0, head-dim >= 8")
        if self.workers < 0 or (self.num_heads is not None and self.num_heads < 1):
            raise ProbeError("workers must be 0 or more, num-heads 1 or more")
        if self.threads is not None and self.threads < 1:
            raise ProbeError(f"--threads must be 1 or more, got {self.threads}")
        if self.freeze and self.encoder == SCRATCH:
            raise ProbeError("--freeze with --encoder scratch trains a head on random features: "
                             "pass an export folder, or drop --freeze")

    @property
    def detection(self) -> bool:
        return self.task == "detect"
