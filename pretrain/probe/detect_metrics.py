"""COCO detection metrics through pycocotools: mAP@[.5:.95], AP50, AP75, AP small / medium /
large and per-class AP, for boxes (and masks, where the data has them).

    truth = coco_ground_truth(test_samples, classes)     # COCO dict of the test set
    metrics = coco_metrics(truth, detections, classes)   # detections: COCO result dicts

pycocotools is COCO's own evaluator, not re-implemented here. Two of its corners are handled
on the way in: annotation ids start at 1 (an id of 0 is never counted as a match by its
accumulation), and an empty result list scores 0 without calling `loadRes` (which cannot
load one). Its progress printing is silenced.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from pretrain.probe.detect_images import sample_masks
from pretrain.probe.detect_samples import DetectionSample

# COCOeval.stats rows and our names for them (maxDets 100, all areas unless named)
STAT_NAMES = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")


def coco_ground_truth(
    samples: Sequence[DetectionSample], classes: Sequence[str], masks: bool = False
) -> dict[str, Any]:
    """The test set as a COCO dataset: image ids are the samples' indices, category ids the
    labels 1..K, annotation ids from 1, areas of the boxes (of the masks with `masks`)."""
    from pycocotools import mask as coco_mask  # only for detection

    images, annotations = [], []
    for index, sample in enumerate(samples):
        images.append(
            {"id": index, "width": sample.width, "height": sample.height, "file_name": sample.name}
        )
        rles = []
        if masks:
            decoded = sample_masks(sample).numpy()  # [K, H, W]
            rles = [coco_mask.encode(np.asfortranarray(m)) for m in decoded]
        for k, ((x0, y0, x1, y1), label) in enumerate(
            zip(sample.boxes, sample.labels, strict=True)
        ):
            annotation = {
                "id": len(annotations) + 1,
                "image_id": index,
                "category_id": label,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0),
                "iscrowd": 0,
            }
            if masks:
                annotation["segmentation"] = rles[k]
                annotation["area"] = float(coco_mask.area(rles[k]))
            annotations.append(annotation)
    categories = [{"id": label, "name": name} for label, name in enumerate(classes, start=1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _coco(dataset: dict[str, Any]):
    from pycocotools.coco import COCO  # only for detection

    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _per_class(evaluation, classes: Sequence[str]) -> dict[str, float | None]:
    """AP@[.5:.95] of each class (all areas, 100 detections): None for a class without a test
    box. `precision` is [IoU thresholds, recall points, classes, areas, max detections]."""
    precision = evaluation.eval["precision"]
    result: dict[str, float | None] = {}
    for k, category in enumerate(evaluation.params.catIds):
        values = precision[:, :, k, 0, -1]
        valid = values[values > -1]
        result[classes[category - 1]] = float(valid.mean()) if valid.size else None
    return result


def _empty(truth: dict[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    """No detection at all: every AP is 0 where a test box exists, None where none does
    (COCO's areas: small below 32^2 px, large from 96^2)."""
    present = {a["category_id"] for a in truth["annotations"]}
    areas = [a["area"] for a in truth["annotations"]]
    sizes = {
        "ap_small": any(a < 32**2 for a in areas),
        "ap_medium": any(32**2 <= a < 96**2 for a in areas),
        "ap_large": any(a >= 96**2 for a in areas),
    }
    stats = {name: 0.0 if sizes.get(name, True) else None for name in STAT_NAMES}
    return dict(
        stats,
        class_ap={
            name: 0.0 if label in present else None for label, name in enumerate(classes, start=1)
        },
    )


def coco_metrics(
    truth: dict[str, Any],
    detections: Sequence[dict[str, Any]],
    classes: Sequence[str],
    iou_type: str = "bbox",
) -> dict[str, Any]:
    """mAP, AP50, AP75, AP S/M/L (None where the test set has no box of that size) and
    per-class AP of `detections` (COCO results: image_id, category_id, bbox xywh or
    segmentation, score) against `truth` (a COCO dataset, see `coco_ground_truth`)."""
    from pycocotools.cocoeval import COCOeval  # only for detection

    if not truth["annotations"]:
        raise ValueError("the test set holds no box: nothing to score detections against")
    if not detections:
        return _empty(truth, classes)
    ground = _coco(truth)
    with contextlib.redirect_stdout(io.StringIO()):
        results = ground.loadRes([dict(d) for d in detections])
        evaluation = COCOeval(ground, results, iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = {name: float(evaluation.stats[i]) for i, name in enumerate(STAT_NAMES)}
    stats = {k: (None if v < 0 else v) for k, v in stats.items()}  # -1: no box of that size
    return dict(stats, class_ap=_per_class(evaluation, classes))


def detections_of(
    outputs: Sequence[dict[str, Any]], image_ids: Sequence[int], masks: bool = False
) -> tuple[list[dict], list[dict]]:
    """torchvision's detection outputs (boxes xyxy, labels, scores[, masks]) as COCO results:
    box results, and mask results (RLE of masks thresholded at 0.5) with `masks`."""
    from pycocotools import mask as coco_mask  # only for detection

    boxes, segments = [], []
    for output, image_id in zip(outputs, image_ids, strict=True):
        xyxy = output["boxes"].detach().float().cpu().numpy()  # [N, 4]
        labels = output["labels"].cpu().numpy()
        scores = output["scores"].detach().float().cpu().numpy()
        for (x0, y0, x1, y1), label, score in zip(xyxy, labels, scores, strict=True):
            boxes.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(label),
                    "score": float(score),
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                }
            )
        if masks and "masks" in output:
            binary = (output["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)  # [N, H, W]
            for mask, label, score in zip(binary, labels, scores, strict=True):
                rle = coco_mask.encode(np.asfortranarray(mask))
                segments.append(
                    {
                        "image_id": int(image_id),
                        "category_id": int(label),
                        "score": float(score),
                        "segmentation": rle,
                    }
                )
    return boxes, segments
