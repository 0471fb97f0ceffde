"""DeepLab-v3 segmentation network: backbone + ASPP + 1x1 classifier.

ASPP (Chen et al. 2017): a 1x1 branch, three 3x3 atrous branches and an image-pooling
branch, 256 channels each, concatenated and projected to 256 (dropout 0.5), then a 3x3
conv and the 1x1 classifier. Atrous rates follow the output stride: (6, 12, 18) at OS 16,
doubled to (12, 24, 36) at OS 8, halved to (3, 6, 9) at OS 32 (:func:`default_rates`).
On small inputs the large rates reach mostly padding (DeepLab-v3's remark): at 128 px
and OS 16 the map is 8 x 8, so a rate >= 8 branch sees only its centre tap.

``forward`` returns logits at the input size (bilinear upsampling). The class-agnostic
L-Net is ``DeepLabASPP(cfg, num_classes=1)`` (one foreground logit).

GroupNorm instead of BatchNorm in the head: the image-pooling branch is 1 x 1, where
BatchNorm needs batches of 2 or more; GroupNorm works for any batch size.

``head="v2"`` swaps the v3 head for DeepLab-v2's ASPP (Chen et al. 2016; the head of
the DeepLab-v2 the IRN/PSA-lineage WSSS papers train): parallel 3x3 atrous convolutions
straight from the features to class logits, summed, zero bias (:class:`ASPPClassifier`;
default rates (6, 12, 18, 24) at OS 8, :func:`default_rates_v2`). Weights N(0, 0.001):
DeepLab-v2 draws N(0, 0.01) for post-ReLU ResNet features, but the EfficientNet's last
level is a linear projection with larger values, where 0.01 gives initial logits of std
~3 and a first-epoch loss of ~9 instead of ~2.5 (embedded default, SGD).
It is linear in the features and learns within a few hundred steps, where the v3 head
(GroupNorm after its 3x3 conv) stays at the all-background prediction for longer than
the embedded default's CPU budget allows (measured in stage train_seg's tuning, see
params.yaml ``segmentation``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.models.backbone import BackboneModel

ASPP_CHANNELS = 256
GROUPS = 32


def default_rates(output_stride: int) -> tuple[int, int, int]:
    """DeepLab-v3's atrous rates for an output stride (6/12/18 at 16)."""
    return {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}[output_stride]


def default_rates_v2(output_stride: int) -> tuple[int, int, int, int]:
    """DeepLab-v2's atrous rates (6/12/18/24 at OS 8), scaled to keep the field of view in pixels."""
    return {8: (6, 12, 18, 24), 16: (3, 6, 9, 12), 32: (2, 3, 5, 6)}[output_stride]


def _conv_norm_relu(in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=False),
                         nn.GroupNorm(GROUPS, out_ch), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with image pooling."""

    def __init__(self, in_channels: int, rates: tuple[int, ...], channels: int = ASPP_CHANNELS):
        super().__init__()
        self.branches = nn.ModuleList([_conv_norm_relu(in_channels, channels)] +
                                      [_conv_norm_relu(in_channels, channels, 3, r) for r in rates])
        self.image_pool = _conv_norm_relu(in_channels, channels)
        self.project = nn.Sequential(_conv_norm_relu(channels * (len(rates) + 2), channels), nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        pooled = self.image_pool(x.mean(dim=(2, 3), keepdim=True))
        outs.append(pooled.expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


class ASPPClassifier(nn.Module):
    """DeepLab-v2 ASPP: one 3x3 atrous convolution to class logits per rate, summed."""

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...], init_std: float = 0.001):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates])
        for conv in self.convs:
            nn.init.normal_(conv.weight, 0.0, init_std)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(conv(x) for conv in self.convs)


HEADS = ("v3", "v2")


class DeepLabASPP(BackboneModel):
    """DeepLab-v3: logits ``B x num_classes x H x W`` at the input size."""

    def __init__(self, backbone_cfg: dict | None, num_classes: int, rates: tuple[int, ...] | None = None,
                 head: str = "v3", input_scale: float = 1.0):
        super().__init__(backbone_cfg, num_classes)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not input_scale > 0:
            raise ValueError(f"input_scale must be > 0, got {input_scale}")
        # The network sees the image resized by input_scale (small objects: more feature
        # cells per object) and answers at the image's own size.
        self.input_scale = float(input_scale)
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.head_type = head
        output_stride = self.backbone_cfg["output_stride"]
        if head == "v2":
            self.rates = tuple(rates) if rates is not None else default_rates_v2(output_stride)
            self.aspp = ASPPClassifier(self.backbone.channels[-1], num_classes, self.rates)
            self.head = nn.Identity()
            self.classifier = nn.Identity()
        else:
            self.rates = tuple(rates) if rates is not None else default_rates(output_stride)
            self.aspp = ASPP(self.backbone.channels[-1], self.rates)
            self.head = _conv_norm_relu(ASPP_CHANNELS, ASPP_CHANNELS, 3)
            self.classifier = nn.Conv2d(ASPP_CHANNELS, num_classes, 1)
        self.out_stride = 1

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input: the backbone's last level on the image resized by ``input_scale``."""
        if self.input_scale != 1.0:
            x = F.interpolate(x, scale_factor=self.input_scale, mode="bilinear", align_corners=False,
                              recompute_scale_factor=False)
        return self.backbone(x)[-1]

    def logits_from_features(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Class logits at ``size`` (the image's) from :meth:`features` (cached or fresh)."""
        logits = self.classifier(self.head(self.aspp(features)))
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.features(x), x.shape[-2:])


def deeplab_meta(model: "DeepLabASPP") -> dict:
    """What a DeepLabASPP's weights fit (backbone, stride, head type, ASPP rates), recorded in
    its model file and checked on load (L-Net; the segmentation net adds its classes)."""
    return {**model.meta, "head": model.head_type, "aspp_rates": list(model.rates)}
