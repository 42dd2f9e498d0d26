"""A run folder: its metrics log (metrics.jsonl, cut back on resume so each step is logged
once), whether --out already holds a run, and the run's closing result.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pretrain import checkpoint as ckpt


def say(line: str) -> None:
    """A line on stdout, clear of a progress bar, flushed (batch jobs read a file as it grows)."""
    tqdm.write(line)
    sys.stdout.flush()


def log_line(record: dict[str, Any], total_steps: int) -> str:
    """A --log-every record as one line (what the progress bar shows, for --no-progress):
    `step 20/60  loss 0.4123  lr 0.0012  85 img/s  wait 3%  mfu n/a`."""
    loss = record.get("loss")
    mfu = record.get("mfu")
    parts = [
        f"step {record['step']}/{total_steps}",
        f"loss {'n/a' if loss is None else f'{loss:.4f}'}",
        f"lr {record.get('lr', 0.0):.3g}",
        f"{record.get('images_per_s', 0.0):.0f} img/s",
        f"wait {100 * (record.get('data_wait') or 0.0):.0f}%",
        f"mfu {'n/a' if mfu is None else f'{100 * mfu:.1f}%'}",
    ]
    return "  ".join(parts)  # a validation step's losses have their own line


@dataclass
class Interval:
    """What the loop gathers between two log steps (device tensors + host timers)."""

    loss_sum: torch.Tensor
    loss_count: torch.Tensor
    started: float = field(default_factory=time.perf_counter)
    data_wait: float = 0.0
    images: int = 0
    steps: int = 0

    @classmethod
    def on(cls, device: torch.device) -> Interval:
        return cls(torch.zeros((), device=device), torch.zeros((), device=device))

    def record(
        self,
        step: int,
        epoch: float | None,
        lr: float,
        world_size: int,
        flops_per_image: float | None,
        peak_flops: float | None,
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        """The --log-every record of this interval (one host sync for the loss). MFU counts
        3x the forward FLOPs (forward + backward) of this process's images."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        loss = (self.loss_sum / self.loss_count.clamp(min=1)).item()
        mfu = None
        if peak_flops and flops_per_image:
            mfu = 3 * flops_per_image * (self.images / elapsed) / peak_flops
        return {
            "step": step,
            "epoch": epoch,
            "loss": loss if self.loss_count.item() > 0 else None,
            "lr": lr,
            "images_per_s": self.images * world_size / elapsed,
            "mfu": mfu,
            "data_wait": self.data_wait / elapsed,
            **extra,
            "time": time.time(),
        }


class MetricsLog:
    """JSONL metrics (and TensorBoard scalars when asked) on the main rank."""

    def __init__(self, run_dir: Path, tensorboard: bool, enabled: bool) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional: --tensorboard
            except ImportError as exc:
                raise RuntimeError(
                    "--tensorboard needs the tensorboard package: pip install tensorboard"
                ) from exc
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step" and value is not None:
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class TrainingDiverged(RuntimeError):
    """Too many steps with a NaN/inf loss or gradient."""


class RunExistsError(ValueError):
    """--out already holds a run and --resume was not given."""


@dataclass
class TrainResult:
    step: int
    loss: float | None
    checkpoint: Path | None
    run_dir: Path
    total_steps: int | None = None
    images_seen: int = 0
    nan_skips: int = 0
    bad_samples: int = 0
    shard_errors: int = 0
    finished_before: bool = False  # --resume auto found the run already finished
    is_main: bool = True  # the rank that prints and writes
    resumed_from: Path | None = None
    passed_over: tuple[str, ...] = ()  # damaged checkpoints skipped by --resume auto
    drawn: str = ""  # realised shares of the samples trained on, per source and bin

    def _resume_note(self) -> str:
        if not self.passed_over or self.resumed_from is None:
            return ""
        return f" (resumed from {self.resumed_from.name}: {', '.join(self.passed_over)} damaged)"

    def __str__(self) -> str:
        """The run's one closing line."""
        if self.finished_before:
            asked = (  # a shorter length asked for: said, since nothing is cut back
                f" and this length ({self.total_steps} steps) is not more than that"
                if self.total_steps is not None and self.total_steps < self.step
                else ""
            )
            return (
                f"pretrain: the run in {self.run_dir} finished at step {self.step}{asked}; "
                f"nothing to do (last checkpoint {self.checkpoint}). To train on, resume it with "
                "a larger --steps or --epochs: its lr schedule is rebuilt for the new length"
            )
        loss = "n/a" if self.loss is None else f"{self.loss:.4f}"
        return (
            f"pretrain: step {self.step}/{self.total_steps}, loss {loss}, {self.images_seen} "
            f"images, {self.nan_skips} NaN/inf steps skipped, {self.bad_samples} bad samples "
            f"and {self.shard_errors} shard errors skipped in the batches trained on (workers "
            f"reading ahead may have logged more); run in {self.run_dir}, last "
            f"checkpoint {self.checkpoint}{self._resume_note()}"
            + (f"; drawn: {self.drawn}" if self.drawn else "")
        )


def holds_run(run_dir: Path) -> str | None:
    """What in `run_dir` belongs to an earlier run (a checkpoint or metrics), if anything."""
    checkpoints = ckpt.list_checkpoints(run_dir)
    if checkpoints:
        return f"{len(checkpoints)} checkpoint(s), the latest {checkpoints[-1].name}"
    metrics = Path(run_dir) / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        return "metrics.jsonl"
    return None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a line cut short by a kill is dropped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only the records up to `step`: a resumed run logs the later steps again."""
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if isinstance(r.get("step"), int) and r["step"] <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)
