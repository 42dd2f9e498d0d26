"""A run's metrics.jsonl as a figure: training and validation loss, and the lr, against steps.

    curves = read_curves(Path("runs/dugi"))          # CurvesError: one line on bad input
    figure = draw_curves([curves])                   # several runs: one figure (an ablation)
    save_figure(figure, Path("runs/dugi/curves.png"))

The loss panel is log-scaled when the values span more than LOG_SPAN; the validation losses
are drawn with markers (one per pass). With several runs, each run keeps one colour, and the
all-patch loss under the common random mask is the curve to compare (the training loss is
not comparable across masking strategies).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pretrain import checkpoint as ckpt

METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"
LOG_SPAN = 3.0  # max/min of the losses above which the loss axis is logarithmic
TRAIN_LABEL = "train loss"
VAL_LABEL = "val loss (own masking, masked patches)"
COMMON_LABEL = "val loss (all patches, common random mask)"


class CurvesError(ValueError):
    """A run whose metrics cannot be drawn; the message is one line saying why."""


@dataclass(frozen=True)
class Curves:
    """One run's series, each a list of (step, value)."""

    name: str  # how the figure labels the run
    train: list[tuple[int, float]] = field(default_factory=list)
    lr: list[tuple[int, float]] = field(default_factory=list)
    val: list[tuple[int, float]] = field(default_factory=list)
    common: list[tuple[int, float]] = field(default_factory=list)
    skipped_lines: int = 0  # unreadable lines of metrics.jsonl passed over

    @property
    def has_validation(self) -> bool:
        return bool(self.val or self.common)

    def notes(self) -> list[str]:
        """One line per thing a reader of the figure should know about this run."""
        notes = []
        if self.skipped_lines:
            notes.append(
                f"{self.name}: {self.skipped_lines} unreadable line(s) of {METRICS_NAME} passed over"
            )
        if not self.has_validation:
            notes.append(
                f"{self.name}: no validation loss (the run had no held-out set: --val-samples "
                "or --val-shards); only its training loss is drawn"
            )
        return notes


def metrics_path(run: Path) -> Path:
    """RUN/metrics.jsonl, or the file itself when given."""
    return run if run.is_file() or run.suffix == ".jsonl" else run / METRICS_NAME


def read_curves(run: Path, name: str | None = None) -> Curves:
    """The series of a run folder (or its metrics.jsonl); one-line CurvesError on bad input."""
    path = metrics_path(run)
    if not path.is_file():
        raise CurvesError(
            f"{run}: no {METRICS_NAME} (not a pretraining run folder, or nothing logged yet)"
        )
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as err:
        raise CurvesError(f"{path}: cannot be read ({err.strerror or err})") from err
    records, skipped = _records(lines)
    if not lines or not any(line.strip() for line in lines):
        raise CurvesError(f"{path} is empty: the run has not logged a step yet")
    if not records:
        raise CurvesError(
            f"{path}: no readable record in {len(lines)} line(s) (not a metrics log, or corrupt)"
        )
    series: dict[str, dict[int, float]] = {
        key: {} for key in ("loss", "lr", "val_loss", "val_common_loss")
    }
    for record in records:
        for key, values in series.items():
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values[record["step"]] = float(value)  # a step logged twice: the last one
    if not any(series.values()):
        raise CurvesError(f"{path}: its records hold no loss or lr to draw")
    ordered = {key: sorted(values.items()) for key, values in series.items()}
    return Curves(
        name=name or run_label(run),
        train=ordered["loss"],
        lr=ordered["lr"],
        val=ordered["val_loss"],
        common=ordered["val_common_loss"],
        skipped_lines=skipped,
    )


def _records(lines: Sequence[str]) -> tuple[list[dict[str, Any]], int]:
    """Records with an integer step; the number of non-blank lines that are not one."""
    records, skipped = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
        else:
            skipped += 1
    return records, skipped


def run_label(run: Path) -> str:
    """`name (model, masking)`: the folder's name and what its newest checkpoint trained."""
    folder = run.parent if run.is_file() else run
    name = folder.resolve().name or str(folder)
    described = _model_of(folder)
    return f"{name} ({described})" if described else name


