"""Boundary network (IRN's class-boundary branch, used by RETAB on base samples).

Every backbone level with stride >= 4 goes through a 1x1 conv to 32 channels + GroupNorm
+ ReLU, is upsampled (bilinear) to the stride-4 level's size, and the concatenation goes
through a 1x1 conv to one boundary logit. The output is at **stride 4**: ``B x 1 x
ceil(H/4) x ceil(W/4)``; targets are brought to that size with
:func:`pipeline.losses.boundary_target_at_stride`. The stride-2 level is left out (IRN
starts at stride 4 too; full-resolution features are expensive and add little).

GroupNorm instead of BatchNorm (IRN) keeps the head independent of the batch size.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.models.backbone import BackboneModel

BOUNDARY_STRIDE = 4
LEVEL_CHANNELS = 32


def _level_projection(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.GroupNorm(4, out_channels), nn.ReLU(inplace=True))


class BoundaryNet(BackboneModel):
    """Multi-level 1x1 projections fused into one boundary logit map at stride 4."""

    def __init__(self, backbone_cfg: dict | None):
        super().__init__(backbone_cfg)
        self.levels = [i for i, s in enumerate(self.backbone.strides) if s >= BOUNDARY_STRIDE]
        if self.backbone.strides[self.levels[0]] != BOUNDARY_STRIDE:
            raise ValueError(f"backbone has no stride-{BOUNDARY_STRIDE} level: strides {self.backbone.strides}")
        self.projections = nn.ModuleList(
            [_level_projection(self.backbone.channels[i], LEVEL_CHANNELS) for i in self.levels])
        self.fuse = nn.Conv2d(LEVEL_CHANNELS * len(self.levels), 1, 1, bias=True)
        self.out_stride = BOUNDARY_STRIDE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Boundary logits ``B x 1 x h x w`` at stride 4 (sigmoid gives the probability)."""
        features = self.backbone(x)
        size = features[self.levels[0]].shape[-2:]
        projected = []
        for projection, level in zip(self.projections, self.levels):
            y = projection(features[level])
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            projected.append(y)
        return self.fuse(torch.cat(projected, dim=1))
