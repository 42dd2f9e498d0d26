"""Fine-tune a detector on an encoder and score it with COCO's metrics.

    data = read_detection_layout("m3fd", root)
    summary = train_and_evaluate_detector(config, spec, data, out)   # a ProbeSummary

One run: torchvision's Faster R-CNN (Mask R-CNN where the data has masks) over the encoder's
maps (`detector.build_detector`), AdamW with warm-up and cosine decay for `config.steps`
steps of random batches with horizontal flips (seeded: the same seed draws the same batches
whatever the worker count), then COCO evaluation of the test set (`detect_metrics`). It
writes `metrics.json` and `predictions.png` (ground truth next to the predictions on a few
test images) into its folder.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pretrain.probe.config import ProbeConfig
from pretrain.probe.datasets import ProbeDataError, read_grey
from pretrain.probe.detect_images import DetectionImages, collate_detections
from pretrain.probe.detect_metrics import coco_ground_truth, coco_metrics, detections_of
from pretrain.probe.detect_samples import DetectionSample, DetectionSet
from pretrain.probe.detector import build_detector, freeze_encoder
from pretrain.probe.head import EncoderSpec, build_backbone
from pretrain.probe.optim import ProbeOptimiser
from pretrain.probe.runtime import ProbeError, resolve_device, torch_threads

PREVIEW_IMAGES = 4
PREVIEW_SCORE = 0.3  # predictions drawn in predictions.png: this score or more
PREVIEW_MAX_BOXES = 30


class _Loaded(DetectionImages):
    """DetectionImages whose read errors travel as values: a data-loader worker re-raises an
    exception with its traceback folded into the message, and the CLI prints one line."""

    def __getitem__(self, index: int) -> Any:
        try:
            return super().__getitem__(index)
        except (ProbeDataError, OSError) as error:
            return str(error), None


def _as_list(batch: list) -> list:
    return batch


def _unpack(batch: list) -> tuple[list[Tensor], list[dict]]:
    """A loaded batch in the main process: a read error becomes the one-line error it was."""
    for image, target in batch:
        if target is None:
            raise ProbeDataError(image)
    return collate_detections(batch)


def _loader(
    images: DetectionImages, workers: int, device: torch.device, **kwargs: Any
) -> DataLoader:
    extra = dict(persistent_workers=False, prefetch_factor=2) if workers else {}
    return DataLoader(
        images,
        num_workers=workers,
        collate_fn=_as_list,
        pin_memory=device.type == "cuda",
        **extra,
        **kwargs,
    )


def flip_horizontally(image: Tensor, target: dict[str, Tensor]) -> tuple[Tensor, dict]:
    """[C, H, W] image and its boxes (and masks) mirrored left-right."""
    width = image.shape[-1]
    boxes = target["boxes"].clone()  # [K, 4] x0 y0 x1 y1
    boxes[:, 0], boxes[:, 2] = width - target["boxes"][:, 2], width - target["boxes"][:, 0]
    flipped = dict(target, boxes=boxes)
    if "masks" in target:
        flipped["masks"] = target["masks"].flip(-1)
    return image.flip(-1), flipped


def _autocast(device: torch.device):
    """bf16 autocast on CUDA (torchvision's RoI ops run in float32 under it), fp32 on CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_detector(
    model: nn.Module, images: DetectionImages, config: ProbeConfig, device: torch.device
) -> list[float]:
    """`config.steps` AdamW steps on seeded random batches; the summed loss of each step."""
    generator = torch.Generator().manual_seed(config.seed)
    optimiser = ProbeOptimiser(model, config)
    batches = torch.randint(len(images), (config.steps, config.batch_size), generator=generator)
    flips = (torch.rand(config.steps, config.batch_size, generator=generator) < 0.5).tolist()
    loader = _loader(images, config.workers, device, batch_sampler=batches.tolist())
    losses = torch.zeros(config.steps, device=device)  # kept on the device: no sync per step
    model.train()
    progress = tqdm(loader, desc="detect", unit="step", total=config.steps, disable=None)
    for step, loaded in enumerate(progress):
        batch, targets = _unpack(loaded)
        pairs = [
            flip_horizontally(i, t) if flip else (i, t)
            for i, t, flip in zip(batch, targets, flips[step], strict=True)
        ]
        batch = [image.to(device, non_blocking=True) for image, _ in pairs]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for _, t in pairs]
        with _autocast(device):
            loss = sum(model(batch, targets).values())
        optimiser.step(loss, step)
        losses[step] = loss.detach()
    return losses.tolist()


