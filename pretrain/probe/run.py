"""Fine-tune an encoder on an infrared set and report the field's metrics.

    summary = run_probe(ProbeConfig(encoder="export/", data=root, layout="sirst", out=run))
    print(summary)                # one line: IoU, nIoU, Pd, Fa (mIoU, mAcc for MSRS; mAP ...)
    print(run_probe_pair(config)) # the export and the same architecture from scratch

Three tasks, by layout: small targets (sirst, irstd1k, nudt: IoU, nIoU, Pd, Fa), semantic
segmentation (msrs: mIoU, mAcc) and detection (m3fd, flir_adas_v2, coco: COCO mAP, AP50,
AP75, AP S/M/L, per-class AP; see `pretrain.probe.detect`). Each run writes `metrics.json`
(options, encoder, split, the protocol, metrics, loss curve) and `predictions.png` into its
folder, and the train/test split as `split.json` beside it (reusable with `--split`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn
from tqdm import tqdm

from pretrain.models.reference import encoder_folder
from pretrain.probe.config import (
    ProbeConfig,
)
from pretrain.probe.datasets import (
    IGNORE_INDEX,
    LayoutSamples,
    LoadedSplit,
    load_split,
    read_layout,
)
from pretrain.probe.detect import train_and_evaluate_detector
from pretrain.probe.detect_data import read_detection_layout
from pretrain.probe.detect_samples import DetectionSet
from pretrain.probe.head import (
    SCRATCH,
    EncoderSpec,
    SegmentationProbe,
    build_backbone,
    encoder_spec,
    scratch_like,
)
from pretrain.probe.metrics import SegmentationMetrics, SmallTargetMetrics
from pretrain.probe.optim import ProbeOptimiser
from pretrain.probe.runtime import ProbeError, resolve_device, torch_threads
from pretrain.probe.splits import SPLIT_FILE, Split, read_split, restrict, write_split

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.png"
COMPARISON_FILE = "comparison.json"
PREVIEW_IMAGES = 6
LOSS_POINTS = 50  # loss values kept in metrics.json, evenly spaced over the run
@dataclass(frozen=True)
class ProbeSummary:
    """One trained and evaluated probe."""

    label: str  # pretrained | scratch
    architecture: str
    layout: str
    steps: int
    train_images: int
    test_images: int
    metrics: dict[str, Any] = field(hash=False)
    seconds: float
    out: Path
    without_mask: int = 0  # images of the data set left out for lack of a mask
    left_out: str = ""  # detection: what the reader skipped, counted ("nothing")

    def counts(self) -> str:
        """Train/test images, targets and images dropped, as the console lines give them."""
        if self.detection:
            return (f"{self.train_images} train / {self.test_images} test images, "
                    f"{self.metrics['boxes']} test boxes; left out: {self.left_out or 'nothing'}")
        targets = self.metrics.get("targets")
        return (f"{self.train_images} train / {self.test_images} test images"
                + (f", {targets} test targets" if targets is not None else "")
                + f"; {self.without_mask} images without a mask left out")

    @property
    def binary(self) -> bool:
        return "iou" in self.metrics

    @property
    def detection(self) -> bool:
        return "map" in self.metrics

    def scores(self) -> str:
        m = self.metrics
        if self.detection:
            masks = f"  mask mAP {m['mask_map']:.3f}" if "mask_map" in m else ""
            return f"mAP {m['map']:.3f}  AP50 {m['ap50']:.3f}  AP75 {m['ap75']:.3f}{masks}"
        if self.binary:
            return (f"IoU {m['iou']:.3f}  nIoU {m['niou']:.3f}  Pd {m['pd']:.3f}  "
                    f"Fa {m['fa'] * 1e6:.1f}e-6")
        return f"mIoU {m['miou']:.3f}  mAcc {m['macc']:.3f}"

    def __str__(self) -> str:
        return (f"probe {self.layout} {self.label} {self.architecture}: {self.scores()} "
                f"({self.steps} steps, {self.counts()}, {self.seconds:.1f} s) -> {self.out}")


@dataclass(frozen=True)
class ProbeComparison:
    """Pretrained and scratch rows of one data set, same architecture and options."""

    rows: tuple[ProbeSummary, ...]
    out: Path

    def __str__(self) -> str:
        first = self.rows[0]
        if first.detection:
            columns = ["mAP", "AP50", "AP75", "APs", "APm", "APl"]
        else:
            columns = ["IoU", "nIoU", "Pd", "Fa(1e-6)"] if first.binary else ["mIoU", "mAcc"]
        lines = [
            f"probe {first.layout} {first.architecture}: {first.steps} steps, "
            f"{first.counts()} -> {self.out}",
            f"{'encoder':<12}" + "".join(f"{c:>10}" for c in columns) + f"{'seconds':>10}",
        ]
        for row in self.rows:
            m = row.metrics
            if row.detection:
                values = [m[k] for k in ("map", "ap50", "ap75", "ap_small", "ap_medium",
                                         "ap_large")]
            elif row.binary:
                values = [m["iou"], m["niou"], m["pd"], m["fa"] * 1e6]
            else:
                values = [m["miou"], m["macc"]]
            cells = "".join(f"{v:>10.3f}" if v is not None else f"{'-':>10}" for v in values)
            lines.append(f"{row.label:<12}" + cells + f"{row.seconds:>10.1f}")
        return "\n".join(lines)


def soft_iou_loss(logits: Tensor, target: Tensor) -> Tensor:
    """1 - soft IoU over the batch: weighs the few target pixels against the background."""
    prob = logits.sigmoid()  # [N, 1, H, W]
    inter = (prob * target).sum()
    return 1.0 - (inter + 1.0) / (prob.sum() + target.sum() - inter + 1.0)


def probe_loss(logits: Tensor, masks: Tensor) -> Tensor:
    """BCE + soft IoU for one-logit small-target probes; cross-entropy for class maps."""
    if logits.shape[1] == 1:
        target = masks[:, None].float()  # [N, 1, H, W]
        return F.binary_cross_entropy_with_logits(logits, target) + soft_iou_loss(logits, target)
    return F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)


def random_flips(images: Tensor, masks: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Horizontal and vertical flips per sample (the usual IRSTD augmentation)."""
    flips = (torch.rand(2, images.shape[0], generator=generator) < 0.5).to(images.device)  # [2, N]
    for axis, chosen in ((-1, flips[0]), (-2, flips[1])):
        images = torch.where(chosen[:, None, None, None], images.flip(axis), images)
        masks = torch.where(chosen[:, None, None], masks.flip(axis), masks)
    return images, masks