def _model_of(folder: Path) -> str | None:
    """Model name and masking from the newest checkpoint (memory-mapped: its tensors are not
    read); None when there is no readable one."""
    for path in reversed(ckpt.list_checkpoints(folder)):
        try:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged checkpoint: try the one before
            continue
        model = state.get("model_name") if isinstance(state, dict) else None
        config = state.get("model_config") if isinstance(state, dict) else None
        masking = config.get("masking") if isinstance(config, dict) else None
        if isinstance(model, str):
            return f"{model}, {masking} masking" if isinstance(masking, str) else model
    return None


def draw_curves(runs: Sequence[Curves], title: str | None = None) -> Any:
    """A matplotlib Figure: loss (top) and lr (bottom) against steps, a colour per run."""
    # matplotlib is heavy: imported only when a figure is drawn
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    if not runs:
        raise CurvesError("no run to draw")
    several = len(runs) > 1
    figure = Figure(figsize=(15 if several else 10, 7.5), layout="constrained")
    loss_axis, lr_axis = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    for index, run in enumerate(runs):
        colour = f"C{index % 10}"
        prefix = f"{run.name}: " if several else ""
        _line(
            loss_axis, run.train, prefix + TRAIN_LABEL, colour, "-", None, 0.6 if several else 1.0
        )
        _line(loss_axis, run.val, prefix + VAL_LABEL, colour if several else "C1", "--", "x", 1.0)
        _line(
            loss_axis, run.common, prefix + COMMON_LABEL, colour if several else "C2", ":", "o", 1.0
        )
        _line(
            lr_axis, run.lr, prefix + "lr" if several else "learning rate", colour, "-", None, 1.0
        )
    losses = [v for run in runs for series in (run.train, run.val, run.common) for _, v in series]
    positive = [v for v in losses if v > 0]
    if positive and len(positive) == len(losses) and max(positive) / min(positive) > LOG_SPAN:
        loss_axis.set_yscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")  # 0.3, not 3 x 10^-1
        loss_axis.yaxis.set_major_formatter(plain)
        if max(positive) / min(positive) < 10:  # within a decade: label the minor ticks too
            loss_axis.yaxis.set_minor_formatter(plain)
    loss_axis.set_ylabel("loss (MSE, normalised pixels)")
    loss_axis.set_title(title or _title(runs))
    loss_axis.grid(True, which="both", alpha=0.3)
    if several:  # a legend per run and series: beside the axes, not over the curves
        figure.legend(
            *loss_axis.get_legend_handles_labels(), loc="outside right upper", fontsize="small"
        )
    else:
        loss_axis.legend(fontsize="small", loc="upper right")
    lr_axis.set_ylabel("learning rate")
    lr_axis.set_xlabel("step")
    lr_axis.grid(True, alpha=0.3)
    lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    lr_axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole
    return figure


def _line(
    axis: Any,
    series: list[tuple[int, float]],
    label: str,
    colour: str,
    style: str,
    marker: str | None,
    alpha: float,
) -> None:
    if not series:
        return
    steps, values = zip(*series, strict=True)
    axis.plot(
        steps, values, style, color=colour, marker=marker, label=label, alpha=alpha, markersize=4
    )


def _title(runs: Sequence[Curves]) -> str:
    if len(runs) == 1:
        return f"{runs[0].name}: training and validation loss"
    return f"{len(runs)} runs: compare the all-patch validation loss (one common random mask)"


def save_figure(figure: Any, out: Path) -> Path:
    """Write the figure as PNG, atomically (a reader never sees half a file)."""
    # matplotlib is heavy: imported only when a figure is written
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        FigureCanvasAgg(figure).print_png(str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def save_run_curves(run_dir: Path, name: str | None = None) -> Path:
    """RUN/curves.png from RUN/metrics.jsonl (the run's own figure, redrawn as it goes)."""
    curves = read_curves(run_dir, name=name or run_dir.name)
    return save_figure(draw_curves([curves]), run_dir / CURVES_NAME)


def plot_runs(runs: Sequence[Path], out: Path) -> tuple[Path, list[str]]:
    """Several runs on one figure (an ablation): the PNG written and the notes to print."""
    curves = [read_curves(run) for run in runs]
    names = [c.name for c in curves]
    if len(set(names)) < len(names):  # two runs of the same folder name: tell them apart
        curves = [
            Curves(f"{c.name} [{run}]", c.train, c.lr, c.val, c.common, c.skipped_lines)
            for c, run in zip(curves, runs, strict=True)
        ]
    notes = [note for c in curves for note in c.notes()]
    return save_figure(draw_curves(curves), out), notes
