"""Probe metrics against hand-computed cases: hits, misses, false alarms, empty masks."""

from __future__ import annotations

import numpy as np
import pytest

from pretrain.probe.metrics import SegmentationMetrics, SmallTargetMetrics, match_targets

SIZE = 20  # 20 x 20 = 400 pixels per image


def blank() -> np.ndarray:
    return np.zeros((SIZE, SIZE), bool)


def square(top: int, left: int, side: int = 3) -> np.ndarray:
    mask = blank()
    mask[top : top + side, left : left + side] = True
    return mask


def scores(*pairs: tuple[np.ndarray, np.ndarray], distance: float = 3.0) -> dict:
    metrics = SmallTargetMetrics(distance=distance)
    for pred, truth in pairs:
        metrics.update(pred, truth)
    return metrics.compute()


def test_exact_hit() -> None:
    result = scores((square(5, 5), square(5, 5)))
    assert result["iou"] == result["niou"] == result["pd"] == 1.0
    assert result["fa"] == 0.0 and result["targets"] == 1


def test_partial_overlap_is_detected_with_its_pixel_iou() -> None:
    pred = blank()
    pred[5:7, 5:8] = True  # 6 of the 9 target pixels, centroid 0.5 px off
    result = scores((pred, square(5, 5)))
    assert result["iou"] == pytest.approx(6 / 9)
    assert result["pd"] == 1.0 and result["fa"] == 0.0


def test_missed_target() -> None:
    result = scores((blank(), square(5, 5)))
    assert result["iou"] == result["niou"] == result["pd"] == 0.0
    assert result["fa"] == 0.0


def test_false_alarm_pixels_count_over_all_pixels() -> None:
    pred = square(5, 5) | square(14, 14, side=2)  # the target + a 4-px blob far away
    result = scores((pred, square(5, 5)))
    assert result["pd"] == 1.0
    assert result["fa"] == pytest.approx(4 / 400)
    assert result["iou"] == pytest.approx(9 / 13)


def test_centroid_distance_decides_detection() -> None:
    near = match_targets(square(5, 7), square(5, 5))  # centroids 2 px apart
    assert (near.targets, near.detected, near.false_alarm_pixels) == (1, 1, 0)
    far = match_targets(square(5, 9), square(5, 5))  # 4 px apart: a miss and a false alarm
    assert (far.targets, far.detected, far.false_alarm_pixels) == (1, 0, 9)
    # the threshold is strict, as in the reference code: exactly 3 px is not a detection
    assert match_targets(square(5, 8), square(5, 5)).detected == 0
    assert match_targets(square(5, 8), square(5, 5), distance=3.5).detected == 1


def test_one_component_detects_one_target_only() -> None:
    truth = blank()
    truth[5, 5] = truth[5, 8] = True  # two 1-px targets (not 8-connected)
    pred = blank()
    pred[5, 5:9] = True  # one blob over both, centroid 1.5 px from each
    match = match_targets(pred, truth)
    assert (match.targets, match.detected, match.false_alarm_pixels) == (2, 1, 0)


def test_unmatched_components_of_equal_area_are_all_false_alarms() -> None:
    """The reference code drops unmatched components by area value; both 9-px blobs here
    share the target's area, and the one far away must still count as a false alarm."""
    pred = square(5, 5) | square(14, 14)
    match = match_targets(pred, square(5, 5))
    assert match.detected == 1 and match.false_alarm_pixels == 9


def test_empty_masks() -> None:
    both_empty = scores((blank(), blank()))
    assert both_empty["iou"] == both_empty["niou"] == both_empty["pd"] == 1.0
    assert both_empty["fa"] == 0.0 and both_empty["targets"] == 0
    alarm_only = scores((square(2, 2), blank()))
    assert alarm_only["iou"] == alarm_only["niou"] == 0.0
    assert alarm_only["fa"] == pytest.approx(9 / 400)


def test_iou_over_the_set_and_niou_per_image_differ() -> None:
    small_miss = (blank(), square(2, 2, side=1))  # IoU 0 on 1 px
    big_hit = (square(5, 5, side=4), square(5, 5, side=4))  # IoU 1 on 16 px
    result = scores(small_miss, big_hit)
    assert result["iou"] == pytest.approx(16 / 17)
    assert result["niou"] == pytest.approx(0.5)
    assert result["pd"] == pytest.approx(0.5)
    assert result["fa"] == 0.0 and result["images"] == 2


def test_segmentation_miou_and_macc_by_hand() -> None:
    truth = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 2, 0]])
    metrics = SegmentationMetrics(num_classes=4)
    metrics.update(pred, truth)
    result = metrics.compute()
    # class 0: tp 3, truth 4, pred 3 -> IoU 3/4, acc 3/4
    # class 1: tp 2, truth 3, pred 3 -> IoU 2/4, acc 2/3
    # class 2: tp 0, truth 0, pred 1 -> IoU 0, no acc; class 3 absent everywhere -> left out
    assert result["class_iou"] == [0.75, 0.5, 0.0, None]
    assert result["class_acc"][:2] == pytest.approx([0.75, 2 / 3])
    assert result["class_acc"][2:] == [None, None]
    assert result["miou"] == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert result["macc"] == pytest.approx((0.75 + 2 / 3) / 2)


def test_bad_input_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="one size"):
        SmallTargetMetrics().update(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="2-D"):
        SmallTargetMetrics().update(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="call update"):
        SmallTargetMetrics().compute()
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationMetrics(num_classes=2).update(np.zeros((2, 2)), np.full((2, 2), 5))
    with pytest.raises(ValueError, match="at least 2"):
        SegmentationMetrics(num_classes=1)