@torch.no_grad()
def predict_detections(
    model: nn.Module,
    images: DetectionImages,
    batch_size: int,
    device: torch.device,
    workers: int = 0,
) -> list[dict[str, Tensor]]:
    """The model's outputs for every image, in order, on the CPU (boxes in image pixels)."""
    model.eval()
    outputs: list[dict[str, Tensor]] = []
    for loaded in _loader(images, workers, device, batch_size=batch_size, shuffle=False):
        batch, _ = _unpack(loaded)
        with _autocast(device):
            predicted = model([image.to(device) for image in batch])
        outputs.extend(
            {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in output.items()}
            for output in predicted
        )
    return outputs


def evaluate_detections(
    outputs: Sequence[dict[str, Tensor]],
    samples: Sequence[DetectionSample],
    classes: Sequence[str],
    masks: bool = False,
) -> dict[str, Any]:
    """COCO metrics of `outputs` (one per sample, in order); mask metrics prefixed `mask_`."""
    truth = coco_ground_truth(samples, classes, masks)
    boxes, segments = detections_of(outputs, range(len(samples)), masks)
    metrics = coco_metrics(truth, boxes, classes)
    if masks:
        segm = coco_metrics(truth, segments, classes, iou_type="segm")
        metrics.update({f"mask_{name}": value for name, value in segm.items()})
    metrics.update(images=len(samples), boxes=len(truth["annotations"]))
    return metrics


def _draw_boxes(
    ax,
    boxes: np.ndarray,
    labels: Sequence[int],
    classes: Sequence[str],
    scores: Sequence[float] | None,
    colour: str,
) -> None:
    for index, ((x0, y0, x1, y1), label) in enumerate(zip(boxes, labels, strict=True)):
        ax.add_patch(
            Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=0.8)
        )
        text = classes[int(label) - 1] if 0 < int(label) <= len(classes) else str(int(label))
        if scores is not None:
            text += f" {scores[index]:.2f}"
        ax.text(
            x0,
            y0,
            text,
            color="black",
            fontsize=5,
            va="bottom",
            bbox=dict(facecolor=colour, edgecolor="none", pad=0.5, alpha=0.8),
        )


def save_detection_png(
    path,
    images: DetectionImages,
    outputs: Sequence[dict[str, Tensor]],
    classes: Sequence[str],
    title: str,
) -> None:
    """A few test images: ground truth (left) next to the predictions scoring at least
    PREVIEW_SCORE (right), boxes labelled with class names and scores."""
    rows = min(PREVIEW_IMAGES, len(images))
    figure = Figure(figsize=(8, 3 * rows + 0.5), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, 2, squeeze=False)
    for row in range(rows):
        sample = images.samples[row]
        grey = read_grey(sample.image)  # [H, W] 0..1
        output = outputs[row]
        keep = (output["scores"] >= PREVIEW_SCORE).nonzero().flatten()[:PREVIEW_MAX_BOXES]
        panels = (
            ("truth", np.asarray(sample.boxes).reshape(-1, 4), sample.labels, None, "lime"),
            (
                f"prediction (score >= {PREVIEW_SCORE})",
                output["boxes"][keep].numpy(),
                output["labels"][keep].tolist(),
                output["scores"][keep].tolist(),
                "orange",
            ),
        )
        for column, (name, boxes, labels, scores, colour) in enumerate(panels):
            ax = axes[row, column]
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
            _draw_boxes(ax, boxes, labels, classes, scores, colour)
            ax.set_axis_off()
            ax.set_title(f"{sample.name} {name}" if column == 0 else name, fontsize=7)
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def train_and_evaluate_detector(
    config: ProbeConfig, spec: EncoderSpec, data: DetectionSet, out
) -> tuple[dict[str, Any], list[float], float, torch.device]:
    """Build, fine-tune and score one detector; writes predictions.png into `out`.
    Returns the metrics, the loss per step, the seconds taken and the device."""
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    in_chans = int(dict(spec.model_args).get("in_chans", 1))
    masks = data.has_masks
    model = build_detector(
        build_backbone(spec), len(data.classes), config.img_size, config.head_dim, in_chans, masks
    )
    if config.freeze:
        freeze_encoder(model)
    model.to(device)
    train = _Loaded(data.train, in_chans, masks)
    test = _Loaded(data.test, in_chans, masks=False)
    with torch_threads(config.workers, config.threads):
        losses = train_detector(model, train, config, device)
        if not all(math.isfinite(v) for v in losses):
            raise ProbeError(
                f"the loss diverged (non-finite) in {spec.label} training: "
                f"lower --lr (now {config.lr})"
            )
        outputs = predict_detections(model, test, config.batch_size, device, config.workers)
    metrics = evaluate_detections(outputs, data.test, data.classes, masks)
    out.mkdir(parents=True, exist_ok=True)
    seconds = time.perf_counter() - start
    title = (
        f"{spec.label} {spec.architecture}: mAP {metrics['map']:.3f}  "
        f"AP50 {metrics['ap50']:.3f} ({config.steps} steps)"
    )
    save_detection_png(out / "predictions.png", test, outputs, data.classes, title)
    return metrics, losses, seconds, device
