"""The pretraining run's configuration: one frozen dataclass per option group, one field per
option, its help text in the field's metadata. `cli_options()` is the one mapping to command-line
options, used by `inf590k pretrain` (click) and `python -m pretrain` (argparse).

Light on purpose: the standard library and PyYAML only, so option parsing imports no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml


def option(default: Any, help_text: str) -> Any:
    """A config field with its command-line help."""
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class DataConfig:
    shards: tuple[str, ...] = option(
        (),
        "Shard URLs: paths, brace patterns, file://, http(s)://, pipe:, Hugging Face resolve URLs, a dataset folder or its _info.json. Repeatable.",
    )
    info: str | None = option(
        None, "_info.json URL for the epoch length (default: found next to the shards)."
    )
    split: str = option("train", "Split of _info.json to read.")
    batch_size: int = option(
        64, "Images per step per process (global batch = batch x processes x accumulation)."
    )
    workers: int = option(
        4,
        "Data loader processes per GPU/process (each feeds ~850 images/s of 640x512 frames: ~7 keep dugi_mae_base fed on an H100, docs/loader.md).",
    )
    resampled: bool = option(
        True, "Infinite stream of shards sampled with replacement (webdataset `resampled`)."
    )
    shuffle_buffer: int = option(2000, "Samples held in the shuffle buffer.")
    shuffle_initial: int = option(500, "Samples buffered before the first one is returned.")
    shuffle_bytes: int = option(
        1 << 30, "Bytes the shuffle buffer may hold (a shard of huge samples cannot fill memory)."
    )
    scale_min: float = option(0.2, "RandomResizedCrop smallest area fraction.")
    scale_max: float = option(1.0, "RandomResizedCrop largest area fraction.")
    hflip: float = option(0.5, "Probability of a horizontal flip.")
    max_pixels: int = option(
        80_000_000, "Skip decoded samples larger than this (decompression bombs)."
    )
    retries: int = option(5, "Attempts to open an unreachable shard URL before failing.")
    retry_wait: float = option(1.0, "Seconds between attempts (doubling).")
    timeout: float = option(60.0, "Network timeout per request, seconds.")
    read_deadline: float = option(
        900.0, "Seconds allowed for reading one whole shard over the network."
    )
    max_shard_failures: float = option(
        0.5, "Share of a pass's shards that may fail (skipped) before the run stops."
    )
    samples_per_epoch: int | None = option(
        None, "Epoch length in samples (default: the selected shards' count in _info.json)."
    )
    val_samples: int = option(
        256,
        "Held-out images for the validation loss: a seeded sample the run never trains on (0: no validation; off with a message when it would be over 10% of the data).",
    )
    val_shards: tuple[str, ...] = option(
        (),
        "Shards to validate on instead of a sample (their first --val-samples images); left out of training. Repeatable.",
    )
    raw16: bool = option(
        False,
        "Read the raw 16-bit `.npy` member of samples that have one (shard --keep-16bit), losslessly.",
    )
    mix: tuple[str, ...] = option(
        (),
        "Sampling weight of a source, SOURCE=W (e.g. --mix flir=2 --mix kaist=1): sources drawn in these proportions, unnamed ones not at all (default: as stored). Repeatable.",
    )
    mix_bin: tuple[str, ...] = option(
        (),
        "Sampling weight of a resolution bin, BIN=W (e.g. --mix-bin 640x512=1): bins drawn in these proportions, unnamed ones not at all (default: as stored). Repeatable.",
    )

    def __post_init__(self) -> None:
        if self.val_samples < 0:
            raise ValueError(f"--val-samples {self.val_samples}: give 0 (no validation) or more")
        if not 0 <= self.max_shard_failures <= 1:
            raise ValueError(
                f"--max-shard-failures must be a share in 0..1, got {self.max_shard_failures}"
            )
        if self.read_deadline <= 0 or self.timeout <= 0:
            raise ValueError("--read-deadline and --timeout must be positive seconds")
        if (self.mix or self.mix_bin) and not self.resampled:
            raise ValueError(
                "--mix and --mix-bin draw samples by weight, which needs --resampled "
                "(--no-resampled reads every sample once per epoch)"
            )


@dataclass(frozen=True)
class OptimConfig:
    epochs: float = option(400, "Training length in epochs (the paper: 400).")
    warmup_epochs: float = option(40, "Linear warm-up length in epochs (the paper: 40).")
    steps: int | None = option(None, "Training length in optimiser steps (overrides --epochs).")
    blr: float = option(1.5e-4, "Base learning rate; lr = blr x global batch / 256.")
    lr: float | None = option(None, "Absolute learning rate (overrides --blr).")
    min_lr: float = option(0.0, "Floor of the cosine schedule.")
    weight_decay: float = option(
        0.05, "AdamW weight decay (none on norms, biases, position embeddings, tokens)."
    )
    beta1: float = option(0.9, "AdamW beta1.")
    beta2: float = option(0.95, "AdamW beta2.")
    accum_steps: int = option(1, "Gradient accumulation steps.")
    clip_grad: float | None = option(None, "Clip the gradient norm to this value.")

    def __post_init__(self) -> None:
        # a run of no steps trained nothing and closed as 'step 0/-3'
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps {self.steps}: give 1 or more")
        if self.epochs < 0 or self.warmup_epochs < 0:
            raise ValueError("--epochs and --warmup-epochs must be 0 or more")


@dataclass(frozen=True)
class RunConfig:
    out: str = option(
        "runs/pretrain", "Run directory: checkpoints, metrics.jsonl, reconstruction grids."
    )
    model: str = option("dugi_mae_base", "Model name (see `inf590k model-info --help`).")
    model_args: tuple[str, ...] = option(
        (), "Model overrides FIELD=VALUE, e.g. masking=random, ddg=false, img_size=224. Repeatable."
    )
    seed: int = option(0, "Random seed.")
    device: str = option("auto", "auto, cpu, cuda (or gpu) or cuda:N.")
    threads: int | None = option(
        None,
        "Torch intra-op threads (default: the cores this process may use, by affinity and cgroup quota, shared among torchrun's local processes, less --workers, at least 1).",
    )
    dist_backend: str = option("auto", "auto (nccl on CUDA, gloo on CPU), nccl or gloo.")
    precision: str = option("auto", "auto (bf16 autocast on CUDA, fp32 on CPU), bf16 or fp32.")
    compile: bool = option(False, "torch.compile the model.")
    log_every: int = option(50, "Steps between log lines (the only host syncs).")
    ckpt_every: int = option(1000, "Steps between checkpoints.")
    keep_last: int = option(3, "Checkpoints kept.")
    vis_every: int = option(
        0,
        "Steps between reconstruction grid PNGs in RUN/vis/; one of the last step is always written (0: only that one).",
    )
    val_every: int = option(
        500,
        "Steps between validation passes, and one at the end (0: only that one); at batch 64 a pass of 256 images costs under 1% of training.",
    )
    resume: str | None = option(
        None,
        "'auto' (latest readable checkpoint in --out; a finished run just reports) or a checkpoint path. Without it, an --out holding a run is refused.",
    )
    data_name: str | None = option(
        None,
        "How the checkpoint and model card name the data (default: --shards as given; Hub URLs as their repo id).",
    )
    init: str | None = option(
        None,
        "Start from a released InfMAE / ConvMAE / MAE pretraining checkpoint (.pth): its weights fill --model's encoder and decoder (DDG starts fresh), its shapes set the widths.",
    )
    init_kind: str | None = option(
        None, "infmae, convmae or mae: the kind of --init (default: found from its keys)."
    )
    stop_step: int | None = option(
        None, "Stop (after checkpointing) at this step, as if killed: for tests and preemption."
    )
    max_nan_skips: int = option(20, "Stop after this many skipped NaN/inf steps.")
    peak_tflops: float | None = option(
        None, "Accelerator peak TFLOP/s for MFU (default: known cards)."
    )
    tensorboard: bool = option(False, "Also log to TensorBoard.")
    deterministic: bool = option(False, "Deterministic algorithms (CPU resume checks).")
    progress: bool = option(True, "Show a progress bar.")

    def __post_init__(self) -> None:
        # intervals: a zero one divides by zero mid-run, a negative one reads as nonsense
        least_of = {"log_every": 1, "ckpt_every": 1, "val_every": 0, "vis_every": 0}
        for name, least in least_of.items():
            value = getattr(self, name)
            if value < least:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} {value}: give {least} or more")


@dataclass(frozen=True)
class PretrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


GROUPS: tuple[tuple[str, type], ...] = (
    ("data", DataConfig),
    ("optim", OptimConfig),
    ("run", RunConfig),
)


def option_fields() -> list[tuple[str, dataclasses.Field]]:
    """(group, field) for every CLI option, one option per config field."""
    return [(group, f) for group, cls in GROUPS for f in dataclasses.fields(cls)]


def config_from_options(options: dict[str, Any]) -> PretrainConfig:
    """Build the config from flat options (CLI names with `_`); unknown names are an error."""
    known = {f.name for _, f in option_fields()}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown pretrain option(s): {unknown}")
    parts = {}
    for group, cls in GROUPS:
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in options and options[f.name] is not None:
                value = options[f.name]
                values[f.name] = tuple(value) if isinstance(value, list) else value
        parts[group] = cls(**values)
    return PretrainConfig(**parts)


def parse_model_args(items: tuple[str, ...]) -> dict[str, Any]:
    """`("img_size=64", "mask_ratio=0.6")` -> {"img_size": 64, "mask_ratio": 0.6}."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--model-args {item!r}: expected field=value, e.g. img_size=224")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


@dataclass(frozen=True)
class CliOption:
    """One command-line option of a config field (`--batch-size` is `batch_size`)."""

    name: str  # the field's name
    flag: str  # --kebab-name
    kind: str  # "bool", "multiple" (a tuple field: repeatable) or "int" / "float" / "str"
    default: Any
    help: str
    required: bool = False


def cli_options() -> list[CliOption]:
    """Every pretraining option, from the config fields: the one mapping the click command and
    the argparse parser both build from."""
    options = []
    for _, f in option_fields():
        kind = str(f.type).replace(" | None", "")
        if kind.startswith("tuple["):
            kind = "multiple"
        elif kind not in ("bool", "int", "float", "str"):
            raise TypeError(f"no command-line mapping for {f.name}: {f.type}")
        options.append(
            CliOption(
                name=f.name,
                flag="--" + f.name.replace("_", "-"),
                kind=kind,
                default=f.default,
                help=f.metadata.get("help", ""),
                required=f.name == "shards",
            )
        )
    return options
