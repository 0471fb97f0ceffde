"""P-Net: the discriminator of Xiao et al., "Transferable Semi-supervised Semantic
Segmentation" (AAAI 2018), Table 1.

Input: an image multiplied by one category's mask (``3 x H x W``: the ground-truth binary
mask of the category for "real" examples, the segmentation network's softmax probability
of the category for "fake" ones; see :mod:`pipeline.adversarial`). Output: one logit per
input, ``D = sigmoid(logit)`` = probability that the mask is a ground-truth mask.

Layers (Table 1): 3x3 conv 16, 3x3 conv 32, 2x2 max pool, 3x3 conv 64, 3x3 conv 64, pool,
3x3 conv 128, 3x3 conv 128, pool, fc 256 + tanh, fc 512 + tanh, fc 1 + sigmoid. Every
conv is followed by ReLU (the table lists no other activation for them).

Departure from the table (documented): an adaptive average pooling to ``pool_size x
pool_size`` sits between the last max pool and the first fc layer. Table 1's first fc
layer has a fixed input size (its crop size / 8 squared x 128); the adaptive pooling
makes the same layers accept any crop size (training crops, the embedded default's small
images), and keeps the fc layer small (``128 * pool_size**2`` inputs). The final sigmoid
is folded into the loss (``BCE-with-logits`` is the numerically stable form of
``-log D`` / ``-log(1 - D)``); :meth:`PNet.probability` applies it.
"""
from __future__ import annotations

import torch
import torch.nn as nn

#: (output channels of the two 3x3 convs) per block; each block ends with a 2x2 max pool.
CONV_BLOCKS = ((16, 32), (64, 64), (128, 128))
FC_WIDTHS = (256, 512)


def _conv_block(in_channels: int, widths: tuple[int, int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        in_channels = width
    layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))  # ceil: odd sizes keep their last row
    return nn.Sequential(*layers)


class PNet(nn.Module):
    """Discriminator: ``forward(x)`` gives ``B`` logits for ``B x 3 x H x W`` masked images."""

    def __init__(self, pool_size: int = 8, in_channels: int = 3):
        super().__init__()
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        self.pool_size = int(pool_size)
        blocks, channels = [], in_channels
        for widths in CONV_BLOCKS:
            blocks.append(_conv_block(channels, widths))
            channels = widths[-1]
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(self.pool_size)
        fc_in = channels * self.pool_size ** 2
        self.classifier = nn.Sequential(
            nn.Linear(fc_in, FC_WIDTHS[0]), nn.Tanh(),
            nn.Linear(FC_WIDTHS[0], FC_WIDTHS[1]), nn.Tanh(),
            nn.Linear(FC_WIDTHS[1], 1))

    @property
    def meta(self) -> dict:
        return {"model": type(self).__name__, "pool_size": self.pool_size}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``B`` (real vs. predicted mask); any ``H, W >= 1``."""
        return self.classifier(self.pool(self.features(x)).flatten(1))[:, 0]

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        """``D(x)`` of the paper: sigmoid of the logit."""
        return torch.sigmoid(self.forward(x))
