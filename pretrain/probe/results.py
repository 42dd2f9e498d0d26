"""The results of `inf590k eval`: each encoder's mean and spread over seeds, the paired difference
to the baseline said in words, and the table (results.md) and chart (results.png) shaped like
the paper's.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample std (None for one value) of a metric over seeds."""
    return dict(
        mean=statistics.fmean(values),
        std=statistics.stdev(values) if len(values) > 1 else None,
        n=len(values),
    )


def paired_difference(
    values: Mapping[int, float], baseline: Mapping[int, float]
) -> dict[str, Any] | None:
    """Seed-by-seed differences to the baseline: mean, std, how many agree in sign, and
    whether the difference is inside the seeds' spread, in words."""
    seeds = sorted(set(values) & set(baseline))
    if not seeds:
        return None
    diffs = [values[s] - baseline[s] for s in seeds]
    mean = statistics.fmean(diffs)
    std = statistics.stdev(diffs) if len(diffs) > 1 else None
    agree = sum(1 for d in diffs if d * mean > 0)
    if std is None:
        inside, words = None, "one seed: no spread to judge the difference by"
    elif abs(mean) <= std:
        inside, words = True, "inside the seeds' spread: these runs cannot tell the two apart"
    else:
        inside = False
        words = (
            f"{'above' if mean > 0 else 'below'} it by more than the seeds' spread "
            f"({agree} of {len(diffs)} seeds agree)"
        )
    return dict(mean=mean, std=std, n=len(diffs), agree=agree, inside_spread=inside, verdict=words)



def _cell(entry: Mapping[str, Any] | None, scale: float, signed: bool = False) -> str:
    if not entry:
        return "-"
    sign = "+" if signed else ""
    text = f"{entry['mean'] * scale:{sign}.1f}"
    return text + (f" ± {entry['std'] * scale:.1f}" if entry.get("std") is not None else "")


def results_markdown(results: Mapping[str, Any]) -> str:
    """The paper-shaped tables (rows: encoders; columns: the task's metrics, mean ± std over
    seeds), the paired differences to the baseline, and what they mean in words."""
    protocol = results["protocol"]
    columns = results["columns"]
    header = "| encoder | " + " | ".join(c["title"] for c in columns) + " | seeds |"
    rule = "|---" * (len(columns) + 2) + "|"
    boxes = (
        f", {protocol['test_boxes']} test boxes" if protocol.get("test_boxes") is not None else ""
    )
    lines = [
        f"# {results['task']} on {protocol['layout']}: {len(results['protocol']['encoders'])} "
        f"encoders, {results['seeds']} seeds",
        "",
        f"Protocol: {protocol['train_images']} train / {protocol['test_images']} test images"
        f"{boxes} (split: {protocol['split_source']}, {protocol['split']}), input "
        f"{protocol['img_size']} px, {protocol['steps']} steps of batch {protocol['batch_size']}, "
        f"lr {protocol['lr']:g}, weight decay {protocol['weight_decay']:g}, head "
        f"{protocol['head_dim']}. Values in percent"
        + (" (Fa per million pixels)" if results["task"] == "small-target" else "")
        + ", mean ± std over seeds.",
    ]
    baseline = results["baseline"]
    for arm, block in results["arms"].items():
        lines += ["", f"## {ARM_TITLES[arm]}", "", header, rule]
        for name, metrics in block["encoders"].items():
            seeds = max((m["n"] for m in metrics.values()), default=0)
            cells = [_cell(metrics.get(c["key"]), c["scale"]) for c in columns]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {seeds} |")
        if block["differences"]:
            lines += [
                "",
                f"Difference to {baseline}, seed by seed (mean ± std of the differences):",
                "",
                "| encoder | " + " | ".join(c["title"] for c in columns) + " |",
                "|---" * (len(columns) + 1) + "|",
            ]
            for name, diffs in block["differences"].items():
                cells = [_cell(diffs.get(c["key"]), c["scale"], signed=True) for c in columns]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
            headline = [c for c in columns if c["key"] in HEADLINE[results["task"]]]
            for name, diffs in block["differences"].items():
                for column in headline:
                    diff = diffs.get(column["key"])
                    if diff:
                        lines.append(
                            f"- {name} vs {baseline}, {column['title']}: "
                            f"{_cell(diff, column['scale'], signed=True)} over {diff['n']} "
                            f"seed(s): {diff['verdict']}."
                        )
        elif baseline is None:
            lines += ["", "No encoder from random weights (`scratch`) to compare with."]
        if block.get("class_ap"):
            classes = sorted({c for per in block["class_ap"].values() for c in per})
            lines += [
                "",
                "Per-class AP:",
                "",
                "| encoder | " + " | ".join(classes) + " |",
                "|---" * (len(classes) + 1) + "|",
            ]
            for name, per in block["class_ap"].items():
                lines.append(
                    f"| {name} | " + " | ".join(_cell(per.get(c), 100) for c in classes) + " |"
                )
    timing = results["timing"]
    if timing["seconds_per_cell"] is not None:
        lines += [
            "",
            f"{timing['cells']} cells, {timing['seconds_per_cell']:.1f} s each on "
            f"average ({timing['ran']} run by the last call).",
        ]
    return "\n".join(lines) + "\n"


def results_chart(results: Mapping[str, Any]) -> Figure:
    """Bars of the headline metrics per encoder with std error bars, one panel per arm,
    each bar labelled with its value."""
    task = results["task"]
    columns = {c["key"]: c for c in results["columns"]}
    arms = list(results["arms"])
    names = list(next(iter(results["arms"].values()))["encoders"])
    figure = Figure(figsize=(3.2 + 1.3 * len(names) * 2, 3.6 * len(arms)), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(arms), 1, squeeze=False)[:, 0]
    width = 0.8 / max(1, len(names))
    for ax, arm in zip(axes, arms, strict=True):
        table = results["arms"][arm]["encoders"]
        for index, name in enumerate(names):
            keys = [k for k in HEADLINE[task]]
            entries = [table[name].get(k) for k in keys]
            heights = [
                e["mean"] * columns[k]["scale"] if e else 0.0
                for e, k in zip(entries, keys, strict=True)
            ]
            errors = [
                (e["std"] or 0.0) * columns[k]["scale"] if e else 0.0
                for e, k in zip(entries, keys, strict=True)
            ]
            positions = [i + (index - (len(names) - 1) / 2) * width for i in range(len(keys))]
            bars = ax.bar(positions, heights, width, yerr=errors, capsize=3, label=name)
            ax.bar_label(bars, labels=[f"{h:.1f}" for h in heights], fontsize=7, padding=2)
        ax.set_xticks(range(len(HEADLINE[task])), [columns[k]["title"] for k in HEADLINE[task]])
        ax.set_ylabel("percent")
        ax.set_title(f"{ARM_TITLES[arm]}: mean ± std over {results['seeds']} seeds", fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
        ax.margins(y=0.2)
    protocol = results["protocol"]
    figure.suptitle(
        f"{task} on {protocol['layout']}, {protocol['test_images']} test images, "
        f"{protocol['img_size']} px, {protocol['steps']} steps",
        fontsize=9,
    )
    figure.tight_layout()
    return figure


ARM_TITLES = {"finetune": "Fine-tuned encoder", "frozen": "Frozen encoder (head only)"}


HEADLINE = {"detect": ("map", "ap50"), "segment": ("miou", "macc"), "small-target": ("iou", "pd")}
