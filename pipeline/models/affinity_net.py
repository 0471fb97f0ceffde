"""Affinity network (PSA's AffinityNet; RETAB trains it with mixed supervision).

The backbone levels with stride >= 8 (the three deepest: EfficientNet 40/112/320
channels, ResNet-50 512/1024/2048) each go through a 1x1 conv + ELU to D/7, 2D/7 and
4D/7 channels (PSA: 64/128/256 for D = 448), are upsampled (bilinear) to the stride-8
level's size and fused by a 1x1 conv + ELU into a D-dim embedding at **stride 8**
(``out_stride``) whatever the backbone's output stride. Pair affinities
``a_ij = exp(-mean_d |f_i - f_j|)`` come from
:func:`pipeline.propagation.affinity.pairwise_affinity`.

No normalization layers (as PSA): the embedding's scale is what the affinities measure.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.models.backbone import BackboneModel

AFFINITY_STRIDE = 8


def level_widths(feat_dim: int, n_levels: int) -> list[int]:
    """Split ``feat_dim`` over levels in proportion 1:2:4:... (deeper levels get more)."""
    weights = [2 ** i for i in range(n_levels)]
    widths = [feat_dim * w // sum(weights) for w in weights[:-1]]
    return widths + [feat_dim - sum(widths)]


class AffinityNet(BackboneModel):
    """Multi-level feature fusion to a ``feat_dim`` embedding at stride 8."""

    def __init__(self, backbone_cfg: dict | None, feat_dim: int = 448):
        super().__init__(backbone_cfg)
        self.levels = [i for i, s in enumerate(self.backbone.strides) if s >= AFFINITY_STRIDE]
        if feat_dim < 2 ** len(self.levels) - 1:
            raise ValueError(f"feat_dim must be >= {2 ** len(self.levels) - 1}, got {feat_dim}")
        widths = level_widths(feat_dim, len(self.levels))
        self.projections = nn.ModuleList(
            [nn.Conv2d(self.backbone.channels[i], w, 1, bias=False) for i, w in zip(self.levels, widths)])
        self.fuse = nn.Conv2d(feat_dim, feat_dim, 1, bias=False)
        for conv in self.projections:
            nn.init.kaiming_normal_(conv.weight)
        # PSA's init: a large gain spreads the embedding so initial affinities are not all ~1.
        nn.init.xavier_uniform_(self.fuse.weight, gain=4)
        self.feat_dim = feat_dim
        self.out_stride = AFFINITY_STRIDE

    @property
    def meta(self) -> dict:
        return {**super().meta, "feat_dim": self.feat_dim}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding ``B x feat_dim x ceil(H/8) x ceil(W/8)``."""
        features = self.backbone(x)
        size = features[self.levels[0]].shape[-2:]
        projected = []
        for projection, level in zip(self.projections, self.levels):
            y = F.elu(projection(features[level]))
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            projected.append(y)
        return F.elu(self.fuse(torch.cat(projected, dim=1)))

    def affinities(self, x: torch.Tensor, radius: int) -> torch.Tensor:
        """Pair affinities ``B x M`` within ``radius`` (order of ``pairwise_affinity``)."""
        from pipeline.propagation.affinity import pairwise_affinity

        return pairwise_affinity(self(x), radius)
