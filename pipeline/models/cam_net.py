"""CAM network (PSA/IRN): backbone -> global average pooling -> 1x1 classifier.

Training: multi-label soft-margin loss on ``forward(x)`` (image-level logits ``B x C``).
Inference: ``cams(x)`` applies the same classifier weights at every position of the last
feature map and keeps the positive part (IRN: ``relu(conv2d(features, W))``), giving
class activation maps ``B x C x h x w`` at the backbone's output stride. Pooling first
and classifying second (IRN's order) gives the same logits as averaging the raw CAMs,
because both operations are linear.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.models.backbone import BackboneModel


class CAMNet(BackboneModel):
    """Image classifier whose 1x1 classifier also yields class activation maps."""

    def __init__(self, backbone_cfg: dict | None, num_classes: int):
        super().__init__(backbone_cfg, num_classes)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        # No bias (IRN): a bias would shift every CAM by a constant.
        self.classifier = nn.Conv2d(self.backbone.channels[-1], num_classes, 1, bias=False)
        self.out_stride = self.backbone.strides[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image-level class logits ``B x num_classes``."""
        features = self.backbone(x)[-1]
        pooled = features.mean(dim=(2, 3), keepdim=True)
        return self.classifier(pooled).flatten(1)

    def cams(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU'd class activation maps ``B x num_classes x h x w`` (h = ceil(H / out_stride))."""
        features = self.backbone(x)[-1]
        return F.relu(F.conv2d(features, self.classifier.weight))