def train_probe(model: SegmentationProbe, data: LoadedSplit, config: ProbeConfig,
                device: torch.device) -> list[float]:
    """Fine-tune for `config.steps` steps on random batches; returns the loss per step."""
    generator = torch.Generator().manual_seed(config.seed)
    optimiser = ProbeOptimiser(model, config)
    # The set is small: it moves to the device once, and losses stay there until the end
    # (no host synchronisation per step).
    all_images, all_masks = data.images.to(device), data.masks.to(device)
    losses = torch.zeros(config.steps, device=device)
    model.train()
    for step in tqdm(range(config.steps), desc="probe", unit="step", disable=None):
        index = torch.randint(len(data.names), (config.batch_size,), generator=generator)
        index = index.to(device)
        images, masks = random_flips(all_images[index], all_masks[index], generator)
        loss = probe_loss(model(images), masks)
        optimiser.step(loss, step)
        losses[step] = loss.detach()
    return losses.tolist()


def _decide(logits: Tensor, threshold: float) -> np.ndarray:
    """[1, C, H, W] logits -> [H, W] uint8: 0/1 targets, or class ids."""
    if logits.shape[1] == 1:
        return (logits[0, 0].sigmoid() > threshold).to(torch.uint8).cpu().numpy()
    return logits[0].argmax(0).to(torch.uint8).cpu().numpy()


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int, threshold: float,
            device: torch.device, sizes: Sequence[tuple[int, int]] | None = None
            ) -> list[np.ndarray]:
    """One uint8 prediction per image (0/1 targets, or class ids).

    With `sizes`, each image's logits are resized (bilinear) to its original [H, W] before
    the decision, so the metrics compare against the masks as read; else [S, S]."""
    model.eval()
    outputs: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        logits = model(images[start : start + batch_size].to(device)).float()  # [B, C, S, S]
        for offset in range(logits.shape[0]):
            one = logits[offset : offset + 1]  # [1, C, S, S]
            if sizes is not None:
                size = tuple(sizes[start + offset])
                if size != tuple(one.shape[-2:]):
                    one = F.interpolate(one, size=size, mode="bilinear", align_corners=False)
            outputs.append(_decide(one, threshold))
    return outputs


def evaluate(predictions: Sequence[np.ndarray], masks: Sequence[np.ndarray], num_classes: int,
             distance: float) -> dict[str, Any]:
    """Small-target metrics (two classes) or mIoU/mAcc, image by image."""
    metrics: SmallTargetMetrics | SegmentationMetrics
    if num_classes == 2:
        metrics = SmallTargetMetrics(distance=distance)
    else:
        metrics = SegmentationMetrics(num_classes, IGNORE_INDEX)
    for pred, truth in zip(predictions, masks, strict=True):
        metrics.update(pred, truth)
    return metrics.compute()


