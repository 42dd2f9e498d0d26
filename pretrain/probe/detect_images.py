"""A detection set's images as a torch Dataset: grey frames, box targets (and masks where the
set has them) in torchvision's detection format, and the batch collation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pretrain.probe.datasets import ProbeDataError, read_grey
from pretrain.probe.detect_samples import DetectionSample


def sample_masks(sample: DetectionSample) -> torch.Tensor:
    """[K, H, W] uint8 masks of a sample's COCO segmentations (polygons or RLE)."""
    from pycocotools import mask as coco_mask  # only for detection

    masks = []
    for segmentation in sample.segmentations or ():
        if isinstance(segmentation, list):  # polygons
            rles = coco_mask.frPyObjects(segmentation, sample.height, sample.width)
            rle = coco_mask.merge(rles)
        elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
            rle = coco_mask.frPyObjects(segmentation, sample.height, sample.width)
        else:
            rle = segmentation
        masks.append(coco_mask.decode(rle))
    if not masks:
        return torch.zeros((0, sample.height, sample.width), dtype=torch.uint8)
    return torch.from_numpy(np.stack(masks))


def sample_target(
    sample: DetectionSample, index: int, masks: bool = False
) -> dict[str, torch.Tensor]:
    """A sample's boxes as torchvision's detection models take them."""
    target = {
        "boxes": torch.tensor(sample.boxes, dtype=torch.float32).reshape(-1, 4),  # [K, 4]
        "labels": torch.tensor(sample.labels, dtype=torch.int64),  # [K]
        "image_id": torch.tensor(index),
    }
    if masks:
        target["masks"] = sample_masks(sample)  # [K, H, W]
    return target


class DetectionImages(Dataset):
    """Images as [C, H, W] float32 grey 0..1 (replicated to `in_chans`) at their own size,
    with their targets; torchvision's model resizes and normalises them."""

    def __init__(
        self, samples: Sequence[DetectionSample], in_chans: int = 1, masks: bool = False
    ) -> None:
        self.samples = tuple(samples)
        self.in_chans = in_chans
        self.masks = masks

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sample = self.samples[index]
        grey = read_grey(sample.image)  # [H, W]
        if grey.shape != (sample.height, sample.width):
            raise ProbeDataError(
                f"{sample.image} decodes to {grey.shape[1]}x{grey.shape[0]} but "
                f"its header says {sample.width}x{sample.height}: replace the file"
            )
        image = torch.from_numpy(grey)[None].expand(self.in_chans, -1, -1)  # [C, H, W]
        return image, sample_target(sample, index, self.masks)


def collate_detections(batch: list) -> tuple[list[torch.Tensor], list[dict]]:
    """A batch as torchvision's detection models take it: lists, images of any size."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
