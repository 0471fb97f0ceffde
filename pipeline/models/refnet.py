"""Ref-Net (reference semantic segmentation with visual boundary knowledge translation,
IJCAI 2021): the reference segmentation module (RSM) and the boundary critics (BKTM).

No public code exists; this follows the paper's text. What differs, and why (CPU budget):

* The shared encoder is the frozen ImageNet backbone whose features the few-shot stages
  cache once per image (:mod:`pipeline.data.fewshot_features`), plus a trainable 1x1
  projection (:meth:`RefNet.encode`). Encoding a masked image ``E(x * m)`` is taken as
  ``E(x) * m`` on the feature grid (:meth:`RefNet.masked_encoding`): masking features
  instead of pixels (as PANet/CANet pool support features under the mask), so the frozen
  backbone never runs in training and gradients reach the mask through the product.
* The decoder is DeepLabV3+-style at small size: the shared :class:`pipeline.models.deeplab.ASPP`
  (``hidden`` channels, small atrous rates for ~16-cell grids) on the concatenation
  [target features, reference features], then the V3+ decoder step: concatenated with the
  target's projected features (the "low-level" input; the cache has one stride), two 3x3
  convs, a 1x1 conv to one foreground logit, bilinear upsampling to the mask size.

``condition=False`` (the paper's "w/o condition image") drops the reference branch: the
decoder sees the target features only. A reference whose mask is all zero names no object:
:meth:`RefNet.probability` is then 0 everywhere (the target is all background, as the
paper's all-zero target when target and reference share no category).

:class:`BoundaryCritic`: the WGAN critic on triplets [x, m, x*m] (7 channels): strided
4x4 convs with LeakyReLU and no normalisation (WGAN-GP penalises per-sample gradients,
so no BatchNorm), global average, one linear score.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.models.deeplab import ASPP, GROUPS


def _conv_norm_relu(in_ch: int, out_ch: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
                         nn.GroupNorm(GROUPS, out_ch), nn.ReLU(inplace=True))


def mask_on_grid(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``B x 1 x h x w``: the share of each feature cell a ``B x H x W`` soft mask covers."""
    return F.adaptive_avg_pool2d(masks[:, None].float(), grid)


def pooled_encoding(encoded: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``B x C``: the mean of ``encoded`` (``B x C x h x w``) under each mask (0 for an empty one)."""
    weights = mask_on_grid(masks, encoded.shape[-2:])
    return (encoded * weights).sum((2, 3)) / weights.sum((2, 3)).clamp_min(1e-6)


class RefNet(nn.Module):
    """RSM on cached features: ``forward(target, reference, reference_mask, size)`` -> logits
    ``B x H x W`` at ``size``."""

    def __init__(self, in_channels: int, hidden: int = 64, aspp_rates: tuple[int, ...] = (1, 2, 3),
                 condition: bool = True):
        super().__init__()
        if hidden % GROUPS:
            raise ValueError(f"hidden must be a multiple of {GROUPS}, got {hidden}")
        self.condition = bool(condition)
        self.in_channels, self.hidden, self.aspp_rates = int(in_channels), int(hidden), tuple(aspp_rates)
        self.project = _conv_norm_relu(in_channels, hidden, 1)
        self.aspp = ASPP(hidden * (2 if condition else 1), self.aspp_rates, channels=hidden)
        self.decoder = nn.Sequential(_conv_norm_relu(2 * hidden, hidden, 3), _conv_norm_relu(hidden, hidden, 3),
                                     nn.Conv2d(hidden, 1, 1))

    @property
    def meta(self) -> dict:
        return {"model": "RefNet", "in_channels": self.in_channels, "hidden": self.hidden,
                "aspp_rates": list(self.aspp_rates), "condition": self.condition}

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """The shared encoder's output E(x) from the cached backbone features."""
        return self.project(features)

    def masked_encoding(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """E(x * m), taken as E(x) * m on the feature grid (module docstring)."""
        encoded = self.encode(features)
        return encoded * mask_on_grid(masks, encoded.shape[-2:])

    def forward(self, target: torch.Tensor, reference: torch.Tensor, reference_mask: torch.Tensor,
                size: tuple[int, int]) -> torch.Tensor:
        encoded = self.encode(target)
        if self.condition:
            ref = self.masked_encoding(reference, reference_mask)
            if ref.shape[-2:] != encoded.shape[-2:]:
                ref = F.interpolate(ref, size=encoded.shape[-2:], mode="bilinear", align_corners=False)
            context = self.aspp(torch.cat([encoded, ref], dim=1))
        else:
            context = self.aspp(encoded)
        logits = self.decoder(torch.cat([context, encoded], dim=1))
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]

    def probability(self, target: torch.Tensor, reference: torch.Tensor, reference_mask: torch.Tensor,
                    size: tuple[int, int]) -> torch.Tensor:
        """Foreground probability ``B x H x W``; 0 where the reference mask is all zero."""
        prob = torch.sigmoid(self(target, reference, reference_mask, size))
        has_object = (reference_mask.flatten(1) > 0).any(dim=1).to(prob.dtype)
        return prob * has_object[:, None, None]


class BoundaryCritic(nn.Module):
    """WGAN critic of [x, m, x*m] triplets: one unbounded score per sample."""

    def __init__(self, channels: int = 32, in_channels: int = 7):
        super().__init__()
        layers, width = [], in_channels
        for out in (channels, 2 * channels, 4 * channels):
            layers += [nn.Conv2d(width, out, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            width = out
        self.body = nn.Sequential(*layers)
        self.score = nn.Linear(width, 1)

    def forward(self, triplets: torch.Tensor) -> torch.Tensor:
        return self.score(self.body(triplets).mean(dim=(2, 3)))[:, 0]
