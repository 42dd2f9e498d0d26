"""Metrics of infrared small-target segmentation (IoU, nIoU, Pd, Fa) and of semantic
segmentation (mIoU, mAcc), accumulated image by image over a test set.

Small targets follow the IRSTD conventions (ACM/DNANet/BasicIRSTD):

- IoU: sum of intersections / sum of unions over the whole test set.
- nIoU: mean of the per-image IoU. An image with no target and no predicted pixel counts as
  1 (a perfect answer); the reference code gives it 0 through `inter / (eps + union)`,
  which never mattered there because every SIRST/IRSTD-1k test image holds a target.
- Pd: detected targets / all targets. Connected components (8-connectivity) of the
  prediction and of the ground truth are matched greedily: each ground-truth target takes
  the first unmatched predicted component whose centroid is closer than `distance` px
  (strictly, as in the reference code).
- Fa: pixels of predicted components that matched no target / all pixels.

Hand-written on top of scikit-image's connected components: no installed package computes
these IRSTD metrics, and the reference implementations drop unmatched components by their
area value (two components of equal area are confused), which this one does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from skimage.measure import label, regionprops

DEFAULT_CENTROID_DISTANCE = 3.0


@dataclass(frozen=True)
class TargetMatch:
    """Target-level result of one image."""

    targets: int  # ground-truth connected components
    detected: int  # targets matched by a predicted component
    false_alarm_pixels: int  # pixels of predicted components that matched no target


def match_targets(pred: np.ndarray, truth: np.ndarray,
                  distance: float = DEFAULT_CENTROID_DISTANCE) -> TargetMatch:
    """Match predicted components to ground-truth targets by centroid distance."""
    _check_pair(pred, truth)
    truth_regions = regionprops(label(truth.astype(bool), connectivity=2))
    pred_regions = list(regionprops(label(pred.astype(bool), connectivity=2)))
    unmatched = list(range(len(pred_regions)))
    detected = 0
    for target in truth_regions:
        centre = np.asarray(target.centroid)
        for position, index in enumerate(unmatched):
            if np.linalg.norm(np.asarray(pred_regions[index].centroid) - centre) < distance:
                detected += 1
                del unmatched[position]
                break
    false_alarms = sum(int(pred_regions[index].area) for index in unmatched)
    return TargetMatch(len(truth_regions), detected, false_alarms)


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> None:
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ValueError(
            f"prediction {pred.shape} and ground truth {truth.shape} must be 2-D masks of "
            f"one size; pass one image at a time"
        )


@dataclass
class SmallTargetMetrics:
    """IoU, nIoU, Pd and Fa over a stream of binary masks (`update` once per image)."""

    distance: float = DEFAULT_CENTROID_DISTANCE
    intersection: int = 0
    union: int = 0
    image_ious: list[float] = field(default_factory=list)
    targets: int = 0
    detected: int = 0
    false_alarm_pixels: int = 0
    pixels: int = 0

    def update(self, pred: np.ndarray, truth: np.ndarray) -> None:
        """Add one image: `pred` and `truth` are [H, W] masks (bool or 0/1)."""
        _check_pair(pred, truth)
        pred, truth = pred.astype(bool), truth.astype(bool)
        inter = int(np.count_nonzero(pred & truth))
        union = int(np.count_nonzero(pred | truth))
        self.intersection += inter
        self.union += union
        self.image_ious.append(inter / union if union else 1.0)
        match = match_targets(pred, truth, self.distance)
        self.targets += match.targets
        self.detected += match.detected
        self.false_alarm_pixels += match.false_alarm_pixels
        self.pixels += pred.size

    def compute(self) -> dict[str, float]:
        """IoU, nIoU and Pd in [0, 1]; Fa as a fraction of pixels (papers print Fa x 1e6)."""
        if not self.image_ious:
            raise ValueError("no image was added: call update() with each test image first")
        return {
            "iou": self.intersection / self.union if self.union else 1.0,
            "niou": float(np.mean(self.image_ious)),
            "pd": self.detected / self.targets if self.targets else 1.0,
            "fa": self.false_alarm_pixels / self.pixels,
            "images": len(self.image_ious),
            "targets": self.targets,
        }


@dataclass
class SegmentationMetrics:
    """mIoU and mAcc from a confusion matrix; pixels labelled `ignore_index` do not count.

    Classes absent from both truth and prediction are left out of the means (as mmseg does).
    """

    num_classes: int
    ignore_index: int = 255
    confusion: np.ndarray = field(init=False)  # [truth, pred]

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes={self.num_classes} must be at least 2")
        self.confusion = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, pred: np.ndarray, truth: np.ndarray) -> None:
        """Add one image: [H, W] class ids."""
        _check_pair(pred, truth)
        keep = truth != self.ignore_index
        truth_ids, pred_ids = truth[keep].astype(np.int64), pred[keep].astype(np.int64)
        if truth_ids.size and (truth_ids.max() >= self.num_classes or truth_ids.min() < 0):
            raise ValueError(
                f"ground truth holds class {int(truth_ids.max())} but num_classes="
                f"{self.num_classes}; mark unlabelled pixels {self.ignore_index}"
            )
        if pred_ids.size and (pred_ids.max() >= self.num_classes or pred_ids.min() < 0):
            raise ValueError(f"prediction holds a class outside 0..{self.num_classes - 1}")
        flat = truth_ids * self.num_classes + pred_ids
        self.confusion += np.bincount(flat, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes)

    def compute(self) -> dict[str, float | list[float]]:
        true_positive = np.diag(self.confusion).astype(np.float64)
        truth_count = self.confusion.sum(axis=1)
        union = truth_count + self.confusion.sum(axis=0) - true_positive
        if not union.any():
            raise ValueError("no labelled pixel was added: call update() with each test image")
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, true_positive / union, np.nan)
            acc = np.where(truth_count > 0, true_positive / truth_count, np.nan)
        return {
            "miou": float(np.nanmean(iou)),
            "macc": float(np.nanmean(acc)),
            "class_iou": [None if np.isnan(v) else float(v) for v in iou],
            "class_acc": [None if np.isnan(v) else float(v) for v in acc],
        }
