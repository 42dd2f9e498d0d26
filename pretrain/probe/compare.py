"""Several encoders under one protocol, side by side: `inf590k eval`.

    config = EvalConfig(encoders=parse_encoders(["scratch", "dugi=export/"]), task="detect",
                        data=root, out=Path("eval/m3fd"), seeds=3)
    print(run_eval(config, log=print))   # the table; results.md, results.json, results.png

Every encoder is fine-tuned (and, in the frozen arm, probed with its encoder frozen) on the
same split, schedule, input size and head, once per seed; a cell is encoder x arm x seed and
writes its own `metrics.json` (`cells/ARM/ENCODER/seedN/`). A re-run skips finished cells and
runs the rest; a changed protocol (data, split, schedule, input size, head, or another
encoder under a name already run) is refused in one line instead of mixed into the table.

Results give each encoder's mean +/- std over seeds (sample std), and the paired
difference to `scratch` seed by seed (mean +/- std of the differences). A difference whose
size is within the spread of the differences (|mean| <= std) is said to be inside the
seeds' spread: those runs cannot tell the two encoders apart.
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pretrain.models.reference import encoder_folder
from pretrain.probe.config import TASKS, ProbeConfig, probe_layout
from pretrain.probe.detect_samples import DetectionSet
from pretrain.probe.head import SCRATCH, EncoderSpec, encoder_spec, read_export, scratch_like
from pretrain.probe.results import paired_difference, results_chart, results_markdown, spread
from pretrain.probe.run import (
    METRICS_FILE,
    ProbeData,
    _train_and_evaluate,
    load_probe_data,
    protocol_of,
)
from pretrain.probe.runtime import ProbeError, torch_threads
from pretrain.probe.splits import SPLIT_FILE, Split, read_split, write_json_atomic, write_split
from pretrain.threads import plan_threads

ARMS = ("finetune", "frozen")
TASK_LAYOUTS = {"detect": "m3fd", "segment": "msrs", "small-target": "irstd1k"}
# (metric key, column title, printed scale): the paper prints AP and IoU in percent.
COLUMNS: dict[str, tuple[tuple[str, str, float], ...]] = {
    "detect": (
        ("map", "mAP", 100),
        ("ap50", "AP50", 100),
        ("ap75", "AP75", 100),
        ("ap_small", "APs", 100),
        ("ap_medium", "APm", 100),
        ("ap_large", "APl", 100),
    ),
    "segment": (("miou", "mIoU", 100), ("macc", "mAcc", 100)),
    "small-target": (
        ("iou", "IoU", 100),
        ("niou", "nIoU", 100),
        ("pd", "Pd", 100),
        ("fa", "Fa (1e-6)", 1e6),
    ),
}
PROTOCOL_FILE = "protocol.json"
# Protocol entries that may differ between runs of one protocol: the data folder may move
# (the split's digest and counts say whether the images are the same).
UNCOMPARED = ("encoders", "split_source", "data")
RESULTS_JSON, RESULTS_MD, RESULTS_PNG = "results.json", "results.md", "results.png"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class EvalError(ProbeError):
    """Bad eval options or an --out of another protocol; the message says what to do."""


@dataclass(frozen=True)
class EvalConfig:
    """Options of `inf590k eval` (one field per CLI option)."""

    encoders: tuple[tuple[str, str], ...]  # (name, export folder | checkpoint | scratch[:ARCH])
    task: str
    data: Path
    out: Path
    layout: str | None = None  # None: TASK_LAYOUTS[task]
    seeds: int = 3
    arms: tuple[str, ...] = ARMS
    steps: int = 200
    img_size: int = 256
    batch_size: int = 4
    lr: float | None = None
    weight_decay: float | None = None
    head_dim: int = 32
    detail: bool = False
    threshold: float = 0.5
    distance: float = 3.0
    split: Path | None = None  # else out/split.json of an earlier run, else seeded
    split_seed: int = 0
    workers: int = 0
    arch: str = "dugi_mae_base"  # scratch's architecture when no other encoder sets it
    num_heads: tuple[tuple[str, int], ...] = ()  # (name, heads) of released checkpoints
    device: str = "auto"
    threads: int | None = None  # torch threads (None: the usable cores less the workers)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        if self.task not in TASKS:
            raise EvalError(f"unknown task {self.task!r}: use one of {', '.join(TASKS)}")
        if not self.encoders:
            raise EvalError(
                "no --encoder: give NAME=PATH (repeatable), e.g. scratch and dugi=export/"
            )
        if self.seeds < 1:
            raise EvalError(f"--seeds must be at least 1, got {self.seeds}")
        unknown = [arm for arm in self.arms if arm not in ARMS]
        if unknown or not self.arms:
            raise EvalError(f"--arm {unknown[0] if unknown else ''!r}: use {' or '.join(ARMS)}")
        names = [name for name, _ in self.encoders]
        if len(set(names)) < len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise EvalError(f"--encoder name {twice!r} is given twice: name each encoder once")
        stray = sorted(set(dict(self.num_heads)) - set(names))
        if stray:
            raise EvalError(f"--num-heads {stray[0]}=...: no --encoder of that name")

    def probe_config(self) -> ProbeConfig:
        """The probe options every cell shares (the seed and arm vary per cell)."""
        layout = self.layout or TASK_LAYOUTS[self.task]
        return ProbeConfig(
            encoder="eval",
            data=self.data,
            layout=probe_layout(layout),
            out=self.out,
            task=self.task,
            steps=self.steps,
            img_size=self.img_size,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            head_dim=self.head_dim,
            detail=self.detail,
            threshold=self.threshold,
            distance=self.distance,
            seed=self.split_seed,
            workers=self.workers,
            device=self.device,
            threads=self.threads,
            baseline=False,
        )


def parse_encoders(values: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """`NAME=PATH` values as (name, source) pairs; a bare `scratch` (or `scratch:ARCH`) is
    named scratch, a bare path by its last part."""
    pairs = []
    for value in values:
        name, sep, source = value.partition("=")
        if not sep:
            name, source = (SCRATCH if _is_scratch(value) else Path(value).name), value
        if not NAME.match(name) or not source:
            raise EvalError(
                f"--encoder {value!r}: write NAME=PATH with a NAME of letters, digits "
                f"and _.+- (PATH: an export folder, a released .pth, or scratch)"
            )
        pairs.append((name, source))
    return tuple(pairs)


def parse_heads(values: Iterable[str]) -> tuple[tuple[str, int], ...]:
    """`NAME=N` values of --num-heads."""
    pairs = []
    for value in values:
        name, _, heads = value.partition("=")
        if not heads.isdigit() or int(heads) < 1:
            raise EvalError(f"--num-heads {value!r}: write NAME=N, the encoder's name and heads")
        pairs.append((name, int(heads)))
    return tuple(pairs)


# --------------------------------------------------------------------------- encoders


def _is_scratch(source: str) -> bool:
    return source == SCRATCH or source.startswith(SCRATCH + ":")


def resolve_encoders(config: EvalConfig) -> dict[str, EncoderSpec]:
    """Each encoder's spec; a released checkpoint is exported into out/encoders/NAME once.
    `scratch` takes the architecture of the first other encoder (else --arch);
    `scratch:ARCH` names one."""
    heads = dict(config.num_heads)
    specs: dict[str, EncoderSpec] = {}
    for name, source in config.encoders:
        if _is_scratch(source):
            continue
        path = Path(source)
        if not path.exists():
            raise EvalError(f"--encoder {name}={source}: no such file or folder")
        # a released file is converted once per content: a changed file is a new export
        work = config.out / "encoders" / name
        if path.is_file():
            work = work / _sha256(path)[:12]
        try:
            folder = encoder_folder(path, work, heads.get(name))
            specs[name] = read_export(folder)
        except ValueError as error:
            raise EvalError(f"--encoder {name}={source}: {error}") from error
    first = next(iter(specs.values()), None)
    for name, source in config.encoders:
        if _is_scratch(source):
            arch = source.partition(":")[2]
            if arch:
                specs[name] = encoder_spec(SCRATCH, arch)
            else:
                specs[name] = scratch_like(first) if first else encoder_spec(SCRATCH, config.arch)
    return {name: specs[name] for name, _ in config.encoders}  # in the order given


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_encoder(spec: EncoderSpec) -> dict[str, Any]:
    """What makes an encoder the same one in a later run: architecture, arguments, weights."""
    return dict(
        architecture=spec.architecture,
        model_args=dict(spec.model_args),
        weights_sha256=_sha256(spec.weights) if spec.weights else None,
    )


def baseline_name(config: EvalConfig) -> str | None:
    """The encoder the others are compared with: the one named scratch, else the first
    from random weights; None when every encoder is pretrained."""
    names = dict(config.encoders)
    if SCRATCH in names:
        return SCRATCH
    return next((name for name, source in config.encoders if _is_scratch(source)), None)


# --------------------------------------------------------------------------- protocol


def split_digest(split: Split) -> str:
    text = json.dumps([sorted(split.train), sorted(split.test)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def eval_protocol(
    config: EvalConfig,
    base: ProbeConfig,
    data: ProbeData | DetectionSet,
    specs: Mapping[str, EncoderSpec],
) -> dict[str, Any]:
    protocol = protocol_of(base, data)
    protocol["split_source"] = protocol["split"]  # where the first run's split came from
    protocol["split"] = split_digest(data.split())  # the images, whatever the file says
    protocol["encoders"] = {name: describe_encoder(spec) for name, spec in specs.items()}
    return protocol


def check_protocol(out: Path, protocol: dict[str, Any]) -> dict[str, Any]:
    """The protocol of --out: written on the first run; a later run must match it (new
    encoders join; a known name must be the same encoder). One-line errors otherwise."""
    path = out / PROTOCOL_FILE
    if not path.is_file():
        write_json_atomic(path, protocol)
        return protocol
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise EvalError(f"{path} is unreadable ({error}): use a new --out") from error
    for key, value in protocol.items():
        if key not in UNCOMPARED and stored.get(key) != value:
            raise EvalError(
                f"--out {out} holds results of another protocol ({key}: {stored.get(key)!r} "
                f"there, {value!r} now): use a new --out, or the options of that run"
            )
    encoders = dict(stored.get("encoders", {}))
    protocol = dict(protocol, split_source=stored.get("split_source", protocol["split_source"]))
    for name, described in protocol["encoders"].items():
        if name in encoders and encoders[name] != described:
            raise EvalError(
                f"--encoder {name} is not the encoder of the cells in {out} (its weights or "
                f"architecture changed): give it another name, or use a new --out"
            )
        encoders[name] = described
    merged = dict(protocol, encoders=encoders)
    write_json_atomic(path, merged)
    return merged


# --------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    arm: str
    encoder: str
    seed: int
    metrics: Mapping[str, Any]
    seconds: float
    out: Path
    ran: bool  # False: finished by an earlier run, read back


def cell_dir(out: Path, arm: str, encoder: str, seed: int) -> Path:
    return out / "cells" / arm / encoder / f"seed{seed}"


def finished_cell(folder: Path) -> dict[str, Any] | None:
    """A cell's metrics.json if it finished (written last, so half a cell has none)."""
    try:
        record = json.loads((folder / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("metrics"), dict) else None


def _scores(task: str, metrics: Mapping[str, Any]) -> str:
    parts = []
    for key, title, scale in COLUMNS[task][:3]:
        value = metrics.get(key)
        parts.append(f"{title} {value * scale:.1f}" if value is not None else f"{title} -")
    return "  ".join(parts)


def run_cells(
    config: EvalConfig,
    base: ProbeConfig,
    data: ProbeData | DetectionSet,
    specs: Mapping[str, EncoderSpec],
    log: Callable[[str], None],
) -> list[Cell]:
    plan = [
        (arm, name, seed) for arm in config.arms for name in specs for seed in range(config.seeds)
    ]
    cells = []
    for number, (arm, name, seed) in enumerate(plan, start=1):
        folder = cell_dir(config.out, arm, name, seed)
        prefix = f"[{number}/{len(plan)}] {arm} {name} seed {seed}"
        record = finished_cell(folder)
        if record is not None:
            cells.append(
                Cell(
                    arm, name, seed, record["metrics"], float(record["seconds"]), folder, ran=False
                )
            )
            log(f"{prefix}: done before, skipped ({_scores(config.task, record['metrics'])})")
            continue
        spec = specs[name]
        source = str(spec.weights) if spec.weights else f"random {spec.architecture}"
        cell_config = replace(base, encoder=source, seed=seed, freeze=arm == "frozen", out=folder)
        summary = _train_and_evaluate(cell_config, spec, data, folder)
        cells.append(Cell(arm, name, seed, summary.metrics, summary.seconds, folder, ran=True))
        log(f"{prefix}: {_scores(config.task, summary.metrics)} ({summary.seconds:.1f} s)")
    return cells


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class EvalSummary:
    results: Mapping[str, Any]
    out: Path

    def __str__(self) -> str:
        timing = self.results["timing"]
        per_cell = timing["seconds_per_cell"]
        return (
            results_markdown(self.results).rstrip()
            + f"\n\neval: {timing['cells']} cells ({timing['ran']} run now"
            + (f", {per_cell:.1f} s per cell" if per_cell is not None else "")
            + f") -> {self.out / RESULTS_MD}, {self.out / RESULTS_JSON}, {self.out / RESULTS_PNG}"
        )


def eval_split(config: EvalConfig) -> Split | None:
    """--split, else the split of an earlier run in --out (so a re-run sees its images)."""
    if config.split is not None:
        return read_split(config.split, config.probe_config().layout)
    earlier = config.out / SPLIT_FILE
    return read_split(earlier, config.probe_config().layout) if earlier.is_file() else None


def run_eval(config: EvalConfig, log: Callable[[str], None] = print) -> EvalSummary:
    """Every encoder x arm x seed cell not finished yet, then the tables and the chart."""
    base = config.probe_config()
    config.out.mkdir(parents=True, exist_ok=True)
    data = load_probe_data(base, eval_split(config))
    specs = resolve_encoders(config)
    protocol = check_protocol(config.out, eval_protocol(config, base, data, specs))
    if not (config.out / SPLIT_FILE).is_file():
        write_split(config.out / SPLIT_FILE, base.layout, data.split())
    log(
        f"eval {config.task} on {base.layout}: {len(specs)} encoders x {len(config.arms)} "
        f"arms x {config.seeds} seeds, {protocol['train_images']} train / "
        f"{protocol['test_images']} test images, {base.img_size} px, {base.steps} steps; "
        f"{plan_threads(config.workers, config.threads)}"
    )
    with torch_threads(config.workers, config.threads):
        cells = run_cells(config, base, data, specs, log)
    results = aggregate(config, cells, protocol)
    write_json_atomic(config.out / RESULTS_JSON, results)
    (config.out / RESULTS_MD).write_text(results_markdown(results))
    results_chart(results).savefig(config.out / RESULTS_PNG)
    return EvalSummary(results, config.out)


def _values(cells: Sequence[Cell], arm: str, encoder: str, key: str) -> dict[int, float]:
    return {
        c.seed: float(c.metrics[key])
        for c in cells
        if c.arm == arm and c.encoder == encoder and c.metrics.get(key) is not None
    }


def aggregate(
    config: EvalConfig, cells: Sequence[Cell], protocol: dict[str, Any]
) -> dict[str, Any]:
    """results.json: per arm, each encoder's metrics over seeds and its difference to the
    baseline; per-class AP for detection; the cells and their timing."""
    baseline = baseline_name(config)
    names = [name for name, _ in config.encoders]
    arms: dict[str, Any] = {}
    for arm in config.arms:
        table, differences, classes = {}, {}, {}
        for name in names:
            table[name] = {}
            for key, _, _ in COLUMNS[config.task]:
                values = _values(cells, arm, name, key)
                if values:
                    table[name][key] = dict(
                        spread(list(values.values())), values={str(s): v for s, v in values.items()}
                    )
            if baseline is not None and name != baseline:
                differences[name] = {}
                for key, _, _ in COLUMNS[config.task]:
                    diff = paired_difference(
                        _values(cells, arm, name, key), _values(cells, arm, baseline, key)
                    )
                    if diff is not None:
                        differences[name][key] = diff
            if config.task == "detect":
                per_class: dict[str, list[float]] = {}
                for cell in cells:
                    if cell.arm == arm and cell.encoder == name:
                        for cls, value in cell.metrics.get("class_ap", {}).items():
                            if value is not None:
                                per_class.setdefault(cls, []).append(float(value))
                classes[name] = {cls: spread(v) for cls, v in per_class.items()}
        arms[arm] = dict(
            encoders=table,
            differences=differences,
            **({"class_ap": classes} if config.task == "detect" else {}),
        )
    ran = [c for c in cells if c.ran]
    return dict(
        task=config.task,
        protocol=protocol,
        baseline=baseline,
        seeds=config.seeds,
        columns=[dict(key=k, title=t, scale=s) for k, t, s in COLUMNS[config.task]],
        arms=arms,
        cells=[
            {**asdict(c), "out": str(c.out), "metrics": dict(c.metrics)}
            for c in cells
        ],
        timing=dict(
            cells=len(cells),
            ran=len(ran),
            seconds_per_cell=statistics.fmean(c.seconds for c in cells) if cells else None,
        ),
    )