def save_predictions_png(path: Path, data: LoadedSplit, predictions: Sequence[np.ndarray],
                         title: str) -> Path:
    """A grid of test images: infrared | truth | prediction (one row per image); truth and
    prediction at the masks' own resolution."""
    rows = min(PREVIEW_IMAGES, len(data.names))
    figure = Figure(figsize=(6, 2 * rows + 0.4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, 3, squeeze=False)
    masks = data.full_masks
    labels = max(1, max(int(m[m != IGNORE_INDEX].max(initial=0)) for m in masks[:rows]),
                 max(int(p.max(initial=0)) for p in predictions[:rows]))
    for row in range(rows):
        height, width = masks[row].shape  # the image back at its own size and aspect
        image = cv2.resize(data.images[row, 0].numpy(), (width, height),
                           interpolation=cv2.INTER_LINEAR)
        panels = (image, masks[row], predictions[row])
        for column, (panel, name) in enumerate(zip(panels, ("infrared", "truth", "prediction"),
                                                   strict=True)):
            ax = axes[row, column]
            if column == 0:
                ax.imshow(panel, cmap="gray")
            else:
                ax.imshow(np.where(panel == IGNORE_INDEX, 0, panel), cmap="magma", vmin=0,
                          vmax=labels,
                          # area-averaged when shrunk, so a target of a few pixels still shows
                          interpolation="antialiased" if labels == 1 else "nearest")
            ax.set_axis_off()
            ax.set_title(f"{data.names[row]} {name}" if column == 0 else name, fontsize=7)
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    return path


@dataclass(frozen=True)
class ProbeData:
    """A segmentation set read and decoded once (both rows of a comparison train on it)."""

    samples: LayoutSamples
    train: LoadedSplit
    test: LoadedSplit

    @property
    def binary(self) -> bool:
        return self.samples.num_classes == 2

    def split(self) -> Split:
        return Split(self.train.names, self.test.names, self.samples.split_source)


def load_probe_data(config: ProbeConfig, split: Split | None = None) -> ProbeData | DetectionSet:
    """The data of `config`: a detection set, or a decoded segmentation set; split by `split`,
    else by `config.split` (a split file), else the layout's own split, else seeded."""
    if split is None and config.split is not None:
        split = read_split(config.split, config.layout)
    if config.detection:
        return read_detection_layout(config.layout, config.data, config.seed, split)
    samples = read_layout(config.layout, config.data, seed=config.seed)
    if split is not None:
        samples = restrict(samples, split)
    binary = samples.num_classes == 2
    return ProbeData(samples, load_split(samples.train, config.img_size, binary),
                     load_split(samples.test, config.img_size, binary))


def write_data_split(config: ProbeConfig, data: ProbeData | DetectionSet) -> Path:
    """split.json in --out: the images each set used, for --split in later runs."""
    return write_split(config.out / SPLIT_FILE, config.layout, data.split())


def _train_and_evaluate(config: ProbeConfig, spec: EncoderSpec, data: ProbeData | DetectionSet,
                        out: Path) -> ProbeSummary:
    if isinstance(data, DetectionSet):
        return _detect(config, spec, data, out)
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    in_chans = int(dict(spec.model_args).get("in_chans", 1))
    train, test = (replace(s, images=s.images.expand(-1, in_chans, -1, -1))  # grey replicated
                   for s in (data.train, data.test))
    model = SegmentationProbe(build_backbone(spec), 1 if data.binary else data.samples.num_classes,
                              in_chans=in_chans, head_dim=config.head_dim, detail=config.detail)
    if config.freeze:
        model.freeze_backbone()
    model.to(device)
    losses = train_probe(model, train, config, device)
    if not all(math.isfinite(v) for v in losses):
        raise ProbeError(f"the loss diverged (non-finite) in {spec.label} training: "
                         f"lower --lr (now {config.lr})")
    truths = test.full_masks  # the masks as read
    predictions = predict(model, test.images, config.batch_size, config.threshold, device,
                          sizes=[truth.shape for truth in truths])
    metrics = evaluate(predictions, truths, data.samples.num_classes, config.distance)
    out.mkdir(parents=True, exist_ok=True)
    summary = ProbeSummary(
        label=spec.label, architecture=spec.architecture, layout=config.layout,
        steps=config.steps, train_images=len(train.names), test_images=len(test.names),
        metrics=metrics, seconds=time.perf_counter() - start, out=out,
        without_mask=data.samples.without_mask,
    )
    save_predictions_png(out / PREDICTIONS_FILE, test, predictions, str(summary.scores()))
    samples = data.samples
    described = dict(root=str(samples.root), split=samples.split_source, train=len(samples.train),
                     test=len(samples.test), without_mask=samples.without_mask,
                     test_names=list(data.test.names))
    _write_record(out / METRICS_FILE, summary, spec, config, described, losses, device)
    return summary


def _detect(config: ProbeConfig, spec: EncoderSpec, data: DetectionSet, out: Path
            ) -> ProbeSummary:

    metrics, losses, seconds, device = train_and_evaluate_detector(config, spec, data, out)
    summary = ProbeSummary(
        label=spec.label, architecture=spec.architecture, layout=config.layout,
        steps=config.steps, train_images=len(data.train), test_images=len(data.test),
        metrics=metrics, seconds=seconds, out=out, left_out=data.skipped_text(),
    )
    described = dict(root=str(data.root), split=data.split_source, train=len(data.train),
                     test=len(data.test), skipped=dict(data.skipped), classes=list(data.classes),
                     masks=data.has_masks, test_names=[s.name for s in data.test])
    _write_record(out / METRICS_FILE, summary, spec, config, described, losses, device)
    return summary


def protocol_of(config: ProbeConfig, data: ProbeData | DetectionSet) -> dict[str, Any]:
    """What makes two runs comparable: task, data and split, input size, test-set size,
    schedule and head. Encoders and seeds vary within one protocol."""
    if isinstance(data, DetectionSet):
        test, sizes = len(data.test), dict(test_boxes=data.test_boxes, classes=list(data.classes),
                                           masks=data.has_masks)
        train = len(data.train)
    else:
        test, train = len(data.test.names), len(data.train.names)
        sizes = {}
    return dict(
        task=config.task, layout=config.layout, data=str(config.data.resolve()),
        split=data.split().source, train_images=train, test_images=test, **sizes,
        img_size=config.img_size, steps=config.steps, batch_size=config.batch_size,
        lr=config.lr, weight_decay=config.weight_decay, head_dim=config.head_dim,
        detail=config.detail if not config.detection else None,
        threshold=config.threshold if config.task == "small-target" else None,
        distance=config.distance if config.task == "small-target" else None,
    )


def _write_record(path: Path, summary: ProbeSummary, spec: EncoderSpec, config: ProbeConfig,
                  data: dict[str, Any], losses: list[float], device: torch.device) -> None:
    """metrics.json: the summary, options, encoder, split, metrics and a thinned loss curve."""
    stride = max(1, len(losses) // LOSS_POINTS)
    record = dict(
        summary=str(summary), label=spec.label, architecture=spec.architecture,
        model_args=dict(spec.model_args), weights=str(spec.weights) if spec.weights else None,
        config={k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        protocol=dict(task=config.task, img_size=config.img_size, test_images=summary.test_images,
                      steps=config.steps, freeze=config.freeze),
        data=data, metrics=summary.metrics, seconds=summary.seconds, device=str(device),
        loss=dict(every=stride, values=losses[::stride], final=losses[-1]),
    )
    path.write_text(json.dumps(record, indent=2) + "\n")


def run_probe(config: ProbeConfig) -> ProbeSummary:
    """Fine-tune the encoder of `config.encoder` (an export folder, or scratch) and evaluate."""
    config = with_reference_encoder(config)
    spec = encoder_spec(config.encoder, config.arch)
    data = load_probe_data(config)
    write_data_split(config, data)
    return _train_and_evaluate(config, spec, data, config.out)


def run_probe_pair(config: ProbeConfig) -> ProbeComparison:
    """The export, and the same architecture from random weights, with the same options
    (with --freeze the baseline is a head on frozen random features)."""
    if config.encoder == SCRATCH:
        raise ProbeError("pretrained vs. scratch needs --encoder EXPORT_DIR (an `inf590k "
                         "export` folder)")
    pretrained = encoder_spec(config.encoder, config.arch)
    data = load_probe_data(config)
    write_data_split(config, data)
    rows = (
        _train_and_evaluate(config, pretrained, data, config.out / "pretrained"),
        _train_and_evaluate(config, scratch_like(pretrained), data, config.out / "scratch"),
    )
    comparison = ProbeComparison(rows, config.out)
    record = {row.label: dict(metrics=row.metrics, seconds=row.seconds, out=str(row.out))
              for row in rows}
    (config.out / COMPARISON_FILE).write_text(
        json.dumps(dict(table=str(comparison), **record), indent=2) + "\n")
    return comparison


def with_reference_encoder(config: ProbeConfig) -> ProbeConfig:
    """A released InfMAE / ConvMAE / MAE checkpoint as --encoder: converted to an export first."""
    if config.encoder == SCRATCH:
        return config
    return replace(config, encoder=encoder_folder(config.encoder, config.out, config.num_heads))


def probe(config: ProbeConfig) -> ProbeSummary | ProbeComparison:
    """What `inf590k probe` runs: both rows for an export (unless --no-baseline), else one."""
    config = with_reference_encoder(config)
    with torch_threads(config.workers, config.threads):
        if config.encoder != SCRATCH and config.baseline:
            return run_probe_pair(config)
        return run_probe(config)
