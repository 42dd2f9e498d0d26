"""torchvision's Faster R-CNN / Mask R-CNN on an encoder's four maps through an FPN.

    maps = build_backbone(spec)                               # strides 4, 8, 16, 32
    model = build_detector(maps, num_classes=6, img_size=512, head_dim=256)
    losses = model(images, targets)                           # training: a dict of losses
    outputs = model(images)                                   # eval: boxes, labels, scores

The detector is torchvision's own (`FasterRCNN`, `MaskRCNN` with their RPN, RoI heads,
transform and losses); only its backbone is ours: `EncoderMaps` (the paper's map set for
hierarchical encoders, ViTDet's simple feature pyramid for plain ViTs) and torchvision's
`FeaturePyramidNetwork` with the max-pooled extra level, exposing `out_channels` as
torchvision's backbones do.

Sizes scale with the input: images are resized so their longer side is `img_size`; anchors
are torchvision's defaults (32-512 px over the five levels) at 1024 px, M3FD's frame width,
and shrink with smaller inputs so a small-input run still fits small objects; the RPN's
proposal counts and the RoI samples per image are torchvision's at 1024 px and shrink with
the image area (not below 250 and 128: a 256-px frame holds ~16x fewer anchors, and the RoI
Align backward pass is most of a CPU step). The FPN is `head_dim` wide and the box head's
MLP 4 x `head_dim` (torchvision's 256 and 1024 at 256).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from pretrain.models.configs import IR_MEAN, IR_STD
from pretrain.probe.head import EncoderMaps

ANCHOR_REFERENCE_SIZE = 1024  # input size at which the anchors are torchvision's 32..512
ASPECT_RATIOS = (0.5, 1.0, 2.0)
# Detections kept per image for scoring: COCO counts up to 100; a low score floor only adds
# points at the tail of the precision-recall curve (a short run's scores are low).
DETECTIONS_PER_IMAGE = 100
SCORE_FLOOR = 0.001


class DetectionBackbone(nn.Module):
    """Encoder maps -> FPN: an OrderedDict of `out_channels`-wide maps '0'..'3' (strides
    4-32) and 'pool' (stride 64), the names torchvision's RoI poolers read."""

    def __init__(self, maps: EncoderMaps, out_channels: int) -> None:
        super().__init__()
        self.body = maps
        self.fpn = FeaturePyramidNetwork(
            maps.feature_info.channels(), out_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = out_channels

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        levels = self.body(images)  # 4 maps [N, C_i, H/s_i, W/s_i]
        return self.fpn(OrderedDict((str(i), level) for i, level in enumerate(levels)))


def _area_scaled(count: int, img_size: int, floor: int) -> int:
    return max(floor, round(count * min(1.0, (img_size / ANCHOR_REFERENCE_SIZE) ** 2)))


def anchor_sizes(img_size: int) -> tuple[tuple[int, ...], ...]:
    """One anchor size per level (strides 4..64), torchvision's 32..512 at 1024 px, scaled."""
    scale = img_size / ANCHOR_REFERENCE_SIZE
    return tuple((max(4, round(32 * 2**level * scale)),) for level in range(5))


def build_detector(
    maps: EncoderMaps,
    num_classes: int,
    img_size: int,
    head_dim: int = 256,
    in_chans: int = 1,
    masks: bool = False,
) -> FasterRCNN:
    """Faster R-CNN (Mask R-CNN with `masks`) over `maps`; `num_classes` without background."""
    backbone = DetectionBackbone(maps, head_dim)
    representation = 4 * head_dim
    kwargs = dict(
        min_size=img_size,
        max_size=img_size,  # the longer side becomes img_size
        image_mean=[IR_MEAN] * in_chans,
        image_std=[IR_STD] * in_chans,
        rpn_anchor_generator=AnchorGenerator(anchor_sizes(img_size), (ASPECT_RATIOS,) * 5),
        box_head=TwoMLPHead(head_dim * 7 * 7, representation),
        box_predictor=FastRCNNPredictor(representation, num_classes + 1),
        box_detections_per_img=DETECTIONS_PER_IMAGE,
        box_score_thresh=SCORE_FLOOR,
        rpn_pre_nms_top_n_train=_area_scaled(2000, img_size, 250),
        rpn_post_nms_top_n_train=_area_scaled(2000, img_size, 250),
        rpn_pre_nms_top_n_test=_area_scaled(1000, img_size, 250),
        rpn_post_nms_top_n_test=_area_scaled(1000, img_size, 250),
        box_batch_size_per_image=_area_scaled(512, img_size, 128),
    )
    if masks:
        return MaskRCNN(
            backbone,
            None,
            mask_head=MaskRCNNHeads(head_dim, (head_dim,) * 4, 1),
            mask_predictor=MaskRCNNPredictor(head_dim, head_dim, num_classes + 1),
            **kwargs,
        )
    return FasterRCNN(backbone, None, **kwargs)


def freeze_encoder(model: FasterRCNN) -> None:
    """The frozen-encoder arm: only the pyramid, FPN, RPN and RoI heads learn."""
    model.backbone.body.freeze_encoder()
